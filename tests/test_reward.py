"""Tests for reward.py and grading.py: prompts, extraction, equivalence table, reward semantics,
timeouts, untrusted input, and self-consistency on the real data in ../shared/data."""

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import grading  # noqa: E402
import reward as R  # noqa: E402
from equivalence_cases import CASES, QUESTION_CASES  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------------------- prompts


def test_templates_verbatim():
    assert set(R.TEMPLATES) == {"simplerl", "qwen25-math-cot", "qwen-boxed", "tiny"}
    q = "What is $\\{1,2\\}$ and {x}?"
    assert R.apply_template(q) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant"
    )
    assert R.apply_template(q, "qwen25-math-cot") == R.apply_template(q) + "\n"
    assert R.apply_template(q, "qwen-boxed") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{q}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert R.apply_template("2+2", "tiny") == "Q: 2+2\nA:"
    assert R.apply_template("{question}", "tiny") == "Q: {question}\nA:"  # no re-substitution
    with pytest.raises(ValueError, match="simplerl"):
        R.apply_template(q, "nope")


def test_training_prompt_matches_training_set():
    rows = json.loads((DATA / "train/simplerl_zero_v0/math_level3to5_data_processed_with_qwen_prompt.json").read_text())
    assert all(R.apply_template(r["question"]) == r["input"] for r in rows)


def test_cut_at_stop():
    assert R.STOP_WORDS[:0] == [] and {"<|im_end|>", "<|endoftext|>"} <= set(R.STOP_WORDS)
    assert R.cut_at_stop("a <|endoftext|> b <|im_end|> c") == "a"
    assert R.cut_at_stop("a <|im_end|> b <|endoftext|> c") == "a"
    assert R.cut_at_stop("no stop here ") == "no stop here"


# ---------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, want",
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1,\\{2\\}\\}}", "\\{1,\\{2\\}\\}"),
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed {x+1}", "x+1"),
        ("\\boxed{unbalanced", None),
        ("no box", None),
        ("\\boxed{}", ""),
    ],
)
def test_extract_boxed(text, want):
    assert R.extract_boxed(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("thus \\boxed{42}", "42"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("so the final answer is 7\n", "7"),
        ("we get 3 apples and then 1,250 pears", "1250"),
        ("nothing numeric", None),
        ("solutions $\\boxed{1}$ and $\\boxed{2}$.", "2"),  # the last box; compute_score also tries "1, 2"
        ("first \\boxed{1}. Much later, after more work, we finally conclude \\boxed{2}", "2"),
    ],
)
def test_extract_answer(text, want):
    assert R.extract_answer(text) == want


# ---------------------------------------------------------------------------- equivalence table


def test_case_table_is_broad():
    assert len(CASES) >= 200
    assert sum(1 for c in CASES if c[2]) >= 100 and sum(1 for c in CASES if not c[2]) >= 60
    families = {c[3] for c in CASES}
    for needed in ("fraction", "mixed", "thousands", "percent", "units", "degrees", "choice", "sqrt", "pi",
                   "exponents", "tuple", "set", "interval", "matrix", "label", "infinity", "plain-text", "text"):
        assert needed in families


@pytest.mark.parametrize("pred, gold, expected, family", CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_math_equal_table(pred, gold, expected, family):
    assert R.math_equal(pred, gold) is expected


@pytest.mark.parametrize("pred, gold, question, expected, family", QUESTION_CASES)
def test_question_decides_order(pred, gold, question, expected, family):
    assert R.math_equal(pred, gold, question=question) is expected
    assert R.compute_score(f"so \\boxed{{{pred}}}", gold, question=question) == (1.0 if expected else -0.5)


def test_question_cases_in_batch():
    preds, golds, questions, want, _ = map(list, zip(*QUESTION_CASES))
    assert R.batch_math_equal(preds, golds, questions=questions, num_workers=1) == want
    assert R.batch_math_equal(preds, golds, questions=questions, num_workers=0) == want
    assert grading.asks_for_order("in increasing order")
    assert not grading.asks_for_order("Find all x.") and not grading.asks_for_order(None)
    with pytest.raises(ValueError, match="questions"):
        R.batch_math_equal(["1"], ["1"], questions=[])


def test_batch_matches_table():
    preds, golds, want = zip(*[(c[0], c[1], c[2]) for c in CASES])
    assert R.batch_math_equal(list(preds), list(golds), timeout=10.0) == list(want)


# ---------------------------------------------------------------------------- reward semantics


def test_compute_score_semantics():
    assert R.compute_score("I think it is 5.", "5") == -1.0  # no boxed at all
    assert R.compute_score("so \\boxed{5}", "5") == 1.0
    assert R.compute_score("so \\boxed{6}", "5") == -0.5
    assert R.compute_score("so \\boxed{\\dfrac{1}{2}}<|im_end|>", "0.5") == 1.0
    assert R.compute_score("5<|im_end|> \\boxed{5}", "5") == -1.0  # boxed after the stop word is cut
    assert R.compute_score("\\boxed{6}<|endoftext|>\\boxed{5}", "5") == -0.5
    assert R.compute_score("I boxed it: 5", "5") == -0.5  # "boxed" present, but no box to extract
    assert R.compute_score("\\boxed{5", "5") == -0.5  # unbalanced


def test_batch_compute_scores_matches_single():
    responses = ["x \\boxed{5}", "no box 5", "\\boxed{\\sqrt{8}}", "\\boxed{2\\sqrt{3}}", "\\boxed{(1,2]}", "\\boxed{C}"]
    golds = ["5", "5", "2\\sqrt{2}", "\\sqrt{11}", "(1,2)", "\\text{(C)}"]
    want = [R.compute_score(r, g) for r, g in zip(responses, golds)]
    assert want == [1.0, -1.0, 1.0, -0.5, -0.5, 1.0]
    assert R.batch_compute_scores(responses, golds) == want
    assert R.batch_compute_scores(responses, golds, num_workers=0) == want
    assert R.batch_math_equal([None, "1"], ["1", "1"]) == [False, True]


def test_fast_path_256_short_pairs_under_100ms():
    responses = [f"Q... \\boxed{{{i % 7}}}" if i % 3 else "garbage" for i in range(256)]
    golds = [str(i % 5) for i in range(256)]
    R.batch_compute_scores(responses, golds)
    t = time.perf_counter()
    scores = R.batch_compute_scores(responses, golds)
    assert time.perf_counter() - t < 0.1
    assert set(scores) == {1.0, -0.5, -1.0}


def test_batch_off_main_thread():
    out = {}
    thread = threading.Thread(target=lambda: out.update(s=R.batch_compute_scores(["\\boxed{\\sqrt{4}}", "\\boxed{3}"], ["2", "2"])))
    thread.start()
    thread.join(60)
    assert out["s"] == [1.0, -0.5]


# ---------------------------------------------------------------------------- timeouts


def test_timeout_kills_worker_and_pool_recovers():
    # A symbolic comparison takes milliseconds; with a 1 ms budget every one overruns,
    # its worker is killed and replaced, and the pair counts as wrong.
    pairs = [
        ("x^2+2x+1", "(x+1)^2"),
        ("\\frac{(x+1)^{3}(y+2)^{3}}{(z+3)^{2}}+\\sin(x)\\cos(y)", "\\frac{(x+1)^{3}(y+2)^{3}}{(z+3)^{2}}+\\cos(y)\\sin(x)"),
        ("\\frac{\\sqrt{2}+\\sqrt{3}+\\sqrt{5}}{\\sqrt{7}+\\sqrt{11}}", "\\frac{\\sqrt{3}+\\sqrt{2}+\\sqrt{5}}{\\sqrt{11}+\\sqrt{7}}"),
    ]
    preds, golds = map(list, zip(*pairs))
    t = time.perf_counter()
    assert R.batch_math_equal(preds, golds, timeout=0.001, num_workers=2) == [False, False, False]
    assert time.perf_counter() - t < 30
    assert R.batch_math_equal(preds, golds, timeout=10.0, num_workers=2) == [True, True, True]


def test_dead_worker_is_replaced():
    assert R.batch_math_equal(["\\sqrt{4}"], ["2"], num_workers=1) == [True]
    for w in grading._POOL:
        w.proc.kill()
        w.proc.wait()
    assert R.batch_math_equal(["\\sqrt{4}", "3"], ["2", "3"], num_workers=1) == [True, True]


def test_in_process_timeout_on_main_thread():
    assert grading._math_equal_in_process("\\sqrt{8}", "2\\sqrt{2}", 30.0) is True
    assert R.batch_math_equal(["\\sqrt{8}"], ["2\\sqrt{2}"], num_workers=0, timeout=1e-6) == [False]


# ---------------------------------------------------------------------------- untrusted input

PAYLOADS = [
    "\\boxed{__import__('os').system('touch /tmp/simplerl_pwned')}",
    "\\boxed{eval(\"__import__('os').system('touch /tmp/simplerl_pwned')\")}",
    "\\boxed{exec('import os; os.system(\"touch /tmp/simplerl_pwned\")')}",
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{2^{1/2^{1000}}}",
    "\\boxed{10^{10^{10^{10}}}-1}",
    "\\boxed{(10^{4000})^{4000}}",
    "\\boxed{100000!}",
    "\\boxed{\\binom{10^{9}}{10^{8}}}",
    "\\boxed{" + "9" * 100_000 + "}",
    "\\boxed{" + "x+" * 50_000 + "1}",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "\\boxed{" + "\\frac{" * 2000 + "}",
    "\\boxed{\\frac{1}{2}" + "}" * 3000,
    "\\boxed{1\x002}",
    "\\boxed{\x00}",
    "\\boxed{\ud800\udfff\u202e\u200b5\ufeff}",
    "\\boxed{٣}",
    "\\boxed{𝟓}",
    "\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "a" * 100_000 + "}",
    "\\boxed{x" + "^{x" * 200 + "}" * 200 + "}",
]


def test_source_never_evaluates_text():
    source = (ROOT / "reward.py").read_text()
    code = re.sub(r'"""[\s\S]*?"""|#.*', "", source)
    assert not re.search(r"(?<!re\.)\b(eval|exec|sympify|parse_expr|lambdify|compile)\s*\(", code)
    assert "sympy_parser" not in code


# Inputs that made a regex or a scan quadratic somewhere (v0's strip_string on 100 KB of digits took 114 s).
SLOW_PAYLOADS = [
    "\\boxed{" + "\\text{a" * 16000 + "}",
    "\\boxed{" + "(" * 20000 + "}",
    "\\boxed{" + "1," * 30000 + "}",
    "boxed " + "x" * 100_000,
    "\\boxed{\\begin{pmatrix}" + "{1," * 600 + "}",
    "\\boxed{" * 16000,
]


@pytest.mark.parametrize("grader", ["simplerl", "v0"])
@pytest.mark.parametrize("payload", PAYLOADS + SLOW_PAYLOADS, ids=range(len(PAYLOADS) + len(SLOW_PAYLOADS)))
def test_payload_direct_is_fast_and_harmless(payload, grader):
    marker = Path("/tmp/simplerl_pwned")
    marker.unlink(missing_ok=True)
    R.compute_score("\\boxed{x+1}", "1+x", grader=grader)  # sympy imported outside the timed call
    t = time.perf_counter()
    assert R.compute_score(payload, "1", grader=grader) in (-0.5, 1.0)
    assert time.perf_counter() - t < 5.0  # each takes < 0.2 s here
    assert not marker.exists()


def test_payloads_in_batch_within_timeout():
    marker = Path("/tmp/simplerl_pwned")
    marker.unlink(missing_ok=True)
    timeout = 3.0
    t = time.perf_counter()
    scores = R.batch_compute_scores(PAYLOADS, ["1"] * len(PAYLOADS), timeout=timeout, num_workers=2)
    assert time.perf_counter() - t < timeout * len(PAYLOADS) / 2 + 10
    assert all(s in (-0.5, 1.0) for s in scores)
    scores = R.batch_compute_scores(PAYLOADS, ["1"] * len(PAYLOADS), timeout=timeout, num_workers=2, grader="v0")
    assert all(s in (-0.5, 1.0) for s in scores)
    assert not marker.exists()


# ---------------------------------------------------------------------------- real data


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _eval_golds(name: str, rows: list[dict]) -> list[str]:
    """The gold answer of each row, taken as simpleRL-reason's eval harness does (no unit stripping)."""
    field = {
        "aime24": "answer", "amc23": "answer", "cmath": "answer", "gaokao2024_I": "answer", "gaokao2024_II": "answer",
        "svamp": "Answer", "sat_math": "Answer", "aqua": "correct", "carp_en": "answer", "gaokao_math_qa": "label",
        "mawps": "target", "eval_rm_maj_example": "gt",
    }
    golds = []
    for r in rows:
        if name in ("math500", "minerva_math"):
            g = R.extract_boxed(r["solution"])
        elif name == "gsm8k":
            g = r["answer"].split("####")[-1]
        elif name in ("gaokao2023en", "college_math", "gaokao_math_cloze"):
            g = r["answer"].replace("$", "")
        elif name == "olympiadbench":
            g = r["final_answer"][0].strip("$")
        elif name == "asdiv":
            g = re.sub(r"\(.*?\)", "", r["answer"])
        elif name == "mmlu_stem":
            g = "ABCD"[r["answer"]]
        elif name in ("gaokao2024_mix", "cn_middle_school"):
            g = r["choice_answer"] or r["answer"]
        else:
            g = r[field[name]]
        golds.append(str(g).strip())
    return golds


EVAL_FILES = sorted(p for p in (DATA / "eval").glob("*/*.json*") if p.name != "demo.json" and p.name != "test.json")


def test_data_present():
    assert DATA.is_dir(), f"{DATA} is missing"
    assert len(EVAL_FILES) >= 20


@pytest.mark.parametrize("path", EVAL_FILES, ids=[f"{p.parent.name}/{p.name}" for p in EVAL_FILES])
def test_eval_gold_boxed_scores_itself(path):
    golds = _eval_golds(path.parent.name, _jsonl(path))
    empty = [i for i, g in enumerate(golds) if not g]
    assert empty == ([167, 192] if path.parent.name == "gaokao2023en" else [])
    pairs = [(f"Reasoning...\nThe final answer is $\\boxed{{{g}}}$.", g) for g in golds if g]
    assert R.batch_compute_scores(*map(list, zip(*pairs))) == [1.0] * len(pairs)


def test_train_gold_boxed_scores_itself():
    rows = json.loads((DATA / "train/simplerl_zero_v0/math_level3to5_data_processed_with_qwen_prompt.json").read_text())
    assert len(rows) == 8523
    golds = [r["gt_answer"] for r in rows]
    assert golds == [r["ground_truth_answer"] for r in rows]
    scores = R.batch_compute_scores([f"so \\boxed{{{g}}}<|im_end|>" for g in golds], golds)
    assert scores == [1.0] * len(golds)


def test_math500_solution_box_agrees_with_answer():
    rows = _jsonl(DATA / "eval/math500/test.jsonl")
    boxed = [R.extract_boxed(r["solution"]) for r in rows]
    agree = R.batch_math_equal(boxed, [r["answer"] for r in rows])
    rate = sum(agree) / len(rows)
    print(f"MATH500: solution's last box == answer field in {sum(agree)}/{len(rows)} ({rate:.1%})")
    assert rate >= 0.99
    two_boxes = [r for r in rows if len(grading._boxes(r["solution"])) > 1]
    assert any(R.extract_boxed(r["solution"]) == "\\frac{639}{40}" for r in two_boxes)  # the last box wins
    # The one row where the harness's own normalisation disagrees with the answer field.
    row = next(r for r in rows if r["unique_id"] == "test/algebra/101.json")
    assert row["answer"] == "x \\in [-2,7]" and R.math_equal("[-2,7]", row["answer"])


def test_real_responses_agree_with_harness():
    rows = _jsonl(DATA / "eval/eval_rm_maj_example/math_cot_100.jsonl")
    responses = [c for r in rows for c in r["code"]]
    golds = [r["gt"] for r in rows for _ in r["code"]]
    harness = [s for r in rows for s in r["score"]]
    ours = [s == 1.0 for s in R.batch_compute_scores(responses, golds)]
    agree = sum(a == b for a, b in zip(ours, harness))
    print(f"real responses: ours {sum(ours)}/800 correct, harness {sum(harness)}/800, agreement {agree}/800")
    assert len(responses) == 800 and sum(harness) == 728
    assert agree >= 790


# ---------------------------------------------------------------------------- graders: v0 and simplerl

V0_VERDICTS = DATA / "v0_reward" / "verdicts.jsonl"


def test_graders_exported():
    assert R.GRADERS == ("v0", "simplerl")
    import inspect

    for fn in (R.compute_score, R.batch_compute_scores):
        assert inspect.signature(fn).parameters["grader"].default == "simplerl"
    with pytest.raises(ValueError, match="simplerl"):
        R.compute_score("\\boxed{1}", "1", grader="qwen")
    with pytest.raises(ValueError, match="v0"):
        R.batch_compute_scores(["\\boxed{1}"], ["1"], grader="nope")


@pytest.mark.parametrize("grader", ["v0", "simplerl"])
def test_box_bug_last_box_is_the_answer(grader):
    # A policy that restates its answer, or lists a wrong candidate before the right one, is right.
    for response, gold in [("$\\boxed{12}$.\n\n$\\boxed{12}$", "12"), ("$\\boxed{2}$ and $\\boxed{-2}$", "-2")]:
        assert R.compute_score(response, gold, grader=grader) == 1.0
        assert R.batch_compute_scores([response], [gold], grader=grader) == [1.0]
    assert R.compute_score("$\\boxed{-2}$ and $\\boxed{2}$", "-2", grader=grader) == -0.5  # the last box is 2


def test_several_boxes_still_match_a_multi_part_gold():
    for response, gold in [("\\boxed{2}, \\boxed{3}", "2, 3"), ("$\\boxed{1}$ and $\\boxed{2}$", "1,2"),
                           ("\\boxed{3}, \\boxed{2}", "\\{2,3\\}")]:
        assert R.compute_score(response, gold) == 1.0
        assert R.batch_compute_scores([response], [gold]) == [1.0]
    assert R.compute_score("\\boxed{2}, \\boxed{4}", "2, 3") == -0.5
    assert R.compute_score("\\boxed{2}, \\boxed{3}", "2, 3", grader="v0") == -0.5  # v0 reads the last box only
    assert R.answer_candidates("\\boxed{2}, \\boxed{3}") == ["3", "2, 3"]
    assert R.answer_candidates("\\boxed{2}. Many words later we check: \\boxed{3}") == ["3"]


@pytest.mark.parametrize("response, gold, want", [
    ("so \\boxed{4}, \\boxed{5}, \\boxed{6}", "4, 5, 6", 1.0),
    ("\\boxed{4}, \\boxed{5}, \\boxed{6}", "\\{6,5,4\\}", 1.0),
    ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(2,2),(6,2)", 1.0),
    ("\\boxed{(1,2)} and \\boxed{(3,4)}", "(3,4),(1,2)", 1.0),
    ("$$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$$", "k = 45, n = 2", 1.0),
    ("\\( y_1 = \\boxed{x+1} \\) and \\( y_2 = \\boxed{2x} \\)", "y_1=x+1, y_2=2x", 1.0),
    ("\\boxed{1},\\boxed{2},\\boxed{3}", "{1,2,3}", 1.0),
    ("$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$", "(3, 3), (1, 1)", 1.0),
    ("\\boxed{3} \\text{ is wrong and } \\boxed{5}", "3, 5", -0.5),
    ("\\boxed{4}, \\boxed{5}", "4, 5, 6", -0.5),
    ("\\boxed{4} is wrong; the answer is \\boxed{5}", "4, 5", -0.5),
    ("\\boxed{1} no no no no no \\boxed{2}", "1, 2", -0.5),
    ("\\boxed{(1,2)} and \\boxed{(4,3)}", "(3,4),(1,2)", -0.5),
    ("\\( y_1 = \\boxed{x+2} \\) and \\( y_2 = \\boxed{2x} \\)", "y_1=x+1, y_2=2x", -0.5),
])
def test_several_boxes_are_one_answer(response, gold, want):
    """Boxes joined only by commas, "and", \\quad, "for part (a) and" or a label ("y_2 =") are one answer."""
    assert R.compute_score(response, gold) == want
    assert R.batch_compute_scores([response], [gold], num_workers=0) == [want]


def test_v0_semantics_on_known_cases():
    v0 = lambda r, g: R.compute_score(r, g, grader="v0")  # noqa: E731
    assert v0("no box here: 5", "5") == -1.0
    assert v0("I boxed it: 5", "5") == -0.5  # "boxed" present: v0 reads "it: 5", not the number
    assert v0("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}") == -0.5  # pred stripped, gold raw
    assert v0("\\boxed{50}", "0.5") == 1.0 and v0("\\boxed{0.05}", "5") == 1.0  # percent leniency
    assert v0("\\boxed{(1,2]}", "(1,2)") == 1.0  # brackets ignored
    assert v0("\\boxed{10 \\text{ cm}}", "10") == 1.0
    assert v0("\\boxed{x^2+2x+1}", "(x+1)^2") == 1.0  # symbolic, on the safe parser
    assert v0("\\boxed{60^\\circ}", "60^\\circ") == -0.5  # ^\circ stripped from the prediction only
    assert grading.v0_strip_string("5 apples and a t") == "5"  # unit words ("apples") and single letters go
    assert grading.v0_strip_string("x + c") == "x+"  # ... even where the letter is the answer
    assert grading.v0_extract("\\boxed{1} so \\boxed{\\frac12}") == "\\frac{1}{2}"


def _v0_rows() -> list[dict]:
    assert V0_VERDICTS.is_file(), f"{V0_VERDICTS} is missing"
    return _jsonl(V0_VERDICTS)


def test_v0_grader_reproduces_v0_verdicts():
    """grader="v0" against v0's own recorded training verdicts: >= 99.5% on each source."""
    rows = _v0_rows()
    scores = R.batch_compute_scores([r["response"] for r in rows], [r["gold"] for r in rows], grader="v0")
    by_source: dict[str, list[int]] = {}
    for r, s in zip(rows, scores):
        by_source.setdefault(r["source"], [0, 0])
        by_source[r["source"]][0] += s == r["v0_reward"]
        by_source[r["source"]][1] += 1
        if s != r["v0_reward"]:
            print(f"v0 disagreement [{r['source']}] ours={s} v0={r['v0_reward']} gold={r['gold']!r} v0_pred={r['v0_pred']!r}")
    print({k: f"{a}/{n}" for k, (a, n) in by_source.items()})
    assert by_source["train_gold_boxed"][1] == 8523 and by_source["qwen25_math_7b_response"][1] == 800
    for agree, n in by_source.values():
        assert agree >= 0.995 * n
    preds = [R.answer_candidates(r["response"], "v0")[0] for r in rows]
    assert sum(p == r["v0_pred"] for p, r in zip(preds, rows)) >= 0.995 * len(rows)  # the extraction itself


def test_v0_and_simplerl_differ_where_v0_is_lenient():
    rows = [r for r in _v0_rows() if r["source"] == "train_gold_boxed"]
    ours = R.batch_compute_scores([r["response"] for r in rows], [r["gold"] for r in rows])
    assert ours == [1.0] * len(rows)  # the simplerl grader: every gold wins against itself
    assert sum(r["v0_reward"] == -0.5 for r in rows) == 421  # v0: 421 golds can never be matched


# ---------------------------------------------------------------------------- symbolic self-test


def test_check_symbolic_grader_passes_here():
    R.check_symbolic_grader()


def test_check_symbolic_grader_fails_loudly(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(grading, "_to_sympy", lambda s: None)  # what a wrong antlr runtime does to parse_latex
    monkeypatch.setattr(metadata, "version", lambda name: "4.13.2")
    with pytest.raises(RuntimeError, match=r"antlr4-python3-runtime==4\.11\.0, found 4\.13\.2"):
        R.check_symbolic_grader()


def test_check_symbolic_grader_catches_a_parser_that_raises(monkeypatch):
    import sympy.parsing.latex

    def broken(*args, **kwargs):
        raise ImportError("LaTeX parsing requires the antlr4 Python package, version 4.11")

    monkeypatch.setattr(sympy.parsing.latex, "parse_latex", broken)
    with pytest.raises(RuntimeError, match="4.11.0"):
        R.check_symbolic_grader()


# ---------------------------------------------------------------------------- bounded work


def _count_calls(monkeypatch, name: str) -> list[int]:
    count = [0]
    original = getattr(grading, name)

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(grading, name, counting)
    return count


@pytest.mark.parametrize("kb", [28, 112])
def test_extraction_is_linear(monkeypatch, kb):
    """Unbalanced boxes: braces are matched once for the whole text (was once per box: 112 KB took 82 s)."""
    text = "\\boxed{" * (kb * 1000 // 7)
    passes = _count_calls(monkeypatch, "_brace_partners")
    assert R.boxed_candidates(text) == []
    assert passes[0] == 1  # one pass over the text, however many boxes
    assert R.extract_answer(text) is None
    assert R.compute_score(text, "1") == -0.5
    t = time.perf_counter()
    R.boxed_candidates(text + "\\boxed{1}")  # measured ~20 ms for 112 KB: a 100x margin
    assert time.perf_counter() - t < 2.0
    assert R.boxed_candidates(text + "}" * 3 + "\\boxed{7}") == ["7"]


def test_v0_extraction_is_linear():
    text = "\\boxed{" * 16000
    t = time.perf_counter()
    assert R.compute_score(text, "1", grader="v0") == -0.5
    assert time.perf_counter() - t < 2.0  # one scan of the tail, as in v0


def test_equal_40_element_sets_need_one_parse_per_element(monkeypatch):
    a = "\\{" + ",".join(f"\\sqrt{{{k}}}+{k}x" for k in range(2, 42)) + "\\}"
    b = "\\{" + ",".join(f"{k}x+\\sqrt{{{k}}}" for k in reversed(range(2, 42))) + "\\}"
    parses = _count_calls(monkeypatch, "_to_sympy")
    full = _count_calls(monkeypatch, "_symbolic_equal")
    assert R.math_equal(a, b) is True
    assert parses[0] <= 80 and full[0] == 0  # was 820 pairwise symbolic comparisons (10 s)
    assert R.math_equal(a, b.replace("41x", "42x")) is False
    assert R.math_equal(a, a.replace(",", ", ")) is True  # equal spellings: no sympy at all
    assert R.batch_math_equal([a], [b], timeout=5.0, num_workers=1) == [True]


def test_batch_deadline_counts_ungraded_pairs():
    preds = ["x^2+2x+1"] * 6
    golds = ["(x+1)^2"] * 6
    assert R.batch_math_equal(preds, golds, num_workers=1, batch_timeout=1e-9) == [False] * 6
    assert R.last_batch_report["past_deadline"] == 6
    assert R.batch_math_equal(preds, golds, num_workers=0, batch_timeout=1e-9) == [False] * 6
    assert R.last_batch_report["past_deadline"] == 6
    assert R.batch_compute_scores(["\\boxed{x^2+2x+1}"] * 6, golds, num_workers=1, batch_timeout=60) == [1.0] * 6
    assert R.last_batch_report == {"pairs": 6, "fast": 0, "symbolic": 6, "timed_out": 0, "past_deadline": 0}
    with pytest.raises(ValueError, match="positive"):
        R.batch_math_equal(["1"], ["1"], timeout=0)

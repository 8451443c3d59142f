"""Tests for reward.py: prompts, extraction, equivalence table, reward semantics,
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

import reward as R  # noqa: E402
from equivalence_cases import CASES  # noqa: E402

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
        ("solutions $\\boxed{1}$ and $\\boxed{2}$.", "1, 2"),
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
    for w in R._POOL:
        w.proc.kill()
        w.proc.wait()
    assert R.batch_math_equal(["\\sqrt{4}", "3"], ["2", "3"], num_workers=1) == [True, True]


def test_in_process_timeout_on_main_thread():
    assert R._math_equal_in_process("\\sqrt{8}", "2\\sqrt{2}", 30.0) is True
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


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_payload_direct_is_fast_and_harmless(payload):
    marker = Path("/tmp/simplerl_pwned")
    marker.unlink(missing_ok=True)
    t = time.perf_counter()
    assert R.compute_score(payload, "1") in (-0.5, 1.0)
    assert time.perf_counter() - t < 5.0
    assert not marker.exists()


def test_payloads_in_batch_within_timeout():
    marker = Path("/tmp/simplerl_pwned")
    marker.unlink(missing_ok=True)
    timeout = 3.0
    t = time.perf_counter()
    scores = R.batch_compute_scores(PAYLOADS, ["1"] * len(PAYLOADS), timeout=timeout, num_workers=2)
    assert time.perf_counter() - t < timeout * len(PAYLOADS) / 2 + 10
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
    two_boxes = [r for r in rows if len(R._boxes(r["solution"])) > 1]
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

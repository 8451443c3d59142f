"""distill.py (issue 21): a teacher's responses graded by reward.py; exactly the accepted ones kept; the record;
the rows sft.py trains on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import distill  # noqa: E402
import evaluate  # noqa: E402
import runtime  # noqa: E402
import sft  # noqa: E402

# (question, gold, the teacher's two responses): right, wrong, equal in another form, no box, a stop word
PROBLEMS = [
    ("What is 1/2 + 0?", "\\frac{1}{2}", ["So it is $\\boxed{0.5}$.", "Wait... $\\boxed{2}$"]),
    ("Solve x+1=3.", "2", ["x = 2, so \\boxed{2}<|im_end|>junk after the stop word", "x is 3"]),
    ("Name the set.", "\\{1,2\\}", ["\\boxed{\\{2, 1\\}}", "Let me check. \\boxed{\\{1\\}}"]),
]


class StandIn:
    """evaluate.py's engine interface, answering with fixed texts (the teacher's sampling is not under test)."""
    max_len = 10**6

    def count_tokens(self, prompts):
        return [len(p.split()) for p in prompts]

    def generate(self, problems, progress=True):
        answers = {q: texts for q, _, texts in PROBLEMS}
        return [[(t, 7) for t in answers[p["question"]]] for p in problems]


def run_distill(tmp_path, monkeypatch, keep):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": q, "answer": g}) + "\n" for q, g, _ in PROBLEMS))
    monkeypatch.setattr(evaluate, "make_engine", lambda path, cfg, device: StandIn())
    cfg = distill.Config(model=str(ROOT / "data" / "tiny"), prompt_file=str(prompts), n=2, temperature=1.0,
                         engine="hf", output_dir=str(tmp_path / keep), keep=keep)
    meta = distill.distill(cfg)
    rows = [json.loads(line) for line in (tmp_path / keep / "long_cot.jsonl").read_text().splitlines()]
    return meta, rows


def test_keeps_exactly_the_responses_the_grader_accepts(tmp_path, monkeypatch):
    meta, rows = run_distill(tmp_path, monkeypatch, "correct")
    texts = [t.split("<|im_end|>")[0] for _, _, ts in PROBLEMS for t in ts]
    golds = [g for _, g, ts in PROBLEMS for _ in ts]
    _, verdicts = evaluate.grade(texts, golds)  # reward.py's verdict on every response, independently
    assert verdicts == [True, False, True, False, True, False]
    assert [r["response"] for r in rows] == [t for t, ok in zip(texts, verdicts) if ok]
    assert all(r["correct"] and r["answer"] == g for r, g in zip(rows, [g for g, ok in zip(golds, verdicts) if ok]))
    assert rows[1]["response"] == "x = 2, so \\boxed{2}"  # cut at the stop word, as the RL stage cuts
    assert (meta["responses"], meta["correct"], meta["rows"], meta["problems_solved"]) == (6, 3, 3, 3)
    assert meta["pass_rate"] == 0.5 and meta["sampling"]["n"] == 2 and meta["sampling"]["temperature"] == 1.0
    assert meta["teacher"].endswith("tiny") and meta["keep"] == "correct"
    assert json.loads((tmp_path / "correct" / "distill.json").read_text()) == meta


def test_keep_all_writes_every_response_with_its_verdict(tmp_path, monkeypatch):
    meta, rows = run_distill(tmp_path, monkeypatch, "all")
    assert [r["correct"] for r in rows] == [True, False, True, False, True, False]
    assert meta["rows"] == 6 and meta["pass_rate"] == 0.5


def test_a_prompt_without_a_gold_names_file_line_and_field(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"}\n')
    cfg = distill.Config(prompt_file=str(prompts))
    with pytest.raises(ValueError, match=r"p.jsonl line 2: field 'answer' \(or 'gt_answer'\) missing"):
        distill.load_prompts(cfg)
    with pytest.raises(SystemExit, match="--keep 'best': must be correct or all"):
        distill.validate(distill.Config(prompt_file=str(prompts), keep="best"))


@pytest.mark.slow
def test_tiny_teacher_through_hf_generate_then_sft_trains_on_the_rows(tmp_path):
    """The real path on CPU: distill.py --preset tiny (HF generate, every response kept with its verdict), then
    sft.py --preset tiny reads those rows and takes 3 optimizer steps on them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, "distill.py", "--preset", "tiny", "--limit", "8", "--n", "2",
                        "--generate-max-len", "12", "--keep", "all", "--output-dir", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    meta = json.loads((out / "distill.json").read_text())
    rows = [json.loads(line) for line in (out / "long_cot.jsonl").read_text().splitlines()]
    assert meta["rows"] == len(rows) == 16 and meta["responses"] == 16 and meta["engine"] == "hf"
    assert f"{meta['rows']} rows (all, with their verdicts)" in r.stdout
    _, verdicts = evaluate.grade([x["response"] for x in rows], [x["answer"] for x in rows])
    assert [x["correct"] for x in rows] == verdicts
    r = subprocess.run([sys.executable, "sft.py", "--preset", "tiny", "--train-file", str(out / "long_cot.jsonl"),
                        "--test-file", "", "--levels", "", "--max-steps", "3", "--train-batch-size", "8",
                        "--micro-train-batch-size", "8", "--save-every", "0", "--output-dir", str(tmp_path / "sft")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "16 training examples of 16" in r.stdout
    metrics = runtime.read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["loss"] > 0 for m in metrics)
    assert (tmp_path / "sft" / "final" / "config.json").exists()
    assert sft.Config().max_length == 4096  # the recipe's window the distilled rows are measured against

"""demo.py's other arms' wiring (issue 21), without training: the SimpleRL arm's PPO is the Zero study's PPO but
for its start, its output and its length (demo.SIMPLERL_STEPS); the teacher's data checks itself and is right; the two tables read evaluate.py's
samples; --fresh deletes the arms' files too. The arms' own run is measured in docs/demo.md."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))

import demo  # noqa: E402
import make_synth_data  # noqa: E402
import reward  # noqa: E402
from ppo import REFLECTION  # noqa: E402


def test_simplerl_arm_runs_the_zero_studys_ppo_from_the_warm_up(tmp_path):
    arms = dict(demo.simplerl_steps(tmp_path, quick=False))
    zero = dict(demo.steps(tmp_path, quick=False))["ppo"]
    simplerl = arms["simplerl"]
    differ = [(a, b) for a, b in zip(zero, simplerl) if a != b]
    assert len(zero) == len(simplerl) and differ == [(str(tmp_path / "base/final"), str(tmp_path / "warmup/final")),
                                                     (str(demo.PPO_STEPS), str(demo.SIMPLERL_STEPS)),
                                                     (str(tmp_path / "ppo"), str(tmp_path / "simplerl"))]
    assert str(tmp_path / "teacher/final") in arms["distill"] and "distill.py" in arms["distill"]
    assert str(tmp_path / "distill/long_cot.jsonl") in arms["warmup"]
    assert str(tmp_path / "base/final") in arms["warmup"] and str(tmp_path / "base/final") in arms["sft_ref"]
    assert set(demo.ARM_NAMES) <= set(demo.DEMO_FILES) and {f"{n}.done" for n in demo.ARM_NAMES} <= set(demo.DEMO_FILES)


def test_the_teachers_data_checks_itself_and_is_right(tmp_path):
    (tmp_path / "synth").mkdir()
    rows = make_synth_data.build()["train"][:400]
    (tmp_path / "synth/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = [json.loads(line) for line in demo.teacher_rows(tmp_path).read_text().splitlines()]
    assert teacher and all(r["level"] in (1, 2) and r["style"] == "reflective" for r in teacher)
    assert all(REFLECTION.search(r["solution"]) for r in teacher)
    assert all(reward.compute_score(r["solution"], r["answer"], grader="simplerl") == 1.0 for r in teacher)


def test_the_two_tables_read_evaluates_samples(tmp_path):
    def samples(label, right, reflective, length):
        path = tmp_path / "eval_arms" / label / "synth.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "let me check: 1+1=2\n\\boxed{2}" if reflective else "\\boxed{2}"
        path.write_text("".join(json.dumps({"correct": i < right, "response": text, "length": length}) + "\n"
                                for i in range(4)))
    for label, right, reflective, length in (("base/final", 1, False, 10), ("sft_ref/final", 2, False, 12),
                                             ("ppo/final", 3, True, 30), ("warmup/final", 2, True, 40),
                                             ("simplerl/final", 4, True, 35)):
        samples(label, right, reflective, length)
    text = demo.arm_tables(tmp_path)
    assert "| base + SFT on the reference solutions | 50.0 | 100% | 0% | 12.0 |" in text
    assert "| SimpleRL (warm-up, then RL) | 100.0 | 100% | 100% | 35.0 |" in text
    assert text.count("| SimpleRL-Zero (RL from the base) | 75.0 | 100% | 100% | 30.0 |") == 2  # in both tables

"""The miniature study end to end (demo.py --quick): every artefact is produced, held-out accuracy
after PPO exceeds the base model's, and the sampled rollouts tell the blog's story: the response
length falls, then rises again as "let me check" spreads. The blog's other arms run too, sized to check
their wiring (a few SFT steps, 3 RL steps): both tables have every row and the distilled data's pass rate
and size are reported. 457 s on 2 Xeon cores (2026-12-03)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: demo.py --quick in a subprocess

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402


def run_demo(run: Path) -> str:
    proc = subprocess.run([sys.executable, "demo.py", "--quick", "--run-dir", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_quick_demo_end_to_end(tmp_path):
    run = tmp_path / "demo"
    out = run_demo(run)

    for name in demo.STEP_NAMES + demo.ARM_NAMES:
        assert (run / f"{name}.done").exists(), name
    for f in ("synth/train.jsonl", "synth/test.jsonl", "synth/base.jsonl",
              "base/final/model.safetensors", "base/metrics.jsonl",
              "ppo/final/actor/model.safetensors", "ppo/final/critic", "ppo/metrics.jsonl", "ppo/curves.png",
              "eval/summary.json", "eval/results.md", "eval/accuracy_vs_step.png"):
        assert (run / f).exists(), f
    assert any((run / "ppo/rollouts").glob("step_*.jsonl"))

    summary = json.loads((run / "eval/summary.json").read_text())
    labels = list(summary["results"])
    assert len(labels) >= 3  # base, at least one PPO checkpoint, the final actor
    before, after = summary["results"][labels[0]]["avg"], summary["results"][labels[-1]]["avg"]
    assert after > before, (before, after)
    assert f"base {before:.1f}% -> PPO {after:.1f}%" in out
    assert "| Level 1 | Level 2 |" in out and "| reflection | mean length |" in out
    assert str(run / "ppo/curves.png") in out and "[demo] sampled rollouts during PPO" in out

    # the base model is weak: a fixed 800 steps of "pretraining", where one-go sums are still mostly wrong
    base = [json.loads(line) for line in (run / "base/metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in base) == int(demo.BASE_STEPS)
    assert before < 40.0, before

    # RL on the rule reward: the format rate and the reward rise over training
    ppo = [r for r in map(json.loads, (run / "ppo/metrics.jsonl").read_text().splitlines()) if "reward" in r]
    k = max(1, len(ppo) // 5)
    first, last = ppo[:k], ppo[-k:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "format_rate") > mean(first, "format_rate")
    assert mean(last, "reward") > mean(first, "reward")

    # the aha moment in miniature (fixed steps and seeds, so the same numbers on any machine): the unboxed styles
    # go first and the sampled responses get shorter; then checking spreads and they get longer again
    arc = demo.rollout_arc(run)
    assert arc["reflection_start"] <= 0.10, arc
    assert arc["reflection_end"] >= 0.5, arc
    assert arc["length_min"] <= 0.9 * arc["length_start"], arc
    assert arc["length_end"] >= 1.2 * arc["length_min"], arc

    # the blog's other arms (tiny here): both tables with every row, the distilled data's pass rate and size
    for title, rows in demo.ARM_TABLES.items():
        assert title in out, title
        for name in rows:
            assert f"| {name} | " in out, name
    distilled = json.loads((run / "distill/distill.json").read_text())
    assert distilled["rows"] > 0 and (run / "distill/long_cot.jsonl").exists()
    assert (f"[demo] distilled warm-up data: {distilled['rows']} rows from {distilled['responses']} teacher "
            f"responses (pass rate {100 * distilled['pass_rate']:.1f}%") in out
    assert (run / "arms_curves.png").exists() and "[demo] seconds per step: " in out

    # a second run reuses every finished step
    again = run_demo(run)
    assert again.count("done before, reusing") == len(demo.STEP_NAMES + demo.ARM_NAMES)

"""The miniature SimpleRL-Zero study, end to end on a CPU, in one command.

    python demo.py            # ~12 minutes on 2 cores; a second run reuses the steps already done
    python demo.py --fresh    # start over

The story of the paper in a world small enough to watch: a weak "base" model that answers in
several styles (boxed; "The answer is N"; padded with a code snippet and no box, the way
Qwen2.5-Math-7B pads its answers with code), then PPO with nothing but the rule-based reward
(+1 boxed and right, -0.5 boxed and wrong, -1 no box). RL first drops the unrewarded styles
(format rate rises, responses get shorter), then gets more answers right.

Every step runs one of the project's scripts, the same ones the GPU recipe runs, with --preset tiny:

    1 data   python data/make_synth_data.py --out RUN/synth
    2 base   torchrun sft.py  --preset tiny --train-file RUN/synth/base.jsonl      a brief "pretraining"
    3 ppo    torchrun ppo.py  --preset tiny --model RUN/base/final                 SimpleRL-Zero
    4 eval   python evaluate.py --preset tiny --model RUN/base/final RUN/ppo/checkpoint-*/actor ...

and then prints the before/after table (the paper's layout) and the paths of the pictures:
RUN/ppo/curves.png (training dynamics) and RUN/eval/accuracy_vs_step.png (held-out accuracy and
response length against step). A step is done when its marker file RUN/<step>.done exists.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent


LEVELS = "1,2"  # what a 1M-parameter model learns in minutes on a CPU; levels 3-5 need far more compute


def steps(run: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, command) in the order they run. --quick is the CI-sized version of the same study."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    # The base model stops at the first eval that reaches BASE_ACCURACY: "early" is picked by accuracy,
    # since the step at which the tiny model starts to get sums right varies from run to run.
    base_accuracy, ppo_minutes, ppo_save, ppo_eval = ("0.15", 2.0, 20, 20) if quick else ("0.2", 9.0, 50, 50)
    return [
        ("data", [sys.executable, "data/make_synth_data.py", "--out", str(run / "synth")]),
        ("base", torchrun + ["sft.py", "--preset", "tiny", "--train-file", str(run / "synth/base.jsonl"),
                             "--test-file", str(run / "synth/test.jsonl"), "--levels", LEVELS,
                             "--max-steps", "2200", "--eval-every", "25", "--eval-size", "200",
                             "--stop-at-accuracy", base_accuracy, "--save-every", "0",
                             "--output-dir", str(run / "base")]),
        ("ppo", torchrun + ["ppo.py", "--preset", "tiny", "--model", str(run / "base/final"),
                            "--train-file", str(run / "synth/train.jsonl"),
                            "--test-file", str(run / "synth/test.jsonl"), "--levels", LEVELS,
                            "--time-limit-minutes", str(ppo_minutes), "--save-every", str(ppo_save),
                            "--eval-every", str(ppo_eval), "--keep-checkpoints", "0",
                            "--output-dir", str(run / "ppo")]),
        ("eval", None),  # built after PPO, from the checkpoints it left
    ]


def held_out_split(run: Path) -> Path:
    """evaluate.py reads <data-dir>/synth/test.jsonl: give it the test problems of the levels studied."""
    keep = {int(x) for x in LEVELS.split(",")}
    out = run / "eval_data" / "synth" / "test.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [line for line in (run / "synth/test.jsonl").read_text().splitlines() if json.loads(line)["level"] in keep]
    out.write_text("\n".join(rows) + "\n")
    return out.parent.parent


def eval_command(run: Path) -> list[str]:
    """Base model (step 0), every PPO checkpoint, and the final actor: accuracy against step."""
    ppo_dir = run / "ppo"
    ckpts = sorted(ppo_dir.glob("checkpoint-*/actor"), key=lambda p: int(p.parent.name.split("-")[1]))
    records = [json.loads(line) for line in (ppo_dir / "metrics.jsonl").read_text().splitlines()]
    models = [run / "base/final", *ckpts, ppo_dir / "final/actor"]
    step_ids = [0, *(int(c.parent.name.split("-")[1]) for c in ckpts), records[-1]["step"]]
    return [sys.executable, "evaluate.py", "--preset", "tiny", "--data-dir", str(held_out_split(run)),
            "--model", *map(str, models), "--steps", ",".join(map(str, step_ids)),
            "--output-dir", str(run / "eval")]


def run_step(name: str, cmd: list[str], run: Path, fresh: bool) -> None:
    marker = run / f"{name}.done"
    if marker.exists() and not fresh:
        print(f"[demo] {name}: done before, reusing ({marker})", flush=True)
        return
    print(f"\n[demo] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"[demo] {name} failed with exit code {proc.returncode}; fix it and rerun "
                         f"`python demo.py` to continue from this step")
    marker.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "command": cmd}) + "\n")
    print(f"[demo] {name}: finished in {time.time() - t0:.0f} s", flush=True)


def level_table(run: Path, summary: dict) -> str:
    """Accuracy and format rate per difficulty level, before and after RL (from evaluate.py's samples)."""
    levels = [json.loads(line)["level"] for line in (run / "eval_data/synth/test.jsonl").read_text().splitlines()]
    labels = list(summary["results"])
    rows = {"base": labels[0], "SimpleRL-Zero (PPO)": labels[-1]}
    head = "| model | " + " | ".join(f"Level {lv}" for lv in sorted(set(levels))) + \
           " | all | boxed | mean length |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, label in rows.items():
        by_level, boxed, lengths = defaultdict(list), [], []
        for line in (run / "eval" / label / "synth.jsonl").read_text().splitlines():
            s = json.loads(line)
            by_level[levels[s["idx"]]].append(bool(s["correct"]))  # idx: the row's index in the test file
            boxed.append("boxed" in s["response"])
            lengths.append(s["length"])
        every = [c for v in by_level.values() for c in v]
        cells = [f"{100 * sum(v) / len(v):.1f}" for _, v in sorted(by_level.items())]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * sum(every) / len(every):.1f} | "
                     f"{100 * sum(boxed) / len(boxed):.0f}% | {sum(lengths) / len(lengths):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    p.add_argument("--quick", action="store_true", help="a shortened study (CI): fewer steps")
    args = p.parse_args(argv)
    run = (ROOT / args.run_dir).resolve()
    if args.fresh:
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for name, cmd in steps(run, args.quick):
        run_step(name, cmd if cmd is not None else eval_command(run), run, fresh=False)
    summary = json.loads((run / "eval/summary.json").read_text())
    labels = list(summary["results"])
    before, after = summary["results"][labels[0]]["avg"], summary["results"][labels[-1]]["avg"]
    print("\n[demo] held-out accuracy on the synthetic test set (greedy, exact match after \\boxed{}):\n")
    print(summary["table"])
    print()
    print(level_table(run, summary))
    total = sum(json.loads((run / f"{name}.done").read_text())["seconds"] for name in ("data", "base", "ppo", "eval"))
    print(f"\n[demo] base {before:.1f}% -> PPO {after:.1f}% ({after - before:+.1f} points); the four steps took "
          f"{total:.0f} s ({time.time() - t0:.0f} s this run)")
    print(f"[demo] training dynamics:        {run / 'ppo/curves.png'}")
    print(f"[demo] held-out accuracy vs step: {run / 'eval/accuracy_vs_step.png'}")
    return {"before": before, "after": after, "run": str(run)}


if __name__ == "__main__":
    main()

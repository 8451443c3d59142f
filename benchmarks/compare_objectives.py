"""The 2025 objective menu side by side in the tiny world: one table, one figure (docs/objectives.md).

    flock /tmp/cpu.lock python benchmarks/compare_objectives.py --base /tmp/demo-new/base/final
    python benchmarks/compare_objectives.py --base runs/demo/base/final --steps 20 --only grpo,drgrpo

Each objective is one `ppo.py --preset tiny` run (torchrun, 2 ranks) from the same base model (the demo's: `python
demo.py` builds it, RUN/base/final), on the demo's task (levels 1-2 of data/synth, responses up to 84 tokens),
for a fixed number of RL steps with the same seed and the same prompts in the same order (the first draw of
every step; dynamic sampling draws further prompts); everything not listed below is the tiny preset's:

  ppo-gae      the recipe: critic + GAE (5 critic-only warm-up steps, as the demo), token-mean
  grpo         --advantage grpo --loss-agg seq-mean-token-mean (GRPO as DeepSeekMath wrote it: each
               response's token mean, the z-scored outcome)
  drgrpo       --advantage drgrpo --loss-agg seq-mean-token-sum-norm (no std, each token sum / 84)
  dapo         --advantage grpo --loss-agg token-mean --clip-eps-high 0.28 --dynamic-sampling --overlong filter
  rloo         --advantage rloo (token-mean)
  reinforce++  --advantage reinforce++ (token-mean)

Measured per run: held-out greedy accuracy (ppo.py's eval on every level-1-2 test problem, at steps 0, 10, ...,
the end); over the last --tail steps: sampled accuracy, entropy, truncated share, zero-variance group share
(metrics.jsonl, all ranks) and the mean length in tokens of right and of wrong responses (the rollout dumps,
rank 0's responses; every step is dumped); seconds per RL step (the mean of ppo.py's timed phases, the first
step left out). One seed; with --dynamic-sampling the sampled numbers are over the groups kept. Writes
<out>/summary.json, <out>/table.md and <out>/objectives.png. Measured: docs/objectives.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OBJECTIVES = {
    "ppo-gae": ["--advantage", "gae", "--critic-warmup-steps", "5"],
    "grpo": ["--advantage", "grpo", "--loss-agg", "seq-mean-token-mean"],
    "drgrpo": ["--advantage", "drgrpo", "--loss-agg", "seq-mean-token-sum-norm"],
    "dapo": ["--advantage", "grpo", "--loss-agg", "token-mean", "--clip-eps-high", "0.28", "--dynamic-sampling",
             "--overlong", "filter"],
    "rloo": ["--advantage", "rloo"],
    "reinforce++": ["--advantage", "reinforce++"],
}


def run(name: str, flags: list[str], a, out: Path) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "ppo.py", "--preset", "tiny",
           "--model", a.base, "--train-file", "data/synth/train.jsonl", "--test-file", "data/synth/test.jsonl",
           "--levels", "1,2", "--generate-max-len", "84", "--max-steps", str(a.steps), "--eval-every",
           str(a.eval_every), "--save-every", "0", "--dump-rollouts-every", "1", "--seed", str(a.seed),
           "--overwrite", "--output-dir", str(out / name), *flags]
    print(f"[compare] {name}: {' '.join(flags)}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"[compare] {name} failed (exit {r.returncode}): see {out / name}.log")
    return time.perf_counter() - t0


def summarise(name: str, run_dir: Path, tail: int, tokenizer) -> dict:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    last = steps[-tail:]
    lengths = {True: [], False: []}
    for r in last:
        for row in (run_dir / "rollouts" / f"step_{r['step']}.jsonl").read_text().splitlines():
            row = json.loads(row)
            lengths[row["score"] == 1.0].append(len(tokenizer(row["response"], add_special_tokens=False).input_ids))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    tail_mean = lambda k: mean([r[k] for r in last if k in r])  # noqa: E731
    return {"name": name, "eval": evals, "acc_start": evals[0][1], "acc_end": evals[-1][1],
            "sampled_accuracy": tail_mean("accuracy"), "len_right": mean(lengths[True]),
            "len_wrong": mean(lengths[False]), "n_right": len(lengths[True]), "n_wrong": len(lengths[False]),
            "entropy": tail_mean("entropy"), "truncated": tail_mean("truncated_rate"),
            "zero_variance_groups": tail_mean("zero_variance_groups"),
            "draws": tail_mean("dynamic_sampling_draws"),
            "s_per_step": mean([r["time/step_ms"] / 1000 for r in steps[1:]]),
            "curve": [(r["step"], r["accuracy"], r["response_length"]) for r in steps]}


def table(rows: list[dict], a) -> str:
    lines = [f"| objective | held-out greedy accuracy, step 0 -> {a.steps} | sampled accuracy | length right | "
             "length wrong | entropy | truncated | zero-variance groups | s / RL step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        draws = f" ({r['draws']:.1f} draws)" if r["name"] == "dapo" else ""
        lines.append(f"| {r['name']} | {100 * r['acc_start']:.1f}% -> {100 * r['acc_end']:.1f}% | "
                     f"{100 * r['sampled_accuracy']:.1f}% | {r['len_right']:.1f} | {r['len_wrong']:.1f} | "
                     f"{r['entropy']:.3f} | {100 * r['truncated']:.1f}% | {100 * r['zero_variance_groups']:.0f}%"
                     f"{draws} | {r['s_per_step']:.2f} |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path, smooth: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for r in rows:
        s = [c[0] for c in r["curve"]]
        avg = lambda v: [sum(v[max(0, i - smooth + 1): i + 1]) / len(v[max(0, i - smooth + 1): i + 1])  # noqa: E731
                         for i in range(len(v))]
        line, = axes[0].plot(*zip(*r["eval"]), marker="o", markersize=3, label=r["name"])
        axes[1].plot(s, avg([c[1] for c in r["curve"]]), color=line.get_color())
        axes[2].plot(s, avg([c[2] for c in r["curve"]]), color=line.get_color())
    for ax, title in zip(axes, ["held-out greedy accuracy", f"sampled accuracy ({smooth}-step mean)",
                                f"mean response length, tokens ({smooth}-step mean)"]):
        ax.set(title=title, xlabel="RL step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the base model folder (the demo's RUN/base/final)")
    p.add_argument("--steps", type=int, default=40, help="RL steps per objective")
    p.add_argument("--eval-every", type=int, default=10, help="RL steps between held-out evals")
    p.add_argument("--tail", type=int, default=5, help="last RL steps whose rollouts the table averages")
    p.add_argument("--seed", type=int, default=0, help="the runs' --seed")
    p.add_argument("--only", default="", help="comma-separated objectives (default: all)")
    p.add_argument("--out", default="/tmp/compare_objectives", help="run folders, logs, table and figure")
    p.add_argument("--report-only", action="store_true", help="summarise runs already in --out")
    a = p.parse_args()
    names = [n for n in (a.only.split(",") if a.only else OBJECTIVES) if n]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise SystemExit(f"--only: unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    if not Path(a.base, "config.json").is_file():
        raise SystemExit(f"--base {a.base}: no model folder there (python demo.py builds RUN/base/final)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = {}
    if not a.report_only:
        for name in names:
            wall[name] = run(name, OBJECTIVES[name], a, out)
            print(f"[compare] {name}: {wall[name]:.0f} s", flush=True)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(a.base)
    rows = [summarise(n, out / n, a.tail, tokenizer) for n in names]
    md = table(rows, a)
    (out / "table.md").write_text(md + "\n")
    (out / "summary.json").write_text(json.dumps({"args": vars(a), "wall_s": wall, "flags": OBJECTIVES,
                                                  "rows": rows}, indent=1))
    figure(rows, out / "objectives.png", smooth=5)
    print(md)
    if wall:
        print(f"[compare] {len(wall)} runs in {sum(wall.values()) / 60:.1f} min")


if __name__ == "__main__":
    main()

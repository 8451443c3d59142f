"""Time PPO steps in the tiny world: ms per RL step split by phase, tokens/s and peak RSS.

    flock /tmp/simplerl-cpu.lock python benchmarks/bench_ppo.py --model runs/sft-tiny/final            # 2 ranks
    flock /tmp/simplerl-cpu.lock python benchmarks/bench_ppo.py --model runs/sft-tiny/final --nproc 1

Runs `ppo.py --preset tiny` for --steps RL steps (no eval, no checkpoints) and summarises metrics.jsonl,
dropping the first step (one-off warm-up). Extra arguments go to ppo.py unchanged.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="data/tiny", help="an SFT checkpoint (data/tiny: random init)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as out:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}"] \
            if args.nproc > 1 else [sys.executable]
        cmd = launcher + ["ppo.py", "--preset", "tiny", "--model", args.model, "--output-dir", out, "--max-steps",
                          str(args.steps), "--test-file", "", "--save-every", "0", "--dump-rollouts-every", "0",
                          "--time-limit-minutes", "0", "--critic-warmup-steps", "0", *extra]
        subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                       stdout=subprocess.DEVNULL)
        recs = [json.loads(line) for line in open(Path(out) / "metrics.jsonl") if "time/step_ms" in line][1:]
    mean = lambda k: sum(r[k] for r in recs) / len(recs)  # noqa: E731
    phases = ["sync", "generate", "score", "forward", "train"]
    print(f"{args.nproc} rank(s), {len(recs)} steps: {mean('time/step_ms'):.0f} ms/step = "
          + " + ".join(f"{p} {mean(f'time/{p}_ms'):.0f}" for p in phases)
          + f"; {mean('tokens_per_s'):.0f} generated tokens/s per step; generate alone "
          f"{mean('generate_tokens_per_s'):.0f} tokens/s; peak RSS {max(r['mem/peak_rss_mb'] for r in recs):.0f} MiB "
          f"(rank 0); response length {mean('response_length'):.1f}")


if __name__ == "__main__":
    main()

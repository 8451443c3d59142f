"""CPU throughput of evaluate.py's HF engine in the tiny world (problems/s, generated tokens/s).

    flock /tmp/simplerl-cpu.lock python benchmarks/bench_evaluate.py [--model data/tiny] [--limit 256]
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import evaluate as ev  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", default=str(ROOT / "data/tiny"))
p.add_argument("--limit", default="256")
p.add_argument("--batch-size", default="64")
a = p.parse_args()
with tempfile.TemporaryDirectory() as out:
    s = ev.evaluate(ev.parse_args(["--preset", "tiny", "--data-dir", str(ROOT / "data"), "--model", a.model,
                                   "--limit", a.limit, "--batch-size", a.batch_size, "--output-dir", out]))
r = next(iter(s["results"].values()))["synth"]
print(f"synth x{r['n_problems']}: {r['problems_per_s']:.1f} problems/s, {r['tokens_per_s']:.0f} generated tokens/s, "
      f"mean length {r['mean_length']:.1f} tokens, {r['seconds']:.2f} s")

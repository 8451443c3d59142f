"""Rollout throughput of the two engines in the tiny world: vLLM for CPU against HF generate, same prompts,
same settings (ppo.py's RL step: 32 prompts x 8 samples, temperature 1, up to 48 new tokens, one process).

    flock /tmp/simplerl-cpu.lock python benchmarks/bench_engines.py --model <tiny SFT checkpoint with weights>
"""
import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import ppo  # noqa: E402
import runtime  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--prompts", type=int, default=32)
p.add_argument("--n", type=int, default=8)
p.add_argument("--temperature", type=float, default=1.0)
a = p.parse_args()
rank, world, device = runtime.init_distributed()
cfg = ppo.parse_args(["--preset", "tiny", "--model", a.model])
tok = AutoTokenizer.from_pretrained(a.model)
rows, _ = runtime.tokenize_prompts(ppo.read_prompts(cfg.train_file, cfg.template, cfg.levels), tok, cfg.prompt_max_len)
actor = runtime.shard_model(runtime.load_model(a.model, cfg.seed), device)
for kind in ("hf", "vllm"):
    engine, _ = ppo.make_engine(dataclasses.replace(cfg, engine=kind), actor.config, tok, rank, world, device)
    ppo.sync_weights(actor, engine, 0)
    times, tokens = [], []
    for r in range(a.rounds + 1):  # round 0 warms up
        prompts = [rows[i]["ids"] for i in runtime.prompts_at(r * a.prompts, a.prompts, len(rows), 0)]
        torch.manual_seed(r)
        t = time.perf_counter()
        samples = engine.generate(prompts, a.n, a.temperature, 1.0, cfg.generate_max_len)
        if r:
            times.append(time.perf_counter() - t)
            tokens.append(sum(len(s.response_ids) for s in samples))
    print(f"{kind:5s}: {sum(tokens) / sum(times):8.0f} generated tokens/s ({a.prompts} prompts x {a.n}, "
          f"T={a.temperature}, mean length {sum(tokens) / (a.rounds * a.prompts * a.n):.1f}, "
          f"{1000 * sum(times) / a.rounds:.0f} ms per round)", flush=True)
    engine.close()
torch.distributed.destroy_process_group()

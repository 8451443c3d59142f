"""A step-time model of ppo.py's 7B recipe on 8 x H100 / H200, on paper: where one RL step's time goes, with
and without the packed, rank-balanced update passes (--train-forward-tokens).

    python benchmarks/gpu_step_model.py                        # the recipe, early-training lengths
    python benchmarks/gpu_step_model.py --mean-response 1500   # a later-training length profile
    python benchmarks/gpu_step_model.py --lengths runs/ppo/rollouts/step_40.jsonl --tokenizer ...  # recorded

The work is the recipe's (ppo.Config defaults): 1,024 prompts x 8 samples per RL step on 8 GPUs (1,024
sequences per rank), 64 mini-batches of 128, actor + critic trained, reference frozen, gradient checkpointing
on. Prompt lengths: v0's 8,523 MATH prompts tokenized with the real Qwen2.5 tokenizer (../shared/data; a
seeded draw of 8,192), truncated at 1,024. Response lengths: a log-normal (sigma 1.0) whose median is set so
the capped mean is --mean-response (default 700, early training) with its tail at the 3,000-token cap
(~3.4% there at the default, as SimpleRL-Zero's early steps), drawn with a seed; or read from a rollouts
dump. Each rank holds its own samples (as ppo.py: each rank generates its share).

The batching is ppo.py's own: the experience forwards are grouped by runtime.forward_groups (padded groups
of <= --rollout-forward-tokens, or packed with --train-forward-tokens > 0), the update passes by
runtime.plan_passes (packed: a mini-batch's 128 rows dealt across the 8 ranks, <= 16,384 tokens a pass) or,
unpacked, by micro_batches' rule (each rank's 16 rows of a mini-batch sorted by length, 2 per pass, each
pass padded to its own longest prompt + longest response). Passes run in lock-step: pass j of the update
costs the slowest rank's time.

Assumptions (each a flag; the first GPU run calibrates them against metrics.jsonl's time/* and perf/*):
  - peak 989 TFLOP/s bf16 dense (H100 and H200 SXM); HBM 3.35 TB/s (H100), 4.8 TB/s (H200); NCCL
    all-gather / reduce-scatter bus bandwidth 360 GB/s (NVLink 4).
  - a pass of t tokens runs its matmuls at eff(t) = 0.55 x t / (t + 1,024) of peak: small passes do not fill
    the GPU (the 2-row passes of ~1,600 tokens: ~33%; 16k tokens: ~52%; torchtitan reports 33-39% MFU for
    whole FSDP2 training steps on 8 H100).
  - FLOPs per token: 2 x 6.53e9 (non-embedding weights) + 2 x 28 x 3584 x context/2 (causal attention),
    + 2 x 3584 x 152,064 for each token whose logits are taken (the actor's and reference's response tokens);
    x3 for a forward+backward, x4 with gradient checkpointing (a second forward).
  - FSDP2 per pass and network: the bf16 weights all-gathered in forward and again in backward (15.2 GB each)
    and fp32 gradients reduce-scattered (30.5 GB), 7/8 of each on the wire; overlapped with compute except
    one layer's share: a pass costs max(compute, comm) + comm / 28.
  - a host sync (.item()) stalls the GPU queue 3 ms; 7 per pass before this issue, 0 after (perf/host_syncs:
    ~2 per mini-batch now); 5 ms of launch overhead per pass.
  - generation (vLLM, bandwidth-bound decode): per step (15.2 GB of weights + the live KV cache, 57 KB per
    token) / (0.75 x HBM) + 1.5 ms, until the rank's longest response ends; prefill at eff 0.5.
  - weight sync: the bf16 gather of 15.2 GB (7/8 on the wire) + loading into vLLM at 100 GB/s.
  - checkpoints every 4 steps, ~80 s each, synchronous (FACTS.md): 20 s per step, the same in both columns.
Peers (published, for the comparison in README.md): v0 itself (OpenRLHF, 32 GPUs) ~1,080 s/step; SimpleRL-Zoo
on verl (GRPO, 16 H100) ~540 s/step; the FLOP/bandwidth limit of this recipe ~136 s/step.
The last line printed is one JSON object.
"""
import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TRAIN = SHARED / "train" / "simplerl_zero_v0" / "math_level3to5_data_processed_with_qwen_prompt.json"
GPUS = {"h100": dict(peak=989e12, hbm=3.35e12), "h200": dict(peak=989e12, hbm=4.8e12)}
LAYERS, HIDDEN, VOCAB, NON_EMBED, KV_PER_TOKEN = 28, 3584, 152064, 6.53e9, 2 * 28 * 4 * 128 * 2
WEIGHTS_BF16 = 15.2e9


def prompt_lengths(n: int, seed: int, max_len: int) -> list[int]:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(SHARED / "qwen2.5_tokenizer"))
    rows = ppo.read_prompts(str(TRAIN), "simplerl")
    lengths = [min(len(ids), max_len) for ids in tok([r["prompt"] for r in rows])["input_ids"]]
    return [lengths[i] for i in random.Random(seed).choices(range(len(lengths)), k=n)]


def response_lengths(n: int, mean: float, cap: int, seed: int, sigma: float = 1.0) -> list[int]:
    """A log-normal capped at `cap`, its median solved so the capped mean is `mean`."""
    g = random.Random(seed)
    z = [g.gauss(0, 1) for _ in range(n)]
    lo, hi = 1.0, 20.0
    for _ in range(60):
        mu = (lo + hi) / 2
        m = sum(min(max(int(math.exp(mu + sigma * x)), 1), cap) for x in z) / n
        lo, hi = (mu, hi) if m < mean else (lo, mu)
    return [min(max(int(math.exp(mu + sigma * x)), 1), cap) for x in z]


def flops(tokens: float, context: float, logit_tokens: float) -> float:
    """Forward FLOPs of `tokens` tokens at mean attention context `context`."""
    return tokens * (2 * NON_EMBED + 2 * LAYERS * HIDDEN * context) + logit_tokens * 2 * HIDDEN * VOCAB


def eff(tokens: float, a) -> float:
    return a.eff_max * tokens / (tokens + a.eff_half)


def pass_time(tokens, context, logit_tokens, mult, a, gpu, syncs) -> float:
    """One pass of one network: compute at eff(tokens), FSDP's collectives overlapped but for one layer's."""
    compute = mult * flops(tokens, context, logit_tokens) / (GPUS[gpu]["peak"] * eff(tokens, a))
    comm_bytes = (WEIGHTS_BF16 * (2 if mult > 1 else 1) + (2 * WEIGHTS_BF16 if mult > 1 else 0)) * 7 / 8
    comm = comm_bytes / a.bus_bw
    return max(compute, comm) + comm / LAYERS + 0.005 + syncs * 0.003


def row_cost(p: int, r: int) -> tuple[float, float]:
    return p + r, (p + r) / 2  # tokens, mean causal context


def experience_s(prompts, responses, a, gpu, packed: bool) -> tuple[float, int, int]:
    """Three no-grad forwards (actor, reference, critic) over runtime.forward_groups' groups of one rank."""
    samples = [runtime.Sample([0] * p, [0] * r, False, None) for p, r in zip(prompts, responses)]
    batch = ppo.pad_samples(samples, 0)
    groups = runtime.forward_groups(batch, 0, a.rollout_forward_tokens, packed)
    total, computed = 0.0, 0
    for g in groups:
        if packed:
            tokens = sum(prompts[i] + responses[i] for i in g)
            context = sum((prompts[i] + responses[i]) ** 2 / 2 for i in g) / tokens
        else:
            tokens = len(g) * (max(prompts[i] for i in g) + max(responses[i] for i in g))
            context = tokens / len(g) / 2
        resp = sum(responses[i] for i in g) if packed else len(g) * max(responses[i] for i in g)
        computed += tokens
        total += sum(pass_time(tokens, context, lt, 1, a, gpu, 0) for lt in (resp, resp, 0))
    return total, computed, sum(p + r for p, r in zip(prompts, responses))


def update_s(ranks: list[list[tuple[int, int]]], a, gpu, packed: bool) -> tuple[float, int, int, int]:
    """Lock-step passes of the actor and the critic over 64 mini-batches; (seconds, passes per rank, tokens
    computed, real tokens)."""
    world, per_rank = len(ranks), a.train_batch_size // len(ranks)
    mult = 4 if a.gradient_checkpointing else 3
    syncs = 0 if packed else 7
    total, passes, computed, real = 0.0, 0, 0, 0
    order = [random.Random(a.seed + r).sample(range(len(rows)), len(rows)) for r, rows in enumerate(ranks)]
    for start in range(0, len(ranks[0]), per_rank):
        mini = [[ranks[r][i] for i in order[r][start: start + per_rank]] for r in range(world)]
        if packed:
            rows = [x for part in mini for x in part]
            plan = runtime.plan_passes([p + r for p, r in rows], world, a.train_forward_tokens)
            per_pass = [[[rows[k] for k in plan[r][j]] for r in range(world)] for j in range(len(plan[0]))]
        else:
            sorted_rows = [sorted(m, key=lambda x: x[0] + x[1]) for m in mini]
            per_pass = [[m[k: k + a.micro_train_batch_size] for m in sorted_rows]
                        for k in range(0, per_rank, a.micro_train_batch_size)]
        for ranks_rows in per_pass:
            slowest = 0.0
            for rows in ranks_rows:
                if packed:
                    tokens = sum(p + r for p, r in rows)
                    context = sum((p + r) ** 2 / 2 for p, r in rows) / tokens
                    resp = sum(r for _, r in rows)
                else:
                    width = max(p for p, _ in rows) + max(r for _, r in rows)
                    tokens, context, resp = len(rows) * width, width / 2, len(rows) * max(r for _, r in rows)
                computed += tokens
                real += sum(p + r for p, r in rows)
                t = sum(pass_time(tokens, context, lt, mult, a, gpu, syncs) for lt in (resp, 0))
                slowest = max(slowest, t)
            total += slowest
            passes += 1
    return total, passes, computed // world, real // world


def generation_s(prompts, responses, a, gpu) -> float:
    hbm = GPUS[gpu]["hbm"] * 0.75
    prefill = sum(prompts) * 2 * NON_EMBED / (GPUS[gpu]["peak"] * 0.5)
    resp = sorted(responses, reverse=True)
    mean_prompt = sum(prompts) / len(prompts)
    t, live, k = prefill, len(resp), 0
    for step in range(resp[0]):
        while live and resp[live - 1] <= step:
            live -= 1
        t += (WEIGHTS_BF16 + live * (mean_prompt + step) * KV_PER_TOKEN) / hbm + 0.0015
        k += 1
    return t


def model(a, gpu: str, packed: bool, prompts, responses) -> dict:
    world = 8
    n = len(prompts) // world
    ranks = [list(zip(prompts[r * n:(r + 1) * n], responses[r * n:(r + 1) * n])) for r in range(world)]
    gen = max(generation_s([p for p, _ in rk], [r for _, r in rk], a, gpu) for rk in ranks)
    exp = max(experience_s([p for p, _ in rk], [r for _, r in rk], a, gpu, packed)[0] for rk in ranks)
    upd, passes, computed, real = update_s(ranks, a, gpu, packed)
    sync = WEIGHTS_BF16 * 7 / 8 / a.bus_bw + WEIGHTS_BF16 / 100e9  # bf16 shards gathered (stream_weights)
    phases = {"sync": sync, "generate": gen, "experience": exp, "update": upd, "checkpoint": a.checkpoint_s}
    step = sum(phases.values())
    tokens = sum(prompts) + sum(responses)
    # model FLOPs of the update: 3 x forward (no recompute), the actor with its head, the critic without
    useful = 3 * (flops(tokens, 0, sum(responses)) + flops(tokens, 0, 0))
    mfu_update = useful / world / (upd * GPUS[gpu]["peak"])
    return {"phases": phases, "step": step, "tokens_per_s_gpu": tokens / step / world,
            "mfu_update": mfu_update, "update_passes": passes, "update_pad_fraction": 1 - real / computed}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mean-response", type=float, default=700.0)
    ap.add_argument("--lengths", default="", help="a rollouts/step_<N>.jsonl dump: its response lengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eff-max", type=float, default=0.55)
    ap.add_argument("--eff-half", type=float, default=1024.0)
    ap.add_argument("--bus-bw", type=float, default=360e9)
    ap.add_argument("--checkpoint-s", type=float, default=20.0)
    ap.add_argument("--train-forward-tokens", type=int, default=ppo.Config.train_forward_tokens)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    a = ap.parse_args(argv)
    cfg = ppo.Config()
    a.train_batch_size, a.micro_train_batch_size = cfg.train_batch_size, cfg.micro_train_batch_size
    a.rollout_forward_tokens = cfg.rollout_forward_tokens
    runtime.init_distributed("cpu")
    n = cfg.rollout_batch_size * cfg.n_samples_per_prompt
    prompts = [p for p in prompt_lengths(cfg.rollout_batch_size, a.seed, cfg.prompt_max_len)
               for _ in range(cfg.n_samples_per_prompt)]
    if a.lengths:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(SHARED / "qwen2.5_tokenizer"))
        got = [len(tok(json.loads(x)["response"])["input_ids"]) for x in open(a.lengths) if x.strip()]
        responses = [got[i % len(got)] for i in range(n)]
    else:
        responses = response_lengths(n, a.mean_response, cfg.generate_max_len, a.seed)
    capped = sum(r >= cfg.generate_max_len for r in responses) / n
    print(f"work: {n} sequences per RL step, prompts mean {sum(prompts) / n:.0f} tokens, responses mean "
          f"{sum(responses) / n:.0f} (max {max(responses)}, {capped:.1%} at the cap); 8 GPUs")
    out = {}
    for gpu in ("h100", "h200"):
        for packed in (False, True):
            r = model(a, gpu, packed, prompts, responses)
            name = f"{gpu}_s_per_step" + ("" if packed else "_unpacked")
            out[name] = round(r["step"], 1)
            out[name.replace("s_per_step", "tokens_per_s_gpu")] = round(r["tokens_per_s_gpu"])
            out[name.replace("s_per_step", "mfu_update")] = round(r["mfu_update"], 3)
            label = f"--train-forward-tokens {a.train_forward_tokens if packed else 0}"
            phases = "  ".join(f"{k} {v:6.1f}s" for k, v in r["phases"].items())
            print(f"{gpu.upper()} {label:28s} {phases}"
                  + f"  = {r['step']:6.1f} s/step, {r['tokens_per_s_gpu']:,.0f} tokens/s/GPU, update MFU "
                  f"{r['mfu_update']:.1%}, {r['update_passes']} update passes/rank, update padding "
                  f"{r['update_pad_fraction']:.1%}")
    print("peers: v0 (OpenRLHF, 32 GPUs) ~1,080 s/step; SimpleRL-Zoo (verl GRPO, 16 H100) ~540 s/step; "
          "FLOP/bandwidth limit ~136 s/step")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

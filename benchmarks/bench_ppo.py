"""ppo.py's RL step beside TRL's GRPOTrainer, on identical work, in one invocation.

    pip install -r requirements-bench.txt          # TRL and what it needs (benchmark only)
    flock /tmp/simplerl-cpu.lock python benchmarks/bench_ppo.py                    # gae, grpo, trl
    flock /tmp/simplerl-cpu.lock python benchmarks/bench_ppo.py --only gae --steps 5 -- --old-logprobs sampler

The work (issue 15): the data/tiny Qwen2 randomly initialised with seed 0 (written once to a temporary folder,
which every run then loads, so all start from the same weights and TRL's reference is that same model), the
synthetic task's level 1-2 prompts in ppo.py's order (`runtime.prompts_at`, seed 0), 32 prompts x 8 samples per RL
step at temperature 1, up to 48 new tokens, stop at <|im_end|> / <|endoftext|>, 4 optimizer steps of 64
responses per RL step (1 epoch), lr 1e-4, AdamW (0.9, 0.95), clip 0.2, KL coefficient 0.02, token-mean
losses, fp32, HF generate, one process (no torchrun), --threads torch threads in each.

  gae   ppo.py --preset tiny --advantage gae   (actor, reference, critic; GAE; the tiny preset's critic lr)
  grpo  ppo.py --preset tiny --advantage grpo  (no critic; group-normalised outcome rewards)
  gae+sampler, grpo+sampler   the same with --old-logprobs sampler: pi_old from the rollout engine's log-probs
        instead of the recipe's no-grad actor forward (a deviation from the recipe; printed when run)
  trl   TRL GRPOTrainer (use_cpu, per_device_train_batch_size 64, steps_per_generation 4, num_generations 8,
        max_completion_length 48, beta 0.02, loss_type dapo = token-mean): one generation round = one RL step

Each run is --warmup + --steps RL steps in its own fresh process; the first --warmup are dropped. --repeats
rounds each run every variant once, in turn (this machine's speed drifts by 10-20% over minutes: a slow spell then
falls on every variant), and the median of all measured steps of all rounds is reported, with the range of the
per-round ratios to TRL. ppo.py's step is the sum of its timed phases (sync, generate, score, forward,
train: everything but the per-step metrics record), TRL's the wall time between the ends of its generation
rounds (its 4 optimizer steps each). Arguments after `--` go to every ppo.py run (printed, e.g. a deviation
from the recipe such as `--old-logprobs sampler`). tokens/s: generated tokens / step time.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The workload, pinned here so that a change of the tiny preset's defaults does not change the benchmark.
PROMPTS, SAMPLES, MAX_NEW, TRAIN_BATCH, LR, KL, SEED = 32, 8, 48, 64, 1e-4, 0.02, 0
PPO_WORK = ["--rollout-batch-size", str(PROMPTS), "--n-samples-per-prompt", str(SAMPLES), "--generate-max-len",
            str(MAX_NEW), "--train-batch-size", str(TRAIN_BATCH), "--actor-lr", str(LR), "--kl-coef", str(KL),
            "--temperature", "1.0", "--top-p", "1.0", "--ppo-epochs", "1", "--clip-eps", "0.2", "--levels", "1,2",
            "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--max-grad-norm", "1.0", "--loss-agg", "token-mean",
            "--seed", str(SEED), "--engine", "hf"]


def write_init(folder: Path) -> None:
    """data/tiny's random init with the seed, as ppo.py's load_model draws it, saved as a model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    import reward
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ROOT / "data/tiny"), dtype=torch.float32,
                                             attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data/tiny")
    # the stop tokens ppo.py's engine stops at (reward.STOP_WORDS): TRL stops and masks at generation_config's
    model.generation_config.eos_token_id = sorted(tokenizer.convert_tokens_to_ids(w) for w in reward.STOP_WORDS
                                                  if w in tokenizer.get_vocab())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def ppo_flags() -> str:
    return subprocess.run([sys.executable, "ppo.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def run_ppo(advantage: str | None, init: Path, out: Path, steps: int, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "ppo.py", "--preset", "tiny", "--model", str(init), "--output-dir", str(out),
           "--max-steps", str(steps), "--test-file", "", "--save-every", "0", "--dump-rollouts-every", "0",
           "--time-limit-minutes", "0", "--critic-warmup-steps", "0", *PPO_WORK,
           *(["--advantage", advantage] if advantage else []), *extra]
    subprocess.run(cmd, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL)
    recs = [json.loads(line) for line in open(out / "metrics.jsonl") if "time/step_ms" in line]
    return {"step_s": [r["time/step_ms"] / 1000 for r in recs],
            "tokens": [r["response_length"] * PROMPTS * SAMPLES for r in recs],
            "phases": [{k[5:-3]: v / 1000 for k, v in r.items() if k.startswith("time/") and k != "time/step_ms"}
                       for r in recs]}


def trl_worker(a) -> None:
    """One TRL GRPOTrainer run; prints one JSON line: per-round seconds and generated tokens."""
    import torch
    torch.set_num_threads(a.threads)
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    import ppo
    import runtime
    import reward

    rows = ppo.read_prompts(str(ROOT / "data/synth/train.jsonl"), "tiny", "1,2")
    order = runtime.prompts_at(0, PROMPTS * a.rounds, len(rows), SEED)  # ppo.py's prompts, in its order
    data = Dataset.from_list([{"prompt": rows[i]["prompt"], "gold": rows[i]["gold"]} for i in order])
    tokenizer = AutoTokenizer.from_pretrained(a.trl_worker)
    tokens = []

    def rule_reward(completions, gold, completion_ids, **_):  # the same reward as ppo.py's tiny preset
        tokens.append(sum(len(c) for c in completion_ids))
        return [reward.compute_score(c, g, grader="simplerl") for c, g in zip(completions, gold)]

    ends = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, *rest, **kwargs):
            if state.global_step % 4 == 0:  # the end of a generation round (4 optimizer steps)
                ends.append(time.perf_counter())

    cfg = GRPOConfig(output_dir=a.out, use_cpu=True, per_device_train_batch_size=TRAIN_BATCH,
                     steps_per_generation=PROMPTS * SAMPLES // TRAIN_BATCH, gradient_accumulation_steps=1,
                     num_generations=SAMPLES, max_completion_length=MAX_NEW, beta=KL, temperature=1.0, top_p=1.0,
                     top_k=0, learning_rate=LR, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, epsilon=0.2,
                     num_iterations=1, loss_type="dapo", max_steps=a.rounds * PROMPTS * SAMPLES // TRAIN_BATCH,
                     shuffle_dataset=False, gradient_checkpointing=False, bf16=False, seed=SEED,
                     logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                     dataloader_num_workers=0)
    trainer = GRPOTrainer(model=a.trl_worker, reward_funcs=rule_reward, args=cfg, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    print(json.dumps({"step_s": [b - a_ for a_, b in zip(ends, ends[1:])], "tokens": tokens,
                      "threads": torch.get_num_threads()}), flush=True)


def summary(name: str, runs: list[dict], warmup: int) -> dict:
    """Pooled over rounds: the median step of all measured steps, tokens/s, mean length, and the median phases;
    `rounds` keeps each round's median step (for the per-round ratios)."""
    step = [x for r in runs for x in r["step_s"][warmup:]]
    tok = [x for r in runs for x in r["tokens"][warmup:]]
    out = {"name": name, "s_step": statistics.median(step), "tok_s": sum(tok) / sum(step),
           "len": sum(tok) / len(tok) / (PROMPTS * SAMPLES), "n": len(step),
           "rounds": [statistics.median(r["step_s"][warmup:]) for r in runs]}
    if "phases" in runs[0]:
        ph = [p for r in runs for p in r["phases"][warmup:]]
        out["phases"] = {k: statistics.median(p[k] for p in ph) for k in ph[0]}
    return out


def run_trl(init: Path, out: Path, a, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(init), "--out", str(out),
           "--rounds", str(a.warmup + a.steps), "--threads", str(a.threads)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"TRL run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="RL steps measured per run (after --warmup)")
    p.add_argument("--warmup", type=int, default=1, help="RL steps dropped at the start of each run")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds; each runs every variant once, in turn, so that a slow spell of the machine "
                        "falls on all of them")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (OMP_NUM_THREADS for ppo.py)")
    p.add_argument("--only", default="gae,grpo,gae+sampler,grpo+sampler,trl",
                   help="comma-separated subset of gae, grpo, gae+sampler, grpo+sampler (--old-logprobs sampler), trl")
    p.add_argument("--trl-worker", help=argparse.SUPPRESS)  # internal: run TRL on this model folder
    p.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if a.trl_worker:
        return trl_worker(a)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    want = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in want if x not in ("gae", "grpo", "gae+sampler", "grpo+sampler", "trl")]
    if unknown:
        p.error(f"--only: unknown run(s) {', '.join(unknown)}; choose from gae, grpo, gae+sampler, "
                "grpo+sampler, trl")
    if "trl" in want and importlib.util.find_spec("trl") is None:
        print("trl: skipped, TRL is not installed here: pip install -r requirements-bench.txt "
              "(trl==1.16.0, accelerate, datasets; benchmark only)", flush=True)
        want.remove("trl")
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        write_init(init)
        has_advantage = "--advantage" in ppo_flags()
        print(f"work: {PROMPTS} prompts x {SAMPLES} samples, <= {MAX_NEW} new tokens, {PROMPTS * SAMPLES // TRAIN_BATCH} "
              f"optimizer steps of {TRAIN_BATCH}, lr {LR:g}, KL {KL:g}, T=1; {a.warmup} warm-up + {a.steps} measured "
              f"RL steps per run, {a.repeats} rounds of every variant in turn, {a.threads} threads, one process "
              "each", flush=True)
        if extra:
            print(f"ppo.py runs get extra flags: {' '.join(extra)}", flush=True)
        for name in list(want):
            advantage, _, sampler = name.partition("+")
            if name != "trl" and not has_advantage and (advantage == "grpo" or sampler):
                print(f"{name}: skipped, this ppo.py has no --advantage / --old-logprobs flag yet", flush=True)
                want.remove(name)
            elif sampler:  # a deviation from the recipe (v0 scores pi_old with a trainer forward): say so
                print(f"{name}: ppo.py --advantage {advantage} --old-logprobs sampler (the rollout engine's "
                      "log-probs as pi_old, not the recipe's trainer forward)", flush=True)
        for k in range(a.repeats):
            for name in want:
                t = time.perf_counter()
                out = Path(tmp) / f"{name}-{k}"
                if name == "trl":
                    r = run_trl(init, out, a, env)
                else:
                    advantage, _, sampler = name.partition("+")
                    flags = ["--old-logprobs", "sampler"] if sampler else []
                    r = run_ppo(advantage if has_advantage else None, init, out, a.warmup + a.steps,
                                flags + extra, env)
                runs.setdefault(name, []).append(r)
                print(f"round {k + 1}/{a.repeats} {name}: done in {time.perf_counter() - t:.0f} s, median step "
                      f"{statistics.median(r['step_s'][a.warmup:]):.2f} s", flush=True)
    results = [summary("TRL GRPOTrainer" if name == "trl" else f"ppo.py {name}", runs[name], a.warmup)
               for name in want]
    trl = next((r for r in results if r["name"].startswith("TRL")), None)
    print(f"\n{'run':20s} {'s/step':>7s} {'tokens/s':>9s} {'mean len':>8s} {'vs TRL':>7s} {'rounds':>11s}  "
          "phases (median s)")
    for r in results:
        ratio = f"{r['s_step'] / trl['s_step']:.2f}x" if trl else "-"
        per_round = [x / y for x, y in zip(r["rounds"], trl["rounds"])] if trl else []
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}x" if per_round else "-"
        phases = " ".join(f"{k} {v:.2f}" for k, v in r.get("phases", {}).items())
        print(f"{r['name']:20s} {r['s_step']:7.2f} {r['tok_s']:9.0f} {r['len']:8.1f} {ratio:>7s} {spread:>11s}  "
              f"{phases}")
    if trl:
        for r in results:
            if r["name"].startswith("ppo.py"):
                ratio, target = r["s_step"] / trl["s_step"], 0.9 if "grpo" in r["name"] else 1.4
                print(f"{r['name']}: {ratio:.2f}x TRL's time per step, target <= {target}x: "
                      f"{'met' if ratio <= target else 'NOT met'}")


if __name__ == "__main__":
    main()

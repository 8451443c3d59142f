"""distill.py: SimpleRL's long-CoT warm-up data made the way the blog made it: a teacher answers the training
problems, reward.py grades every answer against the gold, and the correct ones become sft.py's rows.

    python distill.py --model Qwen/QwQ-32B-Preview --tp 4 --prompt-file data/train/math_level3to5.jsonl \
        --output-dir runs/distill                                   # vLLM, one engine over 4 GPUs
    torchrun --nproc_per_node=8 distill.py --tp 4 <the same flags>  # two engines of 4 GPUs, half the problems
    python distill.py --preset tiny --model runs/teacher/final      # CPU: HF generate, the tiny world
    torchrun --nproc_per_node=8 sft.py --train-file runs/distill/long_cot.jsonl ...  # warm-up, then ppo.py

A stage of evaluate.py's machinery, not a copy of it: its engines (vLLM; HF `generate` on CPU or for a random
init), its sharding of problems over ranks and vLLM replicas, its grading (`evaluate.grade`: reward.py's
extraction and `math_equal`, or v0's verdicts with --grader v0).

  1. prompts   --prompt-file rows with a question (`question`/`problem`) and a gold (`answer`/`gt_answer`):
               ppo.py's training file works; each question is put in --template (the teacher's chat prompt)
  2. sample    --n responses per problem at --temperature / --top-p, at most --generate-max-len tokens
  3. grade     every response against its gold (a response cut off at the budget has no box: wrong)
  4. keep      the correct ones (--keep correct, the blog's rejection sampling) or every one (--keep all,
               each with its verdict in `correct`)
  5. write     <output-dir>/long_cot.jsonl: sft.py's rows {"question", "response", "answer", "correct",
               "length"} (sft.py puts the question in its own --template, the student's prompt);
               <output-dir>/distill.json: the teacher, the sampling settings, the pass rate, the counts
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import evaluate
import reward
import runtime


@dataclass
class Config:
    # Defaults: the blog's distillation, as far as it is published: QwQ-32B-Preview answers the 8K MATH level
    # 3-5 training problems; its sampling settings are not published, so these are QwQ's usual ones.
    model: str = "Qwen/QwQ-32B-Preview"  # the teacher: an HF folder or hub id
    prompt_file: str = "data/train/math_level3to5.jsonl"  # question + gold rows (data/prepare_data.py's)
    output_dir: str = "runs/distill"  # long_cot.jsonl (sft.py's rows), distill.json (the record)
    keep: str = "correct"  # correct: the responses reward.py accepts (rejection sampling) | all (+ verdict)
    template: str = "qwen25-math-cot"  # the teacher's prompt (a reward.TEMPLATES key): Qwen's chat, a box
    n: int = 1  # responses per problem
    temperature: float = 0.7  # sampling temperature (0: greedy)
    top_p: float = 0.95  # nucleus sampling
    generate_max_len: int = 8192  # most new tokens per response; sft.py's 4,096-token window drops longer
    limit: int = 0  # the first N problems only (0: all)
    levels: str = ""  # rows whose integer 'level' is in this list, e.g. 3,4,5 (empty: all)
    engine: str = "auto"  # auto (vllm; HF generate on CPU if it does not import, or for a random init) | hf
    #   | vllm
    device: str = "auto"  # auto (CUDA if torch sees it) | cuda | cpu
    tp: int = 1  # vLLM tensor-parallel GPUs per engine (QwQ-32B in bf16: 4 x 80 GB)
    max_model_len: int = 0  # prompt + response cap of the engine (0: the teacher's max positions)
    batch_size: int = 16  # prompts per HF generate call
    vllm_gpu_memory_utilization: float = 0.90  # vLLM's share of GPU memory
    grader: str = "simplerl"  # simplerl (reward.py's own, evaluate.py's default) | v0 (simpleRL v0's)
    reward_timeout: float = 5.0  # seconds per (answer, gold) comparison
    seed: int = 0  # sampling seed (+ rank)


PRESETS = {
    # The CPU world: a tiny teacher (a checkpoint of the demo's world; data/tiny is a random init) answers the
    # synthetic task in its own prompt, HF generate.
    "tiny": dict(model="data/tiny", prompt_file="data/synth/train.jsonl", output_dir="runs/distill-tiny",
                 template="tiny", n=4, temperature=1.0, top_p=1.0, generate_max_len=84, levels="1,2",
                 engine="hf", batch_size=64),
}


def distill(cfg: Config) -> dict | None:
    """Steps 1-5; returns the record written to distill.json (rank 0; None on the other ranks)."""
    validate(cfg)
    reward.check_symbolic_grader()
    rank, world, device = runtime.init_distributed(cfg.device, [cfg.model])
    out = Path(cfg.output_dir)
    # 1. prompts
    with runtime.data_errors_are_clear():
        problems = load_prompts(cfg)
    # 2. sample: evaluate.py's engine and sharding (rank 0 gathers every completion)
    engine = evaluate.make_engine(cfg.model, cfg, device)
    kind = evaluate.engine_kind(cfg.model, cfg, device)
    runtime.announce(out, kind, device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                     world, rank)
    completions, seconds = evaluate.evaluate_benchmark(engine, problems, cfg, rank, world)
    if hasattr(engine, "close"):
        engine.close()
    if rank != 0:
        torch.distributed.barrier()
        return None
    # 3. grade every response (evaluate.score_benchmark: cut at the stop words, extract, compare)
    graded, summary = evaluate.score_benchmark(problems, completions, cfg, seconds, [])
    # 4. keep
    kept = [r for r in graded if r["correct"] or cfg.keep == "all"]
    # 5. write
    rows = [{"question": r["question"], "response": r["response"], "answer": r["gold"],
             "correct": r["correct"], "length": r["length"]} for r in kept]
    meta = record(cfg, problems, graded, rows, summary, kind, world)
    write(out, rows, meta)
    torch.distributed.barrier()
    return meta


# ==== bookkeeping below: distill.py's prompts, record, checks and command line ====


def load_prompts(cfg: Config) -> list[dict]:
    """evaluate.py's problem dicts {idx, question, gold, prompt} from a question + gold file (the question as
    the file has it: the student's template is sft.py's to apply)."""
    rows = runtime.read_json_rows(cfg.prompt_file, cfg.levels)
    problems = []
    for idx, (where, row) in enumerate(rows[:cfg.limit or None]):
        question = next((row[k] for k in ("question", "problem") if k in row), None)
        gold = next((row[k] for k in ("answer", "gt_answer") if k in row), None)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{cfg.prompt_file} {where}: field 'question' (or 'problem') missing or empty")
        if not isinstance(gold, (str, int, float)) or isinstance(gold, bool) or not str(gold).strip():
            raise ValueError(f"{cfg.prompt_file} {where}: field 'answer' (or 'gt_answer') missing or empty: "
                             "a response cannot be graded without a gold")
        gold = str(int(gold)) if isinstance(gold, float) and gold.is_integer() else str(gold).strip()
        problems.append(dict(idx=idx, question=question, gold=gold,
                             prompt=reward.apply_template(question, cfg.template)))
    return problems


def record(cfg: Config, problems: list[dict], graded: list[dict], rows: list[dict], summary: dict,
           engine: str, world: int) -> dict:
    """What distill.json says: the teacher, the sampling, the pass rate and what was kept."""
    solved = {r["idx"] for r in graded if r["correct"]}
    lengths = sorted(r["length"] for r in rows) or [0]
    return {
        "teacher": cfg.model, "prompt_file": cfg.prompt_file, "template": cfg.template, "engine": engine,
        "world": world, "sampling": {k: getattr(cfg, k) for k in ("n", "temperature", "top_p",
                                                                    "generate_max_len", "seed")},
        "grader": cfg.grader, "keep": cfg.keep, "problems": len(problems), "responses": len(graded),
        "correct": sum(r["correct"] for r in graded), "pass_rate": summary["acc"] / 100,
        "problems_solved": len(solved), "too_long_prompts": summary["too_long"],
        "no_answer": summary["no_answer"], "rows": len(rows),
        "response_tokens": {"mean": sum(lengths) / len(lengths), "p50": lengths[len(lengths) // 2],
                            "max": lengths[-1]},
        "seconds": round(summary["seconds"], 1), "config": asdict(cfg),
    }


def write(out: Path, rows: list[dict], meta: dict) -> None:
    """long_cot.jsonl and distill.json, each renamed into place when complete."""
    out.mkdir(parents=True, exist_ok=True)
    runtime.replace_atomically(out / "long_cot.jsonl", lambda tmp: tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"))
    runtime.replace_atomically(out / "distill.json",
                               lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    kept = "the correct ones" if meta["keep"] == "correct" else "all, with their verdicts"
    runtime.print0(f"{out / 'long_cot.jsonl'}: {meta['rows']} rows ({kept}) from {meta['responses']} "
                   f"responses of {meta['teacher']} to {meta['problems']} problems; pass rate "
                   f"{100 * meta['pass_rate']:.1f}%, {meta['problems_solved']} problems solved at least "
                   f"once; mean response {meta['response_tokens']['mean']:.0f} tokens; {meta['seconds']} s; "
                   f"record: {out / 'distill.json'}")


def validate(cfg: Config) -> None:
    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(cfg, flag)!r}: {rule}")
    runtime.check_common(cfg)
    need(cfg.keep in ("correct", "all"), "keep", "must be correct or all")
    need(cfg.template in reward.TEMPLATES, "template", "must be one of " + ", ".join(reward.TEMPLATES))
    need(cfg.engine in ("auto", "hf", "vllm"), "engine", "must be auto, hf or vllm")
    need(cfg.grader in reward.GRADERS, "grader", "must be one of " + ", ".join(reward.GRADERS))
    for name in ("n", "batch_size", "tp", "generate_max_len"):
        need(getattr(cfg, name) > 0, name, "must be a positive integer")
    for name in ("limit", "max_model_len"):
        need(getattr(cfg, name) >= 0, name, "must be >= 0 (0: no limit)")
    need(cfg.temperature >= 0, "temperature", "must be >= 0 (0: greedy)")
    need(0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    need(cfg.n == 1 or cfg.temperature > 0, "n", "> 1 needs --temperature > 0 (greedy samples are identical)")
    need(cfg.reward_timeout > 0, "reward_timeout", "must be > 0 seconds")
    need(0 < cfg.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", "must be in (0, 1]")
    need(all(x.strip().lstrip("-").isdigit() for x in cfg.levels.split(",") if x.strip()), "levels",
         "must be comma-separated integers, e.g. 3,4,5")
    runtime.check_data_file(cfg, "prompt_file")
    runtime.model_source(cfg.model)
    if runtime.model_source(cfg.model) == "config" and cfg.engine == "vllm":
        raise SystemExit(f"--engine vllm: {cfg.model} holds no weights (a random init from config.json); "
                         "use --engine hf or auto")


def parse_args(argv=None) -> Config:
    return runtime.parse_config(Config, PRESETS, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    config = parse_args()
    with runtime.stage_errors(config.output_dir, resume=False):
        distill(config)
    runtime.end_process()

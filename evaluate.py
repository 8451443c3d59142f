"""evaluate.py: score checkpoints on the SimpleRL-Zero benchmarks the way the paper's harness did.

The paper (simpleRL-reason v0, `eval/`, itself Qwen2.5-Math's harness) reports greedy pass@1 on
eight benchmarks, zero-shot, with the "qwen25-math-cot" chat prompt and 3000 new tokens:

    gsm8k  math500  minerva_math  gaokao2023en  olympiadbench  college_math  aime24  amc23

What is kept from that harness (so numbers are comparable with the published table):
  * gold answers come from the same fields (see `gold_answer`), questions from the same keys, with
    the same " (Yes or No)" / " (True or False)" suffix when the gold is yes/no/true/false;
  * the prompt is the harness's template string exactly, no few-shot examples;
  * generation stops at "</s>", "<|im_end|>", "<|endoftext|>" (strings and, where they are single
    tokens, token ids), the response is cut at the first of them and stripped;
  * the predicted answer is the last \\boxed{} (then "the answer is", then the last number), and a
    gold that is a choice letter (gaokao2023en has 37) also accepts the last choice letter given;
  * a benchmark's score is the mean over problems, the average is the unweighted mean of the
    benchmark scores. The table shows two averages: "Avg." over the benchmarks run (the eight of the
    paper's harness) and, when all five are run, "Avg. (5)" over AIME 2024, MATH 500, AMC 2023, Minerva
    Math and OlympiadBench: the five columns of the SimpleRL-Zero blog's table (simpleRL-reason v0's README,
    e.g. SimpleRL-Zero 48.8, the base model 30.2); under a checkpoint that table reports, its published
    numbers and measured - published (PUBLISHED).
Grading: `--grader simplerl` (default: reward.py's extraction and `math_equal`, below) or `--grader v0`
(`reward.compute_score(..., grader="v0")`, the verdicts simpleRL v0 trained with).
What is deliberately not kept: the harness's `strip_string` deletes unit words and single letters
("3 m^{4}-2 m+6" -> "3^{4}-2+6" in 593 college_math golds); golds here are the raw fields and
`reward.math_equal` decides equality.  Two gaokao2023en rows (167, 192) have an empty gold in the
data; they cannot be graded, so they are excluded from the denominator and listed in the summary
(the harness kept them and, through its multiple-choice fix-up, scored them right whenever the
answer held no capital A-E, so excluding them is the closer of the honest choices).

Engines: vLLM on GPU or CPU (imported lazily; `--tp` devices per replica, data parallel under torchrun),
Hugging Face `generate` on CPU or GPU (batched, left padding, data parallel under torchrun), and an
oracle that answers \\boxed{gold} (checks the harness: it must score 100%).

    python evaluate.py --preset tiny                                   # the CPU world
    python evaluate.py --model ckpt --data-dir data/eval --benchmarks all
    torchrun --nproc_per_node=8 evaluate.py --engine vllm --model hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zero

Outputs under --output-dir: <model-label>/<bench>.jsonl (one line per sample), summary.json,
results.md (the paper-style table, also printed) and, for several checkpoints of one run,
accuracy_vs_step.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoConfig

import reward
import runtime


@dataclass
class Config:
    """Defaults are the paper's harness (eval/sh/eval.sh): greedy, n=1, 3000 new tokens, seed 0."""
    model: list[str] = field(default_factory=list)  # HF folders or hub names; several -> a row each
    data_dir: str = "data/eval"           # <data_dir>/<benchmark>/test.jsonl (data/prepare_data.py)
    benchmarks: str = "all"               # "all" = the paper's eight, or a comma list
    limit: int | None = None              # first N problems of each benchmark (file order)
    levels: str = ""                      # rows whose integer 'level' is in this list, e.g. 1,2 (empty: all)
    template: str = "qwen25-math-cot"     # a reward.TEMPLATES key
    engine: str = "auto"                  # auto (vllm; if it fails to import: hf on CPU, an error on GPU)
    #   | hf | vllm | oracle
    device: str = "auto"                  # auto (CUDA if torch sees it, else CPU for small models) | cuda
    #   | cpu
    generate_max_len: int = 3000          # response budget per sample (was --max-new-tokens)
    n: int = 1                            # samples per problem: avg@n and pass@k when n > 1
    temperature: float = 0.0              # 0 = greedy
    top_p: float = 1.0                    # nucleus sampling when temperature > 0 (1: off)
    batch_size: int = 16                  # prompts per HF generate call
    tp: int = 1                           # vLLM tensor-parallel GPUs per replica
    max_model_len: int | None = None      # prompt + response cap; default: the model's max positions
    vllm_gpu_memory_utilization: float = 0.90  # vLLM's share of GPU memory (weights + KV cache)
    output_dir: str = "runs/eval"         # summary.json, results.md, <model>/<benchmark>.jsonl
    seed: int = 0                         # sampling seed (+ rank)
    reward_timeout: float = 5.0           # seconds per (answer, gold) comparison (was --grade-timeout)
    grader: str = "simplerl"              # simplerl (reward.py's own) | v0 (simpleRL v0's training reward)
    steps: list[int] | None = None        # training step of each --model, for the PNG (else from path)


# The CPU world: the tiny model on the synthetic arithmetic test set, the levels ppo.py's and sft.py's tiny
# presets (and the demo) study.
TINY = dict(model=["data/tiny"], data_dir="data", benchmarks="synth", template="tiny", engine="hf",
            generate_max_len=48, batch_size=64, output_dir="runs/eval_tiny", levels="1,2")

# The paper's eight, in the paper's order, with the table's column names.
BENCHMARKS = {
    "gsm8k": "GSM8K", "math500": "MATH 500", "minerva_math": "Minerva Math",
    "gaokao2023en": "Gaokao 2023En", "olympiadbench": "OlympiadBench", "college_math": "College Math",
    "aime24": "AIME 2024", "amc23": "AMC 2023",
}
EXTRA_BENCHMARKS = {"synth": "Synth"}  # the tiny world's test set (gold = `answer`)
# The SimpleRL-Zero blog's table (simpleRL-reason v0 README): five columns and their average.
PAPER_FIVE = ("aime24", "math500", "amc23", "minerva_math", "olympiadbench")
# That table's published numbers (simpleRL-reason v0 README at commit 2702a87c, pass@1) for the checkpoints
# the blog reports, by the model's folder or hub name (lower case): the table puts them and the difference
# under the measured row. The blog gives only these five benchmarks; GSM8K and the other three are not
# published.
PUBLISHED = {
    "qwen2.5-math-7b": dict(aime24=16.7, math500=52.4, amc23=52.5, minerva_math=12.9, olympiadbench=16.4),
    "qwen-2.5-math-7b-simplerl-zero": dict(aime24=33.3, math500=77.2, amc23=62.5, minerva_math=33.5,
                                           olympiadbench=37.6),
    "qwen-2.5-math-7b-simplerl": dict(aime24=26.7, math500=82.4, amc23=62.5, minerva_math=39.7,
                                      olympiadbench=43.3),
}
QUESTION_KEYS = ("question", "problem", "Question", "input")  # the harness's order


# ---- grading and metrics ----
def extract_prediction(response: str, gold: str) -> str | None:
    """reward.extract_answer; for a choice-letter gold, the harness also took the last letter given."""
    pred = reward.extract_answer(response)
    if re.fullmatch(r"[A-E]", gold) and not (pred and re.fullmatch(r"\(?[A-E]\)?", reward.normalize(pred))):
        tail = re.split(r"answer is|choice is", response)[-1]
        letters = re.findall(r"\(([A-E])\)|\b([A-E])\b", tail)
        if letters:
            pred = "".join(letters[-1])
    return pred


def grade(responses: list[str], golds: list[str], timeout: float = 5.0, grader: str = "simplerl"
          ) -> tuple[list[str | None], list[bool]]:
    """Extracted answers and verdicts, each comparison bounded by `timeout`: simplerl = reward.math_equal on
    extract_prediction; v0 = reward's v0 grader (score +1), the extracted answer then only for the record."""
    preds = [extract_prediction(r, g) for r, g in zip(responses, golds)]
    if grader == "simplerl":
        return preds, reward.batch_math_equal(preds, golds, timeout=timeout)
    if grader not in reward.GRADERS:
        raise ValueError(f"--grader {grader!r}: expected one of {', '.join(reward.GRADERS)}")
    scores = reward.batch_compute_scores(responses, golds, timeout=timeout, grader=grader)
    return preds, [s == 1.0 for s in scores]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), as a product (no huge binomials)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ---- engines: generate(problems) -> for each problem, n (text, n_generated_tokens) pairs ----
# Each problem carries "prompt" and "budget" (max new tokens that fit the context window).
def stop_token_ids(tokenizer) -> list[int]:
    """Stop words that are single tokens (the harness passed Qwen's 151645/151643 to vLLM), plus EOS."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for word in reward.STOP_WORDS:
        tid = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


class HFEngine:
    """Batched `generate` with left padding (HF derives position ids from the attention mask)."""

    def __init__(self, path: str, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.tokenizer = runtime.load_tokenizer(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = runtime.load_model(path, cfg.seed).to(device).eval()
        # generation (load_model turns it off for the trainers; generate reads the generation config)
        self.model.config.use_cache = self.model.generation_config.use_cache = True
        if device.type == "cuda":
            self.model.to(torch.bfloat16)
        self.max_len = cfg.max_model_len or self.model.config.max_position_embeddings
        self.stop_ids = stop_token_ids(self.tokenizer)

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]

    @torch.no_grad()
    def generate(self, problems: list[dict], progress: bool = True) -> list[list[tuple[str, int]]]:
        cfg, out = self.cfg, [None] * len(problems)
        # similar lengths batch well
        order = sorted(range(len(problems)), key=lambda i: -problems[i]["n_prompt_tokens"])
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        torch.manual_seed(cfg.seed + dist.get_rank())
        for batch in tqdm(batches, desc="generate", disable=not progress, leave=False,
                          **runtime.progress_settings(sys.stderr, len(batches))):
            enc = self.tokenizer([problems[i]["prompt"] for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            budget = min(problems[i]["budget"] for i in batch)  # the longest prompt in the batch bounds it
            if cfg.temperature > 0:
                sampling = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
            else:
                sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            seqs = self.model.generate(**enc, max_new_tokens=budget, num_return_sequences=cfg.n,
                                       eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                                       **sampling)
            new = seqs[:, enc["input_ids"].shape[1]:].tolist()
            for j, i in enumerate(batch):
                out[i] = [self._decode(ids) for ids in new[j * cfg.n:(j + 1) * cfg.n]]
        return out

    def _decode(self, ids: list[int]) -> tuple[str, int]:
        """Tokens up to and including the first stop token (vLLM counts the EOS too)."""
        length = next((k + 1 for k, t in enumerate(ids) if t in self.stop_ids), len(ids))
        return self.tokenizer.decode(ids[:length], skip_special_tokens=False), length


class VLLMEngine:
    """vLLM, imported only here (import_vllm: the engine runs in this process).  Plain `python`: one engine
    over --tp devices (`uni` executor for one, vLLM's own worker processes for more).  Under torchrun with W
    processes: vLLM's external launcher, W/tp independent engines of tp consecutive ranks each (only
    tensor_parallel_size is passed: a data_parallel_size would put every engine in lock-step, so a rank with
    nothing to generate would hang the others); each engine generates its own share of the problems
    (`dp_rank`), rank 0 gathers them.  `llm` and `sampling_params_cls` can be injected (tests use a
    stand-in)."""

    def __init__(self, path: str, cfg: Config, llm=None, sampling_params_cls=None):
        self.cfg = cfg
        self.tokenizer = runtime.load_tokenizer(path)
        self.max_len = cfg.max_model_len or AutoConfig.from_pretrained(path).max_position_embeddings
        world = dist.get_world_size()
        if world > 1 and world % cfg.tp:
            raise ValueError(f"torchrun world size {world} is not a multiple of --tp {cfg.tp}")
        # a world of one is one engine over --tp devices; under torchrun the ranks of a TP group are
        # consecutive (vllm/distributed/parallel_state.py initialize_model_parallel: TP is the innermost
        # dimension)
        self.dp_size, self.dp_rank = (world // cfg.tp, dist.get_rank() // cfg.tp) if world > 1 else (1, 0)
        if llm is None:
            on_gpu = torch.cuda.is_available()
            executor = "external_launcher" if world > 1 else ("uni" if cfg.tp == 1 else "mp")
            LLM, sampling_params_cls = runtime.import_vllm()
            llm = LLM(model=path, tensor_parallel_size=cfg.tp, seed=cfg.seed, max_model_len=self.max_len,
                      dtype="bfloat16" if on_gpu else "float32",  # CPU: fp32, as the HF engine there
                      gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                      distributed_executor_backend=executor,
                      enforce_eager=not on_gpu)  # CPU: no torch.compile (its warm-up outlasts tiny runs)
        self.llm, self.sampling_params_cls = llm, sampling_params_cls
        self.stop_ids = stop_token_ids(self.tokenizer)

    def close(self) -> None:
        """Shut the engine down now (memory back before the next model). LLM has no public shutdown; its
        in-process client's (vllm/v1/engine/core_client.py InprocClient.shutdown) runs EngineCore.shutdown,
        whose teardown would also destroy our process group but for import_vllm's patch."""
        if self.llm is not None and hasattr(self.llm, "llm_engine"):
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]

    def shard(self, n: int) -> list[int]:
        return list(range(self.dp_rank, n, self.dp_size))

    def generate(self, problems: list[dict], progress: bool = True) -> list[list[tuple[str, int]]]:
        cfg = self.cfg
        params = [self.sampling_params_cls(
            n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
            max_tokens=p["budget"], stop=list(reward.STOP_WORDS), stop_token_ids=self.stop_ids,
            skip_special_tokens=False) for p in problems]
        def bar(*args, **kw):  # vLLM calls use_tqdm(iterable, desc=..., ...): its bar, log-safe
            total = kw.get("total") or (len(args[0]) if args and hasattr(args[0], "__len__") else 0)
            return tqdm(*args, **{**kw, **runtime.progress_settings(sys.stderr, total)})

        outputs = self.llm.generate([p["prompt"] for p in problems], params,
                                    use_tqdm=bar if progress else False)
        return [[(o.text, len(o.token_ids)) for o in req.outputs] for req in outputs]  # in input order


class OracleEngine:
    """Answers every problem with \\boxed{gold}: the harness must give it 100%."""

    max_len = 10**9

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return [0] * len(prompts)

    def generate(self, problems: list[dict], progress: bool = True) -> list[list[tuple[str, int]]]:
        return [[(f"The final answer is $\\boxed{{{p['gold']}}}$.", 1)] * self.cfg.n for p in problems]


def engine_kind(path: str, cfg: Config, device: torch.device) -> str:
    """--engine auto: vLLM (on a GPU an error if it does not import: runtime.choose_engine); HF generate for a
    random init from config.json (data/tiny), which vLLM cannot load."""
    if cfg.engine == "auto" and path != "oracle" and runtime.model_source(path) == "config":
        return "hf"
    return runtime.choose_engine(cfg.engine, device)


def make_engine(path: str, cfg: Config, device: torch.device):
    engine = engine_kind(path, cfg, device)
    if engine == "hf":
        return HFEngine(path, cfg, device)
    if engine == "vllm":
        return VLLMEngine(path, cfg)
    if engine == "oracle":
        return OracleEngine(cfg)
    raise ValueError(f"unknown engine {cfg.engine!r}; choose auto, hf, vllm or oracle")


# ---- the loop: for each model and benchmark: generate (sharded over ranks), gather, grade on rank 0 ----
def evaluate_benchmark(engine, problems: list[dict], cfg: Config, rank: int,
                       world: int) -> tuple[list[list], float]:
    """Completions for every problem (on rank 0; other ranks get their own share back) and the wall time."""
    lengths = engine.count_tokens([p["prompt"] for p in problems])
    for p, n_tok in zip(problems, lengths):
        p["n_prompt_tokens"] = n_tok
        p["budget"] = min(cfg.generate_max_len, engine.max_len - n_tok)  # a prompt needs room to answer
    fits = [i for i, p in enumerate(problems) if p["budget"] > 0]
    if hasattr(engine, "shard"):  # vLLM: data-parallel replicas, not ranks, split the work
        mine = [fits[j] for j in engine.shard(len(fits))]
    else:
        mine = fits[rank::world]
    times = {}
    with runtime.timer(times, "generate"):
        outs = engine.generate([problems[i] for i in mine], progress=rank == 0) if mine else []
        everyone = runtime.all_gather_object(list(zip(mine, outs)))
    seconds = times["generate"]
    completions = [[("", 0)] * cfg.n for _ in problems]  # too long for the context: an empty answer
    for part in everyone:
        for i, c in part:
            completions[i] = c
    return completions, seconds


def score_benchmark(problems: list[dict], completions: list[list], cfg: Config, seconds: float,
                    empty_gold: list[int]) -> tuple[list[dict], dict]:
    responses = [reward.cut_at_stop(text) for c in completions for text, _ in c]
    golds = [p["gold"] for p in problems for _ in range(cfg.n)]
    preds, correct = grade(responses, golds, cfg.reward_timeout, cfg.grader)
    timeouts = sum(reward.last_batch_report.get(k, 0) for k in ("timed_out", "past_deadline"))
    rows, k = [], 0
    for i, p in enumerate(problems):
        for j, (_, length) in enumerate(completions[i]):
            rows.append(dict(idx=p["idx"], sample=j, question=p["question"], response=responses[k],
                             pred=preds[k], gold=p["gold"], correct=bool(correct[k]), length=length,
                             too_long=p["budget"] <= 0))
            k += 1
    per_problem = [sum(correct[i * cfg.n:(i + 1) * cfg.n]) for i in range(len(problems))]
    n_tokens = sum(r["length"] for r in rows)
    summary = dict(
        acc=100.0 * sum(per_problem) / max(1, len(problems) * cfg.n),  # avg@n; greedy n=1: pass@1
        n_problems=len(problems), n_samples=len(rows),
        mean_length=n_tokens / max(1, len(rows)),
        too_long=sum(p["budget"] <= 0 for p in problems),  # prompt did not fit: scored wrong
        excluded_empty_gold=empty_gold,
        no_answer=sum(pr is None for pr in preds),
        grading_timeouts=timeouts,  # comparisons ungraded after a retry with a longer limit: scored wrong
        seconds=seconds, problems_per_s=len(problems) / max(seconds, 1e-9),
        tokens_per_s=n_tokens / max(seconds, 1e-9),
    )
    if cfg.n > 1:
        ks = sorted({2 ** e for e in range(int(math.log2(cfg.n)) + 1)} | {cfg.n})
        summary["pass@k"] = {k: 100.0 * sum(pass_at_k(cfg.n, c, k) for c in per_problem)
                             / max(1, len(problems)) for k in ks}
    return rows, summary


def evaluate(cfg: Config) -> dict | None:
    """Run everything; returns the summary on rank 0 (None elsewhere)."""
    validate(cfg)
    reward.check_symbolic_grader()  # fails loudly when sympy's LaTeX parser is broken (e.g. the wrong antlr4)
    rank, world, device = runtime.init_distributed(cfg.device, cfg.model if cfg.engine != "oracle" else [])
    benches = benchmark_list(cfg.benchmarks)
    runtime.check_shared_paths(None, [*cfg.model, *(str(Path(cfg.data_dir) / b) for b in benches)], rank)
    paths = cfg.model or ["oracle"]
    kinds = ",".join(dict.fromkeys(engine_kind(p, cfg, device) for p in paths))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    labels = model_labels(paths)
    if cfg.steps and len(cfg.steps) != len(paths):
        raise ValueError(f"--steps has {len(cfg.steps)} values for {len(paths)} models")
    steps = cfg.steps or [step_of(p) for p in paths]
    with runtime.data_errors_are_clear():
        data = {b: load_benchmark(cfg.data_dir, b, cfg.template, cfg.limit, cfg.levels) for b in benches}
    out_dir = Path(cfg.output_dir)
    runtime.lock_or_stop(out_dir, rank, claim=True)  # one evaluation per --output-dir at a time
    runtime.announce(cfg.output_dir, kinds, device, dtype, world, rank)
    results: dict[str, dict] = {}
    for path, label in zip(paths, labels):
        runtime.print0(f"== {label}: {', '.join(f'{b} ({len(data[b][0])})' for b in benches)}")
        engine = make_engine(path, cfg, device)
        results[label] = {}
        for b in benches:
            problems, empty = data[b]
            completions, seconds = evaluate_benchmark(engine, problems, cfg, rank, world)
            if rank == 0:
                rows, summary = score_benchmark(problems, completions, cfg, seconds, empty)
                (out_dir / label).mkdir(parents=True, exist_ok=True)
                with open(out_dir / label / f"{b}.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                results[label][b] = summary
                runtime.print0(f"   {b:14s} acc {summary['acc']:5.1f}  ({summary['n_problems']} problems, "
                               f"{summary['too_long']} too long, {summary['grading_timeouts']} grading "
                               f"timeouts, mean length {summary['mean_length']:.0f}, "
                               f"{summary['problems_per_s']:.2f} problems/s, "
                               f"{summary['tokens_per_s']:.0f} tokens/s)")
        if rank == 0:
            results[label]["avg"] = sum(results[label][b]["acc"] for b in benches) / len(benches)
            if all(b in benches for b in PAPER_FIVE):  # the blog's five (AIME, MATH, AMC, Minerva, Olympiad)
                results[label]["avg5"] = sum(results[label][b]["acc"] for b in PAPER_FIVE) / len(PAPER_FIVE)
            summary = write_summary(cfg, results, benches, labels[:len(results)], steps[:len(results)])
        if hasattr(engine, "close"):
            engine.close()  # vLLM: memory back before the next model; our process group stays (import_vllm)
        del engine
        gc.collect()
    if rank != 0:
        dist.barrier()
        return None
    table = summary["table"]
    if len(paths) > 1 and all(s is not None for s in steps):
        plot_vs_step(results, steps, benches, out_dir / "accuracy_vs_step.png")
        runtime.print0(f"wrote {out_dir / 'accuracy_vs_step.png'}")
    elif len(paths) > 1:
        runtime.print0("no accuracy_vs_step.png: a model's training step is unknown (pass --steps 0,40,...)")
    runtime.print0("\n" + table + "\n")
    runtime.print0(f"wrote {out_dir}/summary.json, results.md and per-sample <model>/<benchmark>.jsonl")
    dist.barrier()
    return summary


# ==== bookkeeping below: evaluate.py's own data, reporting and command line ====





# ---- data: questions and golds, field for field as the harness's parse_question/parse_ground_truth ----
def gold_answer(row: dict, bench: str) -> str:
    """The gold answer string, from the field the paper's harness used (no strip_string damage)."""
    if bench in ("math500", "minerva_math"):  # the last \boxed{} of the reference solution
        boxed = reward.extract_boxed(_field(row, "solution", str))
        if boxed is None:
            raise ValueError("field 'solution' has no \\boxed{} answer")
        return boxed.strip()
    if bench == "gsm8k":  # "... #### 72"
        text = _field(row, "answer", str)
        if "####" not in text:
            raise ValueError("field 'answer' has no '####' final answer")
        return text.split("####")[-1].strip()
    if bench == "olympiadbench":  # a list; the harness took the first entry without outer $
        answers = _field(row, "final_answer", list)
        if not answers or not isinstance(answers[0], str):
            raise ValueError("field 'final_answer' must be a non-empty list of strings")
        return answers[0].strip("$").strip()
    if bench in ("gaokao2023en", "college_math"):
        return _field(row, "answer", str).replace("$", "").strip()
    if bench in ("aime24", "amc23", "synth"):  # amc23 stores floats (27.0)
        value = _field(row, "answer", (str, int, float))
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).strip()
    raise ValueError(f"unknown benchmark {bench!r}; known: {', '.join([*BENCHMARKS, *EXTRA_BENCHMARKS])}")


def _field(row: dict, key: str, kind):
    if key not in row:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(row[key], kind) or isinstance(row[key], bool):
        raise ValueError(f"field {key!r} has type {type(row[key]).__name__}")
    return row[key]


def question_text(row: dict, bench: str, gold: str) -> str:
    """First of question/problem/Question/input; the harness appends a hint to yes/no and true/false golds."""
    for key in QUESTION_KEYS:
        if key in row:
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"field {key!r} is not a non-empty string")
            # the harness strips; the synthetic task is fixed-width, so its leading spaces are part of the
            # question
            question = row[key].strip() if bench in BENCHMARKS else row[key]
            break
    else:
        raise ValueError(f"no question field (one of {', '.join(QUESTION_KEYS)})")
    plain = re.sub(r"\\text\{(.*?)\}", r"\1", gold).strip().rstrip(".").lower()
    if plain in ("true", "false"):
        question += " (True or False)"
    elif plain in ("yes", "no"):
        question += " (Yes or No)"
    return question


def load_benchmark(data_dir: str, bench: str, template: str,
                   limit: int | None = None, levels: str = "") -> tuple[list[dict], list[int]]:
    """Problems {idx, question, gold, prompt} in file order (idx: the row's index in the file), and the row
    indices excluded for an empty gold. `levels` ("1,2"; empty: all) keeps the rows of those levels."""
    if bench not in BENCHMARKS and bench not in EXTRA_BENCHMARKS:
        raise ValueError(f"unknown benchmark {bench!r}; known: {', '.join([*BENCHMARKS, *EXTRA_BENCHMARKS])}")
    path = Path(data_dir) / bench / "test.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python data/prepare_data.py` or pass --data-dir")
    problems, empty = [], []
    wanted = {where for where, _ in runtime.read_json_rows(str(path), levels)} if levels else None
    rows = [(idx, item) for idx, item in enumerate(runtime.read_json_rows(str(path)))
            if wanted is None or item[0] in wanted]
    for idx, (where, row) in rows[:limit]:
        try:
            gold = gold_answer(row, bench)
            question = question_text(row, bench, gold)
        except ValueError as e:
            raise ValueError(f"{path} {where}: {e}") from None
        if not gold:
            empty.append(idx)
            continue
        problems.append(dict(idx=idx, question=question, gold=gold,
                             prompt=reward.apply_template(question, template)))
    if not problems:
        raise ValueError(f"{path}: no problem to score (all {len(empty)} rows have an empty gold)")
    return problems, empty


def benchmark_list(spec: str) -> list[str]:
    names = list(BENCHMARKS) if spec == "all" else [b.strip() for b in spec.split(",") if b.strip()]
    unknown = [b for b in names if b not in BENCHMARKS and b not in EXTRA_BENCHMARKS]
    if unknown or not names:
        known = ", ".join([*BENCHMARKS, *EXTRA_BENCHMARKS])
        raise ValueError(f"unknown benchmark(s) {unknown or spec!r}; known: all, {known}")
    return names


# ---- reporting: model labels, the table, the accuracy-vs-step figure, summary.json ----
def step_of(path: str) -> int | None:
    """The training step a checkpoint path names: checkpoint-100, global_step100, step_100; a network's
    subfolder (ppo.py's checkpoint-100/actor, sft.py's checkpoint-100/model) counts too."""
    for part in reversed(Path(path.rstrip("/")).parts[-2:]):
        m = re.fullmatch(r"(?:checkpoint|global_step|step|iter)[-_]?(\d+)", part)
        if m:
            return int(m.group(1))
    return None


def model_labels(paths: list[str]) -> list[str]:
    """The folder's name; a step or final folder keeps its run ("run/checkpoint-100", "run/final"), and
    the network subfolder of a checkpoint is dropped ("ppo/checkpoint-100/actor" -> "ppo/checkpoint-100",
    sft.py's "sft/checkpoint-100/model" -> "sft/checkpoint-100")."""
    labels = []
    for p in paths:
        parts = Path(p.rstrip("/")).parts
        if len(parts) > 1 and (parts[-1] == "actor" or parts[-1] == "model" and step_of(p) is not None):
            parts = parts[:-1]
        in_run = step_of(p) is not None or parts[-1] == "final"
        label = "/".join(parts[-2:]) if in_run and len(parts) > 1 else parts[-1]
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def markdown_table(results: dict, benches: list[str]) -> str:
    """A row per model; "Avg." over the benchmarks run, and "Avg. (5)" (the blog's five) when all five ran.
    Under a model the blog reports (PUBLISHED), its published numbers and measured - published ("-": none)."""
    names = {**BENCHMARKS, **EXTRA_BENCHMARKS}
    five = all(b in benches for b in PAPER_FIVE)
    head = ("| Model | " + " | ".join(names[b] for b in benches) + " | Avg. |"
            + (" Avg. (5) |" if five else ""))
    lines = [head, "|" + "---|" * (len(benches) + 2 + five)]
    for label, res in results.items():
        cells = [f"{res[b]['acc']:.1f}" for b in benches]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {res['avg']:.1f} |"
                     + (f" {res['avg5']:.1f} |" if five else ""))
        paper = PUBLISHED.get(label.rstrip("'").split("/")[-1].lower())
        if paper and any(b in paper for b in benches):
            published = {**paper, "avg5": sum(paper.values()) / len(paper)}
            measured = {**{b: res[b]["acc"] for b in benches}, "avg5": res.get("avg5")}
            columns = benches + ["avg"] + (["avg5"] if five else [])  # no published eight-benchmark Avg.
            for name, cell in (("published (blog)", lambda c: f"{published[c]:.1f}"),
                               ("measured - published", lambda c: f"{measured[c] - published[c]:+.1f}")):
                cells = [cell(c) if c in published else "-" for c in columns]
                lines.append(f"| {label}: {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_vs_step(results: dict, steps: list[int], benches: list[str], path: Path) -> None:
    """Accuracy and mean response length per benchmark against training step (the paper's figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(steps)), key=lambda i: steps[i])
    labels = list(results)
    xs = [steps[i] for i in order]
    fig, (ax_acc, ax_len) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = {**BENCHMARKS, **EXTRA_BENCHMARKS}
    for b in benches:
        ax_acc.plot(xs, [results[labels[i]][b]["acc"] for i in order], marker="o", label=names[b])
        ax_len.plot(xs, [results[labels[i]][b]["mean_length"] for i in order], marker="o", label=names[b])
    if len(benches) > 1:
        ax_acc.plot(xs, [results[labels[i]]["avg"] for i in order], "k--", lw=2, marker="s", label="Avg.")
    ax_acc.set(xlabel="training step", ylabel="accuracy (%)", title="Accuracy")
    ax_len.set(xlabel="training step", ylabel="tokens", title="Mean response length")
    for ax in (ax_acc, ax_len):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(cfg: Config, results: dict, benches: list[str], labels: list[str], steps: list) -> dict:
    """summary.json and results.md for the models finished so far (rewritten after each model, atomically)."""
    out_dir = Path(cfg.output_dir)
    table = markdown_table(results, benches)
    summary = dict(config=asdict(cfg), benchmarks=benches, results=results,
                   steps=dict(zip(labels, steps)), table=table)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("results.md", table + "\n")):
        runtime.replace_atomically(out_dir / name, lambda tmp: tmp.write_text(text))
    return summary


# ---- command line ----
def validate(cfg: Config) -> None:
    """Every value checked once, before any model is loaded: a clear error, never a table of zeros."""
    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(cfg, flag)!r}: {rule}")
    runtime.check_common(cfg)
    need(cfg.limit is None or cfg.limit > 0, "limit", "must be a positive number of problems per benchmark")
    for name in ("n", "batch_size", "tp", "generate_max_len"):
        need(getattr(cfg, name) > 0, name, "must be a positive integer")
    need(cfg.max_model_len is None or cfg.max_model_len > 0, "max_model_len", "must be a positive integer")
    need(cfg.temperature >= 0, "temperature", "must be >= 0 (0: greedy)")
    need(0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    need(cfg.reward_timeout > 0, "reward_timeout", "must be > 0 seconds")
    need(cfg.grader in reward.GRADERS, "grader", "must be one of " + ", ".join(reward.GRADERS))
    need(0 < cfg.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", "must be in (0, 1]")
    need(cfg.n == 1 or cfg.temperature > 0, "n", "> 1 needs --temperature > 0 (greedy samples are identical)")
    need(bool(cfg.model) or cfg.engine == "oracle", "model", "is required (or --preset tiny)")
    need(all(x.strip().lstrip("-").isdigit() for x in cfg.levels.split(",") if x.strip()), "levels",
         "must be comma-separated integers, e.g. 1,2")
    need(not cfg.steps or len(cfg.steps) == len(cfg.model or ["oracle"]), "steps",
         "needs one value per --model")
    try:
        benchmark_list(cfg.benchmarks)
    except ValueError as e:
        raise SystemExit(f"--benchmarks: {e}") from None
    if cfg.engine != "oracle":
        for path in cfg.model:
            if runtime.model_source(path) == "config" and cfg.engine == "vllm":  # vLLM reads weights only
                raise SystemExit(f"--engine vllm: {path} holds no weights (a random init from config.json, "
                                 "INIT_FROM_CONFIG); vLLM loads weights from a folder: use --engine hf "
                                 "or auto")
            if runtime.tokenizer_problem(path):
                raise SystemExit(runtime.tokenizer_problem(path))


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["tiny"], help="the CPU world: tiny model, synthetic test set")
    p.add_argument("--model", nargs="+", action="extend", help="checkpoint folder(s) or hub name(s)")
    p.add_argument("--data-dir")
    p.add_argument("--benchmarks", help="all | comma list of " + ",".join([*BENCHMARKS, *EXTRA_BENCHMARKS]))
    p.add_argument("--limit", type=int)
    p.add_argument("--levels")
    p.add_argument("--template", choices=sorted(reward.TEMPLATES))
    p.add_argument("--engine", choices=["auto", "hf", "vllm", "oracle"])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--generate-max-len", "--max-new-tokens", type=int)  # the old spelling still works
    p.add_argument("--n", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--tp", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--vllm-gpu-memory-utilization", "--gpu-memory-utilization", type=float)
    p.add_argument("--output-dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--reward-timeout", "--grade-timeout", type=float)
    p.add_argument("--grader", choices=["simplerl", "v0"],
                   help="simplerl (default) | v0: simpleRL v0's training reward")
    p.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], help="training step per --model")
    comments, defaults = runtime.config_help(Config), Config()  # a flag's help: its field's comment in Config
    for action in p._actions:
        if action.help is None and action.dest in comments:
            default = getattr(defaults, action.dest)
            action.help = f"{comments[action.dest]} (default: {default!r})".replace("%", "%%")
    args = vars(p.parse_args(argv))
    cfg = Config(**runtime.project_paths(TINY)) if args.pop("preset") == "tiny" else Config()
    return replace(cfg, **{k: v for k, v in args.items() if v is not None})


if __name__ == "__main__":
    config = parse_args()
    with runtime.stage_errors(config.output_dir, resume=False):
        evaluate(config)
    runtime.end_process()  # see end_process: skips a teardown that can abort a finished multi-rank run

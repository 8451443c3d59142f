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
HeldOutEval, greedy_accuracy; the loop -> main. Config, the math and the loop come first; this stage's own
data, set-up and CLI are below the "bookkeeping below" marker; the machinery shared with ppo.py and
evaluate.py (processes, loading and sharding, checkpoints, metrics) is runtime.py.

One optimizer step, in the order the code runs it (`main`, same numbers):

  1. batch     the step's global batch (a seeded permutation per epoch: the step number alone fixes it),
               this rank's share, in micro-batches of --micro-train-batch-size (global_batch, collate)
  2. loss      per micro-batch: forward, the summed response-token NLL x world / N, backward (train_step)
  3. step      clip the global gradient norm (stop on NaN/inf), AdamW step, cosine schedule (train_step)
  4. log       metrics.jsonl, every --eval-every steps the held-out accuracy, the progress bar
  5. save      every --save-every steps a resumable checkpoint

Outputs in --output-dir: checkpoint-<step>/ (model/: an HF folder; optim/ and trainer_state.pt, for
--resume), final/ (HF folder), metrics.jsonl, curves.png.
"""
import copy
import dataclasses
import random
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from transformers import AutoModelForCausalLM

import reward
import runtime
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
    device: str = "auto"  # auto: CUDA when torch sees it, else CPU for small models only | cuda | cpu
    gradient_checkpointing: bool = True  # activations of 4096 tokens x 28 layers do not fit otherwise
    eval_every: int = 0  # steps between held-out evals (0: only the final one)
    eval_size: int = 100  # problems in each periodic eval (a seeded sample of the test file)
    eval_batch_size: int = 64  # prompts per generate call per rank
    generate_max_len: int = 4096  # most new tokens per held-out answer (was --max-new-tokens)
    save_every: int = 50  # steps between resumable checkpoints (0: only final/)
    async_save: bool = True  # rank 0 writes a checkpoint's files on a thread while training goes on
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
    rank, world, device = runtime.init_distributed(cfg.device, [cfg.model])
    per_rank = sequences_per_rank(cfg, world)
    out, resume_from = runtime.prepare_output_dir(cfg, rank, SAFE_ON_RESUME)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = runtime.load_tokenizer(cfg.model)
    examples, test_rows, eval_rows = load_data(cfg, tokenizer)
    steps_per_epoch = len(examples) // cfg.train_batch_size
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    runtime.print0(f"{steps_per_epoch} steps/epoch, {total} steps, {len(test_rows)} test problems, "
                   f"world {world}")
    model = runtime.load_model(str(resume_from / "model" if resume_from else cfg.model), cfg.seed,
                               cfg.gradient_checkpointing)
    model = runtime.shard_model(model, device)
    runtime.announce(out, "hf", device, torch.bfloat16 if device.type == "cuda" else torch.float32, world,
                     rank)
    optimizer, scheduler = runtime.make_optimizer(model, cfg.lr, cfg, total)
    trained = SimpleNamespace(name="model", model=model, optimizer=optimizer, scheduler=scheduler)
    data_state = {"n_examples": len(examples), "train_batch_size": cfg.train_batch_size, "seed": cfg.seed}
    step = start_or_resume(out, cfg, resume_from, trained, data_state, rank)
    evaluator = HeldOutEval(model, tokenizer, cfg, device, rank, world)
    model.train()
    bar = tqdm(total=total, initial=step, disable=rank != 0, desc="sft", dynamic_ncols=True,
               **runtime.progress_settings(sys.stderr, total))
    phase_s, tokens = [], []
    while step < total and step != cfg.stop_after:
        times = {}
        with runtime.timer(times, "step"):
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
            runtime.log_metrics(out, record)
        show_progress(bar, record)
        # 5. save: a resumable checkpoint every --save-every steps
        if cfg.save_every > 0 and step % cfg.save_every == 0 and step < total:
            runtime.save_checkpoint(out, step, [trained], tokenizer, {"data": data_state,
                                    "config": dataclasses.asdict(cfg)}, background=cfg.async_save)
            if rank == 0:
                plot_curves(out)
        if 0 < cfg.stop_at_accuracy <= record.get("eval_accuracy", -1.0):  # all-reduced: equal on every rank
            runtime.print0(f"\nheld-out accuracy {record['eval_accuracy']:.1%} reached --stop-at-accuracy "
                           f"at step {step}")
            break
    bar.close()
    runtime.finish_saving()  # the last checkpoint's files, written behind the loop
    if step == cfg.stop_after:
        runtime.print0(f"stopped after step {step} (--stop-after)")
        dist.destroy_process_group()
        return
    runtime.save_hf_checkpoint(model, tokenizer, str(out / "final"))
    runtime.print0(f"saved {out / 'final'}")
    if test_rows:
        with runtime.timer(times := {}, "eval"):
            acc = evaluator(test_rows)
        runtime.print0(f"held-out greedy exact-match accuracy: {100 * acc:.1f}% on {len(test_rows)} problems "
                       f"({cfg.test_file}, levels {cfg.levels or 'all'}; eval {times['eval']:.1f} s)")
        if rank == 0:
            runtime.log_metrics(out, {"step": step, "final_eval_accuracy": acc, "eval_accuracy": acc})
    final_report(out, phase_s, tokens, rank)
    dist.destroy_process_group()


# ==== bookkeeping below: sft.py's own set-up and resume, data, logs and command line ====


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
    if cfg.eos_token not in tokenizer.get_vocab():
        raise SystemExit(f"--eos-token {cfg.eos_token!r}: not a token of {cfg.model}'s tokenizer "
                         f"(its own end of sequence is {tokenizer.eos_token!r})")
    eos_id = tokenizer.convert_tokens_to_ids(cfg.eos_token)
    with runtime.data_errors_are_clear():
        rows = read_rows(cfg.train_file, [QUESTION_FIELDS, ("response", "solution")], cfg.levels)
        test_rows = (read_rows(cfg.test_file, [QUESTION_FIELDS, ("answer",)], cfg.levels) if cfg.test_file
                     else [])
    examples, n = encode_all(rows, tokenizer, cfg, eos_id)
    eval_rows = random.Random(cfg.seed).sample(test_rows, min(cfg.eval_size, len(test_rows)))
    if len(examples) < cfg.train_batch_size:
        raise SystemExit(f"{cfg.train_file}: {len(examples)} examples, fewer than one global batch")
    runtime.print0(f"{len(examples)} training examples of {len(rows)}; {n['over_long']} longer than "
                   f"{cfg.max_length} tokens (prompt + response + EOS): {n['dropped']} dropped "
                   f"({n['long_prompt']} with a prompt alone that long), {n['truncated']} truncated "
                   f"(--long-examples {cfg.long_examples})")
    return examples, test_rows, eval_rows


def start_or_resume(out: Path, cfg: Config, resume_from: Path | None, trained, data_state: dict,
                    rank: int) -> int:
    """The step to start at. Resume: the checkpoint's weights, optimizer, schedule and RNG states (the data
    must be the same), and metrics.jsonl cut back to its step; a fresh start: the previous run's files
    removed."""
    step = 0
    if resume_from is not None:
        state = runtime.load_checkpoint(resume_from, [trained], rank)
        if state["data"] != data_state:
            raise SystemExit(f"{resume_from}: saved with data {state['data']}, this run has {data_state}: "
                             "--resume needs the same data")
        step = state["step"]
        runtime.print0(f"resumed from {resume_from} at step {step}")
    runtime.begin_run(out, cfg, step if resume_from is not None else None, rank)
    return step


def stop_on_non_finite(e: FloatingPointError, cfg: Config, step: int, out: Path, bar) -> None:
    """A NaN/inf loss or gradient norm (train_step raises before the optimizer step): say where to go on."""
    bar.close()
    last = runtime.latest_checkpoint(out)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    runtime.print0(f"ERROR at step {step + 1}: {e}. Stopped before the optimizer step; nothing of this step "
                   f"was saved; {where}. Check the config first (--lr {cfg.lr:g}, --max-grad-norm "
                   f"{cfg.max_grad_norm:g}), then the data.")
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
    rss = runtime.all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if phase_s:
        steady = phase_s[1:] or phase_s
        runtime.print0(f"{1000 * sum(steady) / len(steady):.0f} ms/step, "
                       f"{sum(tokens[1:] or tokens) / sum(steady):.0f} tokens/s, "
                       f"peak RSS per rank (MiB): {', '.join(f'{r:.0f}' for r in rss)}")
    if rank == 0:
        plot_curves(out)


# ---- data ----
def read_rows(path: str, need: list[tuple[str, ...]], levels: str = "") -> list[dict]:
    """The rows of a JSON/JSONL file (runtime.read_json_rows); each entry of `need` is a group of alternative
    string fields one of which must be present (e.g. ("prompt", "question")). Errors name file, line and
    field."""
    rows = []
    for where, row in runtime.drop_empty(path, runtime.read_json_rows(path, levels), need):
        for group in need:
            present = [k for k in group if k in row]
            if not present:
                raise ValueError(f"{path} {where}: field {' or '.join(map(repr, group))} missing")
            if not isinstance(row[present[0]], str):
                raise ValueError(f"{path} {where}: field '{present[0]}' must be a string, "
                                 f"got {type(row[present[0]]).__name__}")
        rows.append(row)
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


# ---- logs ----
def plot_curves(out: Path) -> None:
    runtime.plot_metrics(out, [["loss", "lr", "grad_norm", "eval_accuracy"]], "step")


# ---- command line ----
# Fields --resume lets differ from the saved config.json: how long to run, how often to evaluate, save and
# log, the held-out problems, and memory/speed knobs with the same numbers. Anything else (model, data,
# learning rate, batch size, ...) would make the resumed run a different one.
SAFE_ON_RESUME = {"max_steps", "epochs", "eval_every", "eval_size", "eval_batch_size", "generate_max_len",
                  "test_file", "save_every", "log_every", "resume", "overwrite", "output_dir",
                  "stop_at_accuracy", "stop_after", "micro_train_batch_size", "gradient_checkpointing",
                  "async_save"}


def validate(cfg: Config) -> None:
    """Every value checked once, before anything is loaded or written: a clear error, never zeros."""
    need = runtime.flag_check(cfg)
    runtime.check_common(cfg)
    need(cfg.template in reward.TEMPLATES, "template", "must be one of " + ", ".join(reward.TEMPLATES))
    need(cfg.long_examples in ("drop", "truncate"), "long_examples", "must be drop or truncate")
    for name in ("train_batch_size", "micro_train_batch_size", "max_length", "eval_batch_size",
                 "generate_max_len", "eval_size", "log_every"):
        need(getattr(cfg, name) > 0, name, "must be a positive integer")
    need(cfg.max_steps > 0 or cfg.epochs > 0, "epochs", "must be > 0 when --max-steps is not set")
    for name in ("lr", "weight_decay", "max_grad_norm", "eval_every", "save_every", "stop_at_accuracy"):
        need(getattr(cfg, name) >= 0, name, "must be >= 0")
    for name in ("adam_beta1", "adam_beta2", "warmup_ratio", "min_lr_ratio"):
        need(0 <= getattr(cfg, name) <= 1, name, "must be in [0, 1]")
    runtime.check_run_inputs(cfg)


# Flags renamed to ppo.py's (OpenRLHF's) names; the old spellings still work.
OLD_FLAGS = {"max_grad_norm": ["--grad-clip"], "train_batch_size": ["--global-batch-size"],
             "micro_train_batch_size": ["--micro-batch-size"], "generate_max_len": ["--max-new-tokens"]}


def parse_args(argv=None) -> Config:
    """Command line = Config: a flag per field, its comment the --help text; --preset, then explicit flags."""
    return runtime.parse_config(Config, PRESETS, __doc__.split("\n")[0], argv, OLD_FLAGS)


if __name__ == "__main__":
    config = parse_args()
    with runtime.stage_errors(config.output_dir):
        main(config)
    runtime.end_process()  # see end_process: skips a teardown that can abort a finished multi-rank run

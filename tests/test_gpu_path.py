"""The recipe's GPU path, checked on CPU: the defaults start, no silent fallback to HF generate or to CPU,
the start-up line, FSDP2 roots resharded after no-grad forwards, every rank seeing the same files, the
training-side models without a K/V cache, bf16 HF folders that say bf16."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

TRAIN = SHARED / "train" / "simplerl_zero_v0" / "math_level3to5_data_processed_with_qwen_prompt.json"
TOKENIZER = SHARED / "qwen2.5_tokenizer"
TINY = str(ROOT / "data" / "tiny")


@pytest.fixture(scope="module")
def qwen_tok():
    """The real Qwen2.5 tokenizer (loaded once: ~2 s)."""
    assert TOKENIZER.exists(), f"missing {TOKENIZER} (../shared/data beside the checkout)"
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(TOKENIZER))
# Qwen/Qwen2.5-Math-7B's config.json, the fields that size it
QWEN_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=4096, rope_theta=10000.0,
               tie_word_embeddings=False)


def test_the_recipe_defaults_start(tmp_path, qwen_tok):
    """`ppo.py` with every default but the model and data paths: validation passes and the start-up (batch
    split over 8 and 16 GPUs, the real prompts with the real tokenizer, the step count, the memory plan)
    runs, as the README's 8-GPU command does."""
    assert TRAIN.exists() and TOKENIZER.exists(), f"missing {SHARED} (../shared/data beside the checkout)"
    cfg = ppo.parse_args(["--model", str(ROOT / "data" / "tiny"), "--train-file", str(TRAIN),
                          "--output-dir", str(tmp_path / "o")])
    defaults = ppo.Config()
    changed = {k for k in vars(defaults) if getattr(cfg, k) != getattr(defaults, k)}
    assert changed == {"model", "train_file", "output_dir"}
    assert cfg.micro_rollout_batch_size == 0  # the default: no cap on rows per experience forward
    ppo.validate(cfg)
    for world in (8, 16):
        assert ppo.prompts_per_rank(cfg, world) == 1024 // world
    rows, test_rows = ppo.load_data(cfg, qwen_tok)
    assert len(rows) == 8523 and test_rows == []
    steps, updates = ppo.count_steps(cfg, len(rows), 0, 8)
    assert (steps, updates) == (20 * (8523 // 1024), 20 * (8523 // 1024) * 64)
    plan = runtime.memory_plan(Qwen2Config(**QWEN_7B), 8, cfg, "cuda")
    assert 40e9 < plan["peak_training"] < 80e9 and plan["peak_generation"] < 80e9
    # no cap on rows: the experience forwards are bounded by --rollout-forward-tokens alone
    runtime.init_distributed()
    lengths = torch.tensor([[1] * 4000 + [0] * 24] * 6)
    batch = {"attention_mask": lengths, "response_mask": torch.ones(6, 3000)}
    assert [len(g) for g in runtime.forward_groups(batch, cfg.micro_rollout_batch_size, cfg.rollout_forward_tokens)
            ] == [2, 2, 2]


def test_the_memory_plan_decides_activation_checkpointing():
    """--gradient-checkpointing auto (the default): on only where the plan's training peak without it exceeds
    90% of the GPU's memory; on and off are taken as said. The recipe at 7B on 8 GPUs: packed passes of 16,384
    tokens peak at 113 GB without it (52.5 with), so on on 80 GB and off on 150 GB (an H200); v0's padded
    micro-batches of 2 rows of 4,024 tokens peak at 83.5 GB without it (53.7 with): on on 80 GB too."""
    import dataclasses
    config, cfg = Qwen2Config(**QWEN_7B), ppo.Config()
    assert cfg.gradient_checkpointing == "auto" and cfg.train_forward_tokens == 16384

    def plan(gb, **changes):
        return runtime.memory_plan(config, 8, dataclasses.replace(cfg, **changes), "cuda", gb)
    p = plan(80.0)
    assert p["gradient_checkpointing"] == {"setting": "auto", "on": True, "device_gb": 80.0}
    assert p["peak_training"] == p["peak_training_checkpointing_on"] < 0.9 * 80e9 < p["peak_training_checkpointing_off"]
    assert 52e9 < p["peak_training_checkpointing_on"] < 53e9 and 112e9 < p["peak_training_checkpointing_off"] < 114e9
    p = plan(150.0)
    assert not p["gradient_checkpointing"]["on"] and p["peak_training"] == p["peak_training_checkpointing_off"]
    padded = plan(80.0, train_forward_tokens=0, micro_train_batch_size=2)
    assert cfg.prompt_max_len + cfg.generate_max_len == 4024
    assert padded["gradient_checkpointing"]["on"] and 83e9 < padded["peak_training_checkpointing_off"] < 84e9
    assert not plan(150.0, train_forward_tokens=0)["gradient_checkpointing"]["on"]
    assert not plan(80.0, gradient_checkpointing="off")["gradient_checkpointing"]["on"]  # as said, even over
    assert plan(150.0, gradient_checkpointing="on")["gradient_checkpointing"]["on"]
    assert "gradient checkpointing: on (auto: the training peak without it, 113.1 GB, exceeds 72.0 GB, 90% of " \
        "80.0 GB)" in runtime.format_memory_plan(plan(80.0), config, 8)
    # the CPU world: the tiny preset says off; auto decides for the host's memory, on where it is too small
    tiny = ppo.parse_args(["--preset", "tiny"])
    small = Qwen2Config.from_pretrained(TINY)
    assert tiny.gradient_checkpointing == "off"
    assert not runtime.memory_plan(small, 1, dataclasses.replace(tiny, gradient_checkpointing="auto"), "cpu",
                                   64.0)["gradient_checkpointing"]["on"]
    assert runtime.memory_plan(small, 1, dataclasses.replace(tiny, gradient_checkpointing="auto"), "cpu",
                               0.01)["gradient_checkpointing"]["on"]
    with pytest.raises(SystemExit, match="--gradient-checkpointing 'yes': must be one of auto, on, off"):
        ppo.validate(ppo.parse_args(["--preset", "tiny", "--gradient-checkpointing", "yes"]))


# ---- no silent fallback: a broken vLLM on a GPU, no CUDA for a GPU model ----
def broken_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError, as a broken install


def test_engine_auto_on_a_gpu_stops_when_vllm_does_not_import(monkeypatch, tmp_path):
    import shutil
    import evaluate
    folder = tmp_path / "model"  # a local folder with weights (a hub id not cached here stops earlier, offline)
    shutil.copytree(ROOT / "data" / "tiny", folder)
    (folder / "model.safetensors").write_bytes(b"")
    from transformers import AutoTokenizer
    broken_vllm(monkeypatch)
    assert "import of vllm halted" in runtime.vllm_import_error()
    cuda = torch.device("cuda", 0)
    with pytest.raises(SystemExit, match=r"vLLM does not import on this GPU machine \(ModuleNotFoundError.*"
                                         r"pip install -r requirements-gpu.txt.*--engine hf"):
        runtime.choose_engine("auto", cuda)
    cfg = ppo.Config(model=str(ROOT / "data" / "tiny"))
    tok = AutoTokenizer.from_pretrained(str(ROOT / "data" / "tiny"))
    with pytest.raises(SystemExit, match="vLLM does not import"):
        ppo.make_engine(cfg, None, tok, 0, 1, cuda)
    with pytest.raises(SystemExit, match="vLLM does not import"):
        evaluate.engine_kind(str(folder), evaluate.Config(model=[str(folder)]), cuda)
    # what a user asks for by name is used; on CPU auto still falls back to HF generate (and says so)
    assert runtime.choose_engine("hf", cuda) == "hf" and runtime.choose_engine("auto", torch.device("cpu")) == "hf"


def big_model(tmp_path) -> str:
    """A folder with Qwen2.5-Math-7B's config and the random-init marker: a GPU model that passes validation."""
    Qwen2Config(**QWEN_7B).save_pretrained(tmp_path / "qwen7b")
    (tmp_path / "qwen7b" / runtime.INIT_FROM_CONFIG).touch()
    return str(tmp_path / "qwen7b")


def test_no_cuda_stops_a_gpu_model_unless_device_cpu(monkeypatch, tmp_path):
    big, tiny = big_model(tmp_path), str(ROOT / "data" / "tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"no CUDA device: torch .*; --model .*qwen7b is a GPU job "
                                         r"\(7.62B parameters\).*--device cpu"):
        runtime.init_distributed("auto", [tiny, big])
    with pytest.raises(SystemExit, match=r"no CUDA device.*--device cuda"):
        runtime.check_device("cuda", [tiny])
    with pytest.raises(SystemExit, match="a hub model not cached here"):
        runtime.check_device("auto", ["nobody/not-cached-here"])
    runtime.check_device("cpu", [big])  # insisting on CPU is allowed
    runtime.check_device("auto", [tiny, ""])  # the tiny world runs on CPU as before
    # a CUDA build of torch whose driver is too old: torch's own reason is in the message
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def too_old():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12040).")
    monkeypatch.setattr(torch.cuda, "init", too_old)
    with pytest.raises(SystemExit, match=r"\(CUDA 13.0\) cannot use a GPU: The NVIDIA driver on your system is "
                                         r"too old"):
        runtime.check_device("auto", [big])
    # and on a machine with CUDA, --device cpu is refused rather than half-honoured
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit, match="CUDA_VISIBLE_DEVICES="):
        runtime.check_device("cpu", [tiny])


def test_startup_line_and_run_info(tmp_path, capsys):
    rank, world, device = runtime.init_distributed()
    line = runtime.announce(tmp_path / "o", "vllm", device, torch.float32, world, rank)
    assert line == f"engine=vllm device=cpu backend=gloo dtype=float32 world={world}"
    assert line in capsys.readouterr().out
    info = json.loads((tmp_path / "o" / "run_info.json").read_text())
    assert info["line"] == line and info["torch"] == torch.__version__ and info["engine"] == "vllm"


@pytest.mark.slow  # three stage scripts in subprocesses (~40 s)
def test_every_stage_prints_the_startup_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    tiny = ["--preset", "tiny"]
    runs = {"ppo.py": [*tiny, "--max-steps", "1", "--rollout-batch-size", "4", "--n-samples-per-prompt", "2",
                       "--train-batch-size", "8", "--micro-train-batch-size", "8", "--test-file", "",
                       "--generate-max-len", "8", "--save-every", "0"],
            "sft.py": [*tiny, "--max-steps", "1", "--test-file", ""],
            "evaluate.py": [*tiny, "--limit", "4"]}
    for script, args in runs.items():
        out = tmp_path / script
        r = subprocess.run([sys.executable, script, *args, "--output-dir", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        line = "engine=hf device=cpu backend=gloo dtype=float32 world=1"
        assert r.stdout.count(line) == 1, (script, r.stdout[-2000:])
        assert json.loads((out / "run_info.json").read_text())["line"] == line



# ---- the smaller GPU-path items: no K/V cache in the trainers' forwards, bf16 folders that say bf16 ----
def test_training_side_models_build_no_kv_cache(tmp_path):
    runtime.init_distributed()
    cfg = ppo.parse_args(["--preset", "tiny", "--output-dir", str(tmp_path)])  # no gradient checkpointing
    actor, ref, critic = ppo.load_models(cfg, None, torch.device("cpu"))
    ids = torch.tensor([[5, 6, 7, 8]])
    for net in (actor, ref, critic.model):
        assert net.config.use_cache is False and net(input_ids=ids).past_key_values is None
    from transformers import AutoTokenizer
    engine, _ = ppo.make_engine(cfg, actor.config, AutoTokenizer.from_pretrained(cfg.model), 0, 1,
                                torch.device("cpu"))
    assert engine.model.config.use_cache is True  # the generating copy keeps its cache
    assert engine.model.generation_config.use_cache is True  # what generate reads
    assert actor.config.use_cache is False


def test_hf_folders_written_on_a_gpu_say_bfloat16(tmp_path, monkeypatch):
    """save_hf_checkpoint and ppo.save_critic on a GPU (simulated: the dtype decision is torch.cuda's) write
    bf16 weights under a config.json that says bfloat16, so dtype="auto" loads them as they are."""
    from safetensors import safe_open
    from transformers import AutoTokenizer
    runtime.init_distributed()
    tok = AutoTokenizer.from_pretrained(TINY)
    actor = runtime.load_model(TINY, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runtime.save_hf_checkpoint(actor, tok, str(tmp_path / "actor"))
    ppo.save_critic(ppo.Critic(runtime.load_model(TINY, 1)), tok, str(tmp_path / "critic"))
    monkeypatch.undo()
    for name in ("actor", "critic"):
        assert json.loads((tmp_path / name / "config.json").read_text())["dtype"] == "bfloat16"
        with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "actor", dtype="auto").dtype == torch.bfloat16
    assert str(actor.config.dtype).removeprefix("torch.") == "float32"  # the trainer's config: untouched


# ---- 2 ranks (gloo): FSDP2 roots resharded after no-grad forwards; every rank sees the same files ----
def gathered_fsdp_modules(net: torch.nn.Module) -> list[str]:
    """The FSDP2 modules of `net` whose parameters are not sharded now (FSDP's own state, not bytes)."""
    from torch.distributed.fsdp import FSDPModule
    return [name or "<root>" for name, m in net.named_modules() if isinstance(m, FSDPModule)
            and not all(g.is_sharded for g in m._get_fsdp_state()._fsdp_param_groups)]


def worker(out: str) -> None:
    rank, world, device = runtime.init_distributed()
    base, result = Path(out), {}
    actor = runtime.shard_model(runtime.load_model(TINY, 0), device)
    ref = runtime.shard_model(runtime.load_model(TINY, 0).requires_grad_(False), device)
    critic = runtime.shard_model(ppo.Critic(runtime.load_model(TINY, 1)), device)
    batch = ppo.pad_samples([runtime.Sample([5, 6, 7][: 1 + i % 3], [8, 9, 10][: 1 + i % 2], False, None)
                             for i in range(6)], 256)
    ppo.experience_forward(actor, ref, critic, batch, ppo.Config(), device)
    result["gathered"] = {k: gathered_fsdp_modules(v) for k, v in (("actor", actor), ("ref", ref),
                                                                    ("critic", critic))}
    result["fsdp"] = all(len(gathered_fsdp_modules(v)) == 0 and hasattr(v, "reshard") for v in (actor, ref, critic))
    # one filesystem: passes
    runtime.check_shared_paths(base / "shared", [TINY, str(ROOT / "data" / "synth" / "train.jsonl"), ""], rank)
    torch.distributed.barrier()  # rank 0 has removed its token
    result["shared_token_gone"] = not any((base / "shared").iterdir())
    # two "nodes": each rank's output directory is its own node-local disk
    errors = []
    try:
        runtime.check_shared_paths(base / f"node{rank}", [], rank)
    except SystemExit as e:
        errors.append(str(e))
    # a --model folder that exists on node 0 only (an SFT run's final/ on node 0's disk)
    model = base / f"node{rank}" / "final"
    if rank == 0:
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text("{}")
    torch.distributed.barrier()
    try:
        runtime.check_shared_paths(base / "shared", [str(model)], rank)
    except SystemExit as e:
        errors.append(str(e))
    result["errors"] = errors
    results = runtime.all_gather_object(result)
    if rank == 0:
        (base / "result.json").write_text(json.dumps(results))
    torch.distributed.barrier()


@pytest.mark.slow  # torchrun, 2 ranks
def test_two_ranks_reshard_roots_and_see_the_same_files(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                        str(runtime._free_port()), __file__, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "result.json").read_text())
    for res in results:  # every rank
        assert res["gathered"] == {"actor": [], "ref": [], "critic": []}, res["gathered"]
        assert res["fsdp"] and res["shared_token_gone"]
        node_local, model_on_node0 = res["errors"]
        assert node_local.startswith(f"--output-dir {tmp_path}/node") and "rank 1 (" in node_local
        assert "not node-local disks" in node_local
        assert model_on_node0.startswith(f"{tmp_path}/node")
        assert "nothing there vs a folder of 1 files" in model_on_node0
        assert "shared filesystem" in model_on_node0


if __name__ == "__main__":
    worker(sys.argv[1])
    runtime.end_process()


def test_gpu_requirements_build_nothing_and_flash_attention_is_optional(monkeypatch, capsys):
    lines = [x.split("#")[0].strip() for x in (ROOT / "requirements-gpu.txt").read_text().splitlines()]
    pins = [x for x in lines if x and not x.startswith("-r")]
    assert pins == ["torch==2.14.0", "vllm==0.33.0"]  # flash-attn has no wheel for torch 2.14 + CUDA 13
    # installed but broken (built for another torch): said, and SDPA is used
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn"
                        else find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    assert runtime.flash_attention_works() is False
    assert "flash_attn is installed but does not import" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.load_model(TINY, 0).config._attn_implementation == "sdpa"


# ---- stop strings that end inside a token (the Qwen2.5 tokenizer: `}}</` is one token) ----
def test_stop_end_is_where_vllm_stops_with_the_real_tokenizer(qwen_tok):
    tok = qwen_tok
    eos, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    stops = [im_end, eos]

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]
    boxed = ids("so \\boxed{\\frac{1}{2}}</s>\n\nMore")
    assert [tok.decode([t]) for t in boxed][-4:-1] == ["}}</", "s", ">\n\n"]  # "</s>" ends inside `>\n\n`
    cut = boxed.index(ids(">\n\n")[0]) + 1
    padded = boxed[:cut] + [eos] * 3  # HF generate pads a finished row with the pad token, here also a stop token
    assert runtime.stop_end(padded, stops, ["</s>"], tok) == cut
    assert runtime.stop_end(boxed, stops, ["</s>"], tok) == cut
    assert runtime.stop_end(boxed, stops, [], tok) is None  # no stop string: only the length limit
    early = ids("x = 3") + [im_end] + ids("}}</s>")
    assert runtime.stop_end(early, stops, ["</s>"], tok) == len(ids("x = 3")) + 1  # a stop token first


def test_hf_engine_response_ends_where_the_stop_string_does(qwen_tok):
    """Before: a row that stopped on "</s>" while another ran on kept one trailing pad token (<|endoftext|>,
    a stop token for Qwen) it never sampled."""
    from types import SimpleNamespace
    tok = qwen_tok
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    engine = runtime.HFEngine(runtime.load_model(TINY, 0), tok, [eos], ["</s>"], torch.device("cpu"),
                              return_logprobs=False)
    engine.weights_version = 0
    a = tok("\\boxed{1}}</s>\n\n", add_special_tokens=False)["input_ids"]
    b = tok("and so on and so on and so", add_special_tokens=False)["input_ids"]
    width = max(len(a), len(b))
    prompt = [5, 6]
    rows = [prompt + a + [eos] * (width - len(a)), prompt + b + [eos] * (width - len(b))]
    engine.model.generate = lambda **kw: SimpleNamespace(sequences=torch.tensor(rows), logits=None)
    s_a, s_b = engine.generate([prompt, prompt], n=1, temperature=1.0, top_p=1.0, max_new_tokens=width)
    assert s_a.response_ids == a and not s_a.truncated
    assert s_b.response_ids == b and s_b.truncated


@pytest.mark.slow  # vLLM on 2 ranks, a Qwen2.5-shaped model, 3 RL steps, eight benchmarks, SFT: ~3 minutes
def test_the_recipe_rehearsed_on_cpu(tmp_path):
    """tests/rehearse_recipe.py: the README's recipe with only the sizes changed (its docstring: the checks)."""
    assert TOKENIZER.exists(), f"missing {TOKENIZER} (../shared/data beside the checkout)"
    r = subprocess.run([sys.executable, "tests/rehearse_recipe.py", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "rehearsal passed" in r.stdout

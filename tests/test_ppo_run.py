"""End-to-end runs of ppo.py in the tiny world (world of one, CPU):
- from a quickly made SFT checkpoint, the reward rises, sampler and trainer agree, and the outputs exist;
- a run killed with SIGKILL resumes from its last checkpoint and ends exactly where an uninterrupted run ends;
- a NaN loss stops the run with a clear message and leaves the last good checkpoint intact."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow  # end to end: ppo.py training runs in subprocesses

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = str(ROOT / "data" / "tiny")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")


def ppo_cmd(out, *args):
    return [sys.executable, "ppo.py", "--preset", "tiny", "--output-dir", str(out), "--time-limit-minutes", "0", *args]


def run(cmd, timeout=300):
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    return r


def records(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
    """A few hundred steps of supervised training on single-digit sums: the model has learned the answer
    format but is often wrong, which is where RL has something to do."""
    import reward
    out = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY), dtype=torch.float32)
    rows = [json.loads(line) for line in open(ROOT / "data" / "synth" / "train.jsonl")]
    rows = [r for r in rows if r["level"] in (1, 2)]
    data = []
    for r in rows:
        p = tok(reward.apply_template(r["question"], "tiny"), add_special_tokens=False)["input_ids"]
        s = tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        data.append((p + s, [-100] * len(p) + s))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(0)
    for step in range(SFT_STEPS):
        batch = [data[i] for i in torch.randint(len(data), (64,), generator=g).tolist()]
        width = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [256] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        logits = model(input_ids=ids, attention_mask=(labels != -100) | (ids != 256)).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


SFT_STEPS = 150


def test_reward_rises_from_an_early_sft_checkpoint(sft_checkpoint, tmp_path):
    out = tmp_path / "ppo"
    r = run(ppo_cmd(out, "--model", str(sft_checkpoint), "--levels", "1,2", "--max-steps", "40",
                    "--rollout-batch-size", "16", "--train-batch-size", "64", "--critic-warmup-steps", "5",
                    "--eval-every", "0", "--eval-size", "60", "--save-every", "0", "--dump-rollouts-every", "20"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = [x for x in records(out) if "reward" in x]
    assert len(recs) == 40
    first = sum(x["reward"] for x in recs[:10]) / 10
    last = sum(x["reward"] for x in recs[-10:]) / 10
    assert last > first + 0.1, f"mean reward {first:.3f} (steps 1-10) -> {last:.3f} (steps 31-40)"
    for x in recs:  # the sampler and the trainer score the same distribution, every step
        assert x["engine_logprob_gap"] < 1e-4, x
    assert "WARNING" not in r.stdout + r.stderr
    keys = {"reward", "accuracy", "format_rate", "response_length", "response_length_max", "truncated_rate", "kl",
            "entropy", "clipfrac", "approx_kl", "v_loss", "explained_variance", "actor_grad_norm", "critic_grad_norm",
            "actor_lr", "critic_lr", "reflection_rate", "time/generate_ms", "time/score_ms", "time/forward_ms",
            "time/train_ms", "time/sync_ms", "tokens_per_s", "perf/update_passes", "perf/update_pad_fraction",
            "perf/experience_pad_fraction", "perf/update_rank_imbalance", "perf/collective_bytes",
            "perf/collective_calls", "perf/host_syncs"}
    assert keys <= set(recs[-1]), keys - set(recs[-1])
    assert "pg_loss" not in recs[0] and "pg_loss" in recs[5]  # critic-only warm-up, then both
    evals = [x for x in records(out) if "eval/accuracy" in x]
    assert [x["step"] for x in evals] == [0, 40]
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "rollouts" / "step_1.jsonl").exists() and (out / "rollouts" / "step_20.jsonl").exists()
    AutoModelForCausalLM.from_pretrained(out / "final" / "actor")  # what evaluate.py loads
    assert "value_head.weight" in load_file(out / "final" / "critic" / "model.safetensors")


SMALL = ["--model", TINY, "--test-file", "", "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
         "--train-batch-size", "8", "--micro-train-batch-size", "8", "--generate-max-len", "12",
         "--critic-warmup-steps", "1", "--max-steps", "8", "--save-every", "2", "--keep-checkpoints", "0"]


def final_weights(out):
    return load_file(Path(out) / "final" / "actor" / "model.safetensors")


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    r = run(ppo_cmd(tmp_path / "a", *SMALL))
    assert r.returncode == 0, r.stderr[-3000:]
    b = tmp_path / "b"
    proc = subprocess.Popen(ppo_cmd(b, *SMALL), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (b / "checkpoint-2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (b / "checkpoint-2" / "trainer_state.pt").exists()
    r = run(ppo_cmd(b, *SMALL, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    wa, wb = final_weights(tmp_path / "a"), final_weights(b)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=1e-6, msg=k)
    ra, rb = records(tmp_path / "a"), records(b)
    assert [x["step"] for x in rb] == [x["step"] for x in ra] == list(range(1, 9))  # no duplicated steps
    for x, y in zip(ra, rb):
        assert x["reward"] == y["reward"] and abs(x["kl"] - y["kl"]) < 1e-6


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "nan"
    r = run([sys.executable, "tests/nan_at_step.py", "4", *ppo_cmd(out, *SMALL)[2:]])  # NaN actor loss at step 5
    assert r.returncode == 1
    assert "non-finite PPO loss" in r.stdout and "last good checkpoint is" in r.stdout and "checkpoint-4" in r.stdout
    assert not (out / "checkpoint-6").exists() and not (out / "final").exists()
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint-4" / "actor")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    r = run(ppo_cmd(out, *SMALL, "--resume", "--max-steps", "6"))  # and the run can go on from there
    assert r.returncode == 0 and "resumed from" in r.stdout and "RL step 4" in r.stdout, r.stderr[-2000:]


def test_grpo_run_has_no_critic_and_resumes_exactly(tmp_path):
    """--advantage grpo: no critic loaded, saved or planned for; a resume from its checkpoint (actor and
    optimizer only) continues exactly as the uninterrupted run."""
    args = ["--model", TINY, "--test-file", "", "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
            "--train-batch-size", "8", "--micro-train-batch-size", "8", "--generate-max-len", "12",
            "--max-steps", "4", "--save-every", "2", "--advantage", "grpo"]
    a, b = tmp_path / "a", tmp_path / "b"
    r = run(ppo_cmd(a, *args))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (a / "checkpoint-2").iterdir()) == ["actor", "optim", "trainer_state.pt"]
    assert not (a / "final" / "critic").exists()
    assert json.loads((a / "memory_plan.json").read_text())["critic_weights"] == 0
    assert all(not {"critic_lr", "v_loss", "values", "explained_variance"} & set(x) for x in records(a))
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    r = run(ppo_cmd(b, *args, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "checkpoint-2" in r.stdout
    wa, wb = final_weights(a), final_weights(b)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=1e-6, msg=k)
    ra, rb = records(a), records(b)
    assert [x["step"] for x in rb] == [x["step"] for x in ra] == [1, 2, 3, 4]
    for x, y in zip(ra, rb):
        assert x["reward"] == y["reward"] and abs(x["kl"] - y["kl"]) < 1e-6

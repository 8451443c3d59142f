"""Nothing silently wrong, nothing lost (issue 13): one run per output directory, --resume checks the
config, torn metrics and truncated checkpoints, a full disk, NaN stops, nonsense values, non-UTF-8 data,
evaluate.py's summary after each model. Runs are real subprocess runs of a few tiny steps."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import ppo  # noqa: E402
import runtime  # noqa: E402
import sft  # noqa: E402

TINY = str(ROOT / "data" / "tiny")
TEST = str(ROOT / "data" / "synth" / "test.jsonl")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
PPO = ["--preset", "tiny", "--model", TINY, "--test-file", TEST, "--eval-size", "16", "--rollout-batch-size", "4",
       "--n-samples-per-prompt", "4", "--train-batch-size", "8", "--micro-train-batch-size", "8",
       "--generate-max-len", "12", "--critic-warmup-steps", "1", "--save-every", "1", "--keep-checkpoints", "0"]
SFT = ["--preset", "tiny", "--max-steps", "6", "--train-batch-size", "16", "--micro-train-batch-size", "8",
       "--save-every", "2", "--test-file", "", "--lr", "3e-3"]


def run(script: str, out: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *(PPO if script == "ppo.py" else SFT), "--output-dir", str(out),
                           *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def steps(out: Path, key: str | None = None) -> list[int]:
    return [r["step"] for r in map(json.loads, open(out / "metrics.jsonl")) if key is None or key in r]


def clear_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code != 0, the message says what is wrong, and no traceback."""
    assert r.returncode != 0, r.stdout[-2000:]
    for n in needles:
        assert n in r.stderr + r.stdout, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> Path:
    """3 RL steps, checkpoints 1 and 2, held-out evals at steps 0 and 3."""
    out = tmp_path_factory.mktemp("ppo") / "run"
    r = run("ppo.py", out, "--max-steps", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """Stopped after step 4 (as if killed): checkpoints 2 and 4, no final/."""
    out = tmp_path_factory.mktemp("sft") / "run"
    r = run("sft.py", out, "--stop-after", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ---- item 2 and 11: a fresh run never touches another run's directory; a typo overwrites nothing ----
@pytest.mark.slow  # stage scripts in subprocesses
@pytest.mark.parametrize("script", ["ppo.py", "sft.py"])
def test_fresh_run_refuses_a_directory_holding_another_run(script, ppo_run, sft_run, tmp_path):
    out = copy_run(ppo_run if script == "ppo.py" else sft_run, tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run(script, out, "--seed", "7")
    clear_error(r, f"--output-dir {out} holds another run", "--resume", "--overwrite")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # metrics, rollouts, checkpoints and config.json untouched


@pytest.mark.slow  # stage scripts in subprocesses
@pytest.mark.parametrize("script", ["ppo.py", "sft.py"])
def test_a_start_that_fails_on_a_typo_keeps_the_previous_config(script, ppo_run, sft_run, tmp_path):
    out = copy_run(ppo_run if script == "ppo.py" else sft_run, tmp_path)
    config = (out / "config.json").read_text()
    r = run(script, out, "--resume", "--train-file", "data/synth/trian.jsonl")
    clear_error(r, "--train-file 'data/synth/trian.jsonl': no such file")
    assert (out / "config.json").read_text() == config


@pytest.mark.slow  # stage scripts in subprocesses
def test_overwrite_starts_over_and_keeps_only_the_new_run(ppo_run, tmp_path):
    out = copy_run(ppo_run, tmp_path)
    r = run("ppo.py", out, "--max-steps", "1", "--overwrite", "--seed", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert steps(out) == [0, 1, 1] and not list(out.glob("checkpoint-*"))
    assert json.loads((out / "config.json").read_text())["seed"] == 5


# ---- item 3: --resume compares the config ----
@pytest.mark.parametrize("script,changed", [("ppo.py", ["--actor-lr", "0.001", "--rollout-batch-size", "8"]),
                                            ("sft.py", ["--lr", "0.01"]),
                                            ("ppo.py", ["--model", str(ROOT / "tests")])])
@pytest.mark.slow  # stage scripts in subprocesses
def test_resume_stops_on_a_changed_config(script, changed, ppo_run, sft_run, tmp_path):
    out = copy_run(ppo_run if script == "ppo.py" else sft_run, tmp_path)
    r = run(script, out, "--resume", *changed)
    field = changed[0][2:].replace("-", "_")
    if field == "model":  # a folder without weights is refused before the config is compared
        clear_error(r, "has no model weights")
        return
    clear_error(r, "--resume: the config differs from", f"{field} (")
    if script == "ppo.py":
        assert "rollout_batch_size (4 -> 8)" in r.stderr
    assert "max_steps" in r.stderr  # the fields that may change are listed


@pytest.mark.slow  # stage scripts in subprocesses
def test_resume_accepts_safe_changes_and_logs_no_extra_eval(ppo_run, tmp_path):
    out = copy_run(ppo_run, tmp_path)
    r = run("ppo.py", out, "--resume", "--max-steps", "4", "--eval-size", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "checkpoint-2" in r.stdout
    assert steps(out, "reward") == [1, 2, 3, 4]
    assert steps(out, "eval/accuracy") == [0, 4]  # the start's eval once, the end's once
    assert "held-out greedy accuracy:" in r.stdout  # the start's accuracy comes from the log


# ---- item 6: torn metrics line, truncated checkpoint, full disk ----
@pytest.mark.slow  # stage scripts in subprocesses
@pytest.mark.parametrize("script", ["ppo.py", "sft.py"])
def test_resume_survives_a_torn_metrics_line_and_a_truncated_checkpoint(script, ppo_run, sft_run, tmp_path):
    out = copy_run(ppo_run if script == "ppo.py" else sft_run, tmp_path)
    newest = out / ("checkpoint-2/actor/model.safetensors" if script == "ppo.py" else "checkpoint-4/model/model.safetensors")
    newest.write_bytes(newest.read_bytes()[:100_000])
    n_lines = len((out / "metrics.jsonl").read_text().splitlines())
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 0.12')  # a write cut short by a full disk
    r = run(script, out, "--resume", *(["--max-steps", "3"] if script == "ppo.py" else []))
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    assert f"{out / 'metrics.jsonl'} line {n_lines + 1}: torn last line dropped" in text
    assert f"{newest}: truncated" in text
    previous = "checkpoint-1" if script == "ppo.py" else "checkpoint-2"
    assert f"resumed from {out / previous}" in r.stdout
    expected = [1, 2, 3] if script == "ppo.py" else [1, 2, 3, 4, 5, 6]
    assert steps(out, "reward" if script == "ppo.py" else "loss") == expected


@pytest.mark.slow  # stage scripts in subprocesses
def test_every_checkpoint_damaged_is_an_error_naming_the_files(sft_run, tmp_path):
    out = copy_run(sft_run, tmp_path)
    for step in (2, 4):
        f = out / f"checkpoint-{step}" / "trainer_state.pt"
        f.write_bytes(f.read_bytes()[:1000])
    r = run("sft.py", out, "--resume")
    clear_error(r, "every checkpoint is damaged", f"{out / 'checkpoint-2' / 'trainer_state.pt'}: truncated")


@pytest.mark.slow  # stage scripts in subprocesses
def test_full_disk_says_no_space_left(tmp_path):
    with pytest.raises(SystemExit, match=f"no space left on {tmp_path}"):
        with runtime.stage_errors(str(tmp_path)):
            with open("/dev/full", "w") as f:  # writes fail with ENOSPC, like a full disk
                f.write("x" * 10_000)
                f.flush()
    out = tmp_path / "run"
    out.mkdir()
    (out / "curves.png.tmp").symlink_to("/dev/full")  # the first save's plot lands on a full disk
    r = run("ppo.py", out, "--max-steps", "2", "--test-file", "")
    clear_error(r, f"no space left on {out}")


# ---- item 7: NaN stops, temperature 0 ----
@pytest.mark.slow  # stage scripts in subprocesses
def test_sft_stops_on_nan_and_saves_no_nan_weights(tmp_path):
    out = tmp_path / "nan"
    r = run("sft.py", out, "--lr", "1e12", "--warmup-ratio", "0")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "non-finite loss or gradient norm" in r.stdout and "--lr 1e+12" in r.stdout
    assert not (out / "final").exists()
    for ckpt in out.glob("checkpoint-*"):
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


@pytest.mark.slow  # stage scripts in subprocesses
def test_ppo_nan_message_points_at_the_config(tmp_path):
    r = subprocess.run([sys.executable, "tests/nan_at_step.py", "1", *PPO, "--output-dir", str(tmp_path / "nan"),
                        "--max-steps", "3", "--test-file", ""], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)  # a NaN actor loss at RL step 2
    assert r.returncode == 1
    assert "Check the config first (learning rates" in r.stdout and "temperature 1" in r.stdout


# ---- item 8 and 11: nonsense values are clear errors, checked before anything runs ----
PPO_BAD = [(["--temperature", "0"], "--temperature 0.0: must be > 0"),
           (["--reward-timeout", "0"], "--reward-timeout 0.0: must be > 0"),
           (["--rollout-batch-size", "-4"], "--rollout-batch-size -4: must be a positive integer"),
           (["--train-batch-size", "0"], "--train-batch-size 0: must be a positive integer"),
           (["--micro-train-batch-size", "0"], "--micro-train-batch-size 0: must be a positive integer"),
           (["--levels", "1,x"], "--levels '1,x': must be comma-separated integers"),
           (["--eval-size", "-5"], "--eval-size -5: must be >= 0"),
           (["--model", "runs/demo/base/fnal"], "runs/demo/base/fnal: no such directory"),
           (["--resume", "--overwrite"], "--overwrite True: and --resume exclude each other")]
SFT_BAD = [(["--train-batch-size", "0"], "--train-batch-size 0: must be a positive integer"),
           (["--micro-train-batch-size", "-1"], "--micro-train-batch-size -1: must be a positive integer"),
           (["--levels", "1,x"], "--levels '1,x': must be comma-separated integers"),
           (["--eval-size", "-5"], "--eval-size -5: must be a positive integer"),
           (["--model", "runs/sft/checkpoint-1"], "runs/sft/checkpoint-1: no such directory"),
           (["--train-file", "nope.jsonl"], "--train-file 'nope.jsonl': no such file")]
EVAL_BAD = [(["--limit", "0"], "--limit 0: must be a positive number"),
            (["--n", "0"], "--n 0: must be a positive integer"),
            (["--batch-size", "-2"], "--batch-size -2: must be a positive integer"),
            (["--reward-timeout", "0"], "--reward-timeout 0.0: must be > 0"),
            (["--model", "runs/ppo/final/actr"], "runs/ppo/final/actr: no such directory")]


@pytest.mark.parametrize("args,message", PPO_BAD)
def test_ppo_validate(args, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        ppo.validate(ppo.parse_args(["--preset", "tiny", *args]))


@pytest.mark.parametrize("args,message", SFT_BAD)
def test_sft_validate(args, message):
    with pytest.raises(SystemExit, match=message):
        sft.validate(sft.parse_args(["--preset", "tiny", *args]))


@pytest.mark.parametrize("args,message", EVAL_BAD)
def test_evaluate_validate(args, message):
    with pytest.raises(SystemExit, match=message):
        evaluate.validate(evaluate.parse_args(["--preset", "tiny", *args]))


@pytest.mark.parametrize("script,args,message", [("ppo.py", ["--temperature", "0"], PPO_BAD[0][1]),
                                                 ("sft.py", ["--levels", "1,x"], SFT_BAD[2][1]),
                                                 ("evaluate.py", ["--limit", "0"], EVAL_BAD[0][1])])
@pytest.mark.slow  # stage scripts in subprocesses
def test_the_scripts_validate_before_they_run(script, args, message, tmp_path):
    r = subprocess.run([sys.executable, script, "--preset", "tiny", "--output-dir", str(tmp_path / "o"), *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    clear_error(r, message)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # stage scripts in subprocesses
def test_ppo_with_fewer_prompts_than_one_rollout_batch_is_an_error(tmp_path):
    r = run("ppo.py", tmp_path / "o", "--levels", "1", "--rollout-batch-size", "256", "--train-batch-size", "256",
            "--micro-train-batch-size", "256")
    clear_error(r, "fewer than one rollout batch of --rollout-batch-size 256")
    assert not (tmp_path / "o" / "final").exists()


def test_non_utf8_bytes_are_reported_with_file_and_line(tmp_path):
    good = '{"question": " 1+ 2", "solution": "\\\\boxed{3}", "answer": "3", "level": 1}\n'
    path = tmp_path / "synth" / "test.jsonl"
    path.parent.mkdir()
    path.write_bytes(good.encode() * 2 + b'{"question": "\xff 1+ 2", "answer": "3"}\n')
    with pytest.raises(ValueError, match=f"{path} line 3: not UTF-8"):
        ppo.read_prompts(str(path), "tiny")
    with pytest.raises(ValueError, match=f"{path} line 3: not UTF-8"):
        sft.read_rows(str(path), [("question",), ("solution",)])
    with pytest.raises(ValueError, match=f"{path} line 3: not UTF-8"):
        evaluate.load_benchmark(str(tmp_path), "synth", "tiny")


@pytest.mark.slow  # stage scripts in subprocesses
@pytest.mark.parametrize("script", ["ppo.py", "sft.py", "evaluate.py"])
def test_data_errors_end_without_a_traceback(script, tmp_path):
    path = tmp_path / "synth" / "test.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"question": " 1+ 2", "solution": "3", "answer": "3", "level": 1}\n' * 300 + b'{"question": "\xff"}\n')
    args = ["--data-dir", str(tmp_path)] if script == "evaluate.py" else ["--train-file", str(path)]
    r = subprocess.run([sys.executable, script, "--preset", "tiny", "--output-dir", str(tmp_path / "o"), *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    clear_error(r, str(path), "301", "not UTF-8")


# ---- item 9: evaluate.py writes its summary as each model finishes ----
@pytest.mark.slow  # stage scripts in subprocesses
def test_evaluate_keeps_finished_models_when_a_later_one_fails(tmp_path):
    broken = tmp_path / "broken"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(TINY))
    model.save_pretrained(broken)
    transformers.AutoTokenizer.from_pretrained(TINY).save_pretrained(broken)
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50_000])
    r = subprocess.run([sys.executable, "evaluate.py", "--preset", "tiny", "--limit", "10", "--output-dir",
                        str(tmp_path / "eval"), "--model", TINY, str(broken)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    clear_error(r, f"{f}: truncated")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["results"]) == ["tiny"] and summary["results"]["tiny"]["synth"]["n_problems"] == 10
    assert "| tiny |" in (tmp_path / "eval" / "results.md").read_text()

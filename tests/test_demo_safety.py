"""demo.py's run directory and processes: --run-dir is relative to the current directory, a directory the
demo did not make is never used or deleted (--fresh deletes only the demo's own files), and stopping the
demo, even with SIGKILL, stops the training processes it started."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: demo.py and its training processes in subprocesses

ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def test_run_dir_is_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = demo.prepare_run_dir("runs/x", fresh=False)
    assert run == tmp_path / "runs" / "x" and (run / demo.MARKER).is_file()


@pytest.mark.parametrize("fresh", [True, False])
def test_a_directory_the_demo_did_not_make_is_left_alone(tmp_path, fresh):
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / "README.md").write_text("mine")
    (clone / "synth").mkdir()  # even a name the demo uses
    with pytest.raises(SystemExit, match="was not made by demo.py"):
        demo.prepare_run_dir(str(clone), fresh=fresh)
    assert sorted(p.name for p in clone.iterdir()) == [".git", "README.md", "synth"]


def test_fresh_deletes_only_what_the_demo_wrote(tmp_path):
    run = demo.prepare_run_dir(str(tmp_path / "demo"), fresh=False)
    for d in ("synth", "base/final", "ppo/checkpoint-50", "eval", "eval_data/synth"):
        (run / d).mkdir(parents=True)
    for f in ("data.done", "base.done", "ppo.done", "eval.done", "ppo/metrics.jsonl"):
        (run / f).write_text("{}")
    (run / "my_notes.txt").write_text("keep me")
    (run / "my_plots").mkdir()
    demo.prepare_run_dir(str(run), fresh=True)
    assert sorted(p.name for p in run.iterdir()) == [demo.MARKER, "my_notes.txt", "my_plots"]


def test_fresh_with_run_dir_dot_deletes_nothing(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "ppo.py").write_text("# a clone")
    r = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--fresh", "--run-dir", "."], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "was not made by demo.py" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "ppo.py"]


def processes_naming(text: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and p.name != str(os.getpid()):
            try:
                if text in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_stopping_the_demo_leaves_no_training_processes(sig, tmp_path):
    run = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "demo.py", "--quick", "--run-dir", str(run)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (run / "base" / "metrics.jsonl").exists():  # the base step's trainer is training
            assert proc.poll() is None and time.time() < deadline, "the demo did not reach its base step"
            time.sleep(0.2)
        # the trainer (demo.RANKS 1: one process; more: torchrun and its workers)
        assert len(processes_naming(str(run / "base"))) >= (1 if demo.RANKS == 1 else demo.RANKS + 1)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.time() + 45
        while processes_naming(str(run)) and time.time() < deadline:
            time.sleep(0.5)
        left = processes_naming(str(run))
    finally:
        proc.kill()
        for pid in processes_naming(str(run)):  # never leave them behind, whatever the outcome
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not left, f"still running after the demo was stopped: {left}"

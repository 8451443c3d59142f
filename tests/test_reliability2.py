"""Nothing silently wrong, nothing lost, round two (issue 26): data read the way users have it, every flag
checked before anything loads, one run per output directory, workers that die with their launcher, disk
errors said truthfully, grading timeouts counted, Ctrl-C in one line. Process tests use real processes."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))

import evaluate  # noqa: E402
import ppo  # noqa: E402
import prepare_data  # noqa: E402
import runtime  # noqa: E402
import sft  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")


def clear_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code != 0, the message says what is wrong, and no traceback."""
    assert r.returncode != 0, r.stdout[-2000:]
    for n in needles:
        assert n in r.stderr + r.stdout, r.stderr[-3000:] + r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


# ---- data as users have it: one row reader for every stage and data/prepare_data.py ----
ROWS = [{"question": " 1+ 2", "solution": "\\boxed{3}", "response": "\\boxed{3}", "answer": "3", "level": 1},
        {"question": "a\u2028b\u0085c 4+ 4", "solution": "x\u2028\\boxed{8}", "response": "\\boxed{8}",
         "answer": "8", "level": 1}]


def write_rows(path: Path, rows: list[dict], bom: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_bom_and_unicode_line_separators_inside_strings_read_alike_everywhere(tmp_path):
    path = write_rows(tmp_path / "synth" / "test.jsonl", ROWS)
    assert [r["gold"] for r in ppo.read_prompts(str(path), "tiny")] == ["3", "8"]
    assert [r["question"] for r in sft.read_rows(str(path), [("question",), ("response",)])] == \
        [r["question"] for r in ROWS]
    problems, _ = evaluate.load_benchmark(str(tmp_path), "synth", "tiny")
    assert [p["gold"] for p in problems] == ["3", "8"]
    assert prepare_data.check_eval_rows("aime24", path.read_bytes(), str(path)) == 2
    listed = tmp_path / "train.json"
    listed.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"question": "q\u2028", "gt_answer": "1"}]).encode())
    assert prepare_data.train_rows_from_json(listed.read_bytes(), str(listed))[0]["answer"] == "1"


def test_empty_questions_and_responses_are_dropped_and_reported(tmp_path, capsys):
    rows = ROWS + [dict(ROWS[0], question="  "), dict(ROWS[0], response="", solution="")]
    path = write_rows(tmp_path / "d.jsonl", rows)
    assert len(ppo.read_prompts(str(path), "tiny")) == 3  # the empty question; an empty response is no prompt's
    assert f"{path}: 1 of 4 rows dropped for an empty field: line 3 (question)" in capsys.readouterr().out
    assert len(sft.read_rows(str(path), [("question",), ("response", "solution")])) == 2
    assert "2 of 4 rows dropped for an empty field: line 3 (question), line 4 (response)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="every row has an empty field"):
        sft.read_rows(str(write_rows(tmp_path / "e.jsonl", rows[2:3])), [("question",), ("response",)])


@pytest.mark.parametrize("stage", [ppo, sft])
def test_a_directory_as_train_file_is_said_to_be_one(stage, tmp_path):
    write_rows(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(SystemExit, match=f"--train-file '{tmp_path}': a directory, not a data file; pass one "
                                         r"JSONL/JSON file \(it holds train.jsonl\)"):
        stage.validate(stage.parse_args(["--preset", "tiny", "--train-file", str(tmp_path)]))


def test_preset_tiny_finds_the_projects_files_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for stage in (ppo, sft):
        cfg = stage.parse_args(["--preset", "tiny"])
        stage.validate(cfg)
        assert cfg.train_file == str(ROOT / "data" / "synth" / "train.jsonl") and cfg.model == str(ROOT / "data/tiny")
        assert cfg.output_dir == stage.PRESETS["tiny"]["output_dir"]  # outputs stay where the run starts
    cfg = evaluate.parse_args(["--preset", "tiny"])
    evaluate.validate(cfg)
    assert cfg.model == [str(ROOT / "data" / "tiny")] and cfg.data_dir == str(ROOT / "data")


# ---- every flag checked before anything is loaded, the same way in every stage ----
COMMON_BAD = [(["--adam-beta2", "1.0"], "--adam-beta2 1.0: must be in [0, 1)"),
              (["--max-grad-norm", "0"], "--max-grad-norm 0.0: must be > 0"),
              (["--weight-decay", "nan"], "--weight-decay nan: must be a finite number")]
PPO_BAD = COMMON_BAD + [(["--actor-lr", "inf"], "--actor-lr inf: must be a finite number"),
                        (["--min-new-tokens", "60", "--generate-max-len", "48"],
                         "--min-new-tokens 60: must be <= --generate-max-len 48"),
                        (["--template", "chatml"], "--template 'chatml': must be one of")]
SFT_BAD = COMMON_BAD + [(["--lr", "inf"], "--lr inf: must be a finite number"),
                        (["--stop-at-accuracy", "5"], "--stop-at-accuracy 5.0: must be a fraction in [0, 1]"),
                        (["--template", "chatml"], "--template 'chatml': must be one of")]
EVAL_BAD = [(["--temperature", "inf"], "--temperature inf: must be a finite number")]


@pytest.mark.parametrize("stage,args,message", [(ppo, a, m) for a, m in PPO_BAD] + [(sft, a, m) for a, m in SFT_BAD]
                         + [(evaluate, a, m) for a, m in EVAL_BAD])
def test_every_flag_is_checked_before_anything_loads(stage, args, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        stage.validate(stage.parse_args(["--preset", "tiny", *args]))


@pytest.mark.parametrize("stage", [ppo, sft, evaluate])
def test_an_output_path_that_is_a_file_is_refused_up_front(stage, tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(SystemExit, match="--output-dir .*: exists and is not a directory"):
        stage.validate(stage.parse_args(["--preset", "tiny", "--output-dir", str(tmp_path / "out")]))


def tiny_copy(tmp_path: Path, tokenizer: bool = True) -> Path:
    import shutil
    folder = tmp_path / "model"
    shutil.copytree(ROOT / "data" / "tiny", folder)
    if not tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / f).unlink()
    return folder


@pytest.mark.parametrize("stage", [ppo, sft, evaluate])
def test_model_folder_problems_are_one_line_before_loading(stage, tmp_path, monkeypatch):
    folder = tiny_copy(tmp_path)
    (folder / "config.json").write_text('{"model_type": "qwen2", ')
    with pytest.raises(SystemExit, match=f"{folder / 'config.json'}: not valid JSON"):
        stage.validate(stage.parse_args(["--preset", "tiny", "--model", str(folder)]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="Qwen/Qwen2.5-Mth-7B: not in the Hugging Face cache and HF_HUB_OFFLINE"):
        stage.validate(stage.parse_args(["--preset", "tiny", "--model", "Qwen/Qwen2.5-Mth-7B"]))


def test_a_model_folder_without_tokenizer_files_stops_at_start_up(tmp_path):
    folder = tiny_copy(tmp_path / "a", tokenizer=False)
    with pytest.raises(SystemExit, match=f"{folder}: no tokenizer files"):
        runtime.load_tokenizer(str(folder))
    with pytest.raises(SystemExit, match=f"{folder}: no tokenizer files"):
        evaluate.validate(evaluate.parse_args(["--preset", "tiny", "--model", str(folder)]))
    assert len(runtime.load_tokenizer(str(ROOT / "data" / "tiny"))("Q: 1+ 2=")["input_ids"]) > 0


def test_a_prompt_max_len_that_cannot_hold_the_template_and_an_unknown_eos_token_stop(tmp_path):
    tokenizer = runtime.load_tokenizer(str(ROOT / "data" / "tiny"))
    cfg = ppo.parse_args(["--preset", "tiny", "--prompt-max-len", "1"])
    with pytest.raises(SystemExit, match="--prompt-max-len 1: the prompt template alone is 6 tokens"):
        ppo.load_data(cfg, tokenizer)
    cfg = sft.parse_args(["--preset", "tiny", "--eos-token", "<|eot|>"])
    with pytest.raises(SystemExit, match=re.escape("--eos-token '<|eot|>': not a token of ") + ".*tiny's tokenizer"):
        sft.load_data(cfg, tokenizer)


def test_a_benchmark_with_nothing_to_score_is_an_error_naming_it(tmp_path):
    path = write_rows(tmp_path / "synth" / "test.jsonl", [dict(ROWS[0], answer="")], bom=False)
    with pytest.raises(ValueError, match=f"{path}: no problem to score"):
        evaluate.load_benchmark(str(tmp_path), "synth", "tiny")
    path.write_text("")
    with pytest.raises(ValueError, match=f"{path}: no rows"):
        evaluate.load_benchmark(str(tmp_path), "synth", "tiny")


# ---- one run per output directory: a lock held for the run's life ----
HOLD = ("import sys, time; sys.path.insert(0, {root!r}); import runtime; from pathlib import Path; "
        "m = runtime.lock_output_dir(Path({out!r})); runtime.claim_lock(); print(m, flush=True); time.sleep(600)")


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding `out`'s lock, as a running stage would."""
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out))], stdout=subprocess.PIPE,
                         text=True, env=ENV)
    assert p.stdout.readline().strip() == "None"  # it holds the lock
    return p


@pytest.mark.slow  # a second process (imports torch)
def test_a_second_process_cannot_take_a_held_directory_and_a_dead_holders_lock_is_free(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        message = runtime.lock_output_dir(out)
        assert message.startswith(f"--output-dir {out}: another run is using it (pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait(timeout=60)
    assert runtime.lock_output_dir(out) is None  # the dead holder's lock is free
    runtime.claim_lock()
    assert f"pid {os.getpid()} on " in (out / "run.lock").read_text()


@pytest.mark.slow  # stage scripts in subprocesses
@pytest.mark.parametrize("script", ["ppo.py", "sft.py", "evaluate.py"])
def test_a_second_run_in_the_same_output_dir_stops_with_a_clear_error(script, tmp_path):
    out = tmp_path / "run"  # empty, as when two runs start together
    holder = hold_lock(out)
    try:
        r = subprocess.run([sys.executable, script, "--preset", "tiny", "--output-dir", str(out)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    clear_error(r, f"--output-dir {out}: another run is using it (pid {holder.pid} on ")
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written


# ---- workers end with their launcher ----
def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow  # torchrun, a PPO run
def test_workers_stop_within_seconds_when_the_torchrun_launcher_is_killed(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--test-file", "", "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
            "--train-batch-size", "8", "--micro-train-batch-size", "4", "--generate-max-len", "12", "--max-steps",
            "10000", "--save-every", "1", "--keep-checkpoints", "2", "--output-dir", str(out)]
    log = open(tmp_path / "log", "w")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "ppo.py", *args],
                                cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    workers = []
    try:
        for _ in range(600):  # bounded wait for the first RL step's record
            if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 1:
                break
            assert launcher.poll() is None, (tmp_path / "log").read_text()[-3000:]
            time.sleep(0.5)
        workers = children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        for _ in range(60):  # the workers notice within a second or two; 30 s bounds the wait
            if not any(alive(w) for w in workers):
                break
            time.sleep(0.5)
        assert not any(alive(w) for w in workers), "workers still running after their launcher was killed"
        before = snapshot(out)
        time.sleep(3)
        assert snapshot(out) == before  # nothing more written
    finally:
        for pid in [launcher.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- disk errors said truthfully, from every writer, with each stage's advice ----
def test_a_full_disk_under_a_sharded_checkpoint_is_no_space_left(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp
    shards = tmp_path / "optim"
    shards.mkdir()
    (shards / "__0_0.distcp").symlink_to("/dev/full")  # the shard's writes fail with ENOSPC, as on a full disk
    with pytest.raises(SystemExit, match=f"no space left on {tmp_path} .*then rerun with --resume"):
        with runtime.stage_errors(str(tmp_path)):
            with pytest.warns(UserWarning):  # DCP outside a process group: "assuming ... a single process"
                dcp.save({"w": torch.zeros(1000)}, checkpoint_id=str(shards))


def test_a_full_disk_under_a_checkpoint_written_behind_is_no_space_left_at_the_next_wait(tmp_path):
    """--async-save: the writer thread's ENOSPC is not lost; the next wait raises it on the main thread."""
    def write():
        with open("/dev/full", "w") as f:  # writes fail with ENOSPC, like a full disk
            f.write("x" * 10_000)
            f.flush()
    runtime.write_behind(write, background=True)
    with pytest.raises(SystemExit, match=f"no space left on {tmp_path} .*then rerun with --resume"):
        with runtime.stage_errors(str(tmp_path)):
            runtime.finish_saving()
    runtime.finish_saving()  # said once: nothing is left in flight


KILLED_MID_WRITE = """
import sys, time
from pathlib import Path
import safetensors.torch
import torch
from transformers import AutoTokenizer
import ppo, runtime
out, tiny = Path(sys.argv[1]), sys.argv[2]
rank, world, device = runtime.init_distributed()
actor = runtime.shard_model(runtime.load_model(tiny, seed=0), device)
opt = torch.optim.AdamW(actor.parameters(), lr=1e-3)
learners = [ppo.Learner("actor", actor, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1.0)]
tok = AutoTokenizer.from_pretrained(tiny)
runtime.save_checkpoint(out, 1, learners, tok, {"position": 1}, keep=1, background=True)
runtime.finish_saving()
real = safetensors.torch.save_file
def stall(*args, **kwargs):  # the second save's writer: its first file written, then stuck there
    real(*args, **kwargs)
    (out / "sentinel").touch()
    time.sleep(600)
safetensors.torch.save_file = stall
runtime.save_checkpoint(out, 2, learners, tok, {"position": 2}, keep=1, background=True)
runtime.finish_saving()
"""


@pytest.mark.slow  # a training process, killed
def test_a_run_killed_mid_way_through_an_async_save_leaves_the_previous_checkpoint_intact(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(out), str(ROOT / "data" / "tiny")], cwd=ROOT,
                         env=dict(ENV, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        for _ in range(600):  # bounded wait for the second save's first file
            if (out / "sentinel").exists() or p.poll() is not None:
                break
            time.sleep(0.5)
        assert (out / "sentinel").exists(), p.communicate(timeout=60)[0][-3000:]
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert (out / "checkpoint-2.tmp" / "actor.tmp" / "model.safetensors").is_file()  # killed mid-write
    assert not (out / "checkpoint-2").exists()
    assert runtime.checkpoint_problems(out / "checkpoint-1") == []
    assert runtime.latest_checkpoint(out) == out / "checkpoint-1"  # keep=1 prunes only after the next is complete
    assert {x.name for x in (out / "checkpoint-1").iterdir()} == {"actor", "optim", "trainer_state.pt"}


def test_no_permission_and_read_only_are_not_called_a_full_disk(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=f"cannot write under {tmp_path}: permission denied .*Make it writable"):
        with runtime.stage_errors(str(tmp_path)):
            open("/sys/simplerl-test", "w")  # EACCES, for root too
    monkeypatch.setattr(runtime.os, "statvfs", lambda p: type("st", (), dict(  # a read-only mount: 0 bytes free
        f_flag=os.ST_RDONLY, f_bavail=0, f_frsize=4096))())
    import errno
    with pytest.raises(SystemExit) as e:
        with runtime.stage_errors(str(tmp_path), resume=False):  # evaluate.py: no --resume to advise
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "summary.json.tmp"))
    assert "a read-only file system" in str(e.value) and "--resume" not in str(e.value)
    assert "run it again (summary.json keeps the models already finished)" in str(e.value)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not a full disk on a read-only file system
        with runtime.stage_errors(str(tmp_path)):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")


# ---- Ctrl-C in one line; the failing rank's reason as torchrun's last lines ----
@pytest.mark.slow  # a stage script in a subprocess
def test_ctrl_c_says_what_was_saved_and_how_to_resume_in_one_line(tmp_path):
    import signal
    import time
    out = tmp_path / "sft"
    args = [sys.executable, "sft.py", "--preset", "tiny", "--max-steps", "100000", "--save-every", "3",
            "--test-file", "", "--output-dir", str(out)]
    # SIGINT at its default in the child, as in a terminal: a shell's background job (CI under `cmd &`) ignores
    # it, and Python installs its KeyboardInterrupt handler only where SIGINT is not ignored
    p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(600):  # bounded wait for the first checkpoint
        if (out / "checkpoint-3" / "trainer_state.pt").exists() or p.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: the last complete checkpoint is " + str(out / "checkpoint-")), last
    assert last.endswith("; to go on: python " + shlex.join(args[1:]) + " --resume"), last


@pytest.mark.slow  # torchrun
def test_torchruns_last_lines_give_the_failing_ranks_reason(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=3", "ppo.py", "--preset", "tiny",
                        "--output-dir", str(tmp_path / "o")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    tail = "\n".join(r.stderr.strip().splitlines()[-4:])
    assert "traceback : --rollout-batch-size 32 x --n-samples-per-prompt 8 must split into 3 ranks" in tail, tail


# ---- grading timeouts: retried once with a longer limit, counted, never silently wrong ----
def slow_first_try(monkeypatch, seconds: float) -> list:
    """The in-process grader made slow (a loaded machine) for its first call only; then it says equal."""
    import time
    import grading
    calls = []

    def slow(*args):
        calls.append(args)
        if len(calls) == 1:
            time.sleep(seconds)  # far past the limit: the timer interrupts it
        return True
    monkeypatch.setattr(grading, "_grader_equal", slow)
    return calls


def test_a_comparison_that_times_out_is_retried_and_a_right_answer_stays_right(monkeypatch):
    import reward
    calls = slow_first_try(monkeypatch, 30)
    assert reward.batch_compute_scores(["\\boxed{x^2+2x+1}"], ["(x+1)^2"], timeout=0.2, num_workers=0) == [1.0]
    assert len(calls) == 2 and reward.last_batch_report["timed_out"] == 0


def test_a_comparison_that_times_out_twice_is_counted_and_said(monkeypatch, capfd):
    import reward
    import time
    import grading
    monkeypatch.setattr(grading, "_grader_equal", lambda *a: time.sleep(1) or True)
    assert reward.batch_compute_scores(["\\boxed{x^2+2x+1}"], ["(x+1)^2"], timeout=0.05, num_workers=0) == [-0.5]
    assert reward.last_batch_report["timed_out"] == 1
    assert "1 of 1 comparisons timed out twice (0.05 s, then 0.2 s), counted as not equal" in capfd.readouterr().err


def test_grading_timeouts_are_in_each_benchmarks_summary_and_each_ppo_step(monkeypatch):
    import time
    import grading
    monkeypatch.setattr(grading, "_grader_equal", lambda *a: time.sleep(1) or True)
    problems = [dict(idx=0, question="q", gold="(x+1)^2", prompt="q", budget=10)]
    cfg = evaluate.parse_args(["--preset", "tiny", "--reward-timeout", "0.05"])
    monkeypatch.setattr(evaluate.reward, "batch_math_equal", lambda *a, **k: grading._grade_pairs(
        [(p, g, None) for p, g in zip(a[0], a[1])], "simplerl", 0.05, 0, None))
    _, summary = evaluate.score_benchmark(problems, [[("\\boxed{x^2+2x+1}", 5)]], cfg, 1.0, [])
    assert summary["grading_timeouts"] == 1 and summary["acc"] == 0.0
    import inspect
    assert '"grading_timeouts": s["timeouts"]' in inspect.getsource(ppo.rollout_stats)  # summed over ranks


# ---- the demo's quick and full studies kept apart; the CPU evaluation scores the demo's levels ----
def test_a_full_demo_never_reuses_a_quick_demos_steps(tmp_path):
    import demo
    run = demo.prepare_run_dir(str(tmp_path / "d"), fresh=False, quick=True)
    (run / "ppo.done").write_text("{}")  # the quick study's 30-step PPO
    with pytest.raises(SystemExit, match="holds a quick study; this full one would reuse its steps"):
        demo.prepare_run_dir(str(run), fresh=False, quick=False)
    assert (run / "ppo.done").exists()
    demo.prepare_run_dir(str(run), fresh=True, quick=False)  # --fresh: start the full study there
    assert not (run / "ppo.done").exists() and "mode: full" in (run / demo.MARKER).read_text()
    assert demo.main.__code__.co_consts and "runs/demo-quick" in demo.main.__code__.co_consts  # default dirs differ


def test_evaluate_tiny_scores_the_levels_the_demo_and_the_presets_study(tmp_path):
    cfg = evaluate.parse_args(["--preset", "tiny"])
    assert cfg.levels == ppo.PRESETS["tiny"]["levels"] == sft.PRESETS["tiny"]["levels"] == "1,2"
    path = write_rows(tmp_path / "synth" / "test.jsonl", [dict(ROWS[0], level=lv) for lv in (1, 3, 2, 5)])
    problems, _ = evaluate.load_benchmark(str(tmp_path), "synth", "tiny", levels="1,2")
    assert [p["idx"] for p in problems] == [0, 2]  # idx: the row's index in the file
    assert len(evaluate.load_benchmark(str(tmp_path), "synth", "tiny")[0]) == 4


def test_a_process_may_take_its_own_lock_again(tmp_path):
    assert runtime.lock_output_dir(tmp_path / "r") is None
    assert runtime.lock_output_dir(tmp_path / "r") is None  # e.g. a test calling a stage's main twice


def test_evaluate_vllm_on_a_random_init_is_one_line():
    """evaluate.py --engine vllm on data/tiny (no weights, INIT_FROM_CONFIG): a one-line error before any engine
    is built, not vLLM's traceback."""
    import evaluate
    cfg = evaluate.parse_args(["--preset", "tiny", "--engine", "vllm"])
    with pytest.raises(SystemExit, match="--engine vllm: .*holds no weights.*--engine hf"):
        evaluate.validate(cfg)

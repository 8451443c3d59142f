"""Nothing silently wrong, nothing lost, round two (issue 26): data read the way users have it, every flag
checked before anything loads, one run per output directory, workers that die with their launcher, disk
errors said truthfully, grading timeouts counted, Ctrl-C in one line. Process tests use real processes."""
import json
import os
import re
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
        "print(runtime.lock_output_dir(Path({out!r})), flush=True); time.sleep(600)")


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

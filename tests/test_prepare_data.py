"""data/prepare_data.py on local files only: conversion, checksums, and the download path via a 127.0.0.1 server."""

import functools
import http.server
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(ROOT / "data"))

import prepare_data as pd  # noqa: E402

TRAIN_JSON = SHARED / "train" / "simplerl_zero_v0" / "math_level3to5_data_processed_with_qwen_prompt.json"
TRAIN_PARQUET = SHARED / "train" / "third_party_pr57" / "simplelr_qwen_level3to5_train.parquet"


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_from_local_converts_eval_and_train(tmp_path):
    pd.main(["--from-local", str(SHARED), "--out", str(tmp_path)])
    for name, sha in pd.EVAL_SETS.items():
        data = (tmp_path / "eval" / name / "test.jsonl").read_bytes()
        assert pd.git_blob_sha1(data) == sha  # byte-identical to the paper's file
    train = read_jsonl(tmp_path / pd.TRAIN_OUT)
    assert len(train) == 8523 and {r["level"] for r in train} == {3, 4, 5}
    assert train[0] == {"question": train[0]["question"], "answer": "118", "level": 5, "subject": "Intermediate Algebra"}
    assert sum(not r["answer"] for r in train) == 2  # as in v0's data


def test_parquet_gives_the_same_training_rows(tmp_path):
    pd.main(["--from-local", str(SHARED), "--only", "train", "--train-file", str(TRAIN_PARQUET), "--out", str(tmp_path / "p")])
    pd.main(["--from-local", str(SHARED), "--only", "train", "--out", str(tmp_path / "j")])
    assert read_jsonl(tmp_path / "p" / pd.TRAIN_OUT) == read_jsonl(tmp_path / "j" / pd.TRAIN_OUT)


def test_olympiadbench_json_array_is_converted(tmp_path):
    src = tmp_path / "src" / "olympiadbench"
    src.mkdir(parents=True)
    shutil.copy(SHARED / "eval" / "olympiadbench" / "test.json", src / "test.json")
    counts = pd.local_eval(tmp_path / "src", tmp_path / "out", names=["olympiadbench"])
    assert counts == {"olympiadbench": 675}
    ours = read_jsonl(tmp_path / "out" / "eval" / "olympiadbench" / "test.jsonl")
    assert ours == read_jsonl(SHARED / "eval" / "olympiadbench" / "test.jsonl")


def test_bad_files_are_clear_errors(tmp_path):
    src = tmp_path / "src" / "eval" / "amc23"
    src.mkdir(parents=True)
    (src / "test.jsonl").write_text('{"question": "q", "answer": 1.0}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match="SHA-1"):
        pd.local_eval(tmp_path / "src", tmp_path / "out", names=["amc23"])
    with pytest.raises(ValueError, match=r"amc23/test.jsonl line 2: missing field 'answer'"):
        pd.local_eval(tmp_path / "src", tmp_path / "out", names=["amc23"], check=False)
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        pd.local_eval(tmp_path / "src", tmp_path / "out", names=["gsm8k"])


@pytest.fixture
def mirror(tmp_path):
    """A 127.0.0.1 HTTP server laid out like raw.githubusercontent.com/<repo>/<commit>/."""
    root = tmp_path / "mirror"
    for name in pd.EVAL_SETS:
        (root / "eval" / "data" / name).mkdir(parents=True)
        shutil.copy(SHARED / "eval" / name / "test.jsonl", root / "eval" / "data" / name / "test.jsonl")
    (root / Path(pd.TRAIN_PATH).parent).mkdir(parents=True)
    shutil.copy(TRAIN_JSON, root / pd.TRAIN_PATH)
    shutil.copy(TRAIN_PARQUET, root / "train.parquet")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def test_download_from_local_http_server(tmp_path, mirror):
    url, root = mirror
    counts = pd.download_eval(tmp_path / "out", base_url=url)
    assert counts["college_math"] == 2818 and counts["gaokao2023en"] == 385
    assert pd.download_train(tmp_path / "out", "github", base_url=url) == 8523
    assert pd.download_train(tmp_path / "hf", "hf", hf_url=f"{url}/train.parquet") == 8523
    assert read_jsonl(tmp_path / "hf" / pd.TRAIN_OUT) == read_jsonl(tmp_path / "out" / pd.TRAIN_OUT)
    (root / "eval" / "data" / "aime24" / "test.jsonl").write_text('{"question": "q", "answer": "1"}\n')  # tampered
    with pytest.raises(ValueError, match="SHA-1"):
        pd.download_eval(tmp_path / "bad", base_url=url, names=["aime24"])
    assert pd.download_eval(tmp_path / "file", base_url=(root).as_uri(), names=["amc23"]) == {"amc23": 40}  # file://

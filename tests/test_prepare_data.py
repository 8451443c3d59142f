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


# ---- long-CoT warm-up data (issue 21) ----
TOKENIZER = SHARED / "qwen2.5_tokenizer"
Q, R = "What is $1+1$?", "Let me think. 1+1=2. Wait, let me check: yes.\n\nThe answer is $\\boxed{2}$."
SCHEMA_ROWS = {  # one row per schema, as the public sets write them
    "messages": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": Q},
                              {"role": "assistant", "content": R}], "problem": Q, "solution": "ref", "answer": "2"},
    "conversations": {"system": "s", "conversations": [{"from": "user", "value": Q}, {"from": "assistant", "value": R}]},
    "question/response": {"question": Q, "response": R, "gt_answer": "2"},
    "query/response": {"query": Q, "response": R},
    "instruction/output": {"instruction": Q, "input": "", "output": R},
    "problem/solution": {"problem": Q, "solution": R, "answer": 2},
}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("schema", sorted(SCHEMA_ROWS))
def test_each_long_cot_schema_converts_to_sft_rows(schema, tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", [SCHEMA_ROWS[schema]] * 3)
    meta = pd.convert_long_cot(src.read_bytes(), str(src), tmp_path / "out.jsonl", tokenizer=None)
    assert meta["schema"] == schema and meta["rows"] == 3
    assert f"schema {schema}" in capsys.readouterr().out
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert rows[0]["question"] == Q and rows[0]["response"] == R
    assert rows[0].get("answer") == ("2" if schema in ("messages", "question/response", "problem/solution") else None)
    assert json.loads((tmp_path / "out.jsonl.meta.json").read_text())["sha256"] == pd.hashlib.sha256(src.read_bytes()).hexdigest()


def test_instruction_input_is_appended_and_a_json_list_works(tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": "Solve.", "input": Q, "output": R}]))
    schema, rows = pd.read_long_cot(src.read_bytes(), str(src))
    assert schema == "instruction/output" and rows == [{"question": "Solve.\n\n" + Q, "response": R}]


@pytest.mark.parametrize("bad, message", [
    ({"question": Q}, r"in.jsonl line 2: field 'response' missing"),
    ({"question": Q, "response": ""}, r"in.jsonl line 2: field 'response' must be a non-empty string"),
    ({"question": Q, "response": 3}, r"in.jsonl line 2: field 'response' must be a non-empty string"),
])
def test_a_malformed_long_cot_row_names_file_line_and_field(bad, message, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [SCHEMA_ROWS["question/response"], bad])
    with pytest.raises(ValueError, match=message):
        pd.read_long_cot(src.read_bytes(), str(src))


def test_malformed_chat_rows_and_unknown_schemas_are_clear_errors(tmp_path):
    no_reply = {"messages": [{"role": "user", "content": Q}]}
    src = write_rows(tmp_path / "in.jsonl", [SCHEMA_ROWS["messages"], no_reply])
    with pytest.raises(ValueError, match=r"line 2: field 'messages' needs a user turn followed by an assistant turn"):
        pd.read_long_cot(src.read_bytes(), str(src))
    src = write_rows(tmp_path / "in.jsonl", [{"conversations": "text"}])
    with pytest.raises(ValueError, match=r"line 1: field 'conversations' must be a list of turns"):
        pd.read_long_cot(src.read_bytes(), str(src))
    src = write_rows(tmp_path / "in.jsonl", [{"text": Q, "id": 1}])
    with pytest.raises(ValueError, match=r"line 1: no known long-CoT schema \(fields \['id', 'text'\]\)"):
        pd.read_long_cot(src.read_bytes(), str(src))
    src = write_rows(tmp_path / "in.jsonl", [{"conversations": [{"from": "user", "value": Q}, {"from": "gpt"}]}])
    with pytest.raises(ValueError, match=r"line 1: field 'conversations' turn 1: content must be a non-empty string"):
        pd.read_long_cot(src.read_bytes(), str(src))


def test_token_lengths_are_sft_pys_and_over_long_rows_are_counted(tmp_path):
    """The report's "longer than --max-length" is exactly what sft.py drops (same encoding, same tokenizer)."""
    import sft
    rows = [{"question": Q, "response": R * k} for k in (1, 5, 20, 40)]
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    meta = pd.convert_long_cot(src.read_bytes(), str(src), out, tokenizer=str(TOKENIZER), max_length=400)
    tok = sft.runtime.load_tokenizer(str(TOKENIZER))
    cfg = sft.Config(train_file=str(out), max_length=400)
    examples, counts = sft.encode_all(sft.read_rows(str(out), [sft.QUESTION_FIELDS, ("response", "solution")]), tok,
                                      cfg, tok.convert_tokens_to_ids(cfg.eos_token))
    assert meta["over_max_length"] == counts["dropped"] == 2 and len(examples) == 2
    lengths = pd.token_lengths(read_jsonl(out), str(TOKENIZER), "simplerl")
    assert lengths == sorted(lengths) and meta["tokens"]["max"] == lengths[-1] and meta["tokens"]["p50"] == lengths[2]


def test_simplerl_sft_download_checks_its_sha256(tmp_path, mirror, capsys, monkeypatch):
    url, root = mirror
    rows = [SCHEMA_ROWS["messages"], SCHEMA_ROWS["messages"]]
    write_rows(root / "train.json", rows)
    good = pd.hashlib.sha256((root / "train.json").read_bytes()).hexdigest()
    meta = pd.download_simplerl_sft(tmp_path / "ok", f"{url}/train.json", sha256=good)
    assert meta["schema"] == "messages" and len(read_jsonl(tmp_path / "ok" / pd.SFT_OUT)) == 2
    with pytest.raises(ValueError, match="SHA-256 .* != pinned 0000"):  # a mismatch stops, nothing written
        pd.download_simplerl_sft(tmp_path / "bad", f"{url}/train.json", sha256="0" * 64)
    assert not (tmp_path / "bad").exists()
    pd.main(["--only", "sft", "--out", str(tmp_path / "cli"), "--sft-url", f"{url}/train.json", "--tokenizer", "none"])
    assert f"UNPINNED download {url}/train.json: SHA-256 {good}" in capsys.readouterr().err  # no pin yet: said loudly
    assert json.loads((tmp_path / "cli" / (pd.SFT_OUT + ".meta.json")).read_text())["sha256"] == good
    monkeypatch.setitem(pd.SIMPLERL_SFT, "sha256", "f" * 64)  # a pin in the constant: other bytes stop the run
    with pytest.raises(ValueError, match="SHA-256 .* != pinned ffff"):
        pd.main(["--only", "sft", "--out", str(tmp_path / "x"), "--sft-url", f"{url}/train.json", "--tokenizer", "none"])
    assert pd.simplerl_sft_url().startswith("https://huggingface.co/datasets/AndrewZeng/SimpleRL-SFT/resolve/")


def test_long_cot_cli_converts_a_local_file(tmp_path):
    src = write_rows(tmp_path / "sky.jsonl", [SCHEMA_ROWS["conversations"]])
    pd.main(["--long-cot", str(src), "--long-cot-out", str(tmp_path / "lc.jsonl"), "--tokenizer", str(TOKENIZER)])
    meta = json.loads((tmp_path / "lc.jsonl.meta.json").read_text())
    assert meta["schema"] == "conversations" and meta["over_max_length"] == 0 and meta["max_length"] == 4096

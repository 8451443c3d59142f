"""data/prepare_data.py: fetch the paper's eval sets and training set into the layout the stages read.

    <out>/eval/<benchmark>/test.jsonl        evaluate.py --data-dir <out>/eval
    <out>/train/math_level3to5.jsonl         ppo.py's training prompts: {"question", "answer", "level", "subject"}
    <out>/sft/simplerl_sft.jsonl             sft.py's rows {"question", "response"}: the long-CoT warm-up

Sources (public; pinned so the bytes are the paper's):
  * the eight eval sets: simpleRL-reason v0 `eval/data/<name>/test.jsonl` at commit 2702a87c (raw.githubusercontent.com),
  * the 8,523 MATH level 3-5 training problems: v0 `train/data/math_level3to5_data_processed_with_qwen_prompt.json`
    (same commit), or with `--train-source hf` the Hugging Face dataset hkust-nlp/SimpleRL-Zoo-Data
    `simplelr_qwen_level3to5/train.parquet` (same problems, SimpleRL-Zoo's prompt; needs pyarrow).
  * the long-CoT warm-up: the authors' Hugging Face dataset AndrewZeng/SimpleRL-SFT (apache-2.0; named by the
    maintainers in simpleRL-reason issue #79), checked against a pinned SHA-256 (SIMPLERL_SFT, below).
Every GitHub file is checked against its git blob SHA-1 (`git hash-object`), so a truncated or altered
download is an error, not a silently different benchmark.

    python data/prepare_data.py --out data                          # download eval + train
    python data/prepare_data.py --from-local ../shared/data --out data   # convert a local copy
    python data/prepare_data.py --only sft --out data               # the authors' warm-up data, sft.py's rows
    python data/prepare_data.py --long-cot sky_t1.json --long-cot-out long_cot.jsonl   # any long-CoT file/URL

Long-CoT files come in several schemas; --long-cot detects one per file (LONG_COT_SCHEMAS: chat `messages`,
`conversations`, question/response, query/response, instruction/output, problem/solution), says which, writes
sft.py's rows and reports counts, token-length percentiles (--tokenizer) and how many exceed --max-length.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import runtime  # noqa: E402  the stages' row reader: a BOM accepted, lines split at "\n" only

COMMIT = "2702a87c68c107d0f329b701b034c229bf62a130"  # hkust-nlp/simpleRL-reason branch v0
GITHUB_RAW = "https://raw.githubusercontent.com/hkust-nlp/simpleRL-reason/" + COMMIT
HF_TRAIN_URL = "https://huggingface.co/datasets/hkust-nlp/SimpleRL-Zoo-Data/resolve/main/simplelr_qwen_level3to5/train.parquet"

# benchmark -> git blob SHA-1 of eval/data/<name>/test.jsonl at COMMIT
EVAL_SETS = {
    "gsm8k": "3e6e62b831b5fcbf0585d0dce75ccc5e4ccb691c",
    "math500": "2376b9a194b46c0790e197c91b7249e5f88ac09b",
    "minerva_math": "123c5cd351cac2b8ead5413bc084629d7ff651de",
    "gaokao2023en": "79b4d05f743d478dcc46f3968fde417f3b6224f1",
    "olympiadbench": "ec36280b1de8f5bbee92da696c2ae84f5f6e6beb",
    "college_math": "1f884189628100309616fdcf9cad9422dc480878",
    "aime24": "bb72e176e8d30c09cd67037e17cfc41e6ff48f70",
    "amc23": "6894ad7c49a0b3a64210af32954f4d049d934ea0",
}
# Fields evaluate.py reads per benchmark (question key aside).
GOLD_FIELDS = {"gsm8k": "answer", "math500": "solution", "minerva_math": "solution", "gaokao2023en": "answer",
               "olympiadbench": "final_answer", "college_math": "answer", "aime24": "answer", "amc23": "answer"}
QUESTION_KEYS = ("question", "problem", "Question", "input")

TRAIN_PATH = "train/data/math_level3to5_data_processed_with_qwen_prompt.json"
TRAIN_SHA1 = "a51b46c19354c8ac1c409115f95ee3578c67cedd"
TRAIN_ROWS = 8523
TRAIN_OUT = "train/math_level3to5.jsonl"

# The authors' long-CoT SFT data. UNCONFIRMED PIN: this was written without network access, so the revision,
# the file name and the SHA-256 below are not yet read from the hub. Until `sha256` is filled in, a download
# prints the SHA-256 it got (also in <out>.meta.json) with a loud UNPINNED warning; once it is filled in (or
# --sft-sha256 is given), any other bytes stop the run. The first online run should pin it here.
SIMPLERL_SFT = {
    "repo": "AndrewZeng/SimpleRL-SFT",
    "revision": "main",      # UNCONFIRMED: replace with the commit the first online run downloads
    "file": "train.json",    # UNCONFIRMED: the card says "Formats: json", ~7.6k rows; --sft-url overrides
    "sha256": None,          # UNCONFIRMED: the SHA-256 of that file at that revision
}
SFT_OUT = "sft/simplerl_sft.jsonl"


def git_blob_sha1(data: bytes) -> str:
    """What `git hash-object` prints: SHA-1 of b"blob <size>\\0" + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fetch(url: str, timeout: float = 60.0) -> bytes:
    """GET a URL (https, or http/file for mirrors and tests)."""
    req = urllib.request.Request(url, headers={"User-Agent": "simplerl-prepare-data"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def verify(data: bytes, expected: str | None, what: str) -> None:
    if expected is not None and git_blob_sha1(data) != expected:
        raise ValueError(f"{what}: git blob SHA-1 {git_blob_sha1(data)} != expected {expected} "
                         f"(corrupt or different file; --no-verify accepts it)")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- eval sets ----


def check_eval_rows(name: str, data: bytes, source: str) -> int:
    """Every line is a JSON object with a question and the gold field evaluate.py reads; returns the row count."""
    rows = 0
    for where, row in runtime.parse_json_rows(data, source):
        if not any(k in row for k in QUESTION_KEYS):
            raise ValueError(f"{source} {where}: no question field (one of {', '.join(QUESTION_KEYS)})")
        if GOLD_FIELDS[name] not in row:
            raise ValueError(f"{source} {where}: missing field {GOLD_FIELDS[name]!r}")
        rows += 1
    return rows


def json_array_to_jsonl(data: bytes) -> bytes:
    """olympiadbench also ships as a JSON array (test.json): the same records, one per line."""
    records = json.loads(data)
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def save_eval(name: str, data: bytes, out: Path, source: str, expected_sha: str | None) -> int:
    verify(data, expected_sha, source)
    n = check_eval_rows(name, data, source)
    write_atomic(out / "eval" / name / "test.jsonl", data)
    return n


def download_eval(out: Path, base_url: str = GITHUB_RAW, names=tuple(EVAL_SETS), check: bool = True) -> dict[str, int]:
    counts = {}
    for name in names:
        url = f"{base_url}/eval/data/{name}/test.jsonl"
        counts[name] = save_eval(name, fetch(url), out, url, EVAL_SETS[name] if check else None)
        print(f"eval/{name}: {counts[name]} rows from {url}")
    return counts


def local_eval(src: Path, out: Path, names=tuple(EVAL_SETS), check: bool = True) -> dict[str, int]:
    """From <src>/eval/<name>/test.jsonl or <src>/<name>/test.jsonl (or test.json, a JSON array)."""
    counts = {}
    for name in names:
        candidates = [src / "eval" / name / "test.jsonl", src / name / "test.jsonl",
                      src / "eval" / name / "test.json", src / name / "test.json"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{name}: none of {', '.join(map(str, candidates))} exists")
        data = path.read_bytes()
        expected = EVAL_SETS[name] if check else None
        if path.suffix == ".json":
            data, expected = json_array_to_jsonl(data), None  # converted: no longer the pinned bytes
        counts[name] = save_eval(name, data, out, str(path), expected)
        print(f"eval/{name}: {counts[name]} rows from {path}")
    return counts


# ---- training set ----


def train_rows_from_json(data: bytes, source: str) -> list[dict]:
    """v0's JSON list: {"input", "answer", "gt_answer", "subject", "level", "question", ...}."""
    if not data.decode("utf-8", "replace").lstrip("\ufeff \t\r\n").startswith("["):
        raise ValueError(f"{source}: expected a JSON list of problems")
    return [_train_row(r, source, i) for i, (_, r) in enumerate(runtime.parse_json_rows(data, source))]


def train_rows_from_parquet(data: bytes, source: str) -> list[dict]:
    """SimpleRL-Zoo's parquet: question/gt_answer columns, or verl's prompt + reward_model.ground_truth."""
    import pyarrow.parquet as pq

    records = pq.read_table(io.BytesIO(data)).to_pylist()
    return [_train_row(r, source, i) for i, r in enumerate(records)]


def _train_row(r: dict, source: str, i: int) -> dict:
    question = r.get("question")
    if question is None and r.get("prompt"):  # verl format: a chat list; the user turn is the question
        question = next((m["content"] for m in r["prompt"] if m.get("role") == "user"), None)
    answer = r.get("gt_answer", r.get("ground_truth_answer"))
    if answer is None and isinstance(r.get("reward_model"), dict):
        answer = r["reward_model"].get("ground_truth")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}: record {i}: no question")
    if answer is None:  # an empty string is kept: v0's file has two (records 5054, 5158) and trained on them
        raise ValueError(f"{source}: record {i}: no gold answer field (gt_answer / reward_model.ground_truth)")
    row = {"question": question.strip(), "answer": str(answer).strip()}
    for key in ("level", "subject"):
        if r.get(key) is not None:
            row[key] = int(r[key]) if key == "level" and str(r[key]).isdigit() else r[key]
    return row


def save_train(rows: list[dict], out: Path, source: str, expect_rows: int | None = TRAIN_ROWS) -> int:
    if expect_rows is not None and len(rows) != expect_rows:
        raise ValueError(f"{source}: {len(rows)} problems, expected {expect_rows}")
    write_atomic(out / TRAIN_OUT, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    empty = [i for i, r in enumerate(rows) if not r["answer"]]
    print(f"{TRAIN_OUT}: {len(rows)} problems from {source}"
          + (f" ({len(empty)} with an empty gold, kept as in the paper's data: records {empty})" if empty else ""))
    return len(rows)


def download_train(out: Path, source: str = "github", base_url: str = GITHUB_RAW, hf_url: str = HF_TRAIN_URL,
                   check: bool = True) -> int:
    if source == "github":
        url = f"{base_url}/{TRAIN_PATH}"
        data = fetch(url)
        verify(data, TRAIN_SHA1 if check else None, url)
        return save_train(train_rows_from_json(data, url), out, url, TRAIN_ROWS if check else None)
    if source == "hf":
        return save_train(train_rows_from_parquet(fetch(hf_url), hf_url), out, hf_url, TRAIN_ROWS if check else None)
    raise ValueError(f"unknown train source {source!r}; choose github or hf")


def local_train(path: Path, out: Path, check: bool = True) -> int:
    """A local copy of the v0 JSON or of a parquet file; a directory is searched for the v0 JSON, then parquet."""
    if path.is_dir():
        found = sorted(path.rglob(Path(TRAIN_PATH).name)) or sorted(path.rglob("*level3to5*train*.parquet"))
        if not found:
            raise FileNotFoundError(f"no {Path(TRAIN_PATH).name} or *level3to5*train*.parquet under {path}")
        path = found[0]
    data = path.read_bytes()
    if path.suffix == ".parquet":
        rows = train_rows_from_parquet(data, str(path))
    else:
        verify(data, TRAIN_SHA1 if check and path.name == Path(TRAIN_PATH).name else None, str(path))
        rows = train_rows_from_json(data, str(path))
    return save_train(rows, out, str(path), TRAIN_ROWS if check else None)


# ---- long-CoT warm-up data: the authors' set and the common schemas, converted to sft.py's rows ----

# schema -> (question field, response field); chat schemas read the first user turn, the last assistant turn.
# Tried in this order on a file's first row: OpenR1-Math-220k has `messages` (DeepSeek-R1's traces) and also
# `problem`/`solution` (MATH-style reference solutions), so chat comes first.
LONG_COT_SCHEMAS = {
    "messages": ("messages", "messages"),                # OpenAI/HF chat: [{"role", "content"}, ...]
    "conversations": ("conversations", "conversations"),  # ShareGPT (Sky-T1_data_17k): [{"from", "value"}]
    "question/response": ("question", "response"),
    "query/response": ("query", "response"),
    "instruction/output": ("instruction", "output"),      # Alpaca; a non-empty `input` is appended
    "problem/solution": ("problem", "solution"),          # MATH; also the "SFT on reference solutions" rows
}
USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")


def detect_schema(row: dict, source: str, where: str) -> str:
    for name, (q, r) in LONG_COT_SCHEMAS.items():
        if q in row and r in row:
            return name
    raise ValueError(f"{source} {where}: no known long-CoT schema (fields {sorted(row)}); expected one of "
                     + ", ".join(LONG_COT_SCHEMAS))


def _text(row: dict, key: str, source: str, where: str) -> str:
    if key not in row:
        raise ValueError(f"{source} {where}: field {key!r} missing")
    if not isinstance(row[key], str) or not row[key].strip():
        raise ValueError(f"{source} {where}: field {key!r} must be a non-empty string")
    return row[key]


def _turns(row: dict, key: str, source: str, where: str) -> tuple[str, str]:
    """(first user turn, last assistant turn) of a chat: `role`/`content` or ShareGPT's `from`/`value`."""
    turns = row.get(key)
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"{source} {where}: field {key!r} must be a list of turns (objects)")
    said = [(str(t.get("role", t.get("from", ""))).lower(), t.get("content", t.get("value"))) for t in turns]
    user = next((i for i, (who, _) in enumerate(said) if who in USER_ROLES), None)
    reply = next((i for i in range(len(said) - 1, -1, -1) if said[i][0] in ASSISTANT_ROLES), None)
    if user is None or reply is None or reply < user:
        raise ValueError(f"{source} {where}: field {key!r} needs a user turn followed by an assistant turn")
    for i in (user, reply):
        if not isinstance(said[i][1], str) or not said[i][1].strip():
            raise ValueError(f"{source} {where}: field {key!r} turn {i}: content must be a non-empty string")
    return said[user][1], said[reply][1]


def long_cot_row(row: dict, schema: str, source: str, where: str) -> dict:
    """One row in `schema` -> sft.py's {"question", "response"} (+ "answer" when the source has a gold)."""
    q_key, r_key = LONG_COT_SCHEMAS[schema]
    if schema in ("messages", "conversations"):
        question, response = _turns(row, q_key, source, where)
    else:
        question, response = _text(row, q_key, source, where), _text(row, r_key, source, where)
        if schema == "instruction/output" and isinstance(row.get("input"), str) and row["input"].strip():
            question = question.rstrip() + "\n\n" + row["input"].strip()
    out = {"question": question.strip(), "response": response.strip()}
    gold = row.get("answer", row.get("gt_answer"))
    if isinstance(gold, (str, int, float)) and not isinstance(gold, bool) and str(gold).strip():
        out["answer"] = str(gold).strip()
    return out


def read_long_cot(data: bytes, source: str) -> tuple[str, list[dict]]:
    """(schema, sft.py rows) of a JSON/JSONL (or parquet) file; the schema is the first row's, every row must
    have it: a bad row names file, line and field."""
    if source.endswith(".parquet"):
        import pyarrow.parquet as pq
        records = [(f"record {i}", r) for i, r in enumerate(pq.read_table(io.BytesIO(data)).to_pylist())]
    else:
        records = runtime.parse_json_rows(data, source)
    schema = detect_schema(records[0][1], source, records[0][0])
    return schema, [long_cot_row(r, schema, source, where) for where, r in records]


def token_lengths(rows: list[dict], tokenizer_path: str, template: str) -> list[int]:
    """prompt + response + EOS tokens of each row, counted by sft.encode itself (the template's prompt)."""
    import sft  # the trainer's own encoding, so "longer than --max-length" means what sft.py drops

    tokenizer = runtime.load_tokenizer(tokenizer_path)
    cfg = sft.Config(template=template, max_length=1 << 62)
    eos = tokenizer.convert_tokens_to_ids(cfg.eos_token)
    return [len(sft.encode(r, tokenizer, cfg, eos)[0]) for r in rows]


def long_cot_report(rows: list[dict], lengths: list[int] | None, max_length: int) -> dict:
    report = {"rows": len(rows), "with_answer": sum("answer" in r for r in rows)}
    if lengths:
        ordered = sorted(lengths)
        report["tokens"] = {f"p{q}": ordered[min(len(ordered) - 1, q * len(ordered) // 100)]
                            for q in (50, 90, 95, 99)} | {"max": ordered[-1]}
        report["over_max_length"] = sum(n > max_length for n in lengths)
        report["max_length"] = max_length
    return report


def save_long_cot(rows: list[dict], path: Path, meta: dict) -> None:
    """The rows (JSONL) and <path>.meta.json beside them: source, schema, checksum, counts."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    write_atomic(path.with_name(path.name + ".meta.json"), (json.dumps(meta, indent=2) + "\n").encode())
    tok = meta.get("tokens")
    print(f"{path}: {len(rows)} rows, schema {meta['schema']}, from {meta['source']}"
          + (f"; tokens (prompt + response + EOS, template {meta['template']}) p50 {tok['p50']} "
             f"p90 {tok['p90']} p99 {tok['p99']} max {tok['max']}; {meta['over_max_length']} longer than "
             f"{meta['max_length']} "
             "(sft.py drops them by default: --long-examples)" if tok else ""))


def convert_long_cot(data: bytes, source: str, out: Path, tokenizer: str | None, template: str = "simplerl",
                     max_length: int = 4096, extra: dict | None = None) -> dict:
    schema, rows = read_long_cot(data, source)
    print(f"{source}: schema {schema} ({len(rows)} rows)")
    lengths = token_lengths(rows, tokenizer, template) if tokenizer else None
    meta = {"source": source, "schema": schema, "sha256": hashlib.sha256(data).hexdigest(),
            "template": template, **long_cot_report(rows, lengths, max_length), **(extra or {})}
    save_long_cot(rows, out, meta)
    return meta


def simplerl_sft_url(pin: dict = SIMPLERL_SFT) -> str:
    return f"https://huggingface.co/datasets/{pin['repo']}/resolve/{pin['revision']}/{pin['file']}"


def download_simplerl_sft(out: Path, url: str | None = None, sha256: str | None = None,
                          tokenizer: str | None = None, template: str = "simplerl", max_length: int = 4096,
                          check: bool = True) -> dict:
    """AndrewZeng/SimpleRL-SFT -> <out>/sft/simplerl_sft.jsonl. A pinned SHA-256 (SIMPLERL_SFT or `sha256`)
    that the bytes do not match stops the run; with none pinned, the download goes ahead, loudly."""
    url = url or simplerl_sft_url()
    data = fetch(url)
    got, expected = hashlib.sha256(data).hexdigest(), sha256 or SIMPLERL_SFT["sha256"]
    if check and expected and got != expected:
        raise ValueError(f"{url}: SHA-256 {got} != pinned {expected} (corrupt, truncated or a different "
                         "revision; --no-verify accepts it)")
    if not expected:
        print(f"WARNING: UNPINNED download {url}: SHA-256 {got}; pin it in data/prepare_data.py SIMPLERL_SFT "
              "(or pass --sft-sha256) so that other bytes stop the run", file=sys.stderr)
    return convert_long_cot(data, url, out / SFT_OUT, tokenizer, template, max_length,
                            {"url": url, "pinned_sha256": expected})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output root (default: data/)")
    p.add_argument("--from-local", metavar="DIR", help="convert a local copy (e.g. ../shared/data) instead of downloading")
    p.add_argument("--train-file", help="with --from-local: the training JSON/parquet (default: searched under DIR/train)")
    p.add_argument("--train-source", choices=["github", "hf"], default="github",
                   help="where the training set is downloaded from (default: github)")
    p.add_argument("--only", choices=["eval", "train", "sft"],
                   help="prepare one part only (sft: the authors' long-CoT warm-up data, downloaded)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip SHA-1/SHA-256 and row-count checks (modified copies)")
    p.add_argument("--sft-url", help="with --only sft: download from this URL instead of SIMPLERL_SFT's")
    p.add_argument("--sft-sha256", help="with --only sft: the SHA-256 the file must have (overrides the pin)")
    p.add_argument("--long-cot", metavar="FILE_OR_URL",
                   help="convert a long-CoT file (JSON/JSONL/parquet, local or http(s)) to sft.py's rows")
    p.add_argument("--long-cot-out", default="long_cot.jsonl", help="where --long-cot writes")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-Math-7B",
                   help="tokenizer for the length report, as sft.py counts (folder or hub id; none: skip)")
    p.add_argument("--template", default="simplerl", help="sft.py's --template, for the prompt's tokens")
    p.add_argument("--max-length", type=int, default=4096,
                   help="sft.py's --max-length: longer rows are counted (4096: Qwen2.5-Math-7B's window)")
    args = p.parse_args(argv)
    out, check = Path(args.out), not args.no_verify
    tokenizer = None if args.tokenizer.lower() == "none" else args.tokenizer
    if args.long_cot or args.only == "sft":
        lengths = dict(tokenizer=tokenizer, template=args.template, max_length=args.max_length)
        if args.long_cot:
            src = args.long_cot
            data = fetch(src) if "://" in src else Path(src).read_bytes()
            convert_long_cot(data, src, Path(args.long_cot_out), **lengths)
        if args.only == "sft":
            download_simplerl_sft(out, args.sft_url, args.sft_sha256, check=check, **lengths)
        return
    if args.from_local:
        src = Path(args.from_local)
        if args.only != "train":
            local_eval(src, out, check=check)
        if args.only != "eval":
            local_train(Path(args.train_file) if args.train_file else src / "train", out, check=check)
    else:
        if args.only != "train":
            download_eval(out, check=check)
        if args.only != "eval":
            download_train(out, args.train_source, check=check)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"prepare_data: {e}")

"""data/make_synth_data.py: deterministic, held out by question, solutions correct and graded right."""
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "data" / "synth"
sys.path.insert(0, str(ROOT))

from reward import compute_score  # noqa: E402


def load_generator():
    spec = importlib.util.spec_from_file_location("make_synth_data", ROOT / "data" / "make_synth_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read(split: str) -> list[dict]:
    return [json.loads(line) for line in open(SYNTH / f"{split}.jsonl", encoding="utf-8")]


def test_regeneration_is_byte_identical(tmp_path):
    load_generator().main(tmp_path, seed=0)
    for split in ("train", "test", "base"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (SYNTH / f"{split}.jsonl").read_bytes(), split
    assert sum(p.stat().st_size for p in SYNTH.glob("*.jsonl")) < 5 * 2**20


def test_another_seed_gives_other_problems(tmp_path):
    gen = load_generator()
    assert gen.build(seed=1)["train"][:50] != gen.build(seed=0)["train"][:50]


def test_schema_levels_and_hold_out():
    train, test, base = read("train"), read("test"), read("base")
    for row in train + test:
        assert set(row) == {"question", "answer", "solution", "level"}
    assert {r["level"] for r in train} == {r["level"] for r in test} == {1, 2, 3, 4, 5}
    test_q = {r["question"] for r in test}
    assert not test_q & {r["question"] for r in train}
    assert not test_q & {r["question"] for r in base}
    assert len(test_q) == len(test)
    for row in test + train:  # the level says how many operands and how many digits
        nums = [int(x) for x in re.findall(r"\d+", row["question"])]
        level = row["level"]
        assert len(nums) == (3 if level in (4, 5) else 2)
        assert {1: max(nums) <= 9, 2: min(nums) >= 10 and max(nums) <= 99, 3: 100 <= max(nums) <= 999,
                4: min(nums) >= 10 and max(nums) <= 99, 5: 100 <= max(nums) <= 999}[level], row


def test_solutions_are_correct_and_graded_right():
    for row in read("train") + read("test"):
        *steps, box = row["solution"].split("\n")
        assert box == f"\\boxed{{{row['answer']}}}"
        acc = None
        for line in steps:  # every step is true arithmetic and chains into the next one
            m = re.fullmatch(r"\s*(-?\d+)([+-])\s*(\d+)=\s*(-?\d+)", line)
            assert m, line
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert acc is None or a == acc
            assert c == (a + b if op == "+" else a - b), line
            acc = c
        assert str(acc) == row["answer"]
        assert compute_score(row["solution"], row["answer"]) == 1.0


def test_base_mix_styles():
    base = read("base")
    share = Counter(r["style"] for r in base)
    assert abs(share["boxed"] / len(base) - 0.4) < 0.03
    assert abs(share["unboxed"] / len(base) - 0.3) < 0.03
    assert abs(share["padded"] / len(base) - 0.3) < 0.03
    for row in base:  # the reward's view: only the boxed style earns +1, the others get the no-box -1
        assert compute_score(row["solution"], row["answer"]) == (1.0 if row["style"] == "boxed" else -1.0)
        assert row["answer"] in row["solution"]
    mean_len = {s: sum(len(r["solution"]) for r in base if r["style"] == s) / share[s] for s in share}
    assert mean_len["padded"] > 2.5 * mean_len["boxed"]

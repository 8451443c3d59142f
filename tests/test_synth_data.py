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
    gen = load_generator()
    for style, want in gen.STYLES.items():
        assert abs(share[style] / len(base) - want) < 0.02, style
    assert share["reflective"] / len(base) <= 0.05  # rare in the base model: RL has to discover it pays
    for row in base:  # the reward's view: the boxed styles earn +1, the others get the no-box -1
        boxed = row["style"] in ("boxed", "reflective")
        assert compute_score(row["solution"], row["answer"]) == (1.0 if boxed else -1.0), row
        assert row["answer"] in row["solution"]
    mean_len = {s: sum(len(r["solution"]) for r in base if r["style"] == s) / share[s] for s in share}
    assert mean_len["padded"] > 2.5 * mean_len["boxed"]
    assert mean_len["reflective"] > 2 * mean_len["boxed"]


FACT = re.compile(r"(1?\d)([+-])(\d)([+-]1)?=(\d+)")  # one column: digit op digit (carry/borrow) = result


def check_columns(text: str, x: int, op: str, y: int) -> None:
    """'let me check: 7+5=12 4+8+1=13 so 132' is x op y column by column, every fact true, units first."""
    facts = FACT.findall(text)
    assert facts, text
    for a, o, b, c, s in facts:
        value = int(a) + int(b) if o == "+" else int(a) - int(b)
        value += {"": 0, "+1": 1, "-1": -1}[c]
        assert value == int(s), (text, a, o, b, c, s)
    assert int(re.search(r"so (-?\d+)$", text)[1]) == (x + y if op == "+" else x - y), text


def test_reflective_solutions_are_correct_and_score_one():
    """Every reflective solution: a first answer, 'let me check:' the same step column by column, then (only
    when the first answer was a slip) 'wait, not N', and the right answer boxed: reward +1."""
    gen = load_generator()
    rows = [r for r in read("base") if r["style"] == "reflective"]
    rows += [r for r in (gen.styled(t, "reflective", *gen.parse(t["question"])) for t in read("train")[:3000])]
    slips = 0
    for row in rows:
        lines = row["solution"].split("\n")
        assert lines[-1] == f"\\boxed{{{row['answer']}}}"
        assert compute_score(row["solution"], row["answer"]) == 1.0
        check = next(i for i, line in enumerate(lines) if line.startswith("let me check: "))
        m = re.fullmatch(r"\s*(-?\d+)([+-])\s*(\d+)=\s*(-?\d+)", lines[check - 1])  # the first answer
        x, op, y, first = int(m[1]), m[2], int(m[3]), int(m[4])
        check_columns(lines[check], x, op, y)
        if first != int(row["answer"]):
            slips += 1
            assert lines[check + 1] == f"wait, not {first}"
        else:
            assert lines[check + 1].startswith("\\boxed")
        for line in lines[:check - 1]:  # earlier steps of levels 4-5: true arithmetic
            m = re.fullmatch(r"\s*(-?\d+)([+-])\s*(\d+)=\s*(-?\d+)", line)
            assert int(m[4]) == (int(m[1]) + int(m[3]) if m[2] == "+" else int(m[1]) - int(m[3]))
    assert 0.3 < slips / len(rows) < 0.7  # about half start from a slip that the check catches


def test_column_work_of_the_unboxed_styles_is_true():
    gen = load_generator()
    for row in read("base"):
        if row["style"] in ("unboxed", "padded"):
            line = next(x for x in row["solution"].split("\n") if "olumn by column: " in x)
            nums, ops = gen.parse(row["question"])
            acc = gen.steps(nums[:-1], ops[:-1])[1] if len(nums) > 2 else nums[0]
            check_columns(line.split("column: ", 1)[1], acc, ops[-1], nums[-1])

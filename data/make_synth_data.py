"""Write data/synth/: a synthetic arithmetic task for the CPU world, in the real data's schema.

Every row is ``{"question", "answer", "solution", "level"}``: the question is an expression whose
operands are right-aligned to three characters, the answer its integer value (may be negative), and
the solution a worked computation, one step a line, left to right, ending in ``\\boxed{answer}``:

    {"question": "347- 85+ 12", "answer": "274", "solution": "347- 85= 262\n262+ 12= 274\n\\boxed{274}", "level": 5}

Why the spaces: with one token per character, right-aligned operands (and results, 4 wide) put
every digit at a fixed offset from the digits it is computed from: place value is position, the
easiest thing for a small transformer to attend by. Each space costs a token; still short.

Levels, easy to hard (like MATH's 1-5), are disjoint by construction:

    1  a+b      a, b in 0..9                    (all 100 such problems exist)
    2  a±b      a, b in 10..99
    3  a±b      a, b in 0..999, at least one with three digits
    4  a±b±c    a, b, c in 10..99
    5  a±b±c    a, b, c in 0..999, at least one with three digits

Operands of levels 3 and 5 draw their digit count uniformly from 1..3 first, so short operands
(347-  8) stay common. Questions are unique within a level, and the test split is held out by
question: no test question appears in train.jsonl or base.jsonl. Solutions are char-cheap on
purpose: the tiny tokenizer spends one token per character.

Files:
    train.jsonl  clean worked solutions, for SFT (e.g. SFT on levels 1-3, RL on 3-5)
    test.jsonl   held-out problems, same schema
    base.jsonl   a "pretraining" mix for the weak base model of the SimpleRL-Zero demo: train
                 problems, each in one of four answer styles (extra field "style"):
                   boxed       40%  the clean solution (the first line is the answer in one go)
                   unboxed     26%  the last step column by column, then "The answer is N."
                   padded      30%  "Let me compute it column by column", then a python snippet
                                    with its output, no box, ~5x longer than boxed
                   reflective   4%  the answer in one go, then "let me check:" the same step column by
                                    column; when the first answer was a slip, "wait, not N"; the
                                    checked value boxed:
                       " 47+ 85= 122\nlet me check: 7+5=12 4+8+1=13 so 132\nwait, not 122\n\\boxed{132}"
                 Under the RL reward (+1 boxed & right, -0.5 boxed & wrong, -1 no box) RL first
                 removes the unboxed styles (responses get shorter, the format rate rises); then it
                 finds that checking pays: the base model learns one-digit column facts (from the
                 unboxed styles) well before it learns to add two-digit numbers in one go, so a
                 checked answer is right about twice as often as a one-go answer (measured: 70% vs
                 34% on held-out problems, greedy), and "let me check" spreads (responses get longer).

Deterministic by seed: rerunning rewrites byte-identical files (a test checks this).

    python data/make_synth_data.py            # rewrites data/synth/
"""
import argparse
import json
import random
import re
from pathlib import Path

LEVELS = (1, 2, 3, 4, 5)
N_TRAIN = 5000  # per level (level 1 has only 100 problems: 70 train, 30 test)
N_TEST = 300  # per level
N_BASE = 1500  # per level, drawn from the train problems
WIDTH = 3  # operands are right-aligned to 3 characters: place value = position (see the docstring)
STYLES = {"boxed": 0.4, "unboxed": 0.26, "padded": 0.3, "reflective": 0.04}


def operand(rng: random.Random, level: int) -> int:
    if level == 1:
        return rng.randint(0, 9)
    if level in (2, 4):
        return rng.randint(10, 99)
    digits = rng.randint(1, 3)  # levels 3 and 5
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def sample_problem(rng: random.Random, level: int) -> tuple[list[int], list[str]]:
    """Operands and operators ("+" / "-") of one problem of this level."""
    n = 3 if level in (4, 5) else 2
    while True:
        nums = [operand(rng, level) for _ in range(n)]
        if level in (3, 5) and max(nums) < 100:
            continue
        ops = ["+"] * (n - 1) if level == 1 else [rng.choice("+-") for _ in range(n - 1)]
        return nums, ops


def steps(nums: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Left-to-right evaluation, one line per operator: '347-85=262', '262+12=274'."""
    acc, lines = nums[0], []
    for op, x in zip(ops, nums[1:]):
        new = acc + x if op == "+" else acc - x
        lines.append(f"{acc:>{WIDTH}}{op}{x:>{WIDTH}}={new:>{WIDTH + 1}}")
        acc = new
    return lines, acc


def make_row(nums: list[int], ops: list[str], level: int) -> dict:
    question = f"{nums[0]:>{WIDTH}}" + "".join(f"{op}{x:>{WIDTH}}" for op, x in zip(ops, nums[1:]))
    lines, value = steps(nums, ops)
    return {"question": question, "answer": str(value),
            "solution": "\n".join(lines + [f"\\boxed{{{value}}}"]), "level": level}


def columns(x: int, op: str, y: int) -> tuple[str, int]:
    """x op y column by column, units first, each column a one-digit fact with its carry or borrow written out:
    47+85 -> '7+5=12 4+8+1=13 so 132'; 42-17 -> '12-7=5 4-1-1=2 so 25'; a negative difference is the
    larger minus the smaller, negated: 47-85 -> '85-47: 15-7=8 8-4-1=3 so -38'. (A negative x, mid-chain in
    levels 4-5: -106+1 is 1-106, -106-1 is -(106+1).)"""
    if x < 0:  # rewritten so that the columns always take two non-negative numbers, the larger first for "-"
        a, b, sign, head = ((y, -x, 1, f"{y}-{-x}: ") if op == "+" and y >= -x else
                            (-x, y, -1, f"-({-x}-{y}): ") if op == "+" else (-x, y, -1, f"-({-x}+{y}): "))
        text, value = columns(a, "-" if op == "+" else "+", b)
        return head + text.rsplit(" so ", 1)[0] + f" so {sign * value}", sign * value
    neg = op == "-" and x < y
    a, b = (y, x) if neg else (x, y)
    facts, low, carry = [], "", 0
    for i in range(len(str(max(a, b)))):
        da, db = a // 10**i % 10, b // 10**i % 10
        last = 10 ** (i + 1) > max(a, b)
        if op == "+":
            s = da + db + carry
            facts.append(f"{da}+{db}{'+1' if carry else ''}={s}")
            carry, digit = s // 10, s if last else s % 10
        else:
            borrow = int(da - carry < db)
            s = 10 * borrow + da - db - carry
            facts.append(f"{'1' if borrow else ''}{da}-{db}{'-1' if carry else ''}={s}")
            carry, digit = borrow, s
        low = f"{digit}{low}"
    value = -int(low) if neg else int(low)
    assert value == (x + y if op == "+" else x - y)
    return (f"{a}-{b}: " if neg else "") + " ".join(facts) + f" so {value}", value


def reflective(nums: list[int], ops: list[str], value: int, seed: str) -> str:
    """Answer, then "let me check:" the last step again column by column; when the first answer was a slip
    (half of these solutions start from one, as a weak model's would: a carry off by ten, a units digit off by
    one), "wait, not N" and the checked value is the one boxed. Every line written as arithmetic is true."""
    rng = random.Random(seed)  # its own stream: the other files' bytes do not depend on this style's draws
    work, acc = steps(nums[:-1], ops[:-1]) if len(nums) > 2 else ([], nums[0])
    first = value + rng.choice((-10, 10, -1, 1)) if rng.random() < 0.5 else value
    head = f"{acc:>{WIDTH}}{ops[-1]}{nums[-1]:>{WIDTH}}={first:>{WIDTH + 1}}"
    check, again = columns(acc, ops[-1], nums[-1])
    assert again == value
    slip = [f"wait, not {first}"] if first != value else []
    return "\n".join(work + [head, f"let me check: {check}"] + slip + [f"\\boxed{{{value}}}"])


def styled(row: dict, style: str, nums: list[int], ops: list[str]) -> dict:
    """The same problem written in one of the base-model styles."""
    work = row["solution"].rsplit("\n", 1)[0]  # the steps, without the boxed line
    ans, q = row["answer"], row["question"]
    acc = steps(nums[:-1], ops[:-1])[1] if len(nums) > 2 else nums[0]
    cols = columns(acc, ops[-1], nums[-1])[0]  # the last step, column by column
    head = "\n".join(work.split("\n")[:-1] + [""])  # the steps before the last one (levels 4-5)
    text = {
        "boxed": lambda: row["solution"],
        "unboxed": lambda: f"{head}Column by column: {cols}\nThe answer is {ans}.",
        "padded": lambda: f"{head}Let me compute it column by column: {cols}\nCheck with code:\n```python\nprint({q})\n"
                          f"```\n```output\n{ans}\n```\nSo it is {ans}.",
        "reflective": lambda: reflective(nums, ops, int(ans), f"{q}|{row['level']}"),
    }[style]()
    return {**row, "solution": text, "style": style}


def parse(question: str) -> tuple[list[int], list[str]]:
    """Operands and operators back from a question string (' 47+ 85- 12')."""
    return [int(x) for x in re.findall(r"\d+", question)], re.findall(r"[+-]", question)


def problems(rng: random.Random, level: int, n: int) -> list[dict]:
    """n distinct problems of a level (all of them, shuffled, when fewer exist)."""
    if level == 1:
        rows = [make_row([a, b], ["+"], 1) for a in range(10) for b in range(10)]
        rng.shuffle(rows)
        return rows[:n]
    seen, rows = set(), []
    while len(rows) < n:
        row = make_row(*sample_problem(rng, level), level)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def build(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    train, test, base = [], [], []
    for level in LEVELS:
        rows = problems(rng, level, N_TRAIN + N_TEST)
        n_test = N_TEST if len(rows) > N_TEST + N_TRAIN // 2 else int(0.3 * len(rows))
        test += rows[:n_test]
        train += rows[n_test:]
        pool = rows[n_test:]
        for row in rng.sample(pool, min(N_BASE, len(pool))):
            style = rng.choices(list(STYLES), weights=list(STYLES.values()))[0]
            base.append(styled(row, style, *parse(row["question"])))
    rng.shuffle(train)
    rng.shuffle(base)
    assert not {r["question"] for r in test} & {r["question"] for r in train + base}
    return {"train": train, "test": test, "base": base}


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(out: Path = Path(__file__).resolve().parent / "synth", seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in build(seed).items():
        write_jsonl(rows, out / f"{split}.jsonl")
        print(f"wrote {out / f'{split}.jsonl'}: {len(rows)} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "synth",
                        help="output folder for train.jsonl, test.jsonl, base.jsonl (default: data/synth)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0, the checked-in files)")
    args = parser.parse_args()
    main(args.out, args.seed)

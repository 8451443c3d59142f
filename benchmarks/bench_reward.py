"""Grading throughput, latency and agreement of reward.py, with math-verify as the reference.

    python benchmarks/bench_reward.py [--workers 2] [--repeat 3]

Realistic mix: the 800 real Qwen2.5-Math-7B responses (100 MATH problems x 8) in
../shared/data/eval/eval_rm_maj_example/math_cot_100.jsonl, with the harness's own verdicts.
Prints pairs/s (single process and pool), p50/p99 per-pair latency, the agreement of the
two graders with each other and with the harness on those 800, and on tests/equivalence_cases.py.

math-verify is a benchmark-only dependency: pip install "math-verify[antlr4_11_0]".
"""

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import grading  # noqa: E402
import reward  # noqa: E402
from equivalence_cases import CASES, QUESTION_CASES  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

try:
    from math_verify import parse as mv_parse, verify as mv_verify
except ImportError:  # the product does not need it
    mv_parse = mv_verify = None


def load_mix() -> tuple[list[str], list[str], list[bool]]:
    rows = [json.loads(line) for line in (DATA / "eval/eval_rm_maj_example/math_cot_100.jsonl").open()]
    responses = [c for r in rows for c in r["code"]]
    golds = [r["gt"] for r in rows for _ in r["code"]]
    harness = [bool(s) for r in rows for s in r["score"]]
    return responses, golds, harness


def mv_score(pair: tuple[str, str]) -> bool:
    """math-verify the way SimpleRL-Zoo uses it: parse the gold and the response, verify."""
    response, gold = pair
    try:
        return bool(mv_verify(mv_parse("\\boxed{" + gold + "}"), mv_parse(reward.cut_at_stop(response))))
    except Exception:
        return False


def ours_score(pair: tuple[str, str]) -> bool:
    return reward.compute_score(*pair) == 1.0


def timed(fn, pairs) -> tuple[list[bool], list[float]]:
    verdicts, lat = [], []
    for pair in pairs:
        t = time.perf_counter()
        verdicts.append(fn(pair))
        lat.append(time.perf_counter() - t)
    return verdicts, lat


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def report(name: str, lat: list[float], pool_rate: float | None) -> None:
    total = sum(lat)
    pool = f"{pool_rate:8.0f}" if pool_rate else "     n/a"
    print(f"{name:<12} {len(lat) / total:10.0f} {pool} {pct(lat, 50) * 1e3:9.3f} {pct(lat, 99) * 1e3:9.3f} {max(lat) * 1e3:9.1f}")


def agree(a: list[bool], b: list[bool]) -> str:
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"


HARD_FAMILIES = ("unordered", "labelled", "number-format", "latex-spelling", "units-time", "symbolic-identity",
                 "named-parts", "several-boxes", "tuple-lists", "chains", "ranges", "decimal-comma",
                 "constant-in-expression", "units-quantity")


def table_report(with_mv: bool) -> None:
    """The equivalence table scored by each grader in this run: accuracy, false positives
    (said equal, expected not), false negatives, per family and overall."""
    # QUESTION_CASES carry the question (the order of a bare list); only reward.py reads it.
    cases = [(p, g, None, want, fam) for p, g, want, fam in CASES] + QUESTION_CASES
    graders = {
        "simplerl": lambda p, g, q: reward.math_equal(p, g, question=q),
        "v0": lambda p, g, q: reward.compute_score("\\boxed{" + p + "}", g, grader="v0") == 1.0,
    }
    if with_mv:
        graders["math-verify"] = lambda p, g, q: mv_score(("\\boxed{" + p + "}", g))
    verdicts = {name: [fn(p, g, q) for p, g, q, _, _ in cases] for name, fn in graders.items()}
    table = [(p, g, want, fam) for p, g, _, want, fam in cases]
    groups: dict[str, list[int]] = {}
    for i, (_, _, _, fam) in enumerate(table):
        groups.setdefault(fam if fam in HARD_FAMILIES else "core (other families)", []).append(i)
    groups["all"] = list(range(len(table)))
    order = list(HARD_FAMILIES) + ["core (other families)", "all"]
    print(f"\nequivalence table ({len(table)} cases, {sum(c[2] for c in table)} equal, {sum(not c[2] for c in table)} not)")
    print("| family | cases | " + " | ".join(f"{n} acc | FP | FN" for n in graders) + " |")
    print("|---|---:|" + "---:|---:|---:|" * len(graders))
    for fam in order:
        idx = groups[fam]
        cells = []
        for name in graders:
            v = verdicts[name]
            right = sum(v[i] == table[i][2] for i in idx)
            fp = sum(v[i] and not table[i][2] for i in idx)
            fn = sum(not v[i] and table[i][2] for i in idx)
            cells.append(f"{right / len(idx):.1%} | {fp} | {fn}")
        print(f"| {fam} | {len(idx)} | " + " | ".join(cells) + " |")
    if with_mv:
        for i, (p, g, want, fam) in enumerate(table):
            if verdicts["simplerl"][i] != want:
                print(f"  simplerl wrong: [{fam}] {p!r} vs {g!r} expected {want}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="passes over the 800 pairs (first warms up)")
    args = ap.parse_args()

    responses, golds, harness = load_mix()
    pairs = list(zip(responses, golds))
    print(f"mix: {len(pairs)} real responses, harness says {sum(harness)} correct")

    ours, lat = timed(ours_score, pairs)  # warm-up pass (imports sympy and the LaTeX parser)
    for _ in range(args.repeat - 1):
        ours, lat = timed(ours_score, pairs)
    # Start and warm the pool: every worker must see symbolic pairs before timing.
    reward.batch_math_equal(["\\sqrt{8}", "x^2+2x+1"] * 4 * args.workers, ["2\\sqrt{2}", "(x+1)^2"] * 4 * args.workers,
                            num_workers=args.workers)
    for _ in range(args.repeat):
        t = time.perf_counter()
        pooled = reward.batch_compute_scores(responses, golds, num_workers=args.workers)
        ours_pool_rate = len(pairs) / (time.perf_counter() - t)
    undecided = sum(grading._quick_equal(p, g) is None for p, g in
                    zip([reward._boxed_answer(reward.cut_at_stop(r)) or "" for r in responses], golds))
    print(f"fast path decides {len(pairs) - undecided}/{len(pairs)} pairs; {undecided} go to the symbolic stage")
    assert [s == 1.0 for s in pooled] == ours

    mv, mv_lat, mv_pool_rate = None, None, None
    if mv_verify is not None:
        mv, mv_lat = timed(mv_score, pairs)
        for _ in range(args.repeat - 1):
            mv, mv_lat = timed(mv_score, pairs)
        with mp.get_context("fork").Pool(args.workers) as pool:
            pool.map(mv_score, pairs[:16])
            t = time.perf_counter()
            pool.map(mv_score, pairs, chunksize=8)
            mv_pool_rate = len(pairs) / (time.perf_counter() - t)

    print(f"\nthroughput and latency on the mix (pool: {args.workers} workers)")
    print(f"{'grader':<12} {'pairs/s':>10} {'pool/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    report("reward.py", lat, ours_pool_rate)
    if mv_lat:
        report("math-verify", mv_lat, mv_pool_rate)
    else:
        print("math-verify  not installed: pip install 'math-verify[antlr4_11_0]'")

    print("\nagreement on the 800 real responses")
    print(f"  reward.py   vs harness: {agree(ours, harness)}  (reward.py says {sum(ours)} correct)")
    if mv:
        print(f"  math-verify vs harness: {agree(mv, harness)}  (math-verify says {sum(mv)} correct)")
        print(f"  reward.py   vs math-verify: {agree(ours, mv)}")
        for i, (a, b) in enumerate(zip(ours, mv)):
            if a != b:
                print(f"    differ: ours={a} mv={b} harness={harness[i]} gold={golds[i]!r} "
                      f"pred={reward.extract_boxed(reward.cut_at_stop(responses[i]))!r}")

    print(f"\nsingle-process throughput on the 800: reward.py {len(lat) / sum(lat):.0f} pairs/s", end="")
    if mv_lat:
        print(f", math-verify {len(mv_lat) / sum(mv_lat):.0f} pairs/s: "
              f"{(len(lat) / sum(lat)) / (len(mv_lat) / sum(mv_lat)):.1f}x")
    else:
        print()
    v0_scores = [s == 1.0 for s in reward.batch_compute_scores(responses, golds, grader="v0", num_workers=args.workers)]
    print(f"  grader='v0' vs harness: {agree(v0_scores, harness)} (v0 says {sum(v0_scores)} correct)")

    table_report(mv_verify is not None)
    slow = "\\boxed{2^{1/2^{1000}}}"
    t = time.perf_counter()
    reward.compute_score(slow, "1")
    line = f"\npathological 2^{{1/2^{{1000}}}}: reward.py {time.perf_counter() - t:.3f} s"
    if mv_verify is not None:
        t = time.perf_counter()
        mv_score((slow, "1"))
        line += f", math-verify {time.perf_counter() - t:.3f} s"
    print(line)


if __name__ == "__main__":
    main()

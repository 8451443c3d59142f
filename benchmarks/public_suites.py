"""Score reward.py and math-verify on (gold, pred, expected) cases taken from other graders' test suites.

    python benchmarks/public_suites.py CASES.jsonl [--misses]

A second stand-in for a held-out suite (the first is benchmarks/mv_testsuite.py, math-verify's own
tests): cases that other projects wrote for their own graders (hendrycks/math, NeMo-Skills,
MARIO_EVAL, lm-evaluation-harness, SkyThought, slime, ...; docs/grader.md lists the 21 sources
and their commits).  The case file is not shipped: each line is one JSON object

    {"source": "owner/repo:path@commit", "gold": ..., "pred": ..., "expected": true|false,
     "pred_kind": "answer"|"response", "label_basis": "format" (optional)}

read from the tests' literals (never by running them).  "answer": an extracted final answer,
graded with reward.math_equal; "response": a whole model output, graded with
reward.compute_score (+1 is right).  Scored: the "boxed core", i.e. answers, and responses that
hold a box; labels that judge a format (`label_basis: format`: no </think>, no box) are left out.
math-verify gets each side in a box (a response as it is) and is called with parse/verify.
"""

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reward  # noqa: E402


def in_core(case: dict) -> bool:
    if case.get("label_basis") == "format":
        return False
    return case["pred_kind"] == "answer" or "\\boxed" in case["pred"]


def ours(case: dict) -> bool:
    if case["pred_kind"] == "answer":
        return reward.math_equal(case["pred"], case["gold"])
    return reward.compute_score(case["pred"], case["gold"], grader="simplerl") == 1.0


def math_verify(case: dict) -> bool:
    from math_verify import parse, verify
    try:
        pred = case["pred"] if case["pred_kind"] == "response" else "\\boxed{" + case["pred"] + "}"
        return bool(verify(parse("\\boxed{" + case["gold"] + "}"), parse(pred)))
    except Exception:  # math-verify's own errors count as "not equal", as its callers treat them
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", type=Path)
    ap.add_argument("--misses", action="store_true", help="list every case reward.py gets wrong")
    args = ap.parse_args()
    cases = [json.loads(line) for line in args.cases.open() if line.strip()]
    tally = collections.defaultdict(lambda: collections.Counter())
    misses = []
    for case in filter(in_core, cases):
        want, a, b = bool(case["expected"]), ours(case), math_verify(case)
        for key in ("all", case["source"].split(":")[0]):
            t = tally[key]
            t["n"] += 1
            t["ours"] += a == want
            t["ours_fn"] += want and not a
            t["ours_fp"] += a and not want
            t["mv"] += b == want
            t["mv_fn"] += want and not b
            t["mv_fp"] += b and not want
        if a != want:
            misses.append((case, a, b))
    print(f"{len(cases)} cases read, {tally['all']['n']} in the boxed core")
    print(f"{'source':42} {'n':>4} | reward.py acc  FN  FP | math-verify acc  FN  FP")
    for key in sorted(tally, key=lambda k: (k != "all", k)):
        t = tally[key]
        print(f"{key:42} {t['n']:4} | {100 * t['ours'] / t['n']:12.1f}% {t['ours_fn']:3} {t['ours_fp']:3} |"
              f" {100 * t['mv'] / t['n']:14.1f}% {t['mv_fn']:3} {t['mv_fp']:3}")
    if args.misses:
        for case, a, b in misses:
            print(f"\n[{case['source']}] expected={case['expected']} reward.py={a} math-verify={b}")
            print(f"  gold: {case['gold'][:200]!r}\n  pred: {case['pred'][-300:]!r}")


if __name__ == "__main__":
    main()

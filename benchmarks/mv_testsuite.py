"""Score reward.py and math-verify on the cases of math-verify's own public test suite.

    python benchmarks/mv_testsuite.py --tests DIR [--misses]

DIR holds math-verify's tests/*.py (github.com/huggingface/Math-Verify, tests/: e.g.
`git clone https://github.com/huggingface/Math-Verify; --tests Math-Verify/tests`).  A stand-in
for a held-out suite: these cases were written by other hands, against another grader.

Each `pytest.mark.parametrize` table with (gold, pred, expected) columns is read with `ast`
(never executed); tables run with non-default options (strict=False,
allow_set_relation_comp=True) are left out.  "Boxed core": reward.py grades a boxed answer,
so a prediction without a box is put in one (its $...$ delimiters removed); math-verify is
called as that test calls it (its `compare_strings` with the test's match types, or
parse/verify).  Prints accuracy, false negatives and false positives of both, per test file.
"""

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reward  # noqa: E402


def load_cases(tests: Path) -> list[dict]:
    cases = []
    for path in sorted(tests.glob("test_*.py")):
        source = path.read_text()
        for fn in ast.walk(ast.parse(source)):
            if not isinstance(fn, ast.FunctionDef):
                continue
            body = ast.get_source_segment(source, fn) or ""
            m = re.search(r"match_types=\[([^\]]*)\]", body)
            match_types = re.findall(r"\"(\w+)\"", m.group(1)) if m else None  # None: plain parse()
            for dec in fn.decorator_list:
                if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"):
                    continue
                names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
                if not {"gold", "pred"} <= set(names):
                    continue
                for row in dec.args[1].elts:
                    try:
                        values = dict(zip(names, ast.literal_eval(row)))
                    except ValueError:
                        continue
                    expected = values.get("expected", values.get("result"))
                    if values.get("strict", True) is False or values.get("allow_set_relation_comp") is True:
                        continue
                    cases.append({"file": path.stem, "test": fn.name, "gold": values["gold"], "pred": values["pred"],
                                  "expected": bool(expected), "precision": values.get("precision", 6),
                                  "match_types": match_types})
    return cases


def mv_verdict(case: dict) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    try:
        if case["match_types"] is None:
            return bool(verify(parse(case["gold"]), parse(case["pred"])))
        targets = [LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig()
                   for t in case["match_types"]]
        return bool(verify(parse(case["gold"], targets), parse(case["pred"], targets),
                           float_rounding=case["precision"]))
    except Exception:
        return False


def boxed_core(pred: str) -> str:
    """The prediction as a response reward.py grades: boxed already, or put in a box."""
    if "boxed" in pred:
        return pred
    core = pred.strip()
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if core.startswith(a) and core.endswith(b) and len(core) >= len(a) + len(b):
            core = core[len(a) : len(core) - len(b)].strip()
            break
    return "\\boxed{" + core + "}"


_PROSE_RE = re.compile(r"[A-Za-z]{4,}")


def is_core(case: dict) -> bool:
    """A boxed-core case: the gold is an answer (no prose around it) and the prediction is boxed or is
    an answer itself -- no word of four letters outside \\text{} and LaTeX commands."""
    def bare(s: str) -> bool:
        return not _PROSE_RE.search(re.sub(r"\\text\{[^{}]*\}|\\+[a-zA-Z]+", " ", s))
    return len(case["gold"]) <= 200 and bare(case["gold"]) and ("boxed" in case["pred"] or bare(case["pred"]))


def ours_verdict(case: dict) -> bool:
    return reward.compute_score(boxed_core(case["pred"]), case["gold"]) == 1.0


def tally(cases: list[dict], key: str) -> tuple[int, int, int, int]:
    right = sum(c[key] == c["expected"] for c in cases)
    fn = sum(c["expected"] and not c[key] for c in cases)
    fp = sum(c[key] and not c["expected"] for c in cases)
    return len(cases), right, fn, fp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", type=Path, required=True, help="math-verify's tests/ folder")
    ap.add_argument("--misses", action="store_true", help="list every case either grader gets wrong")
    args = ap.parse_args()
    cases = load_cases(args.tests)
    for c in cases:
        c["ours"], c["mv"] = ours_verdict(c), mv_verdict(c)
    print(f"{'file':<24} {'cases':>5} | {'reward.py acc':>13} {'FN':>3} {'FP':>3} | {'math-verify acc':>15} {'FN':>3} {'FP':>3}")
    for name in sorted({c["file"] for c in cases}) + ["all", "boxed core"]:
        part = [c for c in cases if name in ("all", c["file"]) or (name == "boxed core" and is_core(c))]
        n, r1, fn1, fp1 = tally(part, "ours")
        _, r2, fn2, fp2 = tally(part, "mv")
        print(f"{name:<24} {n:>5} | {100 * r1 / n:12.1f}% {fn1:>3} {fp1:>3} | {100 * r2 / n:14.1f}% {fn2:>3} {fp2:>3}")
    if args.misses:
        for c in cases:
            if c["ours"] != c["expected"] or c["mv"] != c["expected"]:
                print(f"\n[{c['test']}{' core' if is_core(c) else ''}] expected={int(c['expected'])} ours={int(c['ours'])} mv={int(c['mv'])}\n"
                      f"  gold: {c['gold'][:200]!r}\n  pred: {c['pred'][:200]!r}")


if __name__ == "__main__":
    main()

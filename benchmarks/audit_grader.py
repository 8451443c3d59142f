"""Disagreement audit: reward.py's simplerl grader beside math-verify, on real responses and on golds.

    python benchmarks/audit_grader.py [--out docs/grader-audit.md]

Two sets of pairs, each graded by both (math-verify is a benchmark-only dependency,
requirements-bench.txt):

1. The 800 recorded Qwen2.5-Math-7B responses (../shared/data/eval/eval_rm_maj_example/
   math_cot_100.jsonl) against their golds, with the paper harness's verdicts beside.
2. Gold-vs-gold rewrites of the eight benchmarks evaluate.py grades (golds as evaluate.py reads
   them): each gold boxed verbatim; respelled (\\frac <-> \\dfrac, ^\\circ <-> ^{\\circ},
   \\le <-> \\leq, \\ge <-> \\geq; only golds that have one of these); labelled ("y = gold",
   golds without relations, lists or words); MATH-500's answer field against its solution's box;
   and, as a false-positive probe, each gold against the next gold of its benchmark (a different
   problem: equal only when the two answers are).

Every pair on which the two graders disagree is listed with both verdicts and a reason (`reason`:
the classes found by reading each disagreement; "unreviewed" for a pair outside them).  Writes the markdown note.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import reward  # noqa: E402

DATA = ROOT.parent / "shared" / "data"



def reason(p: dict) -> str:
    """Why the two graders differ on a pair: the classes found by reading every disagreement."""
    ours, mv, gold, answer = p["ours"], p["mv"], p["gold"], p["answer"]
    if p["kind"] == "next gold" and mv and not ours:
        if gold.strip() == "1":
            return "math-verify FP: it takes the `1` out of an equation or a sentence; a different problem's answer"
        return ("math-verify FP: two different problems' sentence-long golds (matrices, systems, eigenvectors); "
                "it compares a fragment it parsed out of each")
    if p["kind"] == "labelled" and not ours and mv:
        return "reward.py FN: a unit glued to the number after a label (`y = 2s`, `y = 6m`) is not dropped"
    if p["kind"] == "labelled" and ours and not mv:
        if "%" in gold:
            return "math-verify FN: the label is not dropped before a percentage"
        if "./" in gold:
            return "math-verify FN: a C-style literal (`-1./3`) after a label"
        return "math-verify FN: the label is not dropped before this gold (a trailing period, `@`, subscripts)"
    if p["kind"] == "respelled" and ours and not mv:
        return ("math-verify FN: a sentence or set-builder gold respelled (`\\geq`/`\\ge`, `\\dfrac`, `^\\circ`); "
                "reward.py spells both the same")
    return "unreviewed"


def mv_equal(gold: str, response: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse("\\boxed{" + gold + "}"), parse(reward.cut_at_stop(response))))
    except Exception:
        return False


def respell(g: str) -> str | None:
    """The same gold in another common spelling; None when none of these spellings occurs in it."""
    out = g.replace("\\dfrac", "\x00").replace("\\frac", "\\dfrac").replace("\x00", "\\frac")
    out = out.replace("^{\\circ}", "\x01").replace("^\\circ", "^{\\circ}").replace("\x01", "^\\circ")
    for short, long in (("le", "leq"), ("ge", "geq")):
        out = re.sub(r"\\" + long + r"(?![a-zA-Z])", "\x02", out)
        out = re.sub(r"\\" + short + r"(?![a-zA-Z])", "\\\\" + long, out)
        out = out.replace("\x02", "\\" + short)
    return out if out != g else None


def labelled(g: str) -> str | None:
    """"y = gold" for a scalar gold (no relation, list or text in it)."""
    if re.search(r"[=,;<>:]|\\(?:in|text|le|ge|approx|ne)", g) or not any(c.isdigit() for c in g):
        return None
    if re.search(r"[a-zA-Z]{2,}", re.sub(r"\\[a-zA-Z]+", "", g)):  # a word: a unit or text
        return None
    return ("k" if "y" in g else "y") + " = " + g


def gold_pairs() -> list[dict]:
    pairs = []
    for bench in evaluate.BENCHMARKS:
        problems, _ = evaluate.load_benchmark(str(DATA / "eval"), bench, "qwen25-math-cot")
        golds = [p["gold"] for p in problems]
        for i, p in enumerate(problems):
            g = p["gold"]
            rewrites = [("verbatim", g), ("respelled", respell(g)), ("labelled", labelled(g))]
            for kind, answer in rewrites:
                if answer is not None:
                    pairs.append(dict(set=bench, kind=kind, gold=g, answer=answer, want=True, question=p["question"]))
            nxt = golds[(i + 1) % len(golds)]
            pairs.append(dict(set=bench, kind="next gold", gold=g, answer=nxt, want=None, question=p["question"]))
    rows = [json.loads(line) for line in (DATA / "eval/math500/test.jsonl").open()]
    for r in rows:
        pairs.append(dict(set="math500", kind="answer field", gold=r["answer"], want=True, question=r["problem"],
                          answer=reward.extract_boxed(r["solution"])))
    for p in pairs:
        p["response"] = "The final answer is $\\boxed{" + p["answer"] + "}$."
    return pairs


def response_pairs() -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "eval/eval_rm_maj_example/math_cot_100.jsonl").open()]
    return [dict(set="math_cot_100", kind="response", gold=r["gt"], response=c, harness=bool(s),
                 answer=reward.extract_answer(reward.cut_at_stop(c)) or "", question=r["question"])
            for r in rows for c, s in zip(r["code"], r["score"])]


def md(s: str, n: int = 90) -> str:
    s = " ".join(str(s).split())
    s = s if len(s) <= n else s[: n - 3] + "..."
    return "`" + s.replace("`", "'").replace("|", "\\|") + "`"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "grader-audit.md")
    args = ap.parse_args()
    resp, golds = response_pairs(), gold_pairs()
    pairs = resp + golds
    ours = reward.batch_compute_scores([p["response"] for p in pairs], [p["gold"] for p in pairs], timeout=5.0,
                                       num_workers=1, batch_timeout=None, questions=[p["question"] for p in pairs])
    print(f"reward.py: {len(pairs)} pairs graded", file=sys.stderr)
    for i, (p, score) in enumerate(zip(pairs, ours)):
        p["ours"], p["mv"] = score == 1.0, mv_equal(p["gold"], p["response"])
        if i % 2000 == 0:
            print(f"math-verify: {i}/{len(pairs)}", file=sys.stderr, flush=True)
    lines = ["# Grader audit: reward.py (simplerl) beside math-verify 0.9", "",
             "Written by `python benchmarks/audit_grader.py` (see its docstring for the pairs).  Every pair on",
             "which the two graders disagree is listed with both verdicts and the reason.", ""]
    agree_h = sum(p["ours"] == p["harness"] for p in resp)
    agree_mv_h = sum(p["mv"] == p["harness"] for p in resp)
    lines += ["## 1. The 800 recorded Qwen2.5-Math-7B responses", "",
              f"Agreement with the paper harness's verdicts: reward.py {agree_h}/800, math-verify {agree_mv_h}/800; "
              f"reward.py and math-verify disagree on {sum(p['ours'] != p['mv'] for p in resp)}.", "",
              "| gold | answer (last box) | harness | reward.py | math-verify | reason |", "|---|---|---|---|---|---|"]
    for p in resp:
        if p["ours"] != p["mv"]:
            lines.append(f"| {md(p['gold'], 40)} | {md(p['answer'], 60)} | {int(p['harness'])} | {int(p['ours'])} "
                         f"| {int(p['mv'])} | {reason(p)} |")
    lines += ["", "## 2. Gold-vs-gold rewrites of the eight benchmarks", "",
              "| benchmark | rewrite | pairs | reward.py equal | math-verify equal | disagree |",
              "|---|---|---:|---:|---:|---:|"]
    keys = sorted({(p["set"], p["kind"]) for p in golds})
    for bench, kind in keys:
        part = [p for p in golds if (p["set"], p["kind"]) == (bench, kind)]
        lines.append(f"| {bench} | {kind} | {len(part)} | {sum(p['ours'] for p in part)} | "
                     f"{sum(p['mv'] for p in part)} | {sum(p['ours'] != p['mv'] for p in part)} |")
    lines += ["", "Every disagreement (a rewrite should be equal; a next gold is equal only when the two answers are):",
              "", "| benchmark | rewrite | gold | answer | reward.py | math-verify | reason |",
              "|---|---|---|---|---|---|---|"]
    for p in golds:
        if p["ours"] != p["mv"]:
            lines.append(f"| {p['set']} | {p['kind']} | {md(p['gold'], 50)} | {md(p['answer'], 50)} | {int(p['ours'])} "
                         f"| {int(p['mv'])} | {reason(p)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {sum(p['ours'] != p['mv'] for p in resp)} + {sum(p['ours'] != p['mv'] for p in golds)} "
          f"disagreements; harness agreement {agree_h}/800")


if __name__ == "__main__":
    main()

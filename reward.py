"""reward.py: prompts, answer extraction and the rule-based reward of SimpleRL-Zero.

The reward (simpleRL-reason v0, `preprocess_box_response_for_qwen_prompt`):

    response is cut at the first stop word, then
      no "boxed" anywhere in it          -> -1.0   (format penalty)
      boxed answer equal to the gold     -> +1.0
      boxed answer not equal to the gold -> -0.5

"Equal" is decided by `math_equal(pred, gold)`, a pipeline that tries the cheap
tests first and stops at the first stage that can decide:

    1. exact string match
    2. normalised string match (LaTeX noise, units, \\text{}, \\dfrac, ^\\circ, \\$ ... removed)
    3. multiple-choice letters                               (A-E, "(C)", "\\text{(C)}")
    4. numbers: ints, decimals, fractions, mixed numbers, a/b, thousands separators,
       scientific notation, percent -- exact rationals; a tolerance only for decimals
    5. structure: tuples (ordered), sets and bare lists (unordered), intervals (brackets
       must match), matrices, unions; elements compared recursively
    6. symbolic: sympy's LaTeX grammar (never eval/sympify), size-guarded, compared
       numerically at capped precision (random points when there are variables);
       equations equal up to scale, inequalities up to a positive scale.

Stages 1-4 are the fast path (`_quick_equal`): pure string work, microseconds.  Only
pairs it cannot decide reach stages 5-6; the batch entry points send those to a
persistent pool of grader subprocesses, each comparison bounded by a timeout, and a
worker that hangs is killed and replaced (the pair counts as wrong).

Untrusted input: model output is attacker-controlled.  Nothing here evaluates it as
Python.  Sympy objects are only built by `sympy.parsing.latex.parse_latex`, a grammar,
and only after length/depth/digit guards; exponents, factorials and node counts are
bounded before any numeric evaluation.

Decisions a grader has to make (and that an RL policy could exploit):
  * percent is a unit meaning x/100: "50\\%" equals "50" and "0.5", but a bare 5 never
    equals 500 or 0.05 (the Qwen grader's gold*100 / gold/100 leniency is not copied);
  * two exact numbers must be exactly equal; a decimal matches when it is within 1e-4
    relative AND within one unit of its last written digit, i.e. a correct rounding or
    truncation (0.3333 == 1/3 and 3.1416 == \\pi, but 10001 != 10000, 0.33 != 1/3,
    3.14 != \\pi and 9999.857142857143 != 10000);
  * open and closed intervals differ; sets and bare lists ignore order, tuples do not;
  * a label is dropped: "x = 3" == "3", "(p,q)=(3,2)" == "(3,2)".
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from fractions import Fraction
from pathlib import Path

# ----------------------------------------------------------------------------------
# Prompts

# Rendered exactly as the harness's templates look after `.format` ("\\boxed{{}}" -> "\boxed{}").
TEMPLATES: dict[str, str] = {
    # SimpleRL-Zero v0 training prompt (the `input` field of the training set): no "\n" after assistant.
    "simplerl": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant"
    ),
    # simpleRL-reason eval/utils.py PROMPT_TEMPLATES["qwen25-math-cot"] (eval default).
    "qwen25-math-cot": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ),
    # PROMPT_TEMPLATES["qwen-boxed"], the SimpleRL-Zoo prompt.
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{question}\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # The CPU world's short prompt (character-level tokens are expensive).
    "tiny": "Q: {question}\nA:",
}


def apply_template(question: str, template: str = "simplerl") -> str:
    """Fill a template with a question.  Not str.format: questions contain braces."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template].replace("{question}", question, 1)


# simpleRL-reason v0 stops generation (vLLM `stop`, PPO and eval alike) at these strings and
# cuts the text at them before grading; "</s>" is a Llama/Mistral EOS kept for parity.
STOP_WORDS: list[str] = ["</s>", "<|im_end|>", "<|endoftext|>"]


def cut_at_stop(response: str, stop_words: list[str] = STOP_WORDS) -> str:
    """The response up to the first occurrence of any stop word (stripped, as in v0)."""
    cut = len(response)
    for word in stop_words:
        at = response.find(word, 0, cut)
        if at != -1:
            cut = at
    return response[:cut].strip()


# ----------------------------------------------------------------------------------
# Answer extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
MAX_ANSWER_CHARS = 1000  # longer extracted answers are graded by exact match only


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """All \\boxed{...}/\\fbox{...}/\\boxed 5 as (start, end, content); unbalanced ones skipped."""
    found = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):  # iterative brace matching: deep nesting costs nothing
                c = text[j]
                if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
                    j += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0 and j < len(text):
                found.append((m.start(), j + 1, text[i + 1 : j]))
        elif i > m.end():  # "\boxed 5": the token after the space, up to "$" or whitespace
            token = re.match(r"[^\s$]+", text[i : i + MAX_ANSWER_CHARS])
            if token:
                found.append((m.start(), i + token.end(), token.group(0)))
    return found


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, \\boxed 5), braces matched."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


# Between two boxes, only these mean "the answer is both": "\boxed{1} and \boxed{2}".
_BOX_SEPARATOR_RE = re.compile(r"^[\s$,;.]*(?:\\text\{\s*(?:and|or)\s*\}|and|or|\\quad|\\qquad)?[\s$,;.]*$")


def _boxed_answer(text: str) -> str | None:
    """The last box; trailing boxes separated only by commas/"and" are joined into a list."""
    boxes = _boxes(text)
    if not boxes:
        return None
    parts = [boxes[-1][2]]
    for prev, nxt in zip(reversed(boxes[:-1]), reversed(boxes[1:])):
        if nxt[0] - prev[1] > 40 or not _BOX_SEPARATOR_RE.match(text[prev[1] : nxt[0]]):
            break
        parts.append(prev[2])
    return ", ".join(reversed(parts))


def extract_answer(text: str) -> str | None:
    """Boxed answer first, then the harness fall-backs: "the answer is ...", last number."""
    boxed = _boxed_answer(text)
    if boxed is not None:
        return boxed.strip()
    if "final answer is $" in text and "$. I hope" in text:  # Minerva's few-shot format
        return text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    for phrase in ("he answer is", "final answer is"):
        at = text.rfind(phrase)
        if at != -1:
            tail = text[at + len(phrase) :].strip().lstrip(":").strip()
            tail = tail.split("\n", 1)[0].strip()
            tail = re.sub(r"[.\s]+$", "", tail).strip("$ ")
            if tail:
                return tail
    numbers = re.findall(r"-?\d+(?:\.\d+)?|-?\.\d+", re.sub(r"(?<=\d),(?=\d)", "", text))
    return numbers[-1] if numbers else None


# ----------------------------------------------------------------------------------
# Normalisation (stage 2): strings that mean the same become the same string

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ",
    "\u00f7": "\\div ", "\u221a": "\\sqrt", "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u2264": "\\le ",
    "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b0": "^\\circ", "\u00b2": "^2", "\u00b3": "^3", "\u222a": "\\cup ",
    "\u2229": "\\cap ", "\u2208": "\\in ", "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4", "\u2205": "\\emptyset ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

_REPLACEMENTS = [  # applied in order; mostly spelling variants of the same LaTeX
    ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
    ("\\displaystyle", ""), ("\\left", ""), ("\\right", ""), ("\\bigl", ""), ("\\bigr", ""),
    ("\\Bigl", ""), ("\\Bigr", ""), ("\\big", ""), ("\\Big", ""),
    ("\\leqslant", "\\le"), ("\\geqslant", "\\ge"), ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\neq", "\\ne"),
    ("\\lt", "<"), ("\\gt", ">"), ("bmatrix", "pmatrix"), ("vmatrix", "pmatrix"),
    ("\\mathrm{", "\\text{"), ("\\textrm{", "\\text{"), ("\\textbf{", "\\text{"), ("\\mathbf{", "\\text{"),
    ("\\mbox{", "\\text{"), ("\\textit{", "\\text{"), ("\\operatorname{", "\\text{"), ("\\textnormal{", "\\text{"),
    ("\\!", ""), ("\\;", " "), ("\\:", " "), ("\\quad", " "), ("\\qquad", " "), ("~", " "),
    ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("\\degree", ""), ("^{\\prime}", "'"),
    ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
    ("\\%", "%"), ("\\emptyset", "\\{\\}"), ("\\varnothing", "\\{\\}"), ("\\infin", "\\infty"),
    ("+\\infty", "\\infty"), ("infinity", "\\infty"),
]

_THOUSANDS_RE = re.compile(r"^[-+]?[1-9]\d{0,2}(?:(?:,|\{,\}|\\,)\d{3})+(?:\.\d+)?%?$")
_NUMBER_TOKEN = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
# A unit after a number: "5 cm", "12 dollars", "3 square feet" (letters only, after a space).
_UNIT_WORDS_RE = re.compile(r"^(" + _NUMBER_TOKEN + r"%?)\s+(?:[a-zA-Z]{2,}\.?\s*){1,3}(?:\^\{?\d\}?)?$")
_TEXT_RE = re.compile(r"\\text\{([^{}]*)\}")


def _unwrap_boxes(s: str) -> str:
    """Replace every \\boxed{X} by X (golds and some answers carry them)."""
    for _ in range(8):
        boxes = _boxes(s)
        if not boxes:
            break
        for start, end, content in reversed(boxes):
            s = s[:start] + content + s[end:]
    return s


def _strip_trailing_units(s: str) -> str:
    """Drop a trailing \\text{...} unit ("5\\text{ cm}", "10 \\text{ meters}^2") if something is left."""
    for _ in range(2):
        m = re.search(r"\\text\{[^{}]*\}(?:\^\{?\d\}?)?$", s)
        if not m:
            break
        head = s[: m.start()].strip()
        word = re.sub(r"[^a-zA-Z]", "", m.group(0)[6:])
        # Keep "\text{(C)}"-like choices and connectives; drop units only after something numeric.
        if not head or not word or word in ("or", "and") or head.endswith(("=", ",", "(")):
            break
        s = head
    m = _UNIT_WORDS_RE.match(s)
    if m:
        s = m.group(1)
    return s


def _fix_fracs_and_roots(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}, sqrt(2) -> \\sqrt{2}, pi -> \\pi."""
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![\\a-zA-Z])sqrt\(([^()]*)\)", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![\\a-zA-Z])sqrt\{", r"\\sqrt{", s)
    s = re.sub(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])", r"\\pi ", s)
    s = re.sub(r"(?<![\\a-zA-Z])inf(?![a-zA-Z])", r"\\infty ", s)
    s = s.replace("**", "^")
    return s


def normalize(s: str) -> str:
    """Canonical spelling of an answer string: the stage-2 key, and the input to later stages."""
    s = s[: MAX_ANSWER_CHARS * 2]
    s = s.replace("\x00", "")
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = unicodedata.normalize("NFKC", s)
    s = "".join(c for c in s if c.isprintable() or c == " ").strip()
    s = _unwrap_boxes(s)
    s = s.replace("\\\\", "\x01")  # protect the row separator "\\" from the spacing rules
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", "", s, flags=re.I)
    s = _strip_trailing_units(s)
    s = _TEXT_RE.sub(lambda m: m.group(1).strip(), s)  # remaining \text{X} -> X
    s = s.replace("\\,", ",") if _THOUSANDS_RE.match(s.strip()) else s.replace("\\,", " ")
    s = s.replace("\\ ", " ").strip()
    if _THOUSANDS_RE.match(s):  # "2,125", "32{,}349" -- but "32, 349" (with a space) is a pair
        s = s.replace("{,}", "").replace(",", "")
    s = s.replace("{,}", ",")
    s = re.sub(r"\s+", "", s)
    s = _fix_fracs_and_roots(s)
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = s.rstrip(".")
    if s.startswith("+") and len(s) > 1:
        s = s[1:]
    s = re.sub(r"\{\(([A-E])\)\}", r"(\1)", s)
    s = s.replace("\x01", "\\\\")
    m = re.match(r"^[\[(](\\begin\{(\w+)\}.*\\end\{\2\})[\])]$", s)
    return m.group(1) if m else s  # "\left[\begin{array}...\end{array}\right]" is the matrix


# ----------------------------------------------------------------------------------
# Stage 3: multiple choice

_CHOICE_RE = re.compile(r"^\(?([A-E])\)?(?:[.:]|\(?[^A-Za-z].*)?$")


def _choice(s: str) -> str | None:
    """The letter of a multiple-choice answer: "C", "(C)", "C.", "(C)12"."""
    m = _CHOICE_RE.match(s)
    if m and (len(s) == 1 or s[0] == "(" or s[1] in ".:)"):
        return m.group(1)
    return None


# ----------------------------------------------------------------------------------
# Stage 4: numbers, as exact rationals

_INT = r"\d{1,400}"
_DEC_RE = re.compile(r"^(?:\d{1,400}(?:\.\d{0,400})?|\.\d{1,400})$")
_SCI_RE = re.compile(r"^(\d{1,400}(?:\.\d{0,400})?)(?:e|E|\\times10\^|\\cdot10\^|\*10\^)\{?([-+]?\d{1,3})\}?$")
_FRAC_RE = re.compile(r"^\\frac\{(-?" + _INT + r")\}\{(-?" + _INT + r")\}$")
_SLASH_RE = re.compile(r"^(" + _INT + r")/(" + _INT + r")$")
_MIXED_RE = re.compile(r"^(" + _INT + r")\\frac\{(" + _INT + r")\}\{(" + _INT + r")\}$")
_POW10_RE = re.compile(r"^10\^\{?([-+]?\d{1,3})\}?$")


def parse_number(s: str) -> tuple[Fraction, int | None, bool] | None:
    """A normalised string as (value, decimal places or None if exact, is_percent), or None."""
    if not s or len(s) > 900:
        return None
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    sign = 1
    while s[:1] in ("-", "+"):
        sign, s = (-sign if s[0] == "-" else sign), s[1:]
    if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1]
    value, places = None, None
    try:
        if _DEC_RE.match(s):
            value, places = Fraction(s), _places(s)
        elif m := _FRAC_RE.match(s):
            value = Fraction(int(m.group(1)), int(m.group(2)))
        elif m := _SLASH_RE.match(s):
            value = Fraction(int(m.group(1)), int(m.group(2)))
        elif m := _MIXED_RE.match(s):  # 7\frac{3}{4} is 7 + 3/4 (MATH's convention)
            value = int(m.group(1)) + Fraction(int(m.group(2)), int(m.group(3)))
        elif m := _SCI_RE.match(s):
            exp = int(m.group(2))
            value = Fraction(m.group(1)) * Fraction(10) ** exp
            places = None if _places(m.group(1)) is None else _places(m.group(1)) - exp
        elif m := _POW10_RE.match(s):
            value = Fraction(10) ** int(m.group(1))
    except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() accepts
        return None
    if value is None:
        return None
    value *= sign
    return (value / 100 if percent else value), places, percent


def _places(s: str) -> int | None:
    """Decimal places of the coarsest decimal literal in s ("3.14" -> 2), None if there is none."""
    found = [len(m) for m in re.findall(r"\d*\.(\d+)", s[:MAX_ANSWER_CHARS])]
    return min(found) if found else None


def _coarsest(*places: int | None) -> int | None:
    known = [p for p in places if p is not None]
    return min(known) if known else None


def _close(a: Fraction, b: Fraction, places: int | None) -> bool:
    """Exact numbers must match exactly; a decimal must be a rounding/truncation of the other."""
    if a == b:
        return True
    if places is None:
        return False
    diff = abs(a - b)
    return diff <= Fraction(1, 10**4) * max(abs(a), abs(b)) and diff <= Fraction(1, 10 ** max(0, places))


def _numbers_equal(p: tuple[Fraction, int | None, bool], g: tuple[Fraction, int | None, bool]) -> bool:
    (pv, pplaces, ppct), (gv, gplaces, gpct) = p, g
    if ppct == gpct:
        return _close(pv, gv, _coarsest(pplaces, gplaces))
    # One side says "%": it equals its value (x/100) or the bare number (the unit dropped).
    (pct, pct_places), (other, other_places) = ((pv, pplaces), (gv, gplaces)) if ppct else ((gv, gplaces), (pv, pplaces))
    as_value = _close(pct, other, _coarsest(None if pct_places is None else pct_places + 2, other_places))
    return as_value or _close(pct * 100, other, _coarsest(pct_places, other_places))


# ----------------------------------------------------------------------------------
# Labels: "x = 3" -> "3", "(p,q)=(3,2)" -> "(3,2)"

_VAR = r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?'?"
_LABEL_RE = re.compile(r"^(?:" + _VAR + r"|\(" + _VAR + r"(?:," + _VAR + r")+\)|[a-zA-Z]+\(" + _VAR + r"\))(?:=(?!=)|\\in(?![a-zA-Z]))")


def _label_end(s: str) -> int:
    """Length of a leading "x=" / "(p,q)=" / "f(x)=" label, 0 if none."""
    if s.count("=") + len(re.findall(r"\\in(?![a-zA-Z])", s)) == 1 and "\\le" not in s and "\\ge" not in s:
        m = _LABEL_RE.match(s)
        if m and len(s) > m.end():
            return m.end()
    return 0


def _strip_labels(p: str, g: str) -> tuple[str, str]:
    """Drop labels unless the other side is a real equation ("y=2x+1" vs "2x-y+1=0" stays)."""
    pl, gl = _label_end(p), _label_end(g)
    strip_p = pl and ("=" not in g or gl)
    strip_g = gl and ("=" not in p or pl)
    return (p[pl:] if strip_p else p), (g[gl:] if strip_g else g)


# ----------------------------------------------------------------------------------
# The fast path: stages 1-4

_LATEX_NAMES = re.compile(r"\\[a-zA-Z]+")


def _letters(s: str) -> set[str]:
    """Variable-like letters of a normalised answer (LaTeX command names and e, i removed)."""
    return set(re.findall(r"[a-zA-Z]", _LATEX_NAMES.sub("", s))) - {"e", "i"}


def _quick_equal(pred: str, gold: str) -> bool | None:
    """Decide with string and number work only; None when the structural/symbolic stages must."""
    if pred == gold:
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > 4 * MAX_ANSWER_CHARS:
        return False
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    if not p or not g:
        return False
    if p.isalpha() and g.isalpha() and max(len(p), len(g)) >= 4:  # words ("Evelyn"), not products
        return p.lower() == g.lower()
    gc = _choice(g)
    if gc is not None and not _letters(g) - {gc}:  # a gold that is just a letter
        pc = _choice(p)
        return pc == gc if pc is not None else (p == gc)
    p, g = _strip_labels(p, g)
    if p == g:
        return True
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return _numbers_equal(pn, gn)
    if gn is not None and _letters(p) and "=" not in p:  # "x+1" is never a number
        return False
    if pn is not None and _letters(g) and "=" not in g:
        return False
    return None


# ----------------------------------------------------------------------------------
# Stage 5: structure -- tuples, intervals, sets, lists, matrices

_OPEN, _CLOSE = "([{", ")]}"
_MATRIX_RE = re.compile(r"^\\begin\{(?:pmatrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{(?:pmatrix|array)\}$")


def _split_top(s: str, sep: str) -> list[str]:
    """Split at `sep` outside all brackets (intervals make "(" and "]" a pair, so depth is shared)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _outer_pair(s: str) -> bool:
    """Does the first bracket of s close at its last character?"""
    depth = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _structure(s: str) -> tuple[str, list, str] | None:
    """(kind, items, brackets) for compound answers, None for a scalar."""
    if m := _MATRIX_RE.match(s):
        rows = [r for r in m.group(1).split("\\\\") if r]
        return "matrix", [r.split("&") for r in rows], ""
    if s.startswith("\\{") and s.endswith("\\}") and _outer_pair(s[1:-2] + "}"):
        inner = s[2:-2]
        return "set", ([] if not inner else _split_top(inner, ",")), ""
    for union in ("\\cup", "\\text{or}", "or"):
        pieces = _split_top(s, union)
        if len(pieces) > 1 and all(len(x) > 2 and x[0] in "([" and x[-1] in ")]" for x in pieces):
            return "union", pieces, ""
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and _outer_pair(s):
        items = _split_top(s[1:-1], ",")
        if len(items) > 1:
            return "tuple", items, s[0] + s[-1]
    items = [x for x in _split_top(s, ",") if x != ""]
    if len(items) > 1:
        return "list", items, ""
    for sep in ("\\text{and}", "\\text{or}", "and", "or", ";"):
        items = _split_top(s, sep)
        if len(items) > 1 and all(items):
            return "list", items, ""
    return None


_INEQ_RE = re.compile(r"^(?:(?P<a>[^<>=\\]+?)(?P<op1><|\\le))?(?P<v>[a-zA-Z])(?P<op2><|\\le|>|\\ge)(?P<b>[^<>=\\]+?)$")


def _inequality_to_interval(s: str) -> str:
    """x>3 -> (3,\\infty);  -1\\le x<2 -> [-1,2);  3<x -> (3,\\infty).  Other strings unchanged."""
    s = s.replace("\\le", "<=").replace("\\ge", ">=")
    m = re.match(r"^([^<>=]+?)(<=|<|>=|>)([a-zA-Z])$", s)
    if m:  # "3<x" is "x>3"
        flip = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
        s = m.group(3) + flip[m.group(2)] + m.group(1)
    m = re.match(r"^(?:([^<>=]+?)(<=|<))?([a-zA-Z])(<=|<|>=|>)([^<>=]+)$", s)
    if not m or (m.group(1) and m.group(4) in (">", ">=")):
        return s.replace("<=", "\\le").replace(">=", "\\ge")
    low, low_op, _, op, high = m.groups()
    if low is not None:
        return ("[" if low_op == "<=" else "(") + low + "," + high + ("]" if op == "<=" else ")")
    if op in ("<", "<="):
        return "(-\\infty," + high + ("]" if op == "<=" else ")")
    return ("[" if op == ">=" else "(") + high + ",\\infty)"


def _match_unordered(ps: list[str], gs: list[str], depth: int) -> bool:
    if len(ps) != len(gs) or len(ps) > 40:
        return False
    left = list(ps)
    for g in gs:
        for i, p in enumerate(left):
            if _equal(p, g, depth + 1):
                del left[i]
                break
        else:
            return False
    return True


def _match_ordered(ps: list[str], gs: list[str], depth: int) -> bool:
    return len(ps) == len(gs) and all(_equal(p, g, depth + 1) for p, g in zip(ps, gs))


def _structures_equal(ps: tuple, gs: tuple, depth: int) -> bool:
    (pk, pi, pb), (gk, gi, gb) = ps, gs
    if pk == gk == "matrix":
        return len(pi) == len(gi) and all(_match_ordered(a, b, depth) for a, b in zip(pi, gi))
    if "matrix" in (pk, gk):  # a column/row vector written as a tuple
        mat, other = (pi, gi) if pk == "matrix" else (gi, pi)
        flat = [x for row in mat for x in row]
        vector = len(mat) == 1 or all(len(row) == 1 for row in mat)
        return vector and "tuple" in (pk, gk) and _match_ordered(flat, other, depth)
    if pk == gk == "tuple":
        return pb == gb and _match_ordered(pi, gi, depth)
    if pk == gk == "union":
        return _match_unordered(pi, gi, depth)
    if {pk, gk} == {"tuple", "list"}:  # "1, 2" for "(1, 2)": the order still matters
        return _match_ordered(pi, gi, depth)
    if {pk, gk} <= {"set", "list"}:
        return _match_unordered(pi, gi, depth)
    return False


# ----------------------------------------------------------------------------------
# Stage 6: symbolic, through sympy's LaTeX grammar (never eval/sympify on model text)

MAX_SYMBOLIC_CHARS = 300
MAX_EXPONENT = 4096
MAX_NODES = 400
_RNG_POINTS = [(1.2345, 0.8765, 2.1357), (0.6789, 1.9876, 1.4142), (1.7321, 0.5432, 0.9182)]


class _TooBig(Exception):
    pass


def _guard_text(s: str) -> bool:
    """Cheap pre-parse limits: length, brace depth, digits, powers."""
    if len(s) > MAX_SYMBOLIC_CHARS or s.count("^") > 12 or re.search(r"\d{50}", s):
        return False
    depth = 0
    for c in s:
        depth += c == "{"
        depth -= c == "}"
        if depth > 20 or depth < 0:
            return False
    return depth == 0


def _to_sympy(s: str):
    """Parse a normalised answer with sympy's LaTeX grammar; None if it cannot be parsed."""
    import sympy
    from sympy.parsing.latex import parse_latex

    if not _guard_text(s) or "\\pm" in s or "\\mp" in s:
        return None
    s = s.replace("\\infty", "\\infty ").replace("%", "\\cdot\\frac{1}{100}")
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"(?<![\\a-zA-Z])([a-zA-Z])\(", r"\1\\cdot(", s)  # n(n+1) is a product, not a call
    try:
        expr = parse_latex(s, strict=True)
    except Exception:  # LaTeXParsingError, RecursionError, antlr errors, ...
        return None
    names = {str(x): x for x in expr.free_symbols}
    constants = (("e", sympy.E), ("i", sympy.I), ("pi", sympy.pi), ("\\pi", sympy.pi))
    subs = {names[n]: v for n, v in constants if n in names}
    if subs:
        expr = expr.xreplace(subs)
    _check_size(expr)
    return expr


def _check_size(expr) -> None:
    """Refuse trees whose numeric evaluation could explode: 9^{9^{9^9}}, 100000!, huge trees."""
    import sympy

    nodes = 0
    for node in sympy.preorder_traversal(expr):
        nodes += 1
        if nodes > MAX_NODES:
            raise _TooBig
        if isinstance(node, sympy.Pow) and not node.exp.free_symbols:
            base = node.base
            exp = _bounded_eval(node.exp)
            if exp is None or (abs(exp) > MAX_EXPONENT and not (base.is_number and abs(_bounded_eval(base) if _bounded_eval(base) is not None else 2) <= 1)):
                raise _TooBig
        elif isinstance(node, (sympy.factorial, sympy.binomial, sympy.gamma)) and node.args[0].is_number:
            if abs(_bounded_eval(node.args[0]) or 10**9) > 1000:
                raise _TooBig


def _bounded_eval(expr) -> complex | None:
    """Numeric value of a constant subtree, after its own powers were checked."""
    try:
        _check_size(expr) if len(expr.args) else None
        value = complex(expr.evalf(20))
        return None if value != value else value  # NaN
    except _TooBig:
        raise
    except Exception:
        return None


def _value(expr, point: dict) -> complex | None:
    try:
        v = complex(expr.evalf(30, subs=point)) if point else complex(expr.evalf(30))
    except Exception:
        return None
    if v != v or abs(v) == float("inf"):
        return None
    return v


def _values_close(a: complex, b: complex, places: int | None) -> bool:
    """Exact forms agree to 1e-9 relative; with a decimal literal, the rule of _close."""
    diff, scale = abs(a - b), max(abs(a), abs(b))
    if diff < 1e-12 or diff <= 1e-9 * scale:
        return True
    return places is not None and diff <= 1e-4 * scale and diff <= 10.0 ** -places * (1 + 1e-9)


def _points(symbols) -> list[dict]:
    ordered = sorted(symbols, key=str)
    if len(ordered) > 3:  # more variables than we sample: extend deterministically
        rng = random.Random(0)
        return [{s: rng.uniform(0.5, 2.5) for s in ordered} for _ in range(3)]
    return [dict(zip(ordered, pt)) for pt in _RNG_POINTS]


def _exprs_equal(p, g, places: int | None) -> bool:
    """Equal values at every sample point (one point when there are no variables)."""
    import sympy

    if p.free_symbols != g.free_symbols:
        return False
    if p.has(sympy.oo, -sympy.oo, sympy.zoo) or g.has(sympy.oo, -sympy.oo, sympy.zoo):
        return p == g
    points = _points(p.free_symbols) if p.free_symbols else [{}]
    agreed = 0
    for point in points:
        a, b = _value(p, point), _value(g, point)
        if a is None and b is None:
            continue  # both undefined here (e.g. log of a negative): no evidence either way
        if a is None or b is None or not _values_close(a, b, places):
            return False
        agreed += 1
    if agreed:
        return True
    try:  # nothing evaluable: let sympy try on small expressions only
        return sympy.count_ops(p - g) < 40 and sympy.simplify(p - g) == 0
    except Exception:
        return False


def _relations_equal(p, g) -> bool:
    """Equations equal up to a nonzero scale, inequalities up to a positive one (x>3 == 3<x == 2x>6)."""
    import sympy

    def canonical(r):  # as (lhs - rhs, kind) with "<"/"<=" flipped to ">"/">="
        if isinstance(r, (sympy.StrictLessThan, sympy.LessThan)):
            return r.rhs - r.lhs, ">" if isinstance(r, sympy.StrictLessThan) else ">="
        kind = {sympy.Equality: "=", sympy.Unequality: "!=", sympy.StrictGreaterThan: ">", sympy.GreaterThan: ">="}
        return r.lhs - r.rhs, kind.get(type(r))

    (pd, pk), (gd, gk) = canonical(p), canonical(g)
    if pk != gk or pk is None or pd.free_symbols != gd.free_symbols or not pd.free_symbols:
        return False
    ratios = []
    for point in _points(pd.free_symbols):
        a, b = _value(pd, point), _value(gd, point)
        if a is None or b is None or abs(b) < 1e-12:
            continue
        ratios.append(a / b)
    if not ratios or abs(ratios[0]) < 1e-12:
        return False
    if pk in (">", ">=") and (abs(ratios[0].imag) > 1e-9 or ratios[0].real <= 0):
        return False
    return all(_values_close(r, ratios[0], None) for r in ratios)


def _symbolic_equal(p: str, g: str) -> bool:
    import sympy

    try:
        pe, ge = _to_sympy(p), _to_sympy(g)
        if pe is None or ge is None:
            return False
        places = _coarsest(_places(p), _places(g))
        p_rel, g_rel = isinstance(pe, sympy.core.relational.Relational), isinstance(ge, sympy.core.relational.Relational)
        if p_rel or g_rel:
            return p_rel and g_rel and _relations_equal(pe, ge)
        return _exprs_equal(pe, ge, places)
    except (_TooBig, RecursionError, MemoryError, OverflowError, ValueError, TypeError, AttributeError, ZeroDivisionError):
        return False


# ----------------------------------------------------------------------------------
# The pipeline


def _equal(pred: str, gold: str, depth: int = 0) -> bool:
    if depth > 4:  # nested structures deeper than this are not answers
        return False
    quick = _quick_equal(pred, gold)
    if quick is not None:
        return quick
    p, g = _strip_labels(normalize(pred), normalize(gold))
    # "x>3" becomes "(3,\infty)" only to meet an interval; two inequalities compare symbolically.
    pi, gi = _inequality_to_interval(p), _inequality_to_interval(g)
    p_conv, g_conv = pi.startswith(("(", "[")) and pi != p, gi.startswith(("(", "[")) and gi != g
    if p_conv and (g_conv or g[:1] in "(["):
        p = pi
    if g_conv and (p_conv or p[:1] in "(["):
        g = gi
    if p == g:
        return True
    ps, gs = _structure(p), _structure(g)
    if ps is not None or gs is not None:
        if ps is not None and gs is not None:
            return _structures_equal(ps, gs, depth)
        # "\{3\}" or "(3)" for "3": a one-element container of the scalar
        single = ps or gs
        if single[0] in ("set", "list") and len(single[1]) == 1:
            return _equal(single[1][0], g if ps else p, depth + 1)
        return False
    return _symbolic_equal(p, g)


def math_equal(pred: str, gold: str) -> bool:
    """Is the predicted answer mathematically the gold answer?  Pure; no timeout inside
    (size guards keep it fast; batch callers add a hard timeout)."""
    if pred is None or gold is None:
        return False
    try:
        return _equal(str(pred), str(gold))
    except RecursionError:
        return False


def compute_score(response: str, gold: str) -> float:
    """SimpleRL-Zero reward: -1.0 without "boxed", +1.0 boxed and right, -0.5 boxed and wrong."""
    text = cut_at_stop(response)
    if "boxed" not in text:
        return -1.0
    pred = _boxed_answer(text)
    return 1.0 if pred is not None and math_equal(pred, gold) else -0.5


# ----------------------------------------------------------------------------------
# Batch grading: fast path here, the rest in a persistent pool of grader subprocesses.
#
# Workers are plain subprocesses (`python -c "import reward; reward._worker_main()"`)
# speaking JSON lines over pipes, not multiprocessing: nothing depends on the parent's
# __main__, fork safety with torch threads or the main thread, so it works from torchrun
# ranks and worker threads alike.  One pair at a time per worker; the parent waits with
# select() and a per-pair deadline, kills a worker that overruns and starts a new one.


def _worker_main() -> None:
    """Grader subprocess: read [idx, pred, gold] lines, answer [idx, verdict] lines."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except Exception:
        pass
    math_equal("\\frac{1}{2}+x", "x+0.5")  # warm up sympy and the LaTeX parser
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        idx, pred, gold = json.loads(line)
        try:
            verdict = bool(math_equal(pred, gold))
        except BaseException:
            verdict = False
        out.write(json.dumps([idx, verdict]) + "\n")
        out.flush()


class _Worker:
    def __init__(self) -> None:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import {Path(__file__).stem} as r; r._worker_main()"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        self.buffer = b""
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def send(self, idx: int, pred: str, gold: str, timeout: float) -> bool:
        try:
            self.proc.stdin.write((json.dumps([idx, pred, gold]) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        self.task, self.deadline = idx, time.monotonic() + timeout
        return True

    def read_lines(self) -> list[str] | None:
        """Complete lines available now; None when the worker has exited."""
        data = os.read(self.proc.stdout.fileno(), 65536)
        if not data:
            return None
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


_POOL: list[_Worker] = []
_POOL_LOCK = threading.Lock()
STARTUP_TIMEOUT = 60.0  # a worker that cannot import sympy in this long is replaced


def _default_workers() -> int:
    per_rank = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_rank))


def _shutdown_pool() -> None:
    for w in _POOL:
        w.kill()
    _POOL.clear()


atexit.register(_shutdown_pool)


def _run_in_pool(pairs: dict[int, tuple[str, str]], timeout: float, num_workers: int) -> dict[int, bool]:
    """Grade pairs in the pool; a pair that overruns `timeout` or crashes its worker is False."""
    results: dict[int, bool] = {}
    todo = list(pairs)[::-1]
    while len(_POOL) < num_workers:
        _POOL.append(_Worker())
    del_extra = _POOL[num_workers:]
    for w in del_extra:
        w.kill()
    del _POOL[num_workers:]
    started = {id(w): time.monotonic() for w in _POOL if not w.ready}
    respawns = 0

    def replace(i: int) -> None:
        nonlocal respawns
        _POOL[i].kill()
        respawns += 1
        _POOL[i] = _Worker()
        started[id(_POOL[i])] = time.monotonic()

    while todo or any(w.task is not None for w in _POOL):
        if respawns > 2 * num_workers + len(pairs):  # workers keep dying: give up, never hang
            break
        for i, w in enumerate(_POOL):
            if w.proc.poll() is not None and w.task is None:  # died while idle: no pair lost
                replace(i)
                continue
            if w.ready and w.task is None and todo:
                idx = todo.pop()
                if not w.send(idx, *pairs[idx], timeout):
                    results[idx] = False
                    replace(i)
        now = time.monotonic()
        deadlines = [w.deadline for w in _POOL if w.task is not None]
        deadlines += [started.get(id(w), now) + STARTUP_TIMEOUT for w in _POOL if not w.ready]
        wait = max(0.0, min(deadlines, default=now + 0.05) - now)
        fds = {w.proc.stdout.fileno(): i for i, w in enumerate(_POOL)}
        readable, _, _ = select.select(list(fds), [], [], min(wait, 1.0))
        for fd in readable:
            i = fds[fd]
            w = _POOL[i]
            lines = w.read_lines()
            if lines is None:  # the worker died (crash, memory limit): its pair is wrong
                if w.task is not None:
                    results[w.task] = False
                replace(i)
                continue
            for line in lines:
                if line == "ready":
                    w.ready = True
                    continue
                idx, verdict = json.loads(line)
                if idx == w.task:
                    results[idx] = bool(verdict)
                    w.task = None
        now = time.monotonic()
        for i, w in enumerate(_POOL):
            if w.task is not None and now > w.deadline:  # hung on a pathological input
                results[w.task] = False
                replace(i)
            elif not w.ready and now > started.get(id(w), now) + STARTUP_TIMEOUT:
                replace(i)
    for idx in pairs:
        results.setdefault(idx, False)
    return results


class _Timeout(BaseException):  # BaseException: broad "except Exception" inside must not swallow it
    pass


def _math_equal_in_process(pred: str, gold: str, timeout: float) -> bool:
    """num_workers=0: grade here.  On the main thread a SIGALRM timer bounds it; elsewhere
    only the size guards do (signals cannot interrupt other threads)."""
    use_timer = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not use_timer:
        return math_equal(pred, gold)

    def on_alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        return math_equal(pred, gold)
    except _Timeout:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def batch_math_equal(
    preds: list[str | None], golds: list[str], timeout: float = 5.0, num_workers: int | None = None
) -> list[bool]:
    """math_equal over many pairs.  The fast path runs here; undecided pairs go to a
    persistent subprocess pool (num_workers=None: one per core for this rank, at most 8;
    0: in this process), each bounded by `timeout` seconds.  Timeouts and errors are False."""
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    results = [False] * len(preds)
    pending: dict[int, tuple[str, str]] = {}
    for i, (p, g) in enumerate(zip(preds, golds)):
        if p is None or g is None:
            continue
        try:
            quick = _quick_equal(str(p), str(g))
        except Exception:
            quick = False
        if quick is None:
            pending[i] = (str(p), str(g))
        else:
            results[i] = quick
    if not pending:
        return results
    workers = _default_workers() if num_workers is None else num_workers
    if workers <= 0:
        for i, (p, g) in pending.items():
            results[i] = _math_equal_in_process(p, g, timeout)
        return results
    with _POOL_LOCK:
        for i, verdict in _run_in_pool(pending, timeout, workers).items():
            results[i] = verdict
    return results


def batch_compute_scores(
    responses: list[str], golds: list[str], timeout: float = 5.0, num_workers: int | None = None
) -> list[float]:
    """compute_score over many pairs, graded by batch_math_equal."""
    if len(responses) != len(golds):
        raise ValueError("responses and golds differ in length")
    scores: list[float] = []
    preds: list[str | None] = []
    for response in responses:
        text = cut_at_stop(response)
        if "boxed" not in text:
            scores.append(-1.0)
            preds.append(None)
        else:
            scores.append(-0.5)
            preds.append(_boxed_answer(text))
    for i, ok in enumerate(batch_math_equal(preds, golds, timeout, num_workers)):
        if ok and preds[i] is not None:
            scores[i] = 1.0
    return scores

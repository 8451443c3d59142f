"""grading.py: how two answers are decided equal -- the machinery behind reward.py's graders.

Only reward.py imports this module; the stages call reward.py's entry points (compute_score,
math_equal, the batch functions), and the names here with an underscore are reward.py's to call.

The "simplerl" grader, `math_equal(pred, gold)`, is a pipeline that stops at the first stage
that can decide:

    1. exact string match
    2. normalised string match (LaTeX noise, units, \\text{}, \\dfrac, ^\\circ, \\$, times of day)
    3. multiple-choice letters                               (A-E, "(C)", "\\text{(C)}")
    4. numbers: ints, decimals, fractions, mixed numbers, a/b, thousands separators, a
       decimal comma where no grouping fits, scientific notation, percent -- exact rationals;
       a tolerance only for decimals; units of one quantity converted, of two never equal
    5. structure: tuples (ordered), sets and bare lists (unordered unless the question asks
       for an order), records of named values ("a=3, b=1": by name, or in the names' order),
       \\pm pairs, intervals (brackets must match), ranges and |x| inequalities as
       intervals, matrices, unions
    6. symbolic: sympy's LaTeX grammar (never eval/sympify), size-guarded, compared
       numerically at sample points; equations up to scale, inequalities up to a positive one.

Stages 1-4 are the fast path: string work, microseconds.  The batch entry points send
the rest to a pool of grader subprocesses, each pair bounded by a timeout and the batch
by a deadline; a worker that hangs is killed (the pair counts as wrong).

The "v0" grader (`v0_extract`, `v0_strip_string`, `v0_math_equal`) reproduces simpleRL-reason
v0's training verdicts: Qwen's extraction after the last "boxed", its strip_string on the
prediction, its math_equal against the raw gold, percent leniency included; its last, sympy
stage runs on the LaTeX grammar under the same guards as stage 6.

Untrusted input: nothing here evaluates model output as Python.  Sympy objects are only
built by `sympy.parsing.latex.parse_latex`, a grammar, after length/depth/digit guards;
exponents, factorials and node counts are bounded before any numeric evaluation.
Decisions an RL policy could exploit: percent is x/100 only ("50\\%" == 50 == 0.5, but 5
!= 500); a decimal must be a correct rounding of an exact gold (3.1416 == \\pi, 3.14 !=
\\pi, 10001 != 10000); open and closed intervals differ; a label is dropped ("x = 3" == 3,
"|PQ| = 6" == 6, "S_1:S_2 = 3:5" == 3:5); a chain claims its last side ("y = 2+3 = 5" == 5).

Layout, in the order the pipeline runs: finding the boxes; normalisation (stage 2); multiple
choice (3); numbers (4); units; labels; the fast path (1-4 together); structures (5); symbolic, with
its guards (6); the pipeline itself (`math_equal`) and the grader names; v0's grader; batch
grading and the worker pool.
"""

from __future__ import annotations

import atexit
import json
import math
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
# Finding the boxes: reward.py's extraction reads them, normalisation unwraps them

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
MAX_ANSWER_CHARS = 1000  # longer extracted answers are graded by exact match only


_BRACE_RE = re.compile(r"\\[{}]|[{}]")  # an escaped brace is one token, not a brace


def _brace_partners(text: str, start: int = 0) -> dict[int, int]:
    """Position of each "{" -> position of its matching "}", in one linear pass (a stack).
    Escaped braces ("\\{", "\\}") are text, not grouping.  Unmatched "{" get no entry.  Braces
    before `start` cannot change which "}" closes a "{" after it, so the scan starts there."""
    partners, stack = {}, []
    for m in _BRACE_RE.finditer(text, start):
        c = m.group(0)
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            partners[stack.pop()] = m.start()
    return partners


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """All \\boxed{...}/\\fbox{...}/\\boxed 5 as (start, end, content); unbalanced ones skipped.
    Linear in len(text): braces are matched once for the whole text, not once per box."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    partners: dict[int, int] | None = None
    found = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            if partners is None:
                partners = _brace_partners(text, i)
            j = partners.get(i)
            if j is not None:
                found.append((m.start(), j + 1, text[i + 1 : j]))
        elif i > m.end():  # "\boxed 5": the token after the space, up to "$" or whitespace
            token = re.match(r"[^\s$]+", text[i : i + MAX_ANSWER_CHARS])
            if token:
                found.append((m.start(), i + token.end(), token.group(0)))
    return found


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
    ("\\mathcal{", "\\text{"), ("{matrix}", "{pmatrix}"),
    ("\\!", ""), ("\\;", " "), ("\\:", " "), ("\\quad", " "), ("\\qquad", " "), ("~", " "),
    ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("\\degree", ""), ("^{\\prime}", "'"),
    ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
    ("\\%", "%"), ("\\emptyset", "\\{\\}"), ("\\varnothing", "\\{\\}"), ("\\infin", "\\infty"),
    ("+\\infty", "\\infty"), ("infinity", "\\infty"),
]

_THOUSANDS_RE = re.compile(r"^[-+]?[1-9]\d{0,2}(?:(?:,|\{,\}|\\,)\d{3})+(?:\.\d+)?%?$"
                           r"|^[-+]?[1-9]\d?(?:\{,\}\d\d)+\{,\}\d{3}(?:\.\d+)?$")  # or lakh/crore: 56,\!01,\!78,\!760
_NUMBER_TOKEN = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
# A unit after a number: "5 cm", "12 dollars", "3 square feet" (letters only, after a space).
_UNIT_WORDS_RE = re.compile(r"^(" + _NUMBER_TOKEN + r"%?)\s+(?:[a-zA-Z]{2,}\.?\s*){1,3}(?:\^\{?\d\}?)?$")
_TEXT_RE = re.compile(r"\\text\{([^{}]*)\}")


# Between a gold's boxes, what makes them one list: no words, or a connective ("papers and").
_GOLD_BOX_JOIN_RE = re.compile(r"^[^a-zA-Z]*$|[,;]|\band\b|\bor\b")


def _unwrap_boxes(s: str) -> str:
    """Replace every \\boxed{X} by X (golds and some answers carry them).  Several boxes with no
    words or a connective between them are the parts of one list: "\\boxed{1}\\boxed{2}" and
    "\\boxed{1} papers and \\boxed{2} bins" are "1, 2" (a response's boxes are read before this);
    with labels between them ("x = \\boxed{3}, y = \\boxed{4}") each box is replaced in place."""
    if "boxed" in s:
        outer: list[tuple[int, int, str]] = []
        for box in _boxes(s):
            if not outer or box[0] >= outer[-1][1]:  # a box inside a box is part of the outer one
                outer.append(box)
        gaps = [s[a[1] : b[0]] for a, b in zip(outer, outer[1:])]
        if gaps and all(_GOLD_BOX_JOIN_RE.search(gap) and "=" not in gap for gap in gaps):  # labels stay
            s = ", ".join(content.strip() for _, _, content in outer)
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
        head = re.sub(r"(?:\\[,;: !]|~)+$", "", s[: m.start()]).strip()
        word = re.sub(r"[^a-zA-Z]", "", m.group(0)[6:])
        # Keep "\text{(C)}"-like choices and connectives; drop units only after something numeric.
        if not head or not word or word in ("or", "and") or head.endswith(("=", ",", "(")):
            break
        s = head
    label = re.match(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*", s)  # "t = 9 hours": the value's unit
    head, tail = (s[: label.end()], s[label.end() :]) if label else ("", s)
    m = _UNIT_WORDS_RE.match(tail)
    if m:
        s = head + m.group(1)
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


_TRIG_RE = re.compile(r"\\(?:sin|cos|tan|sec|csc|cot)(?![a-z])")
_GLUED_UNITS = ("weeks?|days?|hours?|hrs?|minutes?|mins?|seconds?|secs?|years?|months?|cm|mm|km|kg|mg|ml|feet|ft|"
                "inches|miles?|meters?|metres?|units?|dollars?|cents?|degrees?|mph|kmh|liters?|litres?|pounds?|lbs?|"
                "ounces?|oz|grams?|g|m|s")
_TIME_RE = re.compile(
    r"^(\d{1,2}):([0-5]\d)(?::([0-5]\d))?\s*(?:\\text\{\s*)?(?:([aApP])\.?\s*[mM]\.?)?\s*\}?$")


def _time_of_day(s: str) -> str:
    """"8:34 \\text{P.M.}", "20:34:00" -> "20:34" (24-hour, seconds kept unless zero); else unchanged."""
    m = _TIME_RE.match(s.strip())
    if not m:
        return s
    hour, minute, second, half = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    if half:
        if not 1 <= hour <= 12:
            return s
        hour = hour % 12 + (12 if half in "pP" else 0)
    return f"{hour}:{minute}" + (f":{second}" if second and second != "00" else "")


def normalize(s: str) -> str:
    """Canonical spelling of an answer string: the stage-2 key, and the input to later stages."""
    s = s[: MAX_ANSWER_CHARS * 2]
    s = s.replace("\x00", "")
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = unicodedata.normalize("NFKC", s)
    s = "".join(c for c in s if c.isprintable() or c == " ").strip()
    s = _unwrap_boxes(s)
    if "\\begin" not in s and "&" not in s:  # "\\\\sqrt{5}", "\\\\dfrac": a doubled backslash (JSON/escaping)
        s = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", s)
    s = s.replace("\\\\", "\x01")  # protect the row separator "\\" from the spacing rules
    s = re.sub(r",\\!\s*", "{,}", s)  # "11,\\! 111,\\! 100": thousands, spelled with a negative space
    if _TRIG_RE.search(s):  # sin(90^\circ - x): inside trigonometry a degree is pi/180, not a unit
        s = re.sub(r"\^\{?\\circ\}?", lambda m: "\\cdot\\frac{\\pi}{180}", s)
    s = re.sub(r"\\n(?![a-zA-Z])", " ", s)  # a newline escaped twice ("\\n\\n\\[ ...") is space, not LaTeX
    # "y \\approx 5": y's value (a variable; not e or i)
    if m := re.match(r"^\s*[a-df-hj-zA-Z](?:_\{?\w+\}?)?\s*(?:\\approx|≈)(.+)$", s):
        s = m.group(1)
    s = re.sub(r"\s*(?:\\approx|≈).*$", "", s) if re.match(r"^.+\S\s*(?:\\approx|≈)", s) else s  # "x \\approx 0.577"
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = _time_of_day(s)
    s = re.sub(r"^(-?\d+)(?:\s|\\[ ,;])+(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)  # "1 1/2" is a mixed number
    s = re.sub(r"^(\d+)_\{?10\}?$", r"\1", s)  # 12_{10}: base ten is the number itself
    s = re.sub(r"(\^\{?\d+\}?)\s+(?=\d)", r"\1\\cdot ", s)  # "2^6 3^5": a product, not 2^{63}...
    s = re.sub(r",?\s*\\text\{\s*(?:and|or)\s*\}\s*", ",", s) if "," in s else s  # "7, -2, \\text{ and } -5"
    s = re.sub(r",\s*(?:and|or)\s+", ",", s)
    s = re.sub(r"\s+(?:and|or)\s+", ",", s) if "," in s else s  # "21, 16 or 11": one list
    s = re.sub(r"_\{(\w)\}", r"_\1", s)  # 4210_{7} -> 4210_7
    s = re.sub(r"(?<=[\d+\-*])I(?![a-zA-Z])", "i", s)  # 3+4I: the imaginary unit in CAS spelling
    if "i" not in s:
        s = re.sub(r"(?<=[\d+\-*])j(?![a-zA-Z])", "i", s)  # 2+3j: the engineers' spelling
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = s.strip().rstrip(".").strip()
    s = s[:-1].rstrip() if s.endswith("\\") else s  # "185\\": a stray backslash ("\\\\" is protected above)
    s = re.sub(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", "", s, flags=re.I)
    s = _strip_trailing_units(s)
    s = _TEXT_RE.sub(lambda m: m.group(1).strip(), s)  # remaining \text{X} -> X
    s = s.replace("\\,", ",") if _THOUSANDS_RE.match(s.strip()) else s.replace("\\,", " ")
    s = s.replace("\\ ", " ").strip()
    if _THOUSANDS_RE.match(s):  # "2,125", "32{,}349" -- but "32, 349" (with a space) is a pair
        s = s.replace("{,}", "").replace(",", "")
    s = s.replace("{,}", ",")
    s = re.sub(r"^(" + _NUMBER_TOKEN + r")(?:" + _GLUED_UNITS + r")$", r"\1", s)  # "10weeks"
    s = re.sub(r"(\\(?:arc)?(?:sin|cos|tan|sec|csc|cot)h?|\\log|\\ln|\\exp)\s+(?=[a-zA-Z])", "\\1\x02", s)  # \\sec x
    s = re.sub(r"(\\(?:pi|alpha|beta|gamma|delta|theta|lambda|mu|sigma|phi|omega|rho|tau))\s+(?=[a-zA-Z])",
               "\\1\x02", s)  # "2\\pi r" stays a product with r
    s = re.sub(r"\s+", "", s).replace("\x02", " ")
    s = _fix_fracs_and_roots(s)
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = s.rstrip(".")
    if s.startswith("+") and len(s) > 1:
        s = s[1:]
    s = re.sub(r"\{\(([A-E])\)\}", r"(\1)", s)
    s = s.replace("\x01", "\\\\")
    s = s.replace("<=", "\\le ").replace(">=", "\\ge ").replace("!=", "\\ne ")
    while len(s) > 2 and s[0] == "{" and _outer_pair(s):  # "{1,3}": TeX grouping, not a set ("\\{1,3\\}" is)
        s = s[1:-1]
    m = re.match(r"^\\\{\\\{(.*)\\\}\\\}$", s)
    if m and "\\{" not in m.group(1) and "\\}" not in m.group(1):  # "\\{\\{1,2\\}\\}": a set, braces doubled
        s = "\\{" + m.group(1) + "\\}"
    s = _last_side(s)
    m = re.match(r"^[\[(](\\begin\{(\w+)\}.*\\end\{\2\})[\])]$", s)
    return m.group(1) if m else s  # "\left[\begin{array}...\end{array}\right]" is the matrix


_NOT_A_CHAIN = r"[<>;]|\\(?:le|ge|ne|in)(?![a-zA-Z])|and|or"


def _last_side(s: str) -> str:
    """A chain "x = 5+5+1 = 11" claims its last side: "11".  Lists, inequalities and
    memberships keep their "="s (each item of a list is normalised on its own)."""
    if s.count("=") < 2 or len(_split_top(s, ",")) > 1 or re.search(_NOT_A_CHAIN, s):
        return s
    sides = _split_top(s, "=")
    return sides[-1] if len(sides) > 2 and all(sides) else s


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
_SLASH_RE = re.compile(r"^(" + _INT + r")\.?/(" + _INT + r")\.?$")  # "-1./3": C-style literals
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


_DECIMAL_COMMA_RE = re.compile(r"^-?(?:0,\d{2,}|\d+,(?:\d{2}|\d{4,})|\d{4,},\d{2,})$")


def _decimal_comma(s: str, raw: str) -> tuple[Fraction, int | None, bool] | None:
    """"250,75" or "0,375" as a decimal comma: at least two digits after the comma, no thousands
    grouping fitting (not "1,250"), no space after the comma ("2, 5" is a pair; so is "2,5", the way
    MATH golds write pairs).  The caller compares an answer so spelled with a number written with a
    point (any number when it starts "0,"), and a gold so spelled only with its own digits ("1.22")."""
    if not _DECIMAL_COMMA_RE.match(s) or re.search(r",\s", raw):
        return None
    return parse_number(s.replace(",", "."))


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
# Units that decide: "12 g" is not "12 kg"; a bare 12 is not "12 kg" when the question asks for grams

_UNIT_SCALE = {  # unit -> (quantity, size in the quantity's base unit)
    "mm": ("length", Fraction(1, 1000)), "cm": ("length", Fraction(1, 100)), "m": ("length", Fraction(1)),
    "km": ("length", Fraction(1000)), "mg": ("mass", Fraction(1, 1000)), "g": ("mass", Fraction(1)),
    "kg": ("mass", Fraction(1000)), "s": ("time", Fraction(1)), "min": ("time", Fraction(60)),
    "h": ("time", Fraction(3600)), "day": ("time", Fraction(86400)), "ml": ("volume", Fraction(1, 1000)),
    "l": ("volume", Fraction(1)),
}
_UNIT_NAMES = {
    "millimeter": "mm", "millimetre": "mm", "centimeter": "cm", "centimetre": "cm", "meter": "m",
    "metre": "m", "kilometer": "km", "kilometre": "km", "milligram": "mg", "gram": "g", "kilogram": "kg",
    "second": "s", "sec": "s", "minute": "min", "hour": "h", "hr": "h", "milliliter": "ml",
    "millilitre": "ml", "liter": "l", "litre": "l", "mins": "min", "secs": "s", "hrs": "h", "days": "day",
}
_UNIT_TAIL_RE = re.compile(
    r"(?:\\(?:text|mathrm|mbox|textrm)\{\s*([a-zA-Z]+)\.?\s*\}|(?<![a-zA-Z\\])([a-zA-Z]{2,})\.?)$")
_ASKED_UNIT_RE = re.compile(
    r"\b(?:in|how many|number of)\s+(?:more\s+|fewer\s+)?"
    r"(?:\$?\\(?:text|mathrm)\{\s*([a-zA-Z]+)\s*\}|([a-zA-Z]{2,})\b)", re.I)


def _unit(word: str | None, spelled_out: bool) -> str | None:
    """Canonical unit of a word ("grams" -> "g"); one-letter units only inside \\text{} (spelled_out)."""
    if not word or (len(word) == 1 and not spelled_out):
        return None
    w = word.lower()
    for key in (w, w[:-1] if w.endswith("s") else w):
        if key in _UNIT_SCALE:
            return key
        if key in _UNIT_NAMES:
            return _UNIT_NAMES[key]
    return None


def _with_unit(s: str) -> tuple[tuple[Fraction, int | None, bool], str] | None:
    """"12\\text{ kg}", "1.5 grams" -> ((value, places, percent), "kg"); None without a known unit."""
    s = s.strip().strip("$").strip()
    if len(s) > 200 or not (s[-1:].isalpha() or s[-1:] in "}."):
        return None
    m = _UNIT_TAIL_RE.search(s)
    unit = None if not m else _unit(m.group(1), True) if m.group(1) else _unit(m.group(2), False)
    head = re.sub(r"(?:\s|\\[,;:! ]|~)+$", "", s[: m.start()]) if unit else ""
    number = parse_number(normalize(head)) if head[-1:].isdigit() or head[-1:] == "}" else None
    return (number, unit) if number is not None else None


def asked_unit(question: str | None) -> str | None:
    """The unit the question asks its answer in ("... in grams?", "How many minutes ..."), if one."""
    if not question:
        return None
    found = [_unit(m.group(1), True) if m.group(1) else _unit(m.group(2), False)
             for m in _ASKED_UNIT_RE.finditer(question[-2000:])]
    found = [u for u in found if u]
    return found[-1] if found else None


def _units_decide(pred: str, gold: str) -> bool | None:
    """Units decide when both sides carry one (converted within a quantity, never across:
    "1.5 kg" == "1500 g", "12 g" != "12 kg", "12 cm" != "12 kg"), or when one side is a bare number
    and the question asks for another unit of the other side's quantity ("12 kg", "in grams":
    12000).  None: the units decide nothing (the usual rule drops a unit)."""
    pu, gu = _with_unit(pred), _with_unit(gold)
    if pu is None and gu is None:
        return None
    asked = getattr(_ORDER, "unit", None)
    if pu is None or gu is None:
        (value, unit), bare = (gu, pred) if pu is None else (pu, gold)
        if asked is None or asked == unit or _UNIT_SCALE[asked][0] != _UNIT_SCALE[unit][0]:
            return None
        other = parse_number(normalize(bare))
        if other is None:
            return None
        converted = (value[0] * _UNIT_SCALE[unit][1] / _UNIT_SCALE[asked][1], value[1], value[2])
        return _numbers_equal(converted, other)
    (pv, p_unit), (gv, g_unit) = pu, gu
    if p_unit == g_unit:
        return None
    if _UNIT_SCALE[p_unit][0] != _UNIT_SCALE[g_unit][0]:
        return False
    scale = _UNIT_SCALE[p_unit][1] / _UNIT_SCALE[g_unit][1]
    return _numbers_equal((pv[0] * scale, None if scale != 1 else pv[1], pv[2]), gv)


# ----------------------------------------------------------------------------------
# Labels: "x = 3" -> "3", "(p,q)=(3,2)" -> "(3,2)"

_VAR = r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?'?"
# What a gold or an answer names: a variable, a segment or figure ("EF", "S_{MBCN}"), its length ("|PQ|"),
# a ratio ("S_1:S_2") or a quotient ("\frac{NO}{BO}") of names, a point ("(p,q)"), a function value ("f(x)").
_NAME = r"(?:[A-Z]{2,4}|[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?'?"
_LABEL_RE = re.compile(
    r"^(?:" + _NAME + r"(?::" + _NAME + r")*|\|" + _NAME + r"\||\\frac\{" + _NAME + r"\}\{" + _NAME + r"\}"
    r"|\(" + _VAR + r"(?:," + _VAR + r")+\)|[a-zA-Z]+\(" + _VAR + r"\))(?:=(?!=)|\\in(?![a-zA-Z]))")


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


_IDENTITY_RE = re.compile(r"\\(?:arc)?(?:sin|cos|tan|sec|csc|cot)|\\log|\\ln")


def _quick_equal(pred: str, gold: str) -> bool | None:
    """Decide with string and number work only; None when the structural/symbolic stages must."""
    if pred == gold:
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > 4 * MAX_ANSWER_CHARS:
        return False
    by_units = _units_decide(pred, gold)
    if by_units is not None:
        return by_units
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
        return pc == gc if pc is not None else (p.upper() == gc)  # "c" for "C": the same choice
    p, g = _strip_labels(p, g)
    if p == g:
        return True
    pn, gn = parse_number(p), parse_number(g)
    if pn is None and gn is not None and ("." in g or p.lstrip("-").startswith("0,")):
        pn = _decimal_comma(p, pred)
    elif gn is None and pn is not None and p == g.replace(",", "."):  # a gold "1,22": only its own digits
        gn = _decimal_comma(g, gold)
    if pn is not None and gn is not None:
        return _numbers_equal(pn, gn)
    # "x+1" is never a number -- but sin^2 x + cos^2 x is: identities go to the symbolic stage
    if gn is not None and _letters(p) and "=" not in p and not _IDENTITY_RE.search(p):
        return False
    if pn is not None and _letters(g) and "=" not in g and not _IDENTITY_RE.search(g):
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
        if len(items) == 1:  # "(0;-2;6)": a point with semicolons
            items = _split_top(s[1:-1], ";")
        if len(items) > 1:
            return "tuple", items, s[0] + s[-1]
    items = _split_top(s, ";")  # "p=5,q=2;p=7,q=2": ";" separates solutions, "," their parts
    if len(items) > 1 and all(items) and len(_split_top(s, ",")) > 1:
        return "list", items, ""
    items = [x for x in _split_top(s, ",") if x != ""]
    if len(items) > 1:
        return "list", items, ""
    for sep in ("\\text{and}", "\\text{or}", "and", "or", ";"):
        items = _split_top(s, sep)
        if len(items) > 1 and all(items):
            return "list", items, ""
    return None


_RANGE_VAR = r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-zA-Z]\))?"  # x, x_1, g(t): what a range bounds


def _inequality_to_interval(s: str) -> str:
    """x>3 -> (3,\\infty);  -1\\le x<2 -> [-1,2);  3<x -> (3,\\infty);  2<g(t)<3 -> (2,3);
    |x|\\le 2 -> [-2,2];  1\\le|z|\\le 2 -> [-2,-1]\\cup[1,2];  |x|>1 -> (-\\infty,-1)\\cup(1,\\infty).
    Other strings unchanged."""
    s = s.replace("\\le", "<=").replace("\\ge", ">=")
    if "|" in s:
        return _abs_inequality_to_union(s)
    m = re.match(r"^([^<>=]+?)(<=|<|>=|>)(" + _RANGE_VAR + r")$", s)
    if m:  # "3<x" is "x>3"
        flip = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
        s = m.group(3) + flip[m.group(2)] + m.group(1)
    m = re.match(r"^(?:([^<>=]+?)(<=|<))?(" + _RANGE_VAR + r")(<=|<|>=|>)([^<>=]+)$", s)
    if not m or (m.group(1) and m.group(4) in (">", ">=")):
        return s.replace("<=", "\\le").replace(">=", "\\ge")
    low, low_op, _, op, high = m.groups()
    if low is not None:
        return ("[" if low_op == "<=" else "(") + low + "," + high + ("]" if op == "<=" else ")")
    if op in ("<", "<="):
        return "(-\\infty," + high + ("]" if op == "<=" else ")")
    return ("[" if op == ">=" else "(") + high + ",\\infty)"


def _abs_inequality_to_union(s: str) -> str:
    """The set an absolute-value inequality describes (s spells \\le as "<="), as intervals."""
    m = re.match(r"^(?:([^<>=|]+?)(<=|<))?\|" + _RANGE_VAR + r"\|(<=|<|>=|>)([^<>=|]+)$", s)
    if not m or (m.group(1) and m.group(3) in (">", ">=")):
        return s.replace("<=", "\\le").replace(">=", "\\ge")
    low, low_op, op, high = m.groups()
    if op in (">", ">="):  # |x| > a: both tails
        a, left, right = high, ("[" if op == ">=" else "("), ("]" if op == ">=" else ")")
        return "(-\\infty," + _negated(a) + right + "\\cup" + left + a + ",\\infty)"
    right, left = ("]" if op == "<=" else ")"), ("[" if op == "<=" else "(")
    if low is None:  # |x| < b: one interval around 0
        return left + _negated(high) + "," + high + right
    inner_l, inner_r = ("[" if low_op == "<=" else "("), ("]" if low_op == "<=" else ")")
    outer = left + _negated(high) + "," + _negated(low) + inner_r
    return outer + "\\cup" + inner_l + low + "," + high + right


def _negated(s: str) -> str:
    """-s, spelled simply: "-2" -> "2", "\\frac{3}{2}" -> "-\\frac{3}{2}", "1+a" -> "-(1+a)"."""
    if s.startswith("-") and not re.search(r"[-+]", s[1:]):
        return s[1:]
    return "-" + s if not re.search(r"[-+]", s) else "-(" + s + ")"


MAX_ITEMS = 100  # longer lists/sets are not answers


def _signature(s: str):
    """(symbol names, values at the sample points) of a scalar answer, for matching many
    elements at once; None when only the full comparison can decide (structures, relations,
    infinities, undefined points)."""
    import sympy

    if _structure(s) is not None:
        return None
    try:
        expr = _to_sympy(s)
        if expr is None or isinstance(expr, sympy.core.relational.Relational) or expr.has(sympy.oo, -sympy.oo, sympy.zoo):
            return None
        points = _points(expr.free_symbols) if expr.free_symbols else [{}]
        values = tuple(_value(expr, point) for point in points)
    except (_TooBig, RecursionError, MemoryError, OverflowError, ValueError, TypeError, AttributeError, ZeroDivisionError):
        return None
    if any(v is None for v in values):
        return None
    return frozenset(map(str, expr.free_symbols)), values, _places(s)


def _match_unordered(ps: list[str], gs: list[str], depth: int) -> bool:
    """Multiset equality.  Work is linear in the elements' size plus cheap pairwise checks:
    equal spellings pair off first, then pairs the fast path calls equal, then elements whose
    sampled values agree (one sympy parse per element, not per pair); the full comparison
    only runs on what is left."""
    if len(ps) != len(gs) or len(ps) > MAX_ITEMS:
        return False
    left_p: list[str] = []
    spelled: dict[str, int] = {}
    for g in gs:
        key = normalize(g)
        spelled[key] = spelled.get(key, 0) + 1
    for p in ps:
        key = normalize(p)
        if spelled.get(key):
            spelled[key] -= 1
        else:
            left_p.append(p)
    left_g: list[str] = []
    for g in gs:
        key = normalize(g)
        if spelled.get(key):
            spelled[key] -= 1
            left_g.append(g)
    for stage in ("quick", "signature", "full"):
        if not left_p:
            return True
        if stage == "signature":
            sig_p, sig_g = [_signature(normalize(p)) for p in left_p], [_signature(normalize(g)) for g in left_g]
        unmatched_g = []
        for gi, g in enumerate(left_g):
            for pi, p in enumerate(left_p):
                if stage == "quick":
                    same = _quick_equal(p, g) is True
                elif stage == "signature":
                    a, b = sig_p[pi], sig_g[gi]
                    same = a is not None and b is not None and a[0] == b[0] and all(
                        _values_close(x, y, _coarsest(a[2], b[2])) for x, y in zip(a[1], b[1]))
                else:
                    same = _equal(p, g, depth + 1)
                if same:
                    del left_p[pi]
                    if stage == "signature":
                        del sig_p[pi]
                    break
            else:
                unmatched_g.append(g)
        left_g = unmatched_g
        if stage == "full":
            return not left_p and not left_g
    return not left_p


def _match_ordered(ps: list[str], gs: list[str], depth: int) -> bool:
    return len(ps) == len(gs) and all(_equal(p, g, depth + 1) for p, g in zip(ps, gs))


def _distinct_points(items: list[str]) -> list[str]:
    """A set of solution tuples names each solution once: "(3,17), (3,17)" is one point.  (A list of
    numbers keeps its repeats: roots are counted with multiplicity.)"""
    if len(items) < 2 or not all(len(x) > 2 and x[0] == "(" and x[-1] == ")" for x in items):
        return items
    seen: dict[str, str] = {}
    for x in items:
        seen.setdefault(re.sub(r"\s+", "", normalize(x)), x)
    return list(seen.values())


def _record(items: list[str]) -> dict[str, str] | None:
    """name -> value when every item names a different unknown ("a=3, b=1", "EF=7, GH=2"); None otherwise.
    Same letter, other subscripts ("x_1=2, x_2=3") are the solutions of one unknown: no record."""
    named: dict[str, str] = {}
    for x in items:
        x = normalize(x)
        end = _label_end(x)
        if not end or x[end - 1] != "=":
            return None
        named[x[: end - 1]] = x[end:]
    bases = {re.sub(r"_.*$", "", k) for k in named}
    return named if len(named) == len(items) and len(bases) == len(items) else None


def _records_equal(ps: list[str], gs: list[str], depth: int) -> bool:
    """Named values: by name when both sides name them (in any order), in the named order when one
    side gives the values only ("7, 2" for "EF=7, GH=2"; "2, 7" is another answer)."""
    pr, gr = _record(ps), _record(gs)
    if pr and gr:
        return pr.keys() == gr.keys() and all(_equal(pr[k], gr[k], depth + 1) for k in gr)
    if any(_label_end(normalize(x)) for x in (gs if pr else ps)):
        return False
    return _match_ordered(ps, gs, depth)


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
    if pk == gk == "union" or {pk, gk} == {"union", "list"}:  # "(11,7) or (7,11)" lists two points
        return _match_unordered(pi, gi, depth)
    if {pk, gk} == {"tuple", "list"}:  # "1, 2" for "(1, 2)": the order still matters
        return _match_ordered(pi, gi, depth)
    if pk == gk == "list" and (_record(pi) or _record(gi)):  # "a=3, b=1": named values
        return _records_equal(pi, gi, depth)
    if pk == gk == "list" and getattr(_ORDER, "on", False):  # the question asked for an order
        return _match_ordered(pi, gi, depth)
    if {pk, gk} <= {"set", "list"}:
        return _match_unordered(_distinct_points(pi), _distinct_points(gi), depth)
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

    if p.has(sympy.oo, -sympy.oo, sympy.zoo) or g.has(sympy.oo, -sympy.oo, sympy.zoo):
        return p == g
    symbols = p.free_symbols | g.free_symbols  # sin^2 x + cos^2 x has an x; 1 has none
    points = _points(symbols) if symbols else [{}]
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
# The pipeline (math_equal, the simplerl grader), and the two graders by name


def _expand_pm(s: str) -> str:
    """"3\\pm\\sqrt{2}" -> "\\{3+\\sqrt{2},3-\\sqrt{2}\\}": one \\pm in a scalar is the set of both signs."""
    if s.count("\\pm") + s.count("\\mp") != 1 or _structure(s) is not None:
        return s
    plus, minus = (s.replace("\\pm", a).replace("\\mp", b) for a, b in (("+", "-"), ("-", "+")))
    return "\\{" + plus + "," + minus + "\\}"


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
    p, g = _expand_pm(p), _expand_pm(g)
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


# A bare list ("1, 2, 3") is a set of answers unless the question asks for an order.
_ORDER_RE = re.compile(
    r"\b(?:in (?:increasing|decreasing|ascending|descending|numerical|alphabetical) order|in (?:that|this|the same|the given) order"
    r"|in order|from (?:smallest|least|lowest|largest|greatest|highest) to|ordered (?:pair|triple|quadruple|list)|respectively)\b",
    re.I,
)
_ORDER = threading.local()


def math_equal(pred: str, gold: str, question: str | None = None) -> bool:
    """Is the predicted answer mathematically the gold answer?  Pure; no timeout inside
    (size guards keep it fast; batch callers add a hard timeout).  With the `question`, a bare
    list is compared in order when the question asks for one; tuples always are, sets never."""
    if pred is None or gold is None:
        return False
    previous = getattr(_ORDER, "on", False), getattr(_ORDER, "unit", None)
    _ORDER.on, _ORDER.unit = asks_for_order(question), asked_unit(question)
    try:
        return _equal(str(pred), str(gold))
    except RecursionError:
        return False
    finally:
        _ORDER.on, _ORDER.unit = previous


# "Find $a$ and $b$": the answer gives two named values, in the order they were asked for.
_NAMED_ASK_RE = re.compile(
    r"\b(?:find|compute|determine|calculate|what are)\s+(?:the\s+(?:values?|numbers?)\s+(?:of\s+)?)?"
    r"\$([a-zA-Z])\$\s*(?:,|and)\s*\$([a-zA-Z])\$", re.I)


def asks_for_order(question: str | None) -> bool:
    """Does the question make a comma-separated answer ordered ("in increasing order", "respectively",
    "find $a$ and $b$")?"""
    if not question:
        return False
    if _ORDER_RE.search(question[:20000]) is not None:
        return True
    return any(m.group(1) != m.group(2) for m in _NAMED_ASK_RE.finditer(question[:20000]))


GRADERS = ("v0", "simplerl")  # v0: simpleRL-reason v0's training verdicts (v0_math_equal); simplerl: math_equal


def _check_grader(grader: str) -> None:
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; known: {GRADERS}")


def _grader_equal(pred: str, gold: str, grader: str, question: str | None = None) -> bool:
    return v0_math_equal(pred, gold) if grader == "v0" else math_equal(pred, gold, question)


def _grader_quick(pred: str, gold: str, grader: str, question: str | None = None) -> bool | None:
    if grader == "v0":
        return _v0_quick_equal(pred, gold)
    previous, _ORDER.unit = getattr(_ORDER, "unit", None), asked_unit(question)
    try:
        return _quick_equal(pred, gold)
    finally:
        _ORDER.unit = previous


# ----------------------------------------------------------------------------------
# The v0 grader: simpleRL-reason v0's training verdicts, reproduced without eval/sympify/parse_expr.
#
# v0 (experience_maker.py `preprocess_box_response_for_qwen_prompt` with Qwen's math toolkit):
# the prediction is the text after the LAST substring "boxed" (braces matched, or up to "$"),
# normalised by Qwen's `strip_string` -- which deletes unit words from a MathQA list, single
# letters included (a, c, d, g, h, l, m, o, s, t) -- and compared with the RAW gold by Qwen's
# `math_equal`: case-insensitive string match, choice letters, floats within 1e-4 relative of
# gold, gold/100 or gold*100 (percent leniency), brackets ignored, tuples and matrices element by
# element, "x=" labels, then sympy.  Reproduced here stage by stage; the final sympy stage runs
# on sympy's LaTeX grammar only, under the same guards as the simplerl grader.

_V0_UNITS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey", "prime",
    "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie", "bc",
    "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th", "π r 2", "sq",
    "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet", "am", "pm", "hr",
    "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm", "number", "kmph", "day",
    "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch", "mp", "∏ cm ³", "hectare",
    "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m", "cm", "mm", "apple", "liter",
    "loss", "yard", "pure", "year", "increase", "decrease", "d", "less", "Surface", "litre", "pi sq m", "s .", "metre",
    "meter", "inch",
]  # the list is used as regular expressions, in this order, duplicates included ("kmph", "sec")
_V0_UNITS = _V0_UNITS + [u + "s" for u in _V0_UNITS]
_V0_UNIT_RES = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in _V0_UNITS]
_V0_ANY_UNIT = re.compile(r"(^|\W)(?:" + "|".join(_V0_UNITS) + r")($|\W)")  # none of them: skip the loop
_V0_LABELS = ["x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"]
_V0_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_V0_WORDS.update({w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())})


def _v0_word_number(s: str) -> str:
    """word2number's common case: a string made only of number words ("twenty five" -> "25")."""
    words = s.replace("-", " ").lower().split()
    if not words or len(words) > 6:
        return s
    total, current = 0, 0
    for w in words:
        if w in _V0_WORDS:
            current += _V0_WORDS[w]
        elif w == "hundred" and current:
            current *= 100
        elif w in ("thousand", "million"):
            total += max(current, 1) * (1000 if w == "thousand" else 10**6)
            current = 0
        else:
            return s
    return str(total + current)


def _v0_fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}; gives up (returns s) on "\\frac1"."""
    pieces = s.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if piece[:1] == "{":
            out += piece
        elif len(piece) < 2:
            return s
        elif piece[1] != "{":
            out += "{" + piece[0] + "}{" + piece[1] + "}" + piece[2:]
        else:
            out += "{" + piece[0] + "}" + piece[1:]
    return out


def _v0_fix_slash(s: str) -> str:
    """"3/4" -> "\\frac{3}{4}" when both sides are plain integers (or contain "sqrt")."""
    parts = s.split("/")
    if len(parts) != 2 or len(s) > 100:
        return s
    try:
        a = parts[0] if "sqrt" in parts[0] else int(parts[0])
        b = parts[1] if "sqrt" in parts[1] else int(parts[1])
    except ValueError:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def v0_strip_string(s: str) -> str:
    """Qwen's `strip_string` (skip_unit=False): v0's normalisation of the prediction."""
    s = str(s).strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = s.replace("\\end{array}", "\\end{pmatrix}").replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    cut = re.sub(r"\\text\{.*?\}$", "", s).strip()  # a trailing \text{...} is a unit
    if cut and cut != s:
        s = cut
    for _ in range(2 if _V0_ANY_UNIT.search(s) else 0):
        for unit in _V0_UNIT_RES:
            cut = unit.sub(r"\1\2", s)
            if cut:
                s = cut
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = _v0_word_number(s)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for label in _V0_LABELS:
        s = s.replace(label, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox\{.*?\}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    return _v0_fix_slash(_v0_fix_fracs(s))


V0_MAX_CHARS = 2000  # longer predictions are compared verbatim only (none of v0's verdicts has one)


def v0_extract(text: str) -> str | None:
    """v0's prediction from a response already cut at the stop words; None without "boxed"."""
    text = text.replace("\u043a\u0438", "")
    if "final answer is $" in text and "$. I hope" in text:  # Minerva's format comes first in v0
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        tail = text[text.rfind("boxed") + len("boxed"):]
        if not tail:
            return ""
        if tail[0] == "{":
            partners = _brace_partners_plain(tail)
            pred = tail[1:partners] if partners is not None else tail[1:]
        else:
            pred = tail.split("$")[0].strip()
    else:
        return None
    if len(pred) > V0_MAX_CHARS:  # v0 has no limit; its regexes are quadratic on 100 KB of digits
        return pred
    pred = re.sub(r"\n\s*", "", pred)
    if pred[:1] == ":":
        pred = pred[1:]
    if pred[-1:] == ".":
        pred = pred[:-1]
    if pred[-1:] == "/":
        pred = pred[:-1]
    return v0_strip_string(pred)


def _brace_partners_plain(tail: str) -> int | None:
    """Index of the "}" closing tail[0] == "{", counting every brace (v0 knows no escapes); None if unbalanced.
    When unbalanced, v0 keeps everything after the "{", which the caller does."""
    depth = 0
    for m in re.finditer(r"[{}]", tail):
        depth += 1 if m.group(0) == "{" else -1
        if depth == 0:
            return m.start()
    return None


def _v0_float(s: str) -> float | None:
    """Qwen's parse_digits: commas dropped, Python float(), or a trailing (\\)% as /100."""
    s = str(s).replace(",", "")
    if len(s) > 400:
        return None
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith("%"):
        s = s[:-1].removesuffix("\\")
        try:
            return float(s) / 100
        except ValueError:
            pass
    return None


def _v0_choice(pred: str) -> str:
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    pred = letters[-1] if letters else pred.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


def _v0_to_pmatrix(s: str) -> str:
    rows = re.findall(r"\{.*,.*\}", s.strip())
    return ", ".join("\\begin{pmatrix}" + m.strip("{}").replace(",", "\\") + "\\end{pmatrix}" for m in rows)


def _v0_matrix_rows(s: str) -> list[list[str]]:
    body = s[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")]
    return [line.strip().split("&") for line in body.split("\\\\") if line.strip()]


_V0_MATRIX_OPEN, _V0_MATRIX_CLOSE = ("\\begin{pmatrix}", "\\begin{bmatrix}"), ("\\end{pmatrix}", "\\end{bmatrix}")
_V0_BRACKETED_RE = re.compile(r"(\(|\[).+(\)|\])")


def _v0_equal(pred: str, gold: str, depth: int = 0) -> bool:
    """Qwen's math_equal(pred, gold) with include_percentage and is_close, as v0 called it."""
    if depth > 8 or pred is None or gold is None:
        return False
    if pred.strip().lower() == gold.strip().lower():
        return True
    if len(pred) > V0_MAX_CHARS or len(gold) > 4 * V0_MAX_CHARS:  # the size guard v0 lacked
        return False
    if gold in ("A", "B", "C", "D", "E") and _v0_choice(pred) == gold:
        return True
    pf, gf = _v0_float(pred), _v0_float(gold)
    if pf is not None and gf is not None:  # numbers: gold, gold/100 or gold*100, within 1e-4 relative
        return any(math.isclose(g, pf, rel_tol=1e-4) for g in (gf / 100, gf, gf * 100))
    if not pred:
        return False
    gold, pred = gold.strip(), pred.strip()
    if "pmatrix" in pred and "pmatrix" not in gold:
        gold = _v0_to_pmatrix(gold)
    p_bare, g_bare = pred, gold  # brackets ignored: "(1,2]" == "[1,2)" for v0
    if (pred[:1] == "[" and pred[-1:] == "]" and not gold.startswith("(")) or (
        pred[:1] == "(" and pred[-1:] == ")" and not gold.startswith("[")
    ):
        p_bare, g_bare = p_bare.strip("[]()"), g_bare.strip("[]()")
    for c in "{}()":
        p_bare, g_bare = p_bare.replace(c, ""), g_bare.replace(c, "")
    if p_bare.lower() == g_bare.lower():
        return True
    if _V0_BRACKETED_RE.match(pred) and _V0_BRACKETED_RE.match(gold):
        p_parts, g_parts = pred[1:-1].split(","), gold[1:-1].split(",")
        if len(p_parts) == len(g_parts) and all(_v0_equal(a, b, depth + 1) for a, b in zip(p_parts, g_parts)):
            return True
    if pred.startswith(_V0_MATRIX_OPEN) and pred.endswith(_V0_MATRIX_CLOSE) and gold.startswith(
        _V0_MATRIX_OPEN
    ) and gold.endswith(_V0_MATRIX_CLOSE):
        p_rows, g_rows = _v0_matrix_rows(pred), _v0_matrix_rows(gold)
        if len(p_rows) == len(g_rows) and all(
            len(a) == len(b) and all(_v0_equal(x, y, depth + 1) for x, y in zip(a, b)) for a, b in zip(p_rows, g_rows)
        ):
            return True
    if pred.count("=") == 1 and gold.count("=") == 1:
        pl, pr = pred.split("=")
        gl, gr = gold.split("=")
        p_diff, g_diff = f"{pl.strip()} - ({pr.strip()})", f"{gl.strip()} - ({gr.strip()})"
        if _v0_symbolic(p_diff, g_diff) or _v0_symbolic(f"-({p_diff})", g_diff):
            return True
    elif pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in gold:
        if _v0_equal(pred.split("=")[1], gold, depth + 1):
            return True
    elif gold.count("=") == 1 and len(gold.split("=")[0].strip()) <= 2 and "=" not in pred:
        if _v0_equal(pred, gold.split("=")[1], depth + 1):
            return True
    return _v0_symbolic(pred, gold)


class _NeedsSympy(Exception):
    """Raised by the v0 fast path where v0 would have called sympy."""


_V0_SYMPY_ALLOWED = threading.local()


def _v0_parse(s: str):
    """v0 parses with sympy's LaTeX grammar (then parse_expr and latex2sympy, not used here)."""
    from sympy.parsing.latex import parse_latex

    if not _guard_text(s):
        return None
    for text in (s.replace("\\\\", "\\"), s):
        try:
            expr = parse_latex(text)
        except Exception:
            continue
        _check_size(expr)
        return expr
    return None


def _v0_symbolic(a: str, b: str) -> bool:
    """Qwen's symbolic_equal on the safe parser: same tree, equal everywhere (sampled), equal numbers (1e-4)."""
    if not getattr(_V0_SYMPY_ALLOWED, "on", False):
        raise _NeedsSympy
    import sympy

    try:
        pa, pb = _v0_parse(a), _v0_parse(b)
        if pa is None and pb is None:  # v0 then tried latex2sympy, which (as in its verdicts) reads
            return _v0_latex2sympy_like(a, b)  # closed intervals and relations that parse_latex cannot
        if pa is None or pb is None:
            return False
        if str(pa) == str(pb) or pa == pb:
            return True
        rel_a = isinstance(pa, sympy.core.relational.Relational)
        rel_b = isinstance(pb, sympy.core.relational.Relational)
        if rel_a or rel_b:
            if not (rel_a and rel_b):
                return False
            da, db = pa.lhs - pa.rhs, pb.lhs - pb.rhs
            return _exprs_equal(da, db, None) or _exprs_equal(da, -db, None)
        if _exprs_equal(pa, pb, None):
            return True
        if pa.free_symbols or pb.free_symbols:
            return False
        va, vb = _value(pa, {}), _value(pb, {})
        return va is not None and vb is not None and abs(va.imag) < 1e-12 and abs(vb.imag) < 1e-12 and (
            math.isclose(va.real, vb.real, rel_tol=1e-4))
    except (_TooBig, RecursionError, MemoryError, OverflowError, ValueError, TypeError, AttributeError, ZeroDivisionError):
        return False


def _v0_latex2sympy_like(a: str, b: str) -> bool:
    """What v0's last parser (latex2sympy) decided on the training golds: the same text up to
    spacing after a non-letter, or two closed intervals [x, y] with equal ends."""
    if re.sub(r"(?<![a-zA-Z])\s+", "", a) == re.sub(r"(?<![a-zA-Z])\s+", "", b):  # not "\\sqrt 2" vs "\\sqrt2"
        return True
    a, b = (re.sub(r"\s+|\\left|\\right", "", s) for s in (a, b))
    ends = [s[1:-1].split(",") for s in (a, b) if s[:1] == "[" and s[-1:] == "]" and s.count(",") == 1]
    return len(ends) == 2 and all(_v0_symbolic(x, y) for x, y in zip(*ends))


def v0_math_equal(pred: str, gold: str) -> bool:
    """v0's verdict for an extracted, strip_string-ed prediction against the raw gold (sympy allowed)."""
    _V0_SYMPY_ALLOWED.on = True
    try:
        return _v0_equal(str(pred), str(gold))
    except RecursionError:
        return False
    finally:
        _V0_SYMPY_ALLOWED.on = False


def _v0_quick_equal(pred: str, gold: str) -> bool | None:
    """The v0 verdict when it needs no sympy; None when it does."""
    try:
        return _v0_equal(str(pred), str(gold))
    except _NeedsSympy:
        return None
    except RecursionError:
        return False


# ----------------------------------------------------------------------------------
# Batch grading: fast path here, the rest in a persistent pool of grader subprocesses.
#
# Workers are plain subprocesses (`python -c "import grading; grading._worker_main()"`)
# speaking JSON lines over pipes, not multiprocessing: nothing depends on the parent's
# __main__, fork safety with torch threads or the main thread, so it works from torchrun
# ranks and worker threads alike.  One pair at a time per worker; the parent waits with
# select() and a per-pair deadline, kills a worker that overruns and starts a new one.
# The whole batch has a deadline too (`batch_timeout`): pairs not graded by then count as
# not equal, and their number is reported in `last_batch_report` and on stderr.

# What the last batch call did: pairs graded on the fast path, sent to the pool, timed out
# one by one, and left ungraded at the batch deadline (all of those count as not equal).
# Updated in place, never rebound: reward.last_batch_report is this dict.
last_batch_report: dict[str, int] = {}


def _worker_main() -> None:
    """Grader subprocess: read [idx, pred, gold, grader, question] lines, answer [idx, verdict] lines."""
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
        idx, pred, gold, grader, question = json.loads(line)
        try:
            verdict = bool(_grader_equal(pred, gold, grader, question))
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

    def send(self, idx: int, pair: tuple[str, str, str, str | None], deadline: float) -> bool:
        try:
            self.proc.stdin.write((json.dumps([idx, *pair]) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        self.task, self.deadline = idx, deadline
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
RETRY_FACTOR = 4  # a timed-out comparison gets one more try at 4x the limit (a loaded machine, not a hard pair)
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


def _run_in_pool(
    pairs: dict[int, tuple[str, str, str, str | None]], timeout: float, num_workers: int, deadline: float, report: dict
) -> dict[int, bool]:
    """Grade pairs in the pool; a pair that crashes its worker is False, one that overruns `timeout` is None
    (timed out), and every pair still ungraded at `deadline` (time.monotonic()) is False."""
    results: dict[int, bool] = {}
    todo = list(pairs)[::-1]
    while len(_POOL) < num_workers:
        _POOL.append(_Worker())
    for w in _POOL[num_workers:]:
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
        now = time.monotonic()
        if now > deadline or respawns > 2 * num_workers + len(pairs):  # out of time, or workers keep dying
            for i, w in enumerate(_POOL):
                if w.task is not None:
                    replace(i)  # its pair is abandoned; the worker may be deep in sympy
            break
        for i, w in enumerate(_POOL):
            if w.proc.poll() is not None and w.task is None:  # died while idle: no pair lost
                replace(i)
                continue
            if w.ready and w.task is None and todo:
                idx = todo.pop()
                if not w.send(idx, pairs[idx], min(now + timeout, deadline)):
                    results[idx] = False
                    replace(i)
        deadlines = [w.deadline for w in _POOL if w.task is not None]
        deadlines += [started.get(id(w), now) + STARTUP_TIMEOUT for w in _POOL if not w.ready]
        wait = max(0.0, min(deadlines + [deadline], default=now + 0.05) - now)
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
            if w.task is not None and now > w.deadline and now <= deadline:  # hung on a pathological input
                results[w.task] = None  # timed out: _grade_pairs retries it once
                report["timed_out"] += 1
                replace(i)
            elif not w.ready and now > started.get(id(w), now) + STARTUP_TIMEOUT:
                replace(i)
    for idx in pairs:
        if idx not in results:
            report["past_deadline"] += 1
            results[idx] = False
    return results


class _Timeout(BaseException):  # BaseException: broad "except Exception" inside must not swallow it
    pass


def _math_equal_in_process(
    pred: str, gold: str, timeout: float, grader: str = "simplerl", question: str | None = None
) -> bool:
    """num_workers=0: grade here.  On the main thread a SIGALRM timer bounds it (None: timed out); elsewhere
    only the size guards do (signals cannot interrupt other threads)."""
    use_timer = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not use_timer:
        return _grader_equal(pred, gold, grader, question)

    def on_alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        return _grader_equal(pred, gold, grader, question)
    except _Timeout:
        return None  # timed out: _grade_pairs retries it once
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _grade_pairs(
    pairs: list[tuple[str, str, str | None] | None], grader: str, timeout: float, num_workers: int | None,
    batch_timeout: float | None,
) -> list[bool]:
    """Verdicts for (pred, gold, question) triples (None: not equal): fast path here, the rest in the pool,
    all of it finished by `batch_timeout` seconds from now (None: no batch bound)."""
    _check_grader(grader)
    if timeout <= 0 or (batch_timeout is not None and batch_timeout <= 0):
        raise ValueError(f"timeouts must be positive, got timeout={timeout}, batch_timeout={batch_timeout}")
    deadline = time.monotonic() + (batch_timeout if batch_timeout is not None else float("inf"))
    report = {"pairs": len(pairs), "fast": 0, "symbolic": 0, "timed_out": 0, "past_deadline": 0}
    results = [False] * len(pairs)
    pending: dict[int, tuple[str, str, str, str | None]] = {}
    for i, pair in enumerate(pairs):
        if pair is None:
            continue
        if time.monotonic() > deadline:
            report["past_deadline"] += 1
            continue
        try:
            quick = _grader_quick(pair[0], pair[1], grader, pair[2])
        except Exception:
            quick = False
        if quick is None:
            pending[i] = (pair[0], pair[1], grader, pair[2])
        else:
            report["fast"] += 1
            results[i] = quick
    report["symbolic"] = len(pending)
    workers = _default_workers() if num_workers is None else num_workers
    for limit in (timeout, RETRY_FACTOR * timeout):  # a timed-out pair (None) gets one more, longer try
        if pending and workers <= 0:
            for i, (p, g, _, q) in pending.items():
                left = deadline - time.monotonic()
                if left <= 0:
                    report["past_deadline"] += 1
                    continue
                results[i] = _math_equal_in_process(p, g, min(limit, left), grader, q)
        elif pending:
            with _POOL_LOCK:
                for i, verdict in _run_in_pool(pending, limit, workers, deadline, report).items():
                    results[i] = verdict
        pending = {i: pending[i] for i in pending if results[i] is None}
    report["timed_out"] = len(pending)  # timed out twice: counted, reported, not equal
    for i in pending:
        results[i] = False
    last_batch_report.clear()
    last_batch_report.update(report)
    if pending:
        print(f"reward.py: {len(pending)} of {len(pairs)} comparisons timed out twice ({timeout:g} s, then "
              f"{RETRY_FACTOR * timeout:g} s), counted as not equal", file=sys.stderr)
    if report["past_deadline"]:
        print(f"reward.py: batch deadline ({batch_timeout} s) reached: {report['past_deadline']} of "
              f"{len(pairs)} pairs not graded, counted as not equal", file=sys.stderr)
    return results

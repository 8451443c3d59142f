"""reward.py: prompts, answer extraction and the rule-based reward of SimpleRL-Zero: the entry
points the stages call.

The reward (simpleRL-reason v0, `preprocess_box_response_for_qwen_prompt`):

    response is cut at the first stop word, then
      no "boxed" anywhere in it          -> -1.0   (format penalty)
      boxed answer equal to the gold     -> +1.0
      boxed answer not equal to the gold -> -0.5

Two graders decide "equal" (`GRADERS`): "v0" reproduces v0's training verdicts (Qwen's
extraction after the last "boxed", its strip_string on the prediction, its math_equal
against the raw gold, percent leniency included); "simplerl" is `math_equal(pred, gold)` on
the last box: exact, normalised, multiple-choice, numeric, structural and then symbolic
comparison, stopping at the first stage that can decide.  Nothing evaluates model output as
Python.  The batch entry points grade what string work cannot decide in a pool of grader
subprocesses, each pair under a timeout and the batch under a deadline (what runs out counts
as not equal, see `last_batch_report`).

How equality is decided -- each stage's rules, the sympy guards, v0's grader, the worker
pool -- is grading.py, which only this module imports.

Layout: templates and stop words; extraction; the reward and equality entry points
(compute_score, batch_compute_scores, math_equal, batch_math_equal, answer_candidates,
check_symbolic_grader); the small helpers they share.
"""

from __future__ import annotations

import re

import grading

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


def boxed_candidates(text: str) -> list[str]:
    """The answers a response gives, best first: the last box, then -- when the boxes before it
    are separated only by commas/"and" -- all of them joined as one list ("2, 3").

    The last box alone is the answer ("\\boxed{12}. ... \\boxed{12}" restates it; with
    "\\boxed{2} and \\boxed{-2}" the last one stands); the joined list only serves a multi-part gold.
    """
    boxes = grading._boxes(text)
    if not boxes:
        return []
    parts = [boxes[-1][2]]
    for prev, nxt in zip(reversed(boxes[:-1]), reversed(boxes[1:])):
        if nxt[0] - prev[1] > 40 or not _BOX_SEPARATOR_RE.match(text[prev[1] : nxt[0]]):
            break
        parts.append(prev[2])
    last = parts[0].strip()
    return [last] if len(parts) == 1 else [last, ", ".join(p.strip() for p in reversed(parts))]


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, \\boxed 5), braces matched."""
    boxes = grading._boxes(text)
    return boxes[-1][2] if boxes else None


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
# The reward and answer equivalence: the module's public entry points

GRADERS = grading.GRADERS  # "v0": simpleRL-reason v0's training verdicts; "simplerl": math_equal

BATCH_TIMEOUT = 120.0  # default bound on one batch's whole grading time, in seconds

# What the last batch call did: pairs graded on the fast path, sent to the pool, timed out
# one by one, and left ungraded at the batch deadline (all of those count as not equal).
last_batch_report = grading.last_batch_report


def compute_score(response: str, gold: str, grader: str = "simplerl", question: str | None = None) -> float:
    """SimpleRL-Zero reward: -1.0 without "boxed", +1.0 boxed and right, -0.5 boxed and wrong.
    grader="v0" reproduces simpleRL-reason v0's training verdicts; "simplerl" is math_equal
    (which reads the `question`, when given, to tell an ordered list from a set)."""
    candidates = answer_candidates(response, grader)
    if candidates is None:
        return -1.0
    return 1.0 if any(grading._grader_equal(c, gold, grader, question) for c in _for_gold(candidates, gold)) else -0.5


def batch_compute_scores(
    responses: list[str], golds: list[str], timeout: float = 5.0, num_workers: int | None = None,
    grader: str = "simplerl", batch_timeout: float | None = BATCH_TIMEOUT, questions: list[str] | None = None,
) -> list[float]:
    """compute_score over many pairs: each answer candidate graded as in batch_math_equal."""
    if len(responses) != len(golds):
        raise ValueError("responses and golds differ in length")
    grading._check_grader(grader)
    scores: list[float] = []
    pairs: list[tuple[str, str, str | None]] = []
    owner: list[int] = []
    questions = _check_questions(questions, len(responses))
    for i, (response, gold, question) in enumerate(zip(responses, golds, questions)):
        candidates = answer_candidates(response, grader)
        scores.append(-1.0 if candidates is None else -0.5)
        for c in _for_gold(candidates or [], gold):
            pairs.append((c, str(gold), question))
            owner.append(i)
    for i, ok in zip(owner, grading._grade_pairs(pairs, grader, timeout, num_workers, batch_timeout)):
        if ok:
            scores[i] = 1.0
    return scores


# Is the predicted answer mathematically the gold?  math_equal(pred, gold, question=None) is the
# simplerl grader, pure (no timeout inside); normalize is its canonical spelling of an answer.
math_equal = grading.math_equal
normalize = grading.normalize


def batch_math_equal(
    preds: list[str | None], golds: list[str], timeout: float = 5.0, num_workers: int | None = None,
    grader: str = "simplerl", batch_timeout: float | None = BATCH_TIMEOUT, questions: list[str] | None = None,
) -> list[bool]:
    """math_equal over many pairs.  The fast path runs here; undecided pairs go to a
    persistent subprocess pool (num_workers=None: one per core for this rank, at most 8;
    0: in this process), each bounded by `timeout` seconds and the whole call by
    `batch_timeout`.  Timeouts and errors are False (see `last_batch_report`)."""
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    questions = _check_questions(questions, len(preds))
    pairs = [None if p is None or g is None else (str(p), str(g), q) for p, g, q in zip(preds, golds, questions)]
    return grading._grade_pairs(pairs, grader, timeout, num_workers, batch_timeout)


def answer_candidates(response: str, grader: str = "simplerl") -> list[str] | None:
    """What a response answers, as the grader reads it; None when "boxed" is absent (-1.0).

    simplerl: the last box, then (if the boxes before it are joined by commas/"and") all of them
    as one list -- an answer is right when either matches.  v0: the text after the last
    substring "boxed", normalised by Qwen's strip_string (one candidate).
    """
    grading._check_grader(grader)
    text = cut_at_stop(response)
    if "boxed" not in text:
        return None
    if grader == "v0":
        return [grading.v0_extract(text)]
    return boxed_candidates(text)


ANTLR_NEEDED = "4.11.0"  # sympy 1.14's LaTeX parser was generated with ANTLR 4.11


def check_symbolic_grader() -> None:
    """Start-up self-test: raise RuntimeError if sympy's LaTeX parser cannot grade.

    With another antlr4-python3-runtime (e.g. 4.13) parse_latex fails on every input and
    every symbolic answer would quietly score "not equal".  Under a second (mostly importing
    sympy); call it once at start-up."""
    from importlib import metadata

    try:
        found = metadata.version("antlr4-python3-runtime")
    except metadata.PackageNotFoundError:
        found = "none"
    checks = [("x^2+2x+1", "(x+1)^2", True), ("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}", True), ("x^2+1", "(x+1)^2", False)]
    try:
        ok = all(grading._to_sympy(a) is not None and grading._symbolic_equal(a, b) is want for a, b, want in checks)
    except Exception:
        ok = False
    if not ok:
        raise RuntimeError(
            f"reward.py: the symbolic grader does not work (x^2+2x+1 vs (x+1)^2 is not graded equal): sympy's "
            f"LaTeX parser needs antlr4-python3-runtime=={ANTLR_NEEDED}, found {found}. "
            f"Fix: pip install antlr4-python3-runtime=={ANTLR_NEEDED}"
        )


# ----------------------------------------------------------------------------------
# Helpers of the entry points

# Between two boxes, only these mean "the answer is both": "\boxed{1} and \boxed{2}",
# "\boxed{A} \quad \text{and} \quad \boxed{B}", "\( y_1 = \boxed{A} \) and \( y_2 = \boxed{B} \)",
# "\boxed{A} \text{ for part (a) and } \boxed{B}".
_BOX_SEPARATOR_RE = re.compile(
    r"^(?:[\s$,;.]|\\[()\[\],;: ]|\\q?quad|\\text\{\s*(?:(?:for|in)\s+part\s+\(?\w\)?\s*)?(?:and|or)\s*\}|and|or)*"
    r"(?:[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*)?$")


def _boxed_answer(text: str) -> str | None:
    """The last box as the simplerl grader reads it (its first candidate); None without one."""
    found = boxed_candidates(text)
    return found[0] if found else None


_MULTI_PART_RE = re.compile(r",|;|\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b")


def _for_gold(candidates: list[str], gold: str) -> list[str]:
    """The joined list of several boxes can only match a gold with several parts."""
    return candidates if len(candidates) < 2 or _MULTI_PART_RE.search(str(gold)) else candidates[:1]


def _check_questions(questions: list[str] | None, n: int) -> list[str | None]:
    if questions is None:
        return [None] * n
    if len(questions) != n:
        raise ValueError(f"questions has {len(questions)} entries for {n} answers")
    return list(questions)

"""Answer extraction and equivalence, chosen per model profile or per dataset.

A verifier turns a solution into a canonical *key* (equal keys are equivalent answers, which is what majority
voting groups by) and grades a solution against a gold answer. A solution with no parsable answer has key None
and is never correct.

:func:`verifier_for` is the extractor a served model's :class:`~orchestrator.profile.ModelProfile` names:
``task`` (the bundled task's ``Answer: N`` line), ``boxed`` (the last ``\\boxed{...}`` after the reasoning,
keyed by math-verify) or ``regex`` (the profile's pattern). With a reasoning span configured, only the final
part after it is read: an answer the model wrote while still thinking is not its answer, and a trace whose
reasoning never closed has none. :func:`answer_verifier` is the one a dataset names (evaluations).
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Protocol

from orchestrator.errors import InvalidRequest
from orchestrator.profile import ModelProfile
from tasks import arithmetic as task
from tasks import countdown


class Grader(Protocol):
    """What every verifier here offers: a vote key, and a grade against a gold answer."""

    name: str

    def extract(self, text: str) -> str | None: ...

    def is_correct(self, text: str, gold: str) -> bool: ...


class TaskAnswerVerifier:
    """The bundled chained-arithmetic task: the integer on the solution's last ``Answer:`` line.

    Integers compare exactly, so equal keys are exactly the equivalent answers."""

    name = "task"

    def extract(self, text: str) -> str | None:
        value = task.extract_answer(text)
        return None if value is None else str(value)

    def is_correct(self, text: str, gold: str) -> bool:
        key = self.extract(text)
        return key is not None and key == str(gold).strip()


class MathAnswerVerifier:
    """General math answers through math-verify: ``\\boxed{}`` first, then LaTeX or plain expressions.

    The key is a canonical sympy form: numbers as exact rationals when they are (``1/2``, ``0.5`` and
    ``\\frac{1}{2}`` all give ``1/2``), other expressions simplified (``2x+x`` and ``3x`` give ``3*x``), so
    equivalent answers vote together. Grading uses math-verify's own comparison against the gold answer."""

    name = "math"

    def __init__(self, timeout_s: int = 5) -> None:
        self.timeout_s = timeout_s

    def _timeout(self) -> int | None:
        # math-verify enforces its timeout with SIGALRM, which only the main thread may use.
        return self.timeout_s if threading.current_thread() is threading.main_thread() else None

    def _parse(self, text: str) -> list:
        from math_verify import parse

        return parse(text, parsing_timeout=self._timeout()) if text and text.strip() else []

    def key(self, parsed: list) -> str | None:
        """The vote key of a math-verify parse (its canonical sympy form, else its string form)."""
        if not parsed:
            return None
        return _canonical(parsed[0]) or (str(parsed[1]).strip() if len(parsed) > 1 else None) or None

    def extract(self, text: str) -> str | None:
        return self.key(self._parse(text))

    def matches(self, parsed: list, gold: str) -> bool:
        """Whether a math-verify parse equals ``gold`` (plain, ``$...$`` or ``\\boxed{}``) by math-verify."""
        from math_verify import verify

        if not parsed:
            return False
        gold_parsed = self._parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$")
        if not gold_parsed:
            raise InvalidRequest(f"gold answer {gold!r} is not a parsable math answer")
        return bool(verify(gold_parsed, parsed, timeout_seconds=self._timeout()))

    def is_correct(self, text: str, gold: str) -> bool:
        return self.matches(self._parse(text), gold)


class BoxedAnswerVerifier:
    """The content of the solution's last balanced ``\\boxed{...}`` (strict: nothing else is an answer).

    The content is keyed like :class:`MathAnswerVerifier` does (``\\boxed{0.5}`` and ``\\boxed{\\frac12}``
    vote together); content math-verify cannot read is keyed by its own text, spaces removed, so a boxed
    answer always counts as one. Grading is math-verify's comparison of the content with the gold answer."""

    name = "boxed"

    def __init__(self, timeout_s: int = 5, *, key: str = "value") -> None:
        self._math = MathAnswerVerifier(timeout_s)
        # "expression": the content's arithmetic up to reordering (profile `answer_key`), never its value.
        self._by_expression = key == "expression"

    def extract(self, text: str) -> str | None:
        content = last_boxed(text)
        if content is None or not content.strip():
            return None
        if self._by_expression:
            return CountdownVerifier.key(content)
        return self._math.key(self._math._parse(f"\\boxed{{{content}}}")) or re.sub(r"\s+", "", content)

    def is_correct(self, text: str, gold: str) -> bool:
        content = last_boxed(text)
        if content is None or not content.strip():
            return False
        parsed = self._math._parse(f"\\boxed{{{content}}}")
        if parsed:
            return self._math.matches(parsed, gold)
        return re.sub(r"\s+", "", content) == re.sub(r"\s+", "", str(gold))


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` whose braces balance (``\\boxed{\\frac{1}{2}}`` gives
    ``\\frac{1}{2}``); None when there is none, or the last one never closes (a cut-off trace)."""
    found = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2  # an escaped brace (\{ \}) is content, not structure
                continue
            depth += (ch == "{") - (ch == "}")
            i += 1
        # A later unclosed box supersedes an earlier closed one: the model was still writing its answer.
        found = text[m.end() : i - 1] if depth == 0 else None
    return found


class CountdownVerifier:
    """The Countdown task (:mod:`tasks.countdown`, the v2 bundled family's): a solution is right when the
    last ``\\boxed{}`` after its reasoning is an expression over the given numbers that makes the target.
    The gold answer is the question itself, which names the numbers and the target: a problem has many
    right answers, so no single expression could be the gold one. Keys group an expression with its
    reorderings (:func:`tasks.countdown.canonical_answer`)."""

    name = "countdown"

    @staticmethod
    def key(answer: str | None) -> str | None:
        """The vote key of a boxed answer's content: its expression up to reordering, or its text without
        spaces when it does not parse (it still votes); None without an answer."""
        if answer is None or not answer.strip():
            return None
        return countdown.canonical_answer(answer) or re.sub(r"\s+", "", answer)

    def extract(self, text: str) -> str | None:
        return self.key(countdown.extract_answer(text))

    def is_correct(self, text: str, gold: str) -> bool:
        try:
            problem = countdown.parse_question(gold)
        except ValueError:
            raise InvalidRequest(f"a countdown item's answer is its question; got {gold[:80]!r}", param="answer") from None
        return countdown.check_answer(problem, text).correct


class RegexAnswerVerifier:
    """The first group of the pattern's last match, stripped; equal strings are equivalent answers."""

    name = "regex"

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)

    def extract(self, text: str) -> str | None:
        last = None
        for last in self.pattern.finditer(text):
            pass
        if last is None or last.group(1) is None:
            return None
        return last.group(1).strip() or None

    def is_correct(self, text: str, gold: str) -> bool:
        key = self.extract(text)
        return key is not None and key == str(gold).strip()


class FinalPartVerifier:
    """``inner`` reading only the final part of a solution, after the profile's reasoning span
    (:meth:`ModelProfile.split_reasoning`): a reasoning that never closed leaves nothing to read."""

    def __init__(self, inner: Grader, profile: ModelProfile) -> None:
        self.inner, self.profile = inner, profile
        self.name = inner.name

    def extract(self, text: str) -> str | None:
        return self.inner.extract(self.profile.split_reasoning(text)[1])

    def is_correct(self, text: str, gold: str) -> bool:
        return self.inner.is_correct(self.profile.split_reasoning(text)[1], gold)


def verifier_for(profile: ModelProfile) -> Grader:
    """The answer extractor of a served model, as its profile says (``answer``, ``answer_pattern``,
    ``reasoning``). The bundled profile gets exactly :class:`TaskAnswerVerifier`."""
    inner: Grader
    if profile.answer == "task":
        inner = TaskAnswerVerifier()
    elif profile.answer == "boxed":
        inner = BoxedAnswerVerifier(key=profile.answer_key)
    else:
        inner = RegexAnswerVerifier(profile.answer_pattern or "")
    return inner if profile.reasoning == "none" else FinalPartVerifier(inner, profile)


ANSWER_VERIFIERS: dict[str, Callable[[], Grader]] = {
    "task": TaskAnswerVerifier,
    "math": MathAnswerVerifier,
    "countdown": CountdownVerifier,
}


def answer_verifier(name: str) -> Grader:
    """The answer verifier a dataset names (``task``, ``math`` or ``countdown``)."""
    try:
        return ANSWER_VERIFIERS[name]()
    except KeyError:
        raise InvalidRequest(f"unknown answer verifier {name!r}; known: {', '.join(ANSWER_VERIFIERS)}", param="verifier") from None


def _canonical(expr: object) -> str | None:
    import sympy

    if not isinstance(expr, sympy.Basic):
        return None
    try:
        if expr.is_number:
            value = sympy.nsimplify(expr, rational=True) if isinstance(expr, sympy.Float) else sympy.simplify(expr)
            return str(value)
        return str(sympy.simplify(expr))
    except (TypeError, ValueError, AttributeError, RecursionError):
        return str(expr)

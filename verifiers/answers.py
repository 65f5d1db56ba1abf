"""Answer extraction and equivalence, chosen per dataset: the bundled task's exact checker, or general math.

A verifier turns a solution into a canonical *key* (equal keys are equivalent answers, which is what majority
voting groups by) and grades a solution against a gold answer. A solution with no parsable answer has key None
and is never correct.
"""

from __future__ import annotations

import threading
from typing import Callable

from orchestrator.errors import InvalidRequest
from tasks import arithmetic as task


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

    def extract(self, text: str) -> str | None:
        parsed = self._parse(text)
        if not parsed:
            return None
        return _canonical(parsed[0]) or (str(parsed[1]).strip() if len(parsed) > 1 else None) or None

    def is_correct(self, text: str, gold: str) -> bool:
        from math_verify import verify

        target = self._parse(text)
        if not target:
            return False
        gold_parsed = self._parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$")
        if not gold_parsed:
            raise InvalidRequest(f"gold answer {gold!r} is not a parsable math answer")
        return bool(verify(gold_parsed, target, timeout_seconds=self._timeout()))


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


ANSWER_VERIFIERS: dict[str, Callable[[], TaskAnswerVerifier | MathAnswerVerifier]] = {
    "task": TaskAnswerVerifier,
    "math": MathAnswerVerifier,
}


def answer_verifier(name: str) -> TaskAnswerVerifier | MathAnswerVerifier:
    """The answer verifier a dataset names (``task`` or ``math``)."""
    try:
        return ANSWER_VERIFIERS[name]()
    except KeyError:
        raise InvalidRequest(f"unknown answer verifier {name!r}; known: {', '.join(ANSWER_VERIFIERS)}", param="verifier") from None

"""Answer extraction and equivalence, chosen per model profile or per dataset.

A verifier turns a solution into a canonical *key* (equal keys are equivalent answers, which is what majority
voting groups by), reads the answer as the model *wrote* it (what a caller is shown: ``\\boxed{23.28}`` shows
``23.28`` although it keys ``582/25``), and grades a solution against a gold answer. A solution with no
parsable answer has key None, shows None and is never correct.

:func:`verifier_for` is the extractor a served model's :class:`~orchestrator.profile.ModelProfile` names:
``task`` (the bundled task's ``Answer: N`` line), ``boxed`` (the last ``\\boxed{...}`` after the reasoning,
keyed by math-verify) or ``regex`` (the profile's pattern). With a reasoning span configured, only the final
part after it is read: an answer the model wrote while still thinking is not its answer, and a trace whose
reasoning never closed has none. :func:`answer_verifier` is the one a dataset names; :class:`ServedGrading`
is how evaluations grade the service's results, by the served extractor and the service's finish reasons.
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Protocol

from orchestrator.errors import InvalidRequest
from orchestrator.profile import ModelProfile
from orchestrator.types import StrategyResult
from tasks import arithmetic as task
from tasks import countdown


class Grader(Protocol):
    """What every verifier here offers: a vote key, the answer as written, and a grade against a gold answer."""

    name: str

    def extract(self, text: str) -> str | None: ...

    def written(self, text: str) -> str | None: ...

    def is_correct(self, text: str, gold: str) -> bool: ...


class TaskAnswerVerifier:
    """The bundled chained-arithmetic task: the integer on the solution's last ``Answer:`` line.

    Integers compare exactly, so equal keys are exactly the equivalent answers."""

    name = "task"

    def extract(self, text: str) -> str | None:
        value = task.extract_answer(text)
        return None if value is None else str(value)

    def written(self, text: str) -> str | None:
        return self.extract(text)  # an integer is written as its key

    def is_correct(self, text: str, gold: str) -> bool:
        key = self.extract(text)
        return key is not None and key == str(gold).strip()


class MathAnswerVerifier:
    """General math answers through math-verify: ``\\boxed{}`` first, then LaTeX or plain expressions.

    The key is a canonical sympy form (:func:`math_key`): numbers as exact rationals when they are (``1/2``,
    ``0.5`` and ``\\frac{1}{2}`` all give ``1/2``), other expressions simplified (``2x+x`` and ``3x`` give
    ``3*x``), so equivalent answers vote together. Grading uses math-verify's own comparison against the gold
    answer."""

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
        """The vote key of a math-verify parse (:func:`math_key` of it, else its string form)."""
        if not parsed:
            return None
        return math_key(parsed[0]) or (str(parsed[1]).strip() if len(parsed) > 1 else None) or None

    def extract(self, text: str) -> str | None:
        return self.key(self._parse(text))

    def written(self, text: str) -> str | None:
        """The last ``\\boxed{}``'s content when there is one, else the expression math-verify read."""
        parsed = self._parse(text)
        if self.key(parsed) is None:
            return None
        boxed = last_boxed(text)
        return as_written(boxed) if boxed and boxed.strip() else as_written(str(parsed[1])) if len(parsed) > 1 else None

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
    vote together; ``\\text{5 cm}`` is read as ``5 cm``); content math-verify cannot read is keyed by its own
    text, spaces removed, so a boxed answer always counts as one. It is shown as written, spaces collapsed.
    Grading is math-verify's comparison of the content with the gold answer."""

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
        return self._math.key(self._math._parse(f"\\boxed{{{unwrap_text(content)}}}")) or re.sub(r"\s+", "", content)

    def written(self, text: str) -> str | None:
        content = last_boxed(text)
        return as_written(content) if content is not None and content.strip() else None

    def is_correct(self, text: str, gold: str) -> bool:
        content = last_boxed(text)
        if content is None or not content.strip():
            return False
        parsed = self._math._parse(f"\\boxed{{{unwrap_text(content)}}}")  # read as its key reads it
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

    def written(self, text: str) -> str | None:
        answer = countdown.extract_answer(text)
        return as_written(answer) if answer else None

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

    def written(self, text: str) -> str | None:
        return self.extract(text)  # the key is the group as written

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

    def written(self, text: str) -> str | None:
        return self.inner.written(self.profile.split_reasoning(text)[1])

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


class ServedGrading:
    """How an evaluation grades the service's answers: by the rules the service answers by, so that an
    evaluation measures what a caller of the service gets.

    - **The served extractor** (:func:`verifier_for` the profile) reads the answer, on the final part after
      the reasoning: a ``\\boxed{}`` written only while thinking is no answer, and of two boxes either side
      of ``</think>`` the one after it is the answer.
    - **The finish reason**: a result the service reports without an answer (its chosen sample was cut by
      ``max_tokens``, aborted, or had nothing to read) or ended by ``length`` is wrong, whatever its text says.
    - **The dataset's comparison** with the gold answer is the extractor's own (math-verify for ``boxed``,
      exact for ``task``), except for Countdown (``countdown`` datasets), whose gold answer is its question
      and whose task checker (:class:`CountdownVerifier`) judges the expression."""

    def __init__(self, profile: ModelProfile, dataset: str) -> None:
        self.profile = profile
        # Countdown's checker reads the final part itself (tasks.countdown.extract_answer).
        self.checker: Grader = CountdownVerifier() if dataset == "countdown" else verifier_for(profile)

    def grade(self, result: StrategyResult, gold: str) -> bool:
        """Whether ``result`` answers ``gold``: the service gave an answer, from a trace its model ended, and
        the answer equals ``gold``."""
        if result.answer is None or result.finish_reason == "length":
            return False
        return self.checker.is_correct(result.text, gold)


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


def as_written(answer: str) -> str:
    """An answer as the model wrote it, for showing: runs of whitespace as one space, ends stripped, nothing
    else changed (``\\frac{1}{4}`` stays LaTeX, ``23.28`` stays a decimal)."""
    return re.sub(r"\s+", " ", answer).strip()


# Wrappers that mark text, not math: `\text{5 cm}` is the number 5 in centimetres, but math-verify reads a
# wrapped number as one symbol named "5cm". Only a wrapper around the whole content that starts like a number
# is unwrapped: `\text{yes}` and `\text{(A)}` math-verify already reads as the words they are.
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|mathrm|mbox)\s*\{")


def unwrap_text(content: str) -> str:
    """``content`` without a ``\\text{...}`` (or ``\\mathrm``, ``\\textbf``, ``\\mbox``) wrapped around all of
    it when what it wraps starts with a number (``\\text{5 cm}`` gives ``5 cm``); otherwise unchanged."""
    stripped = content.strip()
    m = _TEXT_WRAPPER.match(stripped)
    if m is None:
        return content
    depth, i = 1, m.end()
    while i < len(stripped) and depth:
        depth += (stripped[i] == "{") - (stripped[i] == "}")
        i += 1
    inner = stripped[m.end() : i - 1]
    if depth or i != len(stripped) or not re.match(r"\s*[-+.\d$]", inner):
        return content
    return inner


def math_key(expr: object) -> str | None:
    """The vote key of a math-verify parse: equal keys for answers math-verify's ``verify`` calls equal.

    Before the sympy form is taken (exact rationals for numbers, ``simplify`` for the rest):

    - an assignment (``x = 5``, ``x = y = 5``, ``x \\in (1, 2]``: math-verify's own ``is_assignment_relation``)
      keys as its last right-hand side, as ``verify`` compares it with a bare answer (``x = 5`` with ``5``).
      ``x = 5`` and ``y = 5`` therefore vote together, which ``verify`` alone would not say;
    - a percentage keys as its number (``25\\%`` with ``25``). ``verify`` calls ``25\\%`` equal to both ``25``
      and ``0.25``, which are not equal to each other, so a key can hold only one: the number as written,
      because questions answered in percent ask for the percent. ``0.25`` votes apart (and still grades right
      against a gold ``25\\%``);
    - an inequality in one variable keys as its set (``x \\le 2`` with ``(-\\infty, 2]``, as ``verify`` reads
      an inequality gold against an interval);
    - decimals inside intervals, sets and expressions become exact rationals, as bare numbers always did.

    Units, ``\\$`` and ``^\\circ`` math-verify drops by itself (``5 \\text{ cm}`` parses as 5)."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return None
    try:
        expr = _plain(expr)
        # Exact decimals: 23.28 keys 582/25, the same as \\frac{582}{25}, wherever the decimal stands.
        expr = expr.xreplace({f: sympy.nsimplify(f, rational=True) for f in expr.atoms(sympy.Float)})
        return str(expr if isinstance(expr, (sympy.Set, sympy.Tuple)) else sympy.simplify(expr))
    except (TypeError, ValueError, AttributeError, RecursionError):
        return str(expr)


def _plain(expr):  # noqa: ANN001, ANN202 - sympy objects
    """``expr`` as :func:`math_key` compares it: assignments by their value, percentages by their number,
    one-variable inequalities by their set, each element of a set the same way."""
    import sympy
    from math_verify.grader import is_assignment_relation, take_last_relation

    if is_assignment_relation(expr):
        expr = take_last_relation(expr).rhs
    if isinstance(expr, sympy.FiniteSet):
        return sympy.FiniteSet(*(_plain(e) for e in expr.args))
    if isinstance(expr, sympy.Mul):
        # latex2sympy writes `X\%` as X * UnevaluatedExpr(1/100) (math-verify detects percentages by it).
        percent = sympy.UnevaluatedExpr(sympy.Rational(1, 100))
        if percent in expr.args:
            factors = list(expr.args)
            factors.remove(percent)
            expr = sympy.Mul(*factors)
    relation = isinstance(expr, sympy.core.relational.Relational) and not isinstance(expr, sympy.Eq)
    if (relation or (isinstance(expr, sympy.And) and all(isinstance(a, sympy.core.relational.Relational) for a in expr.args))) and len(expr.free_symbols) == 1:
        try:
            return expr.as_set()
        except (NotImplementedError, TypeError, ValueError):
            return expr
    return expr

"""The bundled reasoning task: chained integer arithmetic that can be checked exactly, step by step.

A problem is a start value and a list of operations applied left to right::

    Start at 37 and apply +48, *3, -59, +12.

A solution writes one step per line and ends with an answer line::

    37+48=85
    85*3=255
    255-59=196
    196+12=208
    Answer: 208

A trace may correct itself with ``wait, 85*3=255``, which redoes the last step. The checker follows the
trace as a state machine (how many operations are applied, the current value) so that every line gets a
verdict: *on track* when the value it leaves the trace in is the true intermediate value. Those verdicts are
the process-reward labels; the final answer verdict is the outcome label.

Problems are drawn by a seeded generator. The split a problem belongs to is a pure function of its text
(a hash), so train, dev and test never overlap whatever seeds are used.

This module is what serving and evaluation need (generator, checker, prompt and workspace formats), so it
imports only the standard library; the training traces the bundled models learn from are built on it in
``training/data.py``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Sequence

Split = Literal["train", "dev", "test"]
Op = Literal["+", "-", "*"]

SPLITS: tuple[Split, ...] = ("train", "dev", "test")
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
MAX_VALUE = 9999
ANSWER_PREFIX = "Answer: "
CORRECTION_PREFIX = "wait, "
WORKSPACE_HEADER = "Workspace from {n} drafts:"
WORKSPACE_END = "---"
# Entries kept per workspace line: with three, a level-5 refine prompt plus its solution outgrew the
# 512-token context the bundled models are trained on.
WORKSPACE_TOP = 2

_STEP_RE = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")
_ANSWER_RE = re.compile(r"^Answer:\s*(.*)$")
_INT_RE = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class LevelSpec:
    """How a difficulty level draws a problem: number of operations and operand ranges (inclusive)."""

    n_ops: int
    start: tuple[int, int]
    addend: tuple[int, int]
    factor: tuple[int, int]


# Difficulty grows with both the chain length and the operand size, so later levels give a small
# model more places to slip; levels are what the per-level accuracy in the model cards is reported on.
LEVEL_SPECS: dict[int, LevelSpec] = {
    1: LevelSpec(n_ops=2, start=(2, 20), addend=(1, 20), factor=(2, 5)),
    2: LevelSpec(n_ops=3, start=(10, 60), addend=(2, 60), factor=(2, 6)),
    3: LevelSpec(n_ops=4, start=(10, 99), addend=(5, 99), factor=(2, 9)),
    4: LevelSpec(n_ops=5, start=(20, 200), addend=(10, 200), factor=(2, 9)),
    5: LevelSpec(n_ops=6, start=(50, 500), addend=(10, 500), factor=(2, 9)),
}


def apply_op(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    raise ValueError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Problem:
    """One chained-arithmetic problem. ``values[k]`` is the true value after ``k`` operations."""

    start: int
    ops: tuple[tuple[str, int], ...]
    level: int

    @property
    def question(self) -> str:
        applied = ", ".join(f"{op}{operand}" for op, operand in self.ops)
        return f"Start at {self.start} and apply {applied}."

    @property
    def values(self) -> tuple[int, ...]:
        out = [self.start]
        for op, operand in self.ops:
            out.append(apply_op(out[-1], op, operand))
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def split(self) -> Split:
        return split_of(self.question)

    def solution(self) -> str:
        """The reference solution, without self-corrections."""
        vals = self.values
        lines = [f"{vals[k]}{op}{operand}={vals[k + 1]}" for k, (op, operand) in enumerate(self.ops)]
        lines.append(f"{ANSWER_PREFIX}{self.answer}")
        return "\n".join(lines)


def split_of(question: str) -> Split:
    """Assign a split from the question text: 80% train, 10% dev, 10% test."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def prompt_for(question: str) -> str:
    """The text a policy continues to solve ``question`` (also what the chat template renders)."""
    return question + "\n"


def _draw(rng: random.Random, level: int) -> Problem:
    spec = LEVEL_SPECS[level]
    start = value = rng.randint(*spec.start)
    ops: list[tuple[str, int]] = []
    for _ in range(spec.n_ops):
        choices = ["+", "-", "*"]
        while True:
            op = rng.choice(choices)
            operand = rng.randint(*(spec.factor if op == "*" else spec.addend))
            nxt = apply_op(value, op, operand)
            # Values stay in [0, MAX_VALUE] so every number in a trace is a plain non-negative integer.
            if 0 <= nxt <= MAX_VALUE:
                break
            if len(choices) > 1:
                choices = [c for c in choices if c != op]
        ops.append((op, operand))
        value = nxt
    return Problem(start=start, ops=tuple(ops), level=level)


def generate(
    split: Split,
    n: int,
    *,
    seed: int = 0,
    levels: Sequence[int] = LEVELS,
) -> list[Problem]:
    """``n`` distinct problems of ``split``, levels drawn uniformly from ``levels``; deterministic in ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    bad = [lv for lv in levels if lv not in LEVEL_SPECS]
    if bad or not levels:
        raise ValueError(f"unknown levels {bad or levels}; expected a subset of {LEVELS}")
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * (n + 10):
            raise RuntimeError(f"could not draw {n} distinct {split} problems at levels {list(levels)}")
        problem = _draw(rng, levels[len(out) % len(levels)] if len(levels) > 1 else levels[0])
        if problem.split != split or problem.question in seen:
            continue
        seen.add(problem.question)
        out.append(problem)
    return out


# ---------------------------------------------------------------------------------------------- checking

_QUESTION_RE = re.compile(r"^Start at (\d+) and apply ((?:[+\-*]\d+)(?:, [+\-*]\d+)*)\.$")


def parse_question(question: str) -> Problem:
    """Parse a question written by :attr:`Problem.question` (level inferred from the chain length)."""
    m = _QUESTION_RE.match(question.strip())
    if not m:
        raise ValueError(f"not a chained-arithmetic question: {question[:80]!r}")
    ops = tuple((tok[0], int(tok[1:])) for tok in m.group(2).split(", "))
    level = min((lv for lv, s in LEVEL_SPECS.items() if s.n_ops >= len(ops)), default=max(LEVELS))
    return Problem(start=int(m.group(1)), ops=ops, level=level)


@dataclass(frozen=True)
class StepVerdict:
    """The checker's view of one line of a trace.

    ``on_track``: after this line the trace's current value equals the true value at its operation index
    (for the answer line: the answer is right and every operation was applied). ``reason`` says why not.
    """

    index: int
    line: str
    kind: Literal["step", "correction", "answer", "malformed"]
    on_track: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    """Final-answer verdict: ``answer`` is the parsed integer or None; ``reason`` is empty when correct."""

    correct: bool
    answer: int | None
    reason: str


def extract_answer(text: str) -> int | None:
    """The integer on the last ``Answer:`` line, or None when there is none or it is not an integer."""
    for line in reversed(text.strip().split("\n")):
        m = _ANSWER_RE.match(line.strip())
        if m:
            value = m.group(1).strip()
            return int(value) if _INT_RE.match(value) else None
    return None


def check_answer(problem: Problem, text: str) -> Verdict:
    """Exact final-answer check: the last ``Answer:`` line must hold the true integer."""
    matches = [m for m in (_ANSWER_RE.match(ln.strip()) for ln in text.strip().split("\n")) if m]
    if not matches:
        return Verdict(False, None, "no 'Answer:' line")
    value = matches[-1].group(1).strip()
    if not _INT_RE.match(value):
        return Verdict(False, None, f"answer {value!r} is not an integer")
    answer = int(value)
    if answer != problem.answer:
        return Verdict(False, answer, f"answer {answer} != expected {problem.answer}")
    return Verdict(True, answer, "")


def split_steps(text: str, *, delimiter: str = "\n") -> list[str]:
    """The non-empty, stripped steps of a trace: what the checker judges and the PRM scores."""
    return [s for s in (p.strip() for p in text.split(delimiter)) if s]


def check_steps(problem: Problem, text: str, *, delimiter: str = "\n") -> list[StepVerdict]:
    """A verdict for every step of ``text`` as cut by :func:`split_steps` (see :class:`StepVerdict`)."""
    truth = problem.values
    n = len(problem.ops)
    k = 0  # operations applied so far
    current = problem.start
    verdicts: list[StepVerdict] = []
    for i, raw in enumerate(split_steps(text, delimiter=delimiter)):
        if raw.startswith(ANSWER_PREFIX.strip()):
            ans = extract_answer(raw)
            if ans is None:
                verdicts.append(StepVerdict(i, raw, "answer", False, "answer is not an integer"))
            elif k != n:
                verdicts.append(StepVerdict(i, raw, "answer", False, f"answered after {k} of {n} operations"))
            elif ans != truth[n]:
                verdicts.append(StepVerdict(i, raw, "answer", False, f"answer {ans} != expected {truth[n]}"))
            else:
                verdicts.append(StepVerdict(i, raw, "answer", True, ""))
            continue
        correction = raw.startswith(CORRECTION_PREFIX)
        m = _STEP_RE.match(raw[len(CORRECTION_PREFIX):] if correction else raw)
        if not m:
            verdicts.append(StepVerdict(i, raw, "malformed", False, "not of the form a<op>b=c"))
            continue
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if correction:
            if k == 0:
                verdicts.append(StepVerdict(i, raw, "correction", False, "correction before any step"))
                continue
            k -= 1  # redo the last operation
        if k >= n:
            verdicts.append(StepVerdict(i, raw, "malformed", False, f"more than {n} operations"))
            continue
        reason = ""
        if (op, b) != problem.ops[k]:
            want = f"{problem.ops[k][0]}{problem.ops[k][1]}"
            reason = f"operation {op}{b} != expected {want}"
        elif apply_op(a, op, b) != c:
            reason = f"arithmetic: {a}{op}{b} is {apply_op(a, op, b)}, not {c}"
        elif not correction and a != current:
            reason = f"starts from {a}, current value is {current}"
        k += 1
        current = c
        on_track = c == truth[k]
        if on_track:
            reason = ""
        elif not reason:
            reason = f"value {c} != expected {truth[k]}"
        verdicts.append(StepVerdict(i, raw, "correction" if correction else "step", on_track, reason))
    return verdicts


def step_lines(problem: Problem, text: str) -> tuple[list[str | None], int | None]:
    """The step line (``a<op>b=c``, correction prefix dropped) a trace last wrote for each operation (None
    where it never got there) and its answer."""
    lines: list[str | None] = [None] * len(problem.ops)
    k = 0
    for raw in split_steps(text):
        correction = raw.startswith(CORRECTION_PREFIX)
        body = raw[len(CORRECTION_PREFIX):] if correction else raw
        if not _STEP_RE.match(body):
            continue
        if correction and k > 0:
            k -= 1
        if k < len(lines):
            lines[k] = body
            k += 1
    return lines, extract_answer(text)


# ----------------------------------------------------------------------------------------------- refining


@dataclass(frozen=True)
class Workspace:
    """A bounded distillation of several drafts: for every operation the step lines drafts wrote, with
    counts, and the final answers with counts. At most ``top`` entries are kept per line, so its size is
    bounded by the number of operations, whatever the number or length of the drafts.

    Entries are whole step lines (``85*3=255 x5``) rather than bare values: a model that has written
    ``85*3=`` finds the same text in the workspace and reads the value after it, a lookup small
    transformers learn easily. The first format listed bare values by step number, which the bundled
    target never learned to use (its refine round was no better than a fresh sample)."""

    n_drafts: int
    steps: tuple[tuple[tuple[str, int], ...], ...]
    answers: tuple[tuple[int, int], ...]

    def render(self) -> str:
        def tally(pairs: tuple[tuple[object, int], ...]) -> str:
            return ", ".join(f"{v} x{c}" for v, c in pairs) or "none"

        lines = [WORKSPACE_HEADER.format(n=self.n_drafts)]
        lines += [tally(p) for p in self.steps]
        lines.append(f"answer: {tally(self.answers)}")
        lines.append(WORKSPACE_END)
        return "\n".join(lines)


def distill(problem: Problem, drafts: Sequence[str], *, top: int = WORKSPACE_TOP) -> Workspace:
    """Tally the per-step lines and answers of ``drafts`` (most common first, ties by text or value)."""
    per_step: list[Counter[str]] = [Counter() for _ in problem.ops]
    answers: Counter[int] = Counter()
    for text in drafts:
        lines, answer = step_lines(problem, text)
        for k, line in enumerate(lines):
            if line is not None:
                per_step[k][line] += 1
        if answer is not None:
            answers[answer] += 1

    def best(c: Counter) -> tuple:
        return tuple(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:top])

    return Workspace(len(drafts), tuple(best(c) for c in per_step), best(answers))


def refine_prompt(problem: Problem, drafts: Sequence[str], *, top: int = WORKSPACE_TOP) -> str:
    """The prompt for one refine call: the question, then the workspace distilled from ``drafts``."""
    return f"{problem.question}\n{distill(problem, drafts, top=top).render()}\n"

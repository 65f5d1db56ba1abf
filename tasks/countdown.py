"""A Countdown-like reasoning task, written in the format real reasoning models use.

A problem gives a few numbers and a target::

    Using the numbers 8 4 3 1, each at most once, and + - * /, make 100.

**The rule** (the same for the moves of a trace and for the final expression): combine two available
numbers with ``+``, ``-``, ``*`` or ``/``; every result, intermediate or final, must be a positive integer
(so ``a - b`` needs ``a > b`` and ``a / b`` needs ``b`` to divide ``a``). Each given number is used at
most once; not all of them need to be used. The target is reached as soon as it is one of the numbers.

A solution thinks first, one step per paragraph, and then answers with an expression::

    <think>
    8 * 4 = 32, left: 32 3 1

    32 + 3 = 35, left: 35 1

    35 1 cannot reach 100, back to: 8 4 3 1

    8 * 3 = 24, left: 24 4 1

    24 + 1 = 25, left: 25 4

    25 * 4 = 100, left: 100
    </think>

    The answer is \\boxed{(8 * 3 + 1) * 4}.

A move writes the operation, its result and the numbers left (largest first); a backtrack says that the
current numbers cannot reach the target and returns to numbers the trace held before. The solver that
writes training traces (:func:`solve_trace`) is a randomized depth-first search, so its traces contain the
dead ends it tried: how long a trace is depends on its luck, which is what makes sampling several and
picking pay off. :func:`check_steps` labels every step exactly (it knows whether the numbers left can still
reach the target); those labels are the process-reward labels, :func:`check_answer` the outcome label.

Splits are a hash of the question text (as in :mod:`tasks.arithmetic`), so train, dev and test never
overlap. Like the rest of ``tasks``, this module imports only the standard library.

    python -m tasks.countdown --stats [--problems 200]
"""

from __future__ import annotations

import argparse
import ast
import itertools
import random
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

from tasks.arithmetic import LEVELS, SPLITS, WORKSPACE_END, Split, split_of, split_steps

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
STEP_DELIMITER = "\n\n"
BOXED = "\\boxed{"
ANSWER_TEMPLATE = "The answer is \\boxed{{{expr}}}."
# Solver defaults, tuned with ``--stats`` (straying more often lengthens traces faster than it spreads them;
# going deeper into dead ends spreads them more). The step caps keep a level-5 trace within a 1024-token
# training row with its prompt: "local" backtracks climb one state at a time, so its traces run longer and
# it gets the tighter cap (at 48 steps 38% of its level-5 traces did not fit and were never trained on).
DEFAULT_GUIDE = 0.5
DEFAULT_EXPLORE = 0.65
BACKTRACKS = ("local", "jump")
DEFAULT_BACKTRACK = "local"
DEFAULT_MAX_STEPS = {"local": 32, "jump": 48}
# Boxed content longer than this is refused before parsing: no solution over six small numbers needs more,
# and it bounds the work (and the recursion depth of ``ast``) an adversarial completion can cause.
MAX_EXPRESSION_CHARS = 200

State = tuple[int, ...]  # the numbers held, largest first: equal multisets have equal states


@dataclass(frozen=True)
class LevelSpec:
    """How a level draws a problem (ranges inclusive).

    ``min_used``: the target needs at least this many of the numbers (no smaller subset reaches it), so a
    level has no shortcut. ``max_alive``: at most this share of the first moves can still reach the target,
    so wrong first choices are common and traces vary in length.
    """

    n_numbers: int
    values: tuple[int, int]
    targets: tuple[int, int]
    min_used: int
    max_alive: float


# More numbers give a larger search tree, larger targets and a smaller share of good first moves make
# the dead ends more frequent: levels 1-5 rise in all three.
LEVEL_SPECS: dict[int, LevelSpec] = {
    1: LevelSpec(n_numbers=3, values=(1, 9), targets=(10, 60), min_used=3, max_alive=0.5),
    2: LevelSpec(n_numbers=4, values=(1, 9), targets=(20, 99), min_used=3, max_alive=0.4),
    3: LevelSpec(n_numbers=4, values=(2, 13), targets=(50, 200), min_used=4, max_alive=0.3),
    4: LevelSpec(n_numbers=5, values=(2, 13), targets=(100, 400), min_used=4, max_alive=0.25),
    5: LevelSpec(n_numbers=6, values=(2, 15), targets=(100, 999), min_used=5, max_alive=0.2),
}


@dataclass(frozen=True)
class Problem:
    """One problem: ``numbers`` (largest first) and ``target``; ``level`` is the level it was drawn at."""

    numbers: State
    target: int
    level: int

    @property
    def question(self) -> str:
        return f"Using the numbers {_fmt(self.numbers)}, each at most once, and + - * /, make {self.target}."

    @property
    def split(self) -> Split:
        return split_of(self.question)


def _fmt(state: Sequence[int]) -> str:
    return " ".join(str(v) for v in state)


def _state(values: Sequence[int]) -> State:
    return tuple(sorted(values, reverse=True))


def prompt_for(question: str) -> str:
    """The user message for ``question`` (the chat template and its system prompt wrap it)."""
    return question


# ------------------------------------------------------------------------------------------------ search


def combine(a: int, op: str, b: int) -> int | None:
    """``a op b`` under the task's rule, or None where the rule forbids it (non-positive, inexact)."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    if op == "/":
        return a // b if b > 0 and a % b == 0 else None
    raise ValueError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Move:
    """``a op b = result``, leaving ``after`` (``a >= b``: the order a trace writes)."""

    a: int
    op: str
    b: int
    result: int
    after: State

    def render(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}, left: {_fmt(self.after)}"


def _without(state: State, *values: int) -> list[int] | None:
    rest = list(state)
    for v in values:
        if v not in rest:
            return None
        rest.remove(v)
    return rest


def moves(state: State) -> list[Move]:
    """Every legal move from ``state``, once per distinct (a, op, b), in a fixed order."""
    out: list[Move] = []
    pairs = sorted({(state[i], state[j]) for i, j in itertools.combinations(range(len(state)), 2)}, reverse=True)
    for a, b in pairs:  # state is sorted largest first, so a >= b
        rest = _without(state, a, b)
        assert rest is not None
        for op in ("+", "-", "*", "/"):
            c = combine(a, op, b)
            if c is not None:
                out.append(Move(a, op, b, c, _state(rest + [c])))
    return out


def _results(a: int, b: int) -> list[int]:
    hi, lo = max(a, b), min(a, b)
    return [c for c in (combine(hi, op, lo) for op in "+-*/") if c is not None]


def _sub_multisets(state: State, size: int) -> set[State]:
    return {tuple(state[i] for i in idx) for idx in itertools.combinations(range(len(state)), size)}


def _splits(state: State) -> set[tuple[State, State]]:
    """Every way to cut ``state`` into two non-empty parts, the first no larger than the second."""
    out = set()
    n = len(state)
    for k in range(1, n // 2 + 1):
        for idx in itertools.combinations(range(n), k):
            chosen = set(idx)
            out.add((tuple(state[i] for i in idx), tuple(state[i] for i in range(n) if i not in chosen)))
    return out


# Value sets grow fast with the number of inputs (thousands of values for five numbers); up to this size
# they are enumerated and cached, above it membership is decided by splitting (see _makes). A split's
# smaller part must be enumerable, which bounds the numbers a state may hold.
_ENUMERATED = 4
MAX_NUMBERS = 2 * _ENUMERATED


@lru_cache(maxsize=1 << 14)
def _exact(state: State) -> frozenset[int]:
    """Every value an expression using *all* of ``state`` (at most ``_ENUMERATED`` numbers) can take."""
    if len(state) == 1:
        return frozenset(state)
    out: set[int] = set()
    for left, right in _splits(state):
        for u in _exact(left):
            for v in _exact(right):
                out.update(_results(u, v))
    return frozenset(out)


def _operands(t: int, u: int) -> list[int]:
    """Every ``v`` with ``u op v == t`` or ``v op u == t`` for some op, under the task's rule."""
    cands = [t - u, u - t, t + u, t * u]
    if t % u == 0:
        cands.append(t // u)
    if u % t == 0:
        cands.append(u // t)
    return [v for v in cands if v > 0]


@lru_cache(maxsize=1 << 18)
def _makes(state: State, target: int) -> bool:
    """Whether an expression using *all* of ``state`` equals ``target``.

    Small states look the target up in their enumerated value set. A larger one is cut in two parts, the
    smaller part's values enumerated and, for each, the operand the other part must make computed and
    asked of that part recursively: a few hundred lookups instead of a product of two value sets.
    """
    if len(state) <= _ENUMERATED:
        return target in _exact(state)
    for left, right in _splits(state):
        for u in _exact(left):
            if any(_makes(right, v) for v in _operands(target, u)):
                return True
    return False


def min_used(numbers: State, target: int) -> int | None:
    """The fewest of ``numbers`` an expression reaching ``target`` needs, or None when it is unreachable."""
    for size in range(1, len(numbers) + 1):
        if any(_makes(s, target) for s in _sub_multisets(numbers, size)):
            return size
    return None


def reachable(state: Sequence[int], target: int) -> bool:
    """Exact: whether ``target`` can be made from some of ``state`` under the task's rule (memoized).
    ``state`` holds at most :data:`MAX_NUMBERS` numbers."""
    if len(state) > MAX_NUMBERS:
        raise ValueError(f"{len(state)} numbers: the exact search handles at most {MAX_NUMBERS}")
    return min_used(_state(state), target) is not None


def count_solutions(problem: Problem, *, limit: int = 2) -> int:
    """Distinct solutions, up to ``limit``. A solution is the set of moves of a path from the numbers to
    the target, whatever their order (so reordering independent moves is not a new solution)."""
    found: set[tuple[tuple[int, str, int, int], ...]] = set()

    def walk(state: State, path: tuple[tuple[int, str, int, int], ...]) -> None:
        for m in moves(state):
            if len(found) >= limit:
                return
            key = (m.a, m.op, m.b, m.result)
            if m.result == problem.target:
                found.add(tuple(sorted(path + (key,))))
            elif len(m.after) > 1 and reachable(m.after, problem.target):
                walk(m.after, path + (key,))

    walk(problem.numbers, ())
    return len(found)


# ------------------------------------------------------------------------------------------- generation


def _acceptable(problem: Problem) -> bool:
    """Whether a drawn problem is solvable and as hard as its level asks (see :class:`LevelSpec`)."""
    spec = LEVEL_SPECS[problem.level]
    if problem.target in problem.numbers:
        return False
    used = min_used(problem.numbers, problem.target)
    if used is None or used < spec.min_used:
        return False
    first = moves(problem.numbers)
    alive = sum(reachable(m.after, problem.target) for m in first)
    return alive <= spec.max_alive * len(first)


def generate(split: Split, n: int, *, seed: int = 0, levels: Sequence[int] = LEVELS) -> list[Problem]:
    """``n`` distinct problems of ``split``, levels taken in turn from ``levels``; deterministic in
    ``seed``. Every problem is solvable: the exact search is run on each before it is kept."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    bad = [lv for lv in levels if lv not in LEVEL_SPECS]
    if bad or not levels:
        raise ValueError(f"unknown levels {bad or list(levels)}; expected a subset of {LEVELS}")
    rng = random.Random(f"countdown:{split}:{seed}")
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 5000 * (n + 10):
            raise RuntimeError(f"could not draw {n} distinct {split} problems at levels {list(levels)}")
        level = levels[len(out) % len(levels)]
        spec = LEVEL_SPECS[level]
        numbers = _state([rng.randint(*spec.values) for _ in range(spec.n_numbers)])
        problem = Problem(numbers, rng.randint(*spec.targets), level)
        # The split (a hash) is checked before the search: most draws belong to another split.
        if problem.split != split or problem.question in seen or not _acceptable(problem):
            continue
        seen.add(problem.question)
        out.append(problem)
    return out


_QUESTION_RE = re.compile(r"^Using the numbers (\d+(?: \d+)*), each at most once, and \+ - \* /, make (\d+)\.$")


def parse_question(question: str) -> Problem:
    """Parse a question written by :attr:`Problem.question`. The level is inferred from how many numbers
    there are (the lowest level drawing that many), so it is a guess where two levels share a count."""
    m = _QUESTION_RE.match(question.strip())
    if not m:
        raise ValueError(f"not a countdown question: {question[:80]!r}")
    numbers = _state([int(v) for v in m.group(1).split()])
    if len(numbers) > MAX_NUMBERS:
        raise ValueError(f"{len(numbers)} numbers: countdown questions have at most {MAX_NUMBERS}")
    level = min((lv for lv, s in LEVEL_SPECS.items() if s.n_numbers >= len(numbers)), default=max(LEVELS))
    return Problem(numbers=numbers, target=int(m.group(2)), level=level)


# ------------------------------------------------------------------------------------------ expressions

# An expression tree: a given number, or (op, left, right).
Expr = int | tuple[str, "Expr", "Expr"]
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def render_expr(expr: Expr) -> str:
    """``expr`` with only the parentheses it needs (``(8 * 3 + 1) * 4``).

    Dropped parentheses regroup to the left (``a + (b - c)`` is written ``a + b - c``); under the task's
    rule that is safe: every intermediate value of the regrouped form is still a positive integer."""
    if isinstance(expr, int):
        return str(expr)
    op, left, right = expr

    def side(sub: Expr, is_right: bool) -> str:
        text = render_expr(sub)
        if isinstance(sub, tuple):
            p, q = _PRECEDENCE[sub[0]], _PRECEDENCE[op]
            if p < q or (is_right and p == q and op in "-/"):
                return f"({text})"
        return text

    return f"{side(left, False)} {op} {side(right, True)}"


def _braced(text: str, start: int) -> int:
    """The index just past the ``}`` closing the ``{`` at ``start``, or -1 when it never closes."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


_LATEX = [("\\left", ""), ("\\right", ""), ("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("·", "*"), ("\\,", " ")]
_FRAC_RE = re.compile(r"\\[dt]?frac\s*(?=\{)")


def _plain(latex: str) -> str:
    """LaTeX arithmetic as Python arithmetic: ``\\times``, ``\\div``, ``\\frac{a}{b}`` and brace groups."""
    # The last \frac first: its arguments hold no further \frac, so replacing it never splits another one.
    while (hits := list(_FRAC_RE.finditer(latex))):
        m = hits[-1]
        num_end = _braced(latex, m.end())
        den_end = _braced(latex, num_end) if num_end > 0 and latex[num_end : num_end + 1] == "{" else -1
        if den_end < 0:
            raise ValueError("\\frac without two brace groups")
        num, den = latex[m.end() + 1 : num_end - 1], latex[num_end + 1 : den_end - 1]
        latex = f"{latex[: m.start()]}({num})/({den}){latex[den_end:]}"
    for old, new in _LATEX:
        latex = latex.replace(old, new)
    return latex.replace("{", "(").replace("}", ")")


def parse_expression(text: str) -> Expr:
    """Parse an answer expression (plain or LaTeX arithmetic) into a tree, without evaluating anything:
    only integer literals and binary ``+ - * /`` are allowed. Raises ValueError saying what is wrong."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    source = _plain(text).strip()
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError):
        raise ValueError(f"not an arithmetic expression: {text!r}") from None

    def build(node: ast.AST) -> Expr:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return (_AST_OPS[type(node.op)], build(node.left), build(node.right))
        raise ValueError(f"not allowed in an answer: {ast.unparse(node)!r} (only numbers and + - * /)")

    return build(tree.body)


def canonical(expr: Expr) -> str:
    """A key equal for ``expr`` and its reorderings by commutativity and associativity of ``+`` and ``*``
    (``3 * (2 + 5)``, ``(5 + 2) * 3``), without evaluating: on this task every answer claims the target,
    so a vote must group by the expression a sample wrote, not by its value."""

    def terms(e: Expr, op: str) -> list[Expr]:
        return terms(e[1], op) + terms(e[2], op) if isinstance(e, tuple) and e[0] == op else [e]

    if isinstance(expr, int):
        return str(expr)
    op, left, right = expr
    if op in "+*":
        return f"{op}(" + ",".join(sorted(canonical(t) for t in terms(expr, op))) + ")"
    return f"{op}({canonical(left)},{canonical(right)})"


def canonical_answer(answer: str) -> str | None:
    """:func:`canonical` of a boxed answer's expression (``EXPR = N`` keyed by EXPR), or None when it does
    not parse."""
    try:
        return canonical(parse_expression(answer.partition("=")[0]))
    except ValueError:
        return None


def leaves(expr: Expr) -> list[int]:
    """The numbers ``expr`` uses, with repeats."""
    return [expr] if isinstance(expr, int) else leaves(expr[1]) + leaves(expr[2])


def evaluate(expr: Expr) -> int:
    """The value of ``expr`` under the task's rule; raises ValueError at the first step the rule forbids."""
    if isinstance(expr, int):
        return expr
    op, a, b = expr[0], evaluate(expr[1]), evaluate(expr[2])
    value = combine(a, op, b)
    if value is None:
        if op == "/" and b == 0:
            raise ValueError("division by zero")
        if op == "/":
            raise ValueError(f"{a} / {b} is not an exact division")
        raise ValueError(f"{a} - {b} is not a positive integer")
    return value


# ---------------------------------------------------------------------------------------------- checking


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, final part) of a completion, as the service's ``think`` profile cuts it: the final part
    follows the first ``</think>``; a completion that opened ``<think>`` and never closed it is all
    reasoning; one with neither tag is all final part."""
    start = text.find(THINK_OPEN)
    head = text[start + len(THINK_OPEN) :] if start >= 0 and not text[:start].strip() else text
    end = head.find(THINK_CLOSE)
    if end >= 0:
        return head[:end], head[end + len(THINK_CLOSE) :]
    return (head, "") if start >= 0 else ("", text)


def extract_answer(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` in the final part (braces may nest), or None."""
    final = split_reasoning(text)[1]
    start = final.rfind(BOXED)
    while start >= 0:
        end = _braced(final, start + len(BOXED) - 1)
        if end > 0:
            return final[start + len(BOXED) : end - 1].strip()
        start = final.rfind(BOXED, 0, start)
    return None


@dataclass(frozen=True)
class Verdict:
    """Final-answer verdict: ``answer`` is the boxed content (None without one), ``value`` what it evaluates
    to (None when it does not parse or breaks the rule); ``reason`` is empty when correct."""

    correct: bool
    answer: str | None
    value: int | None
    reason: str


def check_answer(problem: Problem, text: str) -> Verdict:
    """Exact check of a completion's answer: the last ``\\boxed{}`` after the reasoning must hold an
    arithmetic expression over the given numbers, each used at most once, that evaluates to the target
    under the task's rule. ``EXPR = N`` is accepted when N is the target. A bare number is an expression
    too, so boxing the target alone is accepted only if it was given (generated problems never give it)."""
    reasoning, final = split_reasoning(text)
    answer = extract_answer(text)
    if answer is None:
        if not final.strip() and reasoning.strip():
            return Verdict(False, None, None, "the reasoning never closed: no final answer")
        return Verdict(False, None, None, "no \\boxed{} answer after the reasoning")
    expression, _, claimed = answer.partition("=")
    if claimed and claimed.strip() != str(problem.target):
        return Verdict(False, answer, None, f"the answer equates to {claimed.strip()!r}, not the target {problem.target}")
    try:
        expr = parse_expression(expression)
    except ValueError as err:
        return Verdict(False, answer, None, str(err))
    given, used = Counter(problem.numbers), Counter(leaves(expr))
    for number, count in sorted(used.items()):
        if count > given[number]:
            if given[number] == 0:
                return Verdict(False, answer, None, f"{number} is not one of the numbers {_fmt(problem.numbers)}")
            return Verdict(False, answer, None, f"uses {number} {count} times but it is given {given[number]} time(s)")
    try:
        value = evaluate(expr)
    except ValueError as err:
        return Verdict(False, answer, None, str(err))
    if value != problem.target:
        return Verdict(False, answer, value, f"evaluates to {value}, not the target {problem.target}")
    return Verdict(True, answer, value, "")


StepKind = Literal["move", "backtrack", "answer", "malformed"]

_MOVE_RE = re.compile(r"^(\d+) ([+\-*/]) (\d+) = (\d+), left: (\d+(?: \d+)*)$")
_BACKTRACK_RE = re.compile(r"^(\d+(?: \d+)*) cannot reach (\d+), back to: (\d+(?: \d+)*)$")


@dataclass(frozen=True)
class StepVerdict:
    """The checker's view of one step (a paragraph of the reasoning, or of the final part).

    ``valid``: well-formed and true (a move's numbers are held and its arithmetic and numbers left are right;
    a backtrack's current numbers really cannot reach the target and it returns to numbers held before; an
    answer step: the final answer is correct). ``reachable``: the numbers held after the step (unchanged by
    an invalid move) can still reach the target. ``good`` is the process-reward label; ``reason`` is empty
    exactly when the step is good.
    """

    index: int
    text: str
    kind: StepKind
    valid: bool
    reachable: bool
    reason: str

    @property
    def good(self) -> bool:
        return self.valid and self.reachable


def steps_of(text: str) -> tuple[list[str], list[str]]:
    """The steps of the reasoning and of the final part: paragraphs, stripped, empty ones dropped. For the
    usual layout these are the steps the service's PRM scorer cuts (think tags removed, split on ``\\n\\n``)."""
    reasoning, final = split_reasoning(text)
    return split_steps(reasoning, delimiter=STEP_DELIMITER), split_steps(final, delimiter=STEP_DELIMITER)


def _judge_move(current: State, move: re.Match[str]) -> tuple[str, Move | None]:
    """Why a parsed move is invalid from ``current`` (empty when valid), and the move when it is valid."""
    a, op, b, c = int(move.group(1)), move.group(2), int(move.group(3)), int(move.group(4))
    left = _state([int(v) for v in move.group(5).split()])
    rest = _without(current, a, b)
    value = combine(a, op, b)
    if rest is None:
        return f"{a} and {b} are not both held (holding {_fmt(current)})", None
    if value is None:
        return f"{a} {op} {b} breaks the rule (results must be positive integers)", None
    if value != c:
        return f"arithmetic: {a} {op} {b} is {value}, not {c}", None
    if left != _state(rest + [c]):
        return f"left {_fmt(left)}, but {_fmt(_state(rest + [c]))} remain", None
    return "", Move(a, op, b, c, left)


def check_steps(problem: Problem, text: str) -> list[StepVerdict]:
    """A verdict for every step of :func:`steps_of` ``(text)``, reasoning first (see :class:`StepVerdict`).
    Steps of the final part, and reasoning steps that box an answer, get the final answer's verdict."""
    target = problem.target
    current = problem.numbers
    held = {current}
    out: list[StepVerdict] = []
    reasoning, final = steps_of(text)
    outcome: Verdict | None = None

    def answer_step(i: int, raw: str) -> StepVerdict:
        nonlocal outcome
        outcome = outcome or check_answer(problem, text)
        return StepVerdict(i, raw, "answer", outcome.correct, outcome.correct, outcome.reason)

    for i, raw in enumerate(reasoning):
        move, back = _MOVE_RE.match(raw), _BACKTRACK_RE.match(raw)
        if move:
            reason, valid_move = _judge_move(current, move)
            valid = valid_move is not None
            if valid_move is not None:
                current = valid_move.after
                held.add(current)
            alive = reachable(current, target)
            if valid and not alive:
                reason = f"{_fmt(current)} cannot reach {target}"
            out.append(StepVerdict(i, raw, "move", valid, alive, reason))
        elif back:
            dead, claimed, to = _state([int(v) for v in back.group(1).split()]), int(back.group(2)), _state([int(v) for v in back.group(3).split()])
            if claimed != target:
                reason = f"speaks of reaching {claimed}, the target is {target}"
            elif dead != current:
                reason = f"backs off {_fmt(dead)}, but holds {_fmt(current)}"
            elif reachable(current, target):
                reason = f"false claim: {_fmt(current)} can still reach {target}"
            elif to not in held:
                reason = f"goes back to {_fmt(to)}, never held"
            else:
                reason = ""
            valid = not reason
            if to in held:  # the trace went back, whatever its claim: later steps start from there
                current = to
            alive = reachable(current, target)
            if valid and not alive:
                reason = f"goes back to {_fmt(current)}, which cannot reach {target} either"
            out.append(StepVerdict(i, raw, "backtrack", valid, alive, reason))
        elif BOXED in raw:
            out.append(answer_step(i, raw))
        else:
            out.append(StepVerdict(i, raw, "malformed", False, reachable(current, target), "neither a move nor a backtrack"))
    for j, raw in enumerate(final, start=len(reasoning)):
        out.append(answer_step(j, raw))
    return out


# Why a completion is wrong, by its first untrue step (see failure): what a policy has yet to learn.
FAILURES = ("arithmetic", "numbers not held", "breaks the rule", "numbers left", "false dead end", "bad backtrack",
            "malformed step", "no answer", "wrong answer")


def failure(problem: Problem, text: str) -> str | None:
    """None for a correct completion; else one of FAILURES, from its first step that is not valid (a move
    or backtrack that is untrue, a paragraph that is neither), or, when every step is true, "no answer"
    (nothing boxed: the reasoning ran out or never closed) or "wrong answer"."""
    if check_answer(problem, text).correct:
        return None
    for v in check_steps(problem, text):
        if v.valid or v.kind == "answer":
            continue
        if v.kind == "malformed":
            return "malformed step"
        if v.kind == "backtrack":
            return "false dead end" if v.reason.startswith("false claim") else "bad backtrack"
        for kind, opening in (("arithmetic", "arithmetic"), ("breaks the rule", f"{v.text.split(' = ')[0]} breaks"), ("numbers left", "left ")):
            if v.reason.startswith(opening):
                return kind
        return "numbers not held"
    return "no answer" if extract_answer(text) is None else "wrong answer"


# ---------------------------------------------------------------------------------------------- solving


@dataclass
class _Node:
    """One state on the solver's path: the numbers with the expression behind each, and the moves already
    found to lead nowhere from here."""

    state: State
    exprs: list[tuple[int, Expr]]
    tried: set[Move]
    step: Move  # the move that led here (the root's is a placeholder: nothing leads to it)

    def then(self, m: Move) -> _Node:
        exprs = list(self.exprs)
        ea = exprs.pop(next(i for i, (v, _) in enumerate(exprs) if v == m.a))
        eb = exprs.pop(next(i for i, (v, _) in enumerate(exprs) if v == m.b))
        return _Node(m.after, exprs + [(m.result, (m.op, ea[1], eb[1]))], set(), m)


def _trace(problem: Problem, steps: Sequence[str], node: _Node) -> str:
    expr = next(e for v, e in node.exprs if v == problem.target)
    answer = ANSWER_TEMPLATE.format(expr=render_expr(expr))
    return f"{THINK_OPEN}\n{STEP_DELIMITER.join(steps)}\n{THINK_CLOSE}\n\n{answer}"


def _root(problem: Problem) -> _Node:
    if not reachable(problem.numbers, problem.target):
        raise ValueError(f"unsolvable: {problem.question}")
    return _Node(problem.numbers, [(v, v) for v in problem.numbers], set(), Move(0, "+", 0, 0, problem.numbers))


def solve_trace(
    problem: Problem,
    rng: random.Random,
    *,
    guide: float = DEFAULT_GUIDE,
    explore: float = DEFAULT_EXPLORE,
    max_steps: int | None = None,
    backtrack: str = DEFAULT_BACKTRACK,
) -> str:
    """A solution trace written by a randomized depth-first search, dead ends included.

    At a state that can still reach the target the search picks, with probability ``guide``, a random move
    that keeps the target reachable, otherwise a random untried move of any kind. Once in a dead end it
    goes one move deeper with probability ``explore`` and otherwise backtracks (a move found dead is not
    tried again). So every trace ends at the target, and how long it is depends on how often it strayed.
    The reasoning holds at most ``max_steps`` steps (default ``DEFAULT_MAX_STEPS[backtrack]``): near the
    cap the search stops straying and walks straight to the target. Every step is valid by
    :func:`check_steps` and the answer correct by :func:`check_answer`.

    ``backtrack`` says where a backtrack goes. ``"local"`` (the default): one state up the path, and a
    state reached back that cannot reach the target is declared dead in turn; two numbers are settled on
    sight (the move that makes the target when there is one, else a dead end), a check the numbers
    themselves show. So every choice a policy imitating these traces must make is one the text before it
    lets it make, up to whether three or more numbers can still reach the target, which is left to its
    judgement (and the PRM's). ``"jump"``: in one step to the deepest state on the path that can still
    reach the target, a choice only an oracle can make; a policy trained on such traces backtracks to
    states it never held and loops in dead ends (``bench/README.md``, "Solver styles").
    """
    if not (0.0 <= guide <= 1.0 and 0.0 <= explore <= 1.0):
        raise ValueError("guide and explore are probabilities, in [0, 1]")
    if backtrack not in BACKTRACKS:
        raise ValueError(f"backtrack {backtrack!r}; expected one of {', '.join(BACKTRACKS)}")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS[backtrack]
    if max_steps < len(problem.numbers) - 1:
        raise ValueError(f"max_steps {max_steps} is below the {len(problem.numbers) - 1} moves a solution may need")
    if backtrack == "local":
        return _local_trace(problem, rng, guide=guide, explore=explore, max_steps=max_steps)
    target = problem.target
    path = [_root(problem)]
    steps: list[str] = []
    while target not in path[-1].state:
        node = path[-1]
        left = max_steps - len(steps)
        if not reachable(node.state, target):
            anchor = max(k for k, n in enumerate(path) if reachable(n.state, target))
            # Going deeper costs that move, the backtrack and at most one move per number held at the anchor.
            if len(node.state) > 1 and left >= len(path[anchor].state) + 1 and rng.random() < explore:
                m = rng.choice(moves(node.state))
            else:
                steps.append(f"{_fmt(node.state)} cannot reach {target}, back to: {_fmt(path[anchor].state)}")
                path[anchor].tried.add(path[anchor + 1].step)
                del path[anchor + 1 :]
                continue
        else:
            m = _forward(node, target, left, guide, rng)
        path.append(node.then(m))
        steps.append(m.render())
    return _trace(problem, steps, path[-1])


def _forward(node: _Node, target: int, left: int, guide: float, rng: random.Random) -> Move:
    """The next move from a state that can reach the target, ``left`` steps before the cap."""
    options = [m for m in moves(node.state) if m not in node.tried]
    # Straying costs the dead move, a backtrack and the walk from here, so near the cap the search does not.
    may_stray = left >= len(node.state) + 1
    if may_stray and rng.random() >= guide:
        return rng.choice(options)
    return rng.choice([m for m in options if reachable(m.after, target)])


def _local_trace(problem: Problem, rng: random.Random, *, guide: float, explore: float, max_steps: int) -> str:
    target = problem.target
    path = [_root(problem)]
    steps: list[str] = []

    def back() -> None:
        dead = path.pop()
        path[-1].tried.add(dead.step)
        steps.append(f"{_fmt(dead.state)} cannot reach {target}, back to: {_fmt(path[-1].state)}")

    while target not in path[-1].state:
        node = path[-1]
        left = max_steps - len(steps)
        if len(node.state) == 2:
            finish = [m for m in moves(node.state) if target in m.after]
            if not finish:
                back()
                continue
            m = rng.choice(finish)
        elif not reachable(node.state, target):
            anchor = max(k for k, n in enumerate(path) if reachable(n.state, target))
            # Deeper costs that move, a backtrack per state between it and the anchor, and the walk from there.
            home = len(path) - anchor + len(path[anchor].state) - 1
            if left >= 1 + home and rng.random() < explore:
                m = rng.choice(moves(node.state))
            else:
                back()
                continue
        else:
            m = _forward(node, target, left, guide, rng)
        path.append(node.then(m))
        steps.append(m.render())
    return _trace(problem, steps, path[-1])


def optimal_trace(problem: Problem) -> str:
    """The direct trace: a shortest solution (fewest moves), no dead ends; deterministic."""
    node = _root(problem)
    steps: list[str] = []
    while problem.target not in node.state:
        need = min_used(node.state, problem.target)
        assert need is not None
        # A shortest expression over `need` numbers has a first move that leaves one over `need - 1`.
        m = next(m for m in moves(node.state) if min_used(m.after, problem.target) == need - 1)
        node = node.then(m)
        steps.append(m.render())
    return _trace(problem, steps, node)


# ----------------------------------------------------------------------------------------------- refining

REFINE_HEADER = "Drafts ({n}), each as far as it got:"
# Entries kept in a refine prompt: enough to offer a few different partial routes, short enough that the
# prompt stays a small part of the context whatever the number of drafts.
REFINE_TOP = 3


def _progress(problem: Problem, text: str) -> tuple[tuple[Move, ...], str | None]:
    """The valid moves leading to the fewest numbers a draft held, and its boxed answer.

    Replays the draft's moves and backtracks without the exact search: a refine prompt is built at serving
    time and must not leak which routes can still reach the target."""
    route: dict[State, tuple[Move, ...]] = {problem.numbers: ()}
    current = problem.numbers
    best: tuple[Move, ...] = ()
    for raw in steps_of(text)[0]:
        move, back = _MOVE_RE.match(raw), _BACKTRACK_RE.match(raw)
        if move:
            m = _judge_move(current, move)[1]
            if m is None:
                continue
            route.setdefault(m.after, route[current] + (m,))
            current = m.after
            if len(route[current]) > len(best):
                best = route[current]
        elif back and (to := _state([int(v) for v in back.group(3).split()])) in route:
            current = to
    return best, extract_answer(text)


def refine_prompt(problem: Problem, drafts: Sequence[str], *, top: int = REFINE_TOP) -> str:
    """The user message of one refine call: the question, then the deepest route each draft found and its
    answer, identical entries counted, the ``top`` most common (then deepest) kept."""
    tally = Counter(_progress(problem, d) for d in drafts)
    ranked = sorted(tally.items(), key=lambda kv: (-kv[1], -len(kv[0][0]), render_route(kv[0][0]), kv[0][1] or ""))[:top]
    lines = [problem.question, REFINE_HEADER.format(n=len(drafts))]
    for (route, answer), count in ranked:
        lines.append(f"x{count}: {render_route(route)}; answer: {answer if answer is not None else 'none'}")
    lines.append(WORKSPACE_END)
    return "\n".join(lines) + "\n"


def render_route(route: Sequence[Move]) -> str:
    """Moves as ``8 * 3 = 24; 24 + 1 = 25 -> left: 25 5`` (``no moves`` for none)."""
    if not route:
        return "no moves"
    return "; ".join(f"{m.a} {m.op} {m.b} = {m.result}" for m in route) + f" -> left: {_fmt(route[-1].after)}"


# ------------------------------------------------------------------------------------------------- stats


def _cv(values: Sequence[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean else 0.0


def level_stats(level: int, *, problems: int, samples: int = 16, seed: int = 0, backtrack: str = DEFAULT_BACKTRACK) -> dict[str, float]:
    """What ``--stats`` prints for one level: trace-length spread over ``samples`` solver traces (of style
    ``backtrack``) of each of ``problems`` train problems."""
    cv_chars, cv_words, dead_first, alive_first, steps, alive_moves, unique = [], [], [], [], [], [], 0
    for k, problem in enumerate(generate("train", problems, seed=seed, levels=[level])):
        first = moves(problem.numbers)
        alive_moves.append(sum(reachable(m.after, problem.target) for m in first) / len(first))
        rng = random.Random(f"stats:{seed}:{k}")
        traces = [solve_trace(problem, rng, backtrack=backtrack) for _ in range(samples)]
        cv_chars.append(_cv([len(t) for t in traces]))
        cv_words.append(_cv([len(t.split()) for t in traces]))
        for t in traces:
            verdicts = check_steps(problem, t)
            (alive_first if verdicts[0].reachable else dead_first).append(len(t))
            steps.append(sum(v.kind != "answer" for v in verdicts))
        unique += count_solutions(problem) == 1
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    return {
        "cv_chars": statistics.median(cv_chars),
        "cv_words": statistics.median(cv_words),
        "chars_dead_first": mean(dead_first),
        "chars_alive_first": mean(alive_first),
        "share_dead_first": len(dead_first) / (len(dead_first) + len(alive_first)),
        "mean_steps": mean(steps),
        "max_steps": max(steps),
        "alive_moves": statistics.fmean(alive_moves),
        "unique": unique / problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.countdown", description=__doc__.split("\n")[0])
    parser.add_argument("--stats", action="store_true", help="print per-level trace-length statistics of the solver")
    parser.add_argument("--problems", type=int, default=200, help="train problems per level (default 200)")
    parser.add_argument("--samples", type=int, default=16, help="solver traces per problem (default 16)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--backtrack", choices=BACKTRACKS, default=DEFAULT_BACKTRACK, help=f"solver style (default {DEFAULT_BACKTRACK}; see solve_trace)")
    args = parser.parse_args(argv)
    if not args.stats:
        parser.print_help()
        return 2
    # alive moves: the mean share of first moves that keep the target reachable (fewer solutions: lower);
    # dead 1st: the share of solver traces whose first move leads to a dead end.
    print("level  cv_chars  cv_words  chars(dead 1st)  chars(alive 1st)  dead 1st  alive moves  steps(mean/max)  unique  seconds")
    for level in args.levels:
        t0 = time.perf_counter()
        s = level_stats(level, problems=args.problems, samples=args.samples, backtrack=args.backtrack)
        print(
            f"{level:>5}  {s['cv_chars']:8.2f}  {s['cv_words']:8.2f}  {s['chars_dead_first']:15.0f}  {s['chars_alive_first']:16.0f}"
            f"  {s['share_dead_first']:8.2f}  {s['alive_moves']:11.2f}  {s['mean_steps']:10.1f}/{s['max_steps']:<4.0f}  {s['unique']:6.2f}  {time.perf_counter() - t0:7.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

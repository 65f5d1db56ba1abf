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
current numbers cannot reach the target and returns to numbers the trace held before.
:func:`check_steps` labels every step exactly (it knows whether the numbers left can still reach the
target); those labels are the process-reward labels, :func:`check_answer` the outcome label. The solver
that writes the training traces is training's, in ``training/countdown_traces.py``.

Splits are a hash of the question text (as in :mod:`tasks.arithmetic`), so train, dev and test never
overlap. Like the rest of ``tasks``, this module imports only the standard library.
"""

from __future__ import annotations

import ast
import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

from tasks.arithmetic import SPLITS, WORKSPACE_END, Split, split_of, split_steps

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
STEP_DELIMITER = "\n\n"
BOXED = "\\boxed{"
ANSWER_TEMPLATE = "The answer is \\boxed{{{expr}}}."
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


# The bundled family is trained and measured on two CPU cores, so the task is Countdown at that scale:
# three or four single-digit numbers and targets below 100 (no result a small policy must write runs past
# three digits). Levels rise in search size (more numbers), in how many numbers a solution needs and in how
# few first moves keep the target reachable.
LEVEL_SPECS: dict[int, LevelSpec] = {
    1: LevelSpec(n_numbers=3, values=(1, 9), targets=(10, 99), min_used=3, max_alive=0.5),
    2: LevelSpec(n_numbers=4, values=(1, 9), targets=(10, 99), min_used=3, max_alive=0.4),
    3: LevelSpec(n_numbers=4, values=(1, 9), targets=(20, 99), min_used=4, max_alive=0.3),
}
LEVELS: tuple[int, ...] = tuple(LEVEL_SPECS)


@dataclass(frozen=True)
class Problem:
    """One problem: ``numbers`` (largest first) and ``target``; ``level`` is the level it was drawn at."""

    numbers: State
    target: int
    level: int

    @property
    def question(self) -> str:
        return f"Using the numbers {render_state(self.numbers)}, each at most once, and + - * /, make {self.target}."

    @property
    def split(self) -> Split:
        return split_of(self.question)


def render_state(state: Sequence[int]) -> str:
    """Numbers as a step writes them: ``8 4 3 1``."""
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
        return f"{self.a} {self.op} {self.b} = {self.result}, left: {render_state(self.after)}"


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
                return Verdict(False, answer, None, f"{number} is not one of the numbers {render_state(problem.numbers)}")
            return Verdict(False, answer, None, f"uses {number} {count} times but it is given {given[number]} time(s)")
    try:
        value = evaluate(expr)
    except ValueError as err:
        return Verdict(False, answer, None, str(err))
    if value != problem.target:
        return Verdict(False, answer, value, f"evaluates to {value}, not the target {problem.target}")
    return Verdict(True, answer, value, "")


StepKind = Literal["move", "backtrack", "answer", "malformed"]

MOVE_RE = re.compile(r"^(\d+) ([+\-*/]) (\d+) = (\d+), left: (\d+(?: \d+)*)$")
BACKTRACK_RE = re.compile(r"^(\d+(?: \d+)*) cannot reach (\d+), back to: (\d+(?: \d+)*)$")


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
        return f"{a} and {b} are not both held (holding {render_state(current)})", None
    if value is None:
        return f"{a} {op} {b} breaks the rule (results must be positive integers)", None
    if value != c:
        return f"arithmetic: {a} {op} {b} is {value}, not {c}", None
    if left != _state(rest + [c]):
        return f"left {render_state(left)}, but {render_state(_state(rest + [c]))} remain", None
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
        move, back = MOVE_RE.match(raw), BACKTRACK_RE.match(raw)
        if move:
            reason, valid_move = _judge_move(current, move)
            valid = valid_move is not None
            if valid_move is not None:
                current = valid_move.after
                held.add(current)
            alive = reachable(current, target)
            if valid and not alive:
                reason = f"{render_state(current)} cannot reach {target}"
            out.append(StepVerdict(i, raw, "move", valid, alive, reason))
        elif back:
            dead, claimed, to = _state([int(v) for v in back.group(1).split()]), int(back.group(2)), _state([int(v) for v in back.group(3).split()])
            if claimed != target:
                reason = f"speaks of reaching {claimed}, the target is {target}"
            elif dead != current:
                reason = f"backs off {render_state(dead)}, but holds {render_state(current)}"
            elif reachable(current, target):
                reason = f"false claim: {render_state(current)} can still reach {target}"
            elif to not in held:
                reason = f"goes back to {render_state(to)}, never held"
            else:
                reason = ""
            valid = not reason
            if to in held:  # the trace went back, whatever its claim: later steps start from there
                current = to
            alive = reachable(current, target)
            if valid and not alive:
                reason = f"goes back to {render_state(current)}, which cannot reach {target} either"
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


# ----------------------------------------------------------------------------------------------- refining

REFINE_HEADER = "Drafts ({n}), each as far as it got:"
# Entries kept in a refine prompt: enough to offer a few different partial routes, short enough that the
# prompt stays a small part of the context whatever the number of drafts.
REFINE_TOP = 3


def read_progress(problem: Problem, text: str) -> tuple[tuple[Move, ...], str | None]:
    """The valid moves leading to the fewest numbers a draft held, and its boxed answer.

    Replays the draft's moves and backtracks without the exact search: a refine prompt is built at serving
    time and must not leak which routes can still reach the target."""
    route: dict[State, tuple[Move, ...]] = {problem.numbers: ()}
    current = problem.numbers
    best: tuple[Move, ...] = ()
    for raw in steps_of(text)[0]:
        move, back = MOVE_RE.match(raw), BACKTRACK_RE.match(raw)
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
    tally = Counter(read_progress(problem, d) for d in drafts)
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
    return "; ".join(f"{m.a} {m.op} {m.b} = {m.result}" for m in route) + f" -> left: {render_state(route[-1].after)}"

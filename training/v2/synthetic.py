"""Cheap wrong solutions for the PRM: solver traces with one planted error of a known kind.

Sampled policies make some mistakes rarely (a tiny target almost never writes a wrong ``left:`` list once
trained, but a served policy may), and a PRM that has never seen an error kind scores it as good. Each
generator plants one error in a :func:`tasks.countdown_traces.solve_trace` trace and keeps only results in which
:func:`tasks.countdown.check_steps` finds at least one bad step, so the labels stay the exact ones.
"""

from __future__ import annotations

import random
from typing import Callable

from tasks import countdown
from training import countdown_traces

KINDS = ("arithmetic", "left", "backtrack", "answer")


def _join(steps: list[str], final: str) -> str:
    return f"{countdown.THINK_OPEN}\n{countdown.STEP_DELIMITER.join(steps)}\n{countdown.THINK_CLOSE}\n\n{final}"


def _fmt(values) -> str:
    return " ".join(str(v) for v in sorted(values, reverse=True))


def _split(text: str) -> tuple[list[str], str]:
    reasoning, final = countdown.steps_of(text)
    return reasoning, countdown.STEP_DELIMITER.join(final)


def _move_indices(steps: list[str]) -> list[int]:
    return [i for i, s in enumerate(steps) if countdown.MOVE_RE.match(s)]


def _states(problem: countdown.Problem, steps: list[str]) -> list[tuple[int, ...]]:
    """The numbers held before each step of a valid trace."""
    out, current = [], problem.numbers
    for s in steps:
        out.append(current)
        if m := countdown.MOVE_RE.match(s):
            current = tuple(int(v) for v in m.group(5).split())
        elif b := countdown.BACKTRACK_RE.match(s):
            current = tuple(int(v) for v in b.group(3).split())
    return out


def _continue_from(state: list[int], rng: random.Random, n: int) -> list[str]:
    """Up to ``n`` arithmetically right moves from the numbers a (wrong) step claims to hold: what a policy
    that believes its slip writes next."""
    steps = []
    current = tuple(sorted(state, reverse=True))
    for _ in range(n):
        options = countdown.moves(current) if len(current) > 1 else []
        if not options:
            break
        m = rng.choice(options)
        steps.append(m.render())
        current = m.after
    return steps


def arithmetic_slip(problem: countdown.Problem, rng: random.Random) -> str | None:
    """A move whose result is off by a little (and whose ``left:`` list carries the wrong value on)."""
    steps, final = _split(countdown_traces.solve_trace(problem, rng))
    idx = _move_indices(steps)
    if not idx:
        return None
    i = rng.choice(idx)
    m = countdown.MOVE_RE.match(steps[i])
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    wrong = max(1, c + rng.choice([-3, -2, -1, 1, 2, 3, 10]))
    if wrong == c:
        wrong = c + 1
    left = [int(v) for v in m.group(5).split()]
    left.remove(c)
    left.append(wrong)
    bad = f"{a} {op} {b} = {wrong}, left: {_fmt(left)}"
    return _join(steps[:i] + [bad] + _continue_from(left, rng, rng.randint(0, 2)), final)


def wrong_left(problem: countdown.Problem, rng: random.Random) -> str | None:
    """A move with the right result but a wrong list of numbers left (one dropped, kept twice or changed)."""
    steps, final = _split(countdown_traces.solve_trace(problem, rng))
    idx = [i for i in _move_indices(steps) if len(countdown.MOVE_RE.match(steps[i]).group(5).split()) > 1]
    if not idx:
        return None
    i = rng.choice(idx)
    m = countdown.MOVE_RE.match(steps[i])
    left = [int(v) for v in m.group(5).split()]
    how = rng.choice(["drop", "repeat", "change"])
    j = rng.randrange(len(left))
    if how == "drop":
        del left[j]
    elif how == "repeat":
        left.append(left[j])
    else:
        left[j] = max(1, left[j] + rng.choice([-2, -1, 1, 2]))
    bad = f"{m.group(1)} {m.group(2)} {m.group(3)} = {m.group(4)}, left: {_fmt(left)}"
    return _join(steps[:i] + [bad] + steps[i + 1 :], final)


def wrong_backtrack(problem: countdown.Problem, rng: random.Random) -> str | None:
    """A backtrack that is false: it gives up numbers that can still reach the target, returns to numbers
    never held, or returns to a dead end."""
    steps, final = _split(countdown_traces.solve_trace(problem, rng))
    states = _states(problem, steps)
    how = rng.choice(["false-claim", "never-held", "dead"])
    if how == "false-claim":
        # Right after a move that keeps the target reachable (and has not reached it), claim it cannot and
        # go back to the start.
        after = {i: tuple(int(v) for v in countdown.MOVE_RE.match(steps[i]).group(5).split()) for i in _move_indices(steps)}
        alive = [i for i, st in after.items() if problem.target not in st and countdown.reachable(st, problem.target)]
        if not alive:
            return None
        i = rng.choice(alive)
        bad = f"{_fmt(after[i])} cannot reach {problem.target}, back to: {_fmt(problem.numbers)}"
        return _join(steps[: i + 1] + [bad] + steps[i + 1 :], final)
    backs = [i for i, s in enumerate(steps) if countdown.BACKTRACK_RE.match(s)]
    if not backs:
        return None
    i = rng.choice(backs)
    b = countdown.BACKTRACK_RE.match(steps[i])
    held = set(states[: i + 1])
    if how == "never-held":
        to = [int(v) for v in b.group(3).split()]
        k = rng.randrange(len(to))
        to[k] += rng.choice([1, 2, 3])
        if tuple(sorted(to, reverse=True)) in held:
            return None
    else:
        dead = [s for s in held if not countdown.reachable(s, problem.target)]
        if not dead:
            return None
        to = list(rng.choice(sorted(dead)))
    bad = f"{b.group(1)} cannot reach {b.group(2)}, back to: {_fmt(to)}"
    # What follows the true backtrack no longer follows from where this one went: stop and answer.
    return _join(steps[:i] + [bad] + _continue_from(to, rng, rng.randint(0, 2)), final)


def wrong_answer(problem: countdown.Problem, rng: random.Random) -> str | None:
    """A valid trace whose boxed expression is wrong (one number or operation changed)."""
    steps, final = _split(countdown_traces.solve_trace(problem, rng))
    answer = countdown.extract_answer(_join(steps, final))
    if answer is None:
        return None
    chars = list(answer)
    digits = [i for i, ch in enumerate(chars) if ch.isdigit()]
    ops = [i for i, ch in enumerate(chars) if ch in "+-*/"]
    if ops and rng.random() < 0.5:
        i = rng.choice(ops)
        chars[i] = rng.choice([o for o in "+-*/" if o != chars[i]])
    elif digits:
        i = rng.choice(digits)
        chars[i] = rng.choice([d for d in "123456789" if d != chars[i]])
    wrong = "".join(chars)
    return _join(steps, countdown.ANSWER_TEMPLATE.format(expr=wrong))


GENERATORS: dict[str, Callable[[countdown.Problem, random.Random], str | None]] = {
    "arithmetic": arithmetic_slip,
    "left": wrong_left,
    "backtrack": wrong_backtrack,
    "answer": wrong_answer,
}


def negative(problem: countdown.Problem, kind: str, rng: random.Random, *, tries: int = 8) -> str | None:
    """A trace of ``problem`` with an error of ``kind`` (one of KINDS) and at least one bad step by
    :func:`tasks.countdown.check_steps`, or None when ``tries`` attempts found none."""
    for _ in range(tries):
        text = GENERATORS[kind](problem, rng)
        if text is not None and any(not v.good for v in countdown.check_steps(problem, text)):
            return text
    return None

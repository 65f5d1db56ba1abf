"""Training examples of the bundled task: reference traces with masked slips, simulated drafts, and the solve
and refine examples the policies learn from. Only the recipe needs these; the task itself (generator, checker,
prompt formats) is :mod:`tasks.arithmetic`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tasks.arithmetic import ANSWER_PREFIX, CORRECTION_PREFIX, Problem, apply_op, prompt_for, refine_prompt


@dataclass(frozen=True)
class Segment:
    """A piece of a training target; ``learn`` False means the text is context only (no loss on it)."""

    text: str
    learn: bool = True


def corrupt(value: int, rng: random.Random) -> int:
    """A plausible arithmetic slip: one digit off, a lost carry, or off by a small amount."""
    digits = len(str(abs(value)))
    kind = rng.random()
    if kind < 0.5:
        delta = rng.choice([-1, 1]) * 10 ** rng.randrange(digits)
    elif kind < 0.8:
        delta = rng.choice([-1, 1]) * rng.randint(1, 9) * 10 ** rng.randrange(digits)
    else:
        delta = rng.choice([-2, -1, 1, 2])
    out = value + delta
    return out if out >= 0 and out != value else value + abs(delta) or value + 1


def training_trace(problem: Problem, rng: random.Random, *, backtrack_rate: float) -> list[Segment]:
    """The reference solution, where with probability ``backtrack_rate`` one step is first written wrong
    (context only: the model must not learn to make the slip) and then corrected with a ``wait,`` line."""
    vals = problem.values
    segments: list[Segment] = []
    slip_at = rng.randrange(len(problem.ops)) if rng.random() < backtrack_rate else -1
    for k, (op, operand) in enumerate(problem.ops):
        step = f"{vals[k]}{op}{operand}={vals[k + 1]}"
        if k == slip_at:
            segments.append(Segment(f"{vals[k]}{op}{operand}={corrupt(vals[k + 1], rng)}\n", learn=False))
            segments.append(Segment(f"{CORRECTION_PREFIX}{step}\n"))
        else:
            segments.append(Segment(step + "\n"))
    segments.append(Segment(f"{ANSWER_PREFIX}{problem.answer}"))
    return segments


def simulated_draft(problem: Problem, rng: random.Random, *, slip_rate: float) -> str:
    """A draft as a fallible policy would write it: each step slips with ``slip_rate`` and later steps
    carry the slip forward; sometimes the draft stops early without an answer."""
    value = problem.start
    lines = []
    for op, operand in problem.ops:
        nxt = apply_op(value, op, operand)
        if rng.random() < slip_rate:
            nxt = corrupt(nxt, rng)
        lines.append(f"{value}{op}{operand}={nxt}")
        value = nxt
        if rng.random() < 0.02:
            return "\n".join(lines)
    lines.append(f"{ANSWER_PREFIX}{value}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` is context, ``target`` segments are what the model learns."""

    prompt: str
    target: tuple[Segment, ...] = field(default_factory=tuple)


def solve_example(problem: Problem, rng: random.Random, *, backtrack_rate: float = 0.1) -> Example:
    """The question's prompt and its training trace (see :func:`training_trace`)."""
    return Example(prompt_for(problem.question), tuple(training_trace(problem, rng, backtrack_rate=backtrack_rate)))


def refine_example(problem: Problem, rng: random.Random, *, backtrack_rate: float = 0.1) -> Example:
    """A refine example from simulated drafts whose quality varies from excellent to mostly wrong, so the
    model learns to lean on agreement in the workspace without trusting it blindly."""
    n_drafts = rng.randint(2, 8)
    slip_rate = rng.choice([0.02, 0.1, 0.2, 0.35, 0.5])
    drafts = [simulated_draft(problem, rng, slip_rate=slip_rate) for _ in range(n_drafts)]
    trace = training_trace(problem, rng, backtrack_rate=backtrack_rate)
    return Example(refine_prompt(problem, drafts), tuple(trace))

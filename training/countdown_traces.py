"""The Countdown solver that writes the v2 family's training traces, and its statistics.

:func:`solve_trace` is a randomized depth-first search, so its traces contain the dead ends it tried: how long
a trace is depends on its luck, which is what makes sampling several and picking pay off. Every trace is valid
by :func:`tasks.countdown.check_steps` and ends with an answer :func:`tasks.countdown.check_answer` accepts;
:func:`optimal_trace` is the direct one. The task itself (problems, the rule, the checkers, the formats) is
:mod:`tasks.countdown`, which the service grades with; writing traces is training's alone.

    python -m training.countdown_traces --stats [--problems 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Sequence

from tasks.countdown import (
    ANSWER_TEMPLATE,
    LEVELS,
    STEP_DELIMITER,
    THINK_CLOSE,
    THINK_OPEN,
    Expr,
    Move,
    Problem,
    State,
    check_steps,
    count_solutions,
    generate,
    min_used,
    moves,
    reachable,
    render_expr,
    render_state,
)

# Solver defaults, tuned with ``--stats`` (straying more often lengthens traces faster than it spreads them;
# going deeper into dead ends spreads them more). The step caps were set on the former five-level task, to
# keep its level-5 traces (six numbers, targets up to 999) within a 1024-token training row with its prompt:
# "local" backtracks climb one state at a time, so its traces run longer and it gets the tighter cap (at 48
# steps 38% of those traces did not fit and were never trained on). At levels 1-3, 480 local traces a level
# (60 train problems x 8) take 31 steps and 623 reply tokens at most (a 409-entry BPE of the small size).
DEFAULT_GUIDE = 0.6
DEFAULT_EXPLORE = 0.5
# Two numbers ("local" style): the move that makes the target first with probability DEFAULT_FINISH, else a
# move that misses and its backtrack; a pair that cannot make the target gets one move tried with probability
# DEFAULT_ATTEMPT before it is given up. A trace whose last move always hit the target taught an 808k policy
# that a move from two numbers makes the target, whatever its arithmetic says (it wrote "40 + 9 = 41, left: 41"
# for target 41 and boxed that).
DEFAULT_FINISH = 0.7
DEFAULT_ATTEMPT = 0.5
BACKTRACKS = ("local", "jump")
DEFAULT_BACKTRACK = "local"
DEFAULT_MAX_STEPS = {"local": 32, "jump": 48}


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
    finish: float = DEFAULT_FINISH,
    attempt: float = DEFAULT_ATTEMPT,
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
    state reached back that cannot reach the target is declared dead in turn. Two numbers are settled by
    trying: the move that makes the target with probability ``finish``, else first one move that misses, whose
    single number is then backed off (``24 cannot reach 18, back to: 8 3``); a pair that cannot make the
    target is given up, after one missing move with probability ``attempt``. So every choice a policy
    imitating these traces must make is one the text before it lets it make, up to whether three or more
    numbers (or a pair it has tried once) can still reach the target, which is left to its judgement (and
    the PRM's), and a move's result is never the target unless its arithmetic makes it. ``"jump"``: in one step to the deepest state on the path that can still
    reach the target, a choice only an oracle can make; a policy trained on such traces backtracks to
    states it never held and loops in dead ends (``bench/README.md``, "Solver styles").
    """
    if not all(0.0 <= x <= 1.0 for x in (guide, explore, finish, attempt)):
        raise ValueError("guide, explore, finish and attempt are probabilities, in [0, 1]")
    if backtrack not in BACKTRACKS:
        raise ValueError(f"backtrack {backtrack!r}; expected one of {', '.join(BACKTRACKS)}")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS[backtrack]
    if max_steps < len(problem.numbers) - 1:
        raise ValueError(f"max_steps {max_steps} is below the {len(problem.numbers) - 1} moves a solution may need")
    if backtrack == "local":
        return _local_trace(problem, rng, guide=guide, explore=explore, max_steps=max_steps, finish=finish, attempt=attempt)
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
                steps.append(f"{render_state(node.state)} cannot reach {target}, back to: {render_state(path[anchor].state)}")
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


def _local_trace(problem: Problem, rng: random.Random, *, guide: float, explore: float, max_steps: int, finish: float, attempt: float) -> str:
    target = problem.target
    path = [_root(problem)]
    steps: list[str] = []

    def back() -> None:
        dead = path.pop()
        path[-1].tried.add(dead.step)
        steps.append(f"{render_state(dead.state)} cannot reach {target}, back to: {render_state(path[-1].state)}")

    def home() -> int:
        """Steps from a dead state to the target without straying: a backtrack per state up to the deepest
        live one, then one move per number it holds but the last."""
        anchor = max(k for k, n in enumerate(path) if reachable(n.state, target))
        return len(path) - 1 - anchor + len(path[anchor].state) - 1

    while target not in path[-1].state:
        node = path[-1]
        left = max_steps - len(steps)
        if len(node.state) == 1:
            back()  # a tried move missed the target: the number it left says so
            continue
        if len(node.state) == 2:
            options = [m for m in moves(node.state) if m not in node.tried]
            hits = [m for m in options if target in m.after]
            misses = [m for m in options if target not in m.after]
            # Two numbers are settled by trying a move and reading its result, as a policy can: straight to
            # the target with probability ``finish``, else a miss and its backtrack first; a pair that cannot
            # make the target is given up at once, or after one miss with probability ``attempt``. At most one
            # miss per pair, so what follows a miss is the hit or the giving up: a policy imitating traces
            # that may miss again after a miss can loop on a dead pair, retrying moves it has tried (read in
            # 808k-parameter samples; not counted). A miss costs its move and its backtrack, on top of the way
            # home.
            if hits:
                if misses and not node.tried and left >= 3 and rng.random() >= finish:
                    m = rng.choice(misses)
                else:
                    m = rng.choice(hits)
            elif misses and not node.tried and left >= 2 + home() and rng.random() < attempt:
                m = rng.choice(misses)
            else:
                back()
                continue
        elif not reachable(node.state, target):
            # Deeper costs that move and the way home from there (at most one more backtrack than from here).
            if left >= 2 + home() and rng.random() < explore:
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
    parser = argparse.ArgumentParser(prog="python -m training.countdown_traces", description=__doc__.split("\n")[0])
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

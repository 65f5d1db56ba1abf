"""The Countdown solver that writes the v2 family's training traces: every trace passes the task's own
checker, the two backtrack styles, and the step cap."""

import random

import pytest

from tasks import countdown as task
from training import countdown_traces as traces


@pytest.mark.parametrize("backtrack", traces.BACKTRACKS)
def test_solver_traces_pass_their_own_checker_and_vary_in_length(backtrack):
    problems = [p for level in task.LEVELS for p in task.generate("train", 2, seed=5, levels=[level])]
    for k, p in enumerate(problems):
        rng = random.Random(k)
        lengths = set()
        for _ in range(6):
            trace = traces.solve_trace(p, rng, backtrack=backtrack)
            assert trace.startswith("<think>\n") and "\n</think>\n\nThe answer is \\boxed{" in trace
            verdicts = task.check_steps(p, trace)
            assert all(v.valid for v in verdicts), [v for v in verdicts if not v.valid]
            assert verdicts[-1].kind == "answer" and verdicts[-1].good
            assert sum(v.kind != "answer" for v in verdicts) <= traces.DEFAULT_MAX_STEPS[backtrack]
            assert task.check_answer(p, trace).correct
            lengths.add(len(trace))
        assert len(lengths) > 1 or p.level == 1
    direct = traces.optimal_trace(problems[-1])
    assert all(v.good for v in task.check_steps(problems[-1], direct))


def test_local_backtracks_go_one_state_up_and_two_numbers_are_settled_by_trying():
    """What makes "local" traces imitable: a backtrack returns to the state the dead one was reached from,
    a move from two numbers either makes the target or is backed off from the single number it left (at
    most once per pair), and a move that leaves one number writes the target only when its arithmetic
    makes it."""
    misses = 0
    for k, p in enumerate(task.generate("train", 12, seed=8, levels=[2, 3])):
        trace = traces.solve_trace(p, random.Random(k), guide=0.2, backtrack="local")
        stack = [p.numbers]
        verdicts = task.check_steps(p, trace)
        for i, v in enumerate(verdicts):
            if v.kind == "move":
                left = tuple(int(x) for x in v.text.split("left: ")[1].split())
                if len(left) == 1 and left[0] != p.target:
                    misses += 1
                    assert verdicts[i + 1].text == f"{left[0]} cannot reach {p.target}, back to: {task.render_state(stack[-1])}"
                    # One miss per pair: after it comes the hit or the pair's own backtrack, never a second miss.
                    after = verdicts[i + 2].text
                    assert after.startswith(f"{task.render_state(stack[-1])} cannot reach") or after.endswith(f"left: {p.target}"), after
                stack.append(task._state(left))
            elif v.kind == "backtrack":
                dead, to = v.text.split(" cannot reach ")[0], v.text.split("back to: ")[1]
                assert task._state([int(x) for x in dead.split()]) == stack.pop()
                assert task._state([int(x) for x in to.split()]) == stack[-1], v.text
    assert misses > 0
    # finish=1, attempt=0: from two numbers only the move that makes the target is written.
    for k, p in enumerate(task.generate("train", 6, seed=8, levels=[3])):
        trace = traces.solve_trace(p, random.Random(k), finish=1.0, attempt=0.0)
        assert all(len(v.text.split("left: ")[1].split()) > 1 or str(p.target) == v.text.split("left: ")[1] for v in task.check_steps(p, trace) if v.kind == "move")
    with pytest.raises(ValueError, match="backtrack 'up'"):
        traces.solve_trace(p, random.Random(0), backtrack="up")
    with pytest.raises(ValueError, match="probabilities"):
        traces.solve_trace(p, random.Random(0), finish=1.5)


@pytest.mark.parametrize("backtrack", traces.BACKTRACKS)
def test_the_step_cap_holds_and_is_validated(backtrack):
    p = task.generate("train", 1, seed=2, levels=[max(task.LEVELS)])[0]
    rng = random.Random(0)
    for _ in range(5):
        trace = traces.solve_trace(p, rng, guide=0.0, explore=1.0, max_steps=8, backtrack=backtrack)
        steps = task.check_steps(p, trace)
        assert sum(v.kind != "answer" for v in steps) <= 8 and task.check_answer(p, trace).correct
    with pytest.raises(ValueError, match="max_steps 2"):  # four numbers may need three moves
        traces.solve_trace(p, rng, max_steps=2)
    with pytest.raises(ValueError, match="unsolvable"):
        traces.solve_trace(task.Problem((2, 2), 5, 1), rng)

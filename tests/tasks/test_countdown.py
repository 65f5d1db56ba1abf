"""The Countdown task: splits, solvability, the exact answer checker, step labels, refine prompts (the solver
that writes training traces is tested in tests/training/test_countdown_traces.py)."""

import random

import pytest

from tasks import countdown as task
from training import countdown_traces as traces

# The only solution is (8 * 3 + 1) * 4.
P = task.Problem(numbers=(8, 4, 3, 1), target=100, level=2)


def answer(expr: str) -> str:
    return f"<think>\nthinking\n</think>\n\nThe answer is \\boxed{{{expr}}}."


def test_splits_are_disjoint_and_deterministic():
    questions = {s: {p.question for p in task.generate(s, 60, seed=3, levels=[1, 2])} for s in task.SPLITS}
    assert not questions["train"] & questions["dev"]
    assert not questions["train"] & questions["test"]
    assert not questions["dev"] & questions["test"]
    # Another seed still never crosses splits: the split is a function of the question text.
    assert not {p.question for p in task.generate("train", 60, seed=99, levels=[1, 2])} & questions["test"]
    again = task.generate("test", 20, seed=3, levels=[1, 2])
    assert [p.question for p in again] == [p.question for p in task.generate("test", 20, seed=3, levels=[1, 2])]
    with pytest.raises(ValueError, match="unknown split"):
        task.generate("valid", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown levels"):
        task.generate("dev", 1, levels=[4])  # levels 4 and 5 went with Countdown at CPU scale


def test_every_level_draws_solvable_problems_as_hard_as_it_says():
    for level in task.LEVELS:
        spec = task.LEVEL_SPECS[level]
        for p in task.generate("dev", 4, seed=1, levels=[level]):
            assert p.level == level and len(p.numbers) == spec.n_numbers
            assert spec.targets[0] <= p.target <= spec.targets[1] and p.target not in p.numbers
            assert task.reachable(p.numbers, p.target)
            assert task.min_used(p.numbers, p.target) >= spec.min_used
            # An independent check of solvability: the direct trace's answer is a correct expression.
            assert task.check_answer(p, traces.optimal_trace(p)).correct
            parsed = task.parse_question(p.question)
            assert (parsed.numbers, parsed.target) == (p.numbers, p.target)


def test_reachability_is_exact_on_small_cases():
    assert task.reachable(P.numbers, 100) and task.count_solutions(P, limit=5) == 1
    assert task.reachable((25, 4), 100) and task.reachable((24, 4, 1), 100)
    assert not task.reachable((32, 3, 1), 100) and not task.reachable((24, 3), 100)
    assert task.reachable((7,), 7) and not task.reachable((7,), 8) and not task.reachable((2, 2), 5)
    assert task.min_used((9, 4, 1), 45) == 3 and task.min_used((9, 4, 1), 13) == 2
    # Results must stay positive integers: 5 - 5 = 0 and 5 / 2 are not moves.
    assert {m.result for m in task.moves((5, 5))} == {10, 25, 1}
    assert {m.render() for m in task.moves((6, 4))} == {"6 + 4 = 10, left: 10", "6 - 4 = 2, left: 2", "6 * 4 = 24, left: 24"}


def test_checker_accepts_correct_expressions_and_says_why_not():
    assert task.check_answer(P, answer("(8 * 3 + 1) * 4")) == task.Verdict(True, "(8 * 3 + 1) * 4", 100, "")
    assert task.check_answer(P, answer("(8 \\times 3 + 1) \\cdot 4 = 100")).correct
    # Nested braces: brace groups and \frac inside \boxed{} are matched, not cut at the first '}'.
    assert task.check_answer(P, answer("\\left(8 \\times 3 + {1}\\right) \\times {4}")).correct
    assert task.check_answer(task.Problem((9, 6, 2), 27, 1), answer("\\frac{9 \\times 6}{2}")).correct
    cases = {
        "(8 * 3) * 4": "evaluates to 96, not the target 100",
        "(8 * 3 + 1) * (4 * 1)": "uses 1 2 times but it is given 1 time(s)",
        "25 * 4": "25 is not one of the numbers 8 4 3 1",
        "100": "100 is not one of the numbers 8 4 3 1",
        "(8 * 4) / 3": "32 / 3 is not an exact division",
        "3 - 4 + 8": "3 - 4 is not a positive integer",
        "-3 + 8": "not allowed in an answer: '-3' (only numbers and + - * /)",
        "8 ** 2": "not allowed in an answer: '8 ** 2' (only numbers and + - * /)",
        "__import__('os')": "not allowed in an answer: \"__import__('os')\" (only numbers and + - * /)",
        "8 4": "not an arithmetic expression: '8 4'",
        "\\frac{8}": "\\frac without two brace groups",
        "(8 * 3 + 1) * 4 = 99": "the answer equates to '99', not the target 100",
    }
    for expr, reason in cases.items():
        verdict = task.check_answer(P, answer(expr))
        assert not verdict.correct and verdict.reason == reason, expr


def test_division_by_zero_and_inexact_division_are_refused():
    zero = task.Problem(numbers=(8, 3, 3), target=8, level=1)
    assert task.check_answer(zero, answer("8 / (3 - 3)")).reason == "3 - 3 is not a positive integer"
    assert task.check_answer(zero, answer("8 / 0")).reason == "0 is not one of the numbers 8 3 3"
    with pytest.raises(ValueError, match="division by zero"):
        task.evaluate(("/", 8, 0))
    with pytest.raises(ValueError, match="7 / 2 is not an exact division"):
        task.evaluate(("/", 7, 2))


def test_the_answer_is_the_last_box_after_the_reasoning():
    right = "(8 * 3 + 1) * 4"
    # A box inside the reasoning does not count, the last box of the final part does.
    assert not task.check_answer(P, f"<think>\n\\boxed{{{right}}}\n</think>\n\nno idea").correct
    assert task.check_answer(P, f"<think>\nx\n</think>\n\n\\boxed{{8}} or rather \\boxed{{{right}}}").correct
    assert task.check_answer(P, f"<think>\n\\boxed{{{right}}}").reason == "the reasoning never closed: no final answer"
    assert task.check_answer(P, f"plain \\boxed{{{right}}}").correct  # no think span at all: all is final
    assert task.check_answer(P, answer(right).replace("}.", ".")).reason == "no \\boxed{} answer after the reasoning"
    assert task.check_answer(P, "").reason == "no \\boxed{} answer after the reasoning"
    assert task.check_answer(P, answer("1+" * 150 + "1")).reason.startswith("expression longer than")


def test_step_labels_are_exact():
    text = (
        "<think>\n"
        "8 * 4 = 32, left: 32 3 1\n\n"  # valid, but 32 3 1 cannot make 100: bad
        "32 3 1 cannot reach 100, back to: 8 4 3 1\n\n"  # a true backtrack to a held state: good
        "8 * 3 = 24, left: 24 4 1\n\n"
        "4 - 1 = 3, left: 24 3\n\n"  # valid, dead
        "24 + 3 = 28, left: 28\n\n"  # arithmetic slip: the state stays 24 3
        "24 3 cannot reach 100, back to: 24 4 1\n\n"
        "24 4 1 cannot reach 100, back to: 8 4 3 1\n\n"  # false claim (it went back all the same)
        "25 * 4 = 100, left: 100\n\n"  # 25 and 4 are not held at 8 4 3 1
        "hmm\n"
        "</think>\n\n"
        "The answer is \\boxed{(8 * 3 + 1) * 4}."
    )
    v = task.check_steps(P, text)
    assert [s.kind for s in v] == ["move", "backtrack", "move", "move", "move", "backtrack", "backtrack", "move", "malformed", "answer"]
    assert [s.good for s in v] == [False, True, True, False, False, True, False, False, False, True]
    assert (v[0].valid, v[0].reachable, v[0].reason) == (True, False, "32 3 1 cannot reach 100")
    assert (v[3].valid, v[3].reason) == (True, "24 3 cannot reach 100")
    assert (v[4].valid, v[4].reason) == (False, "arithmetic: 24 + 3 is 27, not 28")
    assert (v[6].valid, v[6].reachable, v[6].reason) == (False, True, "false claim: 24 4 1 can still reach 100")
    assert v[7].reason == "25 and 4 are not both held (holding 8 4 3 1)"
    assert v[8].reason == "neither a move nor a backtrack"
    assert all(s.reason == "" for s in v if s.good) and all(s.reason for s in v if not s.good)


def test_backtrack_checks():
    base = "<think>\n8 * 4 = 32, left: 32 3 1\n\n"
    never = task.check_steps(P, base + "32 3 1 cannot reach 100, back to: 9 9")[1]
    assert (never.valid, never.reason) == (False, "goes back to 9 9, never held")
    wrong = task.check_steps(P, base + "8 4 3 1 cannot reach 100, back to: 8 4 3 1")[1]
    assert wrong.reason == "backs off 8 4 3 1, but holds 32 3 1"
    target = task.check_steps(P, base + "32 3 1 cannot reach 99, back to: 8 4 3 1")[1]
    assert target.reason == "speaks of reaching 99, the target is 100"
    alive = task.check_steps(P, "<think>\n8 4 3 1 cannot reach 100, back to: 8 4 3 1")[0]
    assert alive.reason == "false claim: 8 4 3 1 can still reach 100"
    deeper = task.check_steps(P, base + "32 + 3 = 35, left: 35 1\n\n35 1 cannot reach 100, back to: 32 3 1")[2]
    assert deeper.valid and not deeper.good  # true, but back to a dead end
    assert deeper.reason == "goes back to 32 3 1, which cannot reach 100 either"


def test_a_wrong_completion_is_put_down_to_its_first_untrue_step():
    start = "<think>\n8 * 3 = 24, left: 24 4 1\n\n"
    right = "24 + 1 = 25, left: 25 4\n\n25 * 4 = 100, left: 100\n</think>\n\nThe answer is \\boxed{(8 * 3 + 1) * 4}."
    assert task.failure(P, start + right) is None
    cases = {
        "arithmetic": "24 + 1 = 26, left: 26 4",
        "numbers not held": "9 + 1 = 10, left: 24 10 4",
        "breaks the rule": "1 - 4 = 0, left: 24 0",
        "numbers left": "24 + 1 = 25, left: 25 4 1",
        "false dead end": "24 4 1 cannot reach 100, back to: 8 4 3 1",
        "bad backtrack": "24 - 1 = 23, left: 23 4\n\n23 4 cannot reach 100, back to: 9 9",  # a true dead end, back to a state never held
        "malformed step": "let me think",
    }
    wrong = "\n</think>\n\nThe answer is \\boxed{8 * 3 + 4}."
    for kind, step in cases.items():
        # The first untrue step, not the wrong answer it led to, is the cause.
        assert task.failure(P, start + step + wrong) == kind, kind
        assert task.failure(P, start + step + "\n\n" + right) is None  # a right answer is right whatever came before
    assert task.failure(P, start + "24 + 1 = 25, left: 25 4") == "no answer"
    assert task.failure(P, start + "24 + 4 = 28, left: 28 1" + wrong) == "wrong answer"
    assert set(cases) | {"no answer", "wrong answer"} == set(task.FAILURES)


def test_question_parse_and_render_expr():
    assert task.parse_question(P.question).numbers == P.numbers
    with pytest.raises(ValueError, match="not a countdown question"):
        task.parse_question("Start at 3 and apply +4.")
    with pytest.raises(ValueError, match="at most 8"):
        task.parse_question(task.Problem(tuple(range(9, 0, -1)), 50, 5).question)
    assert task.render_expr(("*", ("-", 5, 1), ("+", ("*", 8, 3), 1))) == "(5 - 1) * (8 * 3 + 1)"
    assert task.render_expr(("-", 9, ("-", 5, 1))) == "9 - (5 - 1)"
    assert task.render_expr(("+", 9, ("-", 5, 1))) == "9 + 5 - 1"


def test_refine_prompt_offers_each_drafts_deepest_route():
    dead = "<think>\n8 * 4 = 32, left: 32 3 1\n\n32 + 3 = 35, left: 35 1\n\n35 1 cannot reach 100, back to: 8 4 3 1\n\n8 * 3 = 24, left: 24 4 1"
    good = traces.optimal_trace(P)
    prompt = task.refine_prompt(P, [dead, dead, good, "garbage"])
    lines = prompt.splitlines()
    assert lines[0] == P.question and lines[1] == "Drafts (4), each as far as it got:" and lines[-1] == "---"
    assert lines[2] == "x2: 8 * 4 = 32; 32 + 3 = 35 -> left: 35 1; answer: none"
    assert lines[3].startswith("x1: ") and lines[3].endswith("-> left: 100; answer: " + task.extract_answer(good))
    assert lines[4] == "x1: no moves; answer: none"
    # Bounded whatever the number of drafts: every first move as its own draft still gives REFINE_TOP lines.
    many = [f"<think>\n{m.render()}" for m in task.moves(P.numbers)]
    assert len(many) > task.REFINE_TOP
    assert len(task.refine_prompt(P, many).splitlines()) == 2 + task.REFINE_TOP + 1


def test_canonical_keys_group_reorderings_of_plus_and_times_only():
    key = task.canonical_answer
    assert key("3 * (2 + 5)") == key("(5+2)*3") == key("3 \\times (5 + 2)")
    assert key("(1 + 2) + 3") == key("1 + (3 + 2)")
    assert key("8 - 3") != key("3 - 8")
    assert key("8 / 2") != key("2 / 8")
    assert key("2 * 3 + 4") != key("2 * (3 + 4)")
    assert key("(8 * 3 + 1) * 4 = 100") == key("4 * (1 + 3 * 8)")
    assert key("x + 1") is None

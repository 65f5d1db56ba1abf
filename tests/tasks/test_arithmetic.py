"""The bundled task: splits, levels, question parsing, the exact checker and the refine workspace."""

import pytest

from tasks import arithmetic as task


def test_splits_are_disjoint_and_deterministic():
    questions = {s: {p.question for p in task.generate(s, 400, seed=3)} for s in task.SPLITS}
    assert not questions["train"] & questions["dev"]
    assert not questions["train"] & questions["test"]
    assert not questions["dev"] & questions["test"]
    # Different seeds still never cross splits: the split is a function of the question text.
    other = {p.question for p in task.generate("train", 400, seed=99)}
    assert not other & questions["test"]
    assert [p.question for p in task.generate("test", 50, seed=3)] == [p.question for p in task.generate("test", 50, seed=3)]


def test_levels_control_length_and_values_stay_in_range():
    for level in task.LEVELS:
        for p in task.generate("dev", 50, seed=1, levels=[level]):
            assert p.level == level
            assert len(p.ops) == task.LEVEL_SPECS[level].n_ops
            assert all(0 <= v <= task.MAX_VALUE for v in p.values)


def test_question_round_trips():
    for p in task.generate("test", 30, seed=0):
        q = task.parse_question(p.question)
        assert (q.start, q.ops, q.answer) == (p.start, p.ops, p.answer)
    with pytest.raises(ValueError, match="not a chained-arithmetic question"):
        task.parse_question("What is the capital of France?")


def test_checker_accepts_reference_and_rejects_with_reasons():
    p = task.Problem(start=37, ops=(("+", 48), ("*", 3)), level=1)
    assert task.check_answer(p, p.solution()) == task.Verdict(True, 255, "")
    assert task.check_answer(p, "37+48=85\n85*3=255\nAnswer: 256").reason == "answer 256 != expected 255"
    assert task.check_answer(p, "37+48=85\n85*3=255").reason == "no 'Answer:' line"
    assert "not an integer" in task.check_answer(p, "Answer: 255.0").reason
    assert "not an integer" in task.check_answer(p, "Answer: two hundred").reason
    assert not task.check_answer(p, "").correct
    # The last answer line counts, so a trace that corrects its answer is judged on the correction.
    assert task.check_answer(p, "Answer: 1\nAnswer: 255").correct


def test_step_verdicts_follow_the_trace():
    p = task.Problem(start=37, ops=(("+", 48), ("*", 3)), level=1)
    verdicts = task.check_steps(p, "37+48=85\n85*3=265\nwait, 85*3=255\nAnswer: 255")
    assert [v.on_track for v in verdicts] == [True, False, True, True]
    assert verdicts[1].reason == "arithmetic: 85*3 is 255, not 265"
    wrong_op = task.check_steps(p, "37+47=84\n84*3=252\nAnswer: 252")
    assert [v.on_track for v in wrong_op] == [False, False, False]
    assert wrong_op[0].reason == "operation +47 != expected +48"
    early = task.check_steps(p, "37+48=85\nAnswer: 85")
    assert early[-1].reason == "answered after 1 of 2 operations"
    assert task.check_steps(p, "hello")[0].kind == "malformed"


def test_workspace_is_bounded_and_counts_drafts():
    p = task.Problem(start=10, ops=(("+", 5), ("*", 2)), level=1)
    drafts = ["10+5=15\n15*2=30\nAnswer: 30"] * 5 + ["10+5=16\n16*2=32\nAnswer: 32"] * 2 + ["garbage"]
    ws = task.distill(p, drafts)
    assert ws.n_drafts == 8
    assert ws.steps[0] == (("10+5=15", 5), ("10+5=16", 2))
    assert ws.answers == ((30, 5), (32, 2))
    assert ws.render().split("\n")[1:3] == ["10+5=15 x5, 10+5=16 x2", "15*2=30 x5, 16*2=32 x2"]
    many = [f"10+5={v}\n{v}*2={2 * v}\nAnswer: {2 * v}" for v in range(100)]
    assert all(len(s) <= task.WORKSPACE_TOP for s in task.distill(p, many).steps)
    prompt = task.refine_prompt(p, drafts)
    assert prompt.startswith(p.question + "\n") and prompt.endswith(task.WORKSPACE_END + "\n")

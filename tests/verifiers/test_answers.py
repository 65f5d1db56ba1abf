"""Answer equivalence: the task's exact checker and general math through math-verify."""

from __future__ import annotations

import threading

import pytest

from orchestrator.errors import InvalidRequest
from verifiers.answers import MathAnswerVerifier, TaskAnswerVerifier, answer_verifier

MATH = MathAnswerVerifier()


@pytest.mark.parametrize("text", ["1/2", "0.5", "$\\frac{1}{2}$", "The answer is \\boxed{\\frac{1}{2}}.", "\\boxed{0.50}", "$\\dfrac{2}{4}$"])
def test_one_half_in_every_spelling_has_one_key(text):
    assert MATH.extract(text) == "1/2"
    assert MATH.is_correct(text, "1/2") and MATH.is_correct(text, "\\frac{1}{2}")


def test_equivalent_expressions_share_a_key():
    assert MATH.extract("$2x+x$") == MATH.extract("$3x$") == "3*x"
    assert MATH.extract("$\\frac{\\sqrt{2}}{2}$") == MATH.extract("$\\sqrt{2}/2$")
    assert MATH.is_correct("$2x + x$", "3x")


def test_answer_inside_distractor_text():
    text = "First I got 5, then 6, but checking again the final answer is \\boxed{7}. (Not 8.)"
    assert MATH.extract(text) == "7"
    assert MATH.is_correct(text, "7") and not MATH.is_correct(text, "5")


@pytest.mark.parametrize("text", ["", "   ", "I do not know.", "\\boxed{}"])
def test_missing_or_malformed_answers_never_count(text):
    assert MATH.extract(text) is None
    assert not MATH.is_correct(text, "1/2")


def test_wrong_answers_are_not_equivalent():
    assert MATH.extract("\\boxed{0.51}") != MATH.extract("\\boxed{1/2}")
    assert not MATH.is_correct("\\boxed{-1/2}", "1/2")


def test_math_verifier_works_off_the_main_thread():
    out = {}
    t = threading.Thread(target=lambda: out.update(key=MATH.extract("\\boxed{0.25}"), ok=MATH.is_correct("1/4", "0.25")))
    t.start()
    t.join(30)
    assert out == {"key": "1/4", "ok": True}


def test_bad_gold_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="gold answer"):
        MATH.is_correct("\\boxed{1}", "")


def test_task_verifier_exact_integers():
    v = TaskAnswerVerifier()
    assert v.extract("3+4=7\nAnswer: 7") == "7"
    assert v.is_correct("3+4=7\nAnswer: 7", "7") and not v.is_correct("3+4=8\nAnswer: 8", "7")
    assert v.extract("3+4=7") is None and not v.is_correct("3+4=7", "7")
    assert v.extract("Answer: 7.0") is None  # malformed for this task: answers are integers


def test_verifier_chosen_by_name():
    assert answer_verifier("math").name == "math" and answer_verifier("task").name == "task"
    with pytest.raises(InvalidRequest, match="unknown answer verifier"):
        answer_verifier("chemistry")

"""Answer equivalence: the task's exact checker and general math through math-verify."""

from __future__ import annotations

import threading

import pytest

from orchestrator.errors import InvalidRequest
from verifiers.answers import BoxedAnswerVerifier, MathAnswerVerifier, TaskAnswerVerifier, answer_verifier

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


# ------------------------------------------------------------------ vote keys agree with math-verify's verify

BOXED = BoxedAnswerVerifier()


def _verify(a: str, b: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"\\boxed{{{a}}}"), parse(f"\\boxed{{{b}}}")))


@pytest.mark.parametrize(
    "a, b",
    [
        ("25\\%", "25"), ("x = 5", "5"), ("x=5", "x = 5"), ("x = y = 5", "5"), ("\\text{5}", "5"),
        ("5 \\text{ cm}", "5"), ("5cm", "5"), ("5\\,\\text{cm}", "5"), ("\\$5.00", "5"), ("5^\\circ", "5"), ("1,000", "1000"),
        ("(1, 2]", "\\left(1, 2\\right]"), ("x \\in (1, 2]", "(1,2]"), ("x \\le 2", "(-\\infty, 2]"), ("(0.5, 1]", "(\\frac12, 1]"),
        ("23.28", "\\frac{582}{25}"), ("3.0", "3"), ("0.25", "\\frac{1}{4}"), ("y = 2x+1", "2x+1"), ("\\text{(A)}", "A"),
        ("\\text{Yes}", "\\text{yes}"), ("2, 1", "\\{1, 2\\}"), ("x = 2 \\text{ or } x = 3", "2, 3"), ("0.5\\sqrt{2}", "\\frac{\\sqrt{2}}{2}"),
    ],
)
def test_answers_math_verify_calls_equal_share_a_key(a, b):
    assert _verify(a, b) and _verify(b, a) or (a, b) == ("x \\le 2", "(-\\infty, 2]")  # verify reads an inequality gold only
    assert BOXED.extract(f"\\boxed{{{a}}}") == BOXED.extract(f"\\boxed{{{b}}}") is not None


@pytest.mark.parametrize("a, b", [("(1,2]", "[1,2]"), ("0.333", "\\frac{1}{3}"), ("25", "0.25"), ("2x+z=1", "1"), ("5", "-5"), ("(1,2)", "[1,2)")])
def test_answers_math_verify_calls_different_keep_apart(a, b):
    assert not (_verify(a, b) and _verify(b, a))
    assert BOXED.extract(f"\\boxed{{{a}}}") != BOXED.extract(f"\\boxed{{{b}}}")


def test_documented_departures_from_verify():
    # verify calls 25\% equal to 25 and to 0.25, which are not equal: the key keeps the percent's number.
    assert _verify("25\\%", "0.25") and BOXED.extract("\\boxed{25\\%}") == "25" != BOXED.extract("\\boxed{0.25}")
    # An assignment keys as its value, so x = 5 and y = 5 vote together although verify keeps them apart.
    assert not _verify("x = 5", "y = 5") and BOXED.extract("\\boxed{x = 5}") == BOXED.extract("\\boxed{y = 5}") == "5"
    # verify reads \text{5 cm} as one symbol named 5cm; the key and the grade read the number with its unit.
    assert not _verify("\\text{5 cm}", "5") and BOXED.extract("\\boxed{\\text{5 cm}}") == "5" and BOXED.is_correct("\\boxed{\\text{5 cm}}", "5")


@pytest.mark.parametrize(
    "text, written, key",
    [
        ("So the total is \\boxed{23.28}.", "23.28", "582/25"),
        ("\\boxed{25\\%}", "25\\%", "25"),
        ("\\boxed{ x  =\n 5 }", "x = 5", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "1/2"),
        ("\\boxed{\\text{5 cm}}", "\\text{5 cm}", "5"),
        ("no answer here", None, None),
    ],
)
def test_the_written_answer_is_the_boxed_content_as_the_model_wrote_it(text, written, key):
    assert BOXED.written(text) == written and BOXED.extract(text) == key


def test_every_extractor_reads_a_written_answer_with_its_key():
    from orchestrator.profile import BUNDLED
    from verifiers.answers import CountdownVerifier, RegexAnswerVerifier, verifier_for

    r1 = verifier_for(BUNDLED["r1-distill"])
    two_boxes = "<think>\n\\boxed{9}\n</think>\n\nThe answer is \\boxed{ 10 }."
    assert (r1.extract(two_boxes), r1.written(two_boxes)) == ("10", "10")
    assert r1.written("<think>\n\\boxed{9}\n</think>\n\nNo idea.") is None
    assert TaskAnswerVerifier().written("3+4=7\nAnswer: 7") == "7"
    assert RegexAnswerVerifier(r"Final: (.*)").written("Final:  0.50 ") == "0.50"
    assert CountdownVerifier().written("<think>\nx\n</think>\n\\boxed{(8 * 3 + 1) * 4}") == "(8 * 3 + 1) * 4"
    assert MATH.written("it is $\\frac{1}{4}$") == "\\frac{1}{4}" and MATH.written("The answer is \\boxed{0.25}.") == "0.25"

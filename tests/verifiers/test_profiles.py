"""Answer extraction per model profile (verifiers.answers.verifier_for) on realistic traces: R1-style
``<think>`` reasoning then a boxed answer, Qwen-Math-style boxed answers, and a regex profile."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.config import REPO_ROOT
from orchestrator.profile import BUNDLED, ModelProfile, load_profile
from verifiers.answers import TaskAnswerVerifier, last_boxed, verifier_for

R1 = verifier_for(BUNDLED["r1-distill"])
QWEN = verifier_for(BUNDLED["qwen-math"])

# R1-Distill completions start inside the reasoning: its chat template ends the prompt with "<think>\n".
R1_ANSWERED = """Okay, so I need to find the sum of the roots of x^2 - 5x + 6 = 0.

By Vieta's formulas the sum of the roots is 5. Let me double-check by factoring: (x - 2)(x - 3) = 0, so the
roots are 2 and 3, and 2 + 3 = 5.

Wait, is the question asking for the product? No, the sum. So 5.
</think>

The equation factors as $(x-2)(x-3)=0$, so the roots are $2$ and $3$.

Their sum is $\\boxed{5}$."""

R1_BOXED_IN_REASONING_ONLY = """Let me compute 12 / 8. That simplifies to 3/2, so maybe the answer is \\boxed{\\frac{3}{2}}.

Hmm, but the question asks for a percentage.
</think>

The ratio is 150 percent."""

R1_NESTED = """Half of one is one half.
</think>

**Answer.** The probability is $\\boxed{\\frac{1}{2}}$."""

R1_TWO_BOXED = """Trying both cases.
</think>

At first I wrote $\\boxed{4}$, but the constraint $x > 2$ rules that case out.

So the final answer is $\\boxed{\\dfrac{2}{4}}$, that is, $\\boxed{0.5}$."""

R1_UNCLOSED = """We want 7 * 8. That is 56, so \\boxed{56}.

Let me verify: 7 * 8 = 7 * 4 * 2 = 28 * 2 = 56. Yes, the answer is \\boxed{56}. Now let me also check whether
"""

R1_EXPLICIT_OPEN = "<think>\nThe sum is 9.\n</think>\n\nThe sum of the digits is $\\boxed{9}$."

QWEN_ANSWERED = """To find the value of $x$, we start from the equation $2x + 3 = 11$.

Subtract 3 from both sides: $2x = 8$.

Divide both sides by 2: $x = 4$.

Therefore, the value of $x$ is $\\boxed{4}$."""

QWEN_TRUNCATED = """To compute $\\frac{1}{2} + \\frac{1}{4}$, we use the common denominator $4$.

So $\\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{"""

QWEN_ESCAPED = "The set of solutions is $\\boxed{\\{1, 2\\}}$."


def test_r1_answer_comes_from_the_final_part():
    assert R1.extract(R1_ANSWERED) == "5"
    assert R1.is_correct(R1_ANSWERED, "5") and not R1.is_correct(R1_ANSWERED, "6")
    assert R1.extract(R1_EXPLICIT_OPEN) == "9"


def test_a_box_inside_the_reasoning_only_is_no_answer():
    assert R1.extract(R1_BOXED_IN_REASONING_ONLY) is None
    assert not R1.is_correct(R1_BOXED_IN_REASONING_ONLY, "3/2")


def test_nested_braces_are_one_answer():
    assert last_boxed(R1_NESTED) == "\\frac{1}{2}"
    assert R1.extract(R1_NESTED) == "1/2"
    assert R1.is_correct(R1_NESTED, "0.5") and R1.is_correct(R1_NESTED, "\\frac{1}{2}")


def test_the_last_box_wins_and_equivalent_spellings_vote_together():
    assert R1.extract(R1_TWO_BOXED) == "1/2" == R1.extract(R1_NESTED)
    assert not R1.is_correct(R1_TWO_BOXED, "4")


def test_unclosed_reasoning_has_no_answer():
    # The trace was cut while the model still thought: its boxes are drafts, not its answer.
    assert R1.extract(R1_UNCLOSED) is None
    assert not R1.is_correct(R1_UNCLOSED, "56")


def test_qwen_math_boxed_answers():
    assert QWEN.extract(QWEN_ANSWERED) == "4"
    assert QWEN.is_correct(QWEN_ANSWERED, "4") and QWEN.is_correct(QWEN_ANSWERED, "4.0")
    # Steps that read as answers ("$x = 4$", "$2x = 8$") are not: only the box is.
    assert QWEN.extract("Subtract 3 from both sides: $2x = 8$.") is None


def test_a_truncated_box_is_no_answer():
    assert last_boxed(QWEN_TRUNCATED) is None
    assert QWEN.extract(QWEN_TRUNCATED) is None
    # An unclosed box after a closed one: the model was rewriting its answer when it was cut.
    assert QWEN.extract("So $\\boxed{3}$. Correction: $\\boxed{\\frac{3}{") is None


def test_escaped_braces_inside_a_box():
    assert last_boxed(QWEN_ESCAPED) == "\\{1, 2\\}"
    assert QWEN.extract(QWEN_ESCAPED) is not None


@pytest.mark.parametrize("text", ["", "no box here", "\\boxed{}", "\\boxed{  }"])
def test_no_box_no_answer(text):
    assert QWEN.extract(text) is None and not QWEN.is_correct(text, "1")


def test_unparsable_box_content_still_votes():
    a, b = QWEN.extract("$\\boxed{\\text{(B)}}$"), QWEN.extract("$\\boxed{\\text{(B)} }$")
    assert a is not None and a == b


def test_bundled_profile_keeps_the_task_checker():
    v = verifier_for(BUNDLED["bundled"])
    assert isinstance(v, TaskAnswerVerifier)
    assert v.extract("3+4=7\nAnswer: 7") == "7" and v.extract("3+4=7") is None


def test_regex_profile_takes_the_last_match_after_the_reasoning():
    profile = ModelProfile(answer="regex", answer_pattern=r"####\s*(-?\d+)", reasoning="think")
    v = verifier_for(profile)
    assert v.extract("guess #### 3\n</think>\nwork #### 4\nso #### 5") == "5"
    assert v.extract("#### 3 but still thinking") is None
    assert v.is_correct("</think>#### 12", "12") and not v.is_correct("</think>#### 12", "13")
    plain = verifier_for(ModelProfile(answer="regex", answer_pattern=r"Final: (\w+)"))
    assert plain.extract("Final: a\nFinal: b") == "b" and plain.extract("nothing") is None


def test_task_answers_after_a_reasoning_span():
    v = verifier_for(ModelProfile(reasoning="think"))
    assert v.extract("Answer: 3\n</think>\nAnswer: 4") == "4"
    assert v.extract("Answer: 3") is None


@pytest.mark.parametrize("pattern, message", [("(", "not a regex"), (r"\d+", "needs a group")])
def test_a_bad_answer_pattern_is_refused_with_the_profile(pattern, message):
    with pytest.raises(ValidationError, match=message):
        ModelProfile(answer="regex", answer_pattern=pattern)


COUNTDOWN = ModelProfile(name="v2", answer="boxed", answer_key="expression", reasoning="think", step_delimiter="\n\n")


def test_expression_keys_vote_by_what_was_written_not_by_its_value():
    v = verifier_for(COUNTDOWN)
    a = "<think>\n8 * 5 = 40, left: 40 1\n</think>\n\nThe answer is \\boxed{8 * 5 + 1}."
    reordered = "<think>\n...\n</think>\n\nThe answer is \\boxed{1 + (5 \\times 8)}."
    other = "<think>\n...\n</think>\n\nThe answer is \\boxed{6 * 7 - 1}."
    assert v.extract(a) == v.extract(reordered) != v.extract(other)
    # The value key would put every one of them in one vote: they all make 41.
    assert verifier_for(BUNDLED["r1-distill"]).extract(a) == verifier_for(BUNDLED["r1-distill"]).extract(other) == "41"
    assert v.extract("<think>\n8 * 5 = 40\n\n") is None  # reasoning never closed


def test_an_expression_key_needs_boxed_answers():
    with pytest.raises(ValidationError, match="needs answer"):
        ModelProfile(answer="task", answer_key="expression")


def test_the_countdown_grader_checks_the_numbers_and_the_target():
    from tasks import countdown
    from training import countdown_traces
    from verifiers import answer_verifier

    problem = countdown.generate("test", 1, levels=[2])[0]
    right = countdown_traces.optimal_trace(problem)
    grader = answer_verifier("countdown")
    assert grader.is_correct(right, problem.question)
    answer = countdown.extract_answer(right)
    assert not grader.is_correct(right.replace(answer, f"{answer} + 1"), problem.question)
    assert not grader.is_correct(right.replace(answer, str(problem.target)), problem.question)  # the target is not given
    assert grader.extract(right) == countdown.canonical_answer(answer)


# Replies SmolLM2-135M-Instruct wrote (deploy/smollm2/profile.toml), with the answer each states.
SMOLLM2_REPLIES = [
    ("To add 65 and 50, you simply add them together: 65 + 50 = 110.", "110"),
    ("12 + 8 = 12 + 8 = 20.", "20"),
    ("27 - 22 is 1.", "1"),
    ("To calculate 33 - 14, you simply subtract 14 from 33, which gives you 19.", "19"),
    ("The result of 78 + 87 is 155, which is the sum of 78 and 87.", "155"),  # not the last number
    ("To solve this problem, we need to first calculate 97 - 52.\n\nFirst, we subtract 52 from 97, which gives us 14.\n\nSo, 97 - 51 = 14.\n\nThe answer is 14.", "14"),
    ("To calculate 67 - 63, you simply subtract 63 from 67, which results in 1. This is a simple and intuitive way.", "1"),
    ("To add 6 and 10, we need to first find the total of 6 and 10.", None),  # explains, never states one
]


@pytest.mark.parametrize("text, answer", SMOLLM2_REPLIES)
def test_the_smollm2_profile_reads_the_answer_the_reply_states(text, answer):
    assert verifier_for(load_profile(REPO_ROOT / "deploy" / "smollm2" / "profile.toml")).extract(text) == answer

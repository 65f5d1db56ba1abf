"""A solution longer than the PRM's context, for both PRM kinds on scripted engines (characters are tokens):
scored as the profile's ``[prm] overflow`` says (the last steps that fit, the final part, or refused), the
choice recorded with the request, and only the call that was scored charged."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.errors import ContextTooLong
from orchestrator.profile import BUNDLED
from orchestrator.types import Completion, Generation, PRMOverflow, Scores, TokenClasses, Usage
from verifiers import MathShepherdPRM, PoolingPRM, PoolingPRMFormat, PRMFormat

# An R1 trace of five steps: four of thinking, one after it. With the question, its last three steps fit in
# 100 characters for either kind, the last four do not.
THINKING = ["First, 37 + 48 = 85, which I check twice.", "Then 85 * 3 = 255, also checked twice.", "Then 255 - 59 = 196, checked.", "So it is 196."]
R1 = "<think>\n" + "\n\n".join(THINKING) + "\n</think>\n\nThe answer is \\boxed{196}."
UNCLOSED = "<think>\n" + "\n\n".join(THINKING)
STEP_TAG = "¶"  # the pooling kind's separator: one character, so one token here


class CharEngine:
    """Every character is a token. ``score`` (a tag PRM) puts P(+) = e^-0.1 / (e^-0.1 + e^-2.3) on every row;
    ``classify_tokens`` (a pooling PRM served with its step tag) returns a row (0.2, 0.8) per step tag. A
    prompt of ``max_len`` characters or more is refused, as the workers refuse it (``limit_in_message``: with
    the context length named)."""

    def __init__(self, max_len: int, *, limit_in_message: bool = True, texts: tuple[str, ...] = ()) -> None:
        self.max_len, self.named, self.texts = max_len, limit_in_message, texts
        self.scored: list[str] = []  # prompts the engine scored (refused ones are not)

    def _check(self, prompt: str) -> None:
        if len(prompt) >= self.max_len:
            named = f"; role prm has max_model_len {self.max_len}" if self.named else ""
            raise ContextTooLong(f"prm-0: the prompt is {len(prompt)} tokens{named}")
        self.scored.append(prompt)

    async def tokenize(self, role, text):
        return [ord(c) for c in text]

    async def score(self, role, spec):
        self._check(spec.prompt)
        ids = [ord(c) for c in spec.prompt]
        rows = len(ids) - 1 - spec.start
        return Scores(tuple(ids), spec.start, (-1.0,) * rows, ((-0.1, -2.3),) * rows, Usage(len(ids), 1))

    async def render_chat(self, role, messages):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    async def classify_tokens(self, role, spec):
        self._check(spec.prompt)
        ids = tuple(ord(c) for c in spec.prompt)
        return TokenClasses(ids, tuple((0.2, 0.8) for t in ids if t == ord(STEP_TAG)), Usage(len(ids)))

    async def generate(self, role, spec):
        outs = tuple(Completion(self.texts[j % len(self.texts)], 50, "stop") for j in range(spec.n))
        return Generation(outs, Usage(len(spec.prompt), 50 * spec.n), worker="char-0")

    async def abort(self, ids):
        pass


def prm(kind: str, engine: CharEngine, overflow: str):
    common = dict(step_delimiter="\n\n", hidden=("<think>", "</think>"), overflow=overflow, reasoning_end="</think>")
    if kind == "tag":
        return MathShepherdPRM(engine, fmt=PRMFormat(**common))
    return PoolingPRM(engine, fmt=PoolingPRMFormat(system="s", step_tag=STEP_TAG, **common))


KINDS = ["tag", "pooling"]
P_TAG = 1 / (1 + 2.718281828459045 ** -2.2)


def good(kind: str) -> float:
    return P_TAG if kind == "tag" else 0.8


@pytest.mark.parametrize("kind", KINDS)
def test_last_steps_scores_the_last_steps_that_fit_and_says_so(kind):
    engine = CharEngine(100)
    out = asyncio.run(prm(kind, engine, "last_steps").score("q", R1))
    assert out.overflow == PRMOverflow("last_steps", steps=5, steps_scored=3, limit=100)
    assert out.steps == (THINKING[2], THINKING[3], "The answer is \\boxed{196}.") and out.scores == pytest.approx((good(kind),) * 3)
    # The refused prompt never reached the scorer; the one scored is the window, with the question, within the context.
    assert len(engine.scored) == 1 and THINKING[2] in engine.scored[0] and THINKING[1] not in engine.scored[0]
    assert len(engine.scored[0]) < 100 and out.usage.prompt_tokens == len(engine.scored[0])


@pytest.mark.parametrize("kind", KINDS)
def test_final_part_scores_the_steps_after_the_reasoning(kind):
    engine = CharEngine(100)
    out = asyncio.run(prm(kind, engine, "final_part").score("q", R1))
    assert out.overflow == PRMOverflow("final_part", steps=5, steps_scored=1, limit=100)
    assert out.steps == ("The answer is \\boxed{196}.",)
    # Without a final part (the reasoning never closed) it reads the last steps instead, and says so.
    unclosed = asyncio.run(prm(kind, CharEngine(100), "final_part").score("q", UNCLOSED))
    assert unclosed.overflow is not None and unclosed.overflow.read == "last_steps" and unclosed.steps[-1] == "So it is 196."


@pytest.mark.parametrize("kind", KINDS)
def test_refuse_fails_with_the_profiles_choice_named(kind):
    with pytest.raises(ContextTooLong, match=r'max_model_len 100: a solution of 5 steps .* overflow is "refuse"'):
        asyncio.run(prm(kind, CharEngine(100), "refuse").score("q", R1))


@pytest.mark.parametrize("kind", KINDS)
def test_a_solution_that_fits_is_scored_whole_whatever_the_choice(kind):
    for overflow in ("last_steps", "final_part", "refuse"):
        out = asyncio.run(prm(kind, CharEngine(10_000), overflow).score("q", R1))
        assert out.overflow is None and len(out.scores) == 5


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_fits_is_marked_not_a_silent_zero(kind):
    out = asyncio.run(prm(kind, CharEngine(100), "last_steps").score("q" * 120, R1))  # the question alone is over
    assert out.scores == () and out.overflow == PRMOverflow("last_steps", steps=5, steps_scored=0, limit=100)


@pytest.mark.parametrize("kind", KINDS)
def test_a_refusal_that_names_no_limit_is_met_by_halving(kind):
    engine = CharEngine(100, limit_in_message=False)
    out = asyncio.run(prm(kind, engine, "last_steps").score("q", R1))
    # 5 steps refused: 2 tried and scored (half of the 4 a window may hold), the limit unknown.
    assert out.overflow == PRMOverflow("last_steps", steps=5, steps_scored=2, limit=None) and len(engine.scored) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_best_of_n_records_the_overflow_with_the_request(kind, tmp_path):
    from dataclasses import replace

    from orchestrator.controller import Controller, ReasoningRequest
    from orchestrator.db.store import Store
    from orchestrator.toolbox import Toolbox
    from strategies import REGISTRY
    from verifiers import verifier_for

    profile = BUNDLED["r1-distill"]
    profile = profile.model_copy(update={"prm": profile.prm.model_copy(update={"overflow": "final_part"})})
    short = "<think>\nSo it is 196.\n</think>\n\nThe answer is \\boxed{196}."
    engine = CharEngine(100, texts=(R1, short, UNCLOSED))
    tools = Toolbox(verifier=verifier_for(profile), step_scorer=prm(kind, engine, "final_part"), profile=profile)
    store = Store.from_url(f"sqlite:///{tmp_path / 'o.db'}")
    ctl = Controller(engine=engine, store=store, strategies=REGISTRY, tools=tools, models={"target": "policy"}, max_request_tokens=100_000)
    req = ReasoningRequest(model="target", messages=({"role": "user", "content": "q"},), strategy="best_of_n", params={"n": 3, "max_tokens": 64})
    out = asyncio.run(ctl.reason(req))
    # R1's final part is one step; the unclosed trace's last steps that fit are three (tag) or two (pooling: its chat is longer).
    assert out.result.info["prm_overflow"] == {
        "behaviour": "final_part", "solutions": 2, "steps": 9, "steps_scored": 1 + {"tag": 3, "pooling": 2}[kind],
        "read": {"final_part": 1, "last_steps": 1},
        "unscored": 0, "context_tokens": 100,
    }
    assert [e for e in out.events if e.get("stage") == "prm_overflow"] == [
        {"stage": "prm_overflow", "of": "score", "solutions": 2, "read": ["final_part", "last_steps"]}
    ]
    # Charged: the three scored calls only (two refusals cost nothing), as verifier tokens.
    scored = sum(len(p) for p in engine.scored)
    assert len(engine.scored) == 3 and out.verifier_tokens == scored + (3 if kind == "tag" else 0)
    # A request whose PRM read every solution whole says nothing about overflow.
    engine.texts = (short,)
    assert "prm_overflow" not in asyncio.run(ctl.reason(replace(req))).result.info

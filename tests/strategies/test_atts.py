"""ATTS logic on a scripted draft/target pair, and the conformal p-value it rests on. The calibration sets
live in a real SQLite database."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from orchestrator.db.store import Store
from orchestrator.errors import InvalidRequest
from orchestrator.toolbox import Toolbox
from orchestrator.types import Completion, Generation, Problem, Scores, Usage
from strategies import atts
from tests.strategies.scripted import context

PROMPT = "q\n"
NAME = atts.calibration_name("d", "t", "task")


def test_smoothed_p_value_rejects_exactly_alpha_of_exchangeable_scores():
    rng = random.Random(0)
    for alpha in (0.1, 0.3, 0.5):
        rejected = 0
        trials = 4000
        for _ in range(trials):
            # 19 calibration scores and one live score from the same distribution, with ties (rounded).
            scores = [round(rng.gauss(0, 1), 1) for _ in range(20)]
            ordered = sorted(scores[:19])
            rejected += atts.p_value(scores[19], ordered, rng.random()) <= alpha
        assert abs(rejected / trials - alpha) < 0.025, (alpha, rejected / trials)


def test_p_value_extremes():
    ordered = [1.0, 2.0, 3.0]
    assert atts.p_value(10.0, ordered, 0.0) == 0.0  # beyond every calibration score: least conforming
    assert atts.p_value(0.0, ordered, 0.999) == pytest.approx((3 + 0.999) / 4)
    assert atts.p_value(2.0, ordered, 0.5) == pytest.approx((1 + 0.5 * 2) / 4)  # one above, one tie


class DraftTarget:
    """Line D of a solution: the draft writes ``sD-bad``, the target ``sD-good``; after ``depth`` lines either
    writes ``Answer: G`` (G: good lines so far). A call without a stop string (a final roll-out) writes every
    line left and the answer at once. Scoring gives every chunk token log-probability -2 when the chunk is a
    bad line, -0.1 otherwise (words are tokens)."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self.calls: list[tuple[str, str]] = []

    async def generate(self, role, spec):
        lines = [ln for ln in spec.prompt.split("\n")[1:] if ln]
        self.calls.append((role, "generate"))
        if not spec.stop:
            rest = [f"s{d} {'bad' if role == 'draft' else 'good'}" for d in range(len(lines), self.depth)]
            answer = f"Answer: {sum('good' in ln for ln in lines + rest)}"
            text = "\n".join(rest + [answer])
            comps = tuple(Completion(text, 2 * len(rest) + 2, "stop") for _ in range(spec.n))
            return Generation(comps, Usage(len(spec.prompt.split()), comps[0].tokens * spec.n))
        if len(lines) >= self.depth:
            text, reason = f"Answer: {sum('good' in ln for ln in lines)}", None  # then EOS
        else:
            text, reason = f"s{len(lines)} {'bad' if role == 'draft' else 'good'}", spec.stop[0]
        comps = tuple(Completion(text, 2, "stop", stop_reason=reason) for _ in range(spec.n))
        return Generation(comps, Usage(len(spec.prompt.split()), 2 * spec.n))

    async def score(self, role, spec):
        words = spec.prompt.split()
        chunk = words[spec.start + 1 :]
        lp = -2.0 if "bad" in chunk else -0.1
        self.calls.append((role, "score"))
        return Scores(tuple(range(len(words))), spec.start, tuple(lp for _ in chunk), (), Usage(len(words), 1))

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        pass


@pytest.fixture
def store(tmp_path):
    s = Store.from_url(f"sqlite:///{tmp_path / 'cal.db'}")
    yield s
    s.engine.dispose()


def _run(engine, store, **params):
    ctx, calls = context(engine, draft_model="d", target_model="t", calibration=store.calibration)
    out = asyncio.run(atts.run(Problem(prompt=PROMPT, question="q"), ctx, atts.Params(seed=1, **params)))
    return out, ctx, calls


def test_bad_draft_chunks_are_rejected_and_rewritten_by_the_target(store):
    # Calibration: good chunks (perplexity e^0.1) mostly, so a bad chunk (e^2) is beyond all of them.
    asyncio.run(store.calibration.add_scores(NAME, scores=[math.exp(0.1)] * 30, model="d->t", keep=100))
    engine = DraftTarget()
    out, ctx, calls = _run(engine, store, n=2, alpha=0.1)
    assert out.text == "s0 good\ns1 good\ns2 good\nAnswer: 3"
    assert out.answer == "3"
    assert out.info["chunks"] == 8 and out.info["rejected"] == 6  # 3 bad lines per sample; answers accepted
    turns = [t for t in out.trace if t["sample"] == 0]
    assert [t["rejected"] for t in turns] == [True, True, True, False]
    assert all(t["p_value"] <= 0.1 for t in turns if t["rejected"])
    # Draft and target both wrote; only the target (the policy role) scored; every call is in the ledger.
    roles = {(c.role, c.kind) for c in calls}
    assert roles == {("draft", "generate"), ("policy", "generate"), ("policy", "score")}
    assert sum(c.usage.total_tokens for c in calls if c.kind == "score") == ctx.tally.verifier_tokens
    # Online update: the 8 chunk scores joined the set.
    assert len(asyncio.run(store.calibration.scores(NAME))) == 38


def test_alpha_zero_keeps_every_draft_chunk_and_update_can_be_off(store):
    asyncio.run(store.calibration.add_scores(NAME, scores=[math.exp(0.1)] * 30, model="d->t", keep=100))
    out, _, calls = _run(DraftTarget(), store, n=1, alpha=0.0, update_calibration=False)
    assert out.text.startswith("s0 bad\ns1 bad\ns2 bad")
    assert out.info["rejected"] == 0
    assert not any(c.role == "policy" and c.kind == "generate" for c in calls)
    assert len(asyncio.run(store.calibration.scores(NAME))) == 30


def test_max_turns_bounds_each_samples_chunks_then_the_target_finishes_it(store):
    asyncio.run(store.calibration.add_scores(NAME, scores=[1.0] * 30, model="d->t", keep=100))
    out, _, calls = _run(DraftTarget(depth=10), store, n=3, max_turns=2)
    assert out.info["chunks"] == 6
    # Two turns each (the bad draft lines rejected, the target's kept), then one call of the target writes the
    # other 8 lines and the answer.
    assert all(c.text.count("\n") == 10 and c.answer == "10" for c in out.candidates)
    assert sum(c.stage == "finish" and c.role == "policy" for c in calls) == 3


def test_missing_calibration_or_draft_is_a_clear_error(store):
    with pytest.raises(InvalidRequest, match="python -m deploy.calibrate --dataset other"):
        _run(DraftTarget(), store, dataset="other")
    asyncio.run(store.calibration.add_scores(NAME, scores=[1.0] * 5, model="d->t", keep=100))
    with pytest.raises(InvalidRequest, match="has 5 scores"):
        _run(DraftTarget(), store)
    ctx, _ = context(DraftTarget(), calibration=store.calibration)
    with pytest.raises(InvalidRequest, match="draft model"):
        asyncio.run(atts.run(Problem(prompt=PROMPT, question="q"), ctx, atts.Params()))
    assert atts.SPEC.needs(atts.Params()) == {"draft"}


def test_a_seeded_batch_gives_each_problem_its_own_reproducible_seed():
    from orchestrator.types import problem_seed

    assert problem_seed(None, 3) is None
    seeds = [problem_seed(5, k) for k in range(200)]
    assert seeds == [problem_seed(5, k) for k in range(200)] and len(set(seeds)) == 200
    # No problem's seed reaches another's through the offsets a request adds: samples (ATTS, up to the
    # width limit 64), hops (3 per turn, 16 turns) and parents (104729 each, up to 64).
    offsets = {1_000_003 * s + 7919 * h + 104729 * i for s in range(64) for h in range(48) for i in range(64)}
    assert max(offsets) < seeds[1] - seeds[0]


class TwoFamilies(DraftTarget):
    """Draft and target with different chat templates: each renders the chat its own way."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[tuple[str, str]] = []

    async def render_chat(self, role, messages):
        return f"<{role}-template> " + " ".join(m["content"] for m in messages) + "\n"

    async def generate(self, role, spec):
        self.prompts.append((role, spec.prompt))
        return await super().generate(role, spec)


def test_a_draft_of_another_family_reads_the_chat_in_its_own_template(store):
    asyncio.run(store.calibration.add_scores(NAME, scores=[math.exp(0.1)] * 30, model="d->t", keep=100))
    engine = TwoFamilies()
    ctx, _ = context(engine, draft_model="d", target_model="t", calibration=store.calibration)
    messages = ({"role": "user", "content": "q"},)
    policy_prompt = asyncio.run(engine.render_chat("policy", messages))
    out = asyncio.run(atts.run(Problem(prompt=policy_prompt, question="q", messages=messages), ctx, atts.Params(seed=1, n=1, alpha=0.1)))
    assert out.answer == "3"
    drafts = [p for role, p in engine.prompts if role == "draft"]
    targets = [p for role, p in engine.prompts if role == "policy"]
    assert drafts and all(p.startswith("<draft-template> q\n") for p in drafts)
    assert targets and all(p.startswith("<policy-template> q\n") for p in targets)


# ------------------------------------------------------------------------------------ reference mode


class TokenDraftTarget:
    """A solution of ``depth`` words, then ``Answer: G`` (G: its ``g`` words) and EOS; words are tokens and a
    call writes at most ``max_tokens`` of them, so a chunk ends wherever its token bound falls. The target
    writes ``g``; the draft's k-th attempt at the same prefix writes ``draft[k % len(draft)]`` words, and
    answers ``99`` unless that word is ``g``. Scoring: ``b`` -2, ``m`` -1, ``99`` -3, any other word -0.1."""

    LOGPROB = {"b": -2.0, "m": -1.0, "99": -3.0}

    def __init__(self, depth: int = 4, draft: tuple[str, ...] = ("b", "m", "g")) -> None:
        self.depth, self.draft = depth, draft
        self.attempts: dict[str, int] = {}
        self.calls: list[tuple[str, str, str]] = []

    async def generate(self, role, spec):
        written = spec.prompt[len(PROMPT) :].split()
        word = "g"
        if role == "draft":
            k = self.attempts.get(spec.prompt, 0)
            self.attempts[spec.prompt] = k + 1
            word = self.draft[k % len(self.draft)]
        self.calls.append((role, "generate", spec.prompt))
        words = [w for w in written if not w.startswith("Answer")]
        if len(words) >= self.depth:
            text, finish = f"\nAnswer: {sum(w == 'g' for w in words) if word == 'g' else 99}", "stop"
            count = 2
        else:
            count = min(spec.max_tokens, self.depth - len(words))
            text, finish = "".join(f" {word}" for _ in range(count)), "length" if count == spec.max_tokens else "stop"
        assert not spec.stop  # token-count chunks stop at no string
        return Generation((Completion(text, count, finish, stop_reason=None),), Usage(len(spec.prompt.split()), count))

    async def score(self, role, spec):
        words = spec.prompt.split()
        chunk = words[spec.start + 1 :]
        self.calls.append((role, "score", spec.prompt))
        return Scores(tuple(range(len(words))), spec.start, tuple(self.LOGPROB.get(w, -0.1) for w in chunk), (), Usage(len(words), 1))

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        pass


REF_NAME = atts.calibration_name("d", "t", "task", "tokens2")


def _ref_calibration(store):
    # Half the calibration at perplexity e^0.1, half at e^0.5: a g chunk conforms, b, m and 99 chunks do not.
    asyncio.run(store.calibration.add_scores(REF_NAME, scores=[math.exp(0.1)] * 15 + [math.exp(0.5)] * 15, model="d->t", keep=100))


def test_reference_mode_resamples_a_rejected_chunk_and_keeps_the_first_accepted(store):
    _ref_calibration(store)
    engine = TokenDraftTarget(depth=4, draft=("b", "m", "g"))
    out, _, calls = _run(engine, store, n=1, alpha=0.1, mode="reference", chunk_tokens=2, resamples=2, update_calibration=True)
    assert out.text == " g g g g\nAnswer: 4" and out.answer == "4"
    assert out.info["calibration"] == REF_NAME and out.info["resamples"] == 2  # the self-reject script's three attempts
    # Two chunk turns of three attempts (b, m rejected, g accepted), then the answer turn: b-answer 99 and
    # m-answer 99 rejected, the g-answer accepted. The target only scored.
    assert [(t["turn"], t["attempt"], t["rejected"]) for t in out.trace] == [
        (0, 0, True),
        (0, 1, True),
        (0, 2, False),
        (1, 0, True),
        (1, 1, True),
        (1, 2, False),
        (2, 0, True),
        (2, 1, True),
        (2, 2, False),
    ]
    assert out.info["chunks"] == 9 and out.info["rejected"] == 6 and out.info["turns"] == 3
    assert out.info["first_rejection_rate"] == 1.0 and out.info["takeovers"] == 0
    assert not any(c.role == "policy" and c.kind == "generate" for c in calls)
    # Only each turn's first attempt joins the calibration set: resamples are drawn where a chunk was rejected.
    assert len(asyncio.run(store.calibration.scores(REF_NAME))) == 30 + 3


def test_reference_mode_keeps_the_best_rejected_chunk_and_the_target_continues_it(store):
    _ref_calibration(store)
    engine = TokenDraftTarget(depth=4, draft=("b", "m"))
    out, _, _ = _run(engine, store, n=1, alpha=0.1, mode="reference", chunk_tokens=2, resamples=1)
    # Turn 0: "b b" and "m m" rejected; "m m" (lower perplexity) is kept and the target writes the next two
    # tokens after it. Turn 1: the draft's answers (99) are rejected and ended the solution: nothing to
    # continue, so the target writes the answer anew.
    assert out.text == " m m g g\nAnswer: 2" and out.answer == "2"
    target_prompts = [p for role, kind, p in engine.calls if role == "policy" and kind == "generate"]
    assert target_prompts == [PROMPT + " m m", PROMPT + " m m g g"]
    assert [t["takeover"] for t in out.trace] == [False, True, False, True]
    assert out.info["takeovers"] == 2 and out.info["takeover_rate"] == 1.0 and out.info["rejection_rate"] == 1.0


def test_line_mode_can_self_reject_before_the_target_rewrites(store):
    asyncio.run(store.calibration.add_scores(NAME, scores=[math.exp(0.1)] * 30, model="d->t", keep=100))
    out, _, calls = _run(DraftTarget(), store, n=1, alpha=0.1, resamples=1)
    assert out.text == "s0 good\ns1 good\ns2 good\nAnswer: 3"
    assert out.info["chunks"] == 7 and out.info["rejected"] == 6 and out.info["takeovers"] == 3  # two bad drafts per line
    assert sum(1 for c in calls if c.role == "draft") == 7


def test_calibration_sets_are_keyed_by_chunking():
    assert atts.Params().chunking == "line" and atts.calibration_name("d", "t", "task", "line") == NAME == "d->t/task"
    p = atts.Params(mode="reference")
    # The two-model reference script: no resampling, alpha 0.4 (its rank >= 0.6 rule), no online update.
    assert (p.chunk, p.retries, p.chunking, p.rejection_alpha, p.updates_calibration) == (32, 0, "tokens32", 0.4, False)
    assert (atts.Params().rejection_alpha, atts.Params().updates_calibration) == (0.3, True)
    assert atts.Params(mode="reference", chunk_tokens=100, resamples=0).chunking == "tokens100"
    assert atts.calibration_name("d", "t", "task", "tokens32") == "d->t/task@tokens32"
    assert (atts.Params().chunk, atts.Params().retries) == (64, 0)  # today's line chunks, unchanged


def test_missing_reference_calibration_names_its_command(store):
    _ref_calibration(store)  # tokens2 only: the default 32-token set is missing
    with pytest.raises(InvalidRequest, match="deploy.calibrate --dataset task --mode reference --chunk-tokens 32"):
        _run(TokenDraftTarget(), store, mode="reference")


@pytest.mark.parametrize(
    "field, value", [("mode", "paper"), ("chunk_tokens", 0), ("chunk_tokens", 40000), ("resamples", -1), ("resamples", 5), ("resamples", "two")]
)
def test_bad_new_parameters_name_their_field(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        atts.Params(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_worst_case_counts_every_attempt():
    assert atts.SPEC.worst_case(atts.Params()) == 2 * 4 * 256  # line mode as before
    ref = atts.Params(mode="reference", resamples=2)  # 3 draft attempts and a target chunk per turn
    assert atts.SPEC.worst_case(ref) == 4 * min(4 * 256, 16 * 4 * 32)


def test_a_chunk_merged_into_the_prefixs_last_token_is_scored_from_that_token():
    """Byte-level BPE writes "\\n" + "\\n" as one token: the prefix "...assistant\\n" and the chunk "\\n" make as
    many tokens as the prefix alone, so the chunk's score starts one token earlier instead of past the end."""

    import re

    def ids(text):
        return re.findall(r"\n\n|\n|\S+", text)

    class Merging(DraftTarget):
        async def tokenize(self, role, text):
            return ids(text)

        async def score(self, role, spec):
            tokens = ids(spec.prompt)
            assert 0 <= spec.start <= len(tokens) - 2, (spec.start, tokens)
            return Scores(tuple(range(len(tokens))), spec.start, (-0.5,), (), Usage(len(tokens), 1))

    ctx, _ = context(Merging(), draft_model="d", target_model="t")
    assert asyncio.run(atts.perplexity(ctx, "a b\n", "\n", hop=0, branch="0")) == pytest.approx(math.exp(0.5))
    assert asyncio.run(atts.perplexity(ctx, "a b", " c d", hop=0, branch="0")) == pytest.approx(math.exp(0.5))


class RecordingDraftTarget(DraftTarget):
    """DraftTarget that keeps the stop strings of its generate calls and renders any chat as PROMPT."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__(depth)
        self.stops: list[tuple[str, ...]] = []

    async def generate(self, role, spec):
        self.stops.append(tuple(spec.stop or ()))
        return await super().generate(role, spec)

    async def render_chat(self, role, messages):
        return PROMPT


@pytest.mark.parametrize("profile", ["bundled", "r1-distill"])
def test_calibration_chunks_end_where_the_served_profiles_steps_do(profile):
    # deploy.calibrate cut line chunks at the bundled profile's "\n" whatever the server's profile said, so a
    # blank-line-step model was calibrated on half-steps and tested on whole ones.
    from deploy.calibrate import collect
    from orchestrator.profile import BUNDLED
    from verifiers import verifier_for

    engine = RecordingDraftTarget(depth=2)
    params = atts.Params(n=1, max_turns=2, update_calibration=False)
    tools = Toolbox(verifier=verifier_for(BUNDLED[profile]), draft_model="d", profile=BUNDLED[profile])
    scores = asyncio.run(collect(engine, ["q"], params, tools=tools, target_model="t", progress=False))
    assert scores and engine.stops
    assert all(stop == (BUNDLED[profile].step_delimiter,) for stop in engine.stops)

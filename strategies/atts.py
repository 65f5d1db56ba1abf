"""ATTS: a cheap draft model writes, the target model checks, and a conformal test decides who writes on.

Each of ``n`` samples runs as its own async loop (no batch barrier between samples). One turn: the draft
writes a chunk; the target scores it without generating, as its perplexity under the target given the question
and the sample's text so far (prompt log-probabilities of a single prefill, the chunk's tokens only). The
score's conformal p-value against a calibration set of such scores is the share of calibration scores at least
as large (ties broken at random, the smoothed p-value). A p-value at or below ``alpha`` rejects the chunk.

Two modes, differing in what a chunk is and what a rejection does:

- ``line`` (the default): a chunk is one step (up to ``chunk_tokens`` tokens, ending at the step delimiter); a
  rejected chunk is thrown away and the target writes that turn's step instead.
- ``reference`` (the ATTS two-model reference script, ``ref_async.py``): a chunk is ``chunk_tokens`` tokens
  (500 at real scale), wherever they end; a rejected chunk is kept and the target continues after it for up
  to ``chunk_tokens`` tokens. A kept chunk that ended the solution leaves nothing to continue: the target
  writes that chunk anew instead. Its rejection rule, #{calibration scores below s} / size >= 0.6, is
  ``alpha`` 0.4; its calibration set holds each sample's first chunk only, and it does not add live scores
  to it (``update_calibration`` false).

``resamples`` (self-rejection, from the single-model ``ref_async_self_reject.py``; 0 by default in both
modes) lets the draft resample a rejected chunk up to that many times, each resample scored and tested again;
when every attempt is rejected the lowest-perplexity attempt is the one kept (``reference``) or the target
writes the turn (``line``). When calibration and live chunks are exchangeable, a turn's first draft chunk is
rejected with probability exactly ``alpha``: ``alpha`` sets the share of turns the draft has to redo or the
target has to take over, hence the cost. A calibration set is kept per (draft model, target model, dataset,
chunking), built by ``python -m deploy.calibrate``; in ``line`` mode it is updated online by default: every
turn's first chunk a request scores is appended (the newest :data:`CALIBRATION_WINDOW` are kept), so the set
follows drift. Resamples are never appended: they are drawn where a chunk was just rejected, so they are not
exchangeable with a fresh turn's chunk.

Sequential scaling is ``max_turns`` (turns per sample), parallel scaling ``n``. A sample still open after
``max_turns`` is finished by the target to the end of its trace (at most ``max_tokens`` in all): an
unfinished sample has no answer, and at real lengths (R1's 4-16k tokens against 15 chunks of 500) most would
be. The answer is the majority over the samples.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

from pydantic import Field, ValidationInfo, model_validator

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded, InvalidRequest
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, Role, SamplingSpec, ScoreSpec, StrategyResult
from strategies.common import Path, StepConfig, ended, extend, majority, path_candidates, result
from strategies.params import MaxTokens, Sampling, Seed, Temperature, profile_of

CALIBRATION_WINDOW = 4096  # newest scores a calibration set keeps
MIN_CALIBRATION = 20  # fewer scores cannot resolve alpha = 0.05 (p-values move in steps of 1/(size + 1))
Mode = Literal["line", "reference"]
# When a request gives none and no model profile is known: the bundled model's scale.
CHUNK_TOKENS: dict[str, int] = {"line": 64, "reference": 32}
ALPHA: dict[str, float] = {"line": 0.3, "reference": 0.4}  # the reference rejects at rank >= 0.6: alpha 0.4
UPDATE_CALIBRATION: dict[str, bool] = {"line": True, "reference": False}


class Params(Sampling):
    n: int = Field(4, ge=1, le=64, description="Independent samples (parallel scaling); the answer is their majority.")
    alpha: float | None = Field(
        None, ge=0.0, le=1.0, description="Share of fresh draft chunks the conformal test rejects (0: never, 1: always); default 0.3 in `line` mode, 0.4 in `reference`."
    )
    max_turns: int = Field(
        16, ge=1, le=256, description="Most turns (kept chunks) per sample before the target finishes it (default: the profile's `scale.turns`)."
    )
    mode: Mode = Field(
        "line",
        description="`line`: a chunk is one step, a rejected one is rewritten by the target; `reference`: a chunk is "
        "`chunk_tokens` tokens, a rejected one is resampled by the draft, then kept and continued by the target.",
    )
    chunk_tokens: int | None = Field(
        None, ge=1, le=32768,
        description="Most tokens of one chunk (and of a target continuation); default: the profile's `scale.line_chunk_tokens` in `line` mode, `scale.chunk_tokens` in `reference`.",
    )
    resamples: int = Field(0, ge=0, le=4, description="Self-rejection: draft resamples of a rejected chunk before the target takes over.")
    max_tokens: MaxTokens = Field(256, description="Most generated tokens per sample.")
    temperature: Temperature = Field(0.8, description="Sampling temperature of draft and target.")
    seed: Seed = Field(None, description="Engine seed (sample i offset by i); also seeds the p-value tie-breaks.")
    dataset: str = Field("task", min_length=1, max_length=100, description="Which calibration set of the model pair to test against.")
    update_calibration: bool | None = Field(
        None, description="Append this request's first-attempt chunk scores to the calibration set; default true in `line` mode, false in `reference`."
    )

    PROFILE_DEFAULTS = {**Sampling.PROFILE_DEFAULTS, "max_turns": lambda p: p.scale.turns}

    @model_validator(mode="before")
    @classmethod
    def _chunk_of_the_profile(cls, data: Any, info: ValidationInfo) -> Any:
        # The chunk's default depends on the mode as well as on the model's scale.
        profile = profile_of(info)
        if profile is None or not isinstance(data, dict) or data.get("chunk_tokens") is not None:
            return data
        scale = profile.scale
        return {**data, "chunk_tokens": scale.chunk_tokens if data.get("mode") == "reference" else scale.line_chunk_tokens}

    @property
    def chunk(self) -> int:
        """The chunk bound in force (``chunk_tokens``, or the mode's default at the bundled scale)."""
        return self.chunk_tokens or CHUNK_TOKENS[self.mode]

    @property
    def retries(self) -> int:
        """The draft resamples in force."""
        return self.resamples

    @property
    def rejection_alpha(self) -> float:
        """The conformal test's level in force (``alpha``, or the mode's)."""
        return ALPHA[self.mode] if self.alpha is None else self.alpha

    @property
    def updates_calibration(self) -> bool:
        """Whether live first-attempt scores join the calibration set (``update_calibration``, or the mode's)."""
        return UPDATE_CALIBRATION[self.mode] if self.update_calibration is None else self.update_calibration

    @property
    def chunking(self) -> str:
        """What a chunk is, as calibration sets are keyed: ``line`` (one step; the bound hardly matters, a step
        is far shorter) or ``tokens<k>`` (exactly k tokens: the score distribution depends on k)."""
        return "line" if self.mode == "line" else f"tokens{self.chunk}"


def calibration_name(draft: str, target: str, dataset: str, chunking: str = "line") -> str:
    """The database name of the calibration set of a (draft, target) pair on ``dataset`` for chunks of
    ``chunking`` (:attr:`Params.chunking`); line chunks keep the plain name."""
    base = f"{draft}->{target}/{dataset}"
    return base if chunking == "line" else f"{base}@{chunking}"


def p_value(score: float, ordered: Sequence[float], u: float) -> float:
    """Smoothed conformal p-value of ``score`` against the sorted calibration scores ``ordered``: larger scores
    are less conforming. ``u`` in [0, 1) splits ties at random, which makes P(p <= alpha) = alpha exactly
    under exchangeability instead of at most alpha."""
    lo, hi = bisect.bisect_left(ordered, score), bisect.bisect_right(ordered, score)
    return (len(ordered) - hi + u * (hi - lo + 1)) / (len(ordered) + 1)


async def perplexity(ctx: StrategyContext, prefix: str, chunk: str, *, hop: int, branch: str) -> float:
    """The target's perplexity of ``chunk`` after ``prefix``: exp of minus the mean log-probability of the
    chunk's tokens, from one scoring prefill (charged as verifier tokens, stage ``verify``)."""
    n_prefix, n_all = await asyncio.gather(ctx.tokens(prefix), ctx.tokens(prefix + chunk))
    # Row 0 of the scores predicts the chunk's first token. A byte-level BPE can merge the chunk's start into
    # the prefix's last token ("\n" + "\n" is one "\n\n"): the chunk then starts one token earlier.
    start = min(n_prefix, n_all - 1) - 1
    scores = await ctx.score(ScoreSpec(prompt=prefix + chunk, start=start), stage="verify", branch=branch, role=ctx.policy_role, hop=hop)
    lps = scores.logprobs
    return math.exp(-sum(lps) / len(lps)) if lps else 1.0


@dataclass
class Sample:
    """One sample's run: where it got to, the scores of every turn's first draft chunk (what a calibration set
    keeps), and per conformal test the score, p-value and verdict."""

    path: Path = field(default_factory=Path)
    scores: list[float] = field(default_factory=list)
    turns: list[dict[str, object]] = field(default_factory=list)
    limited: bool = False

    @property
    def rejected(self) -> int:
        return sum(1 for t in self.turns if t["rejected"])

    @property
    def takeovers(self) -> int:
        return sum(1 for t in self.turns if t["takeover"])


async def for_draft(ctx: StrategyContext, problem: Problem) -> Problem:
    """``problem`` as the draft reads it: the chat rendered by the draft's own template (a draft of another
    family must not continue the policy's rendering); a raw prompt is continued as it is by both."""
    if not problem.messages:
        return problem
    return replace(problem, prompt=await ctx.render_chat(problem.messages, role="draft"))


async def write(
    ctx: StrategyContext, problem: Problem, path: Path, params: Params, cfg: StepConfig, *, hop: int, stage: str, role: Role | None = None
) -> tuple[Path | None, bool]:
    """``path`` one chunk longer, written by ``role`` (default: the policy), and whether the budget refused it
    (then None). ``line``: one step, as the step-wise searches write it; ``reference``: ``chunk_tokens`` tokens
    with no stop string, so a chunk may end mid-line and the next one continues it."""
    if params.mode == "line":
        written, limited = await extend(ctx, problem, [(path, 1)], cfg, hop=hop, stage=stage, role=role)
        return (written[0][0] if written[0] else None), limited
    spec = SamplingSpec(
        prompt=problem.prompt + path.text,
        max_tokens=max(1, min(cfg.step_tokens, cfg.max_tokens - path.tokens)),
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=None if cfg.seed is None else cfg.seed + 7919 * hop,
    )
    try:
        c = (await ctx.generate(spec, stage=stage, hop=hop, role=role)).completions[0]
    except BudgetExceeded:
        return None, True
    tokens = path.tokens + max(c.tokens, 1)
    over = ended(c, cfg.delimiter)
    done = over or tokens >= cfg.max_tokens
    return Path(text=path.text + c.text, tokens=tokens, done=done, finish_reason=c.finish_reason if over or not done else "length"), False


async def run_sample(
    ctx: StrategyContext, problem: Problem, params: Params, index: int, ordered: Sequence[float] | None, *, drafted: Problem | None = None
) -> Sample:
    """Sample ``index``'s loop (``drafted``: the problem as the draft reads it, see :func:`for_draft`).
    ``ordered`` None calibrates: every draft chunk is scored and kept (nothing is rejected, nothing resampled).

    Per turn, hops ``2a`` and ``2a + 1`` are attempt a's draft call and scoring, the last hop the target's."""
    drafting = drafted or problem
    seed = None if params.seed is None else params.seed + 1_000_003 * index
    cfg = StepConfig(params.chunk, params.max_tokens, params.temperature, params.top_p, seed, ctx.tools.profile.step_delimiter)
    rng = random.Random(f"{params.seed}/{index}") if params.seed is not None else random.Random()
    out = Sample()
    branch = str(index)
    per_turn = 2 * params.retries + 3
    for turn in range(params.max_turns):
        tried: list[tuple[float, Path]] = []
        kept: Path | None = None
        for attempt in range(params.retries + 1):
            hop = per_turn * turn + 2 * attempt
            draft, limited = await write(ctx, drafting, out.path, params, cfg, hop=hop, stage="draft", role="draft")
            if limited or draft is None:
                out.limited = True
                return out
            chunk = draft.text[len(out.path.text) :]
            if not chunk:  # the draft ended the solution (EOS): nothing to score
                out.path = draft
                return out
            try:
                s = await perplexity(ctx, problem.prompt + out.path.text, chunk, hop=hop + 1, branch=branch)
            except BudgetExceeded:
                out.path, out.limited = draft, True  # paid for: keep it unchecked
                return out
            p = p_value(s, ordered, rng.random()) if ordered is not None else 1.0
            rejected = p <= params.rejection_alpha
            if attempt == 0:
                out.scores.append(s)
            out.turns.append(
                {"sample": index, "turn": turn, "attempt": attempt, "perplexity": round(s, 4), "p_value": round(p, 4), "rejected": rejected, "takeover": False}
            )
            tried.append((s, draft))
            if not rejected:
                kept = draft
                break
        if kept is None:  # every attempt rejected: the target takes over
            out.turns[-1]["takeover"] = True
            best = min(tried, key=lambda t: t[0])[1]
            # `reference` keeps the draft's best attempt and continues it; `line`, or a kept chunk that ended
            # the solution, has the target write the chunk anew.
            start = best if params.mode == "reference" and not best.done else out.path
            kept, limited = await write(ctx, problem, start, params, cfg, hop=per_turn * turn + per_turn - 1, stage="takeover")
            if limited or kept is None:
                out.limited = True
                return out
        out.path = replace(kept, parents=(), parent_tokens=())  # no tree here: a sample is one chain
        if out.path.done:
            break
    if ordered is not None and not out.path.done:
        # Out of turns: the target finishes the trace (an unfinished sample has no answer).
        rolled, limited = await extend(ctx, problem, [(out.path, 1)], cfg, hop=per_turn * params.max_turns, stage="finish", to_end=True)
        out.limited = limited
        if rolled and rolled[0]:
            out.path = replace(rolled[0][0], parents=(), parent_tokens=())
    return out


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    if ctx.draft_model is None:
        raise InvalidRequest("atts needs a draft model (role `draft`) and none is served", param="strategy")
    name = calibration_name(ctx.draft_model, ctx.target_model, params.dataset, params.chunking)
    ordered = sorted(await ctx.calibration.scores(name))
    if len(ordered) < MIN_CALIBRATION:
        flags = "" if params.mode == "line" else f" --mode reference --chunk-tokens {params.chunk}"
        raise InvalidRequest(
            f"calibration set {name!r} has {len(ordered)} scores, atts needs at least {MIN_CALIBRATION}: "
            f"build it with `python -m deploy.calibrate --dataset {params.dataset}{flags}`",
            param="strategy_params.dataset",
        )

    drafted = await for_draft(ctx, problem)

    async def one(i: int) -> Sample:
        s = await run_sample(ctx, problem, params, i, ordered, drafted=drafted)
        answer = path_candidates(ctx, [s.path])[0].answer
        ctx.emit({"stage": "sample", "sample": i, "answer": answer, "turns": len(s.scores), "rejected": s.rejected, "takeovers": s.takeovers})
        return s

    samples = list(await asyncio.gather(*(one(i) for i in range(params.n))))
    scores = [x for s in samples for x in s.scores]
    if params.updates_calibration and scores:
        await ctx.calibration.add_scores(name, scores=scores, model=f"{ctx.draft_model}->{ctx.target_model}", keep=CALIBRATION_WINDOW)
    paths = [s.path for s in samples if s.path.text]
    if not paths:
        raise BudgetExceeded("the budget had no room for a single chunk")
    cands = path_candidates(ctx, paths)
    chunks = sum(len(s.turns) for s in samples)  # conformal tests: every scored draft chunk, resamples included
    turns = len(scores)  # turns whose first draft chunk was tested
    rejected = sum(s.rejected for s in samples)
    first_rejected = sum(1 for s in samples for t in s.turns if t["attempt"] == 0 and t["rejected"])
    takeovers = sum(s.takeovers for s in samples)
    info = {
        "calibration": name,
        "calibration_size": len(ordered),
        "mode": params.mode,
        "chunk_tokens": params.chunk,
        "resamples": params.retries,
        "chunks": chunks,
        "rejected": rejected,
        "rejection_rate": rejected / chunks if chunks else 0.0,
        "turns": turns,
        "first_rejected": first_rejected,
        "first_rejection_rate": first_rejected / turns if turns else 0.0,
        "takeovers": takeovers,
        "takeover_rate": takeovers / turns if turns else 0.0,
    }
    trace = [t for s in samples for t in s.turns]
    limited = any(s.limited for s in samples)
    return result(majority(cands), cands, trace=trace, info=info, **({"finish_reason": "budget"} if limited else {}))


async def calibration_scores(ctx: StrategyContext, problem: Problem, params: Params) -> list[float]:
    """Scores of the draft's chunks on ``problem`` with nothing rejected (the draft writes every chunk, in
    ``params``' chunking), as a calibration set needs them: ``n`` samples of up to ``max_turns`` chunks in
    ``line`` mode, of their first chunk only in ``reference`` mode (as its reference script calibrates)."""
    if params.mode == "reference":
        params = params.model_copy(update={"max_turns": 1})
    drafted = await for_draft(ctx, problem)
    samples = await asyncio.gather(*(run_sample(ctx, problem, params, i, None, drafted=drafted) for i in range(params.n)))
    return [x for s in samples for x in s.scores]


def worst_case(p: Params) -> int:
    """Generated tokens a request can cost: per turn up to ``retries + 1`` draft attempts and the target's
    chunk, for at most ``max_turns`` turns, and about ``retries + 2`` times what a sample keeps."""
    per_sample = min((p.retries + 2) * p.max_tokens, p.max_turns * (p.retries + 2) * p.chunk)
    return p.n * per_sample


SPEC = StrategySpec(
    name="atts",
    params=Params,
    run=run,
    summary="draft writes, target rejects by a conformal test at rate alpha and rewrites (line) or continues (reference)",
    worst_case=worst_case,
    needs=lambda p: frozenset({"draft"}),
)

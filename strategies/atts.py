"""ATTS: a cheap draft model writes, the target model checks, and a conformal test decides who writes on.

Each of ``n`` samples runs as its own async loop (no batch barrier between samples). One turn: the draft
writes a chunk (one step: up to ``chunk_tokens`` tokens, ending at the step delimiter); the target scores it
without generating, as its perplexity under the target given the question and the sample's text so far (prompt
log-probabilities of a single prefill). The score's conformal p-value against a calibration set of such
scores is the share of calibration scores at least as large (ties broken at random, the smoothed p-value).
A p-value at or below ``alpha`` rejects the chunk and the target writes that turn's chunk instead.

When calibration and live chunks are exchangeable, a chunk is rejected with probability exactly ``alpha``:
``alpha`` sets the share of turns the target has to take over, hence the cost. A calibration set is kept per
(draft model, target model, dataset), built by ``python -m deploy.calibrate`` and updated online: every chunk
a request scores is appended (the newest :data:`CALIBRATION_WINDOW` are kept), so the set follows drift.

Sequential scaling is ``max_turns`` (chunks per sample), parallel scaling ``n``; the answer is the majority
over the samples.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded, InvalidRequest
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, ScoreSpec, StrategyResult
from strategies.common import Path, StepConfig, extend, majority, path_candidates, result
from strategies.params import MaxTokens, Sampling, Seed, Temperature

CALIBRATION_WINDOW = 4096  # newest scores a calibration set keeps
MIN_CALIBRATION = 20  # fewer scores cannot resolve alpha = 0.05 (p-values move in steps of 1/(size + 1))


class Params(Sampling):
    n: int = Field(4, ge=1, le=64, description="Independent samples (parallel scaling); the answer is their majority.")
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="Share of draft chunks the target rejects and rewrites (0: never, 1: always).")
    max_turns: int = Field(16, ge=1, le=256, description="Most chunks per sample (sequential scaling).")
    chunk_tokens: int = Field(64, ge=1, le=1024, description="Most tokens of one chunk (a chunk is one step).")
    max_tokens: MaxTokens = Field(256, description="Most generated tokens per sample.")
    temperature: Temperature = Field(0.8, description="Sampling temperature of draft and target.")
    seed: Seed = Field(None, description="Engine seed (sample i offset by i); also seeds the p-value tie-breaks.")
    dataset: str = Field("task", min_length=1, max_length=100, description="Which calibration set of the model pair to test against.")
    update_calibration: bool = Field(True, description="Append this request's chunk scores to the calibration set.")


def calibration_name(draft: str, target: str, dataset: str) -> str:
    """The database name of the calibration set of a (draft, target) pair on ``dataset``."""
    return f"{draft}->{target}/{dataset}"


def p_value(score: float, ordered: Sequence[float], u: float) -> float:
    """Smoothed conformal p-value of ``score`` against the sorted calibration scores ``ordered``: larger scores
    are less conforming. ``u`` in [0, 1) splits ties at random, which makes P(p <= alpha) = alpha exactly
    under exchangeability instead of at most alpha."""
    lo, hi = bisect.bisect_left(ordered, score), bisect.bisect_right(ordered, score)
    return (len(ordered) - hi + u * (hi - lo + 1)) / (len(ordered) + 1)


async def perplexity(ctx: StrategyContext, prefix: str, chunk: str, *, hop: int, branch: str) -> float:
    """The target's perplexity of ``chunk`` after ``prefix``: exp of minus the mean log-probability of the
    chunk's tokens, from one scoring prefill (charged as verifier tokens, stage ``verify``)."""
    start = await ctx.tokens(prefix) - 1  # row 0 of the scores then predicts the chunk's first token
    scores = await ctx.score(ScoreSpec(prompt=prefix + chunk, start=start), stage="verify", branch=branch, role=ctx.policy_role, hop=hop)
    lps = scores.logprobs
    return math.exp(-sum(lps) / len(lps)) if lps else 1.0


@dataclass
class Sample:
    """One sample's run: where it got to, and per turn the draft's score, p-value and verdict."""

    path: Path = field(default_factory=Path)
    scores: list[float] = field(default_factory=list)
    turns: list[dict[str, object]] = field(default_factory=list)
    limited: bool = False

    @property
    def rejected(self) -> int:
        return sum(1 for t in self.turns if t["rejected"])


async def for_draft(ctx: StrategyContext, problem: Problem) -> Problem:
    """``problem`` as the draft reads it: the chat rendered by the draft's own template (a draft of another
    family must not continue the policy's rendering); a raw prompt is continued as it is by both."""
    if not problem.messages:
        return problem
    return replace(problem, prompt=await ctx.render_chat(problem.messages, role="draft"))


async def run_sample(
    ctx: StrategyContext, problem: Problem, params: Params, index: int, ordered: Sequence[float] | None, *, drafted: Problem | None = None
) -> Sample:
    """Sample ``index``'s loop (``drafted``: the problem as the draft reads it, see :func:`for_draft`).
    ``ordered`` None calibrates: every draft chunk is scored and kept."""
    drafting = drafted or problem
    seed = None if params.seed is None else params.seed + 1_000_003 * index
    cfg = StepConfig(params.chunk_tokens, params.max_tokens, params.temperature, params.top_p, seed, ctx.tools.profile.step_delimiter)
    rng = random.Random(f"{params.seed}/{index}") if params.seed is not None else random.Random()
    out = Sample()
    branch = str(index)
    for turn in range(params.max_turns):
        hop = 3 * turn
        written, limited = await extend(ctx, drafting, [(out.path, 1)], cfg, hop=hop, stage="draft", role="draft")
        if limited or not written[0]:
            out.limited = True
            break
        draft = written[0][0]
        chunk = draft.text[len(out.path.text) :]
        if not chunk:  # the draft ended the solution (EOS): nothing to score
            out.path = draft
            break
        try:
            s = await perplexity(ctx, problem.prompt + out.path.text, chunk, hop=hop + 1, branch=branch)
        except BudgetExceeded:
            out.path, out.limited = draft, True  # paid for: keep it unchecked
            break
        p = p_value(s, ordered, rng.random()) if ordered is not None else 1.0
        rejected = p <= params.alpha
        out.scores.append(s)
        out.turns.append({"sample": index, "turn": turn, "perplexity": round(s, 4), "p_value": round(p, 4), "rejected": rejected})
        if rejected:
            written, limited = await extend(ctx, problem, [(out.path, 1)], cfg, hop=hop + 2, stage="takeover")
            if limited or not written[0]:
                out.limited = True
                break
            draft = written[0][0]
        out.path = replace(draft, parents=())  # no tree here: a sample is one chain
        if out.path.done:
            break
    return out


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    if ctx.draft_model is None:
        raise InvalidRequest("atts needs a draft model (role `draft`) and none is served", param="strategy")
    name = calibration_name(ctx.draft_model, ctx.target_model, params.dataset)
    ordered = sorted(await ctx.calibration.scores(name))
    if len(ordered) < MIN_CALIBRATION:
        raise InvalidRequest(
            f"calibration set {name!r} has {len(ordered)} scores, atts needs at least {MIN_CALIBRATION}: "
            f"build it with `python -m deploy.calibrate --dataset {params.dataset}`",
            param="strategy_params.dataset",
        )

    drafted = await for_draft(ctx, problem)

    async def one(i: int) -> Sample:
        s = await run_sample(ctx, problem, params, i, ordered, drafted=drafted)
        ctx.emit({"stage": "sample", "sample": i, "answer": path_candidates(ctx, [s.path])[0].answer, "turns": len(s.turns), "rejected": s.rejected})
        return s

    samples = list(await asyncio.gather(*(one(i) for i in range(params.n))))
    scores = [x for s in samples for x in s.scores]
    if params.update_calibration and scores:
        await ctx.calibration.add_scores(name, scores=scores, model=f"{ctx.draft_model}->{ctx.target_model}", keep=CALIBRATION_WINDOW)
    paths = [s.path for s in samples if s.path.text]
    if not paths:
        raise BudgetExceeded("the budget had no room for a single chunk")
    cands = path_candidates(ctx, paths)
    chunks = sum(len(s.turns) for s in samples)
    rejected = sum(s.rejected for s in samples)
    info = {
        "calibration": name,
        "calibration_size": len(ordered),
        "chunks": chunks,
        "rejected": rejected,
        "rejection_rate": rejected / chunks if chunks else 0.0,
    }
    trace = [t for s in samples for t in s.turns]
    limited = any(s.limited for s in samples)
    return result(majority(cands), cands, trace=trace, info=info, **({"finish_reason": "budget"} if limited else {}))


async def calibration_scores(ctx: StrategyContext, problem: Problem, params: Params) -> list[float]:
    """Scores of the draft's chunks on ``problem`` with nothing rejected (the draft writes every chunk), as
    a calibration set needs them: ``n`` samples of up to ``max_turns`` chunks."""
    drafted = await for_draft(ctx, problem)
    samples = await asyncio.gather(*(run_sample(ctx, problem, params, i, None, drafted=drafted) for i in range(params.n)))
    return [x for s in samples for x in s.scores]


SPEC = StrategySpec(
    name="atts",
    params=Params,
    run=run,
    summary="draft writes, target rejects by a conformal test at rate alpha and rewrites",
    # A rejected chunk is paid twice: the draft's and the target's rewrite.
    worst_case=lambda p: 2 * p.n * p.max_tokens,
    needs=lambda p: frozenset({"draft"}),
)

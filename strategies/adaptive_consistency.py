"""Adaptive consistency: self-consistency that samples in waves and stops once the vote is settled.

The first wave draws ``min_samples`` samples, every later wave ``wave`` more (the last one cut so that at most
``n`` are drawn). Each wave is one batched engine call, seeded after the samples before it: an engine gives
sample j of a call seed + j, so wave w starts at seed + the samples drawn so far. No wave repeats another, and
the samples are, in order, the ones self-consistency draws with the same seed and n: stopping early only leaves
off the tail.

After every wave the stopping rule reads the vote (unparsable answers do not vote). With ``a`` and ``b`` the
counts of the leading and the runner-up answer, the leader's share of their two-way contest has the posterior
Beta(a + 1, b + 1) (uniform prior), and the confidence that the leader truly leads is P(share > 1/2) under it
(Aggarwal et al.'s Beta stopping criterion). Sampling stops when

- ``confident``: that confidence reaches ``confidence``;
- ``settled``: the leader is ahead of every other answer by more than the samples left could make up, so the
  full n could not change the answer either;
- ``exhausted``: n samples are drawn.

The rule is never consulted before ``min_samples`` samples. Every decision is emitted (stage ``wave``) and kept
in the trace. The answer is the majority of the samples drawn (ties to the first seen), as self-consistency's.

:func:`sample_in_waves` is also self-consistency's and best-of-N's ``adaptive`` option.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal, Mapping

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from scipy.stats import beta

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.strategy import StrategySpec
from orchestrator.types import Candidate, Problem, StrategyResult
from strategies.common import candidates, majority, result
from strategies.params import Sampling

Stop = Literal["confident", "settled", "exhausted"]

WaveSize = Annotated[int, Field(ge=1, le=256, description="Samples per wave after the first (one batched engine call each).")]
MinSamples = Annotated[int, Field(ge=1, le=256, description="The first wave: the rule never stops before this many samples (at most n).")]
Confidence = Annotated[
    float, Field(gt=0.5, lt=1.0, description="Stop once the Beta posterior gives the leading answer at least this probability of leading.")
]


def lead_confidence(votes: Mapping[str, int]) -> float:
    """P(the leading answer's share of its contest with the runner-up exceeds 1/2) under Beta(a + 1, b + 1),
    a and b their vote counts (0 for a missing runner-up); 0.5 when nothing voted."""
    top = sorted(votes.values(), reverse=True) + [0, 0]
    return float(beta.sf(0.5, top[0] + 1, top[1] + 1))


@dataclass(frozen=True)
class Decision:
    """The stopping rule's verdict after ``samples`` samples: ``stop`` is None to sample on."""

    samples: int
    confidence: float
    stop: Stop | None


def decide(votes: Mapping[str, int], *, samples: int, n: int, min_samples: int, confidence: float) -> Decision:
    """Whether to stop after ``samples`` of at most ``n`` samples with ``votes``; never before ``min_samples``
    (capped at n). ``settled`` needs a strict lead: a tie goes to the first-seen answer, which may not be the leader."""
    conf = lead_confidence(votes)
    if samples >= n:
        return Decision(samples, conf, "exhausted")
    if samples < min(min_samples, n):
        return Decision(samples, conf, None)
    if conf >= confidence:
        return Decision(samples, conf, "confident")
    top = sorted(votes.values(), reverse=True) + [0, 0]
    if top[0] > 0 and top[0] - top[1] > n - samples:
        return Decision(samples, conf, "settled")
    return Decision(samples, conf, None)


class Waves(BaseModel):
    """Checks of the wave parameters, for a ``Params`` that declares ``n`` (and ``adaptive`` when the waves
    are an option) before ``wave``, ``min_samples`` and ``confidence``. Only values a request gives are
    checked (defaults are not): a default ``min_samples`` above a small n is cut to n."""

    @field_validator("wave", "min_samples", "confidence", check_fields=False)
    @classmethod
    def _meaningful(cls, v: float, info: ValidationInfo) -> float:
        if not info.data.get("adaptive", True):
            raise ValueError(f"{info.field_name} applies only with adaptive=true")
        n = info.data.get("n")
        if info.field_name != "confidence" and n is not None and v > n:
            raise ValueError(f"{info.field_name}={v} cannot exceed n={n}")
        return v


class AdaptiveOption(Sampling, Waves):
    """n samples, drawn at once or (``adaptive``) in waves: the parameters self-consistency and best-of-N share."""

    n: int = Field(8, ge=1, le=256, description="Samples to draw (the most, with adaptive).")
    adaptive: bool = Field(False, description="Sample in waves and stop once the vote is settled (adaptive consistency).")
    wave: WaveSize = 4
    min_samples: MinSamples = 4
    confidence: Confidence = 0.95


class Params(Sampling, Waves):
    n: int = Field(16, ge=1, le=256, description="Most samples to draw.")
    wave: WaveSize = 4
    min_samples: MinSamples = 4
    confidence: Confidence = 0.95


@dataclass(frozen=True)
class Sampled:
    """What :func:`sample_in_waves` drew: the samples in seed order, one trace entry per wave, why it stopped
    (``budget`` when the budget refused a wave), and whether the budget cut or refused something."""

    candidates: list[Candidate]
    trace: list[dict[str, object]]
    stopped: Stop | Literal["budget"]
    limited: bool


async def sample_in_waves(
    problem: Problem, ctx: StrategyContext, params: Sampling, *, n: int, wave: int, min_samples: int, confidence: float, stage: str = "sample"
) -> Sampled:
    """Up to ``n`` samples of ``problem`` drawn in waves until :func:`decide` stops; wave w is one call at
    ``hop`` w (it waited for the verdict on the waves before it). Raises BudgetExceeded only when the budget
    has no room for the first wave."""
    cands: list[Candidate] = []
    trace: list[dict[str, object]] = []
    stopped: Stop | Literal["budget"] = "exhausted"
    w = 0
    while True:
        size = min(min_samples, n) if w == 0 else min(wave, n - len(cands))
        spec = params.sampling(problem.prompt, n=size, seed_offset=len(cands))
        try:
            gen = await ctx.generate(spec, stage=stage, branch=str(w), hop=w)
        except BudgetExceeded:
            if not cands:
                raise
            stopped = "budget"
            break
        cands += candidates(ctx, gen.completions)
        votes = Counter(c.answer for c in cands if c.answer is not None)
        d = decide(votes, samples=len(cands), n=n, min_samples=min_samples, confidence=confidence)
        event: dict[str, object] = {
            "stage": "wave",
            "wave": w,
            "drawn": size,
            "samples": len(cands),
            "votes": dict(votes),
            "confidence": round(d.confidence, 4),
            "target": confidence,
            "decision": d.stop or "continue",
        }
        ctx.emit(event)
        trace.append(event)
        w += 1
        if d.stop is not None:
            stopped = d.stop
            break
    return Sampled(cands, trace, stopped, ctx.budget_limited or stopped == "budget")


async def vote(problem: Problem, ctx: StrategyContext, params: Sampling, *, n: int, wave: int, min_samples: int, confidence: float) -> StrategyResult:
    """Adaptive consistency's answer: the majority of the samples :func:`sample_in_waves` drew."""
    s = await sample_in_waves(problem, ctx, params, n=n, wave=wave, min_samples=min_samples, confidence=confidence)
    votes = Counter(c.answer for c in s.candidates if c.answer is not None)
    info = {"votes": dict(votes), "samples": len(s.candidates), "waves": len(s.trace), "stopped": s.stopped}
    return result(majority(s.candidates), s.candidates, info=info, trace=s.trace, **({"finish_reason": "budget"} if s.stopped == "budget" else {}))


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    return await vote(problem, ctx, params, n=params.n, wave=params.wave, min_samples=params.min_samples, confidence=params.confidence)


SPEC = StrategySpec(
    name="adaptive_consistency",
    params=Params,
    run=run,
    summary="self-consistency in waves: stop once a Beta posterior on the majority's lead reaches the confidence target",
    worst_case=lambda p: p.n * p.max_tokens,
)

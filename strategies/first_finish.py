"""First Finish Search: of n samples, the first to finish wins; the others are stopped at once.

``mode="async"`` (default): n independent requests; the first that finishes *with a parsable answer* wins.
``mode="sync"``: one request of n sequences decoded in lockstep (one batch); the first sequence to end with
an answer wins, and the whole batch is stopped.

The others are aborted the moment the winner is known; what they had generated is still charged and recorded
(the reference implementation drops it, which understates the real cost). FFS-k@N (the follow-up's rule): once
k answered traces have finished, the rest are aborted; the cutoff is the k-th smallest token length among the
answered traces, and the majority is taken over the answered traces no longer than it (ties in length may make
more than k; here exactly k are taken, finish order breaking ties). In ``sync`` mode the batch decodes in
lockstep, so the answered finishers are exactly the shortest. In ``async`` mode the race stops at the k-th
answered arrival, so the answered traces are the first k to arrive: the k shortest when the samples decode at
one rate, as one engine's batch does, but not always (a sample on a busier replica, or behind a longer
prefill, arrives late); waiting longer to be sure would cost the tokens FFS exists to save. Samples that finish without a parsable answer do not count, nor do samples cut
by ``max_tokens`` (a truncated trace is never answered). When none has an answer, the first finisher is
returned with answer None.

``openings`` is the paper's per-sample opening prefill, for diversity: sample i continues the prompt followed
by ``openings[i % len(openings)]``, and the opening is part of that sample's text (its answer is read from
opening + continuation; its tokens are prompt, not generated, tokens). An opening is written in the model's
own format: for the bundled model, one that starts the first step line (e.g. the start value); for R1-style
models the paper's phrases ("Alright, let's", "Hmm, ", "Okay, so"). A lockstep batch (``sync``) shares one
prompt, so it takes at most one opening.

``finish="last"`` is the paper's control, Last Finish Search: every sample runs to its end and the last to
finish with an answer wins (sync: the last to end); with k > 1 the majority of the last k. Nothing is aborted.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.strategy import StrategySpec
from orchestrator.types import Candidate, FinishReason, Problem, SamplingSpec, StrategyResult
from strategies.common import candidate, majority, result
from strategies.params import Sampling, Seed, Temperature, TopP


class Params(Sampling):
    n: int = Field(8, ge=1, le=64, description="Independent samples started at once.")
    k: int = Field(1, ge=1, le=64, description="FFS-k@N: majority over the first k answered traces.")
    temperature: Temperature = Field(0.6, description="Sampling temperature (the paper's 0.6).")
    top_p: TopP = Field(0.95, description="Nucleus sampling mass (the paper's 0.95).")
    seed: Seed = Field(None, description="Sample i uses seed + i; None for fresh randomness.")
    mode: Literal["async", "sync"] = Field("async", description="Independent requests, or one lockstep batch.")
    openings: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64, description="Opening prefills: sample i continues the prompt + openings[i % len]; none by default."
    )
    finish: Literal["first", "last"] = Field("first", description="Who wins: the first finisher (FFS) or the last (the paper's control).")

    @field_validator("openings")
    @classmethod
    def _one_prompt_in_lockstep(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("mode") == "sync" and len(v) > 1:
            raise ValueError(f"mode sync decodes one prompt in lockstep: at most one opening, not {len(v)}")
        return v

    def opening(self, i: int) -> str:
        """The opening prefill of sample ``i`` ("" without openings)."""
        return self.openings[i % len(self.openings)] if self.openings else ""

    def spec(self, prompt: str, i: int, *, n: int = 1) -> SamplingSpec:
        """The call of sample ``i`` (of ``n`` in lockstep): the prompt with its opening, seed + i."""
        return self.sampling(prompt + self.opening(i), n=n, seed_offset=i)

    @model_validator(mode="after")
    def _k_within_n(self) -> Params:
        if self.k > self.n:
            raise ValueError(f"k={self.k} cannot exceed n={self.n}")
        return self


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    if params.mode == "sync":
        return await _run_sync(problem, ctx, params)
    specs = [params.spec(problem.prompt, i) for i in range(params.n)]
    answered: list[int] = []
    async with ctx.race(specs, stage="sample") as race:
        async for f in race:
            c = f.generation.completions[0]
            if candidate(ctx, params.opening(f.index) + c.text, c.tokens, c.finish_reason).answer is not None:
                answered.append(f.index)
            if params.finish == "first" and len(answered) >= params.k:
                if race.running:
                    ctx.emit({"stage": "abort", "winners": answered[: params.k], "aborting": race.running})
                break
    results = race.results
    if not results:
        raise BudgetExceeded("the budget had no room for a single sample")
    drawn = [i for i in range(params.n) if i in results]
    candidates = tuple(candidate(ctx, params.opening(i) + c.text, c.tokens, c.finish_reason) for i in drawn for c in results[i].completions)
    index = {i: pos for pos, i in enumerate(drawn)}
    # Among the k shortest (longest) answered, the majority (ties to the earliest); the first (last) finisher when none answered.
    lengths = {i: candidates[index[i]].tokens for i in drawn}
    first = _pick(answered, params, lengths) or _pick(race.order, params, lengths, k=1)
    pos, votes = _vote([candidates[index[i]] for i in first])
    chosen = candidates[index[first[pos]]]
    info = {"winner": first[pos], "finish_order": race.order, "aborted": race.aborted, "votes": votes, "k": params.k, "finish": params.finish}
    return result(chosen, candidates, info=info)


async def _run_sync(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    opening = params.opening(0)
    texts = [opening] * params.n
    tokens = [0] * params.n
    reasons: list[FinishReason | None] = [None] * params.n
    order: list[int] = []
    answered: list[int] = []
    stopped = False
    stream = ctx.stream(params.spec(problem.prompt, 0, n=params.n), stage="sample")
    async for d in stream:
        texts[d.index] += d.text
        tokens[d.index] = d.tokens
        if d.finish_reason is not None and reasons[d.index] is None:
            reasons[d.index] = d.finish_reason
            if d.finish_reason != "abort":
                order.append(d.index)
                if candidate(ctx, texts[d.index], tokens[d.index], d.finish_reason).answer is not None:
                    answered.append(d.index)
        if params.finish == "first" and len(answered) >= params.k and not stopped:
            stopped = True
            ctx.emit({"stage": "abort", "winners": answered[: params.k]})
            await stream.stop()  # the stream ends once the engine has let the batch go
    cands = tuple(candidate(ctx, t, n, r or "abort") for t, n, r in zip(texts, tokens, reasons))
    lengths = dict(enumerate(tokens))
    first = _pick(answered, params, lengths) or _pick(order, params, lengths, k=1) or [0]
    pos, votes = _vote([cands[i] for i in first])
    aborted = [i for i, c in enumerate(cands) if c.finish_reason == "abort"]
    info = {"winner": first[pos], "finish_order": order, "aborted": aborted, "votes": votes, "k": params.k, "mode": "sync", "finish": params.finish}
    return result(cands[first[pos]], cands, info=info)


def _pick(order: list[int], params: Params, lengths: dict[int, int], *, k: int | None = None) -> list[int]:
    """``finish="first"``: the k shortest traces of ``order`` (FFS-k@N's cutoff), shortest first, finish order
    breaking ties in length; ``finish="last"`` (the paper's control, by time): the last k to finish, latest first."""
    k = k or params.k
    if params.finish == "last":
        return order[::-1][:k]
    pos = {i: p for p, i in enumerate(order)}
    return sorted(order, key=lambda i: (lengths[i], pos[i]))[:k]


def _vote(pool: list[Candidate]) -> tuple[int, dict[str, int]]:
    """Where in ``pool`` the majority candidate is (:func:`strategies.common.majority`: ties to the
    earliest, the first when none has an answer) and the votes."""
    chosen = majority(pool)
    return next(p for p, c in enumerate(pool) if c is chosen), dict(Counter(c.answer for c in pool if c.answer is not None))

SPEC = StrategySpec(
    name="first_finish",
    params=Params,
    run=run,
    summary="First Finish Search: first answered sample of n wins (FFS-k@N: majority of the first k); the rest are aborted",
    worst_case=lambda p: p.n * p.max_tokens,
)

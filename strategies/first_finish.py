"""First Finish Search: of n samples, the first to finish wins; the others are stopped at once.

``mode="async"`` (default): n independent requests; the first that finishes *with a parsable answer* wins.
``mode="sync"``: one request of n sequences decoded in lockstep (one batch); the first sequence to end wins,
whether or not it has an answer (the paper's synchronous variant), and the whole batch is stopped.

The others are aborted the moment the winner is known; what they had generated is still charged and recorded
(the reference implementation drops it, which understates the real cost). FFS-k@N: wait for the first k
answered traces, abort the rest, and take the majority among those k. Samples that finish without a parsable
answer do not count: the winner is the first finisher *with* an answer. When none has one, the first
finisher is returned with answer None.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.protocols import StrategySpec
from orchestrator.types import Candidate, Generation, Problem, SamplingSpec, StrategyResult
from strategies.common import majority, result


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, le=64, description="Independent samples started at once.")
    k: int = Field(1, ge=1, le=64, description="FFS-k@N: majority over the first k answered traces.")
    temperature: float = Field(0.6, ge=0.0, le=2.0, description="Sampling temperature (the paper's 0.6).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass (the paper's 0.95).")
    max_tokens: int = Field(256, ge=1, le=4096, description="Most new tokens per sample.")
    seed: int | None = Field(None, description="Sample i uses seed + i; None for fresh randomness.")
    mode: Literal["async", "sync"] = Field("async", description="Independent requests, or one lockstep batch.")

    @model_validator(mode="after")
    def _k_within_n(self) -> Params:
        if self.k > self.n:
            raise ValueError(f"k={self.k} cannot exceed n={self.n}")
        return self


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    if params.mode == "sync":
        return await _run_sync(problem, ctx, params)
    ids = [uuid.uuid4().hex for _ in range(params.n)]
    specs = [
        SamplingSpec(
            prompt=problem.prompt,
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=None if params.seed is None else params.seed + i,
            request_id=rid,
        )
        for i, rid in enumerate(ids)
    ]
    tasks = {asyncio.ensure_future(ctx.generate(s, stage="sample", branch=str(i))): i for i, s in enumerate(specs)}
    order: list[int] = []  # finishing order
    results: dict[int, Generation] = {}
    answered: list[int] = []
    aborted: list[int] = []
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in sorted(done, key=lambda t: tasks[t]):
                i = tasks[t]
                try:
                    results[i] = t.result()
                except BudgetExceeded:
                    continue  # this sample never ran: the budget had no room for it
                order.append(i)
                c = results[i].completions[0]
                if c.finish_reason != "abort" and ctx.extract(c.text) is not None:
                    answered.append(i)
            if len(answered) >= params.k and pending:
                aborted = sorted(tasks[t] for t in pending)
                ctx.emit({"stage": "abort", "winners": answered[: params.k], "aborting": aborted})
                await ctx.abort([ids[i] for i in aborted])
                # The aborted calls return promptly with what they had generated; wait so they are recorded.
    finally:
        leftover = [t for t in tasks if not t.done()]
        if leftover:  # cancelled from outside: stop the engine work too
            await asyncio.shield(ctx.abort([ids[tasks[t]] for t in leftover]))
            for t in leftover:
                t.cancel()
    candidates = tuple(
        Candidate(text=c.text, answer=ctx.extract(c.text) if c.finish_reason != "abort" else None, tokens=c.tokens, finish_reason=c.finish_reason)
        for i in range(params.n)
        if i in results
        for c in results[i].completions
    )
    index = {i: pos for pos, i in enumerate(i for i in range(params.n) if i in results)}
    if not results:
        raise BudgetExceeded("the budget had no room for a single sample")
    # Among the first k answered, the majority (ties to the earliest); the first finisher when none answered.
    first = answered[: params.k] or order[:1]
    pos, votes = _vote([candidates[index[i]] for i in first])
    chosen = candidates[index[first[pos]]]
    return result(chosen, candidates, info={"winner": first[pos], "finish_order": order, "aborted": aborted, "votes": votes, "k": params.k})


async def _run_sync(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    rid = uuid.uuid4().hex
    spec = SamplingSpec(
        prompt=problem.prompt,
        n=params.n,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        request_id=rid,
    )
    texts = [""] * params.n
    tokens = [0] * params.n
    reasons: list[str | None] = [None] * params.n
    order: list[int] = []
    stopped = False
    async for d in ctx.stream(spec, stage="sample"):
        texts[d.index] += d.text
        tokens[d.index] = d.tokens
        if d.finish_reason is not None and reasons[d.index] is None:
            reasons[d.index] = d.finish_reason
            if d.finish_reason != "abort":
                order.append(d.index)
        if len(order) >= params.k and not stopped:
            stopped = True
            ctx.emit({"stage": "abort", "winners": order[: params.k]})
            await ctx.abort([rid])  # the stream ends once the engine has let the batch go
    cands = tuple(
        Candidate(text=t, answer=ctx.extract(t) if r not in (None, "abort") else None, tokens=n, finish_reason=r if r in ("stop", "length") else "abort")  # type: ignore[arg-type]
        for t, n, r in zip(texts, tokens, reasons)
    )
    first = order[: params.k] or [0]
    pos, votes = _vote([cands[i] for i in first])
    aborted = [i for i, c in enumerate(cands) if c.finish_reason == "abort"]
    info = {"winner": first[pos], "finish_order": order, "aborted": aborted, "votes": votes, "k": params.k, "mode": "sync"}
    return result(cands[first[pos]], cands, info=info)


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
    worst_case=lambda p: p.n * p.max_tokens,  # type: ignore[attr-defined]
)

"""Parallel-Distill-Refine (PDR) and Sequential Refinement (SR).

PDR runs rounds of ``schedule`` drafts (default 8, 4, 1). Round 1 answers the question; every later round
refines from a *workspace* distilled from the previous round's drafts, never from the drafts' full text, and
the workspace is bounded: it never exceeds ``kappa`` tokens (the model profile's ``scale.workspace_tokens`` by
default, room for the drafts it shows). A draft is shown by its final part (a reasoning model's conclusion,
not its thinking); drafts that do not all fit share ``kappa`` equally, each cut in its middle with the mark
``[... truncated]`` so that its start and its answer at the end both stay (counted in the round's
``truncated``); a refinement never starts from a silently empty workspace. The last round's answer is the
result (its majority when it has several drafts). A refiner that asks in chat messages (``refine_messages``)
has them rendered through the policy's chat template.

Distill operators (``distill``):

- ``summary``: a global summary of all drafts, shared by every refinement of the round. Written by the policy
  when the refiner asks for one (:class:`~verifiers.refine.TextRefiner`: the paper's summary of agreements,
  contradictions, derived facts and open subgoals, one call charged to the request at stage ``distill``, its
  final part kept); the refiner's computed summary when it has its own format (the bundled tasks'
  workspaces, which their models were trained on), or when the written one came back empty or cut.
- ``tally``: the refiner's computed summary, no model call (the cheap option: answers with their counts and a
  supporting line each, for a text refiner).
- ``shared_top_k``: the ``k`` best drafts verbatim, the same for every refinement.
- ``per_sample_top_k``: refinement j sees its own parent draft (draft j of the previous round, cyclically)
  and the ``k - 1`` best others.
- ``random_k``: every refinement sees its own random ``k`` drafts (bootstrapped, seeded by ``seed``).

"Best" is ranked by ``rank_by``: ``vote`` (drafts whose answer more drafts share first; needs no model),
``prm`` (aggregated step scores) or ``judge``. SR is the one-candidate case: one draft, refined
``rounds - 1`` times, each time from a workspace of the previous draft alone (the refiner's computed summary
of one draft: the draft itself, answer included, for the text refiner).

Both budgets of the paper are reported: ``sequential_tokens`` (prompt + completion of the longest call of
every round, summed: the latency proxy) and the total (``usage`` plus verifier tokens: the cost proxy).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace
from typing import Literal, NamedTuple, Sequence

from pydantic import Field, field_validator, model_validator

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.scoring import aggregate
from orchestrator.strategy import StrategySpec
from orchestrator.toolbox import Capability
from orchestrator.types import Candidate, Problem, SamplingSpec, StrategyResult
from strategies.common import candidate, majority, result
from strategies.params import MaxTokens, Sampling, Seed, Temperature

Distill = Literal["summary", "tally", "shared_top_k", "per_sample_top_k", "random_k"]
RankBy = Literal["vote", "prm", "judge"]


class _Sampling(Sampling):
    kappa: int = Field(256, ge=8, le=65536, description="Most tokens of a workspace (the paper's kappa; default: the profile's `scale.workspace_tokens`).")
    temperature: Temperature = Field(0.8, description="Sampling temperature of every draft.")
    max_tokens: MaxTokens = Field(256, description="Most new tokens per draft.")
    seed: Seed = Field(None, description="Engine seed (and random-k's draws); None for fresh randomness.")

    PROFILE_DEFAULTS = {**Sampling.PROFILE_DEFAULTS, "kappa": lambda p: p.scale.workspace_tokens}


class Params(_Sampling):
    schedule: list[int] = Field([8, 4, 1], min_length=1, max_length=16, description="Drafts per round.")
    distill: Distill = Field("summary", description="How a round's drafts become the next round's workspace.")
    k: int = Field(2, ge=1, le=64, description="Drafts shown by the top-k and random-k operators.")
    rank_by: RankBy = Field("vote", description="How top-k operators rank drafts.")

    @field_validator("schedule")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(m < 1 or m > 64 for m in v):
            raise ValueError("every round must have 1 to 64 drafts")
        return v

    @model_validator(mode="after")
    def _k_fits(self) -> Params:
        if self.distill not in ("summary", "tally") and len(self.schedule) > 1 and self.k > max(self.schedule[:-1]):
            raise ValueError(f"k={self.k} exceeds every round's drafts {self.schedule[:-1]}")
        return self


class SRParams(_Sampling):
    rounds: int = Field(4, ge=1, le=32, description="Calls in the chain: one draft, then rounds - 1 refinements.")


def _needs(p: Params) -> frozenset[Capability]:
    scorer = {p.rank_by} if p.distill in ("shared_top_k", "per_sample_top_k") and p.rank_by != "vote" else set()
    return frozenset({"refiner"} | scorer)


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    return await _refine(problem, ctx, params, params.schedule, params.distill, params.k, params.rank_by)


async def run_sr(problem: Problem, ctx: StrategyContext, params: SRParams) -> StrategyResult:
    return await _refine(problem, ctx, params, [1] * params.rounds, "tally", 1, "vote")


async def _refine(
    problem: Problem, ctx: StrategyContext, params: _Sampling, schedule: Sequence[int], distill: Distill, k: int, rank_by: RankBy
) -> StrategyResult:
    ctx.refiner  # fail before any compute when there is none  # noqa: B018
    rng = random.Random(params.seed)
    drafts: list[Candidate] = []
    rounds: list[dict[str, object]] = []
    limited = False
    truncated = 0  # workspaces where not one piece fitted in kappa whole
    for r, m in enumerate(schedule):
        if r == 0:
            workspaces = [Workspace("", 0)]
        elif distill in ("summary", "tally", "shared_top_k"):
            workspaces = [await _workspace(ctx, problem, params, drafts, distill, k, rank_by, hop=2 * r - 1)]
        else:
            ranked = await _ranked(ctx, problem, drafts, rank_by, hop=2 * r - 1) if distill == "per_sample_top_k" else drafts
            workspaces = [await _own_workspace(ctx, ranked, drafts[j % len(drafts)], distill, k, params.kappa, rng) for j in range(m)]
        planned = _planned(ctx, problem, params, schedule, r)
        if planned < m:
            ctx.emit({"stage": "plan", "round": r, "drafts": planned, "schedule": m, "remaining_tokens": ctx.remaining_tokens})
            m, workspaces, limited = planned, workspaces[:planned], True
        try:
            new = await _round(ctx, problem, params, [w.text for w in workspaces], m, r)
        except BudgetExceeded:
            limited = True
            break
        distinct = list({w.text: w for w in workspaces}.values())
        sizes = [w.tokens for w in distinct]  # one size per distinct workspace
        cut = sum(w.truncated for w in distinct)
        truncated += cut
        rounds.append(
            {"round": r, "drafts": len(new), "workspace_tokens": sizes, "truncated": cut, "answers": [c.answer for c in new]}
            | ({"summary": distinct[0].source} if distill == "summary" and r > 0 else {})
        )
        ctx.emit({"stage": "round", "round": r, "drafts": len(new), "leader": majority(new).answer})
        drafts = new
        if len(new) < m:  # the budget cut the round short
            limited = True
            break
    if not drafts:
        raise BudgetExceeded("the budget had no room for a single draft")
    info = {"rounds": len(rounds), "schedule": list(schedule), "distill": distill, "kappa": params.kappa, "truncated_workspaces": truncated}
    return result(majority(drafts), drafts, trace=rounds, info=info, **({"finish_reason": "budget"} if limited else {}))


def _planned(ctx: StrategyContext, problem: Problem, params: _Sampling, schedule: list[int], r: int) -> int:
    """Drafts round r can afford: with a token budget and sample lengths seen at this stage, as many as fit
    what is left after one draft of every later round (its workspace at most ``kappa``), at least one. A
    round of drafts that would all be cut is worth less than fewer drafts that finish."""
    left, seen = ctx.remaining_tokens, ctx.expected_tokens(f"round{r}") or ctx.expected_tokens("round0")
    m = schedule[r]
    if left is None or seen is None:
        return m
    one = len(problem.prompt.encode()) + 2 + seen  # a draft: its prompt (bounded as the meter bounds it) and its length
    later = sum(one + params.kappa for _ in schedule[r + 1 :])
    share = one if r == 0 else one + params.kappa  # a refine prompt carries its workspace
    return max(1, min(m, int((left - later) // share)))


async def _round(ctx: StrategyContext, problem: Problem, params: _Sampling, workspaces: list[str], m: int, r: int) -> list[Candidate]:
    """m drafts of round r: one call of n=m when every draft shares its workspace, one call each otherwise."""
    refiner = ctx.refiner

    def spec(prompt: str, n: int, i: int) -> SamplingSpec:
        return params.sampling(prompt, n=n, seed_offset=1000 * r + i)

    async def prompt(ws: str) -> str:
        if r == 0:
            return problem.prompt
        messages = refiner.refine_messages(problem.text, ws)
        if messages is None:
            return refiner.refine_prompt(problem.text, ws)
        # The client's system prompt holds for the refine request too (the answer format it asks for, say).
        if not any(m["role"] == "system" for m in messages):
            messages = [m for m in problem.messages if m.get("role") == "system"] + list(messages)
        return await ctx.render_chat(messages)

    if len(workspaces) == 1:
        gen = await ctx.generate(spec(await prompt(workspaces[0]), m, 0), stage=f"round{r}", hop=2 * r)
        return [candidate(ctx, c.text, c.tokens, c.finish_reason) for c in gen.completions]
    prompts = [await prompt(w) for w in workspaces]
    outs = await asyncio.gather(
        *(ctx.generate(spec(p, 1, j), stage=f"round{r}", branch=str(j), hop=2 * r) for j, p in enumerate(prompts)),
        return_exceptions=True,
    )
    for o in outs:
        if isinstance(o, BaseException) and not isinstance(o, BudgetExceeded):
            raise o
    done = [o.completions[0] for o in outs if not isinstance(o, BaseException)]
    if not done:
        raise BudgetExceeded("the budget had no room for this round")
    return [candidate(ctx, c.text, c.tokens, c.finish_reason) for c in done]


async def _ranked(ctx: StrategyContext, problem: Problem, drafts: list[Candidate], rank_by: RankBy, *, hop: int) -> list[Candidate]:
    """Drafts best first (stable: equal ranks keep draft order), each with the score it was ranked by."""
    if rank_by == "vote":
        counts = Counter(d.answer for d in drafts if d.answer is not None)
        scored = [replace(d, score=float(counts[d.answer]) if d.answer is not None else 0.0) for d in drafts]
    elif rank_by == "prm":
        steps = await ctx.prm(problem.text, [d.text for d in drafts], stage="distill", hop=hop)
        scored = [replace(d, score=aggregate(s, "last")) for d, s in zip(drafts, steps)]
    else:
        scores = await ctx.judge(problem.text, [d.text for d in drafts], stage="distill", hop=hop)
        scored = [replace(d, score=s) for d, s in zip(drafts, scores)]
    return sorted(scored, key=lambda d: -(d.score or 0.0))


async def _workspace(
    ctx: StrategyContext, problem: Problem, params: _Sampling, drafts: list[Candidate], distill: Distill, k: int, rank_by: RankBy, *, hop: int
) -> Workspace:
    kappa = params.kappa
    if distill == "summary" and ctx.refiner.summary_messages(problem.text, []) is not None:
        return await _written_summary(ctx, problem, params, drafts, hop=hop)
    if distill in ("summary", "tally"):
        return await _bounded(ctx, ctx.refiner.summary(problem.text, [d.text for d in drafts]), kappa)
    top = (await _ranked(ctx, problem, drafts, rank_by, hop=hop))[:k]
    return await _bounded(ctx, [ctx.refiner.draft_block(i, d.text) for i, d in enumerate(top)], kappa, share=True)


async def _written_summary(ctx: StrategyContext, problem: Problem, params: _Sampling, drafts: list[Candidate], *, hop: int) -> Workspace:
    """The policy's own summary of ``drafts`` (one call at stage ``distill``, charged to the request): the
    drafts it reads share ``kappa`` tokens, the workspace is the final part of what it writes, bounded by
    ``kappa``. An empty or cut summary falls back to the refiner's computed one (``source`` says which)."""
    refiner, kappa = ctx.refiner, params.kappa
    shown = await _shared(ctx, [refiner.draft_block(i, d.text) for i, d in enumerate(drafts)], kappa)
    messages = refiner.summary_messages(problem.text, [w.text for w in shown]) or []
    if not any(m["role"] == "system" for m in messages):
        messages = [m for m in problem.messages if m.get("role") == "system"] + list(messages)
    spec = params.sampling(await ctx.render_chat(messages), seed_offset=999_983)
    c = (await ctx.generate(spec, stage="distill", hop=hop)).completions[0]
    _, final = ctx.tools.profile.split_reasoning(c.text)
    if c.finish_reason != "stop" or not final.strip():
        out = await _bounded(ctx, refiner.summary(problem.text, [d.text for d in drafts]), kappa)
        return out._replace(source="tally: the written summary was cut" if c.finish_reason != "stop" else "tally: the written summary was empty")
    return (await _bounded(ctx, [final.strip()], kappa))._replace(source="written")


async def _own_workspace(
    ctx: StrategyContext, ranked: list[Candidate], own: Candidate, distill: Distill, k: int, kappa: int, rng: random.Random
) -> Workspace:
    if distill == "random_k":
        picked = rng.sample(ranked, min(k, len(ranked)))
    else:
        picked = [own] + [d for d in ranked if d is not own and d.text != own.text][: k - 1]
    return await _bounded(ctx, [ctx.refiner.draft_block(i, d.text) for i, d in enumerate(picked)], kappa, share=True)


class Workspace(NamedTuple):
    text: str
    tokens: int  # policy tokens, as counted when it was bounded
    truncated: bool = False  # some piece did not fit whole: its middle was cut
    source: str = "computed"  # for a summary: "written" by the policy, or the refiner's computed one and why


TRUNCATED = "[... truncated]"
SEPARATOR = "\n\n"  # between the pieces (drafts) of a workspace


async def _bounded(ctx: StrategyContext, pieces: Sequence[str], kappa: int, *, share: bool = False) -> Workspace:
    """``pieces`` joined, at most ``kappa`` policy tokens. Lines of a summary (``share`` False): the longest
    prefix of them that fits, the first one cut in its middle when not even it fits. Drafts (``share``): all of
    them when they fit, else each cut in its middle to an equal share of ``kappa``, so that every draft shows
    its start and its answer (a draft's answer is at its end; dropping drafts would leave top-k with one)."""
    sep = SEPARATOR if share else "\n"
    whole = sep.join(pieces)
    tokens = await ctx.tokens(whole)
    if tokens <= kappa or not pieces:
        return Workspace(whole, tokens)
    if share:
        cut = await _shared(ctx, pieces, kappa)
        text = sep.join(w.text for w in cut)
        return Workspace(text, await ctx.tokens(text), truncated=any(w.truncated for w in cut))
    kept: list[str] = []
    size = 0
    for piece in pieces:
        n = await ctx.tokens("\n".join(kept + [piece]))
        if n > kappa:
            break
        kept.append(piece)
        size = n
    if not kept:
        # An empty workspace would make the refinement a fresh draft that is reported as a refinement.
        return await _fit(ctx, pieces[0], kappa)
    return Workspace("\n".join(kept), size)


async def _shared(ctx: StrategyContext, pieces: Sequence[str], kappa: int) -> list[Workspace]:
    """Each piece within an equal share of ``kappa`` (less the separators between them), cut by :func:`_fit`."""
    room = max(1, kappa // max(1, len(pieces)) - await ctx.tokens(SEPARATOR))
    return [await _fit(ctx, p, room) for p in pieces]


async def _fit(ctx: StrategyContext, piece: str, kappa: int) -> Workspace:
    """``piece`` within ``kappa`` tokens: whole if it fits, else its head and its tail (twice as long: the
    answer is at the end) around the mark :data:`TRUNCATED`, as long as fits (bisected on characters;
    counting tokens is free). Without room even for the mark, the bare tail that fits."""
    tokens = await ctx.tokens(piece)
    if tokens <= kappa:
        return Workspace(piece, tokens)

    def cut(n: int, mark: bool) -> str:
        if not mark:
            return piece[len(piece) - n :].lstrip() if n else ""
        head, tail = piece[: n // 3].rstrip(), piece[len(piece) - (n - n // 3) :].lstrip() if n else ""
        return f"{head}\n{TRUNCATED}\n{tail}" if head or tail else TRUNCATED

    for mark in (True, False):
        lo, hi, best = 0, len(piece) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            n = await ctx.tokens(cut(mid, mark))
            if n <= kappa:
                best, lo = Workspace(cut(mid, mark), n, truncated=True), mid + 1
            else:
                hi = mid - 1
        if best is not None and best.text:
            return best
    return Workspace("", 0, truncated=True)


SPEC = StrategySpec(
    name="pdr",
    params=Params,
    run=run,
    summary="Parallel-Distill-Refine: rounds of drafts (8, 4, 1), each refined from a kappa-bounded workspace",
    worst_case=lambda p: sum(p.schedule) * p.max_tokens,
    needs=_needs,
)

SR_SPEC = StrategySpec(
    name="sequential_refinement",
    params=SRParams,
    run=run_sr,
    summary="Sequential Refinement: one draft refined rounds - 1 times from a workspace of the last draft",
    worst_case=lambda p: p.rounds * p.max_tokens,
    needs=lambda p: frozenset({"refiner"}),
)

SPECS = (SPEC, SR_SPEC)

"""Small pieces several strategies share: turning completions into candidates, and choosing among them."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, replace
from typing import Literal, Mapping, Sequence

from pydantic import Field

from orchestrator.context import StrategyContext
from orchestrator.errors import BudgetExceeded
from orchestrator.profile import ModelProfile
from orchestrator.scoring import Aggregation, aggregate, weighted_vote
from orchestrator.types import Candidate, Completion, FinishReason, Problem, ResultFinish, Role, SamplingSpec, StrategyResult
from strategies.params import MaxTokens, Sampling


def candidate(ctx: StrategyContext, text: str, tokens: int, finish_reason: FinishReason, score: float | None = None) -> Candidate:
    """A solution as a candidate. Only a trace the model ended (``stop``) has an answer: one cut by its token
    bound (``length``) or stopped (``abort``) may show an answer it was about to revise, or half of one."""
    answer = ctx.extract(text) if finish_reason == "stop" else None
    return Candidate(text=text, answer=answer, tokens=tokens, finish_reason=finish_reason, score=score)


def candidates(ctx: StrategyContext, completions: Sequence[Completion]) -> list[Candidate]:
    return [candidate(ctx, c.text, c.tokens, c.finish_reason) for c in completions]


def majority(cands: Sequence[Candidate]) -> Candidate:
    """The first candidate whose answer won the vote (unparsable answers do not vote); the first candidate
    when none has an answer."""
    votes = Counter(c.answer for c in cands if c.answer is not None)
    if not votes:
        return cands[0]
    winner = votes.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts
    return next(c for c in cands if c.answer == winner)


def best_scored(cands: Sequence[Candidate], selection: str) -> Candidate:
    """``argmax``: the highest-scored candidate. ``weighted``: the answer with the largest summed score,
    represented by its highest-scored candidate. Unscored candidates count as score 0."""
    if selection == "argmax":
        return max(cands, key=lambda c: c.score or 0.0)
    answer = weighted_vote((c.answer, c.score or 0.0) for c in cands)
    if answer is None:
        return max(cands, key=lambda c: c.score or 0.0)
    return max((c for c in cands if c.answer == answer), key=lambda c: c.score or 0.0)


def result(
    chosen: Candidate,
    cands: Sequence[Candidate],
    *,
    info: Mapping[str, object] | None = None,
    trace: Sequence[dict[str, object]] = (),
    finish_reason: ResultFinish | None = None,
) -> StrategyResult:
    """A result showing ``chosen``; its finish reason is ``chosen``'s (``length`` or ``stop``) unless given."""
    return StrategyResult(
        text=chosen.text,
        answer=chosen.answer,
        finish_reason=finish_reason or ("length" if chosen.finish_reason == "length" else "stop"),
        candidates=tuple(cands),
        info=dict(info or {}),
        trace=tuple(trace),
    )


# ------------------------------------------------------------------------------------ step-wise search


@dataclass(frozen=True)
class Path:
    """A partial solution in a step-wise search: its text so far (an open path ends with the step
    delimiter), the tokens generated for it, whether it is finished, and its PRM step scores."""

    text: str = ""
    tokens: int = 0
    done: bool = False
    finish_reason: FinishReason = "stop"
    steps: tuple[float, ...] = ()
    score: float = 0.0  # the step scores aggregated (the strategy's aggregation)
    # Texts of the nodes above this one, the root ("") first: equal texts are one shared prefix in the cache.
    parents: tuple[str, ...] = ()
    parent_tokens: tuple[int, ...] = ()  # ``tokens`` of each node in ``parents``, in the same order

    def last_step(self) -> str:
        return self.text[len(self.parents[-1]) :] if self.parents else self.text


@dataclass(frozen=True)
class StepConfig:
    """How one search step is generated: up to ``step_tokens`` tokens, ending at ``delimiter`` (the model
    profile's step delimiter), of a solution of at most ``max_tokens`` generated tokens."""

    step_tokens: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    delimiter: str


class StepSearchParams(Sampling):
    """What every step-wise search (beam search, REBASE and their descendants) is parameterised by."""

    step_tokens: int = Field(64, ge=1, le=32768, description="Most tokens of one step (default: the model profile's `scale.step_tokens`).")
    max_tokens: MaxTokens = Field(256, description="Most generated tokens per path.")
    aggregation: Aggregation = Field("last", description="How a path's step scores become its score.")
    selection: Literal["argmax", "weighted"] = Field("weighted", description="How the answer is chosen among finished paths.")

    PROFILE_DEFAULTS = {**Sampling.PROFILE_DEFAULTS, "step_tokens": lambda p: p.scale.step_tokens}

    def step_config(self, profile: ModelProfile, step_tokens: int | None = None) -> StepConfig:
        """How one step of ``profile``'s model is sampled; ``step_tokens`` overrides the whole-step bound (a
        partial step)."""
        return StepConfig(step_tokens or self.step_tokens, self.max_tokens, self.temperature, self.top_p, self.seed, profile.step_delimiter)


async def extend(
    ctx: StrategyContext,
    problem: Problem,
    parents: Sequence[tuple[Path, int]],
    cfg: StepConfig,
    *,
    hop: int,
    stage: str = "expand",
    role: Role | None = None,
    to_end: bool = False,
) -> tuple[list[list[Path]], bool]:
    """Children of every open parent: ``k`` samples of its next step in one call (siblings share the prefill),
    written by ``role`` (default: the policy). ``to_end``: the final roll-out, search-and-learn's last
    iteration: each sample runs on to the end of its trace (no step delimiter stops it; at most what is left
    of ``max_tokens``), so every child is finished.

    A child is finished when the engine says its sample ended (:func:`ended`), never because an answer
    can be read in it: a step such as ``3 + 4 = 7`` is not the end of a solution. A child that stopped on
    the delimiter goes on, even after an empty step; every child has generated at least one token more than
    its parent, so ``max_tokens`` ends every path. Returns the children per parent and whether the budget
    refused some call (those parents get no children)."""
    calls = []
    for i, (p, k) in enumerate(parents):
        if k <= 0 or p.done:
            calls.append(None)
            continue
        left = max(1, cfg.max_tokens - p.tokens)
        spec = SamplingSpec(
            prompt=problem.prompt + p.text,
            n=k,
            max_tokens=left if to_end else min(cfg.step_tokens, left),
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            stop=() if to_end else (cfg.delimiter,),
            seed=None if cfg.seed is None else cfg.seed + 7919 * hop + 104729 * i,
        )
        calls.append(ctx.generate(spec, stage=stage, branch=str(i), hop=hop, role=role))
    outs = await asyncio.gather(*(c for c in calls if c is not None), return_exceptions=True)
    limited = False
    children: list[list[Path]] = []
    it = iter(outs)
    for (p, _), call in zip(parents, calls):
        if call is None:
            children.append([])
            continue
        out = next(it)
        if isinstance(out, BudgetExceeded):
            limited = True
            children.append([])
            continue
        if isinstance(out, BaseException):
            raise out
        kids = []
        for c in out.completions:
            # A real engine counts the matched stop token; a step reported as 0 tokens still moves the path on.
            tokens = p.tokens + max(c.tokens, 1)
            text = p.text + c.text
            over = ended(c, cfg.delimiter) or (to_end and c.finish_reason == "stop")
            done = over or to_end or tokens >= cfg.max_tokens
            if not done and c.finish_reason == "stop":
                text += cfg.delimiter  # the stop string is not part of the output; the next step starts after it
            # A path the search cut at max_tokens was not ended by its model: it is truncated, not answered.
            reason: FinishReason = c.finish_reason if over or not done else "length"
            kids.append(Path(text=text, tokens=tokens, done=done, finish_reason=reason, parents=p.parents + (p.text,), parent_tokens=p.parent_tokens + (p.tokens,)))
        children.append(kids)
    return children, limited


def ended(c: Completion, delimiter: str) -> bool:
    """Whether the sample behind a step has ended: stopped by EOS or by a stop string other than the step
    delimiter, or aborted. A step cut by its token bound (``length``) has not: the next step continues it."""
    if c.finish_reason == "abort":
        return True
    return c.finish_reason == "stop" and c.stop_reason != delimiter


async def score_paths(ctx: StrategyContext, problem: Problem, paths: Sequence[Path], how: Aggregation, *, hop: int) -> list[Path]:
    """The paths with their PRM step scores and aggregate (scored concurrently; charged as verifier tokens)."""
    if not paths:
        return []
    steps = await ctx.prm(problem.text, [p.text for p in paths], stage="score", hop=hop)
    return [replace(p, steps=s, score=aggregate(s, how)) for p, s in zip(paths, steps)]


async def grow(
    ctx: StrategyContext,
    problem: Problem,
    parents: Sequence[tuple[Path, int]],
    cfg: StepConfig,
    how: Aggregation,
    *,
    hop: int,
    stage: str = "expand",
    to_end: bool = False,
) -> tuple[list[Path], bool]:
    """:func:`extend` (``to_end``: the final roll-out) then :func:`score_paths` (at ``hop`` and ``hop + 1``).
    Returns the children and whether the budget refused something; children the budget left unscored keep
    score 0."""
    children, limited = await extend(ctx, problem, parents, cfg, hop=hop, stage=stage, to_end=to_end)
    kids = [k for ks in children for k in ks]
    if not kids:
        return kids, limited
    try:
        return await score_paths(ctx, problem, kids, how, hop=hop + 1), limited
    except BudgetExceeded:
        return kids, True


def refill(survivors: Sequence[Path], n: int) -> list[tuple[Path, int]]:
    """``n`` expansions shared equally among ``survivors`` (the first ones one more when it does not divide)."""
    share, extra = divmod(n, len(survivors))
    return [(p, share + (i < extra)) for i, p in enumerate(survivors)]


def path_candidates(ctx: StrategyContext, paths: Sequence[Path]) -> list[Candidate]:
    """The paths as candidates. An open path (the search stopped before its sample ended) has no answer."""
    delimiter = ctx.tools.profile.step_delimiter
    out = []
    for p in paths:
        text = p.text[: -len(delimiter)] if not p.done and p.text.endswith(delimiter) else p.text
        c = candidate(ctx, text.rstrip("\n"), p.tokens, p.finish_reason, p.score)
        out.append(c if p.done else replace(c, answer=None))
    return out


def search_result(
    ctx: StrategyContext, finished: Sequence[Path], open_: Sequence[Path], selection: str, trace: list[dict[str, object]], *, limited: bool
) -> StrategyResult:
    """The answer of a step-wise search: chosen among the finished paths (the open ones, best first, when
    none finished); ``budget`` when the budget stopped the search."""
    cands = path_candidates(ctx, finished or sorted(open_, key=lambda k: -k.score))
    if not cands:
        raise BudgetExceeded("the budget had no room for a single step")
    info = {"finished": len(finished), "steps": len(trace)}
    return result(best_scored(cands, selection), cands, trace=trace, info=info, **({"finish_reason": "budget"} if limited else {}))

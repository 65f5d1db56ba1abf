"""Early rejection with partial rewards (ER-PRM): PRM beam search that judges a step before it is finished.

Every iteration samples ``n`` candidate next steps (each survivor ``beam_width`` times, the root ``n``
times), but only their first ``tau`` tokens. The PRM scores these partial steps; the best
``n // beam_width`` are kept and only those are completed (up to ``step_tokens`` in all). The others are
rejected after ``tau`` tokens, which is where the saving over :mod:`strategies.beam_search` comes from: most
candidates never cost a whole step, and the completed steps are not scored again (a beam's score is its
partial reward, as in the paper).

The search stops once ``finished_beams`` beams have finished (default n: beam search's stopping point, so the
two choose among as many candidates), when nothing is open, or after ``max_steps``. Only kept candidates are
completed, so a step where every kept beam ends would leave the search with n // beam_width finished beams
(the reference's count) and nothing open; while fewer than ``finished_beams`` have finished, the next-best
candidates of that step are then completed too, best first (``topped_up`` in the trace): at the answer step of
the bundled model that is the rest of each answer line. ``finished_beams=n // beam_width`` is the reference's
search. The last iteration's kept candidates are rolled out to the end of their traces (search-and-learn's
final roll-out, as beam search's last iteration). The answer is chosen among finished beams as in beam search; ``selection="top_beam"`` is the
reference's rule, the finished beam with the highest partial reward (its last step's, whatever ``aggregation``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, StrategyResult
from strategies import beam_search
from strategies.common import Path, StepConfig, extend, grow, refill, search_result


class Params(beam_search.Params):
    tau: int = Field(4, ge=1, le=4096, description="Tokens of a candidate step generated before the PRM judges it (default: the profile's `scale.partial_tokens`).")
    finished_beams: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Finished beams to collect before stopping: None for n (beam search's, equal candidate counts); n // beam_width is the reference's.",
    )
    selection: Literal["argmax", "weighted", "top_beam"] = Field(
        "weighted", description="Among finished beams: highest score, weighted majority, or the reference's top beam (highest last partial reward)."
    )

    # The reference judges 64 tokens, then completes a kept step by up to 256: a step is tau + that.
    PROFILE_DEFAULTS = {
        **beam_search.Params.PROFILE_DEFAULTS,
        "tau": lambda p: p.scale.partial_tokens,
        "step_tokens": lambda p: p.scale.partial_tokens + p.scale.completion_tokens,
    }

    @model_validator(mode="after")
    def _tau_below_a_step(self) -> Params:
        if self.tau >= self.step_tokens:
            raise ValueError(f"tau={self.tau} must be below step_tokens={self.step_tokens}, or nothing is rejected early")
        return self

    @field_validator("finished_beams")
    @classmethod
    def _within_n(cls, v: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n")
        if v is not None and n is not None and v > n:
            raise ValueError(f"finished_beams={v} cannot exceed n={n}")
        return v


async def run(problem: Problem, ctx: StrategyContext, params: Params) -> StrategyResult:
    partial = params.step_config(ctx.tools.profile, params.tau)
    rest = replace(partial, step_tokens=params.step_tokens - params.tau, seed=None if params.seed is None else params.seed + 1)
    keep = params.n // params.beam_width
    target = params.finished_beams or params.n
    survivors: list[Path] = [Path()]
    finished: list[Path] = []
    trace: list[dict[str, object]] = []
    limited = False
    for step in range(params.max_steps):
        kids, limited = await grow(ctx, problem, refill(survivors, params.n), partial, params.aggregation, hop=4 * step, stage="partial")
        if not kids:
            break
        ranked = sorted(kids, key=lambda k: -k.score)
        # The last step's kept candidates are rolled out to the end of their traces (the final roll-out).
        last = step == params.max_steps - 1
        kept, more = await _complete(ctx, problem, ranked[:keep], rest, hop=4 * step + 2, to_end=last)
        limited = limited or more
        finished += [k for k in kept if k.done]
        survivors = [k for k in kept if not k.done]
        extra: list[Path] = []
        if not survivors and not limited and len(finished) < target:
            # Every kept beam ended short of the target: complete the next-best candidates of this step.
            extra, more = await _complete(ctx, problem, ranked[keep : keep + target - len(finished)], rest, hop=4 * step + 3, to_end=last)
            limited = limited or more
            finished += [k for k in extra if k.done]
            survivors = [k for k in extra if not k.done][:keep]
        trace.append(
            {
                "step": step,
                "sampled": len(kids),
                "rejected_at_tau": len(kids) - len(kept) - len(extra),
                "completed": sum(k.finish_reason == "length" and not k.done for k in ranked[: keep + len(extra)]),
                "kept": len(kept),
                "topped_up": len(extra),
                "scores": [round(k.score, 4) for k in kids],
            }
        )
        ctx.emit({"stage": "step", "step": step, "kept": len(kept), "topped_up": len(extra), "finished": len(finished)})
        if limited or len(finished) >= target or not survivors:
            break
    if params.selection == "top_beam":
        top = [replace(p, score=p.steps[-1]) if p.steps else p for p in finished]
        return search_result(ctx, top, survivors, "argmax", trace, limited=limited)
    return search_result(ctx, finished, survivors, params.selection, trace, limited=limited)


async def _complete(
    ctx: StrategyContext, problem: Problem, chosen: Sequence[Path], rest: StepConfig, *, hop: int, to_end: bool = False
) -> tuple[list[Path], bool]:
    """``chosen`` candidates with their partial steps completed (one call each, at ``hop``); a candidate whose
    partial step already ended (a short step) needs none, except in the final roll-out (``to_end``), where
    every open candidate runs on to the end of its trace. A beam keeps its partial steps' scores. Returns them
    and whether the budget refused a completion (that candidate stays as it was)."""
    cut = [k for k in chosen if not k.done and (to_end or k.finish_reason == "length")]
    completed, limited = await extend(ctx, problem, [(k, 1) for k in cut], rest, hop=hop, stage="complete", to_end=to_end)
    whole = {id(k): (c[0] if c else k) for k, c in zip(cut, completed)}
    return [replace(whole.get(id(k), k), steps=k.steps, score=k.score) for k in chosen], limited


def _completions(p: Params) -> int:
    keep = p.n // p.beam_width
    return keep if (p.finished_beams or p.n) <= keep else p.n


SPEC = StrategySpec(
    name="early_rejection",
    params=Params,
    run=run,
    summary="ER-PRM: beam search whose candidate steps are judged by the PRM after tau tokens; only the kept are completed",
    # Per iteration: n partial steps of tau tokens and the completions: n // beam_width, or up to n when the step
    # is topped up to finished_beams; at most min(max_steps, max_tokens) iterations, the last rolled out whole.
    worst_case=lambda p: (p.n * p.tau + _completions(p) * p.step_tokens) * min(p.max_steps, p.max_tokens) + _completions(p) * p.max_tokens,
    needs=lambda p: frozenset({"prm"}),
)

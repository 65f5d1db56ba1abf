"""The one place where the controller's and the store's objects become response bodies (api/schemas.py).

Routes never return database rows: each kind of row has one function here that reads the fields a response
shows, so a column added to the database shows up nowhere until a view names it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, Sequence

from pydantic import TypeAdapter

from api.schemas import (
    CandidateBody,
    ChoiceMessage,
    EvalPoint,
    JobProgress,
    JobRun,
    JobView,
    PromptTokensDetails,
    QuotaBody,
    RequestView,
    StageUsage,
    SubCallView,
    TenantUsage,
    TTSInfo,
    UsageBody,
)
from orchestrator.controller import ReasoningResponse
from orchestrator.db.views import EvalResultRow, EvalRunRow, RequestRow, SubCallRow, UsageRow
from orchestrator.evals import summarize
from orchestrator.profile import ModelProfile
from orchestrator.protocols import JobInfo
from orchestrator.types import RequestState, Usage

# The database stores a request's state as text; this checks it is one the API documents.
_STATE: TypeAdapter[RequestState] = TypeAdapter(RequestState)


def _stage_usage(by: Mapping[str, Usage]) -> dict[str, StageUsage]:
    return {k: StageUsage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens) for k, u in by.items()}


def _usage(u: Usage, verifier_tokens: int, cost_usd: float, **extra: Any) -> UsageBody:
    return UsageBody(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
        verifier_tokens=verifier_tokens,
        all_tokens=u.total_tokens + verifier_tokens,
        cost_usd=cost_usd,
        **extra,
    )


def usage_body(out: ReasoningResponse) -> UsageBody:
    """A finished request's usage, split by model role and by strategy stage."""
    by = {"by_role": _stage_usage(out.by_role), "by_stage": _stage_usage(out.by_stage)}
    return _usage(out.usage, out.verifier_tokens, out.cost_usd, sequential_tokens=out.sequential_tokens, **by)


def tts_info(out: ReasoningResponse) -> TTSInfo:
    """What the strategy did for a finished request: its answer, candidates, trace and events."""
    r = out.result
    return TTSInfo(
        request_id=out.request_id,
        strategy=out.strategy,
        answer=r.shown_answer,
        answer_key=r.answer,
        subcalls=out.subcalls,
        latency_s=round(out.latency_s, 4),
        verifier_tokens=out.verifier_tokens,
        cost_usd=out.cost_usd,
        sequential_tokens=out.sequential_tokens,
        usage_by_stage=_stage_usage(out.by_stage),
        usage_by_role=_stage_usage(out.by_role),
        candidates=[
            CandidateBody(text=c.text, answer=c.shown_answer, answer_key=c.answer, completion_tokens=c.tokens, finish_reason=c.finish_reason, score=c.score)
            for c in r.candidates
        ],
        trace=list(r.trace),
        info=r.info,
        events=[dict(e) for e in out.events],
        quota=QuotaBody(wanted=out.quota.wanted, granted=out.quota.granted, tokens_per_day=out.quota.tokens_per_day) if out.quota else None,
    )


def chat_message(text: str, profile: ModelProfile) -> ChoiceMessage:
    """The answer as the chat message: with a reasoning profile, the reasoning span as ``reasoning_content``
    (None when the text has none) and what follows it as ``content``; otherwise the text as it is, with no
    ``reasoning_content`` key."""
    if profile.reasoning == "none":
        return ChoiceMessage(content=text)
    reasoning, final = profile.split_reasoning(text)
    return ChoiceMessage(content=final, reasoning_content=reasoning)


def _subcall_view(c: SubCallRow) -> SubCallView:
    fields = ("seq", "stage", "role", "branch", "n", "prompt_tokens", "cached_tokens", "completion_tokens", "verifier_tokens", "latency_s")
    return SubCallView(**_fields(c, *fields), finish_reasons=list(c.finish_reasons))


def request_view(rec: RequestRow, *, calls: bool = False) -> RequestView:
    """A recorded request as the ledger holds it: its sub-calls counted, and listed when ``calls``."""
    return RequestView(
        **_fields(rec, "id", "model", "strategy", "params", "answer", "text", "finish_reason", "error"),
        state=_STATE.validate_python(rec.state),
        usage=_usage(Usage(rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens), rec.verifier_tokens, rec.cost_usd),
        subcalls=len(rec.subcalls),
        calls=[_subcall_view(c) for c in rec.subcalls] if calls else None,
        created_at=rec.created_at.isoformat(),
        finished_at=rec.finished_at.isoformat() if rec.finished_at else None,
    )


def _fields(row: object, *names: str) -> dict[str, Any]:
    """``row``'s attributes ``names``: the fields a view shares with a response model under the same names."""
    return {n: getattr(row, n) for n in names}


def _result_row(r: EvalResultRow) -> dict[str, object]:
    """The fields of a stored result that ``summarize`` reads."""
    return _fields(r, "correct", "level", "total_tokens", "sequential_tokens", "cost_usd", "latency_s")


def eval_point(run: EvalRunRow) -> EvalPoint | None:
    """An evaluation run summarised (accuracy with its interval, mean costs, accuracy per level); ``None``
    for a run with no result yet, which has nothing to plot."""
    rows = [_result_row(r) for r in run.results]
    if not rows:
        return None
    params = ",".join(f"{k}={v}" for k, v in sorted(run.params.items()))
    summary = summarize(f"{run.strategy}({params})" + (f"@{run.budget}" if run.budget else ""), run.id, rows)
    return EvalPoint(
        **asdict(summary), **_fields(run, "strategy", "params", "budget", "dataset", "model", "state", "planned", "job_id"), grid=run.name
    )


def job_view(info: JobInfo, runs: Sequence[EvalRunRow]) -> JobView:
    """A job's status from the job server, with the progress of the runs it has stored results for."""
    return JobView(
        id=info.id,
        status=info.status,
        message=info.message,
        entrypoint=info.entrypoint,
        progress=JobProgress(done=sum(len(r.results) for r in runs), planned=sum(r.planned for r in runs), runs=len(runs)),
        runs=[
            JobRun(id=r.id, strategy=r.strategy, params=r.params, budget=r.budget, state=r.state, done=len(r.results), planned=r.planned)
            for r in runs
        ],
    )


def tenant_usage(rows: Sequence[UsageRow]) -> list[TenantUsage]:
    """The ledger's usage rows (``Requests.usage_by_tenant``) as views."""
    return [TenantUsage.model_validate(asdict(row)) for row in rows]

"""What the repositories hand out: frozen snapshots of rows, read inside the session that loaded them.

Callers never see ORM rows: a row stays attached to (and lazily loads through) the session it came from, and
its attributes can be assigned to. A view is plain data with the fields callers read; a column added to a table
shows up nowhere until its view names it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.db.models import CalibrationSet, EvalRun, RequestRecord, Tenant

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

V = TypeVar("V", bound="DataclassInstance")


@dataclass(frozen=True)
class SubCallRow:
    """One engine call of a request, as the ledger recorded it (``verifier_tokens`` is non-zero for scoring calls only)."""

    seq: int
    stage: str
    role: str
    branch: str
    worker: str
    n: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    verifier_tokens: int
    cost_usd: float
    latency_s: float
    finish_reasons: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class RequestRow:
    """A recorded request with its sub-calls in order. Token totals are generated tokens (prompt, cached,
    completion) and scoring tokens (``verifier_tokens``) apart; ``cost_usd`` is in dollars."""

    id: str
    tenant_id: str | None
    state: str
    model: str
    server_id: str | None
    strategy: str
    params: dict[str, Any]
    prompt: str
    answer: str | None
    text: str | None
    finish_reason: str | None
    error: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    verifier_tokens: int
    cost_usd: float
    budget: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    subcalls: tuple[SubCallRow, ...]


@dataclass(frozen=True)
class TenantRow:
    """A tenant and its limits (``None``: unlimited); ``running`` is its requests in flight."""

    id: str
    name: str
    tokens_per_day: int | None
    max_concurrent: int | None
    running: int
    created_at: datetime


@dataclass(frozen=True)
class UsageRow:
    """One tenant's live usage from the ledger (``tenant`` is its name, ``(keyless)`` for requests without a
    key, whose ``tenant_id`` is ``None``)."""

    tenant: str
    tenant_id: str | None
    requests: int
    running: int
    tokens: int
    verifier_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class EvalResultRow:
    """One problem of an evaluation run: ``total_tokens`` counts scoring tokens too; ``latency_s`` in seconds."""

    problem_id: str
    correct: bool
    answer: str | None
    total_tokens: int
    cost_usd: float
    latency_s: float
    sequential_tokens: int
    level: int | None
    request_id: str | None


@dataclass(frozen=True)
class EvalSummaryRow:
    """A finished run of a model, aggregated: ``accuracy`` in [0, 1], mean tokens and dollars per problem."""

    run_id: str
    strategy: str
    params: dict[str, Any]
    accuracy: float
    mean_tokens: float
    mean_cost_usd: float
    problems: int


@dataclass(frozen=True)
class CalibrationSetRow:
    """A calibration set: its model pair (``draft->target``), how many scores it holds, when it was created."""

    name: str
    model: str
    size: int
    created_at: datetime


@dataclass(frozen=True)
class EvalRunRow:
    """An evaluation run (one strategy, parameters and budget of a grid) with the results it has stored."""

    id: str
    name: str
    dataset: str
    model: str
    strategy: str
    params: dict[str, Any]
    state: str
    budget: int | None
    planned: int
    tenant_id: str | None
    job_id: str | None
    created_at: datetime
    finished_at: datetime | None
    results: tuple[EvalResultRow, ...]


def _snapshot(view: type[V], row: object, **computed: object) -> V:
    """A ``view`` of ``row``: every field read off the row's attribute of the same name, except those
    ``computed`` (nested rows, immutable copies of lists)."""
    return view(**{f.name: computed[f.name] if f.name in computed else getattr(row, f.name) for f in fields(view)})


def request_row(r: RequestRecord) -> RequestRow:
    """The request with its sub-calls, in order (load them with the request: a list would query once per row)."""
    calls = tuple(_snapshot(SubCallRow, c, finish_reasons=tuple(c.finish_reasons)) for c in r.subcalls)
    return _snapshot(RequestRow, r, subcalls=calls)


def tenant_row(t: Tenant) -> TenantRow:
    return _snapshot(TenantRow, t)


def eval_run_row(r: EvalRun) -> EvalRunRow:
    """The run with its results (load them with the run, as for a request's sub-calls)."""
    return _snapshot(EvalRunRow, r, results=tuple(_snapshot(EvalResultRow, x) for x in r.results))


def calibration_set_row(c: CalibrationSet) -> CalibrationSetRow:
    return _snapshot(CalibrationSetRow, c, size=len(c.data.get("scores", [])))

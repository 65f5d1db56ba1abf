"""Tables: requests and their sub-call ledger, tenants and hashed API keys, per-model prices, evaluation runs
and results (the dashboard's data), and calibration sets (ATTS). The schema is owned by the Alembic migrations
in ``orchestrator/db/migrations``; a test checks that they produce exactly these models."""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    tokens_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    running: Mapped[int] = mapped_column(Integer, default=0)  # requests in flight, for max_concurrent
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ApiKey(Base):
    """Only a SHA-256 of the key is stored; ``prefix`` (its first characters) identifies it to humans."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class QuotaUsage(Base):
    """Tokens charged to a tenant per UTC day; one row per (tenant, day), updated atomically."""

    __tablename__ = "quota_usage"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    last_grant: Mapped[int] = mapped_column(Integer, default=0)  # what the latest reservation got (see Tenants.reserve_tokens)


class Price(Base):
    """Dollars per million tokens for one served model."""

    __tablename__ = "prices"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    prompt_per_mtok: Mapped[float] = mapped_column(Float)
    cached_per_mtok: Mapped[float] = mapped_column(Float)
    completion_per_mtok: Mapped[float] = mapped_column(Float)


class Server(Base):
    """A live API server: it heartbeats ``heartbeat_at``; one whose heartbeat is stale has died, and any other
    server finishes the requests it left behind."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RequestRecord(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(200))
    server_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)  # the server that accepted it
    strategy: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    verifier_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    budget: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set by a DELETE that reached a server not running the request; the server running it cancels it.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    subcalls: Mapped[list[SubCallRecord]] = relationship(back_populates="request", order_by="SubCallRecord.seq")


class SubCallRecord(Base):
    __tablename__ = "subcalls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    branch: Mapped[str] = mapped_column(String(128))
    worker: Mapped[str] = mapped_column(String(200))
    n: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    verifier_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float)
    finish_reasons: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    request: Mapped[RequestRecord] = relationship(back_populates="subcalls")


class EvalRun(Base):
    """One evaluation: a strategy with parameters on a dataset split; its results feed `auto` and the dashboard."""

    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(32))
    # A grid's name: a rerun of the same grid finds its runs (same id) and skips what they finished.
    name: Mapped[str] = mapped_column(String(200), default="", server_default="", index=True)
    budget: Mapped[int | None] = mapped_column(Integer, nullable=True)  # max_total_tokens per problem
    planned: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # problems the run will have
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"), nullable=True, index=True)
    job_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)  # the Ray job that ran it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    results: Mapped[list[EvalResult]] = relationship(back_populates="run", cascade="all, delete-orphan")


class EvalResult(Base):
    __tablename__ = "eval_results"
    __table_args__ = (UniqueConstraint("run_id", "problem_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[str] = mapped_column(String(128))
    correct: Mapped[bool] = mapped_column(Boolean)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    total_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float)
    sequential_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    level: Mapped[int | None] = mapped_column(Integer, nullable=True)  # difficulty, when the dataset has one
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its entry in the request ledger

    run: Mapped[EvalRun] = relationship(back_populates="results")


class CalibrationSet(Base):
    """Scores of a draft model on held-out problems with their labels, from which ATTS sets its thresholds."""

    __tablename__ = "calibration_sets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

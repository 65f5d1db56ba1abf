"""The controller: validates a reasoning request, records it, runs its strategy, records every sub-call.

A request is recorded once it has been validated and the queue has room for it, so bad input and refused
requests leave no row at all. A recorded request is ``queued``, then ``running``, and always ends
``succeeded``, ``failed``, ``cancelled`` or ``budget_exhausted``; if its server dies first, the next server
to start under its id, or any server once its lease has gone stale, fails it with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from orchestrator.admission import Admission, Limits
from orchestrator.auto import Measured, choose
from orchestrator.budget import Budget, BudgetMeter, Price
from orchestrator.context import StrategyContext, prompt_bound
from orchestrator.db.models import RequestRecord, Tenant
from orchestrator.db.store import Store
from orchestrator.errors import BudgetExceeded, Conflict, InvalidRequest, NotFound, Overloaded, QuotaExceeded, TTSError, UnknownModel, UnknownStrategy
from orchestrator.metrics import ServiceMetrics
from orchestrator.protocols import AnswerVerifier, Engine, OutcomeScorer, Refiner, StepClustering, StepScorer, StrategySpec
from orchestrator.types import UNFINISHED, Problem, RequestState, Role, StrategyResult, SubCall, Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReasoningRequest:
    model: str
    messages: tuple[dict[str, str], ...]
    strategy: str
    params: Mapping[str, object]
    max_total_tokens: int | None = None
    budget: Budget | None = None  # every limit; ``max_total_tokens`` is the same as budget.total_tokens
    auto: Measured | None = None  # set when `auto` chose the strategy: what it chose from
    prompt: str | None = None  # a raw prompt (completions): sent as it is, ``messages`` unused


@dataclass(frozen=True)
class ReasoningResponse:
    request_id: str
    model: str
    strategy: str
    result: StrategyResult
    usage: Usage
    subcalls: int
    latency_s: float
    verifier_tokens: int = 0
    cost_usd: float = 0.0
    by_stage: Mapping[str, Usage] = field(default_factory=dict)  # policy and verifier usage by stage
    by_role: Mapping[str, Usage] = field(default_factory=dict)  # the same by model role
    sequential_tokens: int = 0
    events: Sequence[dict[str, object]] = ()


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"strategy_params.{loc}: {first['msg']}" if loc else first["msg"], loc or None


class Controller:
    """Runs reasoning requests. ``models`` maps the names callers use to the worker role serving them."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: Store,
        strategies: Mapping[str, StrategySpec],
        verifier: AnswerVerifier,
        models: Mapping[str, Role],
        max_request_tokens: int,
        prices: Mapping[str, Price] | None = None,
        step_scorer: StepScorer | None = None,
        outcome_scorer: OutcomeScorer | None = None,
        refiner: Refiner | None = None,
        clusterer: StepClustering | None = None,
        draft_model: str | None = None,
        limits: Limits | None = None,
        max_running: int = 64,
        max_queued: int = 256,
        metrics: ServiceMetrics | None = None,
        server_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.strategies = strategies
        self.verifier = verifier
        self.models = models
        self.max_request_tokens = max_request_tokens
        self.prices: dict[str, Price] = dict(prices or {})  # by role
        self.step_scorer = step_scorer
        self.outcome_scorer = outcome_scorer
        self.refiner = refiner
        self.clusterer = clusterer
        self.draft_model = draft_model  # name of the model served as role "draft" (draft/target strategies)
        self.limits = limits or Limits()
        self.server_id = server_id  # this server's lease (orchestrator.db.store.Store.register_server)
        self.metrics = metrics or ServiceMetrics()
        self.admission = Admission(max_running, max_queued, on_change=self._gauges)
        self._running: dict[str, asyncio.Task] = {}  # request id -> the task running it here (for cancel)

    def _gauges(self, running: int, queued: int) -> None:
        self.metrics.running.set(running)
        self.metrics.queue_depth.set(queued)

    def available(self) -> frozenset[str]:
        """What strategies may need that this controller has: "prm", "judge", "refiner", "clusterer", "draft"."""
        have = {"prm": self.step_scorer, "judge": self.outcome_scorer, "refiner": self.refiner, "clusterer": self.clusterer, "draft": self.draft_model}
        return frozenset(k for k, v in have.items() if v is not None)

    def validate(self, req: ReasoningRequest) -> tuple[StrategySpec, BaseModel, Role]:
        """Check everything that can be checked before any compute is spent; raise InvalidRequest."""
        if req.model not in self.models:
            raise UnknownModel(f"model {req.model!r} is not served; served: {sorted(self.models)}", param="model")
        if req.strategy == "auto":
            raise InvalidRequest("resolve `auto` first (Controller.resolve_auto)", param="strategy")
        spec = self.strategies.get(req.strategy)
        if spec is None:
            raise UnknownStrategy(
                f"unknown strategy {req.strategy!r}; available: {sorted(self.strategies)}", param="strategy"
            )
        try:
            params = spec.params.model_validate(dict(req.params))
        except ValidationError as err:
            msg, loc = _validation_message(err)
            raise InvalidRequest(msg, param=f"strategy_params.{loc}" if loc else "strategy_params") from None
        if req.prompt is not None:
            if not req.prompt.strip():
                raise InvalidRequest("prompt must not be empty", param="prompt")
        elif not req.messages or not any(m.get("content", "").strip() for m in req.messages):
            raise InvalidRequest("messages must contain at least one non-empty message", param="messages")
        self.limits.check(params)
        if req.max_total_tokens is not None and req.max_total_tokens <= 0:
            raise InvalidRequest("max_total_tokens must be positive", param="max_total_tokens")
        missing = spec.needs(params) - self.available()
        if missing:
            raise InvalidRequest(
                f"strategy {spec.name!r} with these parameters needs {' and '.join(sorted(missing))}, which this server does not have",
                param="strategy",
            )
        role = self.models[req.model]
        if req.budget is not None and req.budget.cost_usd is not None and role not in self.prices:
            raise InvalidRequest(f"budget.cost_usd needs a price for model {req.model!r}; none is configured", param="budget.cost_usd")
        return spec, params, role

    def resolve_auto(self, req: ReasoningRequest) -> ReasoningRequest:
        """Replace `auto` by the measured best (strategy, params) for the request's budget."""
        if req.model not in self.models:
            raise UnknownModel(f"model {req.model!r} is not served; served: {sorted(self.models)}", param="model")
        if req.params:
            raise InvalidRequest("strategy `auto` chooses its own parameters; send no strategy_params", param="strategy_params")
        measured = [
            Measured(r["strategy"], r["params"], r["accuracy"], r["mean_tokens"], r["mean_cost_usd"], r["problems"], source=r["run_id"])
            for r in self.store.eval_summaries(req.model)
        ]
        pick = choose(measured, self.budget_for(req), allowed=list(self.strategies))
        log.info("auto: %s %s (accuracy %.3f, %.0f tokens, from %s)", pick.strategy, dict(pick.params), pick.accuracy, pick.mean_tokens, pick.source)
        return replace(req, strategy=pick.strategy, params=dict(pick.params), auto=pick)

    def budget_for(self, req: ReasoningRequest) -> Budget:
        """The request's limits, its token limit capped by the server's ceiling."""
        given = req.budget or Budget()
        totals = [t for t in (given.total_tokens, req.max_total_tokens, self.max_request_tokens) if t is not None]
        return Budget(min(totals), given.sequential_tokens, given.cost_usd, given.deadline_s)

    async def reason(
        self,
        req: ReasoningRequest,
        *,
        tenant: TenantRef | None = None,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> ReasoningResponse:
        """Run one request. A tenant's request first takes a concurrency slot and reserves its token budget
        from the tenant's daily quota (atomically, in the database; the budget shrinks to what was granted);
        what it did not spend is refunded at the end. Then it waits for a run slot (:class:`Admission`).

        ``on_event`` hears ``{"stage": "started", "request_id": ...}`` once the request is recorded, then
        the strategy's progress events."""
        try:
            if req.strategy == "auto":
                req = await asyncio.to_thread(self.resolve_auto, req)
            spec, params, role = self.validate(req)
            self.admission.check()  # a full queue refuses before any engine call (rendering the chat is one)
        except TTSError as err:
            self.metrics.rejected.labels(str(err.status)).inc()
            raise
        budget = self.budget_for(req)
        prompt = req.prompt if req.prompt is not None else await self.engine.render_chat(role, req.messages)
        if tenant is None:
            return await self._admit(req, spec, params, role, prompt, BudgetMeter(budget, prices=self.prices), tenant_id=None, on_event=on_event)
        if not await asyncio.to_thread(self.store.enter, tenant.id):
            self.metrics.rejected.labels("429").inc()
            raise QuotaExceeded(f"tenant {tenant.name!r} already has {tenant.max_concurrent} requests running", retry_after=1)
        day = datetime.now(timezone.utc).date()
        granted = 0
        meter: BudgetMeter | None = None
        try:
            if tenant.tokens_per_day is not None:
                assert budget.total_tokens is not None
                # Reserve what the request can at most spend, not the server's ceiling, so that one request
                # does not lock up the whole quota while it runs.
                want = budget.total_tokens
                if spec.worst_case is not None:
                    want = min(want, spec.worst_case(params) + prompt_bound(prompt))
                granted = await asyncio.to_thread(self.store.reserve_tokens, tenant.id, want, limit=tenant.tokens_per_day, day=day)
                if granted == 0:
                    self.metrics.rejected.labels("429").inc()
                    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
                    raise QuotaExceeded(
                        f"tenant {tenant.name!r} has used its {tenant.tokens_per_day} tokens for today",
                        retry_after=max(1, math.ceil((midnight - datetime.now(timezone.utc)).total_seconds())),
                    )
                budget = replace(budget, total_tokens=granted)
            meter = BudgetMeter(budget, prices=self.prices)
            return await self._admit(req, spec, params, role, prompt, meter, tenant_id=tenant.id, on_event=on_event)
        finally:
            # The tenant pays what the ledger holds: every token its calls reported, scoring included.
            spent = meter.spent_tokens if meter is not None else 0
            if granted:
                await asyncio.shield(asyncio.to_thread(self.store.refund_tokens, tenant.id, granted - spent, day=day))
            await asyncio.shield(asyncio.to_thread(self.store.leave, tenant.id))

    async def _admit(
        self,
        req: ReasoningRequest,
        spec: StrategySpec,
        params: BaseModel,
        role: Role,
        prompt: str,
        meter: BudgetMeter,
        *,
        tenant_id: str | None,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> ReasoningResponse:
        """Record the request as ``queued`` once the queue has room for it (a refused request leaves no row),
        then run it when a slot frees. Whatever happens after it is recorded, it ends in a final state."""
        request_id = f"chatcmpl-{uuid.uuid4().hex}"

        async def accept() -> None:
            await self.store.acreate_request(
                request_id=request_id,
                model=req.model,
                strategy=spec.name,
                params=params.model_dump(),
                prompt=prompt,
                tenant_id=tenant_id,
                server_id=self.server_id,
                state="queued",
            )

        task = asyncio.current_task()
        if task is not None:
            self._running[request_id] = task  # queued or running here: DELETE cancels it
        try:
            async with self.admission.slot(before_wait=accept):
                await self.store.astart_request(request_id)
                return await self._run(_Job(req, spec, params, role, prompt, meter, request_id, on_event))
        except Overloaded:  # the queue filled up while this request rendered its prompt
            self.metrics.rejected.labels("429").inc()
            raise
        except BaseException as err:
            # The strategy records its own failures; this catches the rest (cancelled while queued, a failing
            # database write, a listener that raised), so no accepted request is left queued or running.
            state: RequestState = "cancelled" if isinstance(err, asyncio.CancelledError) else "failed"
            reason = "cancelled by the caller" if state == "cancelled" else f"{type(err).__name__}: {getattr(err, 'message', err)}"
            try:
                await asyncio.shield(self.store.afinish_unfinished(request_id, state=state, error=reason))
            except Exception:  # noqa: BLE001 - the original error matters more; the lease reaper finishes it later
                log.exception("could not record the end of request %s", request_id)
            raise
        finally:
            self._running.pop(request_id, None)

    async def _run(self, job: _Job) -> ReasoningResponse:
        spec, request_id, on_event = job.spec, job.request_id, job.on_event
        calls = 0

        async def sink(call: SubCall) -> None:
            nonlocal calls
            calls += 1
            self.metrics.subcall(call)
            await self.store.aadd_subcall(request_id, call)

        start = time.perf_counter()
        try:
            if on_event is not None:
                on_event({"stage": "started", "request_id": request_id})
            out = await self._execute(job, sink)
        except BaseException as err:
            state = "cancelled" if isinstance(err, asyncio.CancelledError) else "failed"
            self.metrics.finished(spec.name, state, time.perf_counter() - start)
            raise
        self.metrics.finished(spec.name, "budget_exhausted" if out.result.finish_reason == "budget" else "succeeded", out.latency_s)
        return replace(out, subcalls=calls)

    async def _execute(self, job: _Job, sink: Callable[[SubCall], object]) -> ReasoningResponse:
        req, spec, params, role, prompt, meter, request_id, on_event = (
            job.req, job.spec, job.params, job.role, job.prompt, job.meter, job.request_id, job.on_event
        )
        budget = meter.budget

        ctx = StrategyContext(
            engine=self.engine,
            verifier=self.verifier,
            sink=sink,
            policy_role=role,
            meter=meter,
            step_scorer=self.step_scorer,
            outcome_scorer=self.outcome_scorer,
            refiner=self.refiner,
            clusterer=self.clusterer,
            draft_model=self.draft_model,
            target_model=req.model,
            calibration=self.store,
            listener=on_event,
        )
        question = req.prompt if req.prompt is not None else next((m.get("content", "") for m in reversed(req.messages) if m.get("role", "user") == "user"), "")
        start = time.perf_counter()
        try:
            result = await spec.run(Problem(prompt=prompt, question=question), ctx, params)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.afinish_request(request_id, state="cancelled", usage=ctx.usage, error="cancelled by the caller"))
            raise
        except BudgetExceeded as err:
            # The strategy let the refusal through: it had nothing better, so the answer is empty.
            result = StrategyResult(text="", answer=None, finish_reason="budget", info={"budget": err.message})
        except TTSError as err:
            await self.store.afinish_request(request_id, state="failed", usage=ctx.usage, error=f"{type(err).__name__}: {err.message}")
            raise
        except Exception as err:
            log.exception("request %s failed", request_id)
            await self.store.afinish_request(request_id, state="failed", usage=ctx.usage, error=f"{type(err).__name__}: {err}")
            raise
        if req.auto is not None:
            a = req.auto
            chosen = {"strategy": a.strategy, "params": dict(a.params), "accuracy": a.accuracy, "mean_tokens": a.mean_tokens, "source": a.source}
            result = replace(result, info={**result.info, "auto": chosen})
        if result.sequential_tokens is None:
            result = replace(result, sequential_tokens=ctx.sequential_tokens)
        if ctx.budget_limited and result.finish_reason != "budget":
            result = replace(result, finish_reason="budget")  # the budget shaped this answer: say so
        state = "budget_exhausted" if result.finish_reason == "budget" else "succeeded"
        await self.store.afinish_request(
            request_id, state=state, usage=ctx.usage, result=result, verifier_tokens=ctx.verifier_tokens, cost_usd=ctx.cost_usd, budget=budget.as_dict()
        )
        return ReasoningResponse(
            request_id=request_id,
            model=req.model,
            strategy=spec.name,
            result=result,
            usage=ctx.usage,
            subcalls=0,  # counted by the caller's sink
            latency_s=time.perf_counter() - start,
            verifier_tokens=ctx.verifier_tokens,
            cost_usd=ctx.cost_usd,
            by_stage=dict(ctx.by_stage),
            by_role=dict(ctx.by_role),
            sequential_tokens=result.sequential_tokens or 0,
            events=tuple(ctx.events),
        )

    # ------------------------------------------------------------------------------------ recorded requests

    def lookup(self, request_id: str, tenant_id: str | None) -> RequestRecord:
        """The recorded request, if it is the caller's. Another tenant's request is "not found", exactly like
        a missing one, so that its existence does not leak."""
        rec = self.store.get_request(request_id)
        if rec is None or rec.tenant_id != tenant_id:
            raise NotFound(f"no request {request_id!r}", param="request_id")
        return rec

    async def cancel(self, request_id: str, tenant_id: str | None, *, wait_s: float = 10.0) -> RequestRecord:
        """Cancel a running request of the caller: its engine calls are aborted, what they generated is
        charged, and it ends ``cancelled``. A request that another server replica runs is flagged in the
        database, and that server cancels it (see :meth:`watch_cancels`); the answer waits up to ``wait_s``
        for it to end and shows the state it has then."""
        rec = await asyncio.to_thread(self.lookup, request_id, tenant_id)
        task = self._running.get(request_id)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            return await asyncio.to_thread(self.lookup, request_id, tenant_id)
        if rec.state in UNFINISHED and await asyncio.to_thread(self.store.request_cancel, request_id):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while rec.state in UNFINISHED and loop.time() < deadline:
                await asyncio.sleep(0.1)
                rec = await asyncio.to_thread(self.lookup, request_id, tenant_id)
            return rec
        rec = await asyncio.to_thread(self.lookup, request_id, tenant_id)
        raise Conflict(f"request {request_id!r} has already ended ({rec.state})", param="request_id")

    async def cancel_flagged(self) -> list[str]:
        """Cancel the requests running here that a DELETE on another server flagged; returns their ids."""
        if not self._running:
            return []
        flagged = await asyncio.to_thread(self.store.cancel_requested, list(self._running))
        for request_id in flagged:
            task = self._running.get(request_id)
            if task is not None:
                task.cancel()
        return flagged

    async def watch_cancels(self, every_s: float = 0.5) -> None:
        """Run :meth:`cancel_flagged` every ``every_s`` seconds, for as long as the server runs."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.cancel_flagged()
            except Exception:  # noqa: BLE001 - a database hiccup must not stop the watch for good
                log.exception("checking for cancelled requests failed; retrying in %.1f s", every_s)


@dataclass(frozen=True)
class _Job:
    """One admitted request, as the controller's run and execute steps need it."""

    req: ReasoningRequest
    spec: StrategySpec
    params: BaseModel
    role: Role
    prompt: str
    meter: BudgetMeter
    request_id: str
    on_event: Callable[[dict[str, object]], None] | None


@dataclass(frozen=True)
class TenantRef:
    """The tenant a request is charged to (from its API key)."""

    id: str
    name: str
    tokens_per_day: int | None = None
    max_concurrent: int | None = None

    @classmethod
    def of(cls, tenant: Tenant) -> TenantRef:
        return cls(tenant.id, tenant.name, tenant.tokens_per_day, tenant.max_concurrent)


def summarize(strategies: Sequence[StrategySpec]) -> dict[str, StrategySpec]:
    """Index strategy specs by name, refusing duplicates (a registry typo must fail at start-up)."""
    out: dict[str, StrategySpec] = {}
    for s in strategies:
        if s.name in out:
            raise ValueError(f"strategy {s.name!r} registered twice")
        out[s.name] = s
    return out

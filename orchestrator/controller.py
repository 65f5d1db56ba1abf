"""The controller: validates a reasoning request, records it, runs its strategy, records every sub-call.

:meth:`Controller.reason` reads straight down: validate -> quota (:mod:`orchestrator.quota`) -> record ->
run slot (:class:`~orchestrator.admission.Admission`) -> run -> record the end. A request is recorded once it has been validated and the queue has room for it, so bad input and refused
requests leave no row at all. A recorded request is ``queued``, then ``running``, and always ends
``succeeded``, ``failed``, ``cancelled`` or ``budget_exhausted``; if its server dies first, the next server
to start under its id, or any server once its lease has gone stale, fails it with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable, Collection, Literal, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from orchestrator.admission import Admission, Limits
from orchestrator.auto import Measured, choose
from orchestrator.budget import Budget, BudgetMeter, LengthHistory, Price
from orchestrator.context import StrategyContext, prompt_bound
from orchestrator.db.store import Store
from orchestrator.db.views import RequestRow
from orchestrator.errors import (
    BudgetExceeded,
    Conflict,
    EngineLoading,
    EngineUnavailable,
    InvalidRequest,
    NoChatTemplate,
    NotFound,
    Overloaded,
    TTSError,
    UnknownModel,
    UnknownStrategy,
)
from orchestrator.metrics import ServiceMetrics
from orchestrator.protocols import Engine
from orchestrator.quota import Grant, QuotaShare, Quotas, TenantRef
from orchestrator.strategy import AnySpec
from orchestrator.tally import Tally, Totals
from orchestrator.toolbox import Capability, Toolbox
from orchestrator.types import UNFINISHED, PRMOverflow, Problem, RequestState, Role, StrategyResult, SubCall, Usage

__all__ = ["Controller", "ReasoningRequest", "ReasoningResponse", "TenantRef"]

log = logging.getLogger(__name__)

MAX_STOP = 4  # stop strings a request may send, as OpenAI allows


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
    # Parameters the client set through a field of its own API (OpenAI's ``temperature`` ...), by parameter: an
    # error in one of them names that field, which the client sent, not ``strategy_params.<param>``.
    fields: Mapping[str, str] = field(default_factory=dict)
    stop: tuple[str, ...] = ()  # the client's stop strings: they end every sample of every generation call


@dataclass(frozen=True)
class ReasoningResponse:
    request_id: str
    model: str
    strategy: str
    result: StrategyResult
    totals: Totals  # what it cost, from its tally
    latency_s: float
    quota: QuotaShare | None = None  # set when the tenant's daily remainder cut this request's token budget

    @property
    def usage(self) -> Usage:
        return self.totals.usage

    @property
    def verifier_tokens(self) -> int:
        return self.totals.verifier_tokens

    @property
    def cost_usd(self) -> float:
        return self.totals.cost_usd

    @property
    def by_stage(self) -> Mapping[str, Usage]:
        return self.totals.by_stage

    @property
    def by_role(self) -> Mapping[str, Usage]:
        return self.totals.by_role

    @property
    def sequential_tokens(self) -> int:
        return self.totals.sequential_tokens

    @property
    def events(self) -> Sequence[dict[str, object]]:
        return self.totals.events

    @property
    def subcalls(self) -> int:
        return self.totals.subcalls


def invalid_params(err: ValidationError, fields: Mapping[str, str]) -> InvalidRequest:
    """The request error for parameters that failed validation: the first error in a parameter the client set
    through a field of its own (``fields``) names that field, else the first error names ``strategy_params``."""
    errors = err.errors()
    for e in errors:
        name = fields.get(str(e["loc"][0])) if e["loc"] else None
        if name is not None:
            return InvalidRequest(f"{name}: {e['msg']}", param=name)
    loc = ".".join(str(p) for p in errors[0]["loc"])
    if not loc:
        return InvalidRequest(errors[0]["msg"], param="strategy_params")
    return InvalidRequest(f"strategy_params.{loc}: {errors[0]['msg']}", param=f"strategy_params.{loc}")


def no_chat_template(model: str) -> NoChatTemplate:
    """The refusal of chat messages for ``model``, whose tokenizer has no chat template."""
    return NoChatTemplate(
        f"model {model!r} has no chat template (its tokenizer defines none), so chat messages cannot be rendered for it; "
        "send the prompt as text to /v1/completions (or /v1/reason with `prompt`)",
        param="messages",
    )


def renamed(err: InvalidRequest, fields: Mapping[str, str]) -> InvalidRequest:
    """``err`` (about ``strategy_params.<param>``) naming the client's own field for that parameter, if any."""
    name = fields.get((err.param or "").removeprefix("strategy_params."))
    if name is None or err.param is None:
        return err
    return InvalidRequest(err.message.replace(err.param, name, 1), param=name)


class Controller:
    """Runs reasoning requests. ``models`` maps the names callers use to the worker role serving them;
    ``tools`` is what the server can do besides generating (``deploy.assembly`` gives it the database's calibration sets)."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: Store,
        strategies: Mapping[str, AnySpec],
        tools: Toolbox,
        models: Mapping[str, Role],
        max_request_tokens: int,
        prices: Mapping[str, Price] | None = None,
        limits: Limits | None = None,
        max_running: int = 64,
        max_queued: int = 256,
        metrics: ServiceMetrics | None = None,
        server_id: str | None = None,
        budget_mode: Literal["live", "reserve"] = "live",
        no_chat_template: Collection[str] = (),
    ) -> None:
        self.engine = engine
        self.store = store
        self.strategies = strategies
        self.tools = tools
        self.models = models
        # Served models whose tokenizer has no chat template (a base checkpoint): chat requests to them are the
        # caller's error, said before anything runs; raw prompts (completions) are served.
        self.no_chat_template = frozenset(no_chat_template)
        self.max_request_tokens = max_request_tokens
        self.prices: dict[str, Price] = dict(prices or {})  # by role
        self.limits = limits or Limits()
        self.server_id = server_id  # this server's lease (orchestrator.db.leases.Leases.register)
        self.metrics = metrics or ServiceMetrics()
        self.quotas = Quotas(store, self.metrics, live=budget_mode == "live")
        self.admission = Admission(max_running, max_queued, on_change=self._gauges)
        # Sample and request lengths seen on this server: what live metering plans calls and quota grants with.
        self.lengths = LengthHistory()
        self._running: dict[str, asyncio.Task] = {}  # request id -> the task running it here (for cancel)

    def _gauges(self, running: int, queued: int) -> None:
        self.metrics.running.set(running)
        self.metrics.queue_depth.set(queued)

    def available(self) -> frozenset[Capability]:
        """What strategies may need that this server has (:meth:`Toolbox.available`)."""
        return self.tools.available()

    def validate(self, req: ReasoningRequest) -> tuple[AnySpec, BaseModel, Role]:
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
            params = spec.parse(req.params, profile=self.tools.profile)
        except ValidationError as err:
            raise invalid_params(err, req.fields) from None
        if req.prompt is not None:
            if not req.prompt.strip():
                raise InvalidRequest("prompt must not be empty", param="prompt")
        elif not req.messages or not any(m.get("content", "").strip() for m in req.messages):
            raise InvalidRequest("messages must contain at least one non-empty message", param="messages")
        elif req.model in self.no_chat_template:
            raise no_chat_template(req.model)
        try:
            self.limits.check(params)
        except InvalidRequest as err:
            raise renamed(err, req.fields) from None
        if len(req.stop) > MAX_STOP:
            raise InvalidRequest(f"stop: at most {MAX_STOP} strings, got {len(req.stop)}", param="stop")
        if req.max_total_tokens is not None and req.max_total_tokens <= 0:
            raise InvalidRequest("max_total_tokens must be positive", param="max_total_tokens")
        needs = spec.needs(params)
        missing = needs - self.available()
        if missing:
            raise InvalidRequest(
                f"strategy {spec.name!r} with these parameters needs {' and '.join(sorted(missing))}, which this server does not have",
                param="strategy",
            )
        self._check_engines(spec.name, needs)
        role = self.models[req.model]
        if req.budget is not None and req.budget.cost_usd is not None and role not in self.prices:
            raise InvalidRequest(f"budget.cost_usd needs a price for model {req.model!r}; none is configured", param="budget.cost_usd")
        return spec, params, role

    def _check_engines(self, strategy: str, needs: frozenset[Capability]) -> None:
        """Refuse, before any compute, a strategy whose capabilities' engines are not ready: still loading (503
        with the engine's expected wait as Retry-After: the server serves the policy first and loads the other
        roles behind it), or failed to start (503)."""
        waiting = self.tools.waiting(needs)
        if not waiting:
            return
        roles = {cap: self.tools.roles[cap] for cap in waiting}
        named = " and ".join(f"{cap} (role `{roles[cap]}`)" for cap in sorted(waiting))
        loading = [cap for cap, state in waiting.items() if state == "loading"]
        engines = self.tools.engines
        if loading and engines is not None:
            wait = max(engines.retry_after(roles[cap]) for cap in loading)
            raise EngineLoading(
                f"strategy {strategy!r} needs {named}, whose engine is still loading; try again in about {wait:.0f} s "
                "(GET /healthz lists each engine's state)",
                retry_after=wait,
            )
        raise EngineUnavailable(f"strategy {strategy!r} needs {named}, whose engine failed to start (GET /healthz says why)")

    async def resolve_auto(self, req: ReasoningRequest) -> ReasoningRequest:
        """Replace `auto` by the measured best (strategy, params) for the request's budget."""
        if req.model not in self.models:
            raise UnknownModel(f"model {req.model!r} is not served; served: {sorted(self.models)}", param="model")
        if req.params:
            raise InvalidRequest("strategy `auto` chooses its own parameters; send no strategy_params", param="strategy_params")
        measured = [
            Measured(r.strategy, r.params, r.accuracy, r.mean_tokens, r.mean_cost_usd, r.problems, source=r.run_id)
            for r in await self.store.evals.summaries(req.model)
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
        """Run one request: validate, hold the tenant's quota, record it once the queue has room, wait for a
        run slot (:class:`Admission`), run its strategy, record how it ended.

        ``on_event`` hears ``{"stage": "started", "request_id": ...}`` once the request is recorded, then
        the strategy's progress events."""
        req, spec, params, role = await self._admissible(req)
        try:
            prompt = req.prompt if req.prompt is not None else await self.engine.render_chat(role, req.messages)
        except NoChatTemplate:
            raise no_chat_template(req.model) from None
        budget = self.budget_for(req)
        ceiling = budget.total_tokens or self.max_request_tokens
        prompt_tokens = prompt_bound(prompt)
        worst = spec.worst_case(params) if spec.worst_case is not None else None
        want = self.quotas.want(ceiling, prompt_tokens=prompt_tokens, worst_case=worst, seen=self.lengths.expected_request(spec.name))
        async with self.quotas.hold(tenant, budget, want=want, least=prompt_tokens + 1, ceiling=ceiling, prices=self.prices) as grant:
            job = _Job(req, spec, params, role, prompt, grant, f"chatcmpl-{uuid.uuid4().hex}", on_event, tenant.id if tenant else None)
            async with self._recorded(job) as record:
                async with self.admission.slot(before_wait=record.accept):
                    await record.start()
                    return await record.finish(await self._run(job, record.tally))

    async def _admissible(self, req: ReasoningRequest) -> tuple[ReasoningRequest, AnySpec, BaseModel, Role]:
        """``req`` with `auto` resolved and validated; refused when a request arriving now finds the queue full."""
        try:
            if req.strategy == "auto":
                req = await self.resolve_auto(req)
            spec, params, role = self.validate(req)
            self.admission.check()  # a full queue refuses before any engine call (rendering the chat is one)
        except TTSError as err:
            self.metrics.rejected.labels(str(err.status)).inc()
            raise
        return req, spec, params, role

    @asynccontextmanager
    async def _recorded(self, job: _Job) -> AsyncIterator[_Record]:
        """The request's row, from ``queued`` (once the queue has room: a refused request leaves no row) to
        a final state, which is written here and only here, whatever ends the request."""
        record = _Record(self, job)
        task = asyncio.current_task()
        if task is not None:
            self._running[job.request_id] = task  # queued or running here: DELETE cancels it
        try:
            yield record
        except Overloaded:  # the queue filled up while this request rendered its prompt: it has no row
            self.metrics.rejected.labels("429").inc()
            raise
        except BaseException as err:
            await record.fail(err)
            raise
        finally:
            self._running.pop(job.request_id, None)

    async def _run(self, job: _Job, tally: Tally) -> _Outcome:
        """Run the strategy under the request's meter, charging ``tally``. A budget refusal the strategy let
        through is an empty answer (it had nothing better), not a failure."""
        ctx = StrategyContext(
            engine=self.engine, tools=self.tools, tally=tally, lengths=self.lengths, policy_role=job.role, meter=job.meter, target_model=job.req.model,
            stop=job.req.stop,
        )
        req = job.req
        question = req.prompt if req.prompt is not None else next((m.get("content", "") for m in reversed(req.messages) if m.get("role", "user") == "user"), "")
        if job.on_event is not None:
            job.on_event({"stage": "started", "request_id": job.request_id})
        start = time.perf_counter()
        try:
            messages = tuple(job.req.messages) if job.req.prompt is None else ()
            result = await job.spec.run(Problem(prompt=job.prompt, question=question, messages=messages), ctx, job.params)
        except BudgetExceeded as err:
            result = StrategyResult(text="", answer=None, finish_reason="budget", info={"budget": err.message})
        latency = time.perf_counter() - start
        if req.auto is not None:
            a = req.auto
            chosen = {"strategy": a.strategy, "params": dict(a.params), "accuracy": a.accuracy, "mean_tokens": a.mean_tokens, "source": a.source}
            result = replace(result, info={**result.info, "auto": chosen})
        if req.stop:
            result = replace(result, info={**result.info, "stop": {"strings": list(req.stop), "samples_stopped": ctx.stopped}})
        if ctx.prm_overflow:  # solutions the PRM read only in part: never an unmarked score
            overflow = PRMOverflow.summary(ctx.prm_overflow, behaviour=self.tools.profile.prm.overflow)
            result = replace(result, info={**result.info, "prm_overflow": overflow})
        if result.sequential_tokens is None:
            result = replace(result, sequential_tokens=tally.sequential_tokens)
        result = result.with_written(self.tools.verifier.written)  # strategies vote on keys; callers see answers as written
        if ctx.budget_limited and result.finish_reason != "budget":
            result = replace(result, finish_reason="budget")  # the budget shaped this answer: say so
        self.lengths.add_request(job.spec.name, tally.total_tokens)
        return _Outcome(result, latency)

    # ------------------------------------------------------------------------------------ recorded requests

    async def lookup(self, request_id: str, tenant_id: str | None) -> RequestRow:
        """The recorded request, if it is the caller's. Another tenant's request is "not found", exactly like
        a missing one, so that its existence does not leak."""
        rec = await self.store.requests.get(request_id)
        if rec is None or rec.tenant_id != tenant_id:
            raise NotFound(f"no request {request_id!r}", param="request_id")
        return rec

    async def cancel(self, request_id: str, tenant_id: str | None, *, wait_s: float = 10.0) -> RequestRow:
        """Cancel a running request of the caller: its engine calls are aborted, what they generated is
        charged, and it ends ``cancelled``. A request that another server replica runs is flagged in the
        database, and that server cancels it (see :meth:`watch_cancels`); the answer waits up to ``wait_s``
        for it to end and shows the state it has then."""
        rec = await self.lookup(request_id, tenant_id)
        task = self._running.get(request_id)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            return await self.lookup(request_id, tenant_id)
        if rec.state in UNFINISHED and await self.store.requests.request_cancel(request_id):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while rec.state in UNFINISHED and loop.time() < deadline:
                await asyncio.sleep(0.1)
                rec = await self.lookup(request_id, tenant_id)
            return rec
        rec = await self.lookup(request_id, tenant_id)
        raise Conflict(f"request {request_id!r} has already ended ({rec.state})", param="request_id")

    async def cancel_flagged(self) -> list[str]:
        """Cancel the requests running here that a DELETE on another server flagged; returns their ids."""
        if not self._running:
            return []
        flagged = await self.store.requests.cancel_requested(list(self._running))
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
    """One admitted request, as the controller's recording and running steps need it."""

    req: ReasoningRequest
    spec: AnySpec
    params: BaseModel
    role: Role
    prompt: str
    grant: Grant
    request_id: str
    on_event: Callable[[dict[str, object]], None] | None
    tenant_id: str | None

    @property
    def meter(self) -> BudgetMeter:
        return self.grant.meter


@dataclass(frozen=True)
class _Outcome:
    """What a strategy's run produced, and how long it took."""

    result: StrategyResult
    latency_s: float


class _Record:
    """One accepted request's row and its run metrics: every write the controller makes about it."""

    def __init__(self, controller: Controller, job: _Job) -> None:
        self._c, self._job = controller, job
        self.tally = Tally(sink=self._write, listener=job.on_event)  # the request's accounting, charged by its context
        self._started: float | None = None  # when it got a run slot

    async def accept(self) -> None:
        j = self._job
        await self._c.store.requests.create(
            j.request_id,
            model=j.req.model,
            strategy=j.spec.name,
            params=j.params.model_dump(),
            prompt=j.prompt,
            tenant_id=j.tenant_id,
            server_id=self._c.server_id,
            state="queued",
        )

    async def start(self) -> None:
        await self._c.store.requests.start(self._job.request_id)
        self._started = time.perf_counter()

    async def _write(self, call: SubCall) -> None:
        self._c.metrics.subcall(call)
        await self._c.store.requests.add_subcall(self._job.request_id, call=call)

    async def finish(self, out: _Outcome) -> ReasoningResponse:
        """Record the answer; the request ends ``succeeded``, or ``budget_exhausted`` when its budget shaped it."""
        j, t, result = self._job, self.tally, out.result
        state: RequestState = "budget_exhausted" if result.finish_reason == "budget" else "succeeded"
        await self._c.store.requests.finish(
            j.request_id, state=state, usage=t.usage, result=result, verifier_tokens=t.verifier_tokens, cost_usd=t.cost_usd, budget=j.meter.budget.as_dict()
        )
        self._c.metrics.finished(j.spec.name, state, out.latency_s)
        return ReasoningResponse(
            request_id=j.request_id, model=j.req.model, strategy=j.spec.name, result=result, totals=t.totals(sequential_tokens=result.sequential_tokens or 0),
            latency_s=out.latency_s, quota=j.grant.quota,
        )

    async def fail(self, err: BaseException) -> None:
        """End the request ``cancelled`` or ``failed`` with the reason, its totals read off the ledger (exact:
        every call was recorded as it ended). A request that already ended is left as it is."""
        j = self._job
        cancelled = isinstance(err, asyncio.CancelledError)
        state: RequestState = "cancelled" if cancelled else "failed"
        if cancelled:
            reason = "cancelled by the caller"
        else:
            reason = f"{type(err).__name__}: {err.message if isinstance(err, TTSError) else err}"
            if not isinstance(err, TTSError):
                log.error("request %s failed", j.request_id, exc_info=err)
        if self._started is not None:
            self._c.metrics.finished(j.spec.name, state, time.perf_counter() - self._started)
        try:
            await asyncio.shield(self._c.store.requests.finish_unfinished(j.request_id, state=state, error=reason))
        except Exception:  # noqa: BLE001 - the original error matters more; the lease reaper finishes it later
            log.exception("could not record the end of request %s", j.request_id)

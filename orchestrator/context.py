"""The strategy context: a strategy's only door to compute. Every call is admitted against the request's budget
here and charged to the request's :class:`~orchestrator.tally.Tally`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, replace
from types import TracebackType
from typing import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

from orchestrator.budget import Budget, BudgetMeter, LengthHistory, Reservation
from orchestrator.errors import BudgetExceeded, InvalidRequest
from orchestrator.protocols import CalibrationStore, Engine, Refiner
from orchestrator.tally import Tally
from orchestrator.toolbox import Capability, Toolbox
from orchestrator.types import (
    Completion, FinishReason, Generation, PRMOverflow, Role, SamplingSpec, ScoredSteps, Scores, ScoreSpec, StreamDelta, TokenClasses, Usage,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", Scores, TokenClasses)


class StrategyContext:
    """Given to a strategy for one request.

    Every ``generate`` and ``score`` is admitted by the request's :class:`BudgetMeter` before it starts (which
    may cut its ``max_tokens`` to what is left, or refuse it with ``BudgetExceeded``), and charged to
    ``tally`` (the request's accounting, which writes it to the ledger) after it ends. ``lengths`` is the
    server's record of sample lengths, which live metering plans calls with and every call adds to.

    Request ids are the context's: a strategy stops calls by leaving a :meth:`race` or stopping a
    :meth:`stream`, never by naming them."""

    def __init__(
        self,
        *,
        engine: Engine,
        tools: Toolbox,
        tally: Tally | None = None,
        lengths: LengthHistory | None = None,
        policy_role: Role = "policy",
        meter: BudgetMeter | None = None,
        target_model: str = "",
        stop: Sequence[str] = (),
    ) -> None:
        self._engine = engine
        self.tools = tools
        self.tally = tally or Tally()
        self.lengths = lengths or LengthHistory()
        # Draft/target strategies: the draft model is served as role "draft", the target is the policy.
        self.draft_model = tools.draft_model
        self.target_model = target_model
        self.policy_role: Role = policy_role
        self.meter = meter or BudgetMeter(Budget())
        # The request's own stop strings (OpenAI's `stop`): they end every sample it generates, as the profile's
        # do; ``stopped`` counts the samples they ended.
        self.stop = tuple(stop)
        self.stopped = 0
        # Solutions the PRM read only in part because they were longer than its context (profile [prm] overflow).
        self.prm_overflow: list[PRMOverflow] = []

    @property
    def budget_limited(self) -> bool:
        """Whether some call was cut or refused by the budget (the answer is then reported as ``budget``)."""
        return self.meter.limited

    async def generate(
        self, spec: SamplingSpec, *, stage: str, branch: str = "0", role: Role | None = None, hop: int = 0, parts: int = 1
    ) -> Generation:
        """Run ``spec`` on ``role`` (default: the policy). Its ``max_tokens`` may come back cut by the budget:
        compare with ``Completion.finish_reason == "length"`` or check ``budget_limited``.

        ``hop`` is the call's dependency depth: calls at the same hop could run side by side, a call at hop
        k+1 needed a result of hop k. It is what :attr:`sequential_tokens` is summed over. ``parts``: under live
        metering, the calls being started together with this one (itself included), which share what is left
        evenly (:meth:`race` passes it)."""
        role = role or self.policy_role
        spec, r = await self._admit(self._with_stops(spec), role=role, stage=stage, parts=parts)
        gen, latency = await self._metered(r, self._engine.generate(role, spec))
        if self.stop:
            self.stopped += sum(c.finish_reason == "stop" and c.stop_reason in self.stop for c in gen.completions)
        longest = max((c.tokens for c in gen.completions), default=0)
        cost = self.meter.settle(r, role=role, usage=gen.usage, longest_sequence=longest)
        self.meter.limited |= gen.budget_cut > 0
        self._lengths(role, stage, gen.completions, cut=gen.budget_cut > 0)
        call = self.tally.add(
            stage=stage, role=role, branch=branch, n=spec.n, usage=gen.usage, worker=gen.worker, finish_reasons=tuple(c.finish_reason for c in gen.completions),
            cost=cost, latency=latency, hop=hop, hop_tokens=gen.usage.prompt_tokens + longest,
        )
        await self.tally.record(call)
        return gen

    def stream(self, spec: SamplingSpec, *, stage: str, branch: str = "0", role: Role | None = None, hop: int = 0) -> Stream:
        """Partial outputs of ``spec`` as they come (iterate the returned :class:`Stream`); charged and
        recorded like ``generate`` once the stream ends, also when it ends by :meth:`Stream.stop`. Prompt
        tokens are counted with the role's tokenizer; the prefix-cache share of a streamed call is not
        reported (counted as 0)."""
        spec = spec if spec.request_id is not None else replace(spec, request_id=uuid.uuid4().hex)
        return Stream(self, self._with_stops(spec), stage=stage, branch=branch, role=role or self.policy_role, hop=hop)

    async def _admit(self, spec: SamplingSpec, *, role: Role, stage: str, parts: int = 1) -> tuple[SamplingSpec, Reservation]:
        """``spec`` as the budget admits it (``max_tokens`` cut, or a live cap with the stage's expected sample
        length), and its reservation."""
        expected = spec.expected_tokens or self.expected_tokens(stage, role=role)
        quantiles = spec.length_quantiles or (self.lengths.quantiles(role, stage) if self.meter.live else ())
        # A race's parts are separate calls: one cut short is wasted, and the race needs only its first to finish.
        # So the budget is shared among as many parts as can each reach a long sample's length (the third-highest
        # of the quantiles, about the 84th percentile), not the mean one, which a hard problem's samples all pass.
        per_part = max(expected or 0.0, float(quantiles[-3])) if parts > 1 and len(quantiles) >= 3 else expected
        # A race's calls are admitted one after another: the first makes room for all of them.
        await self.meter.make_room(prompt_bound=prompt_bound(spec.prompt) * parts, n=spec.n * parts, max_tokens=spec.max_tokens, expected=expected)
        r = self.meter.admit(role=role, prompt_bound=prompt_bound(spec.prompt), n=spec.n, max_tokens=spec.max_tokens, parts=parts, expected=per_part)
        if r.truncated:
            spec = replace(spec, max_tokens=r.max_tokens)
        if r.token_cap is not None:
            spec = replace(spec, token_cap=r.token_cap, expected_tokens=expected, length_quantiles=quantiles)
        return spec, r

    def _lengths(self, role: Role, stage: str, completions: Iterable[Completion], *, cut: bool = False) -> None:
        done = list(completions)
        self.lengths.add(role, stage, [c.tokens for c in done if c.finish_reason == "stop"])
        if cut:
            self.lengths.add_cut(role, stage, [c.tokens for c in done if c.finish_reason == "length" and c.tokens > 0])

    def expected_tokens(self, stage: str, *, role: Role | None = None) -> float | None:
        """Mean tokens of the samples of ``stage`` (on ``role``, default the policy) that finished by themselves
        on this server so far; None before any. What a strategy can plan a tight budget with."""
        return self.lengths.expected(role or self.policy_role, stage)

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens of the budget not yet spent nor held by calls in flight; None without a token limit."""
        return self.meter.remaining_tokens()

    async def _stream(self, spec: SamplingSpec, *, stage: str, branch: str, role: Role, hop: int) -> AsyncIterator[StreamDelta]:
        spec, r = await self._admit(spec, role=role, stage=stage)
        counts: dict[int, int] = {}
        lengths: list[int] = []
        reasons: dict[int, FinishReason] = {}
        start = time.perf_counter()
        prompt_tokens = 0
        try:
            prompt_tokens = len(spec.prompt) if not isinstance(spec.prompt, str) else len(await self._engine.tokenize(role, spec.prompt))
            async for delta in self._engine.stream(role, spec):
                counts[delta.index] = delta.tokens
                if delta.finish_reason is not None:
                    reasons[delta.index] = delta.finish_reason
                    if delta.finish_reason == "stop":
                        lengths.append(delta.tokens)
                self.meter.limited |= delta.cut
                yield delta
        finally:
            # Charged however the stream ended: what was generated was paid for.
            usage = Usage(prompt_tokens=prompt_tokens if counts else 0, completion_tokens=sum(counts.values()))
            longest = max(counts.values(), default=0)
            cost = self.meter.settle(r, role=role, usage=usage, longest_sequence=longest)
            self.lengths.add(role, stage, lengths)
            finish = tuple(reasons.get(i, "abort") for i in range(spec.n))
            call = self.tally.add(
                stage=stage, role=role, branch=branch, n=spec.n, usage=usage, worker="", finish_reasons=finish, cost=cost,
                latency=time.perf_counter() - start, hop=hop, hop_tokens=prompt_tokens + longest,
            )
            await asyncio.shield(self.tally.record(call))

    def _with_stops(self, spec: SamplingSpec) -> SamplingSpec:
        # The served model's own stop strings (the profile's) and the request's end every sample, whatever the
        # strategy asks.
        extra = tuple(dict.fromkeys(s for s in (*self.tools.profile.stop, *self.stop) if s not in spec.stop))
        return replace(spec, stop=tuple(spec.stop) + extra) if extra else spec

    def race(self, specs: Sequence[SamplingSpec], *, stage: str, hop: int = 0) -> Race:
        """Start one call per spec at once (on the policy; call i's branch is ``str(i)``) and meet them in
        the order they finish: ``async with ctx.race(specs, stage=...) as race: async for f in race: ...``.
        Leaving the block aborts the calls still running; they return what they had generated (finish
        reason ``abort``), which is charged and recorded before the block is left."""
        return Race(self, specs, stage=stage, hop=hop)

    async def score(self, spec: ScoreSpec, *, stage: str, branch: str = "0", role: Role = "prm", hop: int = 0) -> Scores:
        """Prompt log-probabilities from ``role`` (a PRM, a judge); charged as verifier tokens."""
        return await self._scoring(role, spec, self._engine.score, stage=stage, branch=branch, hop=hop)

    async def classify_tokens(self, spec: ScoreSpec, *, stage: str, branch: str = "0", role: Role = "prm", hop: int = 0) -> TokenClasses:
        """Token classes from a pooling model on ``role`` (a pooling PRM); charged as verifier tokens."""
        return await self._scoring(role, spec, self._engine.classify_tokens, stage=stage, branch=branch, hop=hop)

    async def _scoring(self, role: Role, spec: ScoreSpec, call: Callable[[Role, ScoreSpec], Awaitable[S]], *, stage: str, branch: str, hop: int) -> S:
        # A scoring call generates nothing and cannot be cut: admitted whole, charged as verifier tokens.
        await self.meter.make_room(prompt_bound=prompt_bound(spec.prompt), n=1, max_tokens=1)
        r = self.meter.admit(role=role, prompt_bound=prompt_bound(spec.prompt), n=1, max_tokens=1, generates=False)
        out, latency = await self._metered(r, call(role, spec))
        cost = self.meter.settle(r, role=role, usage=out.usage, longest_sequence=0)
        call = self.tally.add(
            stage=stage, role=role, branch=branch, n=1, usage=out.usage, worker=out.worker, finish_reasons=("stop",), cost=cost, latency=latency,
            hop=hop, hop_tokens=out.usage.total_tokens, verifier=True,
        )
        await self.tally.record(call)
        return out

    async def render_chat(self, messages: Sequence[dict[str, str]], *, role: Role | None = None) -> str:
        """``messages`` as ``role`` (default: the policy) reads them, through its own chat template. Free."""
        return await self._engine.render_chat(role or self.policy_role, messages)

    async def tokens(self, text: str, *, role: Role | None = None) -> int:
        """How many tokens ``text`` is for ``role`` (default: the policy). Free: nothing is generated."""
        return len(await self._engine.tokenize(role or self.policy_role, text))

    async def prm(self, question: str, solutions: Sequence[str], *, stage: str, branch: str = "0", hop: int = 0) -> list[tuple[float, ...]]:
        """Step scores in [0, 1] of every solution (scored concurrently), charged as verifier tokens."""
        scorer = self.tools.step_scorer
        if scorer is None:
            raise InvalidRequest("this strategy needs a process reward model and none is configured", param="strategy")
        view = _MeteredView(self, stage, branch, hop)
        out = await _all(scorer.step_scores(view, question, s) for s in solutions)
        overflow = [o.overflow for o in out if isinstance(o, ScoredSteps) and o.overflow is not None]
        if overflow:
            self.prm_overflow += overflow
            self.emit({"stage": "prm_overflow", "of": stage, "solutions": len(overflow), "read": sorted({o.read for o in overflow})})
        return [o.scores if isinstance(o, ScoredSteps) else tuple(o) for o in out]

    async def judge(self, question: str, solutions: Sequence[str], *, stage: str, branch: str = "0", hop: int = 0) -> list[float]:
        """P(correct) of every whole solution from the outcome judge, charged as verifier tokens."""
        judge = self.tools.outcome_scorer
        if judge is None:
            raise InvalidRequest("this strategy needs an outcome judge and none is configured", param="strategy")
        view = _MeteredView(self, stage, branch, hop)
        return await _all(judge.outcome_score(view, question, s) for s in solutions)

    @property
    def refiner(self) -> Refiner:
        """How drafts are distilled and refined (Parallel-Distill-Refine)."""
        if self.tools.refiner is None:
            raise InvalidRequest("this strategy needs a refiner and none is configured", param="strategy")
        return self.tools.refiner

    async def cluster(self, texts: Sequence[str], *, threshold: float | None = None) -> list[int]:
        """A cluster label per text (equal labels: the same idea), cut at ``threshold`` (default: the one
        calibrated for the server's clusterer). Embedding calls are not charged: they run on a small encoder
        outside the token budget."""
        clusterer = self.tools.clusterer
        if clusterer is None:
            raise InvalidRequest("this strategy needs step clustering (an `embedder` role) and none is configured", param="strategy")
        return await clusterer.clusters(self._engine, texts, clusterer.threshold if threshold is None else threshold)

    @property
    def calibration(self) -> CalibrationStore:
        """Conformal calibration sets (ATTS)."""
        if self.tools.calibration is None:
            raise InvalidRequest("this strategy needs calibration sets (a database) and none is configured", param="strategy")
        return self.tools.calibration

    def available(self) -> frozenset[Capability]:
        """The capabilities this context can serve (its toolbox's)."""
        return self.tools.available()

    async def _metered(self, r: Reservation, call: Awaitable[T]) -> tuple[T, float]:
        start = time.perf_counter()
        try:
            out = await call
        except BaseException as err:
            self.meter.release(r)  # nothing was reported for it: the engine aborted or refused the call
            # A live call's prompt turned out longer than its cap: the engine refused it, spending nothing.
            self.meter.limited |= isinstance(err, BudgetExceeded)
            raise
        return out, time.perf_counter() - start

    def extract(self, text: str) -> str | None:
        """The canonical answer of ``text`` (None when it has none); equal keys are equivalent answers."""
        return self.tools.verifier.extract(text)

    def emit(self, event: dict[str, object]) -> None:
        """Report progress: kept with the request's result and streamed to callers that asked for it."""
        self.tally.emit(event)


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await every call, then raise the first failure: no call may still be charging the ledger after the
    caller has moved on (as plain ``gather`` would leave them on the first exception)."""
    out: list[T | BaseException] = await asyncio.gather(*calls, return_exceptions=True)
    done: list[T] = []
    for o in out:
        if isinstance(o, BaseException):
            raise o
        done.append(o)
    return done


class Stream:
    """A streaming call of a :class:`StrategyContext`: iterate it for its deltas; :meth:`stop` ends it early."""

    def __init__(self, ctx: StrategyContext, spec: SamplingSpec, *, stage: str, branch: str, role: Role, hop: int) -> None:
        self._ctx, self._request_id = ctx, spec.request_id or ""
        self._deltas = ctx._stream(spec, stage=stage, branch=branch, role=role, hop=hop)

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._deltas

    async def stop(self) -> None:
        """Abort the call. Iteration goes on until the engine lets it go: sequences not yet finished then
        end with finish reason ``abort``, and what they generated is charged."""
        await self._ctx._engine.abort([self._request_id])


@dataclass(frozen=True)
class Finished:
    """A call of a :class:`Race` that has returned: its position in the specs, and what it generated."""

    index: int
    generation: Generation


class Race:
    """Calls started together and met in finish order (see :meth:`StrategyContext.race`).

    After the block: ``order`` holds every returned call's index in the order it returned (the calls
    aborted on leaving included), ``results`` their generations, ``refused`` the calls the budget had no
    room for (they never ran and are never met), ``aborted`` the calls still running when the block was left."""

    def __init__(self, ctx: StrategyContext, specs: Sequence[SamplingSpec], *, stage: str, hop: int) -> None:
        self._ctx, self._stage, self._hop = ctx, stage, hop
        self._specs = [replace(s, request_id=uuid.uuid4().hex) for s in specs]
        self._tasks: dict[asyncio.Future[Generation], int] = {}
        self._meeting: AsyncGenerator[Finished, None] | None = None
        self.order: list[int] = []
        self.results: dict[int, Generation] = {}
        self.refused: list[int] = []
        self.aborted: list[int] = []

    async def __aenter__(self) -> Race:
        k = len(self._specs)
        for i, s in enumerate(self._specs):
            # Under live metering the calls share what is left evenly: call i takes 1/(k - i) of what the
            # calls before it left.
            call = self._ctx.generate(s, stage=self._stage, branch=str(i), hop=self._hop, parts=k - i)
            self._tasks[asyncio.ensure_future(call)] = i
        return self

    @property
    def running(self) -> list[int]:
        """Indices of the calls that have not returned yet."""
        return sorted(i for t, i in self._tasks.items() if not t.done())

    def __aiter__(self) -> AsyncIterator[Finished]:
        self._meeting = self._meet()
        return self._meeting

    async def _meet(self) -> AsyncGenerator[Finished, None]:
        pending = {t for t, i in self._tasks.items() if i not in self.results and i not in self.refused}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in sorted(done, key=self._tasks.__getitem__):
                i = self._tasks[t]
                try:
                    self.results[i] = t.result()
                except BudgetExceeded:
                    self.refused.append(i)
                    continue
                self.order.append(i)
                yield Finished(i, self.results[i])

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._meeting is not None:
            await self._meeting.aclose()
        self.aborted = self.running
        ids = [self._specs[i].request_id or "" for i in self.aborted]
        if exc is not None:
            # Cancelled, or failed inside the block: stop the engine work and the calls without waiting on them.
            if ids:
                await asyncio.shield(self._ctx._engine.abort(ids))
            for t in self._tasks:
                t.cancel()
            return
        if ids:
            await self._ctx._engine.abort(ids)
        # The aborted calls return promptly with what they had generated: meet them, so that they are
        # recorded and charged before the strategy goes on.
        async for _ in self._meet():
            pass


class _MeteredView:
    """The engine as a scorer sees it: scoring goes through the context (admitted, charged, recorded under
    the caller's stage); tokenising is free."""

    def __init__(self, ctx: StrategyContext, stage: str, branch: str, hop: int) -> None:
        self._ctx, self._stage, self._branch, self._hop = ctx, stage, branch, hop

    async def score(self, role: Role, spec: ScoreSpec) -> Scores:
        return await self._ctx.score(spec, stage=self._stage, branch=self._branch, role=role, hop=self._hop)

    async def classify_tokens(self, role: Role, spec: ScoreSpec) -> TokenClasses:
        return await self._ctx.classify_tokens(spec, stage=self._stage, branch=self._branch, role=role, hop=self._hop)

    async def tokenize(self, role: Role, text: str) -> list[int]:
        return await self._ctx._engine.tokenize(role, text)

    async def render_chat(self, role: Role, messages: Sequence[dict[str, str]]) -> str:
        return await self._ctx._engine.render_chat(role, messages)


def prompt_bound(prompt: str | tuple[int, ...]) -> int:
    """An upper bound on a prompt's tokens (see orchestrator.budget)."""
    return len(prompt) if not isinstance(prompt, str) else len(prompt.encode()) + 2

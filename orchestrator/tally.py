"""A request's accounting: what its engine calls cost, by stage and by role, its longest dependent chain, and
its progress events.

The controller's record of a request owns its :class:`Tally` and hands it to the strategy context, which
writes every admitted call into it; the record reads its totals back from it when the request ends. So the
context is only the door to compute (admission, calls, races), and the numbers a client is billed live in one
object that the ledger's sink sees call by call.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from orchestrator.types import FinishReason, Role, SubCall, Usage

log = logging.getLogger(__name__)

SubCallSink = Callable[[SubCall], Awaitable[None]]
Listener = Callable[[dict[str, object]], None]


async def _drop(_: SubCall) -> None:
    pass


@dataclass(frozen=True)
class Totals:
    """A finished request's accounting, as its response reports it."""

    usage: Usage = Usage()  # the policy roles' tokens (OpenAI's usage)
    verifier_tokens: int = 0  # what scoring calls cost (PRM, judge)
    cost_usd: float = 0.0
    by_stage: Mapping[str, Usage] = field(default_factory=dict)  # every call's usage (policy and verifier) by stage
    by_role: Mapping[str, Usage] = field(default_factory=dict)  # the same by model role
    sequential_tokens: int = 0  # prompt + completion along the longest dependent chain of calls
    events: Sequence[dict[str, object]] = ()
    subcalls: int = 0


class Tally:
    """One request's running totals. Every call is added once, when it has ended (:meth:`add`), then written to
    ``sink`` (the ledger) by :meth:`record`; ``listener`` hears the strategy's progress events as they come."""

    def __init__(self, *, sink: SubCallSink = _drop, listener: Listener | None = None) -> None:
        self._sink = sink
        self._listener = listener
        self._seq = itertools.count()
        self._hops: dict[int, int] = {}  # dependency depth -> longest call (prompt + completion) at it
        self.usage = Usage()
        self.verifier_tokens = 0
        self.cost_usd = 0.0
        self.by_stage: dict[str, Usage] = {}
        self.by_role: dict[str, Usage] = {}
        self.events: list[dict[str, object]] = []
        self.subcalls = 0

    def add(
        self,
        *,
        stage: str,
        role: Role,
        branch: str,
        n: int,
        usage: Usage,
        worker: str,
        finish_reasons: tuple[FinishReason, ...],
        cost: float,
        latency: float,
        hop: int,
        hop_tokens: int,
        verifier: bool = False,
    ) -> SubCall:
        """Charge one ended call (``verifier``: a scoring call, counted in ``verifier_tokens`` instead of
        ``usage``) at dependency depth ``hop``, where it held ``hop_tokens`` in one sequence; the sub-call to
        :meth:`record`. Synchronous, so that a call is counted even when the request is being cancelled."""
        if verifier:
            self.verifier_tokens += usage.total_tokens
        else:
            self.usage = self.usage + usage
        self.cost_usd += cost
        self._hops[hop] = max(self._hops.get(hop, 0), hop_tokens)
        self.by_stage[stage] = self.by_stage.get(stage, Usage()) + usage
        self.by_role[role] = self.by_role.get(role, Usage()) + usage
        self.subcalls += 1
        return SubCall(
            seq=next(self._seq),
            stage=stage,
            role=role,
            branch=branch,
            n=n,
            usage=usage,
            latency_s=latency,
            worker=worker,
            finish_reasons=finish_reasons,
            cost_usd=cost,
            kind="score" if verifier else "generate",
        )

    async def record(self, call: SubCall) -> None:
        """Write an added call to the ledger."""
        await self._sink(call)

    @property
    def sequential_tokens(self) -> int:
        """Tokens (prompt + completion) along the longest dependent chain of calls: per hop the longest call,
        summed over hops (the PDR paper's sequential budget, its latency proxy)."""
        return sum(self._hops.values())

    @property
    def total_tokens(self) -> int:
        """Everything the request spent: policy and verifier tokens."""
        return self.usage.total_tokens + self.verifier_tokens

    def emit(self, event: dict[str, object]) -> None:
        """Keep a progress event with the request's result and pass it to the listener."""
        self.events.append(event)
        log.debug("strategy event %s", event)
        if self._listener is not None:
            self._listener(event)

    def totals(self, *, sequential_tokens: int | None = None) -> Totals:
        """A snapshot for the response; ``sequential_tokens`` when the strategy reported its own."""
        return Totals(
            usage=self.usage,
            verifier_tokens=self.verifier_tokens,
            cost_usd=self.cost_usd,
            by_stage=dict(self.by_stage),
            by_role=dict(self.by_role),
            sequential_tokens=self.sequential_tokens if sequential_tokens is None else sequential_tokens,
            events=tuple(self.events),
            subcalls=self.subcalls,
        )

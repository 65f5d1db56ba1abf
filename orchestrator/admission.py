"""What one server takes on: a bounded number of running requests, a bounded queue behind them, and limits on
the size of any one request. Past the queue a request is refused at once (HTTP 429 with Retry-After) instead
of piling up in memory."""

from __future__ import annotations

import asyncio
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel

from orchestrator.errors import InvalidRequest, Overloaded

# Strategy parameters each limit applies to (every strategy names them the same way).
WIDTH_PARAMS = ("n", "width", "k")
DEPTH_PARAMS = ("rounds", "max_turns", "max_steps", "max_depth")
TOKEN_PARAMS = ("max_tokens", "step_tokens", "chunk_tokens")


@dataclass(frozen=True)
class Limits:
    """Ceilings on one request's parameters, below the strategies' own validation bounds."""

    width: int = 64  # samples, beams or tree width; also every entry of a PDR schedule
    depth: int = 64  # rounds, turns, steps or tree depth; also the length of a PDR schedule
    max_tokens: int = 4096  # tokens of one generation (or one step, one chunk)

    def check(self, params: BaseModel) -> None:
        """Raise InvalidRequest naming the first parameter over its limit."""
        values = params.model_dump()
        schedule = values.get("schedule")
        checks: list[tuple[str, object, int, str]] = [(k, values.get(k), self.width, "TTS_LIMIT_WIDTH") for k in WIDTH_PARAMS]
        checks += [(k, values.get(k), self.depth, "TTS_LIMIT_DEPTH") for k in DEPTH_PARAMS]
        checks += [(k, values.get(k), self.max_tokens, "TTS_LIMIT_MAX_TOKENS") for k in TOKEN_PARAMS]
        if isinstance(schedule, (list, tuple)):
            checks.append(("schedule", len(schedule), self.depth, "TTS_LIMIT_DEPTH"))
            checks.append(("schedule", max(schedule, default=0), self.width, "TTS_LIMIT_WIDTH"))
        for name, value, limit, setting in checks:
            if isinstance(value, int) and value > limit:
                raise InvalidRequest(
                    f"strategy_params.{name}: {value} is over this server's limit of {limit} ({setting})", param=f"strategy_params.{name}"
                )


class Admission:
    """``max_running`` requests run at once; up to ``max_queued`` more wait for a slot, in arrival order;
    any further one is refused with :class:`Overloaded`. Its Retry-After is the time the queue ahead needs
    to drain at the recent mean latency."""

    def __init__(self, max_running: int, max_queued: int, *, on_change: Callable[[int, int], None] | None = None) -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be >= 1 and max_queued >= 0")
        self.max_running, self.max_queued = max_running, max_queued
        self._slots = asyncio.Semaphore(max_running)
        self.running = 0
        self.queued = 0
        self._mean_latency = 1.0  # seconds, exponentially weighted
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.running, self.queued)

    def retry_after(self) -> int:
        waves = (self.queued + 1) / self.max_running
        return max(1, min(600, math.ceil(waves * self._mean_latency)))

    def check(self) -> None:
        """Refuse now (:class:`Overloaded`) if a request arriving now would find the queue full; lets the
        caller skip the work it would do before taking a slot."""
        # Counted as a total: a request is ``queued`` from the moment it passes here, before it awaits anything,
        # so arrivals racing through the controller's recording step cannot overfill the queue.
        if self.running + self.queued >= self.max_running + self.max_queued:
            raise Overloaded(
                f"the server is busy: {self.running} requests running and {self.queued} queued (the queue holds {self.max_queued})",
                retry_after=self.retry_after(),
            )

    @asynccontextmanager
    async def slot(self, before_wait: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        """Hold a run slot for the body. ``before_wait`` runs once the request has its place in the queue,
        before it waits (the controller records the request there, so a refused one leaves no record)."""
        self.check()
        self.queued += 1
        self._changed()
        try:
            if before_wait is not None:
                await before_wait()
            await self._slots.acquire()
        except BaseException:
            self.queued -= 1
            self._changed()
            raise
        self.queued -= 1
        self.running += 1
        self._changed()
        start = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            elapsed = asyncio.get_running_loop().time() - start
            self._mean_latency = 0.9 * self._mean_latency + 0.1 * elapsed
            self._changed()

"""Live budgets: every engine call of a request is admitted against what is left, then charged what it cost.

Limits (any subset): total tokens (prompt + completion of every call, scoring included), sequential tokens (the
longest chain of dependent generation, PDR's latency proxy), dollars (from the price table) and a deadline.

Admission reserves a call's worst case before it starts: its prompt at most ``len(prompt.encode()) + 2`` tokens
(every token of a byte-level BPE or SentencePiece vocabulary covers at least one byte; +2 for BOS/EOS-style
specials) and ``n * max_tokens`` completion tokens. A call whose worst case does not fit has its ``max_tokens``
cut to what fits (the caller is told: ``truncated``), or is refused with ``BudgetExceeded`` when not even
``min_tokens`` per sequence fit. Reservations are taken and settled on the event loop, so concurrent calls
of one request cannot jointly overspend. **Bound:** spend never exceeds a limit when the prompt bound holds;
with a tokenizer that breaks it, overspend is at most the prompt tokens of the calls in flight.

Sequential tokens: a call can only depend on calls that finished before it started, so its chain is the
longest chain among those plus its own longest sequence. The deadline is checked when a call is admitted; a
call already running is bounded by its ``max_tokens``.

Under a tenant's daily quota the token limit is a grant drawn from the day's remainder, grown call by call
(:meth:`BudgetMeter.make_room`) up to the request's own limit; what is not spent is refunded when it ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Mapping

from orchestrator.errors import BudgetExceeded, InvalidRequest
from orchestrator.types import Usage


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens."""

    prompt: float
    cached: float
    completion: float

    def cost(self, usage: Usage) -> float:
        fresh = usage.prompt_tokens - usage.cached_tokens
        return (fresh * self.prompt + usage.cached_tokens * self.cached + usage.completion_tokens * self.completion) / 1e6


@dataclass(frozen=True)
class Budget:
    total_tokens: int | None = None
    sequential_tokens: int | None = None
    cost_usd: float | None = None
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("total_tokens", "sequential_tokens", "cost_usd", "deadline_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidRequest(f"budget.{name} must be positive, got {value}", param=f"budget.{name}")

    def as_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Reservation:
    tokens: int
    cost: float
    base_chain: int
    max_tokens: int
    truncated: bool


@dataclass
class BudgetMeter:
    """Admission and charging for one request. ``prices`` maps a role to its model's price (needed only
    when the budget has ``cost_usd``)."""

    budget: Budget
    prices: Mapping[str, Price] = field(default_factory=dict)
    min_tokens: int = 1
    clock: Callable[[], float] = time.monotonic
    # Under a tenant's daily quota ``budget.total_tokens`` is a grant from the day's remainder, not the request's
    # own limit: ``draw(tokens)`` takes up to ``tokens`` more of the remainder (returns what it got), and the
    # grant may grow to ``ceiling``, the request's own token limit.
    draw: Callable[[int], Awaitable[int]] | None = None
    ceiling: int | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.spent_tokens = 0
        self.spent_cost = 0.0
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.longest_chain = 0
        self.limited = False  # some call was cut or refused: the answer was shaped by the budget

    def price(self, role: str) -> Price | None:
        if self.budget.cost_usd is None:
            return None
        p = self.prices.get(role)
        if p is None:
            raise InvalidRequest(f"a cost budget needs a price for role {role!r}; priced: {sorted(self.prices)}", param="budget.cost_usd")
        return p

    async def make_room(self, *, prompt_bound: int, n: int, max_tokens: int) -> None:
        """Grow a quota grant when a call's worst case does not fit what is left of it, so that a strategy's
        later stages (scoring, re-sent prompts) are not cut by an estimate made before it ran. The draw at
        least doubles the grant (few database round trips per request) and never passes ``ceiling``."""
        total = self.budget.total_tokens
        if self.draw is None or total is None:
            return
        short = prompt_bound + n * max_tokens - (total - self.spent_tokens - self.reserved_tokens)
        ask = min(max(short, total), (self.ceiling or total + short) - total)
        if short <= 0 or ask <= 0:
            return
        got = await self.draw(ask)
        if got:
            self.budget = replace(self.budget, total_tokens=(self.budget.total_tokens or 0) + got)

    def admit(self, *, role: str, prompt_bound: int, n: int, max_tokens: int, generates: bool = True) -> Reservation:
        """Reserve a call's worst case, cutting ``max_tokens`` to fit; raise BudgetExceeded if nothing fits."""
        b = self.budget
        if b.deadline_s is not None and self.clock() - self.started >= b.deadline_s:
            self.limited = True
            raise BudgetExceeded(f"deadline of {b.deadline_s:g} s reached")
        allowed = max_tokens
        if b.total_tokens is not None:
            room = b.total_tokens - self.spent_tokens - self.reserved_tokens - prompt_bound
            allowed = min(allowed, room // n if n else 0)
        price = self.price(role)
        if price is not None and b.cost_usd is not None:
            room_usd = b.cost_usd - self.spent_cost - self.reserved_cost - prompt_bound * price.prompt / 1e6
            per_token = n * price.completion / 1e6
            allowed = min(allowed, int(room_usd // per_token) if per_token > 0 else allowed)
        base = self.longest_chain
        if generates and b.sequential_tokens is not None:
            allowed = min(allowed, b.sequential_tokens - base)
        # A scoring call generates one throwaway token and cannot be cut: it fits whole or not at all.
        floor = max(self.min_tokens, 1) if generates else max_tokens
        if allowed < floor:
            self.limited = True
            raise BudgetExceeded(
                f"no room for a call of n={n} (budget {b.as_dict()}, spent {self.spent_tokens} tokens, "
                f"${self.spent_cost:.6f}, longest chain {base})"
            )
        truncated = allowed < max_tokens
        self.limited |= truncated
        tokens = prompt_bound + n * allowed
        cost = price.cost(Usage(prompt_bound, n * allowed, 0)) if price is not None else 0.0
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        return Reservation(tokens=tokens, cost=cost, base_chain=base, max_tokens=allowed, truncated=truncated)

    def settle(self, r: Reservation, *, role: str, usage: Usage, longest_sequence: int) -> float:
        """Release the reservation and charge what the call really cost; returns its dollar cost."""
        self.reserved_tokens -= r.tokens
        self.reserved_cost -= r.cost
        self.spent_tokens += usage.total_tokens
        p = self.prices.get(role)
        cost = p.cost(usage) if p is not None else 0.0
        self.spent_cost += cost
        self.longest_chain = max(self.longest_chain, r.base_chain + longest_sequence)
        return cost

    def release(self, r: Reservation) -> None:
        """A call that failed before reporting usage gives its reservation back."""
        self.reserved_tokens -= r.tokens
        self.reserved_cost -= r.cost

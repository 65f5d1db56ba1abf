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

**Live metering** (``live=True``, the server's default: ``TTS_BUDGET_MODE=live``). Reserving every call's
worst case wastes a tight budget: n samples cut to ``room // n`` tokens each end without an answer while
most of the budget stays unspent. A live call keeps its natural ``max_tokens``; it is admitted with a cap,
what is left of the budget (split evenly among the calls of a race started together), and the engine meters
the call's sequences against it as they stream (``SamplingSpec.token_cap``, ``workers.token_pool``): the
prompt is counted exactly, once, by the engine's own tokenizer, sequences that finish early leave their
share to the others, and when the cap cannot carry every sequence to its expected length (``expected_tokens``,
from the lengths the server has seen at that stage) the highest-numbered sequences are ended first.
**Bound:** a live call never delivers more than its cap, whatever the tokenizer (the engine stops counting at
the cap and drops whatever it computed beyond it), and caps are reserved before calls start, so spend never
exceeds a limit. Under a cost limit the cap is priced at the dearer of the prompt and completion prices.
Scoring calls cannot be cut: they are admitted whole, as in reservation mode.
"""

from __future__ import annotations

import math
import time
from collections import deque
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
    token_cap: int | None = None  # live metering: what the whole call may spend (None: its worst case fits)


class LengthHistory:
    """Mean tokens of the samples that finished by themselves, per (role, stage): what a live call of that
    stage expects each of its sequences to need. Kept in memory by the server, across requests."""

    QUANTILES = 16  # what a live call carries of a stage's lengths (see :meth:`quantiles`)
    KEEP = 1024  # the most recent samples kept per (role, stage) for them

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], list[int]] = {}
        # Recent samples as (length, cut): a cut one is a censored length, it needed more than that.
        self._recent: dict[tuple[str, str], deque[tuple[int, bool]]] = {}
        self._quantiles: dict[tuple[str, str], tuple[int, ...]] = {}  # cache, dropped when samples arrive
        self._cut: dict[tuple[str, str], int] = {}  # the longest sample the budget ended, per (role, stage)
        self._requests: dict[str, list[int]] = {}  # strategy -> [tokens, requests] of requests it finished

    def add_request(self, strategy: str, tokens: int) -> None:
        acc = self._requests.setdefault(strategy, [0, 0])
        acc[0] += tokens
        acc[1] += 1

    def expected_request(self, strategy: str) -> float | None:
        """Mean tokens a request of ``strategy`` spent on this server (None before one finished)."""
        acc = self._requests.get(strategy)
        return acc[0] / acc[1] if acc else None

    def add(self, role: str, stage: str, lengths: list[int]) -> None:
        if lengths:
            acc = self._sums.setdefault((role, stage), [0, 0])
            acc[0] += sum(lengths)
            acc[1] += len(lengths)
            self._remember(role, stage, [(n, False) for n in lengths])

    def _remember(self, role: str, stage: str, samples: list[tuple[int, bool]]) -> None:
        self._recent.setdefault((role, stage), deque(maxlen=self.KEEP)).extend(samples)
        self._quantiles.pop((role, stage), None)

    def quantiles(self, role: str, stage: str) -> tuple[int, ...]:
        """The length distribution of (role, stage)'s recent samples at the midpoints of ``QUANTILES`` equal
        shares (empty before any finished): what a token pool conditions on (workers.token_pool).

        Cut samples are censored (each needed more than its length), so the distribution is the Kaplan-Meier
        estimate, not the finished lengths alone: under tight budgets the long samples are the cut ones, and the
        finished ones alone would say every sample is short. What the estimate leaves beyond the longest sample
        seen is put at twice that length (as :meth:`expected` guesses from cut samples)."""
        key = (role, stage)
        if key not in self._quantiles:
            self._quantiles[key] = _km_quantiles(sorted(self._recent.get(key, ())), self.QUANTILES)
        return self._quantiles[key]

    def add_cut(self, role: str, stage: str, lengths: list[int]) -> None:
        """Samples the budget ended at these lengths: each needed more (censored lengths, see :meth:`quantiles`)."""
        if lengths:
            self._cut[(role, stage)] = max(self._cut.get((role, stage), 0), max(lengths))
            self._remember(role, stage, [(n, True) for n in lengths])

    def expected(self, role: str, stage: str) -> float | None:
        """The mean of the finished samples; before any finished, twice the longest cut one (it needed more than
        that: without a guess, samples too long for every budget so far would be cut together forever)."""
        acc = self._sums.get((role, stage))
        if acc:
            return acc[0] / acc[1]
        cut = self._cut.get((role, stage))
        return 2.0 * cut if cut else None


def _km_quantiles(samples: list[tuple[int, bool]], k: int) -> tuple[int, ...]:
    """Midpoint quantiles of the product-limit (Kaplan-Meier) estimate of sorted (length, censored) samples."""
    if not any(not cut for _, cut in samples):
        return ()
    points: list[tuple[int, float]] = []  # (length, probability mass)
    surviving, i, n = 1.0, 0, len(samples)
    while i < n:
        length, at_risk, ended = samples[i][0], n - i, 0
        while i < n and samples[i][0] == length:
            ended += not samples[i][1]
            i += 1
        if ended:
            mass = surviving * ended / at_risk
            points.append((length, mass))
            surviving -= mass
    if surviving > 1e-9:
        points.append((2 * samples[-1][0], surviving))
    out, cumulative, j = [], 0.0, 0
    for q in range(k):
        target = (2 * q + 1) / (2 * k)
        while j < len(points) - 1 and cumulative + points[j][1] < target:
            cumulative += points[j][1]
            j += 1
        out.append(points[j][0])
    return tuple(out)


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
    draw: Callable[[int, int], Awaitable[int]] | None = None
    ceiling: int | None = None
    live: bool = False  # live metering (module docstring) instead of reserving every call's worst case

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

    async def make_room(self, *, prompt_bound: int, n: int, max_tokens: int, expected: float | None = None) -> None:
        """Grow a quota grant when a call's worst case does not fit what is left of it, so that a strategy's
        later stages (scoring, re-sent prompts) are not cut by an estimate made before it ran. The draw at
        least doubles the grant (few database round trips per request) and never passes ``ceiling``."""
        total = self.budget.total_tokens
        if self.draw is None or total is None:
            return
        left = total - self.spent_tokens - self.reserved_tokens
        short = prompt_bound + n * max_tokens - left
        ask = min(max(short, total), (self.ceiling or total + short) - total)
        if short <= 0 or ask <= 0:
            return
        need = short
        if self.live and expected is not None:
            # Metered live, the call can run on less than its worst case: the quota falls short of it only when it
            # cannot give what the samples are expected to take (with room to spare).
            need = max(prompt_bound + n * min(max_tokens, math.ceil(1.5 * expected)) - left, 0)
        got = await self.draw(ask, min(need, ask))
        if got:
            self.budget = replace(self.budget, total_tokens=(self.budget.total_tokens or 0) + got)

    def remaining_tokens(self) -> int | None:
        """Tokens of the budget neither spent nor reserved by calls in flight (None: no token limit). Under a
        quota, of the request's own limit (the grant grows toward it as calls need it)."""
        b = self.budget.total_tokens
        if b is not None and self.draw is not None and self.ceiling is not None:
            b = max(b, self.ceiling)
        return None if b is None else max(b - self.spent_tokens - self.reserved_tokens, 0)

    def admit(
        self, *, role: str, prompt_bound: int, n: int, max_tokens: int, generates: bool = True, parts: int = 1, expected: float | None = None
    ) -> Reservation:
        """Reserve a call's worst case, cutting ``max_tokens`` to fit; raise BudgetExceeded if nothing fits.
        Live (``self.live``), a generating call reserves a cap instead: what is left, divided by ``parts``
        (the calls being started together, this one included) or, when ``expected`` (a sample's expected
        length) says fewer of them fit, by as many as fit: a race too big for what is left runs fewer calls
        whole rather than every call truncated."""
        b = self.budget
        if b.deadline_s is not None and self.clock() - self.started >= b.deadline_s:
            self.limited = True
            raise BudgetExceeded(f"deadline of {b.deadline_s:g} s reached")
        if self.live and generates:
            return self._admit_live(role=role, prompt_bound=prompt_bound, n=n, max_tokens=max_tokens, parts=parts, expected=expected)
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

    def _admit_live(self, *, role: str, prompt_bound: int, n: int, max_tokens: int, parts: int, expected: float | None) -> Reservation:
        b = self.budget
        worst = prompt_bound + n * max_tokens
        room = worst * max(parts, 1)  # in tokens: what is left of every limit, the tightest
        if b.total_tokens is not None:
            room = min(room, b.total_tokens - self.spent_tokens - self.reserved_tokens)
        price = self.price(role)
        dearest = max(price.prompt, price.completion) / 1e6 if price is not None else 0.0
        if price is not None and b.cost_usd is not None and dearest > 0:
            room = min(room, int((b.cost_usd - self.spent_cost - self.reserved_cost) / dearest))
        share = max(parts, 1)
        if share > 1:
            # Without an expectation (a fresh server) each part must still fit its prompt and as many tokens again:
            # an even split that leaves a part no room for its own prompt would have the race answer nothing.
            need = prompt_bound + n * (expected if expected is not None else max(prompt_bound, 1))
            share = max(1, min(share, int(room // need)))
        cap = min(worst, room // share)
        base = self.longest_chain
        per_sequence = max_tokens
        if b.sequential_tokens is not None:
            per_sequence = min(per_sequence, b.sequential_tokens - base)
        # At least one prompt token and min_tokens of one sequence; the engine refuses (spending nothing) a
        # prompt that turns out longer than the cap.
        if cap < 1 + max(self.min_tokens, 1) or per_sequence < max(self.min_tokens, 1):
            self.limited = True
            raise BudgetExceeded(
                f"no room for a call of n={n} (budget {b.as_dict()}, spent {self.spent_tokens} tokens, "
                f"${self.spent_cost:.6f}, longest chain {base})"
            )
        truncated = per_sequence < max_tokens
        self.limited |= truncated
        cost = cap * dearest
        self.reserved_tokens += cap
        self.reserved_cost += cost
        return Reservation(tokens=cap, cost=cost, base_chain=base, max_tokens=per_sequence, truncated=truncated, token_cap=cap if cap < worst else None)

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

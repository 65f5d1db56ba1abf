"""Choosing a replica for a call: prefix affinity first, least-loaded otherwise.

Every engine keeps a prefix cache, so a call whose prompt starts like an earlier one is cheaper on the replica
that served the earlier one. The router remembers, per replica, chained hashes of the fixed-size blocks of the
prompts it sent there (a bounded LRU, much like vLLM's own block hashes) and sends a new call to the replica
holding its longest run of leading blocks, unless that replica is already busier than the least-loaded one by
more than ``max_imbalance`` calls. Pure logic: no Ray, no engine.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class AffinityConfig:
    """``block`` is in characters for text prompts and in tokens for token-id prompts. A call is routed by
    affinity when it shares at least ``min_match_blocks`` leading blocks with a replica's history.
    ``failure_cooldown_s`` keeps a replica whose call just failed out of rotation while others remain."""

    block: int = 64
    min_match_blocks: int = 2
    max_imbalance: int = 8
    capacity_blocks: int = 100_000
    failure_cooldown_s: float = 30.0


def block_hashes(prompt: str | Sequence[int], block: int) -> list[int]:
    """Chained hashes of the prompt's full blocks: equal i-th hashes mean equal first i+1 blocks."""
    out: list[int] = []
    h = 0
    for start in range(0, len(prompt) - block + 1, block):
        chunk = prompt[start : start + block]
        h = hash((h, chunk if isinstance(chunk, str) else tuple(chunk)))
        out.append(h)
    return out


@dataclass(frozen=True)
class Route:
    replica: str
    matched_blocks: int
    reason: str  # "affinity" or "least_loaded"


class PrefixRouter:
    """Routing state for the replicas of one role."""

    def __init__(self, replicas: Sequence[str], config: AffinityConfig = AffinityConfig()) -> None:
        if not replicas:
            raise ValueError("a router needs at least one replica")
        self.config = config
        self._names = list(replicas)
        self._seen: dict[str, OrderedDict[int, None]] = {n: OrderedDict() for n in replicas}
        self._failed_at: dict[str, float] = {}
        self._turn = 0

    @property
    def replicas(self) -> list[str]:
        return list(self._names)

    def mark_failed(self, name: str) -> None:
        self._failed_at[name] = time.monotonic()
        self._seen[name].clear()  # a restarted engine starts with an empty cache

    def healthy(self, name: str) -> bool:
        t = self._failed_at.get(name)
        return t is None or time.monotonic() - t > self.config.failure_cooldown_s

    def pick(self, prompt: str | Sequence[int], load: Mapping[str, int], exclude: Sequence[str] = ()) -> Route:
        pool = [n for n in self._names if n not in exclude] or list(self._names)
        fresh = [n for n in pool if self.healthy(n)] or pool
        hashes = block_hashes(prompt, self.config.block)
        least = min(load.get(n, 0) for n in fresh)
        best, best_match = None, 0
        for name in fresh:
            seen = self._seen[name]
            match = 0
            for h in hashes:
                if h not in seen:
                    break
                match += 1
            if match > best_match:
                best, best_match = name, match
        if (
            best is not None
            and best_match >= self.config.min_match_blocks
            and load.get(best, 0) - least <= self.config.max_imbalance
        ):
            route = Route(best, best_match, "affinity")
        else:
            idle = [n for n in fresh if load.get(n, 0) == least]
            self._turn += 1
            chosen = idle[self._turn % len(idle)]
            route = Route(chosen, best_match if chosen == best else 0, "least_loaded")
        self._remember(route.replica, hashes)
        return route

    def _remember(self, name: str, hashes: list[int]) -> None:
        seen = self._seen[name]
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.config.capacity_blocks:
            seen.popitem(last=False)

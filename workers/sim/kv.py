"""A paged KV cache with prefix caching, counted the way vLLM v1 counts it (blocks of ``block_size`` tokens).

A full block is named by the hash of its tokens chained to its parent block's hash, so equal prefixes are
equal chains. Blocks in use are held by the sequences that read them (a prompt's full blocks are shared by the
sequences of a call and by any call whose prompt starts the same); a sequence's blocks past its prompt are its
own. When a sequence ends, its full blocks stay cached (hashed, unreferenced) until evicted, least recently
used first, to make room; a later prompt that starts with them reads them instead of computing them. A hit
never covers a prompt's last token (vLLM recomputes it for the logits)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np


_MULT = np.random.default_rng(0x5EED).integers(1, 2**63, size=4096, dtype=np.uint64) | np.uint64(1)
_P = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def block_hashes(ids: Sequence[int], block_size: int, *, start: int = 0, parent: int = 0) -> list[int]:
    """The chained hashes of the full blocks of ``ids`` from block ``start`` on (``parent``: the hash before it):
    block b's hash depends on every token up to its end, as vLLM's chain of block hashes does. Vectorised: each
    block's tokens fold into one 64-bit value, and the chain is a polynomial in them (mod 2^64)."""
    n = len(ids) // block_size
    if n <= start:
        return []
    blocks = np.asarray(ids[start * block_size : n * block_size], dtype=np.uint64).reshape(-1, block_size)
    with np.errstate(over="ignore"):
        values = (blocks @ _MULT[:block_size]).tolist()
    out = []
    h = parent & _M64
    for v in values:  # h_b = h_{b-1} * P + value_b (mod 2^64): a loop over blocks, not tokens
        h = (h * _P + v) & _M64
        out.append(h)
    return out


class KVCache:
    """``total`` blocks of ``block_size`` tokens. Counts are in blocks; ``used`` excludes cached, unreferenced ones."""

    def __init__(self, total: int, block_size: int, *, prefix_caching: bool = True) -> None:
        self.total = total
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._refs: dict[int, int] = {}  # hashed block -> holders (0: cached, evictable)
        self._lru: OrderedDict[int, None] = OrderedDict()  # hashed blocks nobody holds, oldest first
        self.private = 0  # blocks held that have no hash (partial blocks, generated tokens not yet registered)
        self.queries = 0  # prompt tokens looked up
        self.hits = 0  # of them, served from the cache

    @property
    def used(self) -> int:
        return self.private + len(self._refs) - len(self._lru)

    @property
    def free(self) -> int:
        """Blocks an allocation may take (cached, unreferenced ones are evicted for it)."""
        return self.total - self.used

    def cached_prefix(self, hashes: Sequence[int], prompt_tokens: int) -> int:
        """Leading blocks of a prompt found in the cache (held or cached), at most covering ``prompt_tokens`` - 1."""
        if not self.prefix_caching:
            return 0
        limit = (prompt_tokens - 1) // self.block_size
        n = 0
        for h in hashes[:limit]:
            if h not in self._refs:
                break
            n += 1
        return n

    def _make_room(self, blocks: int) -> bool:
        if blocks > self.free:
            return False
        empty = self.total - self.private - len(self._refs)
        while empty < blocks and self._lru:
            h, _ = self._lru.popitem(last=False)
            del self._refs[h]
            empty += 1
        return True

    def hold(self, hashes: Sequence[int], *, copies: int = 1) -> bool:
        """Hold the full blocks ``hashes`` (found or new) ``copies`` times; False (nothing held) when they do not fit."""
        unique = list(dict.fromkeys(hashes))
        new = sum(1 for h in unique if h not in self._refs)
        revived = [h for h in unique if h in self._lru]
        if new + len(revived) > self.free:
            return False
        for h in revived:  # in use again: never the ones evicted to make room below
            del self._lru[h]
        self._make_room(new)
        for h in hashes:
            self._refs[h] = self._refs.get(h, 0) + copies
        return True

    def take(self, blocks: int) -> bool:
        """Take ``blocks`` blocks of one's own; False (nothing taken) when they do not fit."""
        if blocks <= 0:
            return True
        if not self._make_room(blocks):
            return False
        self.private += blocks
        return True

    def release(self, hashes: Sequence[int], *, private: int = 0, register: Sequence[int] = ()) -> None:
        """Let go of held blocks ``hashes`` and ``private`` blocks of one's own, of which the full ones named by
        ``register`` stay cached (with prefix caching) instead of being freed."""
        for h in hashes:
            left = self._refs.get(h, 0) - 1
            if left > 0:
                self._refs[h] = left
            elif h in self._refs:
                self._refs[h] = 0
                self._lru[h] = None
        self.private -= private
        if not self.prefix_caching:
            return
        for h in register:
            if h in self._refs:
                if h in self._lru:
                    self._lru.move_to_end(h)
                continue
            if self.total - self.private - len(self._refs) <= 0 and not self._make_room(1):
                break
            self._refs[h] = 0
            self._lru[h] = None

"""The token cap of one live-metered call, shared by its sequences (see orchestrator.budget, live mode).

A call of n samples under a tight budget used to have each sample's ``max_tokens`` cut to ``room // n``: a
sample that needed more than its n-th was truncated while its siblings left their share unspent. Here the
samples draw from one pool, so short samples leave room for long ones. The pool is exact: a sequence keeps
only the tokens the pool still holds (the engine may have computed a few more before it hears the abort;
those are dropped, never delivered nor charged).

When the pool cannot carry every live sequence to its expected length (or, without an expectation, cannot
give each of them one more token), the highest-numbered live sequences are ended first, so that the others
can finish rather than all of them being truncated together. The expected length is the mean of the
siblings that already finished (samples of one prompt run alike), else the caller's. The caller may give the
lengths the server has seen at that stage as quantiles; then a sequence that has written t tokens is expected to
reach the mean of the quantiles above t: a long one is probably a long kind (a hard problem's), and is judged by
the long tail, not by the mean of every length, which it has already passed. A sequence past every guess is
guessed to need a quarter of its length again. The last live sequence is never ended early: it runs until it
finishes or the pool is empty.
"""

from __future__ import annotations

import math


class TokenPool:
    def __init__(self, cap: int, n: int, expected: float | None = None, quantiles: tuple[int, ...] = ()) -> None:
        self.left = max(cap, 0)
        self.expected = expected
        self.quantiles = tuple(sorted(quantiles))
        self.tokens = [0] * n
        self.live = set(range(n))
        self.cut: set[int] = set()
        self.done: set[int] = set()  # finished by themselves

    def take(self, i: int, k: int) -> int:
        """Sequence ``i`` produced ``k`` more tokens: how many of them it keeps. A sequence that could not keep
        them all is cut (it ends with finish reason ``length``); one already ended keeps nothing."""
        if i not in self.live:
            return 0
        kept = min(k, self.left)
        self.left -= kept
        self.tokens[i] += kept
        if kept < k:
            self._end(i)
        return kept

    def finished(self, i: int, *, complete: bool = True) -> None:
        """Sequence ``i`` ended by itself (EOS, a stop string, its own ``max_tokens``); ``complete`` False when
        it ended otherwise (aborted): then its length says nothing about its siblings'."""
        if i in self.live:
            self.live.discard(i)
            if complete:
                self.done.add(i)

    def victims(self) -> list[int]:
        """Live sequences to end now, highest-numbered first, so that the rest fit the pool."""
        out = []
        while self.live and (self.left == 0 or (len(self.live) > 1 and self.left < self._need())):
            v = max(self.live)
            self._end(v)
            out.append(v)
        return out

    def _need(self) -> int:
        # Siblings are samples of the same prompt: once some finished, their mean length is the better guess.
        done = [self.tokens[i] for i in self.done]
        if not done and self.quantiles:
            return sum(self._still_needs(self.tokens[i]) for i in self.live)
        expected = sum(done) / len(done) if done else self.expected
        if expected is None:
            return len(self.live)  # one more token each
        # A sequence already past the expectation is guessed to need a quarter of its length again.
        return sum(max(math.ceil(expected - self.tokens[i]), math.ceil(self.tokens[i] / 4), 1) for i in self.live)

    def _still_needs(self, t: int) -> int:
        above = [q for q in self.quantiles if q > t]
        if not above:
            return max(math.ceil(t / 4), 1)
        return max(math.ceil(sum(above) / len(above) - t), 1)

    def _end(self, i: int) -> None:
        self.live.discard(i)
        self.cut.add(i)

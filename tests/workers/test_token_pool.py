"""The pooled token cap of a live-metered call (workers.token_pool), on scripted deliveries."""

from __future__ import annotations

import random

import pytest

from workers.token_pool import TokenPool


def test_short_samples_leave_their_share_to_long_ones():
    pool = TokenPool(cap=100, n=4)
    # Three samples of 10 tokens finish; the fourth needs 60, more than a quarter of the cap.
    for i in range(3):
        assert pool.take(i, 10) == 10
        pool.finished(i)
    assert pool.take(3, 60) == 60 and not pool.cut and pool.left == 10


def test_a_delta_past_the_cap_is_cut_to_what_is_left():
    pool = TokenPool(cap=5, n=1)
    assert pool.take(0, 3) == 3
    assert pool.take(0, 4) == 2 and pool.cut == {0} and pool.left == 0
    assert pool.take(0, 4) == 0  # an ended sequence keeps nothing the engine computed after


def test_without_an_expectation_sequences_end_only_when_the_pool_cannot_give_each_one_more_token():
    pool = TokenPool(cap=12, n=4)
    for i in range(4):
        pool.take(i, 2)
    assert pool.victims() == []  # 4 left for 4 live sequences: one more token each still fits...
    pool.take(0, 1)
    assert pool.victims() == [3]  # ...3 left: the highest-numbered goes first, until the rest fit
    assert sorted(pool.live) == [0, 1, 2]


def test_with_an_expectation_sequences_that_cannot_fit_are_ended_before_they_start():
    pool = TokenPool(cap=100, n=4, expected=40)
    assert pool.victims() == [3, 2]  # 4 x 40 and 3 x 40 exceed 100; 2 x 40 fits
    assert pool.live == {0, 1}


def test_the_last_live_sequence_runs_until_the_pool_is_empty():
    pool = TokenPool(cap=10, n=2, expected=50)
    assert pool.victims() == [1] and pool.victims() == []  # one left: never ended early
    assert pool.take(0, 10) == 10 and pool.victims() == [0]


@pytest.mark.parametrize("seed", range(20))
def test_random_deliveries_never_exceed_the_cap(seed):
    rng = random.Random(seed)
    n, cap = rng.randint(1, 8), rng.randint(0, 300)
    pool = TokenPool(cap, n, expected=rng.choice([None, rng.uniform(1, 80)]))
    delivered = 0
    pool.victims()
    for _ in range(400):
        i = rng.randrange(n)
        delivered += pool.take(i, rng.randint(1, 5))
        if rng.random() < 0.05:
            pool.finished(i)
        pool.victims()
    assert delivered == sum(pool.tokens) <= cap
    assert pool.left == cap - delivered


def _lockstep(pool: TokenPool, need: int) -> list[int]:
    """Every live sequence writes one token a step and would finish at ``need``: which finished."""
    pool.victims()
    while pool.live:
        for i in sorted(pool.live):
            if i in pool.live:
                pool.take(i, 1)
                if i in pool.live and pool.tokens[i] >= need:
                    pool.finished(i)
        pool.victims()
    return sorted(pool.done)


def test_a_long_tail_in_the_quantiles_ends_victims_early_enough_for_two_to_finish():
    """A stage whose samples are short (35) for easy prompts and long (90) for hard ones: on a hard prompt the
    mean (62.5) says four fit in 248 tokens, so all four run past it and only one finishes. Judged by the
    quantiles above what it has written, a sample past 35 is a long kind: two are ended early and two finish."""
    q = tuple([35] * 8 + [90] * 8)
    assert _lockstep(TokenPool(248, 4, expected=62.5), need=90) == [0]
    assert _lockstep(TokenPool(248, 4, expected=62.5, quantiles=q), need=90) == [0, 1]
    # On an easy prompt it ends no more than the mean does (both end one sample just before the others finish:
    # at 34 tokens each, a sample of this stage is as likely long as short).
    assert _lockstep(TokenPool(248, 4, expected=62.5, quantiles=q), need=35) == _lockstep(TokenPool(248, 4, expected=62.5), need=35) == [0, 1, 2]

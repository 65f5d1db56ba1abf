"""Budget admission and charging (pure logic; the real-engine path is in tests/api/test_budgets.py)."""

from __future__ import annotations

import pytest

from orchestrator.budget import Budget, BudgetMeter, Price
from orchestrator.errors import BudgetExceeded, InvalidRequest
from orchestrator.types import Usage


@pytest.mark.parametrize("field", ["total_tokens", "sequential_tokens", "cost_usd", "deadline_s"])
@pytest.mark.parametrize("value", [0, -5])
def test_zero_or_negative_limits_are_refused(field, value):
    with pytest.raises(InvalidRequest, match=f"budget.{field} must be positive"):
        Budget(**{field: value})


def test_concurrent_reservations_cannot_jointly_overspend():
    m = BudgetMeter(Budget(total_tokens=300))
    a = m.admit(role="policy", prompt_bound=20, n=4, max_tokens=50)  # 220 reserved
    b = m.admit(role="policy", prompt_bound=20, n=4, max_tokens=50)  # 60 left after its prompt: 15 per sample
    assert (a.max_tokens, b.max_tokens) == (50, 15) and b.truncated
    with pytest.raises(BudgetExceeded):
        m.admit(role="policy", prompt_bound=20, n=1, max_tokens=5)
    m.settle(a, role="policy", usage=Usage(18, 120, 0), longest_sequence=50)
    m.settle(b, role="policy", usage=Usage(18, 40, 0), longest_sequence=10)
    assert m.spent_tokens == 196 <= 300 and m.reserved_tokens == 0
    c = m.admit(role="policy", prompt_bound=20, n=2, max_tokens=100)
    assert c.max_tokens == (300 - 196 - 20) // 2


def test_sequential_tokens_follow_the_dependency_chain():
    m = BudgetMeter(Budget(sequential_tokens=100))
    r1 = m.admit(role="policy", prompt_bound=5, n=8, max_tokens=60)  # parallel round: chain 0 + 60
    r2 = m.admit(role="policy", prompt_bound=5, n=8, max_tokens=60)  # started before r1 finished
    assert r1.max_tokens == r2.max_tokens == 60
    m.settle(r1, role="policy", usage=Usage(5, 400, 0), longest_sequence=55)
    m.settle(r2, role="policy", usage=Usage(5, 400, 0), longest_sequence=60)
    assert m.longest_chain == 60
    r3 = m.admit(role="policy", prompt_bound=5, n=1, max_tokens=60)  # depends on the round: 40 left
    assert r3.max_tokens == 40 and r3.truncated


def test_cost_budget_uses_prices_and_needs_them():
    price = Price(prompt=1.0, cached=0.1, completion=2.0)  # $ per million tokens
    assert price.cost(Usage(1000, 500, 400)) == pytest.approx((600 * 1 + 400 * 0.1 + 500 * 2) / 1e6)
    m = BudgetMeter(Budget(cost_usd=0.001), prices={"policy": price})
    r = m.admit(role="policy", prompt_bound=100, n=2, max_tokens=1000)
    assert r.max_tokens == int((0.001 - 100e-6) // (2 * 2e-6))
    with pytest.raises(InvalidRequest, match="needs a price for role 'prm'"):
        m.admit(role="prm", prompt_bound=10, n=1, max_tokens=1, generates=False)


def test_deadline_refuses_new_calls():
    now = [0.0]
    m = BudgetMeter(Budget(deadline_s=5), clock=lambda: now[0])
    m.admit(role="policy", prompt_bound=1, n=1, max_tokens=1)
    now[0] = 5.0
    with pytest.raises(BudgetExceeded, match="deadline"):
        m.admit(role="policy", prompt_bound=1, n=1, max_tokens=1)
    assert m.limited


def test_scoring_is_never_cut_only_admitted_whole():
    m = BudgetMeter(Budget(total_tokens=50))
    r = m.admit(role="prm", prompt_bound=40, n=1, max_tokens=1, generates=False)
    assert r.max_tokens == 1
    with pytest.raises(BudgetExceeded):
        m.admit(role="prm", prompt_bound=40, n=1, max_tokens=1, generates=False)
    m.release(r)
    assert m.reserved_tokens == 0


def test_auto_choice_from_measured_results():
    from orchestrator.auto import BUILTIN, Measured, choose

    cands = [
        Measured("a", {"n": 1}, 0.4, 100),
        Measured("a", {"n": 8}, 0.6, 800, mean_cost_usd=0.02),
        Measured("b", {}, 0.6, 600),
        Measured("unregistered", {}, 0.99, 1),
    ]
    allowed = ["a", "b"]
    assert choose(cands, Budget(total_tokens=150), allowed=allowed).params == {"n": 1}
    assert choose(cands, Budget(total_tokens=1000), allowed=allowed).strategy == "b"  # same accuracy, cheaper
    assert choose(cands, Budget(total_tokens=50), allowed=allowed).params == {"n": 1}  # nothing fits: cheapest
    assert choose(cands, Budget(total_tokens=1000, cost_usd=0.01), allowed=allowed).strategy == "b"
    assert choose([], Budget(total_tokens=10**6), allowed=["self_consistency"]) == max(BUILTIN, key=lambda m: m.accuracy)


def test_live_calls_keep_their_max_tokens_and_get_what_is_left_as_a_cap():
    m = BudgetMeter(Budget(total_tokens=300), live=True)
    r = m.admit(role="policy", prompt_bound=20, n=4, max_tokens=256)
    assert r.max_tokens == 256 and not r.truncated and r.token_cap == 300  # the engine meters the 300 itself
    m.settle(r, role="policy", usage=Usage(18, 200, 0), longest_sequence=60)
    r2 = m.admit(role="policy", prompt_bound=20, n=1, max_tokens=50)
    assert r2.token_cap is None and r2.tokens == 70  # its worst case fits: no cap to meter
    assert m.remaining_tokens() == 300 - 218 - 70


def test_live_calls_started_together_share_what_is_left_evenly():
    m = BudgetMeter(Budget(total_tokens=400), live=True)
    caps = [m.admit(role="policy", prompt_bound=20, n=1, max_tokens=256, parts=4 - i).token_cap for i in range(4)]
    assert caps == [100, 100, 100, 100] and m.remaining_tokens() == 0


def test_a_live_call_is_refused_only_when_not_even_one_token_fits():
    m = BudgetMeter(Budget(total_tokens=30), live=True)
    assert m.admit(role="policy", prompt_bound=40, n=2, max_tokens=10).token_cap == 30  # the engine counts the prompt exactly
    with pytest.raises(BudgetExceeded):
        m.admit(role="policy", prompt_bound=5, n=1, max_tokens=10)
    assert m.limited


def test_a_live_cost_cap_prices_every_token_at_the_dearer_price():
    price = Price(prompt=1.0, cached=0.1, completion=4.0)
    m = BudgetMeter(Budget(cost_usd=0.001), prices={"policy": price}, live=True)
    r = m.admit(role="policy", prompt_bound=50, n=4, max_tokens=1000)
    assert r.token_cap == 250 and r.cost == pytest.approx(0.001)  # 250 tokens at $4/M is the whole budget


def test_live_scoring_calls_are_admitted_whole_as_before():
    m = BudgetMeter(Budget(total_tokens=50), live=True)
    r = m.admit(role="prm", prompt_bound=40, n=1, max_tokens=1, generates=False)
    assert r.token_cap is None and r.tokens == 41
    with pytest.raises(BudgetExceeded):
        m.admit(role="prm", prompt_bound=40, n=1, max_tokens=1, generates=False)


def test_sample_lengths_expected_from_finished_samples_or_else_from_cut_ones():
    from orchestrator.budget import LengthHistory

    h = LengthHistory()
    assert h.expected("policy", "sample") is None
    h.add_cut("policy", "sample", [14, 12])  # a budget that cut every sample: each needed more than that
    assert h.expected("policy", "sample") == 28
    h.add("policy", "sample", [50, 60])
    assert h.expected("policy", "sample") == 55 and h.expected("policy", "other") is None


def test_length_history_quantiles_follow_the_recent_lengths():
    from orchestrator.budget import LengthHistory

    h = LengthHistory()
    assert h.quantiles("policy", "sample") == ()
    h.add("policy", "sample", list(range(1, 161)))
    q = h.quantiles("policy", "sample")
    assert len(q) == LengthHistory.QUANTILES and list(q) == sorted(q)
    assert q[0] == 5 and q[-1] == 155 + 1  # midpoints of 16 shares of 1..160 (the first length whose CDF reaches them)
    h.add("policy", "sample", [1000] * 2000)  # only the most recent KEEP lengths count
    assert set(h.quantiles("policy", "sample")) == {1000}
    assert h.quantiles("policy", "other") == ()


def test_cut_samples_are_censored_lengths_in_the_quantiles():
    """Half the samples finished at 40, half were cut at 50 (they needed more): the finished ones alone would
    say every sample takes 40; the estimate puts the cut half beyond 50 (at twice the longest seen)."""
    from orchestrator.budget import LengthHistory

    h = LengthHistory()
    h.add_cut("policy", "sample", [50] * 8)
    assert h.quantiles("policy", "sample") == ()  # nothing finished: no distribution yet
    h.add("policy", "sample", [40] * 8)
    q = h.quantiles("policy", "sample")
    assert q[: LengthHistory.QUANTILES // 2] == (40,) * 8 and q[LengthHistory.QUANTILES // 2 :] == (100,) * 8
    # A cut sample shorter than the finished ones says little: it may have been as long as they are.
    h2 = LengthHistory()
    h2.add("policy", "sample", [40] * 8)
    h2.add_cut("policy", "sample", [10] * 8)
    assert set(h2.quantiles("policy", "sample")) == {40}


def test_a_race_on_a_fresh_server_never_splits_below_a_prompt_and_as_much_again():
    """No sample has finished yet (no expectation): 100 tokens split four ways would give each call 25, less
    than its prompt, and the race would answer nothing; one call gets the room instead, the others are refused."""
    m = BudgetMeter(Budget(total_tokens=100), live=True)
    assert m.admit(role="policy", prompt_bound=32, n=1, max_tokens=256, parts=4).token_cap == 100
    with pytest.raises(BudgetExceeded):
        m.admit(role="policy", prompt_bound=32, n=1, max_tokens=256, parts=3)

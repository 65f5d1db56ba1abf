"""Replica choice: prefix affinity, load balance and failure cooldown (pure logic, no engines)."""

from __future__ import annotations

from workers.routing import AffinityConfig, PrefixRouter, block_hashes

HEAD = "Solve step by step. " * 10  # 200 characters: three full 64-character blocks


def test_block_hashes_are_chained():
    a, b = block_hashes(HEAD + "x" * 64, 64), block_hashes(HEAD + "y" * 64, 64)
    assert a[:3] == b[:3] and a[3] != b[3]
    assert block_hashes("z" + HEAD, 64)[0] != a[0]
    assert block_hashes("short", 64) == []
    assert block_hashes((1, 2, 3, 4), 2) == block_hashes([1, 2, 3, 4], 2)


def test_shared_prefix_follows_its_replica():
    router = PrefixRouter(["r0", "r1", "r2"])
    first = router.pick(HEAD + "branch A", {})
    for tail in ("branch B", "branch C", "a longer branch D " * 4):
        route = router.pick(HEAD + tail, {})
        assert route.replica == first.replica and route.reason == "affinity" and route.matched_blocks == 3


def test_unrelated_prompts_go_to_the_least_loaded():
    router = PrefixRouter(["r0", "r1"])
    assert router.pick("q1", {"r0": 3, "r1": 0}).replica == "r1"
    assert router.pick("q2", {"r0": 0, "r1": 5}).replica == "r0"
    picks = {router.pick(f"q{i}", {}).replica for i in range(4)}
    assert picks == {"r0", "r1"}  # ties rotate


def test_affinity_yields_to_a_large_imbalance():
    router = PrefixRouter(["r0", "r1"], AffinityConfig(max_imbalance=4))
    home = router.pick(HEAD + "1", {}).replica
    other = "r1" if home == "r0" else "r0"
    assert router.pick(HEAD + "2", {home: 4, other: 0}).replica == home
    route = router.pick(HEAD + "3", {home: 5, other: 0})
    assert route.replica == other and route.reason == "least_loaded"


def test_short_matches_do_not_pin():
    router = PrefixRouter(["r0", "r1"], AffinityConfig(min_match_blocks=2))
    router.pick(HEAD[:64] + "x" * 100, {})
    route = router.pick(HEAD[:64] + "y" * 100, {})
    assert route.reason == "least_loaded"


def test_failed_replica_is_avoided_then_forgotten(monkeypatch):
    router = PrefixRouter(["r0", "r1"], AffinityConfig(failure_cooldown_s=30))
    home = router.pick(HEAD, {}).replica
    router.mark_failed(home)
    other = "r1" if home == "r0" else "r0"
    assert all(router.pick(HEAD + str(i), {}).replica == other for i in range(3))
    assert router.pick(HEAD, {}, exclude=[other]).replica == home  # the only one left is still usable
    import workers.routing as routing

    now = routing.time.monotonic()
    monkeypatch.setattr(routing.time, "monotonic", lambda: now + 31)
    assert router.healthy(home)

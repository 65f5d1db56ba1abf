"""Request durability without an engine: accepted requests are recorded before they wait, every recorded
request reaches a final state, and a dead server's requests are failed by its successor or by the lease reaper.
Runs on SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from orchestrator.controller import Controller, ReasoningRequest
from orchestrator.db.models import Server
from orchestrator.errors import Overloaded
from orchestrator.toolbox import Toolbox
from orchestrator.types import SubCall, Usage
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine
from verifiers import TaskAnswerVerifier


def _record(store, rid: str, server: str | None, state: str = "running", tenant: str | None = None) -> None:
    asyncio.run(store.requests.create(request_id=rid, model="m", strategy="s", params={}, prompt="p", server_id=server, state=state, tenant_id=tenant))


def test_a_restarted_server_fails_what_its_previous_run_left_and_nothing_else(store):
    asyncio.run(store.leases.register("a"))
    asyncio.run(store.leases.register("b"))
    _record(store, "a-running", "a")
    _record(store, "a-queued", "a", state="queued")
    _record(store, "a-done", "a")
    asyncio.run(store.requests.finish("a-done", state="succeeded", usage=Usage(1, 2, 0)))
    _record(store, "b-running", "b")
    _record(store, "legacy", None)  # recorded before server leases existed
    asyncio.run(store.requests.add_subcall("a-running", call=SubCall(0, "sample", "policy", "", 4, Usage(10, 40, 3), 0.1, "policy-0", ("stop",) * 4)))
    asyncio.run(store.requests.add_subcall("a-running", call=SubCall(1, "score", "prm", "", 1, Usage(50, 0, 0), 0.1, "prm-0", ("stop",), kind="score")))

    assert asyncio.run(store.leases.register("a")) == 3
    crashed = asyncio.run(store.requests.get("a-running"))  # its totals are what its sub-calls recorded
    assert (crashed.prompt_tokens, crashed.completion_tokens, crashed.cached_tokens, crashed.verifier_tokens) == (10, 40, 3, 50)
    for rid in ("a-running", "a-queued", "legacy"):
        rec = asyncio.run(store.requests.get(rid))
        assert rec.state == "failed" and rec.finished_at is not None, rid
        assert "restarted before this request finished" in rec.error
    assert asyncio.run(store.requests.get("a-done")).state == "succeeded"
    assert asyncio.run(store.requests.get("b-running")).state == "running"  # another live server's request is left alone
    assert asyncio.run(store.leases.register("a")) == 0


def test_the_reaper_fails_requests_of_servers_whose_lease_ran_out_and_recounts_tenants(store):
    tenant = asyncio.run(store.tenants.create("t", max_concurrent=2))
    asyncio.run(store.leases.register("dead"))
    asyncio.run(store.leases.register("alive"))
    assert asyncio.run(store.tenants.enter(tenant)) and asyncio.run(store.tenants.enter(tenant))
    _record(store, "d1", "dead", tenant=tenant)
    _record(store, "a1", "alive", tenant=tenant)
    assert not asyncio.run(store.tenants.enter(tenant))  # both slots taken
    with store.session() as s, s.begin():
        s.execute(update(Server).where(Server.id == "dead").values(heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=120)))

    assert asyncio.run(store.leases.reap(stale_after_s=60)) == 1
    d1 = asyncio.run(store.requests.get("d1"))
    assert d1.state == "failed" and "dead stopped answering" in d1.error
    assert asyncio.run(store.requests.get("a1")).state == "running"
    assert asyncio.run(store.leases.live()) == ["alive"]
    assert asyncio.run(store.tenants.enter(tenant))  # the dead server's slot came back; the live one's did not
    assert not asyncio.run(store.tenants.enter(tenant))
    assert asyncio.run(store.leases.reap(stale_after_s=60)) == 0


def test_a_stalled_server_rejoins_on_its_next_heartbeat_and_retiring_fails_its_leftovers(store):
    asyncio.run(store.leases.register("s"))
    with store.session() as s, s.begin():
        s.execute(update(Server).values(heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=120)))
    asyncio.run(store.leases.reap(stale_after_s=60))
    assert asyncio.run(store.leases.live()) == []
    asyncio.run(store.leases.heartbeat("s"))
    assert asyncio.run(store.leases.live()) == ["s"]
    _record(store, "left", "s", state="queued")
    assert asyncio.run(store.leases.retire("s")) == 1
    assert "shut down before this request finished" in asyncio.run(store.requests.get("left")).error
    assert asyncio.run(store.leases.live()) == []


def test_finishing_never_overwrites_a_final_state(store):
    _record(store, "r", "s")
    asyncio.run(store.requests.finish("r", state="succeeded", usage=Usage(1, 2, 0)))
    assert not asyncio.run(store.requests.finish_unfinished("r", state="failed", error="late"))
    assert asyncio.run(store.requests.get("r")).state == "succeeded" and asyncio.run(store.requests.get("r")).error is None


class GatedEngine(StepEngine):
    """Generation waits for ``gate``, so that requests pile up in the queue."""

    def __init__(self) -> None:
        super().__init__(depth=1)
        self.gate = asyncio.Event()

    async def generate(self, role, spec):
        await self.gate.wait()
        return await super().generate(role, spec)


def test_queued_requests_are_recorded_before_they_wait_and_all_end_final(store):
    async def go():
        engine = GatedEngine()
        ctl = Controller(
            engine=engine, store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()), models={"target": "policy"},
            max_request_tokens=10_000, max_running=1, max_queued=2, server_id="s",
        )
        req = ReasoningRequest(model="target", messages=(), prompt="Start at 3 and apply +4.\n", strategy="self_consistency", params={"n": 2})
        tasks = [asyncio.create_task(ctl.reason(req)) for _ in range(3)]
        await asyncio.sleep(0.5)
        rows = await store.requests.recent(None, limit=10)
        assert sorted(r.state for r in rows) == ["queued", "queued", "running"]
        assert all(r.server_id == "s" for r in rows)
        assert all(r.started_at is None for r in rows if r.state == "queued")
        with pytest.raises(Overloaded):
            await ctl.reason(req)
        assert len(await store.requests.recent(None, limit=10)) == 3  # the refused one left no record

        queued = next(r.id for r in rows if r.state == "queued")
        assert (await ctl.cancel(queued, None)).state == "cancelled"  # DELETE while it waits
        engine.gate.set()
        done = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if not isinstance(r, BaseException)]
        assert len(done) == 2
        states = {r.id: r for r in await store.requests.recent(None, limit=10)}
        assert sorted(r.state for r in states.values()) == ["cancelled", "succeeded", "succeeded"]
        for resp in done:
            rec = states[resp.request_id]
            assert rec.started_at is not None and rec.prompt_tokens + rec.completion_tokens == resp.usage.total_tokens > 0
        assert (ctl.admission.running, ctl.admission.queued) == (0, 0)

    asyncio.run(go())


def test_a_delete_reaching_another_server_cancels_the_request_where_it_runs(store):
    from orchestrator.errors import Conflict

    async def go():
        engine = GatedEngine()

        def controller(server: str) -> Controller:
            return Controller(
                engine=engine, store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()), models={"target": "policy"},
                max_request_tokens=10_000, server_id=server,
            )

        runs_it, other = controller("a"), controller("b")
        watch = asyncio.create_task(runs_it.watch_cancels(every_s=0.1))
        req = ReasoningRequest(model="target", messages=(), prompt="Start at 3 and apply +4.\n", strategy="self_consistency", params={"n": 2})
        call = asyncio.create_task(runs_it.reason(req))
        while not await store.requests.recent(None, limit=1):
            await asyncio.sleep(0.01)
        rid = (await store.requests.recent(None, limit=1))[0].id
        rec = await other.cancel(rid, None)  # the DELETE landed on the replica that does not run it
        assert rec.state == "cancelled" and rec.error == "cancelled by the caller" and rec.cancel_requested_at is not None
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(Conflict, match="already ended"):
            await other.cancel(rid, None)
        assert not await store.requests.request_cancel(rid)  # an ended request is never flagged again

        # A request that is not flagged is left alone by the watch.
        engine.gate.set()
        done = await runs_it.reason(req)
        assert (await store.requests.get(done.request_id)).state == "succeeded"
        watch.cancel()

    asyncio.run(go())

"""The ledger's group commit of sub-call rows, and the control-plane benchmark's instant engine through the real
service (HTTP API, controller, ledger, pool, Ray actors): every sub-call leaves its row, totals equal their sum."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from orchestrator.db.models import RequestRecord, SubCallRecord
from orchestrator.types import StrategyResult, SubCall, Usage


def _call(seq: int, *, kind: str = "generate") -> SubCall:
    return SubCall(seq, "sample", "policy" if kind == "generate" else "prm", str(seq), 2, Usage(10, 4 + seq, 3), 0.01, "policy-0", ("stop", "length"), kind=kind)


async def _request(store, request_id: str) -> None:
    await store.requests.create(request_id, model="target", strategy="beam_search", params={}, prompt="p")


def _commits(store) -> list[int]:
    seen: list[int] = []
    event.listen(store.engine, "commit", lambda conn: seen.append(1))
    return seen


def _rows(store, request_id: str) -> list[SubCallRecord]:
    with store.session() as s:
        return list(s.scalars(select(SubCallRecord).where(SubCallRecord.request_id == request_id).order_by(SubCallRecord.seq)))


def test_concurrent_subcalls_share_commits_and_each_returns_after_its_row_is_in(store):
    async def main() -> list[int]:
        await _request(store, "r1")
        commits = _commits(store)
        counts: list[int] = []

        async def one(i: int) -> None:
            await store.requests.add_subcall("r1", call=_call(i, kind="score" if i % 3 == 0 else "generate"))
            # Acknowledged means committed: a fresh session sees the row at once.
            counts.append(i in {r.seq for r in _rows(store, "r1")})

        await asyncio.gather(*(one(i) for i in range(60)))
        assert all(counts)
        return commits

    commits = asyncio.run(main())
    rows = _rows(store, "r1")
    assert [r.seq for r in rows] == list(range(60))
    assert len(commits) < 30  # 60 rows, far fewer transactions: the rows that queued during a commit went in together
    score = rows[0]
    assert (score.role, score.verifier_tokens, score.prompt_tokens, score.completion_tokens, score.cached_tokens) == ("prm", 14, 10, 4, 3)
    assert (rows[1].verifier_tokens, rows[1].finish_reasons, rows[1].n, rows[1].worker) == (0, ["stop", "length"], 2, "policy-0")
    assert all(r.created_at is not None for r in rows)


def test_a_lone_subcall_is_written_as_before(store):
    asyncio.run(_request(store, "r2"))
    commits = _commits(store)
    asyncio.run(store.requests.add_subcall("r2", call=_call(0)))  # a fresh event loop each time, as sync callers do
    asyncio.run(store.requests.add_subcall("r2", call=_call(1)))
    assert [r.seq for r in _rows(store, "r2")] == [0, 1]
    assert len(commits) == 2


def test_a_failed_batch_fails_its_callers_and_the_next_batch_goes_in(store):
    async def main() -> None:
        await _request(store, "r3")
        with pytest.raises(IntegrityError):
            await store.requests.add_subcall("no-such-request", call=_call(0))  # the foreign key refuses it
        await store.requests.add_subcall("r3", call=_call(1))

    asyncio.run(main())
    assert [r.seq for r in _rows(store, "r3")] == [1]


def test_rows_queued_by_cancelled_calls_are_in_before_the_request_ends(store):
    """A call cancelled while its row waits for the commit keeps its row, and the request's end (which reads
    its totals off the ledger) comes after it: totals equal the sum of the rows."""

    async def main() -> None:
        await _request(store, "r4")
        tasks = [asyncio.create_task(store.requests.add_subcall("r4", call=_call(i))) for i in range(20)]
        await asyncio.sleep(0)  # every row queued, the first batch under way
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await store.requests.finish_unfinished("r4", state="cancelled", error="cancelled by the caller")

    asyncio.run(main())
    rows = _rows(store, "r4")
    assert len(rows) == 20
    with store.session() as s:
        rec = s.get(RequestRecord, "r4")
        assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens) == (
            sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows), sum(r.cached_tokens for r in rows)
        )


def test_finish_waits_for_rows_still_committing(store):
    async def main() -> None:
        await _request(store, "r5")
        task = asyncio.create_task(store.requests.add_subcall("r5", call=_call(0)))
        await asyncio.sleep(0)
        task.cancel()
        await store.requests.finish("r5", state="succeeded", usage=Usage(10, 4, 3), result=StrategyResult(text="t", answer="1", finish_reason="stop"))

    asyncio.run(main())
    assert len(_rows(store, "r5")) == 1


def test_ending_a_request_does_not_wait_for_other_requests_rows(store):
    """Under steady load the writer never idles: a request's end waits for the rows queued before it only."""

    async def main() -> int:
        await _request(store, "busy")
        await _request(store, "r6")
        await store.requests.add_subcall("r6", call=_call(0))
        stop = asyncio.Event()
        seq = iter(range(10**6))

        async def producer() -> None:
            while not stop.is_set():
                await store.requests.add_subcall("busy", call=_call(next(seq)))

        producers = [asyncio.create_task(producer()) for _ in range(8)]
        await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(store.requests.finish_unfinished("r6", state="failed", error="x"), timeout=20)
            return sum(1 for p in producers if not p.done())
        finally:
            stop.set()
            await asyncio.gather(*producers)

    assert asyncio.run(main()) == 8  # the load was still running when the request ended
    with store.session() as s:
        assert s.get(RequestRecord, "r6").prompt_tokens == 10


def test_the_instant_engine_runs_the_real_service_and_the_ledger_holds_every_subcall(tmp_path):
    """beam_search and the benchmark's probe over HTTP, on instant engines in Ray actors: every engine call the
    actors answered is a ledger row, and every request's totals are the sum of its rows. In a process of its
    own: it starts and shuts down its own Ray, which must not be the test session's (its service lives on)."""
    import subprocess
    import sys

    from orchestrator.config import REPO_ROOT

    code = f"from tests.orchestrator.test_control_plane import instant_service_check; instant_service_check({str(tmp_path)!r})"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def instant_service_check(data_dir: str) -> None:
    import httpx
    import ray

    from bench.control_plane import InstantServiceThread, PROBE, actor_calls, check_ledger
    from orchestrator.config import get_settings

    svc = InstantServiceThread(get_settings(port=0, data_dir=data_dir), steps=3)
    try:
        beam = {"n": 8, "beam_width": 4, "max_steps": 4, "step_tokens": 16, "max_tokens": 64}
        bodies = [("beam_search", beam)] * 6 + [(PROBE.name, {"calls": 10, "max_tokens": 16})]
        with httpx.Client(base_url=svc.base_url, timeout=60) as client:

            def send(body: tuple[str, dict]) -> httpx.Response:
                strategy, params = body
                msg = [{"role": "user", "content": "Start at 3 and apply +4."}]
                return client.post("/v1/chat/completions", json={"model": "target", "messages": msg, "strategy": strategy, "strategy_params": params})

            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(4) as ex:
                answers = list(ex.map(send, bodies))
        assert [a.status_code for a in answers] == [200] * len(bodies), [a.text for a in answers if a.status_code != 200]
        tts = [a.json()["tts"] for a in answers]
        # 3 steps then the answer: 4 iterations of 2 generate calls (the first: 1) and 8 PRM scores.
        assert [t["subcalls"] for t in tts[:6]] == [1 + 8 + 3 * (2 + 8)] * 6
        assert tts[0]["answer"] == "42" and answers[0].json()["choices"][0]["message"]["content"].endswith("Answer: 42")
        answered = [(200, t["request_id"], t["subcalls"], 0.0) for t in tts]
        ledger = check_ledger(svc, answered)
        assert ledger["missing_rows"] == 0 and ledger["totals_mismatched"] == 0 and ledger["not_finished"] == 0
        with svc.service.store.session() as s:
            rows = s.scalar(select(func.count()).select_from(SubCallRecord))
        assert rows == ledger["subcall_rows"] == sum(t["subcalls"] for t in tts)
        assert sum(svc.run(actor_calls(svc))) == rows  # every call the engines answered was recorded, once
    finally:
        svc.stop()
        ray.shutdown()

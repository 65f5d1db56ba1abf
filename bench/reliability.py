"""Reliability of the real service under worker kills, node loss, load and a server crash.

    python -m bench.reliability soak      # 200 requests at concurrency 32; two policy workers SIGKILLed mid-run
    python -m bench.reliability nodes     # a 3-node Ray cluster (ray.cluster_utils); a node removed mid-load
    python -m bench.reliability load      # 64 concurrent clients: p50/p99 latency, throughput, errors
    python -m bench.reliability overload  # a burst of 600 against a queue of 16: 429s at once, memory flat
    python -m bench.reliability restart   # the server SIGKILLed with requests queued, then restarted
    python -m bench.reliability all       # each of the above in its own process
    python -m bench.reliability shared    # load, overload, soak and nodes on one service (what the tests run)

Everything is real: vLLM engines on the bundled `target` model in Ray actors, the HTTP API, a SQLite ledger,
and the unmodified openai SDK as the client (no retries). Each run audits the database afterwards, independently
of the service's own accounting: every request it recorded must be in a final state, and for every answered
request the usage the client got must equal the sum of the request's sub-calls in the ledger. Each scenario
writes bench/results/reliability-<scenario>.json (or ``--out``) and exits non-zero when a guarantee was broken.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional, Sequence

import httpx
import openai
import typer
from sqlalchemy import select
from tqdm import tqdm

from deploy.evaluate import load_dataset
from orchestrator.config import REPO_ROOT, Settings, get_settings
from orchestrator.db.models import RequestRecord, SubCallRecord
from orchestrator.db.store import Store
from orchestrator.evals import Item

RESULTS = REPO_ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
UNFINISHED = ("queued", "running")


@dataclass
class Outcome:
    index: int
    status: int  # 200, the HTTP error status, or 0 when no answer came back at all
    latency_s: float
    request_id: str | None = None
    usage: dict[str, Any] | None = None
    correct: bool | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------- plumbing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers_file(folder: Path, replicas: int, *, call_timeout_s: float = 120.0) -> Path:
    """The policy alone (no PRM, draft or embedder): these scenarios are about the policy's workers."""
    path = folder / "workers.toml"
    path.write_text(
        f"call_timeout_s = {call_timeout_s}\n\n[roles.policy]\n"
        f'model = "{REPO_ROOT / "models" / "target"}"\nreplicas = {replicas}\nkv_cache_gib = 1\nmax_model_len = 512\n'
    )
    return path


def service_settings(folder: Path, replicas: int, **overrides: Any) -> Settings:
    return get_settings(port=0, data_dir=folder / "data", workers_file=workers_file(folder, replicas), **overrides)


def problems(count: int) -> list[Item]:
    return list(load_dataset("task:test", problems=count).items)


def body(item: Item, params: dict[str, Any]) -> dict[str, Any]:
    return {"model": "target", "messages": [{"role": "user", "content": item.question}], "strategy": "self_consistency", "strategy_params": params}


async def drive(
    base_url: str,
    items: Sequence[Item],
    *,
    concurrency: int,
    params: dict[str, Any],
    timeout_s: float = 300.0,
    on_done: Callable[[Outcome], None] | None = None,
    label: str = "requests",
) -> list[Outcome]:
    """Send one chat completion per item, ``concurrency`` at a time, and record how each one ended."""
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=timeout_s)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items), desc=label, unit="req", leave=False)

    async def one(i: int, item: Item) -> Outcome:
        async with gate:
            t0 = time.perf_counter()
            b = body(item, params)
            try:
                resp = await client.chat.completions.create(
                    model=b["model"], messages=b["messages"], extra_body={"strategy": b["strategy"], "strategy_params": b["strategy_params"]}
                )
                d = resp.to_dict()
                out = Outcome(i, 200, time.perf_counter() - t0, resp.id, d["usage"], correct=d["tts"]["answer"] == item.answer)
            except openai.APIStatusError as err:
                out = Outcome(i, err.status_code, time.perf_counter() - t0, error=str(err.message)[:300])
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                out = Outcome(i, 0, time.perf_counter() - t0, error=f"{type(err).__name__}: {err}"[:300])
        bar.update(1)
        if on_done is not None:
            on_done(out)
        return out

    try:
        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
    finally:
        bar.close()
        await client.close()


async def drive_beside(disruption: Awaitable[None], timeout_s: float, base_url: str, items: Sequence[Item], **kwargs: Any) -> list[Outcome]:
    """:func:`drive` with ``disruption`` (kills, a node's removal) running beside it; waits up to ``timeout_s``
    after the requests for it to end."""
    task = asyncio.ensure_future(disruption)
    outcomes = await drive(base_url, items, **kwargs)
    await asyncio.wait_for(task, timeout_s)
    return outcomes


def audit(store: Store, outcomes: Sequence[Outcome], since: datetime) -> dict[str, Any]:
    """What the database says about the run, checked against what the clients got."""
    with store.session() as s:
        records = s.scalars(select(RequestRecord).where(RequestRecord.created_at >= since)).all()
        ids = [r.id for r in records]
        rows = s.execute(
            select(SubCallRecord.request_id, SubCallRecord.prompt_tokens, SubCallRecord.completion_tokens, SubCallRecord.verifier_tokens).where(
                SubCallRecord.request_id.in_(ids)
            )
        ).all() if ids else []
    generated: Counter[str] = Counter()
    verifier: Counter[str] = Counter()
    for rid, p, c, v in rows:
        if v:
            verifier[rid] += v
        else:
            generated[rid] += p + c
    by_id = {r.id: r for r in records}
    usage_mismatch = []  # the client's usage is not the ledger's
    for o in outcomes:
        if o.status != 200:
            continue
        u = o.usage or {}
        if (
            o.request_id not in by_id
            or u.get("total_tokens") != generated[o.request_id]
            or u.get("all_tokens") != generated[o.request_id] + verifier[o.request_id]
        ):
            usage_mismatch.append(o.request_id)
    # The request row's own totals against its sub-calls, for every recorded request (failed ones included).
    row_mismatch = [r.id for r in records if r.prompt_tokens + r.completion_tokens != generated[r.id] or r.verifier_tokens != verifier[r.id]]
    states = Counter(r.state for r in records)
    answered = sum(o.status == 200 for o in outcomes)
    return {
        "records": len(records),
        "states": dict(states),
        "unfinished": sum(states[s] for s in UNFINISHED),
        "failed_reasons": dict(Counter((r.error or "").split(" (")[0][:120] for r in records if r.state == "failed")),
        "usage_mismatches": usage_mismatch,
        "record_ledger_mismatches": row_mismatch,
        "answered_but_not_recorded_succeeded": sum(1 for o in outcomes if o.status == 200 and by_id.get(o.request_id or "") is not None and by_id[o.request_id or ""].state not in ("succeeded", "budget_exhausted")),
        "ledger_tokens": sum(generated.values()) + sum(verifier.values()),
        "answered": answered,
    }


def latency_summary(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    ok = sorted(o.latency_s for o in outcomes if o.status == 200)
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) >= 2 else ok * 99
    return {
        "requests": len(outcomes),
        "succeeded": len(ok),
        "errors": dict(Counter(str(o.status) for o in outcomes if o.status != 200)),
        "lost": sum(o.status == 0 for o in outcomes),
        "p50_s": round(q[49], 3) if ok else None,
        "p99_s": round(q[98], 3) if ok else None,
        "max_s": round(ok[-1], 3) if ok else None,
        "throughput_rps": round(len(ok) / wall_s, 3),
        "accuracy": round(sum(bool(o.correct) for o in outcomes if o.status == 200) / max(1, len(ok)), 3),
        "wall_s": round(wall_s, 1),
    }


def measured(store: Store, run: Callable[[], Awaitable[list[Outcome]]]) -> dict[str, Any]:
    """Run the requests of one scenario: their latency, the ledger's audit of them, and the ones that failed."""
    since = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    outcomes = asyncio.run(run())
    wall = time.perf_counter() - t0
    return {
        "latency": latency_summary(outcomes, wall),
        "audit": audit(store, outcomes, since),
        "outcomes": [asdict(o) for o in outcomes if o.status != 200],
    }


def verdict(report: dict[str, Any], *, allow_errors: bool) -> list[str]:
    """The guarantees, as a list of what was broken (empty: all held)."""
    a, lat = report["audit"], report["latency"]
    broken = []
    if lat["lost"]:
        broken.append(f"{lat['lost']} request(s) got no answer at all")
    if a["unfinished"]:
        broken.append(f"{a['unfinished']} recorded request(s) left queued or running")
    if a["usage_mismatches"]:
        broken.append(f"usage returned differs from the ledger for {len(a['usage_mismatches'])} request(s)")
    if a["record_ledger_mismatches"]:
        broken.append(f"request totals differ from their sub-calls for {len(a['record_ledger_mismatches'])} request(s)")
    if a["answered_but_not_recorded_succeeded"]:
        broken.append("answered requests not recorded as succeeded")
    if not allow_errors and lat["errors"]:
        broken.append(f"errors: {lat['errors']}")
    return broken


def write(report: dict[str, Any], out: Path | None, name: str) -> Path:
    path = out or RESULTS / f"reliability-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "outcomes"}, indent=2, default=str))
    return path


def finish(report: dict[str, Any], out: Path | None, name: str, *, allow_errors: bool, extra: Sequence[str] = ()) -> None:
    report["broken"] = verdict(report, allow_errors=allow_errors) + list(extra)
    path = write(report, out, name)
    if report["broken"]:
        typer.echo(f"{name}: guarantees broken: {'; '.join(report['broken'])} (details in {path})", err=True)
        raise typer.Exit(1)


@contextmanager
def local_service(settings: Settings) -> Iterator[Any]:
    from deploy.serve import ServiceThread

    svc = ServiceThread(settings)
    try:
        yield svc
    finally:
        svc.stop()


@contextmanager
def cluster(nodes: int, *, cpus_per_node: int = 1) -> Iterator[Any]:
    """A Ray cluster of ``nodes`` nodes on this machine (Ray's own test utility), each with its own agent port
    so that it can run beside another Ray instance on the same machine."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_worker_niceness", "0")  # engines beside a busy driver must not be starved
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node, "dashboard_agent_listen_port": free_port(), "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            c.add_node(num_cpus=cpus_per_node, dashboard_agent_listen_port=free_port())
        c.wait_for_nodes()
        yield c
    finally:
        import ray

        ray.shutdown()
        c.shutdown()


def wait_restarted(handle: Any, timeout_s: float = 300) -> None:
    """Block until the actor answers again with its engine loaded (Ray reports it unavailable meanwhile)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(handle.start.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (RayActorError, GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _params(n: int, max_tokens: int) -> dict[str, Any]:
    return {"n": n, "max_tokens": max_tokens, "temperature": 0.8}


# ---------------------------------------------------------------------------------------------- scenarios


cli = typer.Typer(add_completion=False, help=__doc__)


@cli.command()
def soak(
    requests: int = typer.Option(200, help="Requests to send."),
    concurrency: int = typer.Option(32, help="Requests in flight at once."),
    kills: int = typer.Option(2, help="Policy workers to SIGKILL, evenly spread over the run."),
    replicas: int = typer.Option(2, help="Policy replicas."),
    n: int = typer.Option(4, help="self_consistency samples per request."),
    max_tokens: int = typer.Option(128, help="Most tokens per sample."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default bench/results/reliability-soak.json)."),
) -> None:
    """Worker kills under sustained load: no request lost, every record final, the ledger exact."""
    folder = Path(tempfile.mkdtemp(prefix="soak"))
    with cluster(1, cpus_per_node=2) as c, local_service(service_settings(folder, replicas, ray_address=c.address, max_running=concurrency)) as svc:
        report = soak_on(svc, requests=requests, concurrency=concurrency, kills=kills, n=n, max_tokens=max_tokens)
    shutil.rmtree(folder, ignore_errors=True)
    # A request may fail with a clear reason (its call and the one retry both hit dying workers); none may vanish.
    finish(report, out, "soak", allow_errors=True)


def soak_on(svc: Any, *, requests: int, concurrency: int, kills: int, n: int, max_tokens: int) -> dict[str, Any]:
    import ray

    items = problems(requests)
    pool = svc.service.pool
    names = pool.replica_names("policy")
    marks = [requests * (k + 1) // (kills + 1) for k in range(kills)]
    done = 0
    kill_log: list[dict[str, Any]] = []
    due = asyncio.Queue[int]()

    def on_done(_: Outcome) -> None:
        nonlocal done
        done += 1
        if marks and done >= marks[0]:
            due.put_nowait(marks.pop(0))

    async def back(handle: Any, entry: dict[str, Any], t_kill: float) -> None:
        await asyncio.to_thread(wait_restarted, handle)
        entry["back_after_s"] = round(time.perf_counter() - t_kill, 1)
        entry["new_pid"] = await asyncio.to_thread(lambda: ray.get(handle.pid.remote(), timeout=60))

    async def killer() -> None:
        restarts = []
        for k in range(kills):
            at = await due.get()
            name = names[k % len(names)]
            handle = pool.replica(name).handle
            pid = await asyncio.to_thread(lambda: ray.get(handle.pid.remote(), timeout=60))
            os.kill(pid, signal.SIGKILL)
            entry: dict[str, Any] = {"replica": name, "pid": pid, "after_completed": at}
            kill_log.append(entry)
            restarts.append(asyncio.create_task(back(handle, entry, time.perf_counter())))
            # A replica is always up: with more replicas than kills the next kill need not wait for this
            # restart (the engines then reload side by side); with as many, it waits.
            if len(names) <= kills:
                await restarts[-1]
        await asyncio.gather(*restarts)

    result = measured(svc.service.store, lambda: drive_beside(killer(), 600, svc.base_url, items, concurrency=concurrency, params=_params(n, max_tokens), on_done=on_done, label="soak"))
    return {
        "scenario": "soak",
        "config": {"requests": requests, "concurrency": concurrency, "kills": kills, "replicas": len(names), "n": n, "max_tokens": max_tokens},
        "kills": kill_log,
        **result,
    }


@cli.command()
def nodes(
    requests: int = typer.Option(160, help="Requests to send."),
    concurrency: int = typer.Option(16, help="Requests in flight at once."),
    n: int = typer.Option(4, help="self_consistency samples per request."),
    max_tokens: int = typer.Option(128, help="Most tokens per sample."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default bench/results/reliability-nodes.json)."),
) -> None:
    """Three nodes, one policy replica each; a worker node is removed a quarter of the way through."""
    folder = Path(tempfile.mkdtemp(prefix="nodes"))
    with cluster(3) as c, local_service(service_settings(folder, 3, ray_address=c.address, max_running=concurrency)) as svc:
        report, extra = nodes_on(svc, c, requests=requests, concurrency=concurrency, n=n, max_tokens=max_tokens)
    shutil.rmtree(folder, ignore_errors=True)
    finish(report, out, "nodes", allow_errors=True, extra=extra)


def nodes_on(svc: Any, c: Any, *, requests: int, concurrency: int, n: int, max_tokens: int) -> tuple[dict[str, Any], list[str]]:
    """The node-loss scenario on a running service of three replicas over ``c``'s three nodes: the report and
    what broke beyond the common guarantees."""
    import ray

    items = problems(requests)
    pool = svc.service.pool
    names = pool.replica_names("policy")

    def placement(avoid: str | None = None, timeout_s: float = 300) -> dict[str, str]:
        """Where each replica runs; with ``avoid``, wait until none is reported on that (removed) node:
        Ray restarts a replica lost with its node on a surviving one."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = {}
            for name in names:
                handle = pool.replica(name).handle
                wait_restarted(handle)
                out[name] = ray.get(handle.node_id.remote(), timeout=60)
            if avoid not in out.values() or time.monotonic() > deadline:
                return out
            time.sleep(1)

    before = placement()
    workers = [node for node in c.worker_nodes if node.node_id in before.values()]
    victim = workers[0] if workers else None
    removed: dict[str, Any] = {}
    mark = requests // 4
    done = 0
    fire = asyncio.Event()

    def on_done(_: Outcome) -> None:
        nonlocal done
        done += 1
        if done == mark:
            fire.set()

    async def remover() -> None:
        await fire.wait()
        if victim is None:
            return
        hosted = [name for name, node in before.items() if node == victim.node_id]
        removed.update({"node": victim.node_id[:12], "replicas_on_it": hosted, "after_completed": done})
        t = time.perf_counter()
        await asyncio.to_thread(c.remove_node, victim, False)
        removed.update({"completed_when_gone": done, "remove_s": round(time.perf_counter() - t, 1)})

    result = measured(svc.service.store, lambda: drive_beside(remover(), 120, svc.base_url, items, concurrency=concurrency, params=_params(n, max_tokens), on_done=on_done, label="nodes"))
    after = placement(avoid=victim.node_id if victim else None)
    short = lambda p: {k: v[:12] for k, v in p.items()}  # noqa: E731
    report = {
        "scenario": "nodes",
        "config": {"nodes": 3, "requests": requests, "concurrency": concurrency, "replicas": len(names), "n": n, "max_tokens": max_tokens},
        "placement_before": short(before),
        "distinct_nodes_before": len(set(before.values())),
        "removed": removed,
        "placement_after": short(after),
        **result,
    }
    extra = []
    if report["distinct_nodes_before"] < 3:
        extra.append(f"replicas did not spread over the three nodes: {report['placement_before']}")
    if not removed.get("replicas_on_it"):
        extra.append("no node holding a replica was removed")
    elif removed["completed_when_gone"] >= requests:
        extra.append("the node was gone only after the load had ended: send more requests")
    elif set(report["placement_after"].values()) & {removed["node"]}:
        extra.append("the lost replica was not restarted on a surviving node")
    return report, extra


@cli.command()
def load(
    clients: int = typer.Option(64, help="Concurrent clients."),
    per_client: int = typer.Option(4, help="Requests each client sends, one after the other."),
    replicas: int = typer.Option(2, help="Policy replicas."),
    n: int = typer.Option(4, help="self_consistency samples per request."),
    max_tokens: int = typer.Option(128, help="Most tokens per sample."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default bench/results/reliability-load.json)."),
) -> None:
    """``clients`` clients at once against one server: latency percentiles, throughput, and no errors."""
    folder = Path(tempfile.mkdtemp(prefix="load"))
    with cluster(1, cpus_per_node=2) as c, local_service(service_settings(folder, replicas, ray_address=c.address)) as svc:
        report = load_on(svc, clients=clients, per_client=per_client, n=n, max_tokens=max_tokens)
    shutil.rmtree(folder, ignore_errors=True)
    finish(report, out, "load", allow_errors=False)


def load_on(svc: Any, *, clients: int, per_client: int, n: int, max_tokens: int) -> dict[str, Any]:
    items = problems(clients * per_client)
    result = measured(svc.service.store, lambda: drive(svc.base_url, items, concurrency=clients, params=_params(n, max_tokens), label="load"))
    return {
        "scenario": "load",
        "config": {"clients": clients, "per_client": per_client, "replicas": len(svc.service.pool.replica_names("policy")), "n": n, "max_tokens": max_tokens},
        **result,
    }


@cli.command()
def overload(
    requests: int = typer.Option(600, help="Requests sent all at once."),
    max_running: int = typer.Option(8, help="TTS_MAX_RUNNING."),
    max_queued: int = typer.Option(16, help="TTS_MAX_QUEUED."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default bench/results/reliability-overload.json)."),
) -> None:
    """A burst far past the queue: what fits runs, the rest is refused at once with 429 and Retry-After,
    refused requests leave no record, and memory does not grow with the burst."""
    folder = Path(tempfile.mkdtemp(prefix="overload"))
    settings = service_settings(folder, 1, max_running=max_running, max_queued=max_queued)
    with cluster(1, cpus_per_node=2) as c, local_service(settings.model_copy(update={"ray_address": c.address})) as svc:
        report, extra = overload_on(svc, requests=requests)
    shutil.rmtree(folder, ignore_errors=True)
    finish(report, out, "overload", allow_errors=True, extra=extra)


def overload_on(svc: Any, *, requests: int) -> tuple[dict[str, Any], list[str]]:
    """Two bursts of ``requests`` against a running service, after a warm-up of one run slot's worth."""
    import resource

    admission = svc.service.controller.admission
    max_running, max_queued = admission.max_running, admission.max_queued
    items = problems(requests)
    refused: list[tuple[float, int]] = []  # (seconds to the answer, Retry-After)

    async def burst(n: int, label: str) -> list[Outcome]:
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=300, limits=httpx.Limits(max_connections=n)) as client:

            async def one(i: int, item: Item) -> Outcome:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body(item, _params(4, 64)))
                except httpx.HTTPError as err:
                    return Outcome(i, 0, time.perf_counter() - t0, error=type(err).__name__)
                dt = time.perf_counter() - t0
                if r.status_code == 429:
                    refused.append((dt, int(r.headers.get("retry-after", "0"))))
                d = r.json() if r.status_code == 200 else {}
                return Outcome(i, r.status_code, dt, d.get("id"), d.get("usage"), correct=(d.get("tts") or {}).get("answer") == item.answer if d else None)

            return list(await asyncio.gather(*(one(i, it) for i, it in enumerate(items[:n]))))

    asyncio.run(burst(max_running, "warm-up"))  # first requests load caches; not part of the measurement
    refused.clear()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    since = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    outcomes = asyncio.run(burst(requests, "burst"))
    wall = time.perf_counter() - t0
    outcomes2 = asyncio.run(burst(requests, "burst again"))
    rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    statuses = Counter(o.status for o in outcomes)
    report = {
        "scenario": "overload",
        "config": {"requests": requests, "max_running": max_running, "max_queued": max_queued},
        "statuses": {str(k): v for k, v in statuses.items()},
        "statuses_second_burst": {str(k): v for k, v in Counter(o.status for o in outcomes2).items()},
        "refused_p50_s": round(statistics.median([d for d, _ in refused]), 3) if refused else None,
        "refused_p99_s": round(statistics.quantiles([d for d, _ in refused], n=100, method="inclusive")[98], 3) if len(refused) > 1 else None,
        "retry_after_range": [min((r for _, r in refused), default=0), max((r for _, r in refused), default=0)],
        "peak_rss_growth_mib_over_both_bursts": round((rss2 - rss0) / 1024, 1),
        "latency": latency_summary(outcomes, wall),
        "audit": audit(svc.service.store, outcomes + outcomes2, since),
    }
    extra = []
    if statuses[200] < max_running or set(statuses) - {200, 429}:
        extra.append(f"statuses {dict(statuses)}: expected at least {max_running} answers and only 429 beyond")
    if report["audit"]["records"] != report["audit"]["answered"]:
        extra.append("refused requests left records")
    if report["retry_after_range"][0] < 1:
        extra.append("a 429 without Retry-After")
    return report, extra


@cli.command()
def shared(
    out: Optional[Path] = typer.Option(None, help="Result JSON of all four (default: bench/results/reliability-<scenario>.json each)."),
) -> None:
    """load, overload, soak and nodes one after the other on one service over a 3-node cluster (one policy
    replica per node; TTS_MAX_RUNNING 32, TTS_MAX_QUEUED 48), at the sizes the test suite checks: each scenario
    alone pays a cluster and its engines' start, most of its time on two cores."""
    folder = Path(tempfile.mkdtemp(prefix="shared"))
    reports: dict[str, dict[str, Any]] = {}
    with cluster(3) as c, local_service(service_settings(folder, 3, ray_address=c.address, max_running=32, max_queued=48)) as svc:
        # Nodes last: it leaves the cluster a node short. Soak before it: its kills restart replicas in place.
        reports["load"] = load_on(svc, clients=64, per_client=2, n=4, max_tokens=128)
        reports["load"]["broken"] = verdict(reports["load"], allow_errors=False)
        report, extra = overload_on(svc, requests=480)
        report["broken"] = verdict(report, allow_errors=True) + extra
        reports["overload"] = report
        reports["soak"] = soak_on(svc, requests=200, concurrency=32, kills=2, n=4, max_tokens=128)
        reports["soak"]["broken"] = verdict(reports["soak"], allow_errors=True)
        report, extra = nodes_on(svc, c, requests=160, concurrency=16, n=4, max_tokens=128)
        report["broken"] = verdict(report, allow_errors=True) + extra
        reports["nodes"] = report
    shutil.rmtree(folder, ignore_errors=True)
    if out is None:
        for name, report in reports.items():
            write(report, None, name)
    else:
        write(reports, out, "shared")
    broken = {name: r["broken"] for name, r in reports.items() if r["broken"]}
    if broken:
        typer.echo(f"guarantees broken: {broken}", err=True)
        raise typer.Exit(1)


@contextmanager
def ray_head(folder: Path) -> Iterator[str]:
    """`ray start --head` in its own session and temp dir, stopped by process group (never `ray stop`, which
    would stop every Ray instance on the machine)."""
    temp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    # Token auth off here and in _server: this measures failures, not auth (tests/evals walks the token path).
    env = {**os.environ, "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--include-dashboard=false",
           f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, stdout=(folder / "ray.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(head, 30)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(proc: subprocess.Popen[Any], grace_s: float, sig: int = signal.SIGTERM) -> int | None:
    try:
        os.killpg(proc.pid, sig)
        return proc.wait(grace_s)
    except ProcessLookupError:
        return proc.poll()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


def _server(folder: Path, port: int, ray_address: str, max_running: int) -> subprocess.Popen[Any]:
    env = {
        **os.environ,
        "TTS_RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "disabled",
        "TTS_MAX_RUNNING": str(max_running),
        "TTS_WORKERS_FILE": str(workers_file(folder, 1)),
        "TTS_DATA_DIR": str(folder / "data"),
    }
    log = (folder / "server.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "deploy.serve", "--port", str(port)], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(url: str, proc: subprocess.Popen[Any], folder: Path, timeout_s: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); its log:\n{(folder / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer /healthz within {timeout_s:.0f} s")


@cli.command()
def restart(
    requests: int = typer.Option(8, help="Requests in flight when the server is killed."),
    max_running: int = typer.Option(2, help="TTS_MAX_RUNNING: the rest of the requests wait in the queue."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default bench/results/reliability-restart.json)."),
) -> None:
    """The server process is SIGKILLed while requests run and wait; restarted on the same database, it
    must leave none of them queued or running, and serve again."""
    folder = Path(tempfile.mkdtemp(prefix="restart"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    items = problems(requests + 2)
    store = Store.from_url(f"sqlite:///{folder / 'data' / 'tts.db'}")
    report: dict[str, Any] = {"scenario": "restart", "config": {"requests": requests, "max_running": max_running}}
    with ray_head(folder) as address:
        server = _server(folder, port, address, max_running)
        try:
            report["start_s"] = round(_wait_healthy(url, server, folder), 1)
            # Long requests (the widest TTS_LIMIT_WIDTH allows), so that some run and the rest queue behind
            # them when the server dies. With 16 samples a request ended in about 0.4 s, and the requests
            # reached the server up to 0.5 s apart (a client per call builds its own SSL context under the
            # GIL; the server shares 2 cores with the engine), so a kill once found all 8 answered before a
            # poll saw one running and one waiting. One client for all threads removes the first delay.
            slow = _params(64, 256)
            client_errors: list[str] = []
            client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=requests))

            def send(item: Item) -> None:
                try:
                    client.post(url + "/v1/chat/completions", json=body(item, slow))
                except httpx.HTTPError as err:
                    client_errors.append(type(err).__name__)

            threads = [threading.Thread(target=send, args=(it,), daemon=True) for it in items[:requests]]
            sent_at = datetime.now(timezone.utc)
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while True:
                states = Counter(r.state for r in asyncio.run(store.requests.recent(None, limit=100)))
                if (states["running"] >= 1 and states["queued"] >= 1) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            _stop_group(server, 10, signal.SIGKILL)
            report["at_kill"] = dict(states)

            def since(t: datetime | None) -> float | None:
                return None if t is None else round((t.replace(tzinfo=timezone.utc) - sent_at).total_seconds(), 2)

            report["timeline_s"] = [[since(r.created_at), since(r.started_at), since(r.finished_at)] for r in reversed(asyncio.run(store.requests.recent(None, limit=100)))]
            for t in threads:
                t.join(30)
            client.close()
            report["clients_saw"] = dict(Counter(client_errors))
            held = [r.id for r in asyncio.run(store.requests.recent(None, limit=100)) if r.state in UNFINISHED]
            report["unfinished_after_kill"] = len(held)

            server = _server(folder, port, address, max_running)
            report["restart_s"] = round(_wait_healthy(url, server, folder), 1)
            after = [asyncio.run(store.requests.get(rid)) for rid in held]
            report["after_restart"] = dict(Counter(r.state for r in after if r is not None))
            report["reasons"] = sorted({r.error or "" for r in after if r is not None})
            report["unfinished_after_restart"] = sum(1 for r in asyncio.run(store.requests.recent(None, limit=100)) if r.state in UNFINISHED)
            served = [httpx.post(url + "/v1/chat/completions", json=body(it, _params(4, 64)), timeout=300).status_code for it in items[requests:]]
            report["served_after_restart"] = served
            report["graceful_exit_code"] = _stop_group(server, 60, signal.SIGTERM)
            report["leases_after_exit"] = asyncio.run(store.leases.live())
        finally:
            _stop_group(server, 30)
    store.engine.dispose()
    broken = []
    if not (report["at_kill"].get("running") and report["at_kill"].get("queued")):
        broken.append(f"the kill did not catch requests both running and queued: {report['at_kill']}")
    if report["unfinished_after_restart"]:
        broken.append(f"{report['unfinished_after_restart']} request(s) still queued or running after the restart")
    if set(report["after_restart"]) - {"failed"} or not all("restarted" in r for r in report["reasons"]):
        broken.append(f"interrupted requests not failed with the reason: {report['after_restart']} {report['reasons']}")
    if report["served_after_restart"] != [200] * len(report["served_after_restart"]):
        broken.append(f"the restarted server did not serve: {report['served_after_restart']}")
    # A graceful stop exits 128 + the signal's number, as a shell reports it (deploy.serve records the signal).
    if report["graceful_exit_code"] != 128 + signal.SIGTERM or report["leases_after_exit"]:
        broken.append(f"graceful stop: exit code {report['graceful_exit_code']}, leases left {report['leases_after_exit']}")
    report["broken"] = broken
    path = write(report, out, "restart")
    shutil.rmtree(folder, ignore_errors=True)
    if broken:
        typer.echo(f"restart: guarantees broken: {'; '.join(broken)} (details in {path})", err=True)
        raise typer.Exit(1)


@cli.command()
def table() -> None:
    """Print the table of docs/reliability.md from bench/results/reliability-*.json."""
    rows = ["| scenario | what happened | requests | answered | lost | left unfinished | usage ≠ ledger | p50 / p99 latency | throughput |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ("soak", "nodes", "load", "overload"):
        path = RESULTS / f"reliability-{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        lat, a, cfg = d["latency"], d["audit"], d["config"]
        if name == "soak":
            k = d["kills"]
            what = (f"{cfg['replicas']} policy replicas, concurrency {cfg['concurrency']}; "
                    + ", ".join(f"`{x['replica']}` SIGKILLed after {x['after_completed']} answers (back in {x['back_after_s']:.0f} s)" for x in k))
        elif name == "nodes":
            r = d["removed"]
            what = (f"3-node cluster, one replica per node ({d['distinct_nodes_before']} nodes used), concurrency {cfg['concurrency']}; the node "
                    f"holding `{r['replicas_on_it'][0]}` removed after {r['after_completed']} answers, that replica restarted on a surviving node")
        elif name == "load":
            what = f"{cfg['clients']} concurrent clients, {cfg['per_client']} requests each, {cfg['replicas']} replicas; errors: {sum(lat['errors'].values())}"
        else:
            what = (f"a burst against `TTS_MAX_RUNNING={cfg['max_running']}`, `TTS_MAX_QUEUED={cfg['max_queued']}`: {d['statuses'].get('429', 0)} refused with 429 "
                    f"(`Retry-After` {d['retry_after_range'][0]}-{d['retry_after_range'][1]} s; time to the refusal p50 {d.get('refused_p50_s') or 0:.1f} s, "
                    f"p99 {d['refused_p99_s']:.1f} s), none recorded; peak memory +{d['peak_rss_growth_mib_over_both_bursts']:.0f} MiB over it and a second burst")
        rows.append(
            f"| {name} | {what} | {lat['requests']} | {lat['succeeded']} | {lat['lost']} | {a['unfinished']} | {len(a['usage_mismatches'])} "
            f"| {lat['p50_s']:.1f} / {lat['p99_s']:.1f} s | {lat['throughput_rps']:.1f} req/s |"
        )
    print("\n".join(rows))


@cli.command(name="all")
def run_all() -> None:
    """Every scenario in its own process (each starts its own Ray cluster), with the default sizes."""
    failed = [name for name in ("soak", "nodes", "load", "overload", "restart") if subprocess.call([sys.executable, "-m", "bench.reliability", name], cwd=REPO_ROOT) != 0]
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    cli()

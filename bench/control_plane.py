"""Control-plane overhead: the real service (HTTP API, controller, budget, ledger, pool, Ray actors) over engines
that answer at once, so that everything measured is the service's own cost.

    python -m bench.control_plane                      # SQLite and PostgreSQL, writes bench/results/control_plane.json
    python -m bench.control_plane --db sqlite          # one database (`postgres` starts a throwaway server)
    python -m bench.control_plane --db postgres --postgres-url postgresql+psycopg://...   # an existing server

Every role (``policy``, ``prm``) is served by :mod:`workers.instant` engines: held by the same Ray actor as a
vLLM engine (``workers.actor.EngineActor``), reached through the same ``ActorBackend``, pool and routing. The
service is assembled by ``deploy.assembly.build_service``, as ``deploy.serve`` assembles it, plus one benchmark
strategy (the probe).

Two numbers, per database:

- **Sub-calls per second** one API process sustains: ``--concurrency`` clients (a separate process, so that
  the client's work is not the server's) send ``beam_search`` requests (n 8, beam width 4, ``--steps`` steps:
  each step is 2 generate calls and 8 PRM scoring calls, about 10 x steps sub-calls a request) through
  ``POST /v1/chat/completions`` for ``--requests`` requests. The rate is the ledger rows those requests left
  divided by the wall time from the first request sent to the last answer received.
- **Overhead per sub-call** (p50 / p99): the wall time of one ``ctx.generate`` or ``ctx.score`` as a strategy
  sees it, from the call to its return, with nothing else running (one request at a time, its sub-calls one
  after another: the probe strategy, alternating a policy generate and a PRM score). That is budget
  admission, the pool's routing, the Ray actor call there and back (serialisation included), the instant
  engine's own answer (microseconds: its share is measured inside the actor and reported), the sub-call's
  accounting, its metrics and its ledger write, awaited as the strategy awaits it. Also reported: the same
  calls' times while the throughput load runs (``overhead_loaded``), which adds waiting for the one event loop.

Also reported: the API process's CPU time per sub-call during the load (its client and engines are other
processes; the machine's other load inflates it least), the load average, and the bare Ray floor (the same
instant actor called straight from an event loop, no service: what one Ray round trip costs here).
``--label`` names the run; the results file keeps one report per label (``before``, ``after``, ...).

Every run also checks the ledger: every answered request has as many sub-call rows as its response counted,
and its recorded totals equal the sum of those rows. A run that finds a missing row fails.

Goal (issue 25): at least 1000 sub-calls/s and a p50 overhead of at most 2 ms on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import multiprocessing
import os
import platform
import pstats
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from functools import partial
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager

from pydantic import Field

from bench import commit
from deploy.serve import ServiceThread
from orchestrator.config import REPO_ROOT, Settings, get_settings
from orchestrator.context import StrategyContext
from orchestrator.strategy import StrategySpec
from orchestrator.types import Problem, SamplingSpec, ScoreSpec, StrategyResult
from strategies.params import Sampling

log = logging.getLogger(__name__)
RESULTS = REPO_ROOT / "bench" / "results" / "control_plane.json"

# ------------------------------------------------------------------------------------------ the probe strategy

# Wall time of every sub-call the probe made in this process, in seconds (the service runs in this process).
PROBE_TIMES: list[float] = []


class ProbeParams(Sampling):
    calls: int = Field(100, ge=1, le=10_000, description="Sub-calls, one after another, alternating generate and score.")


async def probe(problem: Problem, ctx: StrategyContext, params: ProbeParams) -> StrategyResult:
    """``calls`` sub-calls one after another, each timed from the strategy's call to its return."""
    text = ""
    for i in range(params.calls):
        t0 = time.perf_counter()
        if i % 2 == 0:
            gen = await ctx.generate(SamplingSpec(problem.prompt, n=1, max_tokens=params.max_tokens, temperature=params.temperature), stage="probe")
            text = gen.completions[0].text
        else:
            await ctx.score(ScoreSpec(problem.prompt + text, start=0), stage="probe_score")
        PROBE_TIMES.append(time.perf_counter() - t0)
    return StrategyResult(text=text, answer=ctx.extract(text), finish_reason="stop")


PROBE = StrategySpec(
    name="control_plane_probe",
    params=ProbeParams,
    run=probe,
    summary="benchmark probe: sequential sub-calls, each timed",
    worst_case=lambda p: p.calls * (p.max_tokens + 256),
)

# ------------------------------------------------------------------------------------------ the service


def own_ray() -> None:
    """Start a Ray instance of this benchmark's own (``address="local"``): never join a cluster already running
    on the machine (``RAY_ADDRESS`` or ``/tmp/ray/ray_current_cluster``), whose other load would be measured
    and whose actors this run must not disturb."""
    import ray

    if ray.is_initialized():
        return
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_worker_niceness", "0")  # as workers.cluster.connect_ray starts a local one
    # On a loaded machine the node's dashboard agent can take longer than the raylet's default 15 s wait.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    ray.init(address="local", include_dashboard=False, configure_logging=False)


def instant_workers() -> Any:
    from workers.config import PoolConfig, RoleConfig

    roles = {"policy": RoleConfig(model=REPO_ROOT / "models" / "target"), "prm": RoleConfig(model=REPO_ROOT / "models" / "prm")}
    return PoolConfig(roles=roles, call_timeout_s=60.0)


async def start_instant_service(settings: Settings, *, steps: int) -> Any:
    """The service as ``deploy.assembly.build_service`` assembles it, every role served by instant engines
    (:class:`workers.instant.InstantSpec`) instead of the roles' vLLM engines, plus the probe strategy."""
    from deploy.assembly import build_service
    from strategies import REGISTRY
    from workers.instant import InstantConfig, InstantSpec
    from workers.pool import WorkerPool

    config = instant_workers()
    specs = [InstantSpec.from_config(role, rc, config=InstantConfig(steps=steps)) for role, rc in config.roles.items()]
    pool = await WorkerPool.start(specs, call_timeout_s=config.call_timeout_s)
    settings = settings if settings.server_id else settings.model_copy(update={"server_id": f"bench-{uuid.uuid4().hex[:6]}"})
    return await build_service(settings, pool=pool, workers=config, strategies={**REGISTRY, PROBE.name: PROBE})


class BenchServiceThread(ServiceThread):
    """A benchmark's service on its own event loop in a thread, HTTP on loopback."""

    def call(self, fn: Any) -> None:
        """Run ``fn()`` on the service's loop thread (a profiler must be enabled in the thread it profiles)."""

        async def go() -> None:
            fn()

        self.run(go())


class InstantServiceThread(BenchServiceThread):
    """The instant-engine service."""

    def __init__(self, settings: Settings, *, steps: int) -> None:
        super().__init__(settings.model_copy(update={"port": 0}), start=lambda s: start_instant_service(s, steps=steps))


# ------------------------------------------------------------------------------------------ PostgreSQL


def postgres_server(*, synchronous_commit: str = "on") -> ContextManager[str]:
    """A throwaway PostgreSQL cluster on loopback (the test suite's, from the Debian binaries) with its default
    durability (fsync and synchronous commit on: the benchmark must pay what production pays), or
    ``synchronous_commit`` off to measure what waiting for the WAL flush costs."""
    from tests.pg import postgres_server as cluster

    return cluster(f"-c synchronous_commit={synchronous_commit}")


# ------------------------------------------------------------------------------------------ the load


def _body(strategy: str, params: dict[str, Any], i: int) -> dict[str, Any]:
    question = f"Start at {10 + i % 80} and apply +{i % 7 + 1}, *3, -5."
    return {"model": "target", "messages": [{"role": "user", "content": question}], "strategy": strategy, "strategy_params": params}


# Request i's body (a picklable function: the driver runs in a process of its own).
Load = Callable[[int], dict[str, Any]]


def load_of(strategy: str, params: dict[str, Any]) -> Load:
    """Every request ``strategy`` with ``params`` (the bundled task's questions)."""
    return partial(_body, strategy, params)


def drive(base_url: str, body: Load, requests: int, concurrency: int, out: Any) -> None:
    """Send ``requests`` requests (request i's body is ``body(i)``), ``concurrency`` at a time; put ``(wall_s,
    [(status, request_id, subcalls, latency_s)])`` on ``out``. Runs in a process of its own."""
    import httpx

    async def main() -> tuple[float, list[tuple[int, str, int, float]]]:
        todo = iter(range(requests))
        done: list[tuple[int, str, int, float]] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:

            async def worker() -> None:
                for i in todo:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/chat/completions", json=body(i))
                    tts = r.json().get("tts", {}) if r.status_code == 200 else {}
                    if r.status_code != 200:
                        log.warning("request %d: HTTP %d %s", i, r.status_code, r.text[:300])
                    done.append((r.status_code, tts.get("request_id", ""), int(tts.get("subcalls", 0)), time.perf_counter() - t0))

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - t0, done

    out.put(asyncio.run(main()))


def run_load(base_url: str, body: Load, *, requests: int, concurrency: int) -> tuple[float, list[tuple[int, str, int, float]]]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=drive, args=(base_url, body, requests, concurrency, out), daemon=True)
    proc.start()
    try:
        result = out.get(timeout=900)
    finally:
        proc.join(30)
    return result


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


# ------------------------------------------------------------------------------------------ checks


def check_ledger(svc: ServiceThread, answered: list[tuple[int, str, int, float]]) -> dict[str, Any]:
    """Every answered request's ledger: as many sub-call rows as its response counted, totals equal to their sum."""
    from sqlalchemy import case, func, select

    from orchestrator.db.models import RequestRecord, SubCallRecord

    ids = [rid for status, rid, _, _ in answered if status == 200]
    want = {rid: n for status, rid, n, _ in answered if status == 200}
    with svc.service.store.session() as s:
        rows = dict(s.execute(select(SubCallRecord.request_id, func.count()).where(SubCallRecord.request_id.in_(ids)).group_by(SubCallRecord.request_id)).all())
        sums = {
            r[0]: tuple(r[1:])
            for r in s.execute(
                select(
                    SubCallRecord.request_id,
                    func.sum(case((SubCallRecord.verifier_tokens == 0, SubCallRecord.prompt_tokens), else_=0)),
                    func.sum(case((SubCallRecord.verifier_tokens == 0, SubCallRecord.completion_tokens), else_=0)),
                    func.sum(SubCallRecord.verifier_tokens),
                )
                .where(SubCallRecord.request_id.in_(ids))
                .group_by(SubCallRecord.request_id)
            ).all()
        }
        totals = {
            r.id: (r.prompt_tokens, r.completion_tokens, r.verifier_tokens, r.state)
            for r in s.scalars(select(RequestRecord).where(RequestRecord.id.in_(ids)))
        }
    missing = sum(max(0, want[rid] - rows.get(rid, 0)) for rid in ids)
    mismatched = [rid for rid in ids if totals.get(rid, (None,) * 4)[:3] != tuple(int(x) for x in sums.get(rid, (0, 0, 0)))]
    unfinished = [rid for rid in ids if totals.get(rid, (0, 0, 0, "?"))[3] not in ("succeeded", "budget_exhausted")]
    return {
        "requests": len(ids),
        "failed_requests": len(answered) - len(ids),
        "subcall_rows": sum(rows.values()),
        "subcalls_reported": sum(want.values()),
        "missing_rows": missing,
        "totals_mismatched": len(mismatched),
        "not_finished": len(unfinished),
    }


# ------------------------------------------------------------------------------------------ one database


def bench_one(
    db: str,
    url: str,
    args: argparse.Namespace,
    *,
    service: Callable[[Settings], BenchServiceThread] | None = None,
    load: Load | None = None,
    settings: dict[str, Any] | None = None,
    observe: Callable[[BenchServiceThread], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Overhead and throughput on one database (``url``; "" for SQLite in a fresh data directory): the service
    ``service`` starts (default: instant engines), loaded with ``load`` (default: beam search, ``args.steps``).
    ``observe`` snapshots the service right before and after the throughput load (``observed`` in the result)."""
    own_ray()  # before ServiceThread, whose start_ray then finds this process already in it
    data = Path(tempfile.mkdtemp(prefix="tts-bench-cp-"))
    config = get_settings(**{"port": 0, "data_dir": data, "database_url": url, "max_running": args.concurrency, "max_queued": 4 * args.concurrency, **(settings or {})})
    svc = (service or (lambda s: InstantServiceThread(s, steps=args.steps)))(config)
    if load is None:
        load = load_of("beam_search", {"n": 8, "beam_width": 4, "max_steps": args.steps + 1, "step_tokens": 16, "max_tokens": 64})
    try:
        run_load(svc.base_url, load, requests=max(4, args.concurrency), concurrency=args.concurrency)  # warm-up

        # Overhead: one request at a time, its sub-calls one after another.
        PROBE_TIMES.clear()
        idle: list[tuple[int, str, int, float]] = []
        for _ in range(args.probe_requests):
            _, got = run_load(svc.base_url, load_of(PROBE.name, {"calls": args.probe_calls, "max_tokens": 16}), requests=1, concurrency=1)
            idle += got
        idle_times = PROBE_TIMES[:]

        # Throughput: beam search at the given concurrency; probe sub-calls timed alongside it.
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            svc.call(profiler.enable)
        PROBE_TIMES.clear()
        prober = None
        if args.loaded_probe:  # one more client, sending probe requests one at a time while the load runs
            spawn = multiprocessing.get_context("spawn")
            probe_out = spawn.Queue()  # never read: the prober is stopped mid-run; its times are PROBE_TIMES
            probe = load_of(PROBE.name, {"calls": 200, "max_tokens": 16})
            prober = spawn.Process(target=drive, args=(svc.base_url, probe, 10**6, 1, probe_out), daemon=True)
            prober.start()
        observed = {"before": observe(svc)} if observe is not None else None
        load_before = os.getloadavg()[0]
        cpu0 = time.process_time()
        try:
            wall, answered = run_load(svc.base_url, load, requests=args.requests, concurrency=args.concurrency)
            cpu = time.process_time() - cpu0  # this process is the API server (its client and engines run elsewhere)
        finally:
            if prober is not None:
                prober.terminate()
                prober.join(10)
        loaded_times = PROBE_TIMES[:]
        if observed is not None and observe is not None:
            observed["after"] = observe(svc)
        if profiler is not None:
            svc.call(profiler.disable)
            profiler.dump_stats(args.profile + f".{db}")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        ledger = check_ledger(svc, answered + idle)
        engine_calls = sum(svc.run(actor_calls(svc)))
    finally:
        svc.stop()
        import ray

        ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)
    rows = sum(n for status, _, n, _ in answered if status == 200)
    latencies = [lat for status, _, _, lat in answered if status == 200]
    result = {
        "db": db,
        "subcalls_per_s": round(rows / wall, 1),
        "requests_per_s": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 2),
        "requests": len(answered),
        "subcalls": rows,
        "subcalls_per_request": round(rows / max(1, len(latencies)), 1),
        "request_latency_s": {"p50": round(pct(latencies, 0.5), 4), "p99": round(pct(latencies, 0.99), 4)},
        "overhead_ms": {"p50": round(1e3 * pct(idle_times, 0.5), 3), "p99": round(1e3 * pct(idle_times, 0.99), 3), "mean": round(1e3 * statistics.fmean(idle_times), 3), "calls": len(idle_times)},
        # CPU the API process spent per sub-call during the load: what bounds one API process on a free core,
        # and what the machine's other load (the load averages) does not inflate, unlike the wall times.
        "api_cpu_ms_per_subcall": round(1e3 * cpu / max(1, rows), 3),
        "load_average": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)},
        "ledger": ledger,
        "engine_calls": engine_calls,
    }
    if observed is not None:
        result["observed"] = observed
    if loaded_times:
        result["overhead_loaded_ms"] = {"p50": round(1e3 * pct(loaded_times, 0.5), 3), "p99": round(1e3 * pct(loaded_times, 0.99), 3), "calls": len(loaded_times)}
    return result


async def actor_calls(svc: ServiceThread) -> list[int]:
    pool = svc.service.pool
    return [await pool.replica(name).handle.calls.remote() for role in pool.roles() for name in pool.replica_names(role)]


def ray_floor(calls: int = 3000) -> dict[str, Any]:
    """Bare Ray: ``calls`` generate calls on one instant actor straight from an event loop (no service), one
    at a time and 32 at a time, with the caller's CPU per call: the floor under the service's own numbers."""
    import ray

    from workers.actor import spawn_engine_actor
    from workers.instant import InstantConfig, InstantEngine
    own_ray()
    actor = spawn_engine_actor(partial(InstantEngine, InstantConfig(), "floor"), "floor", max_concurrency=1000)
    spec = SamplingSpec("<|user|>\nStart at 3 and apply +4.\n<|assistant|>\n", n=4, max_tokens=16, stop=("\n",))

    async def run(concurrency: int) -> dict[str, float]:
        async def one(k: int) -> None:
            for _ in range(k):
                await actor.call.remote("generate", spec)

        await one(50)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(calls // concurrency) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        done = calls // concurrency * concurrency
        return {"calls_per_s": round(done / wall, 1), "caller_cpu_ms_per_call": round(1e3 * cpu / done, 3)}

    try:
        ray.get(actor.start.remote())
        return {"sequential": asyncio.run(run(1)), "concurrency_32": asyncio.run(run(32)), "load_average": round(os.getloadavg()[0], 1)}
    finally:
        ray.kill(actor)
        ray.shutdown()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres-url", default=None, help="An existing PostgreSQL database (default: start a throwaway server).")
    parser.add_argument(
        "--pg-synchronous-commit", choices=("on", "off"), default="on",
        help="The throwaway server's synchronous_commit (off: commits do not wait for the WAL flush; measures that wait).",
    )
    parser.add_argument("--requests", type=int, default=300, help="beam_search requests in the throughput run.")
    parser.add_argument("--concurrency", type=int, default=32, help="Requests in flight at once in the throughput run.")
    parser.add_argument("--steps", type=int, default=4, help="Steps of every instant solution (beam search runs steps + 1 iterations).")
    parser.add_argument("--probe-requests", type=int, default=5, help="Probe requests (one at a time) for the idle overhead.")
    parser.add_argument("--probe-calls", type=int, default=200, help="Sequential sub-calls per probe request.")
    parser.add_argument("--loaded-probe", action=argparse.BooleanOptionalAction, default=True, help="Time probe sub-calls during the throughput run.")
    parser.add_argument("--profile", default=None, help="cProfile the service's event-loop thread during the throughput run into PATH.<db>.")
    parser.add_argument("--label", default="", help="A label stored with the results (e.g. before / after).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    floor = ray_floor()
    runs: list[dict[str, Any]] = []
    if args.db in ("sqlite", "both"):
        runs.append(bench_one("sqlite", "", args))  # "": the default SQLite file under the run's data dir
    if args.db in ("postgres", "both"):
        if args.postgres_url:
            runs.append(bench_one("postgres", args.postgres_url, args))
        else:
            with postgres_server(synchronous_commit=args.pg_synchronous_commit) as url:
                runs.append(bench_one("postgres", url, args))
    report = {
        "benchmark": "control_plane",
        "label": args.label,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python -m bench.control_plane " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "workload": {"strategy": "beam_search", "n": 8, "beam_width": 4, "steps": args.steps, "concurrency": args.concurrency, "requests": args.requests},
        "postgres_synchronous_commit": args.pg_synchronous_commit if not args.postgres_url else "as the server says",
        "goal": {"subcalls_per_s": 1000, "overhead_p50_ms": 2.0},
        "ray_floor": floor,
        "runs": runs,
    }
    print(f"bare Ray actor calls: {floor}")
    for r in runs:
        print(
            f"{r['db']:8s} {r['subcalls_per_s']:8.1f} sub-calls/s  API CPU {r['api_cpu_ms_per_subcall']:.3f} ms/sub-call  overhead p50 {r['overhead_ms']['p50']:.3f} ms  p99 {r['overhead_ms']['p99']:.3f} ms  "
            f"loaded p50 {r.get('overhead_loaded_ms', {}).get('p50', float('nan')):.3f} ms  ledger {r['ledger']}"
        )
    # The file keeps one report per label (before / after ...): a run replaces only its own label's.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        reports = json.loads(args.out.read_text()).get("reports", {})
    except (OSError, ValueError, AttributeError):
        reports = {}
    reports[args.label or "latest"] = report
    args.out.write_text(json.dumps({"benchmark": "control_plane", "reports": reports}, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

"""Every strategy at the scale of DeepSeek-R1-Distill-Qwen-1.5B on one H100, on synthetic engines: SIMULATED.

    python -m bench.real_scale                              # everything (about 30 min on 2 cores), bench/results/real_scale.json
    python -m bench.real_scale --parts table mechanisms     # any of: table mechanisms control
    python -m bench.real_scale --problems 48 --tree-problems 8 --time-scale 0.05 --db sqlite

The service runs as ``deploy.serve`` assembles it (``deploy.assembly.build_service``: HTTP API, controller, budget,
ledger, pool), every role a :mod:`workers.synthetic` engine in its own Ray actor: the policy ``r1-1.5b-h100``
(R1-Distill's format and lengths, Qwen2.5-1.5B on an H100, accuracy 0.839), a tag PRM ``prm-7b-h100`` (step AUROC
0.85) and, for ATTS, a draft of accuracy 0.70 whose modeled time per token is 1/8 of the policy's. **Everything it
reports is simulated**: the control logic runs for real, the engines are modeled; accuracies and AUROCs are
inputs, token counts and modeled GPU times follow from the strategies' own calls (``workers.sim``).

Three parts:

- ``table``: every strategy with its defaults, ``--problems`` problems one request at a time (so that each
  request's engine time, KV peak and service CPU are its own): answered share, simulated accuracy, policy and
  PRM tokens, sequential tokens, peak KV blocks (vLLM's measure: the most blocks in use at any step; for ETS and
  REBASE also the reference's, frontier nodes and their tokens), modeled engine time (GPU seconds of every
  role), wall time (engines sleeping ``--time-scale`` of their modeled time), and the service's own CPU time in
  the API process as a share of the modeled engine time.
- ``mechanisms``: the papers' claims as ratios: FFS against self-consistency at equal n (tokens, GPU time,
  latency); ETS against REBASE at width 16 and 64 (``--tree-problems`` problems at once: KV peak, frontier,
  throughput in problems per modeled second); ER-PRM against beam search (FLOPs: 2 x parameters x tokens
  computed, policy and PRM, at their accuracies); ATTS against the target alone (self-consistency at ATTS's n)
  with the draft at 1/8 of the target's cost per token.
- ``control``: the control plane at GPU speed: engines that do not sleep (``time_scale`` 0), one API process,
  a mix of self-consistency, beam search and ETS requests from a client process, on SQLite and PostgreSQL:
  sub-calls per second, overhead per sub-call (p50/p99, ``bench.control_plane``'s probe), and the engines'
  modeled capacity for the same work (sub-calls per modeled GPU second of the busiest engine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

from bench import commit
from bench.control_plane import PROBE, BenchServiceThread, bench_one, own_ray, postgres_server
from deploy.assembly import build_service
from deploy.calibrate import collect
from orchestrator.config import REPO_ROOT, Settings, get_settings
from orchestrator.controller import ReasoningRequest
from orchestrator.profile import BUNDLED
from strategies import REGISTRY, atts
from workers.config import PoolConfig
from workers.sim.world import World
from workers.synthetic import PRESETS, WRITING_OF, synthetic_question, synthetic_workers

log = logging.getLogger(__name__)
RESULTS = REPO_ROOT / "bench" / "results" / "real_scale.json"
CAVEAT = "SIMULATED: synthetic engines on a modeled H100 (workers.synthetic); accuracies and AUROCs are inputs, not measurements"
PROFILE = "r1-distill"
POLICY, PRM = "r1-1.5b-h100", "prm-7b-h100"
DRAFT = "r1-1.5b-h100?accuracy=0.70&time_factor=0.125"  # the draft at 1/8 of the target's modeled cost per token
PARAMS = {"policy": PRESETS[POLICY].shape.params, "draft": PRESETS[POLICY].shape.params, "prm": PRESETS[PRM].shape.params}
HELD_OUT = 100_000  # calibration problems start here, far from the measured ones


def workers(*, time_scale: float, world: int) -> PoolConfig:
    return synthetic_workers(PROFILE, policy=POLICY, draft=DRAFT, prm=PRM, keys=f"time_scale={time_scale}&world={world}", call_timeout_s=3600)


def start(settings: Settings, config: PoolConfig) -> BenchServiceThread:
    """The service over ``config``'s synthetic engines, as ``deploy.serve`` assembles it, plus the probe strategy."""

    async def build(s: Settings) -> Any:
        s = s if s.server_id else s.model_copy(update={"server_id": f"bench-{uuid.uuid4().hex[:6]}"})
        return await build_service(s, workers=config, profile=BUNDLED[PROFILE], strategies={**REGISTRY, PROBE.name: PROBE})

    return BenchServiceThread(settings.model_copy(update={"port": 0}), start=build)


SETTINGS: dict[str, Any] = {"clusterer": "lexical", "max_request_tokens": 1_000_000_000, "max_running": 512, "max_queued": 4096}

# ------------------------------------------------------------------------------------------ one request, measured


async def measured(svc: BenchServiceThread, strategy: str, index: int, params: dict[str, Any], world: World) -> dict[str, Any]:
    """One request alone: its result and cost, and what the engines did meanwhile (their stats before and after)."""
    service = svc.service
    before = {s.worker: s for s in await service.pool.stats()}  # also resets every engine's KV peak
    question = synthetic_question(index, world=world.seed)
    req = ReasoningRequest(model="target", messages=({"role": "user", "content": question},), strategy=strategy, params=params)
    c0, t0 = time.process_time(), time.perf_counter()
    r = await service.controller.reason(req)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = {s.worker: s for s in await service.pool.stats()}
    trace = [t for t in r.result.trace if isinstance(t, dict)]
    frontier = {k: max((int(t[k]) for t in trace if k in t), default=None) for k in ("frontier_nodes", "frontier_tokens", "live_nodes", "retained_tokens")}
    return {
        "problem": index,
        "answered": r.result.answer is not None,
        "right": r.result.answer == world.gold(question),
        "finish": r.result.finish_reason,
        "policy_tokens": r.usage.total_tokens,
        "prm_tokens": r.verifier_tokens,
        "sequential_tokens": r.sequential_tokens,
        "subcalls": r.subcalls,
        "by_role": {role: [u.prompt_tokens, u.cached_tokens, u.completion_tokens] for role, u in r.totals.by_role.items()},
        "modeled_s": {w: round(after[w].modeled_s - before[w].modeled_s, 4) for w in after},
        "kv_peak": {w: after[w].kv_blocks_peak for w in after},
        **{k: v for k, v in frontier.items() if v is not None},
        "wall_s": round(wall, 4),
        "api_cpu_s": round(cpu, 4),
    }


def flops(row: dict[str, Any]) -> float:
    """2 x parameters x tokens computed (prompt tokens not served from the cache, and generated ones), every role."""
    return sum(2.0 * PARAMS.get(role, PARAMS["policy"]) * (p - c + g) for role, (p, c, g) in row["by_role"].items())


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A strategy's row of the table: shares, means per problem, and the service's CPU over the engines' time."""
    n = len(rows)
    mean = lambda k: statistics.fmean(r[k] for r in rows)  # noqa: E731
    modeled = [sum(r["modeled_s"].values()) for r in rows]
    right = sum(r["right"] for r in rows)
    out: dict[str, Any] = {
        "problems": n,
        "answered": round(sum(r["answered"] for r in rows) / n, 3),
        "accuracy_simulated": round(right / n, 3),
        "accuracy_se": round(math.sqrt(max(right / n * (1 - right / n), 1e-9) / n), 3),
        "policy_tokens": round(mean("policy_tokens")),
        "prm_tokens": round(mean("prm_tokens")),
        "sequential_tokens": round(mean("sequential_tokens")),
        "kv_peak_blocks": round(statistics.fmean(r["kv_peak"].get("policy-0", 0) for r in rows)),
        "prm_kv_peak_blocks": round(statistics.fmean(r["kv_peak"].get("prm-0", 0) for r in rows)),
        "modeled_engine_s": round(statistics.fmean(modeled), 2),
        "modeled_by_role_s": {w: round(statistics.fmean(r["modeled_s"].get(w, 0.0) for r in rows), 2) for w in rows[0]["modeled_s"]},
        "wall_s": round(mean("wall_s"), 3),
        "api_cpu_s": round(mean("api_cpu_s"), 3),
        "overhead_share": round(sum(r["api_cpu_s"] for r in rows) / max(sum(modeled), 1e-9), 4),
        "subcalls": round(mean("subcalls")),
        "tflops": round(statistics.fmean(flops(r) for r in rows) / 1e12, 1),
    }
    for k in ("frontier_nodes", "frontier_tokens", "live_nodes", "retained_tokens"):
        if all(k in r for r in rows):
            out[k] = round(statistics.fmean(r[k] for r in rows), 1)
    return out


# ------------------------------------------------------------------------------------------ the parts


def calibrate(svc: BenchServiceThread, problems: int, world: int) -> dict[str, int]:
    """ATTS's calibration sets (line and reference chunks) from held-out problems, as ``deploy.calibrate`` builds them."""
    service = svc.service
    sizes = {}
    for mode in ("line", "reference"):
        params = atts.Params.model_validate({"n": 1, "max_turns": 4, "seed": 0, "mode": mode}, context={"profile": service.controller.tools.profile})
        questions = [synthetic_question(HELD_OUT + i, world=world) for i in range(problems)]
        scores = svc.run(collect(service.pool, questions, params, tools=service.controller.tools, target_model="target", progress=False), timeout=3600)
        name = atts.calibration_name(service.controller.tools.draft_model or "draft", "target", params.dataset, params.chunking)
        sizes[name] = svc.run(service.store.calibration.add_scores(name, scores=scores, model="draft->target", keep=atts.CALIBRATION_WINDOW))
    return sizes


@contextmanager
def serving(time_scale: float, args: argparse.Namespace) -> Iterator[BenchServiceThread]:
    """The benchmark's service with engines sleeping ``time_scale`` of their modeled time, ATTS calibrated."""
    own_ray()
    data = Path(tempfile.mkdtemp(prefix="tts-bench-real-"))
    svc = start(get_settings(port=0, data_dir=data, **SETTINGS), workers(time_scale=time_scale, world=args.world))
    try:
        calibrate(svc, args.calibration_problems, args.world)
        yield svc
    finally:
        svc.stop()
        import ray

        ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)


def run_table(
    svc: BenchServiceThread,
    world: World,
    problems: Sequence[int],
    extra: dict[str, tuple[str, dict[str, Any]]],
    *,
    configs: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Every strategy with its defaults and the ``extra`` configurations (or only ``configs``), one request at a time."""
    rows: dict[str, list[dict[str, Any]]] = {}
    chosen = configs if configs is not None else {**{name: (name, {}) for name in sorted(REGISTRY)}, **extra}
    for label, (strategy, params) in chosen.items():
        t0 = time.perf_counter()
        rows[label] = [svc.run(measured(svc, strategy, i, params, world), timeout=3600) for i in problems]
        s = summary(rows[label])
        print(
            f"{label:28s} answered {s['answered']:.2f} acc {s['accuracy_simulated']:.2f} policy {s['policy_tokens']:>8d} prm {s['prm_tokens']:>8d} "
            f"modeled {s['modeled_engine_s']:8.1f}s wall {s['wall_s']:6.2f}s overhead {s['overhead_share']:.4f}  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return {"summary": {k: summary(v) for k, v in rows.items()}, "rows": rows}


async def batch(svc: BenchServiceThread, strategy: str, params: dict[str, Any], problems: Sequence[int], world: World) -> dict[str, Any]:
    """``problems`` at once: the engines' makespan (modeled), KV peak and the requests' frontier figures."""
    service = svc.service
    before = {s.worker: s for s in await service.pool.stats()}
    questions = [synthetic_question(i, world=world.seed) for i in problems]
    reqs = [ReasoningRequest(model="target", messages=({"role": "user", "content": q},), strategy=strategy, params=params) for q in questions]
    t0 = time.perf_counter()
    out = await asyncio.gather(*(service.controller.reason(r) for r in reqs))
    wall = time.perf_counter() - t0
    after = {s.worker: s for s in await service.pool.stats()}
    policy = after["policy-0"].modeled_s - before["policy-0"].modeled_s
    traces = [[t for t in r.result.trace if isinstance(t, dict)] for r in out]
    peak = lambda k: statistics.fmean(max((int(t[k]) for t in tr if k in t), default=0) for tr in traces)  # noqa: E731
    right = sum(r.result.answer == world.gold(q) for r, q in zip(out, questions))
    return {
        "problems": len(problems),
        "accuracy_simulated": round(right / len(problems), 3),
        "answered": round(sum(r.result.answer is not None for r in out) / len(problems), 3),
        "kv_peak_blocks": after["policy-0"].kv_blocks_peak,
        "frontier_nodes": round(peak("frontier_nodes"), 1),
        "frontier_tokens": round(peak("frontier_tokens"), 1),
        "live_nodes": round(peak("live_nodes"), 1),
        "policy_makespan_s": round(policy, 2),
        "prm_s": round(after["prm-0"].modeled_s - before["prm-0"].modeled_s, 2),
        "throughput_per_modeled_s": round(len(problems) / max(policy + after["prm-0"].modeled_s - before["prm-0"].modeled_s, 1e-9), 4),
        "policy_tokens": round(statistics.fmean(r.usage.total_tokens for r in out)),
        "prm_tokens": round(statistics.fmean(r.verifier_tokens for r in out)),
        "wall_s": round(wall, 2),
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def mechanisms(table: dict[str, Any], trees: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    """The papers' claims as ratios (this implementation's figure over the baseline's), each with whether the
    ratios go the way the paper claims (``realized``); why not, where not, is in bench/README.md."""
    s = table["summary"]
    lat = {k: v["modeled_latency_s"] for k, v in latency.items()}
    beam, er, alone = s["beam_search"], s["early_rejection"], s["target_alone_n4"]
    out: dict[str, Any] = {}
    # A race's losers generate until the abort reaches the engine: at a small time scale that reaction is a
    # long modeled time. So FFS's tokens and GPU time are read from the latency run, where it is short.
    for label in ("first_finish", "first_finish_sync"):
        f, sc = latency[label], latency["self_consistency"]
        m = {
            "tokens": ratio(f["policy_tokens"], sc["policy_tokens"]),
            "gpu_time": ratio(f["modeled_engine_s"], sc["modeled_engine_s"]),
            "latency": ratio(lat.get(label, 0.0), lat.get("self_consistency", 0.0)),
            "accuracy": [f["accuracy_simulated"], sc["accuracy_simulated"]],
        }
        m["realized"] = bool(m["tokens"] is not None and m["tokens"] < 1 and m["latency"] is not None and m["latency"] < 1)
        out[f"{label}_vs_self_consistency_n8"] = m
    gap = abs(er["accuracy_simulated"] - beam["accuracy_simulated"])
    m = {
        "flops": ratio(er["tflops"], beam["tflops"]),
        "policy_tokens": ratio(er["policy_tokens"], beam["policy_tokens"]),
        "prm_tokens": ratio(er["prm_tokens"], beam["prm_tokens"]),
        "accuracy": [er["accuracy_simulated"], beam["accuracy_simulated"]],
        "accuracy_se": [er["accuracy_se"], beam["accuracy_se"]],
    }
    m["realized"] = bool(m["flops"] is not None and m["flops"] < 1 and gap <= 2 * math.hypot(er["accuracy_se"], beam["accuracy_se"]) + 1e-9)
    out["er_prm_vs_beam_search"] = m
    for label in ("atts", "atts_reference"):
        a = s[label]
        m = {
            "gpu_time": ratio(a["modeled_engine_s"], alone["modeled_engine_s"]),
            "target_gpu_time": ratio(a["modeled_by_role_s"].get("policy-0", 0.0), alone["modeled_by_role_s"].get("policy-0", 0.0)),
            "latency": ratio(lat.get(label, 0.0), lat.get("target_alone_n4", 0.0)),
            "accuracy": [a["accuracy_simulated"], alone["accuracy_simulated"]],
            "draft_cost_per_token": 0.125,
        }
        m["realized"] = bool(m["latency"] is not None and m["latency"] < 1 and m["gpu_time"] is not None and m["gpu_time"] < 1)
        out[f"{label}_vs_target_alone"] = m
    for width in sorted({int(k.split("@")[1]) for k in trees}):
        e, r = trees[f"ets@{width}"], trees[f"rebase@{width}"]
        m = {
            "kv_peak_blocks": ratio(e["kv_peak_blocks"], r["kv_peak_blocks"]),
            "frontier_nodes": ratio(e["frontier_nodes"], r["frontier_nodes"]),
            "frontier_tokens": ratio(e["frontier_tokens"], r["frontier_tokens"]),
            "throughput": ratio(e["throughput_per_modeled_s"], r["throughput_per_modeled_s"]),
            "accuracy": [e["accuracy_simulated"], r["accuracy_simulated"]],
        }
        m["realized"] = bool((m["kv_peak_blocks"] or 2) < 1 and (m["throughput"] or 0) > 1)
        out[f"ets_vs_rebase_width{width}"] = m
    return out


def mix_body(world: int, i: int) -> dict[str, Any]:
    """Request i of the control-plane load: self-consistency, beam search and ETS in turn, defaults, R1 scale."""
    strategy = ("self_consistency", "beam_search", "ets")[i % 3]
    question = synthetic_question(200_000 + i, world=world)
    return {"model": "target", "messages": [{"role": "user", "content": question}], "strategy": strategy, "strategy_params": {}}


def control(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The control plane at GPU speed (engines that do not sleep) on each database (``bench.control_plane.bench_one``)."""
    cp = argparse.Namespace(
        requests=args.control_requests, concurrency=args.control_concurrency, probe_requests=3, probe_calls=100, loaded_probe=True, profile=None, steps=0
    )
    config = workers(time_scale=0.0, world=args.world)

    def observe(svc: BenchServiceThread) -> dict[str, Any]:
        return {s.worker: s.modeled_s for s in svc.run(svc.service.pool.stats())}

    def one(db: str, url: str) -> dict[str, Any]:
        r = bench_one(db, url, cp, service=lambda s: start(s, config), load=partial(mix_body, args.world), settings=SETTINGS, observe=observe)
        busy = {w: r["observed"]["after"][w] - r["observed"]["before"].get(w, 0.0) for w in r["observed"]["after"]}
        capacity = r["subcalls"] / max(max(busy.values()), 1e-9)
        r["engine_modeled_s"] = {w: round(v, 2) for w, v in busy.items()}
        r["engine_capacity_subcalls_per_s"] = round(capacity, 1)
        r["api_cpu_utilisation"] = round(r["api_cpu_ms_per_subcall"] * r["subcalls_per_s"] / 1000, 3)
        print(
            f"control {db:8s} {r['subcalls_per_s']:8.1f} sub-calls/s (engines could take {capacity:.0f}/s), API CPU {r['api_cpu_ms_per_subcall']:.3f} ms/sub-call "
            f"({r['api_cpu_utilisation']:.0%} of a core), overhead p50 {r['overhead_ms']['p50']:.2f} ms p99 {r['overhead_ms']['p99']:.2f} ms, ledger {r['ledger']}",
            flush=True,
        )
        return r

    runs = []
    if args.db in ("sqlite", "both"):
        runs.append(one("sqlite", ""))
    if args.db in ("postgres", "both"):
        with postgres_server() as url:
            runs.append(one("postgres", url))
    return runs


# ------------------------------------------------------------------------------------------ the report


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(str(c) for c in r) + " |" for r in rows), ""]


def markdown(report: dict[str, Any]) -> str:
    """The tables of bench/README.md (every figure simulated; the heading says so)."""
    lines = [f"### Every strategy at R1-Distill-1.5B scale on one H100: {CAVEAT}", ""]
    lines += [f"`{report['command']}` on {report['date']}, commit {report['commit']}, {report['machine']}; time scale {report['time_scale']}.", ""]
    table = report.get("table", {}).get("summary", {})
    lines += _table(
        ["strategy", "answered", "accuracy (simulated)", "policy tokens", "PRM tokens", "sequential tokens", "peak KV blocks (vLLM)",
         "frontier nodes / tokens (reference)", "modeled engine s", "wall s", "service CPU / engine time"],
        [
            [name, f"{s['answered']:.2f}", f"{s['accuracy_simulated']:.2f}", f"{s['policy_tokens']:,}", f"{s['prm_tokens']:,}", f"{s['sequential_tokens']:,}",
             f"{s['kv_peak_blocks']:,}", f"{s['frontier_nodes']:.0f} / {s['frontier_tokens']:.0f}" if "frontier_nodes" in s else "",
             f"{s['modeled_engine_s']:.1f}", f"{s['wall_s']:.2f}", f"{100 * s['overhead_share']:.2f}%"]
            for name, s in table.items()
        ],
    ) if table else []
    trees = report.get("trees", {})
    lines += _table(
        ["tree search, problems at once", "accuracy (simulated)", "peak KV blocks (vLLM)", "frontier nodes / tokens (reference)", "policy makespan s", "PRM s", "problems per modeled s"],
        [
            [f"{name} x {t['problems']}", f"{t['accuracy_simulated']:.2f}", f"{t['kv_peak_blocks']:,}", f"{t['frontier_nodes']:.0f} / {t['frontier_tokens']:.0f}",
             f"{t['policy_makespan_s']:.1f}", f"{t['prm_s']:.1f}", f"{t['throughput_per_modeled_s']:.4f}"]
            for name, t in trees.items()
        ],
    ) if trees else []
    latency = report.get("latency", {})
    lines += _table(
        [f"at time scale {report.get('latency_scale')}", "modeled latency s (wall / scale)", "policy tokens", "modeled engine s", "accuracy (simulated)"],
        [[f"{name} x {v['problems']}", f"{v['modeled_latency_s']:.1f}", f"{v['policy_tokens']:,}", f"{v['modeled_engine_s']:.1f}", f"{v['accuracy_simulated']:.2f}"] for name, v in latency.items()],
    ) if latency else []
    mech = report.get("mechanisms", {})
    lines += _table(
        ["mechanism (simulated)", "ratios (over the baseline)", "accuracy (simulated)", "realized"],
        [
            [name, ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("accuracy", "accuracy_se", "realized") and v is not None), m.get("accuracy"), "yes" if m["realized"] else "no"]
            for name, m in mech.items()
        ],
    ) if mech else []
    runs = report.get("control_plane", [])
    lines += _table(
        ["database", "sub-calls/s (one API process)", "API CPU per sub-call", "overhead p50 / p99", "engines' modeled capacity", "ledger"],
        [
            [r["db"], f"{r['subcalls_per_s']:.0f}", f"{r['api_cpu_ms_per_subcall']:.2f} ms ({100 * r['api_cpu_utilisation']:.0f}% of a core)",
             f"{r['overhead_ms']['p50']:.2f} / {r['overhead_ms']['p99']:.2f} ms", f"{r['engine_capacity_subcalls_per_s']:,.0f} sub-calls/s",
             f"{r['ledger']['missing_rows']} missing, {r['ledger']['totals_mismatched']} mismatched"]
            for r in runs
        ],
    ) if runs else []
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("table", "mechanisms", "control"), default=["table", "mechanisms", "control"])
    parser.add_argument("--problems", type=int, default=32, help="Problems per strategy in the table (one request at a time).")
    parser.add_argument("--tree-problems", type=int, default=6, help="Problems run at once per ETS / REBASE width.")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--time-scale", type=float, default=0.02, help="Share of the modeled time the engines sleep (table and mechanisms).")
    parser.add_argument("--world", type=int, default=0, help="The synthetic world's seed (its problems).")
    parser.add_argument("--calibration-problems", type=int, default=32)
    parser.add_argument("--latency-scale", type=float, default=0.5, help="Time scale of the latency comparisons (FFS, ATTS).")
    parser.add_argument("--latency-problems", type=int, default=6)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both", help="Databases of the control-plane part.")
    parser.add_argument("--control-requests", type=int, default=30)
    parser.add_argument("--control-concurrency", type=int, default=15)
    parser.add_argument("--rows", action="store_true", help="Keep every request's own figures in the results file (large).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report: dict[str, Any] = {
        "benchmark": "real_scale",
        "caveat": CAVEAT,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python -m bench.real_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "time_scale": args.time_scale,
        "roles": {"policy": POLICY, "draft": DRAFT, "prm": PRM, "profile": PROFILE, "world": args.world},
    }
    world = World(WRITING_OF[PROFILE], BUNDLED[PROFILE], seed=args.world)
    n_atts = atts.Params.model_validate({}, context={"profile": BUNDLED[PROFILE]}).n
    # Beside the defaults: the target alone at ATTS's n, FFS in lockstep (one streamed call), ATTS's reference chunks.
    extra = {"target_alone_n4": ("self_consistency", {"n": n_atts}), "first_finish_sync": ("first_finish", {"mode": "sync"}), "atts_reference": ("atts", {"mode": "reference"})}
    if "table" in args.parts or "mechanisms" in args.parts:
        with serving(args.time_scale, args) as svc:
            report["table"] = run_table(svc, world, list(range(args.problems)), extra)
            if "mechanisms" in args.parts:
                trees: dict[str, Any] = {}
                for width in args.widths:
                    for name in ("rebase", "ets"):
                        trees[f"{name}@{width}"] = svc.run(batch(svc, name, {"width": width}, list(range(args.tree_problems)), world), timeout=7200)
                        print(f"{name}@{width}: {trees[f'{name}@{width}']}", flush=True)
                report["trees"] = trees
    if "mechanisms" in args.parts:
        # Latency: engines sleeping most of their modeled time, so a request's wall time is its modeled critical path.
        with serving(args.latency_scale, args) as svc:
            chosen = {k: v for k, v in {**{n: (n, {}) for n in ("self_consistency", "first_finish", "atts")}, **extra}.items()}
            lat = run_table(svc, world, list(range(args.latency_problems)), {}, configs=chosen)
            report["latency"] = {k: {**v, "modeled_latency_s": round(v["wall_s"] / args.latency_scale, 2)} for k, v in lat["summary"].items()}
            report["latency_scale"] = args.latency_scale
        report["mechanisms"] = mechanisms(report["table"], report.get("trees", {}), report["latency"])
    if "control" in args.parts:
        report["control_plane"] = control(args)
    if not args.rows and "table" in report:
        report["table"] = {"summary": report["table"]["summary"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()

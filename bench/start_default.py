"""First and warm starts of the default deployment with the README's own command, ``bash deploy/run.sh``.

    python -m bench.start_default [--runs 3] [--port 8000] [--repo DIR]

Each run is a first start (a fresh data directory, so fresh compile caches: vLLM's and Inductor's live
under it) and then a warm start (the same data directory again), both of ``bash deploy/run.sh`` (installed:
its install step is a no-op) with ``TTS_DATA_DIR`` set, everything else the defaults: policy, draft, PRM and
embedder. From the moment the command is spawned:

- ``serving_s``: the log's "service ready" line and ``/healthz`` answering: the policy's strategies are
  served (the policy's engine is ready);
- ``policy_answer_s``: a self-consistency request (n 4) sent then has its answer;
- ``all_ready_s``: ``/healthz`` says every engine is ready: every strategy is served; a best-of-n request
  (the PRM) sent then has its answer at ``prm_answer_s``.

A server that only listens once every engine is ready (before this change: ``--repo`` a checkout of it) has
``all_ready_s == serving_s``. The breakdown is read from the server's log: Ray's start, each engine ready
(seconds after loading began), the first log line (interpreter and imports). The 1-minute load average is
recorded before each start: the machine is shared, and load inflates every figure. Writes
bench/results/start_default.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cold_start import stop_server
from orchestrator.config import REPO_ROOT

READY = re.compile(r"service ready in ([\d.]+) s: http://([\d.]+):(\d+)")
RAY = re.compile(r"ray started in ([\d.]+) s")
ENGINE = re.compile(r"engine (\S+) ready \((\d+)/(\d+)\) after ([\d.]+) s")
QUESTION = "Start at 37 and apply +48, *3, -59."


def _ask(base: str, strategy: str, params: dict[str, Any]) -> None:
    body = {"model": "target", "messages": [{"role": "user", "content": QUESTION}], "strategy": strategy, "strategy_params": params}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()


def start(repo: Path, data: Path, *, port: int, timeout_s: float = 900, log: Path | None = None) -> dict[str, Any]:
    """One start of ``bash deploy/run.sh`` on ``data``; its figures, after stopping it (its output to ``log``,
    each line with the seconds since the command was spawned)."""
    env = {
        **os.environ, "TTS_DATA_DIR": str(data), "TTS_PORT": str(port), "PYTHONPATH": str(repo),
        # Inductor's own cache (vLLM puts its compiled graphs under the data directory): fresh with the data
        # directory, so that a first start is one for every compile cache.
        "TORCHINDUCTOR_CACHE_DIR": str(data / "inductor-cache"),
    }
    env.pop("RAY_ADDRESS", None)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "deploy/run.sh"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[tuple[float, str]] = []
    found: dict[str, Any] = {}
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
            m = READY.search(line)
            if m:
                found["base"] = f"http://{m.group(2)}:{m.group(3)}"
                found["log_ready_s"] = float(m.group(1))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    out: dict[str, Any] = {"load_before": round(load, 1)}
    try:
        while not ready.wait(0.5):
            if proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                raise RuntimeError("the server did not start:\n" + "\n".join(text for _, text in lines[-30:]))
        base = found["base"]
        health = _health(base, proc)
        out["serving_s"] = round(time.perf_counter() - t0, 1)
        _ask(base, "self_consistency", {"n": 4, "max_tokens": 64})
        out["policy_answer_s"] = round(time.perf_counter() - t0, 1)
        while "ready" in health and not health["ready"]:
            if any(e["state"] == "failed" for e in health["engines"]):
                raise RuntimeError(f"an engine failed to start: {health['engines']}")
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"not every engine ready after {timeout_s} s: {health['engines']}")
            time.sleep(0.5)
            health = _health(base, proc)
        out["all_ready_s"] = round(time.perf_counter() - t0, 1)
        _ask(base, "best_of_n", {"n": 4, "max_tokens": 64})
        out["prm_answer_s"] = round(time.perf_counter() - t0, 1)
        out["load_after"] = round(os.getloadavg()[0], 1)
    finally:
        stop_server(proc)  # run.sh exec's the server: this is deploy.serve itself
    texts = [text for _, text in lines]
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"{t:7.1f} {text}\n" for t, text in lines))
    out["log_ready_s"] = found.get("log_ready_s")
    out["first_log_line_s"] = round(lines[0][0], 1) if lines else None
    out["ray_start_s"] = next((float(m.group(1)) for t in texts for m in [RAY.search(t)] if m), None)
    out["engines_ready_s"] = {m.group(1): float(m.group(4)) for t in texts for m in [ENGINE.search(t)] if m}
    return out


def _health(base: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    for _ in range(120):  # "service ready" is logged just before uvicorn takes the socket over
        try:
            return httpx.get(f"{base}/healthz", timeout=30).raise_for_status().json()
        except httpx.TransportError:
            if proc.poll() is not None:
                break
            time.sleep(0.25)
    raise RuntimeError("/healthz never answered")


def table(report: dict[str, Any]) -> str:
    """The markdown table of bench/README.md."""
    rows = ["| start | load before | serving (policy) | policy answer | every engine ready | PRM answer |", "|---|---|---|---|---|---|"]
    for i, run in enumerate(report["runs"], 1):
        for phase in ("first", "warm"):
            s = run[phase]
            rows.append(
                f"| {phase} {i} | {s['load_before']} | {s['serving_s']} s | {s['policy_answer_s']} s | {s['all_ready_s']} s | {s['prm_answer_s']} s |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="First + warm start pairs.")
    ap.add_argument("--port", type=int, default=8000, help="TTS_PORT (the README's 8000; 0: any free one, on a shared machine).")
    ap.add_argument("--repo", type=Path, default=REPO_ROOT, help="The checkout whose deploy/run.sh to start (its .venv installed).")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "start_default.json")
    ap.add_argument("--log-dir", type=Path, default=None, help="Keep each start's output here (run<i>-<first|warm>.log).")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True, text=True).stdout.strip()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "repo": str(args.repo), "commit": commit, "runs": []}
    for i in range(args.runs):
        data = Path(tempfile.mkdtemp(prefix="tts-start-"))
        try:
            run = {
                phase: start(args.repo, data, port=args.port, log=args.log_dir / f"run{i + 1}-{phase}.log" if args.log_dir else None)
                for phase in ("first", "warm")
            }
        finally:
            shutil.rmtree(data, ignore_errors=True)
        report["runs"].append(run)
        print(f"run {i + 1}: {json.dumps(run)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

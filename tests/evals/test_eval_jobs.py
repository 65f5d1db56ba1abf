"""Evaluation grids as Ray jobs beside a running service, exactly as docs/evaluations.md tells a user to run them.

The service is started as the README says, `bash deploy/run.sh`, on its default port (8000). Then the docs'
commands run verbatim, read from the docs' "As a Ray job" block, in a shell of the same machine: `ray start
--head` (which, beside the service, must get every port it needs: the service's own Ray takes none), the
`ray job submit` line (a 3 strategies x 2 budgets x 8 problems grid, finished), the `curl` line (`POST
/v1/jobs`: the same grid over 16 problems, which resumes it), stopped while it runs with `DELETE`, and the
`curl` line again, which resumes and finishes it (between them, exactly the requests not finished before). Then the
dashboard's numbers against an independent query of the database and the page in a real headless Chromium,
and last `ray stop`'s effect on the service's own Ray: the service exits at once, with one line saying why.

The shell's environment stands for the user's machine: the service's data directory (both the service and
the jobs read `TTS_DATA_DIR`, as they both read `data/` of one checkout by default), this checkout on
`PYTHONPATH` and its virtualenv on `PATH`, and a Ray temp directory of this test's own (`RAY_TMPDIR`) for the
service's Ray and for the `ray start` cluster, so that nothing here joins or stops another Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from bench.cold_start import stop_server

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DOC = ROOT / "docs" / "evaluations.md"
VENV_BIN = Path(sys.executable).parent
API = "http://127.0.0.1:8000"
JOBS = "http://127.0.0.1:8265"
# The ports the docs' commands use: the service's, and those of `ray start --head` (GCS, dashboard, its agent).
PORTS = {8000: "the service (TTS_PORT)", 6379: "Ray's GCS", 8265: "Ray's dashboard", 52365: "Ray's dashboard agent"}
STRATEGIES = {"self_consistency", "first_finish", "single_pass"}
FIRST, SECOND = 8, 16  # problems: the `ray job submit` line's grid, then the `curl` line's
RUNS = 6


def doc_commands() -> list[str]:
    """The commands of the docs' "As a Ray job" block, one per line, as a user copies them."""
    section = DOC.read_text().split("## As a Ray job", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "docs/evaluations.md: no bash block under 'As a Ray job'"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _listener(port: int) -> tuple[int, str] | None:
    """The process listening on ``port`` (pid, command line), read from /proc; None when none is."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid), Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
    return None


def _ours(temp: str) -> list[int]:
    """Processes whose command line names ``temp`` (this test's Ray temp directories): Ray's raylet, GCS, agents."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp in cmd and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie (exited, its parent has not reaped it yet) does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(pids: list[int]) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


@dataclass
class Machine:
    env: dict[str, str]  # a user's shell on it
    data: Path
    ray_tmp: str
    service: subprocess.Popen[str]
    log: Path
    times: dict[str, float]


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    busy = {p: what for p, what in PORTS.items() if _listening(p)}
    if busy:
        pytest.fail(f"the docs' commands need these ports free on this machine, and something listens on them: {busy}")
    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths live under it
    data = tmp_path_factory.mktemp("data")
    env = {
        **os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "TTS_DATA_DIR": str(data), "RAY_TMPDIR": ray_tmp,
        "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_worker_niceness": "0",
    }
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "TTS_PORT", "TTS_HOST", "DATABASE_URL", "TTS_DATABASE_URL", "TTS_JOBS_ADDRESS"):
        env.pop(name, None)  # a user's shell: this process's Ray set RAY_AUTH_MODE for itself only
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "eval-jobs-service.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        service = subprocess.Popen(["bash", "deploy/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{API}/healthz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start:\n" + log.read_text()[-4000:])
            time.sleep(1)
        yield Machine(env, data, ray_tmp, service, log, {"service_serving_s": time.monotonic() - t0})
    finally:
        stop_server(service)
        _stop(_ours(ray_tmp))  # the `ray start` cluster (and what is left of the service's Ray)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _shell(machine: Machine, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``command`` as the user types it, in a shell of the machine, from the checkout."""
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=machine.env, capture_output=True, text=True, timeout=timeout)


def _job(job_id: str) -> dict:
    r = httpx.get(f"{API}/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(predicate, timeout: float, step: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)


def _utc(value) -> datetime:
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _results_by_run(db) -> dict[str, dict]:
    """Per run of the grid, straight from the tables (not through the service's own summaries)."""
    sql = text(
        "SELECT r.id, r.strategy, r.budget, COUNT(x.id), AVG(CASE WHEN x.correct THEN 1.0 ELSE 0.0 END), AVG(x.total_tokens), "
        "AVG(x.sequential_tokens), AVG(x.cost_usd), AVG(x.latency_s), COUNT(DISTINCT x.problem_id) "
        "FROM eval_runs r JOIN eval_results x ON x.run_id = r.id WHERE r.name = :name GROUP BY r.id, r.strategy, r.budget"
    )
    with db.connect() as c:
        rows = c.execute(sql, {"name": "small-grid"}).all()
    return {r[0]: {"strategy": r[1], "budget": r[2], "n": r[3], "accuracy": r[4], "tokens": r[5], "sequential": r[6], "cost": r[7], "latency": r[8], "distinct": r[9]} for r in rows}


def _requests_since(db, t: float) -> int:
    with db.connect() as c:
        created = c.execute(text("SELECT created_at FROM requests WHERE state IN ('succeeded', 'budget_exhausted')")).scalars().all()
    since = datetime.fromtimestamp(t, tz=timezone.utc)
    return sum(1 for x in created if _utc(x) >= since)


def test_the_readme_service_serves_its_policy_first_then_every_strategy(machine):
    """The README's command serves once the policy is ready; the other roles load behind it, and a strategy
    that needs one of them is a 503 with Retry-After until it is ready, then served."""
    log = machine.log.read_text()
    assert "loading 4 engine(s): policy-0, draft-0, prm-0, embedder-0" in log and re.search(r"engine policy-0 ready \(1/4\) after [\d.]+ s", log)
    assert re.search(r"service ready in [\d.]+ s: http://127.0.0.1:8000 .*", log)
    question = [{"role": "user", "content": "Start at 37 and apply +48, *3, -59."}]
    r = httpx.post(f"{API}/v1/chat/completions", json={"model": "target", "messages": question, "strategy_params": {"n": 4, "seed": 0}}, timeout=120)
    assert r.status_code == 200, r.text
    atts = {"model": "atts:target", "messages": question, "strategy_params": {"n": 1, "max_turns": 2, "seed": 0}}
    early = httpx.post(f"{API}/v1/chat/completions", json=atts, timeout=120)
    if early.status_code != 200:  # the draft is still loading (on a fast machine it may be ready already)
        assert early.status_code == 503 and int(early.headers["Retry-After"]) >= 1, early.text
        assert early.json()["error"]["code"] == "engine_loading" and "draft" in early.json()["error"]["message"]
    t = time.monotonic()
    _wait(lambda: httpx.get(f"{API}/healthz", timeout=10).json()["ready"], timeout=600, step=1)
    machine.times["all_engines_after_serving_s"] = time.monotonic() - t
    r = httpx.post(f"{API}/v1/chat/completions", json=atts, timeout=120)
    assert r.status_code == 200, r.text
    # ATTS on a fresh data folder: the calibration set shipped with the bundled draft was seeded on start.
    assert r.json()["tts"]["info"]["calibration_size"] >= 200
    assert "seeded ATTS calibration set 'draft->target/task'" in machine.log.read_text()
    models = httpx.get(f"{API}/v1/models", timeout=10).json()
    assert "atts:target" in {m["id"] for m in models["data"]} and models["loading"] == []


def test_the_docs_ray_job_commands_run_verbatim_beside_the_service(machine):
    ray_start, submit, post = doc_commands()
    assert ray_start == "ray start --head"
    assert submit.startswith("RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- python -m deploy.evaluate")
    assert post.startswith("curl -s http://127.0.0.1:8000/v1/jobs")
    db = create_engine(f"sqlite:///{machine.data / 'tts.db'}")
    times = machine.times

    # 1. `ray start --head` beside the service: a cluster of its own, its job server on 8265 with token auth on.
    t = time.monotonic()
    out = _shell(machine, ray_start, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    times["ray_start_s"] = time.monotonic() - t
    assert httpx.get(f"{JOBS}/api/authentication_mode", timeout=10).json() == {"authentication_mode": "token"}
    # Its node agent (what runs jobs) has Ray's default port: neither the service's Ray nor anything else took it.
    deadline = time.monotonic() + 60
    while (agent := _listener(52365)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent is not None, "nothing listens on 52365: the `ray start` cluster's agent did not start"
    if not _is_in(agent[0], machine.ray_tmp):
        pytest.fail(f"port 52365 is another Ray's on this machine (pid {agent[0]}: {agent[1].strip()[:200]}), not this test's `ray start` cluster's")

    # 2. The `ray job submit` line: the job runs on that cluster and finishes the grid, into the service's database.
    t = time.monotonic()
    out = _shell(machine, submit, timeout=900)
    times["ray_job_submit_s"] = time.monotonic() - t
    assert out.returncode == 0 and "succeeded" in (out.stdout + out.stderr).lower(), out.stdout[-3000:] + out.stderr[-3000:]
    runs = _results_by_run(db)
    assert len(runs) == RUNS and {r["strategy"] for r in runs.values()} == STRATEGIES
    assert all(r["n"] == r["distinct"] == FIRST for r in runs.values())

    # 3. The `curl` line (POST /v1/jobs, the same job server): the same grid over 16 problems resumes it. Stopped
    # as soon as it runs (its engine then loading; stopped after its first answers, it cost the suite an engine
    # start more than the next job's own).
    t, since = time.monotonic(), time.time()
    out = _shell(machine, post, timeout=60)
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)["id"]
    _wait(lambda: _job(first)["status"] == "RUNNING", timeout=600, step=0.5)
    assert httpx.delete(f"{API}/v1/jobs/{first}", timeout=60).status_code == 200
    _wait(lambda: _job(first)["status"] in ("STOPPED", "FAILED"), timeout=120)
    time.sleep(2)
    done_before = sum(r["n"] for r in _results_by_run(db).values())
    assert RUNS * FIRST <= done_before < RUNS * SECOND
    assert httpx.get(f"{API}/v1/jobs/{first}/logs", timeout=30).status_code == 200

    # 4. The `curl` line again: it resumes and finishes the grid; the two POST jobs asked each new problem once.
    out = _shell(machine, post, timeout=60)
    assert out.returncode == 0, out.stderr
    second = json.loads(out.stdout)["id"]
    _wait(lambda: _job(second)["status"] in ("SUCCEEDED", "FAILED", "STOPPED"), timeout=900, step=3)
    assert _job(second)["status"] == "SUCCEEDED", httpx.get(f"{API}/v1/jobs/{second}/logs", timeout=30).text[-3000:]
    assert _job(second)["progress"] == {"done": RUNS * SECOND, "planned": RUNS * SECOND, "runs": RUNS}
    assert "small-grid" in httpx.get(f"{API}/v1/jobs/{second}/logs", timeout=30).text
    times["post_jobs_s"] = time.monotonic() - t
    runs = _results_by_run(db)
    assert len(runs) == RUNS and all(r["n"] == r["distinct"] == SECOND for r in runs.values())
    with db.connect() as c:
        states = c.execute(text("SELECT state, job_id FROM eval_runs WHERE name = 'small-grid'")).all()
    assert all(s == ("succeeded", second) for s in states)
    assert _requests_since(db, since) == RUNS * (SECOND - FIRST), "a resumed job redid finished problems"

    # 5. The dashboard's numbers are the database's; the page draws them.
    t = time.monotonic()
    shown = {p["run_id"]: p for p in httpx.get(f"{API}/v1/evals", timeout=30).json()["data"] if p["grid"] == "small-grid"}
    assert set(shown) == set(runs)
    for run_id, want in runs.items():
        got = shown[run_id]
        assert got["problems"] == want["n"]
        assert got["accuracy"] == pytest.approx(want["accuracy"])
        assert got["mean_tokens"] == pytest.approx(want["tokens"])
        assert got["mean_sequential_tokens"] == pytest.approx(want["sequential"])
        assert got["mean_latency_s"] == pytest.approx(want["latency"])
    _check_in_chromium(runs)
    times["dashboard_s"] = time.monotonic() - t

    # 6. `ray stop` stops the service's Ray too (raylet first, as `ray stop` does; here only the service's own
    # processes, not every Ray on the machine): the service exits at once, non-zero, with one line saying why.
    service_raylet = [p for p in _ours(machine.ray_tmp) if _is_raylet_of(p, machine.service.pid)]
    assert len(service_raylet) == 1, service_raylet
    t = time.monotonic()
    os.kill(service_raylet[0], signal.SIGTERM)
    try:
        code = machine.service.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the service still runs 30 s after its Ray's raylet was stopped")
    times["exit_after_ray_stop_s"] = time.monotonic() - t
    assert code == 3
    said = [line for line in machine.log.read_text().splitlines() if "CRITICAL" in line]
    assert len(said) == 1 and "the service's local Ray is gone: its raylet" in said[0] and "ray stop" in said[0], said
    print("phases:", {k: round(v, 1) for k, v in times.items()})


def _is_in(pid: int, temp: str) -> bool:
    """Whether ``pid`` belongs to a Ray under ``temp``: its command line, or its parent's (the agents are
    started by their raylet), names it."""
    for p in (pid, int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])):
        if temp in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"):
            return True
    return False


def _is_raylet_of(pid: int, service_pid: int) -> bool:
    """Whether ``pid`` is the raylet of the Ray the service started (its session directory ends in its pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return args[0].endswith("/raylet") and any(re.search(rf"session_[^/]*_{service_pid}/", a) for a in args)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium")
    assert found, "chromium is not installed and could not be"
    return found


def _check_in_chromium(runs: dict[str, dict]) -> None:
    page = f"{API}/dashboard?grid=small-grid"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=20000",
            "--enable-logging=stderr", "--v=0", "--window-size=1300,1500"]
    dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if re.search(r"Uncaught|Error|Failed to load", line)], console

    state = json.loads(re.search(r'<pre id="state"[^>]*>(.*?)</pre>', dom.stdout, re.S).group(1))
    traces = {t["name"]: t["points"] for t in state["traces"]}
    assert traces.pop("Pareto front") >= 1
    assert traces == {"self_consistency": 2, "first_finish": 2, "single_pass": 2}  # one trace per strategy, one point per budget
    for run_id, want in runs.items():  # the per-level table's accuracy cells
        row = re.search(rf'<tr data-run-id="{run_id}">(.*?)</tr>', dom.stdout, re.S)
        assert row, run_id
        # The page rounds with JavaScript's toFixed(3) (9/16 = 0.5625 shows 0.563, Python's format 0.562).
        cells = [float(c) for c in re.findall(r"<td>(\d\.\d{3})</td>", row.group(1))]
        assert any(abs(c - want["accuracy"]) <= 0.0005 + 1e-9 for c in cells), (row.group(1), want["accuracy"])
    assert re.search(r'<p id="engines">.*?policy-0 ready', dom.stdout, re.S), "the dashboard does not show the engines"

    shot = ARTIFACTS / "dashboard.png"
    snap = subprocess.run([*base, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=180)
    assert snap.returncode == 0 and shot.stat().st_size > 10_000, snap.stderr[-2000:]

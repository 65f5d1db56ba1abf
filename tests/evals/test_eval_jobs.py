"""Evaluation grids as Ray jobs, end to end, the way docs/evaluations.md tells it: the service has run (its local
Ray left a token in ~/.ray), `ray start --head` (which then turns Ray's token authentication on), a grid of 3
strategies x 2 budgets x 16 problems submitted through POST /v1/jobs, stopped half way, resubmitted with the
documented `ray job submit` command (with `RAY_AUTH_MODE=token`, as documented), resumed; then the dashboard in a
real headless Chromium, its numbers checked against an independent query of the database."""

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
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from workers.jobs import RayJobs

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
VENV_BIN = Path(sys.executable).parent
# Enough problems that the first job is stopped part way (after 20 results) with most of the grid left.
PROBLEMS = 16
GRID = {
    "strategies": ["self_consistency", "first_finish", "single_pass"],
    "budgets": [300, 1000],
    "params": {"self_consistency": {"n": 4}, "first_finish": {"n": 4}},
    "problems": PROBLEMS,
    "name": "small-grid",
    "concurrency": 4,
}
PLANNED = 3 * 2 * PROBLEMS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_jobs(service):
    """A second, separate Ray cluster on this machine with its dashboard (the job server), as `ray start` makes it
    after the service has run: with Ray's token authentication on. Yields its URL and a shell's environment."""
    from ray.job_submission import JobSubmissionClient

    # The service's local ray.init() (the tests' own cluster, started by `service`) leaves a token here, as
    # `deploy/run.sh` does; `ray start --head` finds it and turns token authentication on.
    assert (Path.home() / ".ray" / "auth_token").is_file(), "the service's local Ray left no token in ~/.ray (RAY_AUTH_MODE=disabled?)"
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_worker_niceness": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # a user's shell: ray.init() set it to `token` in this process only
    dash = _free_port()
    # The docs' `ray start --head`, plus what keeps it apart from the tests' own cluster (ports, temp dir, CPUs) and
    # `--block`, so that this fixture owns its processes.
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={_free_port()}", f"--dashboard-port={dash}",
           # Its own agent port: the default one is taken by the tests' own cluster, and without an agent no job runs.
           f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2", f"--temp-dir={temp}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                # Ready when it runs a job: the job server answers before its node agent can take one.
                probe = JobSubmissionClient(url).submit_job(entrypoint="true")
                while not JobSubmissionClient(url).get_job_status(probe).is_terminal():
                    time.sleep(0.5)
                break
            except Exception as err:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError(f"the Ray job server did not start: {err}") from None
                time.sleep(1)
        assert httpx.get(f"{url}/api/authentication_mode", timeout=10).json() == {"authentication_mode": "token"}
        assert httpx.get(f"{url}/api/jobs/", timeout=10).status_code == 401  # no token, no jobs
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # this cluster only: `ray stop` would stop the tests' own cluster too
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _job(service, job_id: str) -> dict:
    r = httpx.get(f"{service.base_url}/v1/jobs/{job_id}", timeout=30)
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


def _results_by_run(service) -> dict[str, dict]:
    """Per run of the grid, straight from the tables (not through the service's own summaries)."""
    sql = text(
        "SELECT r.id, r.strategy, r.budget, COUNT(x.id), AVG(CASE WHEN x.correct THEN 1.0 ELSE 0.0 END), AVG(x.total_tokens), "
        "AVG(x.sequential_tokens), AVG(x.cost_usd), AVG(x.latency_s), COUNT(DISTINCT x.problem_id) "
        "FROM eval_runs r JOIN eval_results x ON x.run_id = r.id WHERE r.name = :name GROUP BY r.id, r.strategy, r.budget"
    )
    with service.service.store.engine.connect() as c:
        rows = c.execute(sql, {"name": GRID["name"]}).all()
    return {r[0]: {"strategy": r[1], "budget": r[2], "n": r[3], "accuracy": r[4], "tokens": r[5], "sequential": r[6], "cost": r[7], "latency": r[8], "distinct": r[9]} for r in rows}


def test_grid_as_a_ray_job_resumes_after_a_kill_and_shows_in_the_dashboard(service, ray_jobs):
    url, env = ray_jobs
    service.service.app.state.jobs = RayJobs(url)
    settings = service.service.settings

    # 1. Submitted through the API (Ray's JobSubmissionClient underneath), stopped part way.
    r = httpx.post(f"{service.base_url}/v1/jobs", json=GRID, timeout=60)
    assert r.status_code == 200, r.text
    first = r.json()["id"]
    _wait(lambda: _job(service, first)["progress"]["done"] >= 20, timeout=600)
    assert _job(service, first)["progress"]["planned"] == PLANNED
    assert httpx.delete(f"{service.base_url}/v1/jobs/{first}", timeout=60).status_code == 200
    _wait(lambda: _job(service, first)["status"] in ("STOPPED", "FAILED"), timeout=120)
    time.sleep(2)
    done_before = sum(v["n"] for v in _results_by_run(service).values())
    assert 20 <= done_before < PLANNED
    logs = httpx.get(f"{service.base_url}/v1/jobs/{first}/logs", timeout=30)
    assert logs.status_code == 200 and "small-grid" in logs.text
    # The API's RayJobs sends the token whatever its own process's RAY_AUTH_MODE (here Ray's default, disabled).
    probe = "from workers.jobs import RayJobs; import sys; print(RayJobs(sys.argv[1]).info(sys.argv[2]).status)"
    out = subprocess.run([sys.executable, "-c", probe, url, first], env={**env, "RAY_AUTH_MODE": "disabled"}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split()[-1] in ("STOPPED", "FAILED"), out.stderr[-3000:]

    # 2. Resubmitted with the documented command: it resumes, skipping what the first job finished.
    resumed_at = time.time()
    job_env = {"DATABASE_URL": settings.database, "TTS_KV_CACHE_GIB": "1"}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", url, "--submission-id", "small-grid-resume", "--runtime-env-json", json.dumps({"env_vars": job_env}),
           "--", "python", "-m", "deploy.evaluate", "-s", "self_consistency", "-s", "first_finish", "-s", "single_pass", "-b", "300", "-b", "1000",
           "--problems", str(PROBLEMS), "--name", "small-grid", "--params", json.dumps(GRID["params"])]
    out = subprocess.run(cmd, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=900)  # as the docs say
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in (out.stdout + out.stderr).lower()

    runs = _results_by_run(service)
    assert len(runs) == 6 and all(v["n"] == v["distinct"] == PROBLEMS for v in runs.values())
    with service.service.store.engine.connect() as c:
        states = c.execute(text("SELECT state, job_id FROM eval_runs WHERE name = :n"), {"n": "small-grid"}).all()
        created = c.execute(text("SELECT created_at FROM requests WHERE state IN ('succeeded', 'budget_exhausted')")).scalars().all()
    since = datetime.fromtimestamp(resumed_at, tz=timezone.utc)
    new_requests = sum(1 for t in created if _utc(t) >= since)
    assert all(s == ("succeeded", "small-grid-resume") for s in states)
    assert new_requests == PLANNED - done_before, "the resumed job redid finished problems"

    # 3. The dashboard's numbers are the database's.
    shown = {p["run_id"]: p for p in httpx.get(f"{service.base_url}/v1/evals").json()["data"] if p["grid"] == "small-grid"}
    assert set(shown) == set(runs)
    for run_id, want in runs.items():
        got = shown[run_id]
        assert got["problems"] == want["n"]
        assert got["accuracy"] == pytest.approx(want["accuracy"])
        assert got["mean_tokens"] == pytest.approx(want["tokens"])
        assert got["mean_sequential_tokens"] == pytest.approx(want["sequential"])
        assert got["mean_latency_s"] == pytest.approx(want["latency"])
    _check_in_chromium(service, runs)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium")
    assert found, "chromium is not installed and could not be"
    return found


def _check_in_chromium(service, runs: dict[str, dict]) -> None:
    page = f"{service.base_url}/dashboard?grid=small-grid"
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

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    snap = subprocess.run([*base, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=180)
    assert snap.returncode == 0 and shot.stat().st_size > 10_000, snap.stderr[-2000:]

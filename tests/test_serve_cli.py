"""The README's main command path: `python -m deploy.serve` as a real process on loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks import arithmetic as task

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent



def ready_url(log: Path) -> str | None:
    """The address the server says it serves on once ready (it picks the port: --port 0)."""
    found = re.search(r"service ready in [\d.]+ s: (http://[\w.:]+)", log.read_text())
    return found.group(1) if found else None


def test_serve_starts_answers_and_stops(tmp_path):
    # The process's own path: its options, the address it reports, progress while it starts, a missing role
    # refused, and its exit on Ctrl-C. The policy is the instant engine (workers/instant.py, in a Ray actor like
    # a vLLM engine): vLLM's start in this same command is what tests/evals/test_eval_jobs.py's service (the
    # README's `bash deploy/run.sh`, every role) and bench.reliability's restart scenario (a SIGKILL, then
    # SIGTERM, on a vLLM policy) run, and a third vLLM start here cost the suite a minute on two cores.
    workers = tmp_path / "workers.toml"
    workers.write_text('[roles.policy]\nurl = "instant:"\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TTS_WORKERS_FILE": str(workers)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not come up in 240 s"
            url = ready_url(tmp_path / "serve.log")
            try:
                if url and httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        p = task.generate("test", 1, seed=21, levels=[1])[0]
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "target", "messages": [{"role": "user", "content": p.question}], "strategy_params": {"n": 8, "seed": 0}},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
        assert (tmp_path / "data" / "tts.db").exists()
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "atts:target", "messages": [{"role": "user", "content": p.question}]}, timeout=60)
        assert r.status_code == 400 and "draft" in r.json()["error"]["message"]  # not served: missing, not loading
        log_text = (tmp_path / "serve.log").read_text()
        assert "loading 1 engine(s)" in log_text and re.search(r"engine policy-0 ready \(1/1\) after [\d.]+ s", log_text)  # progress while starting
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # After its graceful shutdown the server exits as the signal's: 130 for SIGINT, as a shell reports an
    # interrupted process (not 0, the ray-lost status 3 or a crash).
    assert proc.returncode == 130, (tmp_path / "serve.log").read_text()[-3000:]


def test_serve_refuses_a_port_in_use_before_starting_engines(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "deploy.serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
    assert "EngineActor" not in run.stdout + run.stderr  # refused before any engine started


def test_serve_refuses_a_bad_workers_file_with_a_clear_message(tmp_path):
    bad = tmp_path / "workers.toml"
    bad.write_text('[roles.policy]\nmodel = "models/does-not-exist"\n')
    out = subprocess.run(
        [sys.executable, "-m", "deploy.serve", "--workers-file", str(bad), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "no Hugging Face model directory" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "profile, needle",
    [("nope", "unknown model profile 'nope' (TTS_PROFILE)"), ("{bad}", "answer = \"regex\" needs `answer_pattern`")],
)
def test_serve_refuses_a_bad_profile_naming_the_setting(tmp_path, profile, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text('answer = "regex"\n')
    env = {**os.environ, "TTS_PROFILE": profile.format(bad=bad)}
    out = subprocess.run([sys.executable, "-m", "deploy.serve", "--port", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr and "TTS_PROFILE" in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_a_prm_kind_the_model_is_not(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('[prm]\nkind = "pooling"\n')  # the bundled prm is a generative tag PRM
    env = {**os.environ, "TTS_PROFILE": str(profile)}
    out = subprocess.run([sys.executable, "-m", "deploy.serve", "--port", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "prm.kind is 'pooling' but role `prm` serves a generative model" in out.stderr and "Traceback" not in out.stderr

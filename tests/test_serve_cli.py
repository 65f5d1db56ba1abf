"""The README's main command path: `python -m deploy.serve` as a real process on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks import arithmetic as task
from tests.helpers import free_port

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent



def test_serve_starts_answers_and_stops(tmp_path):
    port = free_port()
    env = {**os.environ, "TTS_KV_CACHE_GIB": "1", "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not come up in 240 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        p = task.generate("test", 1, seed=21, levels=[1])[0]
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "target", "messages": [{"role": "user", "content": p.question}], "strategy_params": {"n": 8, "seed": 0}},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
        assert (tmp_path / "data" / "tts.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode is not None


def test_serve_refuses_a_bad_workers_file_with_a_clear_message(tmp_path):
    bad = tmp_path / "workers.toml"
    bad.write_text('[roles.policy]\nmodel = "models/does-not-exist"\n')
    out = subprocess.run(
        [sys.executable, "-m", "deploy.serve", "--workers-file", str(bad), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "no Hugging Face model directory" in out.stderr and "Traceback" not in out.stderr

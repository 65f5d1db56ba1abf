"""Shared fixtures: one live service (Ray + a vLLM engine on the bundled `target`) per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests of a real checkpoint (``real_checkpoint``) run only when asked for: they need a model package
    installed apart and minutes of CPU, more than the default suite spends on one check."""
    if "real_checkpoint" in (config.getoption("markexpr") or "") or os.environ.get("TTS_REAL_CHECKPOINT") == "1":
        return
    skip = pytest.mark.skip(reason="a real checkpoint: run with -m real_checkpoint or TTS_REAL_CHECKPOINT=1 (the README's test commands)")
    for item in items:
        if "real_checkpoint" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The whole service on loopback: HTTP API, controller, SQLite, a Ray actor owning AsyncLLM."""
    from tests.helpers import serving

    with serving(port=0, data_dir=tmp_path_factory.mktemp("data"), kv_cache_gib=1) as svc:
        yield svc


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback for the whole session (installed from Debian if missing)."""
    from tests.pg import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def loop():
    """An event loop in a background thread, for one module's engine pool (see tests.helpers.LoopThread)."""
    from tests.helpers import LoopThread

    lt = LoopThread()
    yield lt
    lt.close()


class _V2Build:
    """The smoke v2 family's recipe, run in a subprocess started as soon as the session knows a test needs it:
    it trains for minutes while the tests before it mostly wait on engines and sockets, so the fixture that
    needs it seldom waits. One training thread leaves the other core to the tests."""

    def __init__(self, out):
        import subprocess
        import sys

        self.out, self.log = out, out.parent / "recipe.log"
        env = {**os.environ, "TRAIN_THREADS": os.environ.get("TRAIN_THREADS", "1")}
        with self.log.open("w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "training.v2.recipe", "--size", "smoke", "--out", str(out)],
                stdout=f, stderr=subprocess.STDOUT, env=env,
            )

    def wait(self, timeout):
        import subprocess

        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert rc == 0, self.log.read_text()[-8000:]
        return self.out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_v2_build: _V2Build | None = None


def pytest_collection_finish(session):
    global _v2_build
    wanted = any("v2_family" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("skip") for item in session.items)
    if wanted and not session.config.option.collectonly:
        _v2_build = _V2Build(Path(tempfile.mkdtemp(prefix="tts-v2family-")) / "family")


def pytest_sessionfinish(session):
    if _v2_build is not None:
        _v2_build.stop()
        shutil.rmtree(_v2_build.out.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def v2_family():
    """The v2 bundled family at smoke size, every recipe stage (vLLM sampling and evaluate included), built
    once per session by the recipe's own command line, as a user would run it (started at collection)."""
    global _v2_build
    if _v2_build is None:  # not seen at collection
        _v2_build = _V2Build(Path(tempfile.mkdtemp(prefix="tts-v2family-")) / "family")
    return _v2_build.wait(timeout=1500)

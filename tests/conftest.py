"""Shared fixtures: one live service (Ray + a vLLM engine on the bundled `target`) per test session."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session")
def v2_family(tmp_path_factory):
    """The v2 bundled family at smoke size, every recipe stage (vLLM sampling and evaluate included), built
    once per session by the recipe's own command line, as a user would run it."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("v2family")
    proc = subprocess.run(
        [sys.executable, "-m", "training.v2.recipe", "--size", "smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out

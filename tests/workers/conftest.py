"""A real worker pool (Ray actors owning vLLM engines on the bundled `draft`) shared by this package's tests."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import pytest

T = TypeVar("T")
DRAFT = Path(__file__).resolve().parents[2] / "models" / "draft"


class LoopThread:
    """An event loop in a background thread; ``run`` waits for a coroutine on it (with a timeout)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def pool(loop):
    """Two replicas of the draft model serving role `policy`."""
    from workers.engine import EngineConfig
    from workers.pool import WorkerPool, WorkerSpec, connect_ray

    connect_ray()
    spec = WorkerSpec("policy", engine=EngineConfig(model_path=DRAFT, kv_cache_gib=1), replicas=2)
    p = loop.run(WorkerPool.start([spec], call_timeout_s=120))
    yield p
    loop.run(p.shutdown(), timeout=120)

"""Small helpers shared by the tests: a free loopback port, an event loop in a background thread, the whole
service for a block."""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Coroutine, Iterator, TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(**settings: Any) -> Iterator[Any]:
    """The whole service on loopback (a ``deploy.serve.ServiceThread`` of ``get_settings(**settings)``) for the
    block; stopped after it, and Ray with it (the local head it started too: ``leave_ray``)."""
    from deploy.serve import ServiceThread
    from orchestrator.config import get_settings
    from workers.pool import leave_ray

    svc = ServiceThread(get_settings(**settings))
    try:
        yield svc
    finally:
        svc.stop()
        leave_ray()


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

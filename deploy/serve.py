"""Serve the whole service (assembled by :mod:`deploy.assembly`): Ray, vLLM workers, the database, the
controller and the API.

    python -m deploy.serve                # 127.0.0.1:8000, bundled `target` model, SQLite under data/
    python -m deploy.serve --help         # every option; each also has a TTS_* environment variable

Exit status: 2 for a configuration refused before anything starts, 3 when the service's local Ray goes away
(`ray stop`), and after a graceful stop 128 + the signal's number, as a shell reports it: 130 for Ctrl-C
(SIGINT), 143 for SIGTERM (a supervisor's or `docker stop`'s). A second signal during the stop ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Coroutine, Optional, TypeVar

import typer
import uvicorn

from deploy.assembly import Service, build_service, check_prm_kind, pool_config, ray_lost, served_profile, start_ray
from orchestrator.config import Settings, get_settings
from orchestrator.errors import ConfigError
from orchestrator.profile import load_profile

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceThread:
    """The service on its own event loop in a background thread, HTTP on loopback (tests and benchmarks)."""

    def __init__(
        self, settings: Settings, *, start: Callable[[Settings], Coroutine[Any, Any, Service]] = build_service, wait_for_engines: bool = True
    ) -> None:
        """``start`` builds the service (a benchmark may wire its own engines into the same service); with
        ``wait_for_engines`` the constructor returns once every engine has loaded (or failed), not only the policy."""
        self.settings = settings
        start_ray(settings, cache_in_data_dir=False)  # ray.init belongs on the main thread
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tts-service", daemon=True)
        self._thread.start()
        self.service: Service = self.run(start(settings))
        assert self.service.sock is not None, "ServiceThread serves the API: build the service with listens=True"
        if wait_for_engines:
            self.run(self.service.engines_loaded())
        # A bounded shutdown: requests still running after it are cancelled (and recorded as such).
        config = uvicorn.Config(
            self.service.app, host=self.service.settings.host, port=settings.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=5,
            timeout_keep_alive=settings.keep_alive_s,
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.run_coroutine_threadsafe(self._server.serve(sockets=[self.service.sock]), self._loop)
        deadline = time.monotonic() + 30
        while not self._server.started:
            if self._serving.done() or time.monotonic() > deadline:
                raise RuntimeError(f"API did not start: {self._serving.exception() if self._serving.done() else 'timeout'}")
            time.sleep(0.05)
        port = self.service.sock.getsockname()[1]
        self.base_url = f"http://{self.service.settings.host}:{port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 600) -> T:
        """Run ``coro`` on the service's loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def stop(self) -> None:
        self._server.should_exit = True
        try:
            try:
                self._serving.result(30)
            except TimeoutError:
                # uvicorn's own shutdown is bounded (5 s), so its loop was held up elsewhere: say where, then force it.
                stuck = [repr(t.get_coro()) for t in asyncio.all_tasks(self._loop)]
                log.warning("API still stopping after 30 s; forcing it. Tasks on its loop: %s", stuck)
                self._server.force_exit = True
                self._serving.result(30)
        finally:
            self.run(self.service.stop(), timeout=60)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


RAY_LOST_EXIT = 3  # the exit status when the local Ray goes away under the service


async def serve(settings: Settings) -> None:
    t0 = time.perf_counter()
    # Watched from the start: a `ray stop` while the engines load ends the start as one line, not as their errors.
    watch = asyncio.ensure_future(ray_lost())
    building = asyncio.ensure_future(build_service(settings))
    await asyncio.wait({building, watch}, return_when=asyncio.FIRST_COMPLETED)
    if watch.done():
        await _exit_without_ray(watch.result(), None)
    service = building.result()
    settings = service.settings
    assert service.sock is not None
    config = uvicorn.Config(
        service.app, host=settings.host, port=settings.port, log_level="info", lifespan="off", timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.keep_alive_s,
    )
    server = uvicorn.Server(config)
    port = service.sock.getsockname()[1]
    loading = [e.name for e in service.pool.status() if e.state == "loading"]
    log.info(
        "service ready in %.1f s: http://%s:%d (database %s)%s", time.perf_counter() - t0, settings.host, port, settings.database,
        f"; still loading {', '.join(loading)} (GET /healthz)" if loading else "",
    )
    _record_stop_signals()
    serving = asyncio.ensure_future(server.serve(sockets=[service.sock]))
    try:
        await asyncio.wait({serving, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
            await _exit_without_ray(watch.result(), service)
        await serving
    finally:
        watch.cancel()
        await service.stop()


# The signal that stopped the server, for main's exit status. uvicorn catches SIGINT and SIGTERM while it serves
# and re-raises them once its graceful shutdown is done; what handled the re-raised signal used to decide the
# status (asyncio's SIGINT handler: 130 when it found the main task still running, 0 when the stop had already
# begun; Ray's SIGTERM handler: 15), so a Ctrl-C now and then exited 0. Recorded here, the status is 128 + the
# signal's number, as a shell reports a process the signal ended.
_stopped_by: list[int] = []


def _record_stop_signals() -> None:
    """Handle SIGINT and SIGTERM by recording them (uvicorn swaps its own in while serving and hands them on to
    these after); a second one while the service stops ends the process at once."""
    def handler(signum: int, frame: Any) -> None:
        if _stopped_by:
            os._exit(128 + signum)
        _stopped_by.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


async def _exit_without_ray(reason: str, service: Service | None) -> None:
    """Exit at once, non-zero, with one line naming the cause: the engines went with the Ray that held them,
    and stopping them (or waiting for Ray's own 60 s GCS timeout) would only add tracebacks. The requests a
    serving server was running are failed in the ledger first (its database is still there)."""
    log.critical("%s; the service cannot serve without it and exits", reason)
    if service is not None:
        try:
            async with asyncio.timeout(5):
                await service.store.leases.retire(service.server_id)
        except Exception:  # noqa: BLE001 - exiting either way; the lease then runs out and another server reaps it
            pass
    logging.shutdown()
    os._exit(RAY_LOST_EXIT)


cli = typer.Typer(add_completion=False, help=__doc__)


@cli.command()
def main(
    host: Optional[str] = typer.Option(None, help="Bind address (TTS_HOST; default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="HTTP port (TTS_PORT; default 8000)."),
    model_path: Optional[Path] = typer.Option(None, help="Policy model directory (TTS_MODEL_PATH; default models/target)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder for SQLite (TTS_DATA_DIR; default data/)."),
    workers_file: Optional[Path] = typer.Option(None, help="TOML file of model roles (TTS_WORKERS_FILE; see workers/config.py)."),
) -> None:
    """Serve the OpenAI-compatible reasoning endpoint until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {"host": host, "port": port, "model_path": model_path, "data_dir": data_dir, "workers_file": workers_file}
    settings = get_settings(**{k: v for k, v in given.items() if v is not None})
    try:
        # Refuse a bad configuration before starting anything.
        config, profile = pool_config(settings), load_profile(settings.profile)
        check_prm_kind(config, profile)
        served_profile(profile, config)
        asyncio.run(serve(settings))
    except ConfigError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    if _stopped_by:
        raise typer.Exit(128 + _stopped_by[0])


if __name__ == "__main__":
    cli()

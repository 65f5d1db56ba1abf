"""Joining the Ray cluster the actor backends live in, or starting the service's own local one, and noticing
when that local one is gone.

The local Ray takes none of the ports a ``ray start --head`` on the same machine needs (GCS 6379, dashboard
8265, dashboard agent 52365, client server 10001): a user who runs ``ray start --head`` beside the service
(docs/evaluations.md, "As a Ray job") gets a cluster whose job server works, as on a machine without the
service. ``ray.init()`` picks free ports for everything but its dashboard agent's HTTP port (52365, fixed,
with no argument to change it), so the local head is started the way ``ray.init()`` starts it, with that one
port left to the kernel (:func:`_start_local_head`, pinned to the Ray version it was checked with).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

log = logging.getLogger(__name__)

# _start_local_head uses Ray's private node API as ray.init() does in this version (tests/workers/test_cluster.py
# checks it); with another version the service falls back to ray.init(), whose agent takes port 52365.
LOCAL_HEAD_RAY_VERSION = "2.60.0"

_local_head: Any = None  # the ray._private.node.Node this process started, while it runs


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one (no dashboard, no default port) when it is None.

    A local one is started even when a ``ray start`` cluster runs on this machine (``ray.init()`` would join
    that one): an unset ``TTS_RAY_ADDRESS`` means the service's own Ray, whatever else runs here."""
    global _local_head
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set for the driver of a Ray job
    if address:
        ray.init(address=address)
        return
    # Ray starts workers at niceness 15 by default, which starves engine actors behind any other
    # busy process on the node (the API itself, a benchmark's reference engine).
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ray.__version__ != LOCAL_HEAD_RAY_VERSION:
        log.warning(
            "Ray %s, not %s: the local Ray starts through ray.init(), whose dashboard agent takes port 52365 "
            "(a `ray start --head` beside the service then cannot run jobs)", ray.__version__, LOCAL_HEAD_RAY_VERSION,
        )
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
        return
    _local_head = _start_local_head(num_cpus=num_cpus)
    try:
        ray.init(address=_local_head.address, configure_logging=False)
    except BaseException:
        _stop_local_head()
        raise


def _start_local_head(*, num_cpus: int | None) -> Any:
    """A Ray head node for this process alone, as ``ray.init()`` starts one (token authentication on by
    default, a reaper and kernel fate-sharing so that it dies with this process), with its dashboard agent's
    HTTP port chosen by the kernel instead of 52365 and no dashboard."""
    from ray._common.usage import usage_lib
    from ray._private.authentication.authentication_token_setup import enable_token_auth_by_default, ensure_token_if_auth_enabled
    from ray._private.node import Node
    from ray._private.parameter import RayParams
    from ray._private.resource_isolation_config import ResourceIsolationConfig

    system_config: dict[str, Any] = {}
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(system_config, create_token_if_missing=True)
    usage_lib.set_usage_stats_enabled_via_env_var(False)
    params = RayParams(
        num_cpus=num_cpus,
        include_dashboard=False,
        dashboard_agent_listen_port=0,  # the one default port ray.init() would take
        _system_config=system_config,
        resource_isolation_config=ResourceIsolationConfig(enable_resource_isolation=False),
    )
    return Node(ray_params=params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)


def _stop_local_head() -> None:
    global _local_head
    head, _local_head = _local_head, None
    if head is not None:
        head.kill_all_processes(check_alive=False, allow_graceful=True)


def local_ray_lost() -> str | None:
    """Why the local Ray this process started is gone (its GCS server or raylet exited: ``ray stop``, a crash,
    the OOM killer), or None while it runs and when this process joined a cluster instead."""
    head = _local_head
    if head is None:
        return None
    for kind, proc in head.dead_processes():
        if kind in ("gcs_server", "raylet"):
            code = proc.poll()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return f"the service's local Ray is gone: its {kind} (pid {proc.pid}) exited ({how}; `ray stop` stops it)"
    return None


def leave_ray() -> None:
    """Disconnect this process from Ray (stopping the local cluster it started, if any); a no-op when not joined."""
    if ray.is_initialized():
        ray.shutdown()
    _stop_local_head()

"""Joining the Ray cluster the actor backends live in."""

from __future__ import annotations

import os

import ray


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one (no dashboard) when it is None."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set for the driver of a Ray job
    if address:
        ray.init(address=address)
    else:
        # Ray starts workers at niceness 15 by default, which starves engine actors behind any other
        # busy process on the node (the API itself, a benchmark's reference engine).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False)


def leave_ray() -> None:
    """Disconnect this process from Ray (stopping the local cluster it started, if any); a no-op when not joined."""
    if ray.is_initialized():
        ray.shutdown()

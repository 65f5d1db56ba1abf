"""The service's local Ray: started as ray.init() starts one but on no default port (so a `ray start --head`
beside it works), stopped with the process, and noticed at once when it goes away.

Each case runs in a child process of its own, with its own Ray temp directory, so that it neither joins nor
disturbs the Ray of this test session or of anyone else on the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ray

from workers.cluster import LOCAL_HEAD_RAY_VERSION

ROOT = Path(__file__).resolve().parents[2]
# What `ray start --head` takes by default: GCS, dashboard, dashboard agent, Ray client server.
RAY_START_PORTS = {6379, 8265, 52365, 10001}

CHILD = textwrap.dedent(
    """
    import json, os, signal, time
    import ray
    from workers import cluster
    cluster.connect_ray()
    head = cluster._local_head
    info = ray._private.worker._global_node.address_info
    # Every port a process of this node listens on, read from /proc (no psutil needed).
    pids = {str(p.process.pid) for kind in head.all_processes.values() for p in kind}
    deadline = time.time() + 60
    while time.time() < deadline:  # the agents start after the node: wait for the one that would take 52365
        agents = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/cmdline")
                  and info["session_dir"] in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]
        if any("dashboard/agent.py" in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in agents):
            break
        time.sleep(0.5)
    inodes = set()
    for pid in pids | set(agents):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    lost_before = cluster.local_ray_lost()
    raylet = head.all_processes["raylet"][0].process
    os.kill(raylet.pid, signal.SIGTERM)  # what `ray stop` does first
    t0 = time.time()
    while cluster.local_ray_lost() is None and time.time() - t0 < 30:
        time.sleep(0.1)
    print(json.dumps({"ports": sorted(ports), "lost_before": lost_before, "lost": cluster.local_ray_lost(),
                      "noticed_s": time.time() - t0, "auth": os.environ.get("RAY_AUTH_MODE")}))
    os._exit(0)
    """
)


def test_the_version_the_local_head_was_checked_with_is_the_installed_one():
    # Private Ray API (ray._private.node.Node, RayParams.dashboard_agent_listen_port): recheck it on an upgrade.
    assert ray.__version__ == LOCAL_HEAD_RAY_VERSION


def test_the_local_ray_takes_no_port_ray_start_needs_and_its_loss_is_noticed(tmp_path):
    temp = Path("/tmp") / f"rc{os.getpid()}"  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": str(temp), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    try:
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ports"], "found none of the node's listening ports"
    assert not set(got["ports"]) & RAY_START_PORTS, got["ports"]
    assert got["auth"] == "token"  # as ray.init() starts one: token authentication on
    assert got["lost_before"] is None
    assert got["lost"].startswith("the service's local Ray is gone: its raylet") and "ray stop" in got["lost"]
    assert got["noticed_s"] < 5

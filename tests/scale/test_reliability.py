"""The reliability guarantees on the real service, the scenarios of ``bench.reliability`` in processes of
their own (each starts its own Ray cluster, which cannot share this process with the tests' own): 64 concurrent
clients, a burst past the queue, worker kills under load and a node removed from a 3-node cluster, one after
the other on one service (``shared``: a cluster and its engines start once, not four times), and a server
crash with requests queued. The scenarios audit the database and exit non-zero when a guarantee was broken;
these tests also check the figures they report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.config import REPO_ROOT

pytestmark = pytest.mark.engine


def _scenario(tmp_path, name: str, *args: str, timeout: float = 1500) -> dict:
    out = tmp_path / f"{name}.json"
    log = tmp_path / f"{name}.log"
    with log.open("w") as f:
        rc = subprocess.call([sys.executable, "-m", "bench.reliability", name, "--out", str(out), *args], cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert out.exists(), f"{name} wrote no result (exit {rc}); its output ends:\n{text[-4000:]}"
    report = json.loads(out.read_text())
    assert rc == 0 and report["broken"] == [], f"{name}: {report['broken']} (exit {rc}); output ends:\n{text[-3000:]}"
    return report


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """The ``shared`` run's four reports; each test below checks its own (and fails on its own breaks)."""
    tmp = tmp_path_factory.mktemp("shared")
    out, log = tmp / "shared.json", tmp / "shared.log"
    with log.open("w") as f:
        rc = subprocess.call([sys.executable, "-m", "bench.reliability", "shared", "--out", str(out)], cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=2400)
    assert out.exists(), f"shared wrote no result (exit {rc}); its output ends:\n{log.read_text()[-4000:]}"
    return {name: {**report, "log": log} for name, report in json.loads(out.read_text()).items()}


def _unbroken(report: dict) -> dict:
    assert report["broken"] == [], f"{report['scenario']}: {report['broken']}; output ends:\n{report['log'].read_text()[-3000:]}"
    return report


def _no_request_lost(report: dict, sent: int) -> None:
    lat, audit = report["latency"], report["audit"]
    assert lat["requests"] == sent and lat["lost"] == 0
    assert audit["unfinished"] == 0 and audit["usage_mismatches"] == [] and audit["record_ledger_mismatches"] == []
    # Every request the service accepted is recorded once, in a final state; every answered one as succeeded.
    assert audit["answered"] == lat["succeeded"] and audit["records"] >= lat["succeeded"]
    assert sum(audit["states"].values()) == audit["records"]


def test_soak_with_two_worker_kills_loses_nothing_and_keeps_the_ledger_exact(shared):
    report = _unbroken(shared["soak"])
    _no_request_lost(report, 200)
    kills = report["kills"]
    assert len(kills) == 2 and {k["replica"] for k in kills} == {"policy-0", "policy-1"}
    assert all(k["new_pid"] != k["pid"] for k in kills)  # Ray restarted each killed worker
    # Calls caught by a kill were retried on the other replica: the kills cost no request.
    assert report["latency"]["succeeded"] >= 195, report["outcomes"]


def test_removing_a_node_of_three_mid_load_loses_nothing(shared):
    report = _unbroken(shared["nodes"])
    _no_request_lost(report, 160)
    assert report["distinct_nodes_before"] == 3  # one replica per node
    removed = report["removed"]
    assert len(removed["replicas_on_it"]) == 1 and removed["completed_when_gone"] < 160  # it went away mid-load
    assert report["placement_after"][removed["replicas_on_it"][0]] != removed["node"]  # restarted elsewhere
    assert report["latency"]["succeeded"] >= 155, report["outcomes"]


def test_64_concurrent_clients_get_answers_without_errors(shared):
    report = _unbroken(shared["load"])
    _no_request_lost(report, 128)
    lat = report["latency"]
    assert lat["errors"] == {} and lat["succeeded"] == 128
    assert 0 < lat["p50_s"] <= lat["p99_s"] and lat["throughput_rps"] > 0


def test_a_burst_past_the_queue_is_refused_with_retry_after_and_leaves_no_records(shared):
    report = _unbroken(shared["overload"])
    assert set(report["statuses"]) == {"200", "429"} and report["statuses"]["429"] >= 300
    assert report["retry_after_range"][0] >= 1
    assert report["audit"]["records"] == report["audit"]["answered"]  # refused requests were never recorded
    # Two bursts of 400 in a row: the process does not keep what it refused.
    assert report["peak_rss_growth_mib_over_both_bursts"] < 300


def test_a_crashed_server_leaves_no_request_running_after_restart(tmp_path):
    report = _scenario(tmp_path, "restart")
    assert report["at_kill"]["running"] >= 1 and report["at_kill"]["queued"] >= 1
    assert report["unfinished_after_kill"] >= 2 and report["unfinished_after_restart"] == 0
    assert report["after_restart"] == {"failed": report["unfinished_after_kill"]}
    assert all("restarted before this request finished" in r for r in report["reasons"])
    assert report["served_after_restart"] == [200, 200] and report["leases_after_exit"] == []

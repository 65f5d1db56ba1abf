"""The admin CLI on a real SQLite database: tenants, keys, prices."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner

from orchestrator.admin import cli
from orchestrator.db.store import Store


def test_tenant_key_and_price_commands(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    runner = CliRunner()
    out = runner.invoke(cli, ["tenant", "acme", "--tokens-per-day", "1000", "--url", url])
    assert out.exit_code == 0, out.output
    key = out.output.split("key")[1].strip()
    store = Store.from_url(url)
    assert asyncio.run(store.tenants.for_key(key)).tokens_per_day == 1000
    assert runner.invoke(cli, ["price", "target", "--prompt", "0.1", "--cached", "0.01", "--completion", "0.4", "--url", url]).exit_code == 0
    assert asyncio.run(store.prices.all()) == {"target": (0.1, 0.01, 0.4)}
    bad = runner.invoke(cli, ["price", "target", "--prompt", "-1", "--cached", "0", "--completion", "0", "--url", url])
    assert bad.exit_code != 0 and "greater than or equal to 0" in bad.output
    listed = runner.invoke(cli, ["prices", "--url", url])
    assert "target\t0.1\t0.01\t0.4" in listed.output

"""Administration of the service's database: tenants, API keys, prices, migrations.

    python -m orchestrator.admin tenant acme --tokens-per-day 1000000 --max-concurrent 8   # prints an API key
    python -m orchestrator.admin key TENANT_ID                                              # another key
    python -m orchestrator.admin price target --prompt 0.10 --cached 0.01 --completion 0.40 # $ per million tokens
    python -m orchestrator.admin prices

Every command works on the service's database (DATABASE_URL / TTS_DATA_DIR), migrating it first if needed.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import typer

from orchestrator.config import get_settings
from orchestrator.db.store import Store

cli = typer.Typer(add_completion=False, help=__doc__)


def _store(url: Optional[str]) -> Store:
    return Store.from_url(url or get_settings().database)


@cli.command()
def tenant(
    name: str,
    tokens_per_day: Optional[int] = typer.Option(None, min=1, help="Daily token quota (UTC days); none: unlimited."),
    max_concurrent: Optional[int] = typer.Option(None, min=1, help="Requests in flight at once; none: unlimited."),
    url: Optional[str] = typer.Option(None, help="SQLAlchemy URL (default: the service's database)."),
) -> None:
    """Create a tenant and print its first API key (shown once; only a hash is stored)."""
    tenants = _store(url).tenants

    async def create() -> tuple[str, str]:
        tenant_id = await tenants.create(name, tokens_per_day=tokens_per_day, max_concurrent=max_concurrent)
        return tenant_id, await tenants.create_api_key(tenant_id)

    tenant_id, api_key = asyncio.run(create())
    typer.echo(f"tenant {tenant_id}\nkey    {api_key}")


@cli.command()
def key(tenant_id: str, url: Optional[str] = typer.Option(None, help="SQLAlchemy URL.")) -> None:
    """Issue another API key for a tenant."""
    typer.echo(asyncio.run(_store(url).tenants.create_api_key(tenant_id)))


@cli.command()
def price(
    model: str,
    prompt: float = typer.Option(..., min=0, help="$ per million prompt tokens."),
    cached: float = typer.Option(..., min=0, help="$ per million prompt tokens served from the prefix cache."),
    completion: float = typer.Option(..., min=0, help="$ per million completion tokens."),
    url: Optional[str] = typer.Option(None, help="SQLAlchemy URL."),
) -> None:
    """Set the price of a served model (used by cost budgets and the dashboard)."""
    asyncio.run(_store(url).prices.set(model, prompt=prompt, cached=cached, completion=completion))


@cli.command()
def prices(url: Optional[str] = typer.Option(None, help="SQLAlchemy URL.")) -> None:
    """List prices ($ per million tokens: prompt, cached, completion)."""
    for model, (p, c, q) in sorted(asyncio.run(_store(url).prices.all()).items()):
        typer.echo(f"{model}\t{p}\t{c}\t{q}")


if __name__ == "__main__":
    cli()

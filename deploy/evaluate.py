"""Evaluate a grid of strategies x parameters x budgets on a dataset; results go to the service's database
(next to the request ledger), where the dashboard and `auto` read them.

    python -m deploy.evaluate --strategy self_consistency --strategy best_of_n --budget 500 --budget 2000 \\
        --dataset task:test --problems 30 --name small-grid
    python -m deploy.evaluate --dataset gsm8k_test.jsonl --strategy pdr --params '{"pdr": {"schedule": [4, 1]}}'
    ray job submit --working-dir . -- python -m deploy.evaluate ...     # the same, as a Ray job

Rerunning the same command (same --name and grid) resumes: problems already finished are skipped. Engines
are the ones the service would start (same TTS_* settings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import List, Optional

import typer
from tqdm import tqdm

from orchestrator.config import Settings, get_settings
from orchestrator.errors import ConfigError, TTSError
from orchestrator.evals import Dataset, Item, evaluate, grid, read_jsonl, table
from tasks import arithmetic as task
from tasks import countdown
from verifiers import ServedGrading

log = logging.getLogger(__name__)


# The bundled tasks a dataset spec may name, each with the verifier that grades it and what an item's gold
# answer is: the chained-arithmetic task's integer, or Countdown's question (it has many right answers).
_TASKS = {
    "task": (task, "task", lambda p: str(p.answer)),
    "countdown": (countdown, "countdown", lambda p: p.question),
}


def load_dataset(spec: str, *, problems: int | None = None, seed: int = 0) -> Dataset:
    """``task:<split>`` (the v1 bundled task) or ``countdown:<split>`` (the v2 family's), spread evenly over
    the task's levels, or a JSONL file; at most ``problems``."""
    kind, _, split = spec.partition(":")
    if kind in _TASKS and split:
        module, verifier, gold = _TASKS[kind]
        if split not in module.SPLITS:
            raise ConfigError(f"dataset {spec!r}: the bundled task's splits are {', '.join(module.SPLITS)}")
        count = problems or 100
        per_level = -(-count // len(module.LEVELS))
        by_level = {lv: module.generate(split, per_level, seed=seed, levels=[lv]) for lv in module.LEVELS}
        # Levels interleaved, so that a shorter run (a prefix) still covers every level.
        prefix = split if kind == "task" else f"{kind}-{split}"
        items = tuple(
            Item(f"{prefix}-{seed}-L{lv}-{i}", by_level[lv][i].question, gold(by_level[lv][i]), lv) for i in range(per_level) for lv in module.LEVELS
        )[:count]
        return Dataset(spec if seed == 0 else f"{spec}@{seed}", items, verifier)
    path = Path(spec)
    items = read_jsonl(path)
    return Dataset(path.stem, tuple(items[:problems] if problems else items), "math")
cli = typer.Typer(add_completion=False, help=__doc__)


def current_job_id() -> str | None:
    """The id of the Ray job this process is the driver of (Ray passes it in the job's config)."""
    try:
        return json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"])["metadata"]["job_submission_id"]
    except (KeyError, TypeError, ValueError):
        return None


async def run(settings: Settings, dataset_spec: str, strategies: list[str], budgets: list[int], params: dict, *, problems: int | None, seed: int,
              name: str, concurrency: int, job_id: str | None, tenant_id: str | None = None) -> str:
    from deploy.assembly import build_service
    from orchestrator.profile import load_profile

    from pydantic import ValidationError

    from strategies import REGISTRY

    dataset = load_dataset(dataset_spec, problems=problems, seed=seed)
    profile = load_profile(settings.profile)
    cells = grid(strategies, budgets or [None], params)  # type: ignore[list-item]
    for c in cells:  # refuse a bad grid before any engine starts
        if c.strategy not in REGISTRY:
            raise ConfigError(f"unknown strategy {c.strategy!r}; available: {sorted(REGISTRY)}")
        try:
            REGISTRY[c.strategy].parse(c.params, profile=profile)
        except ValidationError as err:
            raise ConfigError(f"{c.strategy} parameters: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None
    # Start only the engines the grid needs (a PRM, a draft, an embedder cost memory and start-up time).
    needs = set().union(*(REGISTRY[c.strategy].needs(REGISTRY[c.strategy].parse(c.params, profile=profile)) for c in cells))
    settings = settings.model_copy(
        update={
            "serve_prm": settings.serve_prm and bool(needs & {"prm", "judge"}),
            "serve_draft": settings.serve_draft and "draft" in needs,
            "serve_embedder": settings.serve_embedder and "clusterer" in needs,
            # Its own lease, never the API's: a job on the API's host (which inherits its TTS_* environment)
            # would otherwise take the API's id and fail the API's unfinished requests as a "restart".
            "server_id": f"eval-{job_id or name}-{socket.gethostname()}-{os.getpid()}",
        }
    )
    # No API: the job drives the controller itself, so it takes no port (the service it runs beside holds 8000).
    service = await build_service(settings, listens=False)
    try:
        grader = ServedGrading(profile, dataset.verifier)  # the served profile's answers, the dataset's comparison
        bar = tqdm(total=len(cells) * len(dataset.items), desc=f"{name}: {len(cells)} runs x {len(dataset.items)} problems", unit="problem")
        summaries = await evaluate(
            service.controller, service.store, dataset, cells, model=settings.model_name, name=name, grader=grader,
            concurrency=concurrency, job_id=job_id, tenant_id=tenant_id, progress=bar.update,
        )
        bar.close()
    finally:
        await service.stop()
    return table(summaries)


@cli.command()
def main(
    strategy: List[str] = typer.Option(..., "--strategy", "-s", help="A strategy of the grid (repeat the option for more)."),
    budget: List[int] = typer.Option([], "--budget", "-b", help="A max_total_tokens budget per problem (repeat; none: unbudgeted)."),
    params: str = typer.Option("{}", help='Parameters per strategy, JSON: {"best_of_n": {"n": 8}}.'),
    dataset: str = typer.Option("task:test", help="task:<train|dev|test> (the v1 bundled task), countdown:<train|dev|test> (the v2 family's), or a JSONL file (GSM8K, MATH-500 or AIME fields)."),
    problems: Optional[int] = typer.Option(None, min=1, help="At most this many problems (task: default 100, spread over levels)."),
    seed: int = typer.Option(0, help="Which problems of the bundled task."),
    name: str = typer.Option("default", help="The grid's name: a rerun with the same name and grid resumes it."),
    concurrency: int = typer.Option(4, min=1, help="Problems in flight at once."),
    job_id: Optional[str] = typer.Option(None, help="Ray job id to record with the runs (default: the job this runs in)."),
    tenant: Optional[str] = typer.Option(None, help="Tenant id the runs belong to and are charged to: its quota and concurrency limit apply (set by POST /v1/jobs)."),
) -> None:
    """Run the grid and print its summary table."""
    logging.basicConfig(level=logging.WARNING)
    try:
        parsed = json.loads(params)
        if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
            raise ConfigError('--params must be a JSON object of objects, e.g. {"best_of_n": {"n": 8}}')
        if any(b <= 0 for b in budget):
            raise ConfigError("--budget must be positive")
        out = asyncio.run(
            run(get_settings(), dataset, strategy, budget, parsed, problems=problems, seed=seed, name=name, concurrency=concurrency,
                job_id=job_id or current_job_id(), tenant_id=tenant)
        )
    except json.JSONDecodeError as err:
        typer.echo(f"error: --params is not JSON ({err.msg})", err=True)
        raise typer.Exit(2) from None
    except TTSError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(out)


if __name__ == "__main__":
    cli()

"""Build an ATTS calibration set: the target's perplexity of draft chunks on held-out questions, stored in the
service's database under ``<draft>-><model>/<dataset>`` for ATTS's line chunks, ``<draft>-><model>/<dataset>@tokens<k>``
for its reference mode's k-token chunks (see strategies/atts.py).

    python -m deploy.calibrate                                   # bundled task, dev split, 100 problems x 4 samples
    python -m deploy.calibrate --mode reference                  # the same for the reference mode's 32-token chunks
    python -m deploy.calibrate --dataset gsm8k --questions q.jsonl  # a JSONL file: field `question` or `problem`
    TTS_PROFILE=models/v2/profile.toml TTS_WORKERS_FILE=w.toml python -m deploy.calibrate --dataset countdown  # the v2 family
    python -m deploy.calibrate --help

Calibrate on questions the service will not be evaluated on (the bundled task's dev split, never test): a
conformal test is only as good as the exchangeability of its calibration set with live traffic. The engines
are the ones ``deploy.serve`` would start (same TTS_* settings), without the PRM and the embedder, and chunks
end where the served profile's steps do (TTS_PROFILE), as they do when a request runs ATTS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
from pathlib import Path
from typing import Optional, Sequence

import typer
from tqdm import tqdm

from deploy.assembly import pool_config, strategy_context, toolbox
from deploy.shipped import ShippedCalibration, weights_digest
from orchestrator.config import Settings, get_settings
from orchestrator.db.store import Store
from orchestrator.errors import ConfigError
from orchestrator.evals import jsonl_rows, question_messages
from orchestrator.profile import load_profile
from orchestrator.protocols import Engine
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem, problem_seed
from strategies import atts
from tasks import arithmetic, countdown

log = logging.getLogger(__name__)


def read_questions(path: Path) -> list[str]:
    """Questions of a JSONL file (GSM8K's `question` or MATH's `problem` field); a clear error otherwise."""
    out = []
    for i, row in jsonl_rows(path):
        q = row.get("question", row.get("problem"))
        if not isinstance(q, str) or not q.strip():
            raise ConfigError(f"{path}:{i}: no `question` or `problem` text field")
        out.append(q)
    if not out:
        raise ConfigError(f"{path}: no questions")
    return out


async def collect(
    engine: Engine, questions: Sequence[str], params: atts.Params, *, tools: Toolbox, target_model: str, concurrency: int = 16, progress: bool = True,
) -> list[float]:
    """Calibration scores of every question (``params.n`` samples each), questions run ``concurrency`` at once;
    each question samples with its own seed derived from ``params.seed`` (see ``problem_seed``). ``tools`` are
    the server's (its draft, and its profile: a line chunk ends at the served policy's step delimiter, as it
    does when a request runs ATTS)."""
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(questions), desc="calibrating", unit="question", disable=not progress)

    async def one(k: int, q: str) -> list[float]:
        async with sem:
            ctx = strategy_context(engine, tools, target_model=target_model)
            messages = question_messages(q, tools.profile)  # asked as evaluations ask (the profile's prompt suffix)
            prompt = await engine.render_chat("policy", messages)
            own = params.model_copy(update={"seed": problem_seed(params.seed, k)})
            scores = await atts.calibration_scores(ctx, Problem(prompt=prompt, question=q, messages=messages), own)
        bar.update()
        return scores

    try:
        per_question = await asyncio.gather(*(one(k, q) for k, q in enumerate(questions)))
    finally:
        bar.close()
    return [s for scores in per_question for s in scores]


async def calibrate(
    settings: Settings, questions: Sequence[str], params: atts.Params, *, dataset: str, append: bool, concurrency: int, export: Path | None = None
) -> dict[str, object]:
    from workers.pool import WorkerPool, connect_ray

    # Only the policy and the draft score chunks; a workers file says for itself which engines start.
    config = pool_config(settings if settings.workers_file else settings.model_copy(update={"serve_prm": False, "serve_embedder": False, "serve_draft": True}))
    store = Store.from_url(settings.database)
    connect_ray(settings.ray_address)
    pool = await WorkerPool.from_config(config)
    try:
        tools = toolbox(settings, config, pool, load_profile(settings.profile))
        scores = await collect(pool, questions, params, tools=tools, target_model=settings.model_name, concurrency=concurrency)
    finally:
        await pool.shutdown()
    name = atts.calibration_name(settings.draft_name, settings.model_name, dataset, params.chunking)
    if export is not None:
        draft, target = config.roles["draft"].model, config.roles["policy"].model
        if draft is None or target is None:
            raise ConfigError("--export needs local draft and policy models (their weights identify the set)")
        shipped = ShippedCalibration(
            dataset=dataset,
            chunking=params.chunking,
            draft_weights=weights_digest(draft),
            target_weights=weights_digest(target),
            made_by=f"python -m deploy.calibrate --problems {len(questions)} --n {params.n} --seed {params.seed}{mode_flags(params)} --export {export}",
            scores=scores,
        )
        export.write_text(shipped.model_dump_json(indent=None) + "\n")
    size = await store.calibration.add_scores(
        name, scores=scores, model=f"{settings.draft_name}->{settings.model_name}", keep=atts.CALIBRATION_WINDOW, replace=not append
    )
    q = statistics.quantiles(scores, n=10) if len(scores) >= 2 else scores
    return {"name": name, "added": len(scores), "size": size, "deciles": [round(x, 3) for x in q]}


def mode_flags(params: atts.Params) -> str:
    """The command-line flags that select ``params``' chunking (none for the default line chunks)."""
    return "" if params.mode == "line" else f" --mode {params.mode} --chunk-tokens {params.chunk}"


cli = typer.Typer(add_completion=False, help=__doc__)


@cli.command()
def main(
    dataset: str = typer.Option(
        "task", help="Name of the calibration set's dataset (requests choose it with strategy_params.dataset); `countdown` takes the bundled questions from the v2 family's task."
    ),
    questions: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="JSONL of questions; default: the bundled task's split (Countdown's for --dataset countdown)."),
    split: str = typer.Option("dev", help="Bundled task split when no --questions file is given (never test)."),
    problems: int = typer.Option(100, min=1, help="Bundled task problems (mixed difficulty) when no --questions file is given."),
    n: int = typer.Option(4, min=1, max=64, help="Draft samples per question."),
    max_turns: int = typer.Option(16, min=1, help="Most chunks per sample."),
    mode: str = typer.Option("line", help="ATTS mode whose chunks are scored: line (one step each) or reference (chunk_tokens tokens each)."),
    chunk_tokens: Optional[int] = typer.Option(None, min=1, help="Most tokens per chunk (as the requests' atts.chunk_tokens; default the mode's: 64 line, 32 reference)."),
    temperature: float = typer.Option(0.8, min=0.0, help="Draft sampling temperature (as the requests')."),
    seed: int = typer.Option(0, help="Seed of the problems and of the draft's sampling (each problem samples with its own seed derived from it)."),
    append: bool = typer.Option(False, "--append", help="Add to the existing set instead of replacing it."),
    concurrency: int = typer.Option(16, min=1, help="Questions in flight at once."),
    export: Optional[Path] = typer.Option(None, help="Also write the set as a shipped calibration file (<draft>/calibration.json)."),
) -> None:
    """Score draft chunks with the target and store them as the calibration set of (draft, model, dataset)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    try:
        if questions is not None:
            texts = read_questions(questions)
        else:
            if split not in ("train", "dev", "test"):
                raise ConfigError(f"--split must be train, dev or test, got {split!r}")
            task = countdown if dataset == "countdown" else arithmetic
            per_level = -(-problems // len(task.LEVELS))
            texts = [p.question for lv in task.LEVELS for p in task.generate(split, per_level, seed=seed, levels=[lv])][:problems]
        if mode not in ("line", "reference"):
            raise ConfigError(f"--mode must be line or reference, got {mode!r}")
        params = atts.Params(n=n, max_turns=max_turns, mode=mode, chunk_tokens=chunk_tokens, temperature=temperature, seed=seed, update_calibration=False)
    except (ConfigError, ValueError) as err:
        typer.echo(f"error: {getattr(err, 'message', err)}", err=True)
        raise typer.Exit(2) from None
    out = asyncio.run(calibrate(settings, texts, params, dataset=dataset, append=append, concurrency=concurrency, export=export))
    # Ray's log thread copies actor output to stdout with a print() that writes the line and its newline
    # separately; leaving Ray first keeps it from splicing a log line onto the report's.
    from workers.pool import leave_ray

    leave_ray()
    typer.echo(json.dumps(out))


if __name__ == "__main__":
    cli()

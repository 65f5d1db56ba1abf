"""Evaluation grids: strategies x parameters x budgets over a dataset, every problem a real request through the
controller (recorded in the ledger), every result stored next to it, resumable.

A run is one (strategy, parameters, budget) of a grid. Its id is a hash of the grid's name and of what the run
is, so a rerun of the same grid reopens the same runs and skips the problems they finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from orchestrator.controller import Controller, ReasoningRequest, TenantRef
from orchestrator.db.store import Store
from orchestrator.errors import ConfigError, Overloaded, QuotaExceeded, TTSError
from orchestrator.profile import ModelProfile
from orchestrator.protocols import ResultGrader
from orchestrator.types import problem_seed


@dataclass(frozen=True)
class Item:
    """One problem: its id within the dataset, the question, the gold answer, and its difficulty if known."""

    id: str
    question: str
    answer: str
    level: int | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    items: tuple[Item, ...]
    # How its gold answers compare: "task" (the bundled task's integers), "math" (math-verify) or "countdown"
    # (the gold answer is the question; the task's checker judges). Answers are read as the service reads them.
    verifier: str


def question_messages(question: str, profile: ModelProfile) -> tuple[dict[str, str], ...]:
    """A dataset's question as the served model's card asks it: the profile's ``system_prompt`` as the system
    message when it has one (Qwen2.5-Math-Instruct), its ``prompt_suffix`` after the question (R1)."""
    system = ({"role": "system", "content": profile.system_prompt},) if profile.system_prompt else ()
    return (*system, {"role": "user", "content": question + profile.prompt_suffix})


# Field conventions of the usual JSONL exports: GSM8K (question, answer ending "#### 42"), MATH-500 (problem,
# answer, level "Level 3" or 3, unique_id), AIME (problem or Problem, answer or Answer, id or ID).
_QUESTION = ("question", "problem", "Problem")
_ANSWER = ("answer", "Answer")
_ID = ("id", "ID", "unique_id", "problem_id")


def _gold(raw: object) -> str:
    text = str(raw).strip()
    return text.rsplit("####", 1)[1].strip().replace(",", "") if "####" in text else text


def _level(raw: object) -> int | None:
    m = re.search(r"\d+", str(raw)) if raw is not None else None
    return int(m.group()) if m else None


def jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSONL file; a clear error naming the line otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{i}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{i}: not a JSON object")
        rows.append((i, row))
    return rows


def read_jsonl(path: Path) -> list[Item]:
    """Items of a JSONL file in the GSM8K, MATH-500 or AIME conventions; a clear error naming the line otherwise."""
    items: list[Item] = []
    for i, row in jsonl_rows(path):
        q = next((row[k] for k in _QUESTION if isinstance(row.get(k), str)), None)
        a = next((row[k] for k in _ANSWER if row.get(k) is not None), None)
        if q is None or a is None:
            raise ConfigError(f"{path}:{i}: needs a question (`question` or `problem`) and an `answer`")
        pid = next((str(row[k]) for k in _ID if row.get(k) is not None), f"line-{i}")
        items.append(Item(pid, q, _gold(a), _level(row.get("level"))))
    if not items:
        raise ConfigError(f"{path}: no problems")
    if len({it.id for it in items}) != len(items):
        raise ConfigError(f"{path}: problem ids repeat; ids must be unique for a run to resume")
    return items


@dataclass(frozen=True)
class Cell:
    """One run of a grid."""

    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)
    budget: int | None = None

    def run_id(self, grid: str, dataset: str, model: str) -> str:
        key = json.dumps([grid, dataset, model, self.strategy, dict(self.params), self.budget], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.strategy}({params})" + (f"@{self.budget}" if self.budget else "")


def grid(strategies: Sequence[str], budgets: Sequence[int | None], params: Mapping[str, Mapping[str, Any]] | None = None) -> list[Cell]:
    """Every strategy at every budget, each with its parameters from ``params`` (by strategy name)."""
    params = params or {}
    unknown = set(params) - set(strategies)
    if unknown:
        raise ConfigError(f"parameters given for strategies not in the grid: {sorted(unknown)}")
    return [Cell(s, dict(params.get(s, {})), b) for s in strategies for b in (budgets or [None])]


@dataclass
class RunSummary:
    label: str
    run_id: str
    problems: int
    accuracy: float
    ci95: tuple[float, float]
    mean_tokens: float
    mean_sequential_tokens: float
    mean_cost_usd: float
    mean_latency_s: float
    by_level: dict[int, float]
    skipped: int = 0  # finished by an earlier run of the grid


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(label: str, run_id: str, results: Sequence[Mapping[str, Any]], skipped: int = 0) -> RunSummary:
    n = len(results)
    correct = sum(bool(r["correct"]) for r in results)
    levels: dict[int, list[bool]] = {}
    for r in results:
        if r.get("level") is not None:
            levels.setdefault(int(r["level"]), []).append(bool(r["correct"]))

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in results) if results else 0.0

    return RunSummary(
        label, run_id, n, correct / n if n else 0.0, wilson(correct, n), mean("total_tokens"), mean("sequential_tokens"), mean("cost_usd"),
        mean("latency_s"), {lv: sum(v) / len(v) for lv, v in sorted(levels.items())}, skipped,
    )


async def evaluate(
    controller: Controller,
    store: Store,
    dataset: Dataset,
    cells: Sequence[Cell],
    *,
    model: str,
    name: str,
    grader: ResultGrader,
    concurrency: int = 4,
    job_id: str | None = None,
    tenant_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[RunSummary]:
    """Run every cell over the dataset, ``concurrency`` problems in flight (across cells), skipping problems an
    earlier run of the same grid finished. A problem whose request fails is recorded as wrong with its error,
    so one bad problem does not stop the grid. A cell with a ``seed`` gives each problem its own seed derived
    from it and the problem's position in the dataset (see ``problem_seed``): the grid is reproducible, and
    its problems do not all draw the same sampling noise.

    The requests of a tenant's grid are the tenant's (``tenant_id``): they count against its concurrency
    limit and daily token quota like its HTTP requests. A request refused for a moment (the tenant's
    concurrency limit, a full server queue) waits and is sent again; once the day's quota is spent the grid
    stops with that error, its runs marked ``failed``, and resubmitting it later resumes where it stopped.

    Every problem is asked as the served model's card asks (:func:`question_messages`: the profile's prompt
    suffix and system prompt) and graded by ``grader`` from the service's own result (its answer and finish
    reason; see ``verifiers.ServedGrading``), so a grid measures what a caller of the service gets."""
    profile = controller.tools.profile
    for c in cells:
        controller.validate(ReasoningRequest(model=model, messages=({"role": "user", "content": "check"},), strategy=c.strategy, params=c.params))
    sem = asyncio.Semaphore(concurrency)
    tenant = await _tenant_ref(store, tenant_id)
    summaries = []
    # Every run is opened before any starts, so that a job's progress counts the whole grid from the start.
    finished: dict[str, set[str]] = {}
    for cell in cells:
        run_id = cell.run_id(name, dataset.name, model)
        finished[run_id] = await store.evals.open_run(
            run_id, name=name, dataset=dataset.name, model=model, strategy=cell.strategy, params=dict(cell.params),
            budget=cell.budget, planned=len(dataset.items), job_id=job_id, tenant_id=tenant_id,
        )
        if progress is not None and finished[run_id]:
            progress(len(finished[run_id]))
    position = {it.id: k for k, it in enumerate(dataset.items)}
    for cell in cells:
        run_id = cell.run_id(name, dataset.name, model)
        done = finished[run_id]
        todo = [it for it in dataset.items if it.id not in done]

        async def one(item: Item, cell: Cell = cell, run_id: str = run_id) -> None:
            params = dict(cell.params)
            if params.get("seed") is not None:  # reproducible, without every problem drawing the same noise
                params["seed"] = problem_seed(params["seed"], position[item.id])
            req = ReasoningRequest(
                model=model, messages=question_messages(item.question, profile), strategy=cell.strategy, params=params, max_total_tokens=cell.budget
            )
            async with sem:
                t0 = time.perf_counter()
                try:
                    out = await _reason(controller, req, tenant)
                except QuotaExceeded:
                    raise  # the day's quota: no problem after this one can run either
                except TTSError as err:
                    row = {"problem_id": item.id, "correct": False, "answer": f"error: {err.message}"[:500], "total_tokens": 0, "latency_s": time.perf_counter() - t0, "level": item.level}
                else:
                    row = {
                        "problem_id": item.id,
                        "correct": grader.grade(out.result, item.answer),
                        "answer": out.result.shown_answer,
                        "total_tokens": out.usage.total_tokens + out.verifier_tokens,
                        "sequential_tokens": out.sequential_tokens,
                        "cost_usd": out.cost_usd,
                        "latency_s": out.latency_s,
                        "level": item.level,
                        "request_id": out.request_id,
                    }
            await store.evals.add_result(run_id, result=row)
            if progress is not None:
                progress(1)

        try:
            async with asyncio.TaskGroup() as tg:
                for it in todo:
                    tg.create_task(one(it))
        except BaseExceptionGroup as group:  # the first failure stopped the others; raise it as itself
            err = next((e for e in group.exceptions if isinstance(e, QuotaExceeded)), group.exceptions[0])
            if isinstance(err, QuotaExceeded):
                for c in cells:
                    await store.evals.close_run(c.run_id(name, dataset.name, model), state="failed")
            raise err from None
        await store.evals.close_run(run_id, state="succeeded")
        run = next(r for r in await store.evals.runs(name=name) if r.id == run_id)
        rows = [asdict(r) for r in run.results]
        summaries.append(summarize(cell.label, run_id, rows, skipped=len(done)))
    return summaries


# A tenant's refusal that says to retry within this many seconds is momentary (a concurrency slot); a later
# one is its daily quota, which only the next day resets.
MOMENTARY_S = 60.0


async def _tenant_ref(store: Store, tenant_id: str | None) -> TenantRef | None:
    if tenant_id is None:
        return None
    tenant = await store.tenants.get(tenant_id)
    if tenant is None:
        raise ConfigError(f"no tenant {tenant_id!r}")
    return TenantRef.of(tenant)


async def _reason(controller: Controller, req: ReasoningRequest, tenant: TenantRef | None):
    """Run ``req`` for ``tenant``, waiting out momentary refusals as an HTTP client honouring Retry-After would."""
    while True:
        try:
            return await controller.reason(req, tenant=tenant)
        except QuotaExceeded as err:
            # A busy server always frees up; a tenant's refusal does soon only if it says so.
            if not isinstance(err, Overloaded) and (err.retry_after is None or err.retry_after > MOMENTARY_S):
                raise
            await asyncio.sleep(err.retry_after or 1.0)


def table(summaries: Sequence[RunSummary]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| run | problems | accuracy (95% CI) | mean tokens | mean sequential | mean $ | mean latency (s) | by level |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        levels = " ".join(f"L{lv}:{acc:.2f}" for lv, acc in s.by_level.items())
        lines.append(
            f"| {s.label} | {s.problems} | {s.accuracy:.3f} ({s.ci95[0]:.2f}-{s.ci95[1]:.2f}) | {s.mean_tokens:.0f} | "
            f"{s.mean_sequential_tokens:.0f} | {s.mean_cost_usd:.4f} | {s.mean_latency_s:.2f} | {levels} |"
        )
    return "\n".join(lines)

"""Evaluation jobs over HTTP: ``POST /v1/jobs`` submits ``python -m deploy.evaluate`` to the Ray cluster's job
server through Ray's JobSubmissionClient; status, progress (from the results stored so far) and logs come
back by job id. A key sees only its tenant's jobs; another tenant's job is a 404 like a missing one."""

from __future__ import annotations

import asyncio
import shlex
import sys
import uuid
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.config import Settings
from orchestrator.controller import Controller, TenantRef
from orchestrator.errors import EngineUnavailable, InvalidRequest, NotFound
from orchestrator.evals import Cell
from orchestrator.protocols import JobInfo, JobServer


class JobRequest(BaseModel):
    """A grid: every strategy at every budget, over a dataset of the bundled task."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"strategies": ["self_consistency"], "budgets": [500], "problems": 5}]})

    strategies: list[str] = Field(min_length=1, max_length=20)
    budgets: list[int] = Field(default_factory=list, max_length=20, description="max_total_tokens per problem; none: unbudgeted.")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Parameters per strategy name.")
    dataset: str = Field("task:test", pattern=r"^task:(train|dev|test)$", description="A split of the bundled task.")
    problems: int = Field(30, ge=1, le=5000)
    seed: int = Field(0, ge=0)
    name: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$", description="Grid name (resubmitting resumes).")
    concurrency: int = Field(4, ge=1, le=64)


def entrypoint(job: JobRequest, tenant_id: str | None) -> str:
    args = [sys.executable, "-m", "deploy.evaluate", "--dataset", job.dataset, "--problems", str(job.problems), "--seed", str(job.seed),
            "--name", job.name, "--concurrency", str(job.concurrency)]
    for s in job.strategies:
        args += ["--strategy", s]
    for b in job.budgets:
        args += ["--budget", str(b)]
    if job.params:
        import json

        args += ["--params", json.dumps(job.params)]
    if tenant_id:
        args += ["--tenant", tenant_id]
    return shlex.join(args)


def add_jobs(app: FastAPI, controller: Controller, settings: Settings, caller: Callable[[Request], Awaitable[TenantRef | None]], jobs: JobServer | None) -> None:
    app.state.jobs = jobs  # deploy.serve gives Ray's job server; tests may swap it

    def server() -> JobServer:
        if app.state.jobs is None:
            raise EngineUnavailable("this server has no job server configured (TTS_JOBS_ADDRESS)")
        return app.state.jobs

    async def owned(job_id: str, tenant: TenantRef | None) -> JobInfo:
        found = await asyncio.to_thread(server().info, job_id)
        if found is None or found.metadata.get("tts") != "eval" or found.metadata.get("tts_tenant", "") != (tenant.id if tenant else ""):
            raise NotFound(f"no job {job_id!r}", param="job_id")
        return found

    def view(info: JobInfo) -> dict[str, Any]:
        runs = controller.store.eval_runs(job_id=info.id)
        return {
            "id": info.id,
            "status": info.status,
            "message": info.message,
            "entrypoint": info.entrypoint,
            "progress": {"done": sum(len(r.results) for r in runs), "planned": sum(r.planned for r in runs), "runs": len(runs)},
            "runs": [{"id": r.id, "strategy": r.strategy, "params": r.params, "budget": r.budget, "state": r.state, "done": len(r.results), "planned": r.planned} for r in runs],
        }

    @app.post("/v1/jobs")
    async def submit(body: JobRequest, request: Request) -> dict[str, Any]:
        """Submit an evaluation grid as a Ray job."""
        from strategies import REGISTRY

        tenant = await caller(request)
        for cell in (Cell(s, body.params.get(s, {})) for s in body.strategies):
            if cell.strategy not in REGISTRY:
                raise InvalidRequest(f"unknown strategy {cell.strategy!r}; available: {sorted(REGISTRY)}", param="strategies")
            try:
                controller.limits.check(REGISTRY[cell.strategy].params.model_validate(dict(cell.params)))
            except ValidationError as err:
                raise InvalidRequest(f"params.{cell.strategy}: {err.errors()[0]['msg']}", param=f"params.{cell.strategy}") from None
        unknown = set(body.params) - set(body.strategies)
        if unknown:
            raise InvalidRequest(f"params for strategies not in the grid: {sorted(unknown)}", param="params")
        job_id = f"eval-{uuid.uuid4().hex[:12]}"
        env = {"DATABASE_URL": settings.database, "TTS_MODEL_NAME": settings.model_name}
        if settings.workers_file is None:  # otherwise the job's own environment names its workers file (deploy/README.md)
            env |= {"TTS_MODEL_PATH": str(settings.model_path), "TTS_KV_CACHE_GIB": str(settings.kv_cache_gib), "TTS_MAX_MODEL_LEN": str(settings.max_model_len)}
        meta = {"tts": "eval", "tts_tenant": tenant.id if tenant else "", "grid": body.name}
        js = server()
        await asyncio.to_thread(lambda: js.submit(entrypoint=entrypoint(body, tenant.id if tenant else None), job_id=job_id, env=env, metadata=meta))
        return {"id": job_id, "status": "PENDING"}

    @app.get("/v1/jobs/{job_id}")
    async def status(job_id: str, request: Request) -> dict[str, Any]:
        """Status from Ray; progress from the results stored so far."""
        info = await owned(job_id, await caller(request))
        return await asyncio.to_thread(view, info)

    @app.get("/v1/jobs/{job_id}/logs", response_class=PlainTextResponse)
    async def logs(job_id: str, request: Request) -> PlainTextResponse:
        await owned(job_id, await caller(request))
        return PlainTextResponse(await asyncio.to_thread(server().logs, job_id))

    @app.delete("/v1/jobs/{job_id}")
    async def stop(job_id: str, request: Request) -> dict[str, Any]:
        """Stop a job; resubmitting the same grid later resumes it."""
        info = await owned(job_id, await caller(request))
        await asyncio.to_thread(server().stop, job_id)
        return await asyncio.to_thread(view, info)

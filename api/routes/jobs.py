"""Evaluation jobs over HTTP: ``POST /v1/jobs`` submits ``python -m deploy.evaluate`` to the Ray cluster's job
server through Ray's JobSubmissionClient; status, progress (from the results stored so far) and logs come
back by job id. A key sees only its tenant's jobs; another tenant's job is a 404 like a missing one."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import uuid

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from api.deps import CallerDep, ControllerDep, JobsDep, SettingsDep, StoreDep, TenantDep
from api.schemas import JobRequest, JobSubmitted, JobView
from api.views import job_view
from orchestrator.controller import TenantRef
from orchestrator.db.store import Store
from orchestrator.errors import EngineUnavailable, InvalidRequest, NotFound
from orchestrator.evals import Cell
from orchestrator.protocols import JobInfo, JobServer

router = APIRouter()


def entrypoint(job: JobRequest, tenant_id: str | None) -> str:
    """The job's shell command: ``deploy.evaluate`` over the grid, as the tenant when there is one."""
    args = [sys.executable, "-m", "deploy.evaluate", "--dataset", job.dataset, "--problems", str(job.problems), "--seed", str(job.seed),
            "--name", job.name, "--concurrency", str(job.concurrency)]
    for s in job.strategies:
        args += ["--strategy", s]
    for b in job.budgets:
        args += ["--budget", str(b)]
    if job.params:
        args += ["--params", json.dumps(job.params)]
    if tenant_id:
        args += ["--tenant", tenant_id]
    return shlex.join(args)


def _server(jobs: JobServer | None) -> JobServer:
    if jobs is None:
        raise EngineUnavailable("this server has no job server configured (TTS_JOBS_ADDRESS)")
    return jobs


async def _owned(jobs: JobServer | None, job_id: str, tenant: TenantRef | None) -> tuple[JobServer, JobInfo]:
    """The job server and the job, if it is one of the caller's evaluation jobs (else a 404)."""
    server = _server(jobs)
    found = await asyncio.to_thread(server.info, job_id)
    if found is None or found.metadata.get("tts") != "eval" or found.metadata.get("tts_tenant", "") != (tenant.id if tenant else ""):
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return server, found


async def _view(store: Store, info: JobInfo) -> JobView:
    return job_view(info, await store.evals.runs(job_id=info.id))


@router.post("/v1/jobs")
async def submit(body: JobRequest, controller: ControllerDep, settings: SettingsDep, jobs: JobsDep, caller: CallerDep) -> JobSubmitted:
    """Submit an evaluation grid as a Ray job."""
    from strategies import REGISTRY

    tenant = await caller.tenant()
    for cell in (Cell(s, body.params.get(s, {})) for s in body.strategies):
        if cell.strategy not in REGISTRY:
            raise InvalidRequest(f"unknown strategy {cell.strategy!r}; available: {sorted(REGISTRY)}", param="strategies")
        try:
            controller.limits.check(REGISTRY[cell.strategy].parse(cell.params, profile=controller.tools.profile))
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
    server = _server(jobs)
    await asyncio.to_thread(lambda: server.submit(entrypoint=entrypoint(body, tenant.id if tenant else None), job_id=job_id, env=env, metadata=meta))
    return JobSubmitted(id=job_id)


@router.get("/v1/jobs/{job_id}")
async def status(job_id: str, store: StoreDep, jobs: JobsDep, tenant: TenantDep) -> JobView:
    """Status from Ray; progress from the results stored so far."""
    _, info = await _owned(jobs, job_id, tenant)
    return await _view(store, info)


@router.get("/v1/jobs/{job_id}/logs", response_class=PlainTextResponse)
async def logs(job_id: str, jobs: JobsDep, tenant: TenantDep) -> PlainTextResponse:
    server, _ = await _owned(jobs, job_id, tenant)
    return PlainTextResponse(await asyncio.to_thread(server.logs, job_id))


@router.delete("/v1/jobs/{job_id}")
async def stop(job_id: str, store: StoreDep, jobs: JobsDep, tenant: TenantDep) -> JobView:
    """Stop a job; resubmitting the same grid later resumes it."""
    server, info = await _owned(jobs, job_id, tenant)
    await asyncio.to_thread(server.stop, job_id)
    return await _view(store, info)

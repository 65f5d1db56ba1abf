"""One router per concern; ``api.app.create_app`` includes them in the order of ``ROUTERS``, which is also
the order of the paths in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import evals, health, jobs, openai, requests

ROUTERS: tuple[APIRouter, ...] = (evals.router, jobs.router, health.router, openai.router, requests.router)

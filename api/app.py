"""The HTTP API: OpenAI-compatible reasoning endpoints in front of the controller, plus native ones.

    POST /v1/chat/completions, /v1/completions   the OpenAI shapes (streaming included)    routes/openai.py
    POST /v1/reason                              the whole trace of one request            routes/openai.py
    GET  /v1/requests, /v1/requests/{id}         the caller's recorded requests            routes/requests.py
    DELETE /v1/requests/{id}                     cancel a running request                  routes/requests.py
    /v1/jobs...                                  evaluation grids as Ray jobs              routes/jobs.py
    GET  /v1/evals, /v1/usage, /dashboard        evaluation results, usage, the dashboard  routes/evals.py
    GET  /v1/models                              what is served                            routes/openai.py
    GET  /healthz, /metrics                      liveness; Prometheus metrics              routes/health.py

Routes get the controller, store, settings and caller from api/deps.py; responses are built in api/views.py;
every error leaves through api/errors.py.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.errors import HANDLERS
from api.middleware import BodyLimit
from api.routes import ROUTERS
from orchestrator.config import Settings
from orchestrator.controller import Controller
from orchestrator.protocols import JobServer


def create_app(settings: Settings, controller: Controller, jobs: JobServer | None = None) -> FastAPI:
    """Build the app around a ready controller (engines and database are started by the caller). ``jobs`` is
    where evaluation grids run; ``deploy.serve`` gives Ray's job server, and tests may swap ``app.state.jobs``."""
    app = FastAPI(title="Test-time scaling service", version="0.1.0", exception_handlers=HANDLERS)
    app.state.controller = controller
    app.state.settings = settings
    app.state.jobs = jobs
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    return app

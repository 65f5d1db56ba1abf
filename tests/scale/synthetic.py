"""The service over synthetic engines in this process (no Ray, no vLLM): the real controller, toolbox, budget,
ledger (SQLite) and pool, every role a :mod:`workers.synthetic` engine running in-process."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from deploy.assembly import controller_for, toolbox
from orchestrator.config import get_settings
from orchestrator.controller import Controller, ReasoningRequest, ReasoningResponse
from orchestrator.db.store import Store
from orchestrator.profile import BUNDLED
from strategies import atts
from workers.config import PoolConfig
from workers.pool import WorkerPool
from workers.synthetic import SyntheticSpec, synthetic_question, synthetic_workers


@dataclass
class Synthetic:
    """A running in-process service: its controller, pool, ledger and workers configuration."""

    controller: Controller
    pool: WorkerPool
    store: Store
    config: PoolConfig
    profile: str

    async def ask(self, strategy: str, index: int, **kw: object) -> ReasoningResponse:
        """Synthetic problem ``index`` with ``strategy`` (``params`` and request fields in ``kw``)."""
        params = kw.pop("params", {})
        req = ReasoningRequest(
            model="target", messages=({"role": "user", "content": synthetic_question(index)},), strategy=strategy, params=params, **kw  # type: ignore[arg-type]
        )
        return await self.controller.reason(req)

    def engine(self, role: str):  # the role's first engine (workers.sim.engine.SyntheticEngine)
        backend = self.pool.replica(self.pool.replica_names(role)[0])  # type: ignore[arg-type]
        return backend._ready()  # type: ignore[attr-defined]


@asynccontextmanager
async def synthetic_service(tmp: Path, profile: str = "r1-distill", *, keys: str = "", calibrate: int = 24, **settings: object) -> AsyncIterator[Synthetic]:
    """The service for ``profile`` over in-process synthetic engines (``keys``: URL keys for every role), with
    an ATTS calibration set of the draft's first chunks on ``calibrate`` held-out problems."""
    config = synthetic_workers(profile, keys="&".join(k for k in ("inprocess=1", keys) if k))
    specs = [SyntheticSpec.from_config(role, rc) for role, rc in config.roles.items()]
    pool = await WorkerPool.start(specs, call_timeout_s=config.call_timeout_s)
    store = Store.from_url(f"sqlite:///{tmp / 'tts.db'}")
    s = get_settings(data_dir=tmp, clusterer="lexical", **{"max_request_tokens": 100_000_000, "max_running": 256, "max_queued": 1024, **settings})
    prof = BUNDLED[profile]
    tools = toolbox(s, config, pool, prof, calibration=store.calibration)
    controller = controller_for(s, pool=pool, store=store, tools=tools, profile=prof)
    service = Synthetic(controller, pool, store, config, profile)
    if calibrate:
        await calibrate_atts(service, problems=range(10_000, 10_000 + calibrate))
    try:
        yield service
    finally:
        await pool.shutdown()
        store.engine.dispose()


async def calibrate_atts(service: Synthetic, *, problems: range) -> None:
    """The draft->target calibration set of line chunks, from held-out problems (as ``deploy.calibrate`` builds it)."""
    from deploy.assembly import strategy_context
    from orchestrator.types import Problem

    ctx = strategy_context(service.pool, service.controller.tools)
    params = atts.Params.model_validate({"n": 1, "max_turns": 4}, context={"profile": BUNDLED[service.profile]})
    render = service.pool.render_chat
    scores: list[float] = []
    for i in problems:
        messages = ({"role": "user", "content": synthetic_question(i)},)
        prompt = await render("policy", messages)
        scores += await atts.calibration_scores(ctx, Problem(prompt=prompt, question=messages[0]["content"], messages=messages), params)
    name = atts.calibration_name(service.controller.tools.draft_model or "draft", "target", params.dataset, params.chunking)
    await service.store.calibration.add_scores(name, scores=scores, model="draft->target", keep=atts.CALIBRATION_WINDOW)


def run(coro):  # noqa: ANN001, ANN201 - tests' one-liner
    return asyncio.run(coro)

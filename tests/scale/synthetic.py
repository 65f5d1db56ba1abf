"""The service over synthetic engines in this process (no Ray, no vLLM): the real controller, toolbox, budget,
ledger (SQLite) and pool, every role a :mod:`workers.synthetic` engine running in-process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import case, func, select

from deploy.assembly import controller_for, toolbox
from deploy.calibrate import collect
from orchestrator.config import get_settings
from orchestrator.controller import Controller, ReasoningRequest, ReasoningResponse
from orchestrator.db.models import RequestRecord, SubCallRecord
from orchestrator.db.store import Store
from orchestrator.profile import BUNDLED, ModelProfile
from strategies import atts
from workers.config import PoolConfig
from workers.pool import WorkerPool
from workers.sim.world import World
from workers.synthetic import PRESETS, WRITING_OF, SyntheticSpec, synthetic_question, synthetic_workers


@dataclass
class Synthetic:
    """A running in-process service: its controller, pool, ledger, workers configuration and profile."""

    controller: Controller
    pool: WorkerPool
    store: Store
    config: PoolConfig
    profile: ModelProfile

    async def ask(self, strategy: str, index: int, *, params: dict[str, object] | None = None, **fields: object) -> ReasoningResponse:
        """Synthetic problem ``index`` with ``strategy`` (``fields``: the request's other fields)."""
        messages = ({"role": "user", "content": synthetic_question(index)},)
        req = ReasoningRequest(model="target", messages=messages, strategy=strategy, params=params or {}, **fields)  # type: ignore[arg-type]
        return await self.controller.reason(req)

    def engine(self, role: str):  # noqa: ANN201 - the role's first engine (workers.sim.engine.SyntheticEngine)
        return self.pool.replica(self.pool.replica_names(role)[0])._ready()  # type: ignore[arg-type, attr-defined]

    def gold(self, index: int) -> str:
        return self.engine("policy").world.gold(synthetic_question(index))

    def ledger(self, request_id: str) -> tuple[int, int, int, int, str]:
        """What the ledger holds for a request: the sums of its sub-call rows (policy prompt and completion tokens,
        verifier tokens), their count, and its final state; its recorded totals must equal the sums."""
        with self.store.session() as s:
            policy = SubCallRecord.verifier_tokens == 0
            row = s.execute(
                select(
                    func.coalesce(func.sum(case((policy, SubCallRecord.prompt_tokens), else_=0)), 0),
                    func.coalesce(func.sum(case((policy, SubCallRecord.completion_tokens), else_=0)), 0),
                    func.coalesce(func.sum(SubCallRecord.verifier_tokens), 0),
                    func.count(),
                ).where(SubCallRecord.request_id == request_id)
            ).one()
            rec = s.get(RequestRecord, request_id)
            assert rec is not None
            assert (rec.prompt_tokens, rec.completion_tokens, rec.verifier_tokens) == tuple(int(x) for x in row[:3]), request_id
            return int(row[0]), int(row[1]), int(row[2]), int(row[3]), rec.state

    async def stop(self) -> None:
        await self.pool.shutdown()
        self.store.engine.dispose()


async def start_synthetic(
    tmp: Path, profile: str = "r1-distill", *, keys: str = "", prm: str = "prm-7b-h100", calibrate: int = 24, overflow: str | None = None, **settings: object
) -> Synthetic:
    """The service for ``profile`` over in-process synthetic engines (``keys``: URL keys for every role; ``prm``:
    the PRM's preset and keys), with ATTS calibration sets of the draft's first chunks on ``calibrate`` held-out
    problems. ``overflow``: the profile's ``[prm] overflow``."""
    config = synthetic_workers(profile, prm=prm, keys="&".join(k for k in ("inprocess=1", keys) if k))
    specs = [SyntheticSpec.from_config(role, rc) for role, rc in config.roles.items()]
    pool = await WorkerPool.start(specs, call_timeout_s=config.call_timeout_s)
    store = Store.from_url(f"sqlite:///{tmp / 'tts.db'}")
    values: dict[str, object] = {"max_request_tokens": 100_000_000, "max_running": 512, "max_queued": 2048, **settings}
    s = get_settings(data_dir=tmp, clusterer="lexical", **values)
    prof = BUNDLED[profile]
    if overflow is not None:
        prof = prof.model_copy(update={"prm": prof.prm.model_copy(update={"overflow": overflow})})
    tools = toolbox(s, config, pool, prof, calibration=store.calibration)
    service = Synthetic(controller_for(s, pool=pool, store=store, tools=tools, profile=prof), pool, store, config, prof)
    if calibrate:
        await calibrate_atts(service, problems=range(10_000, 10_000 + calibrate))
    return service


async def calibrate_atts(service: Synthetic, *, problems: range) -> None:
    """The draft->target calibration sets of both chunkings from held-out problems, as ``deploy.calibrate`` builds them."""
    questions = [synthetic_question(i) for i in problems]
    for mode in ("line", "reference"):
        params = atts.Params.model_validate({"n": 1, "max_turns": 3, "mode": mode, "seed": 0}, context={"profile": service.profile})
        scores = await collect(service.pool, questions, params, tools=service.controller.tools, target_model="target", progress=False)
        name = atts.calibration_name(service.controller.tools.draft_model or "draft", "target", params.dataset, params.chunking)
        await service.store.calibration.add_scores(name, scores=scores, model="draft->target", keep=atts.CALIBRATION_WINDOW)


def fitting(profile: str, count: int, *, start: int = 0, quantile: float = 0.95) -> list[int]:
    """The first ``count`` synthetic problems from ``start`` whose traces fit the profile's ``max_tokens``: the
    ``quantile`` of a whole trace's length (for the policy that :func:`synthetic_workers` serves) is within it."""
    prof = BUNDLED[profile]
    world = World(WRITING_OF[profile], prof)
    accuracy = PRESETS["r1-7b-h100" if profile == "r1-distill" else "qwen-math-7b-h100"].accuracy
    out: list[int] = []
    i = start
    while len(out) < count:
        if world.length_quantiles(i, accuracy, [quantile])[0] <= prof.max_tokens:
            out.append(i)
        i += 1
    return out

"""The synthetic backend: a simulated reasoning engine on a modeled H100, for testing and measuring the service at
the scale of real reasoning models on machines without a GPU (``url = "synthetic:<preset>?key=value..."``).

A test double, not a model: what it writes, the accuracy of its answers and the AUROC of its scores are inputs
(``workers.sim.world``); its GPU time is a roofline model (``workers.sim.gpu``); its KV cache and prefix cache
count blocks as vLLM does (``workers.sim.kv``); the engine batching the calls is ``workers.sim.engine``. Every
number made with it is simulated and must say so.

Presets (the model's writing, shape on one H100 SXM, and accuracy on MATH-500):

==========================  ============  =====================  ========================================================
preset                      profile       shape                  accuracy (source)
==========================  ============  =====================  ========================================================
``r1-1.5b-h100``            r1-distill    Qwen2.5-1.5B           0.839 (DeepSeek-R1 report, R1-Distill-Qwen-1.5B MATH-500)
``r1-7b-h100``              r1-distill    Qwen2.5-7B             0.928 (the same, R1-Distill-Qwen-7B)
``qwen-math-1.5b-h100``     qwen-math     Qwen2.5-1.5B           0.758 (Qwen2.5-Math report, 1.5B-Instruct, MATH CoT)
``qwen-math-7b-h100``       qwen-math     Qwen2.5-7B             0.836 (the same, 7B-Instruct)
``prm-7b-h100``             (any)         Qwen2.5-7B             step AUROC 0.85 (an input, not a measurement)
==========================  ============  =====================  ========================================================

A draft is a smaller preset (``r1-1.5b-h100`` for an ``r1-7b-h100`` target), or any preset with a lower
``accuracy``. A PRM is a pooling one (Qwen2.5-Math-PRM's layout) when its role says ``runner = "pooling"`` (prefix
caching off, as vLLM has it for pooling models), else a tag PRM (Math-Shepherd's), as for any served PRM.

URL keys (each optional; a key the role's table also has, e.g. ``max_model_len``, is taken from the URL first, then
from the table when set there, then from the preset):

- ``profile``: the bundled model profile whose format it writes and reads (``r1-distill``, ``qwen-math``);
- ``world``: the seed of the problems (every role of one service must share it), default 0;
- ``seed``: the sampling seed of unseeded calls (default the role's ``seed``; replica i adds i);
- ``accuracy``: its share of right answers (in expectation over problems); for a PRM, the accuracy of the policy
  whose unfinished steps it judges;
- ``auroc``: a PRM's step AUROC; ``verify_auroc``: how well its perplexity separates another model's right and
  wrong steps (ATTS's target), default 0.75;
- ``time_scale``: the share of modeled time the engine sleeps (0: none, as fast as the CPU goes; 1: real time);
- ``time_factor``: multiplies every modeled step time (a draft made cheaper than its preset);
- ``tick``: scheduler steps per engine iteration (coarser: less Python work, coarser finish times), default 16;
- ``block_size`` (16), ``kv_blocks`` (as the H100's memory allows), ``gpu_memory_utilization`` (0.9),
  ``max_model_len``, ``max_num_seqs`` (1024), ``max_batched_tokens`` (8192): vLLM's settings of the same names;
- ``inprocess``: 1 runs the engine in the service's own process, without a Ray actor (tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from functools import partial
from typing import AsyncIterator, Callable, Sequence
from urllib.parse import parse_qsl, urlsplit

from orchestrator.errors import ConfigError
from orchestrator.profile import BUNDLED
from orchestrator.types import EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses
from workers.actor import Placement, actor_backend, served_calls
from workers.backend import Backend, Unsupported
from workers.config import PoolConfig, RoleConfig
from workers.sim.engine import SimConfig, SyntheticEngine
from workers.sim.gpu import H100_SXM, QWEN2_5_1_5B, QWEN2_5_7B, CostModel, Shape
from workers.sim.world import WRITINGS, question

SCHEME = "synthetic:"


@dataclass(frozen=True)
class Preset:
    """A simulated model: the profile it writes in, its shape (hence its GPU time), its accuracy, its context."""

    profile: str
    shape: Shape
    accuracy: float
    max_model_len: int


PRESETS: dict[str, Preset] = {
    "r1-1.5b-h100": Preset("r1-distill", QWEN2_5_1_5B, 0.839, 32768),
    "r1-7b-h100": Preset("r1-distill", QWEN2_5_7B, 0.928, 32768),
    "qwen-math-1.5b-h100": Preset("qwen-math", QWEN2_5_1_5B, 0.758, 4096),
    "qwen-math-7b-h100": Preset("qwen-math", QWEN2_5_7B, 0.836, 4096),
    "prm-7b-h100": Preset("r1-distill", QWEN2_5_7B, 0.839, 4096),
}
WRITING_OF = {"r1-distill": WRITINGS["r1"], "qwen-math": WRITINGS["qwen-math"]}

_FLOATS = {"accuracy", "auroc", "verify_auroc", "time_scale", "time_factor", "gpu_memory_utilization"}
_INTS = {"world", "seed", "tick", "block_size", "kv_blocks", "max_model_len", "max_num_seqs", "max_batched_tokens", "inprocess"}
_KEYS = _FLOATS | _INTS | {"profile"}
# Keys a role's table also has: taken from the table when it sets them (and the URL does not).
_ROLE_KEYS = ("max_model_len", "block_size", "max_num_seqs", "gpu_memory_utilization")


def synthetic_question(index: int, *, world: int = 0) -> str:
    """The question of synthetic problem ``index`` (its marker is what the engine reads)."""
    return question(index, seed=world)


def parse_url(url: str, rc: RoleConfig | None = None) -> tuple[SimConfig, bool]:
    """The engine's settings from ``<preset>?key=value...`` (a ``synthetic:`` URL without its scheme) and the
    role's table; and whether it runs in-process."""
    parts = urlsplit(url)
    name = parts.path or "r1-1.5b-h100"
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"{url!r}: unknown synthetic preset {name!r}; known: {sorted(PRESETS)}")
    query = dict(parse_qsl(parts.query))
    unknown = sorted(set(query) - _KEYS)
    if unknown:
        raise ConfigError(f"{url!r}: unknown synthetic engine settings {unknown}; known: {sorted(_KEYS)}")
    try:
        values: dict[str, object] = {k: float(v) if k in _FLOATS else int(v) if k in _INTS else v for k, v in query.items()}
    except ValueError as err:
        raise ConfigError(f"{url!r}: {err}") from None
    if rc is not None:
        for k in _ROLE_KEYS:
            if k not in values and k in rc.model_fields_set and getattr(rc, k) is not None:
                values[k] = getattr(rc, k)
    profile_name = str(values.pop("profile", preset.profile))
    if profile_name not in WRITING_OF:
        raise ConfigError(f"{url!r}: profile {profile_name!r} has no synthetic writing; give one of {sorted(WRITING_OF)}")
    pooling = rc is not None and rc.serves_pooling()
    cost = CostModel(H100_SXM, preset.shape)
    if "time_factor" in values:
        cost = cost.scaled(float(values.pop("time_factor")))  # type: ignore[arg-type]
    in_process = bool(values.pop("inprocess", 0))
    renames = {"world": "world_seed", "auroc": "prm_auroc"}
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    settings = {renames.get(k, k): v for k, v in values.items()}
    settings.setdefault("seed", rc.seed if rc is not None else 0)
    settings.setdefault("max_model_len", preset.max_model_len)
    settings.setdefault("accuracy", preset.accuracy)
    assert set(settings) <= fields, set(settings) - fields
    config = SimConfig(
        writing=WRITING_OF[profile_name],
        profile=BUNDLED[profile_name],
        cost=cost,
        prefix_caching=not pooling,  # vLLM keeps prefix caching off for pooling models
        step_tag=rc.step_tag if rc is not None else None,
        **settings,  # type: ignore[arg-type]
    )
    if not 0 < config.accuracy < 1 or not 0.5 <= config.prm_auroc < 1 or not 0.5 <= config.verify_auroc < 1:
        raise ConfigError(f"{url!r}: accuracy must be in (0, 1) and AUROCs in [0.5, 1)")
    if config.time_scale < 0 or config.tick < 1 or config.block_size < 1:
        raise ConfigError(f"{url!r}: time_scale must be >= 0, tick and block_size >= 1")
    return config, in_process


class InProcessEngine(Unsupported):
    """A synthetic engine in the caller's own process and event loop (no Ray): the backend tests use."""

    def __init__(self, name: str, build: Callable[[], SyntheticEngine]) -> None:
        self.name = name
        self._build = build
        self.engine: SyntheticEngine | None = None

    def _ready(self) -> SyntheticEngine:
        if self.engine is None:
            self.engine = self._build()
        return self.engine

    async def start(self) -> None:
        self._ready()

    async def generate(self, spec: SamplingSpec) -> Generation:
        return await self._ready().generate(spec)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        async for delta in self._ready().stream(spec):
            yield delta

    async def abort(self, request_ids: Sequence[str]) -> None:
        await self._ready().abort(request_ids)

    async def score(self, spec: ScoreSpec) -> Scores:
        return await self._ready().score(spec)

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        return await self._ready().classify_tokens(spec)

    async def tokenize(self, text: str) -> list[int]:
        return await self._ready().tokenize(text)

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return await self._ready().render_chat(messages)

    async def stats(self) -> EngineStats:
        return await self._ready().stats()

    async def shutdown(self) -> None:
        if self.engine is not None:
            await self.engine.shutdown()
            self.engine = None


@dataclass(frozen=True)
class SyntheticSpec:
    """A role served by ``replicas`` synthetic engines (replica i samples with seed + i), in Ray actors placed as
    local engines are, or in-process."""

    role: Role
    config: SimConfig
    replicas: int = 1
    placement: Placement = Placement()
    in_process: bool = False

    @classmethod
    def from_config(cls, role: Role, rc: RoleConfig) -> SyntheticSpec:
        assert rc.url is not None
        config, in_process = parse_url(rc.url.removeprefix(SCHEME), rc)
        placement = Placement(num_cpus=rc.cpus, num_gpus=0.0, resources=tuple(sorted(rc.resources.items())))
        return cls(role, config, replicas=rc.replicas, placement=placement, in_process=in_process)

    @property
    def start_one_by_one(self) -> bool:
        return False

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> Backend:
        config = replace(self.config, seed=self.config.seed + index)
        build = partial(SyntheticEngine, config, name)
        if self.in_process:
            return InProcessEngine(name, build)
        # In its own Ray actor, reached as a vLLM engine is (workers.actor): the pool's routing, the actor call,
        # its coalescing and serialisation are the ones a real engine gets, and its own work is not the API's.
        return actor_backend(name, build, serves=served_calls(SyntheticEngine), placement=self.placement, tag=tag, max_restarts=max_restarts)


def synthetic_workers(
    profile: str = "r1-distill",
    *,
    policy: str | None = None,
    draft: str | None = None,
    prm: str = "prm-7b-h100",
    pooling: bool | None = None,
    keys: str = "",
    call_timeout_s: float = 600.0,
) -> PoolConfig:
    """A workers configuration of synthetic roles for ``profile``: the policy (default: the profile's 7B preset),
    a draft (default: its 1.5B preset) and a PRM (pooling for ``qwen-math``, a tag PRM for ``r1-distill``,
    unless ``pooling`` says), every URL with ``keys`` (e.g. ``"world=3&time_scale=0.01"``) appended."""

    family = "r1" if profile == "r1-distill" else "qwen-math"
    policy = policy or f"{family}-7b-h100"
    draft = draft or f"{family}-1.5b-h100"
    pooling = profile == "qwen-math" if pooling is None else pooling

    def url(preset: str) -> str:
        extra = "&".join(k for k in (f"profile={profile}", keys) if k)
        return f"{SCHEME}{preset}{'&' if '?' in preset else '?'}{extra}"

    roles = {
        "policy": RoleConfig(url=url(policy)),
        "draft": RoleConfig(url=url(draft)),
        "prm": RoleConfig(url=url(prm), runner="pooling" if pooling else "generate", step_tag="<extra_0>" if pooling else None),
    }
    return PoolConfig(roles=roles, call_timeout_s=call_timeout_s)

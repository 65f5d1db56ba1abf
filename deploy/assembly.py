"""Where the service is assembled, and the only place: settings -> engines -> capabilities -> controller -> API.

``build_service`` is what ``python -m deploy.serve`` runs; evaluations, calibration, the benchmarks and the
tests build their service or strategy context here too (:func:`strategy_context` runs one strategy in-process,
as a library), so what they measure is what the server serves. Nothing else constructs a ``Controller``, a
``Toolbox`` or a ``StrategyContext``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Mapping

from fastapi import FastAPI

from api.app import create_app
from deploy.shipped import seed_shipped
from orchestrator.admission import Limits
from orchestrator.budget import BudgetMeter, LengthHistory, Price
from orchestrator.config import Settings
from orchestrator.context import StrategyContext
from orchestrator.controller import Controller
from orchestrator.db.store import Store
from orchestrator.errors import ConfigError, NoChatTemplate
from orchestrator.profile import ModelProfile, load_profile
from orchestrator.protocols import CalibrationStore, Engine, StepScorer
from orchestrator.strategy import AnySpec
from orchestrator.tally import SubCallSink, Tally
from orchestrator.toolbox import Capability, Toolbox
from orchestrator.types import Role
from strategies import REGISTRY
from verifiers import MathShepherdPRM, OutcomeJudge, PoolingPRM, PoolingPRMFormat, PRMFormat, refiner_for, verifier_for
from verifiers.embeddings import LexicalClusterer, StepClusterer
from workers.config import PoolConfig, load_pool_config
from workers.jobs import RayJobs
from workers.pool import WorkerPool, connect_ray, local_ray_lost

log = logging.getLogger(__name__)


# Settings that describe the engines; a workers file describes them instead, so these are then not read.
ENGINE_SETTINGS = ("model_path", "prm_path", "draft_path", "serve_draft", "serve_prm", "serve_embedder", "kv_cache_gib", "max_model_len", "call_timeout_s")


def pool_config(settings: Settings) -> PoolConfig:
    """The workers file when one is given, else the policy from ``settings``; TTS_WORKER_* overrides apply.

    With a workers file, engine settings the user set are ignored; they are named in a warning, because a
    TTS_MODEL_PATH that silently does nothing is worse than one that is refused."""
    def engine(path: Path) -> dict[str, object]:
        return {"model": str(path), "max_model_len": settings.max_model_len, "kv_cache_gib": settings.kv_cache_gib}

    roles: dict[str, dict[str, object]] = {"policy": engine(settings.model_path)}
    if settings.serve_draft:
        roles["draft"] = engine(settings.draft_path)
    if settings.serve_prm:
        # Eager: the PRM only scores (prefill), where compiling buys nothing measurable and costs 8-32 s of its
        # start (bench.eager_roles; TTS_WORKER_PRM_ENFORCE_EAGER=false compiles it).
        roles["prm"] = {**engine(settings.prm_path), "enforce_eager": True}
    if settings.serve_embedder and settings.clusterer == "embedder":
        roles["embedder"] = {}  # the packaged all-MiniLM-L6-v2
    config = load_pool_config(settings.workers_file, default_roles=roles)
    ignored = sorted(settings.model_fields_set & set(ENGINE_SETTINGS)) if settings.workers_file is not None else []
    if ignored:
        log.warning(
            "the workers file %s defines the engines, so these settings have no effect: %s (set them in the file, "
            "or TTS_WORKER_<ROLE>_<KEY>)",
            settings.workers_file,
            ", ".join(f"TTS_{k.upper()}" for k in ignored),
        )
    if "policy" not in config.roles:
        raise ConfigError(f"the workers configuration has no `policy` role (roles: {', '.join(config.roles) or 'none'})")
    return config.model_copy(update={"call_timeout_s": settings.call_timeout_s}) if settings.workers_file is None else config


def check_prm_kind(config: PoolConfig, profile: ModelProfile) -> None:
    """Refuse a profile whose PRM kind the ``prm`` role's model cannot be (before any engine starts)."""
    role = config.roles.get("prm")
    kind = profile.prm.kind
    if role is None or kind == "auto" or (kind == "pooling") == role.serves_pooling():
        return
    served = "a pooling model" if role.serves_pooling() else "a generative model"
    raise ConfigError(f"the profile's prm.kind is {kind!r} but role `prm` serves {served} (TTS_PROFILE's [prm] kind, or the prm role's runner)")


def served_profile(profile: ModelProfile, config: PoolConfig) -> ModelProfile:
    """``profile`` as the served policy completes it, checked against it (before any engine starts).

    Sampling values the profile leaves unset come from the policy checkpoint's ``generation_config.json``
    (``[sampling] from_checkpoint``: a real model's card values travel there). A profile whose ``max_tokens_cap``
    (hence ``max_tokens``, never above it) leaves no room for a prompt in a local policy's ``max_model_len`` is
    refused, naming both: a request the profile allows would otherwise fail in the engine or be cut short."""
    policy = config.roles.get("policy")
    if policy is None:
        return profile
    if policy.url is None and profile.max_tokens_cap >= policy.max_model_len:
        raise ConfigError(
            f"model profile {profile.name!r} has max_tokens_cap = {profile.max_tokens_cap} but role `policy` has max_model_len = "
            f"{policy.max_model_len}: a prompt needs room too (lower max_tokens_cap in the profile, TTS_PROFILE, or raise the policy's max_model_len)"
        )
    s = profile.sampling
    if not s.from_checkpoint or policy.model is None or (s.temperature is not None and s.top_p is not None):
        return profile
    path = Path(policy.model) / "generation_config.json"
    try:
        gen = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        log.warning("cannot read %s (%s): the strategies' own sampling defaults apply", path, err)
        return profile
    found: dict[str, float] = {}
    for key, low in (("temperature", 0.0), ("top_p", 1e-9)):
        value = gen.get(key)
        if getattr(s, key) is None and isinstance(value, (int, float)) and low <= value <= (2.0 if key == "temperature" else 1.0):
            found[key] = float(value)
    if not found:
        return profile
    log.info("sampling defaults from %s: %s", path, ", ".join(f"{k} {v}" for k, v in found.items()))
    return profile.model_copy(update={"sampling": s.model_copy(update=found)})


def step_scorer(config: PoolConfig, pool: WorkerPool, profile: ModelProfile) -> StepScorer | None:
    """The PRM of role ``prm``, of the kind the profile's ``[prm]`` table says (``auto``: a pooling reward model,
    Qwen2.5-Math-PRM style, when the role serves one, else a generative tag PRM, Math-Shepherd style); steps
    cut at the profile's delimiter either way."""
    role = config.roles.get("prm")
    if role is None:
        return None
    check_prm_kind(config, profile)
    fmt, pooling = profile.prm, role.serves_pooling()
    hidden = (profile.think_open, profile.think_close) if profile.reasoning == "think" else ()  # the PRM sees steps, not tags
    # A solution over the PRM's context is read as the profile says; `final_part` needs where the reasoning ends.
    end = profile.think_close if profile.reasoning == "think" else ""
    if pooling:
        step_tag = role.step_tag or fmt.step_tag
        return PoolingPRM(
            pool,
            fmt=PoolingPRMFormat(
                system=fmt.system, step_delimiter=profile.step_delimiter, step_tag=step_tag, good_class=fmt.good_class, hidden=hidden,
                overflow=fmt.overflow, reasoning_end=end,
            ),
        )
    return MathShepherdPRM(
        pool,
        fmt=PRMFormat(
            question_template=fmt.question_template, step_delimiter=profile.step_delimiter, tag=fmt.tag, good=fmt.good, bad=fmt.bad, hidden=hidden,
            overflow=fmt.overflow, reasoning_end=end,
        ),
    )


def outcome_judge(config: PoolConfig, pool: WorkerPool) -> OutcomeJudge | None:
    """The outcome judge: role ``judge`` when served, else the generative PRM (a pooling PRM cannot judge)."""
    judges: tuple[Role, ...] = ("judge", "prm")
    for role in judges:
        if role in config.roles and not config.roles[role].serves_pooling():
            return OutcomeJudge(pool, role=role)
    return None


def toolbox(settings: Settings, config: PoolConfig, pool: WorkerPool, profile: ModelProfile, *, calibration: CalibrationStore | None = None) -> Toolbox:
    """What the strategies of a server with these settings, engines and profile work with: the profile's
    answer extractor, PRM, refiner and clusterer, each with the engine role it calls (whose state the pool
    tells: a capability whose engine still loads is refused with a Retry-After, not as missing)."""
    verifier = verifier_for(profile)
    scorer, judge = step_scorer(config, pool, profile), outcome_judge(config, pool)
    clusterer = LexicalClusterer() if settings.clusterer == "lexical" else StepClusterer(pool) if "embedder" in pool.roles() else None
    draft = settings.draft_name if "draft" in pool.roles() else None
    roles: dict[Capability, Role] = {}
    if scorer is not None:
        roles["prm"] = "prm"
    if judge is not None:
        roles["judge"] = judge.role
    if isinstance(clusterer, StepClusterer):
        roles["clusterer"] = clusterer.role
    if draft is not None:
        roles["draft"] = "draft"
    return Toolbox(
        verifier=verifier,
        step_scorer=scorer,
        outcome_scorer=judge,
        refiner=refiner_for(settings.refiner, profile, verifier),
        clusterer=clusterer,
        calibration=calibration,
        draft_model=draft,
        profile=profile,
        roles=roles,
        engines=pool,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure(settings: Settings, *, has_keys: bool) -> Settings:
    """Who may reach the server. Beyond loopback every request needs a tenant's key; with no key created yet
    the server stays on loopback (a warning says how to open it), so a fresh install is never open to the
    network."""
    if is_loopback(settings.host):
        return settings
    if not has_keys:
        log.warning(
            "TTS_HOST=%s but no API key exists: binding 127.0.0.1 only. Create one with "
            "`python -m orchestrator.admin tenant NAME`, then restart to listen on %s.",
            settings.host,
            settings.host,
        )
        return settings.model_copy(update={"host": "127.0.0.1"})
    return settings.model_copy(update={"require_api_key": True})


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free one), for uvicorn to serve on."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} (TTS_HOST / TTS_PORT): {err.strerror or err}") from None
    return sock


def server_name(port: int) -> str:
    """This server's lease id: stable across restarts on a fixed port, so a restart fails its leftovers at
    once; with a random port (0) there is nothing stable, and the stale lease is reaped instead."""
    host = socket.gethostname()
    return f"{host}:{port}" if port else f"{host}:pid{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Service:
    """A running service: its engines, ledger, controller and API app (``sock`` the socket the API is to serve
    on; None for a service with no API, an evaluation job's), with this server's lease kept and cross-replica
    cancels watched while it runs. Built by :func:`build_service`; :meth:`stop` releases all of it."""

    settings: Settings
    pool: WorkerPool
    store: Store
    controller: Controller
    app: FastAPI
    server_id: str
    sock: socket.socket | None
    lease: asyncio.Task[None] | None = None
    cancels: asyncio.Task[None] | None = None

    async def engines_loaded(self, *, timeout_s: float = 900, every_s: float = 0.5) -> None:
        """Wait until no engine is loading any more (ready or failed), at most ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while any(e.state == "loading" for e in self.pool.status()):
                await asyncio.sleep(every_s)

    def run_background(self) -> None:
        """Start the lease heartbeat and the cancel watch on the running loop."""
        self.lease = asyncio.create_task(self.keep_lease(), name="tts-lease")
        self.cancels = asyncio.create_task(self.controller.watch_cancels(), name="tts-cancels")

    async def keep_lease(self) -> None:
        """Heartbeat this server's lease; finish the requests of servers whose lease ran out."""
        every = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.leases.heartbeat(self.server_id)
                reaped = await self.store.leases.reap(stale_after_s=self.settings.lease_s)
                if reaped:
                    log.warning("failed %d request(s) left unfinished by servers whose lease ran out", reaped)
            except Exception:  # noqa: BLE001 - a database hiccup must not stop the heartbeat for good
                log.exception("lease heartbeat failed; retrying in %.0f s", every)

    async def stop(self) -> None:
        for task in (self.lease, self.cancels):
            if task is not None:
                task.cancel()
        left = await self.store.leases.retire(self.server_id)
        if left:
            log.warning("server %s: failed %d request(s) still unfinished at shutdown", self.server_id, left)
        await self.pool.shutdown()
        self.store.engine.dispose()
        if self.sock is not None:
            self.sock.close()


async def ray_lost(*, every_s: float = 0.5) -> str:
    """Return, with the reason, once the local Ray this process started is gone (``ray stop``, a crash): the
    engines and every call to them went with it. Never returns while it runs, before it has started, or when
    this process joined a cluster instead."""
    while True:
        reason = local_ray_lost()
        if reason:
            return reason
        await asyncio.sleep(every_s)


def controller_for(
    settings: Settings,
    *,
    pool: Engine,
    store: Store,
    tools: Toolbox,
    profile: ModelProfile,
    server_id: str | None = None,
    prices: Mapping[Role, Price] | None = None,
    strategies: Mapping[str, AnySpec] = REGISTRY,
    no_chat_template: Collection[str] = (),
) -> Controller:
    """The controller of a server with these settings: its policy served under ``settings.model_name``, its
    limits, queue and budget mode; ``prices`` by role (the database's for the served model);
    ``no_chat_template`` the served names whose model has no chat template."""
    return Controller(
        engine=pool,
        store=store,
        strategies=strategies,
        tools=tools,
        models={settings.model_name: "policy"},
        max_request_tokens=settings.max_request_tokens,
        prices=prices,
        limits=Limits(width=settings.limit_width, depth=settings.limit_depth, max_tokens=settings.limit_max_tokens or profile.max_tokens_cap),
        max_running=settings.max_running,
        max_queued=settings.max_queued,
        server_id=server_id,
        budget_mode=settings.budget_mode,
        no_chat_template=no_chat_template,
    )


async def has_chat_template(pool: Engine, role: Role = "policy") -> bool:
    """Whether ``role``'s model renders chat messages (a base checkpoint may ship no chat template): asked once
    at start, so that the model list says so and a chat request to it is refused before it runs."""
    try:
        await pool.render_chat(role, [{"role": "user", "content": "1"}])
    except NoChatTemplate:
        return False
    return True


async def build_service(
    settings: Settings,
    *,
    store: Store | None = None,
    pool: WorkerPool | None = None,
    workers: PoolConfig | None = None,
    profile: ModelProfile | None = None,
    strategies: Mapping[str, AnySpec] = REGISTRY,
    listens: bool = True,
) -> Service:
    """The whole service for ``settings``: Ray joined or started, the ledger (``store``, else
    ``settings.database``), this server's lease, the API's socket (unless ``listens`` is False: an evaluation
    job drives the controller itself and needs no port), the engines of the workers configuration (``pool``
    serving ``workers`` when given, else started from :func:`pool_config`), the capabilities the profile
    (``profile``, else ``settings.profile``) and engines allow, the controller and the API app. The caller
    serves the app on ``Service.sock`` and calls :meth:`Service.stop` at the end.

    A service that listens returns once its policy is ready (``settings.start_order``: the other roles load
    behind it, their strategies refused with 503 and Retry-After meanwhile); one that does not (an evaluation
    job) and ``start_order = "all"`` return once every engine is."""
    profile = profile or load_profile(settings.profile)
    start_ray(settings)
    store = store or Store.from_url(settings.database)
    server_id = settings.server_id or server_name(settings.port)
    settings = exposure(settings, has_keys=await store.tenants.has_api_keys())
    # Listen before the engines start: a port in use fails in a second, not after a minute of loading, and
    # nothing the engines spawn (Ray, vLLM's ZMQ sockets) can take a chosen port meanwhile.
    sock = listen(settings.host, settings.port) if listens else None
    interrupted = await store.leases.register(server_id)
    if interrupted:
        log.warning("server %s: failed %d request(s) its previous run left unfinished", server_id, interrupted)
    config = workers or pool_config(settings)
    check_prm_kind(config, profile)
    profile = served_profile(profile, config)
    if pool is None:
        first: set[Role] | None = None if settings.start_order == "all" or not listens else {"policy"}
        pool = await WorkerPool.from_config(config, first=first, rest="after" if settings.start_order == "policy_first" else "together")
    if "draft" in config.roles and "policy" in config.roles:
        note = await seed_shipped(
            store, draft=config.roles["draft"].model, target=config.roles["policy"].model, draft_name=settings.draft_name, target_name=settings.model_name
        )
        if note:
            log.info("%s", note)
    prices = {"policy": Price(*p) for name, p in (await store.prices.all()).items() if name == settings.model_name}
    tools = toolbox(settings, config, pool, profile, calibration=store.calibration)
    chat = await has_chat_template(pool)
    if not chat:
        log.warning("model %s (%s) has no chat template: chat requests are refused (400), /v1/completions serves it", settings.model_name, config.roles["policy"].model)
    controller = controller_for(
        settings, pool=pool, store=store, tools=tools, profile=profile, server_id=server_id, prices=prices, strategies=strategies,
        no_chat_template=() if chat else (settings.model_name,),
    )
    app = create_app(settings, controller, jobs=RayJobs(settings.jobs_address))
    service = Service(settings, pool, store, controller, app, server_id, sock)
    service.run_background()
    return service


def strategy_context(
    engine: Engine,
    tools: Toolbox,
    *,
    sink: SubCallSink | None = None,
    meter: BudgetMeter | None = None,
    lengths: LengthHistory | None = None,
    target_model: str = "",
) -> StrategyContext:
    """A context to run one strategy in-process, as a library (``await spec.run(problem, ctx, params)``),
    outside any server: its calls go to ``engine`` (a :class:`WorkerPool`, or any :class:`Engine`) with
    ``tools``'s capabilities, under ``meter`` (default: no limit), each sub-call handed to ``sink``;
    ``ctx.tally`` holds what it cost."""
    tally = Tally(sink=sink) if sink is not None else Tally()
    return StrategyContext(engine=engine, tools=tools, tally=tally, lengths=lengths, meter=meter, target_model=target_model)


_ray_joined = False  # start_ray has run in this process


def start_ray(settings: Settings, *, cache_in_data_dir: bool = True) -> None:
    """Join the Ray cluster, or start a local one, and say how long that took. With ``cache_in_data_dir`` a
    local one's engines keep their compile caches (vLLM's, with Inductor's under it) in
    ``<data_dir>/vllm-cache``, unless ``VLLM_CACHE_ROOT`` says otherwise: a second start on the same data
    directory is a warm one, and a fresh data directory is a first start, whatever the home cache holds.
    (In-process services, tests and benchmarks, on throwaway data directories, keep the home cache.)"""
    global _ray_joined
    first = not _ray_joined
    if first and cache_in_data_dir and not (settings.ray_address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(settings.data_dir).resolve() / "vllm-cache"))
    t0 = time.perf_counter()
    connect_ray(settings.ray_address)  # a no-op when this process is already in a cluster
    _ray_joined = True
    if first:
        log.info("ray started in %.1f s", time.perf_counter() - t0)



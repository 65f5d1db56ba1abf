"""The bundled family a benchmark runs on, served as the service serves it.

- ``v1``: ``models/{target,draft,prm}``, the chained-arithmetic task (:mod:`tasks.arithmetic`), one step per
  line, ``Answer: N``, a generative tag PRM; raw prompts (what the family was trained on).
- ``v2``: ``models/v2/{target,draft,prm}`` (``--models`` for another recipe ``--out``), Countdown
  (:mod:`tasks.countdown`), ``<think>`` steps split by blank lines, ``\\boxed{}`` answers keyed by expression,
  a pooling PRM; prompts through the policy's chat template, as a chat request's are.

Either way the strategies get the toolbox :func:`deploy.assembly.toolbox` builds from the family's profile
and refiner settings, so a benchmark measures what a server configured for that family would run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Sequence

from orchestrator.budget import LengthHistory
from orchestrator.config import REPO_ROOT, Settings, get_settings
from orchestrator.profile import ModelProfile, load_profile
from orchestrator.protocols import CalibrationStore
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem
from tasks import arithmetic, countdown


@dataclass(frozen=True)
class Family:
    name: str
    models: Path  # holds target/, draft/, prm/
    profile_spec: str  # as TTS_PROFILE
    task: ModuleType  # LEVELS, generate, prompt_for, check_answer
    dataset: str  # the name ATTS calibration sets are kept under
    refiner: str | None  # as TTS_REFINER
    chat: bool  # prompts through the policy's chat template
    engine: dict[str, Any]  # engine settings of every role (as a workers file's)

    @functools.cached_property
    def profile(self) -> ModelProfile:
        return load_profile(self.profile_spec)

    def settings(self, **overrides: Any) -> Settings:
        return get_settings(profile=self.profile_spec, refiner=self.refiner, **overrides)

    def role(self, name: str) -> dict[str, Any]:
        """The engine of model ``name`` (target, draft or prm), as a workers file's role table."""
        out = {"model": str(self.models / name), **self.engine}
        if name == "prm" and self.profile.prm.kind == "pooling":
            out |= {"runner": "pooling", "step_tag": self.profile.prm.step_tag}
        return out

    def problems(self, split: str, per_level: int, *, seed: int) -> list[Any]:
        """``per_level`` problems of each level of ``split``, level by level."""
        return [p for lv in self.task.LEVELS for p in self.task.generate(split, per_level, seed=seed, levels=[lv])]

    async def problem(self, engine: Any, question: str) -> Problem:
        """The strategy input for ``question``: a raw prompt, or the user's chat rendered by the policy's template."""
        if not self.chat:
            return Problem(self.task.prompt_for(question), question=question)
        messages = ({"role": "user", "content": self.task.prompt_for(question)},)
        return Problem(await engine.render_chat("policy", messages), question=question, messages=messages)

    def correct(self, problem: Any, text: str) -> bool:
        return bool(self.task.check_answer(problem, text).correct)

    def parameters(self, model: str) -> int:
        """Parameter count of ``model`` (target, draft or prm), from the training record next to its weights."""
        return _parameters(self.models / model)


@functools.cache
def _parameters(model_dir: Path) -> int:
    return int(json.loads((model_dir / "training.json").read_text())["params"])


FAMILIES = {
    "v1": Family("v1", REPO_ROOT / "models", "bundled", arithmetic, "task", None, chat=False, engine={}),
    "v2": Family(
        "v2", REPO_ROOT / "models" / "v2", str(REPO_ROOT / "models" / "v2" / "profile.toml"), countdown, "countdown", "countdown",
        chat=True, engine={"dtype": "float32", "max_model_len": 1024},
    ),
}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--family", choices=sorted(FAMILIES), default="v1", help="Bundled family: v1 (arithmetic, models/) or v2 (Countdown, models/v2/).")
    ap.add_argument("--models", type=Path, default=None, help="Directory of the family's target/, draft/ and prm/ (default: the bundled one).")


def family_of(args: argparse.Namespace) -> Family:
    fam = FAMILIES[args.family]
    return fam if args.models is None else dataclasses.replace(fam, models=args.models.resolve())


def roles(fam: Family, names: Sequence[str], *, embedder: bool = False) -> dict[str, dict[str, Any]]:
    """Pool roles serving ``names`` (``policy`` is the target), plus the packaged embedder when asked."""
    out = {("policy" if n == "target" else n): fam.role(n) for n in names}
    return out | ({"embedder": {}} if embedder else {})


@dataclass
class Served:
    """A local pool serving a family's models, and the toolbox a server of that family would give strategies."""

    family: Family
    pool: Any
    tools: Toolbox
    # Sample lengths seen over the run, shared by its strategy contexts as a server's requests share them.
    lengths: LengthHistory = dataclasses.field(default_factory=LengthHistory)


@contextlib.asynccontextmanager
async def serve(fam: Family, names: Sequence[str], *, embedder: bool = False, calibration: CalibrationStore | None = None) -> AsyncIterator[Served]:
    """Join (or start) Ray and serve ``names``' engines while the block runs."""
    from deploy.assembly import toolbox
    from workers.config import load_pool_config
    from workers.pool import WorkerPool, connect_ray

    connect_ray()
    config = load_pool_config(None, env={}, default_roles=roles(fam, names, embedder=embedder))
    pool = await WorkerPool.from_config(config)
    try:
        yield Served(fam, pool, toolbox(fam.settings(), config, pool, fam.profile, calibration=calibration))
    finally:
        await pool.shutdown()

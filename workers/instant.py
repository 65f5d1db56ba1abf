"""The instant backend: an engine that answers every call at once, in a Ray actor, for measuring the control plane.

A benchmark tool, not a test fake: it sits behind the same Ray actor interface as the vLLM engine
(:class:`workers.local.EngineActor`'s methods, reached through :class:`workers.local.LocalEngine`, so the
pool's routing, the actor call, its serialisation and the typed-error mapping are the ones a real engine
gets), and what it returns is well formed and deterministic, so every strategy runs to its end on it:

- text is split into "tokens" at whitespace, newlines kept as tokens of their own; a token's id is a
  CRC32 of its text. Usage counts those tokens, the way an engine counts its own.
- ``generate`` / ``stream``: a call with a stop string (a step of a step search) gets ``"Step k:
  continue."`` stopped on its first stop string, where k is one more than the steps already in the prompt,
  until the prompt holds ``steps`` of them; any other call (or a step past ``steps``) gets
  ``"Answer: {answer}"`` ended by EOS. Completion i of a call is the same for every i.
- ``score``: every row's own log-probability is log 0.9, every candidate's log 0.6, log 0.4, ... (so a
  tag PRM's ``+`` beats its ``-``); ``classify_tokens``: one row per prompt token (0.2, 0.8).

Select it for a role with :meth:`InstantSpec.from_config` (or build :class:`InstantSpec` directly);
``python -m bench.control_plane`` serves every role with it.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import ray

from orchestrator.types import Completion, EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses, Usage
from workers.actor import BatchedCalls, Placement
from workers.config import RoleConfig
from workers.local import LocalEngine

_TOKEN = re.compile(r"\S+|\n")
_STEP = "Step "


def instant_tokens(text: str) -> list[int]:
    """The instant engine's token ids of ``text``: one per whitespace-separated piece and per newline."""
    return [zlib.crc32(t.encode()) & 0x7FFFFFFF for t in _TOKEN.findall(text)]


def _count(text: str) -> int:
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class InstantConfig:
    """What the instant engine answers: ``steps`` steps before the answer in a step search, ``answer`` the
    number every solution ends with; ``max_model_len`` bounds prompt + completion tokens, as an engine's does."""

    steps: int = 4
    answer: int = 42
    max_model_len: int = 1_000_000


def _completion(config: InstantConfig, spec: SamplingSpec) -> Completion:
    prompt = spec.prompt if isinstance(spec.prompt, str) else ""
    done = prompt.count(_STEP)
    if spec.stop and done < config.steps:
        text = f"{_STEP}{done + 1}: continue."
        return Completion(text=text, tokens=min(_count(text) + 1, spec.max_tokens), finish_reason="stop", stop_reason=spec.stop[0])
    text = f"Answer: {config.answer}"
    return Completion(text=text, tokens=min(_count(text) + 1, spec.max_tokens), finish_reason="stop", stop_reason=None)


def _prompt_tokens(prompt: str | Sequence[int]) -> int:
    return _count(prompt) if isinstance(prompt, str) else len(prompt)


@ray.remote
class InstantActor(BatchedCalls):
    """The Ray actor: the methods of :class:`workers.local.EngineActor` (its batched calls too), each answering at once."""

    def __init__(self, config: InstantConfig, name: str) -> None:
        self._config = config
        self._name = name
        self._calls = 0

    async def start(self) -> str:
        return self._name

    async def generate(self, spec: SamplingSpec) -> Generation:
        self._calls += 1
        c = _completion(self._config, spec)
        usage = Usage(prompt_tokens=_prompt_tokens(spec.prompt), completion_tokens=c.tokens * spec.n)
        return Generation(completions=(c,) * spec.n, usage=usage, worker=self._name)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        self._calls += 1
        c = _completion(self._config, spec)
        for i in range(spec.n):
            yield StreamDelta(index=i, text=c.text, tokens=c.tokens, finish_reason=c.finish_reason)

    async def abort(self, request_ids: list[str]) -> None:
        pass  # every call has already finished

    async def score(self, spec: ScoreSpec) -> Scores:
        self._calls += 1
        ids = tuple(instant_tokens(spec.prompt)) if isinstance(spec.prompt, str) else tuple(spec.prompt)
        rows = max(len(ids) - spec.start - 1, 0)
        cands = tuple(math.log(max(0.6 - 0.2 * j, 0.05)) for j in range(len(spec.candidates)))
        return Scores(
            token_ids=ids, start=spec.start, logprobs=(math.log(0.9),) * rows, candidate_logprobs=(cands,) * rows,
            usage=Usage(prompt_tokens=len(ids), completion_tokens=1), worker=self._name,
        )

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        self._calls += 1
        ids = tuple(instant_tokens(spec.prompt)) if isinstance(spec.prompt, str) else tuple(spec.prompt)
        return TokenClasses(token_ids=ids, rows=((0.2, 0.8),) * len(ids), usage=Usage(prompt_tokens=len(ids)))

    async def tokenize(self, text: str) -> list[int]:
        return instant_tokens(text)

    async def render_chat(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<|{m.get('role', 'user')}|>\n{m.get('content', '')}\n" for m in messages) + "<|assistant|>\n"

    async def stats(self) -> EngineStats:
        return EngineStats(worker=self._name, running=0, waiting=0, kv_blocks_total=0, kv_blocks_used=0)

    def calls(self) -> int:
        """Engine calls answered (generate, stream, score, classify_tokens) since the actor started."""
        return self._calls

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def shutdown(self) -> None:
        pass


@dataclass(frozen=True)
class InstantSpec:
    """A role served by ``replicas`` instant engines, placed and reached like local vLLM engines."""

    role: Role
    config: InstantConfig = InstantConfig()
    replicas: int = 1
    placement: Placement = Placement()

    @classmethod
    def from_config(cls, role: Role, rc: RoleConfig, *, config: InstantConfig = InstantConfig()) -> InstantSpec:
        """The role's replicas and placement as configured; its model is never loaded."""
        placement = Placement(num_cpus=rc.cpus, num_gpus=0.0, resources=tuple(sorted(rc.resources.items())))
        return cls(role, config=config, replicas=rc.replicas, placement=placement)

    @property
    def start_one_by_one(self) -> bool:
        return False

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> LocalEngine:
        # The same actor options as a local engine's (workers.local.LocalSpec.build).
        handle = InstantActor.options(
            **self.placement.actor_options(name, tag=tag, max_restarts=max_restarts), max_concurrency=1000, max_task_retries=0
        ).remote(self.config, name)
        return LocalEngine(name, handle)

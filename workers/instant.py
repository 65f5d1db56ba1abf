"""The instant backend: an engine that answers every call at once, in a Ray actor, for measuring the control plane.

A benchmark tool, not a test fake: :class:`InstantEngine` has the vLLM engine's calls and sits in the same Ray
actor behind the same backend (``workers.actor``: :class:`EngineActor` reached through :class:`ActorBackend`, so
the pool's routing, the actor call, its coalescing, its serialisation and the typed-error mapping are the ones a
real engine gets), and what it returns is well formed and deterministic, so every strategy runs to its end on it:

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
import re
import zlib
from dataclasses import dataclass
from functools import partial
from typing import AsyncIterator, Sequence

from orchestrator.types import Completion, EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses, Usage
from workers.actor import ActorBackend, Placement, actor_backend, served_calls
from workers.config import RoleConfig

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


class InstantEngine:
    """The calls of the vLLM engine (``workers.engine.VllmEngine``), each answering at once."""

    def __init__(self, config: InstantConfig, name: str) -> None:
        self._config = config
        self._name = name

    async def generate(self, spec: SamplingSpec) -> Generation:
        c = _completion(self._config, spec)
        usage = Usage(prompt_tokens=_prompt_tokens(spec.prompt), completion_tokens=c.tokens * spec.n)
        return Generation(completions=(c,) * spec.n, usage=usage, worker=self._name)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        c = _completion(self._config, spec)
        for i in range(spec.n):
            yield StreamDelta(index=i, text=c.text, tokens=c.tokens, finish_reason=c.finish_reason)

    async def abort(self, request_ids: list[str]) -> None:
        pass  # every call has already finished

    async def score(self, spec: ScoreSpec) -> Scores:
        ids = tuple(instant_tokens(spec.prompt)) if isinstance(spec.prompt, str) else tuple(spec.prompt)
        rows = max(len(ids) - spec.start - 1, 0)
        cands = tuple(math.log(max(0.6 - 0.2 * j, 0.05)) for j in range(len(spec.candidates)))
        return Scores(
            token_ids=ids, start=spec.start, logprobs=(math.log(0.9),) * rows, candidate_logprobs=(cands,) * rows,
            usage=Usage(prompt_tokens=len(ids), completion_tokens=1), worker=self._name,
        )

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        ids = tuple(instant_tokens(spec.prompt)) if isinstance(spec.prompt, str) else tuple(spec.prompt)
        return TokenClasses(token_ids=ids, rows=((0.2, 0.8),) * len(ids), usage=Usage(prompt_tokens=len(ids)))

    async def tokenize(self, text: str) -> list[int]:
        return instant_tokens(text)

    async def render_chat(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<|{m.get('role', 'user')}|>\n{m.get('content', '')}\n" for m in messages) + "<|assistant|>\n"

    async def stats(self) -> EngineStats:
        return EngineStats(worker=self._name, running=0, waiting=0, kv_blocks_total=0, kv_blocks_used=0)


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

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> ActorBackend:
        return actor_backend(
            name, partial(InstantEngine, self.config, name), serves=served_calls(InstantEngine),
            placement=self.placement, tag=tag, max_restarts=max_restarts,
        )

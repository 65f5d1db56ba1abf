"""What the pool needs from one replica of a role, whatever serves it: the :class:`Backend` protocol.

A backend is one engine (a vLLM engine in a Ray actor, a remote `vllm serve`, an embedder in a Ray actor). The
pool routes each call to one backend, retries it elsewhere on :class:`WorkerDied` and enforces the deadline;
everything else (how the call travels, how failures become typed errors) is the backend's. A backend that does
not serve some calls inherits them from :class:`Unsupported`, so that such a call fails typed.

Adding a backend: a file with the backend and its spec, one branch in ``workers.factory.backend_spec``. A new
kind of call is a method of :class:`Backend`, its refusal in :class:`Unsupported` and its line in :data:`CALLS`
(all here), the backends that serve it, and the pool's routing of it; backends in Ray actors
(``workers.actor``) forward it by that line.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import AsyncIterator, Literal, Mapping, Protocol, Sequence

from orchestrator.errors import EngineUnavailable
from orchestrator.types import EngineStats, Generation, Role, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses, Usage


class Backend(Protocol):
    """One replica. Every call raises the service's typed errors (``orchestrator.errors``), never a transport's:
    :class:`WorkerDied` when the worker died under the call (the only error the pool retries, so a backend
    raises it only where repeating the call elsewhere is safe), :class:`EngineTimeout`, :class:`InvalidRequest`
    for a call the engine rejects, :class:`EngineError` otherwise. Cancelling an awaiting call stops its
    work in the engine."""

    name: str  # "<role>-<index>": unique within a pool, the ``worker`` of every result and error

    async def start(self) -> None:
        """Return once the backend can take calls (its model loaded, or its server answering)."""
        ...

    async def generate(self, spec: SamplingSpec) -> Generation:
        """``spec.n`` completions, each at most ``spec.max_tokens`` tokens, in index order."""
        ...

    def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        """Partial outputs as produced; ``StreamDelta.tokens`` is the running total of its completion.
        Leaving the iteration early stops the request."""
        ...

    async def abort(self, request_ids: Sequence[str]) -> None:
        """Stop running calls by ``request_id``; unknown or finished ids are ignored."""
        ...

    async def score(self, spec: ScoreSpec) -> Scores:
        """Log-probabilities of the prompt's own tokens (and of ``spec.candidates``) from ``spec.start`` on."""
        ...

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        """Per-position class probabilities of ``spec.prompt`` from a pooling model (``start`` and
        ``candidates`` are not read). A prompt longer than the context is :class:`InvalidRequest`."""
        ...

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the engine's prompt would be tokenised: special tokens included, except
        a BOS when ``text`` already begins with it (a prompt rendered by a chat template that writes it)."""
        ...

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """``messages`` in the model's chat template, ending with the generation prompt."""
        ...

    async def stats(self) -> EngineStats:
        """A snapshot of the engine's load, KV cache and prefix-cache counters (totals since start)."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text, in order."""
        ...

    async def shutdown(self) -> None:
        """Release the engine for good (a Ray actor is not restarted); safe on one already gone."""
        ...


Travel = Literal["coalesced", "alone", "stream", "abort"]

# Every call of Backend but a backend's own `start` and `shutdown`, and how it travels to an engine in a Ray
# actor (workers.actor): "coalesced" calls made in one event-loop turn go as one actor call, an "alone" call as
# one of its own, a "stream" as a streaming call; an "abort" first sends the calls of its turn, so that it finds
# them. Only these names reach an actor (a test keeps them the protocol's).
CALLS: Mapping[str, Travel] = MappingProxyType(
    {
        "generate": "coalesced",
        "stream": "stream",
        "abort": "abort",
        "score": "coalesced",
        "classify_tokens": "coalesced",
        "tokenize": "alone",
        "render_chat": "alone",
        "stats": "alone",
        "embed": "alone",
    }
)


class BackendSpec(Protocol):
    """How to build the ``replicas`` backends of one role (see ``workers.factory``)."""

    @property
    def role(self) -> Role: ...

    @property
    def replicas(self) -> int: ...

    @property
    def start_one_by_one(self) -> bool:
        """Whether its replicas share devices with others (a fraction of a GPU each), so that they must load
        one after another: vLLM measures free memory while it loads, and concurrent loads misread it."""
        ...

    def build(self, name: str, index: int, *, tag: str, max_restarts: int) -> Backend:
        """Backend ``index`` of the role, called ``name``; not started yet. ``tag`` makes names of cluster-wide
        objects (Ray actors) unique to one pool; ``max_restarts`` is how often Ray may restart its actor."""
        ...


class Unsupported:
    """Every call of :class:`Backend` refused with :class:`EngineUnavailable` (``abort`` has nothing to stop):
    the base of backends that serve only some calls (an embedder does not generate, an engine does not embed)."""

    name: str

    def _refuse(self, call: str) -> EngineUnavailable:
        return EngineUnavailable(f"does not serve `{call}` calls", worker=self.name)

    async def generate(self, spec: SamplingSpec) -> Generation:
        raise self._refuse("generate")

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        raise self._refuse("stream")
        yield  # unreachable: makes this an async generator, as the protocol's stream is

    async def abort(self, request_ids: Sequence[str]) -> None:
        pass  # no call here can be running under those ids: the protocol ignores unknown ones

    async def score(self, spec: ScoreSpec) -> Scores:
        raise self._refuse("score")

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        raise self._refuse("classify_tokens")

    async def tokenize(self, text: str) -> list[int]:
        raise self._refuse("tokenize")

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        raise self._refuse("render_chat")

    async def stats(self) -> EngineStats:
        raise self._refuse("stats")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise self._refuse("embed")

"""Data that crosses package boundaries: what strategies ask for, what engines return, what requests cost."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

Role = Literal["policy", "draft", "target", "prm", "judge", "embedder"]
FinishReason = Literal["stop", "length", "abort"]
ResultFinish = Literal["stop", "length", "budget"]  # a strategy's answer: "budget" when its budget shaped it
RequestState = Literal["queued", "running", "succeeded", "failed", "cancelled", "budget_exhausted"]
UNFINISHED: tuple[RequestState, ...] = ("queued", "running")  # the states a request can still leave


# Larger than any offset a strategy adds to its seed within one request (samples x 1_000_003, hops x 7919,
# parents x 104729).
PROBLEM_SEED_STRIDE = 100_000_007


def problem_seed(seed: int | None, index: int) -> int | None:
    """The seed for the ``index``-th problem of a seeded batch: reproducible, yet independent across problems.

    The engine draws the same noise for the same seed whatever the prompt, so one seed for every problem of a
    batch gives all of them one draw per turn, not one each. An ATTS calibration set built that way was not
    exchangeable with other runs (held-out rejection rate 0.365 at alpha 0.3; 0.310 with a seed per problem)."""
    return None if seed is None else seed + PROBLEM_SEED_STRIDE * index


@dataclass(frozen=True)
class SamplingSpec:
    """One engine call: ``n`` completions of ``prompt`` (text, or token ids to skip tokenisation).

    ``max_tokens`` is always explicit (never an engine default); ``seed`` None means the engine's own
    randomness, otherwise completion i of the call is reproducible from (seed, i). ``logprobs`` asks for the
    log-probability of every sampled token. ``ignore_eos`` keeps generating to ``max_tokens`` (benchmarks).
    ``request_id`` names the call so that it can be aborted; the pool assigns one when it is None.

    ``token_cap`` (live budget metering, see orchestrator.budget) is what the whole call may spend: its prompt
    once plus every token of every sequence. The engine then runs the sequences as one pool of tokens, ends
    sequences when the pool cannot carry them all (``expected_tokens``, a sample's expected length, says how
    much each still needs; ``length_quantiles``, the stage's finished lengths at evenly spaced quantiles, say it
    better for a sequence already long; the highest-numbered are ended first) and never hands back more than the
    cap."""

    prompt: str | tuple[int, ...]
    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    ignore_eos: bool = False
    request_id: str | None = None
    token_cap: int | None = None
    expected_tokens: float | None = None
    length_quantiles: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScoreSpec:
    """Score a prompt without generating: log-probabilities of its own tokens from token ``start`` on.

    ``prompt`` is text or token ids. Row i of the result is the distribution that predicts prompt token
    ``start + i + 1`` (so ``start`` = 0 scores every token after the first). ``candidates``, when given, are
    token ids whose log-probabilities are returned at every row as well (e.g. a PRM's ``+`` and ``-``)."""

    prompt: str | tuple[int, ...]
    start: int = 0
    candidates: tuple[int, ...] = ()
    request_id: str | None = None


@dataclass(frozen=True)
class Scores:
    """What a :class:`ScoreSpec` returned. ``token_ids`` is the whole tokenised prompt; ``logprobs[i]`` is
    log P(token_ids[start + i + 1] | token_ids[: start + i + 1]); ``candidate_logprobs[i][j]`` is the
    log-probability of ``candidates[j]`` at the same position."""

    token_ids: tuple[int, ...]
    start: int
    logprobs: tuple[float, ...]
    candidate_logprobs: tuple[tuple[float, ...], ...]
    usage: Usage
    worker: str = ""


@dataclass(frozen=True)
class StreamDelta:
    """A partial output of a streaming call: new text of completion ``index`` since the last delta,
    its token count so far, and its finish reason once it is done."""

    index: int
    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    cut: bool = False  # the call's token cap ended this sequence (finish reason ``length``)


EngineState = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class EngineStatus:
    """Where one engine (a replica of a role) is in its life: ``loading`` its model, ``ready`` to serve, or
    ``failed`` to start (``error`` says why). ``since_s``: seconds since the service began loading engines
    until it became ready or failed (while loading: until now)."""

    name: str
    role: Role
    state: EngineState
    since_s: float
    error: str = ""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of one engine, for benchmarks and load balancing. KV numbers are in cache blocks.

    ``kv_blocks_peak`` is the most blocks in use at any scheduler step since the previous snapshot (so one
    poller taking every snapshot sees every step); ``kv_block_steps`` sums the blocks in use over all
    ``scheduler_steps`` since start, so two snapshots give the mean use of the steps between them.
    ``modeled_s`` is a simulated engine's modeled GPU busy time since start (``workers.synthetic``; 0 for a real
    engine, whose time is the wall clock's)."""

    worker: str
    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    kv_blocks_peak: int = 0
    kv_block_steps: int = 0
    scheduler_steps: int = 0
    modeled_s: float = 0.0


@dataclass(frozen=True)
class Completion:
    """One sampled sequence. ``tokens`` counts every generated token, the EOS token included."""

    text: str
    tokens: int
    finish_reason: FinishReason
    token_logprobs: tuple[float, ...] | None = None
    # What ended a ``stop``: the stop string or stop-token id that matched, None for the model's own EOS. A step
    # search needs it: a step that stopped on the delimiter continues, one that ended on EOS is finished.
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens one or more engine calls cost, as the engine reported them.

    ``prompt_tokens`` counts each call's prompt once (OpenAI's convention for n > 1); ``cached_tokens`` is
    the part of it served from the prefix cache; ``completion_tokens`` sums every sequence generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True)
class Generation:
    """What one engine call returned: its completions and its exact usage. ``budget_cut`` counts the
    sequences its ``token_cap`` ended (they finish with ``length``)."""

    completions: tuple[Completion, ...]
    usage: Usage
    worker: str = ""
    budget_cut: int = 0


@dataclass(frozen=True)
class Problem:
    """What a strategy solves. ``prompt`` is the rendered text the policy continues; ``question`` is the
    user's own words (what a PRM, a judge or a refine prompt is given); empty means the prompt itself."""

    prompt: str
    question: str = ""
    # The chat the prompt was rendered from (empty for a raw prompt): another model of another family (a
    # draft) renders it with its own template rather than continue the policy's rendering.
    messages: tuple[dict[str, str], ...] = ()

    @property
    def text(self) -> str:
        return self.question or self.prompt


@dataclass(frozen=True)
class Candidate:
    """A finished solution a strategy considered, with its extracted answer (None when unparsable).

    ``answer`` is the vote key (equal keys are equivalent answers: ``0.5`` and ``\\frac{1}{2}`` both key
    ``1/2``); ``written`` is the same answer as the model wrote it (``0.5``), what a caller is shown. The
    controller fills ``written`` in from the served verifier once the strategy has returned."""

    text: str
    answer: str | None
    tokens: int
    finish_reason: FinishReason
    score: float | None = None
    written: str | None = None

    @property
    def shown_answer(self) -> str | None:
        """The answer a caller is shown: as written when known, else its key."""
        return self.written if self.written is not None else self.answer


@dataclass(frozen=True)
class StrategyResult:
    """A strategy's outcome. ``text`` is the solution shown to the caller; ``finish_reason`` is ``budget``
    when the strategy stopped early because its budget ran out."""

    text: str
    answer: str | None
    finish_reason: ResultFinish
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)
    info: dict[str, object] = field(default_factory=dict)
    # Rounds, search steps or tree nodes, with their scores: what the strategy did, in order.
    trace: tuple[dict[str, object], ...] = field(default_factory=tuple)
    # Tokens (prompt + completion) along the longest chain of calls that depended on each other: the
    # latency proxy of the PDR paper. None when the strategy does not track it.
    sequential_tokens: int | None = None
    written: str | None = None  # ``answer`` as the model wrote it (see Candidate); filled in by the controller

    def with_written(self, written: Callable[[str], str | None]) -> StrategyResult:
        """This result with the written form of its answer and of every candidate's, each read from its own
        text by ``written`` (the served verifier's). Only an answer that has a key has a written form; one
        ``written`` cannot read shows its key."""

        def shown(text: str, key: str | None) -> str | None:
            return None if key is None else (written(text) or key)

        candidates = tuple(replace(c, written=shown(c.text, c.answer)) for c in self.candidates)
        return replace(self, written=shown(self.text, self.answer), candidates=candidates)

    @property
    def shown_answer(self) -> str | None:
        """The answer a caller is shown: as written when known, else its key."""
        return self.written if self.written is not None else self.answer


@dataclass(frozen=True)
class SubCall:
    """One engine call made on behalf of a request, as recorded in the ledger."""

    seq: int
    stage: str
    role: Role
    branch: str
    n: int
    usage: Usage
    latency_s: float
    worker: str
    finish_reasons: tuple[FinishReason, ...]
    cost_usd: float = 0.0
    kind: Literal["generate", "score"] = "generate"


PRMOverflowRead = Literal["last_steps", "final_part"]


@dataclass(frozen=True)
class PRMOverflow:
    """How a PRM scored a solution longer than its context window (the profile's ``[prm] overflow``): it read
    ``steps_scored`` of the solution's ``steps``, the last ones that fit (``last_steps``) or the steps of the
    final part after the reasoning (``final_part``; its last steps when even those did not fit). The steps it
    did not read have no score; ``steps_scored`` 0 means nothing fit. ``limit`` is the PRM's context length
    in tokens when its refusal said it."""

    read: PRMOverflowRead
    steps: int
    steps_scored: int
    limit: int | None = None

    @staticmethod
    def summary(records: Sequence[PRMOverflow], *, behaviour: str) -> dict[str, object]:
        """The request's record of them (``tts.info.prm_overflow``): the profile's ``behaviour``, how many
        solutions overflowed, their steps and the steps scored, how many were read which way, and how many
        had no step scored at all."""
        reads: dict[str, int] = {}
        for r in records:
            reads[r.read] = reads.get(r.read, 0) + 1
        limits = {r.limit for r in records if r.limit is not None}
        return {
            "behaviour": behaviour,
            "solutions": len(records),
            "steps": sum(r.steps for r in records),
            "steps_scored": sum(r.steps_scored for r in records),
            "read": reads,
            "unscored": sum(r.steps_scored == 0 for r in records),
            "context_tokens": max(limits) if limits else None,
        }


@dataclass(frozen=True)
class ScoredSteps:
    """What a PRM returns for one solution: a score per step it read, in order, and, when the solution was
    longer than its context, how it read it (``overflow``; then ``scores`` covers only the steps read)."""

    scores: tuple[float, ...]
    overflow: PRMOverflow | None = None


@dataclass(frozen=True)
class TokenClasses:
    """What a pooling model's token classification returned for one prompt. ``token_ids`` is the whole
    tokenised prompt; ``rows[i][j]`` is P(class j) at the i-th pooled position: one row per step tag for a
    PRM served with a step tag (vLLM's STEP pooling), one per prompt token otherwise. Nothing is generated,
    so ``usage`` counts prompt tokens only."""

    token_ids: tuple[int, ...]
    rows: tuple[tuple[float, ...], ...]
    usage: Usage
    worker: str = ""

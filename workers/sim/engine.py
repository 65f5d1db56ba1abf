"""The synthetic engine: the calls of a vLLM engine (``workers.engine.VllmEngine``) answered from the synthetic
world (``workers.sim.world``) on a modeled GPU (``workers.sim.gpu``), with vLLM's paged KV cache and prefix
caching (``workers.sim.kv``). Plain asyncio: it runs in a Ray actor (``workers.synthetic``) or in-process.

**What a call gets.** ``generate`` / ``stream``: ``n`` continuations of the prompt as the world writes them
(sample i of a seeded call from seed + i, as vLLM seeds an n > 1 request; temperature 0 is one greedy path),
ended by the first stop string (the text stops before it, ``stop_reason`` the string, its tokens counted), by EOS
(one token, ``stop_reason`` None) or by ``max_tokens`` / the context window (``length``); a live budget's
``token_cap`` is one pool for the call's sequences (``workers.token_pool``), as the vLLM engine meters it.
``score``: prompt log-probabilities (a tag PRM's candidates at its step tags, the target's perplexity of a draft's
steps), ``classify_tokens``: a pooling PRM's rows at its step tags; both from the world's step truth with the
configured AUROC. Prompts that leave no room in ``max_model_len`` fail with ``ContextTooLong``, as vLLM's do.

**Continuous batching on modeled time.** Admitted calls run together in iterations of ``tick`` scheduler steps:
each step decodes one token of every running sequence and computes up to ``max_batched_tokens`` of prompts
(chunked prefill); the iteration's modeled time is the cost model's. A call waits when ``max_num_seqs`` or the
KV cache is full; a running sequence that cannot grow stalls, and when nothing can move the newest call is
preempted (its blocks freed, recomputed when readmitted), as vLLM does. The engine sleeps ``time_scale`` times
the modeled time of each iteration (paced against the wall clock, so its own Python work is absorbed), so races,
aborts, streams and deadlines unfold in wall time as on the GPU; ``time_scale`` 0 runs as fast as it can.
Results are delivered in the order they finish on the modeled clock. ``stats().modeled_s`` is the engine's
modeled busy time since start.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import AsyncIterator, Sequence

from orchestrator.errors import BudgetExceeded, ContextTooLong, EngineError, InvalidRequest
from orchestrator.profile import ModelProfile
from orchestrator.types import Completion, EngineStats, Generation, SamplingSpec, Scores, ScoreSpec, StreamDelta, TokenClasses, Usage
from workers.sim.gpu import CostModel
from workers.sim.kv import KVCache, block_hashes
from workers.sim.world import ASSISTANT, CHAT_CLOSE, CHAT_OPEN, NONCES, QUESTION_MARKER, VOCAB, Facts, PathState, World, Writing, ids_of, mix, pieces, token_ids
from workers.token_pool import TokenPool

log = logging.getLogger(__name__)

GREEDY = 0x5EED_0000  # the sample seed of temperature 0: every sample is the one greedy path
_NONCE_SET = frozenset(NONCES)


@dataclass(frozen=True)
class SimConfig:
    """One synthetic engine. ``accuracy``: the share of problems (in expectation) its traces end right;
    ``reference_accuracy``: as a PRM, the writer whose unfinished steps it judges (None: ``accuracy``);
    ``prm_auroc``: how well its step scores separate right from wrong steps; ``verify_auroc``: the same for its
    perplexity of another model's steps (ATTS's target). ``kv_blocks`` None: what ``cost`` says fits."""

    writing: Writing
    profile: ModelProfile
    cost: CostModel
    world_seed: int = 0
    seed: int = 0
    accuracy: float = 0.839
    reference_accuracy: float | None = None
    prm_auroc: float = 0.85
    verify_auroc: float = 0.75
    block_size: int = 16
    kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 32768
    max_num_seqs: int = 1024
    max_batched_tokens: int = 8192
    prefix_caching: bool = True
    time_scale: float = 0.0
    tick: int = 16
    step_tag: str | None = None

    @property
    def blocks(self) -> int:
        return self.kv_blocks or self.cost.kv_blocks(self.block_size, gpu_memory_utilization=self.gpu_memory_utilization)


class _Seq:
    """One sequence: its planned output (token pieces, count, text shown, how it ends) and how far it got."""

    __slots__ = ("index", "pieces", "n", "text", "reason", "stop_reason", "pos", "done", "finish", "cut", "blocks", "offsets", "full")

    def __init__(self, index: int, pieces: list[str], n: int, text: str, reason: str, stop_reason: str | None) -> None:
        self.index, self.pieces, self.n, self.text, self.reason, self.stop_reason = index, pieces, n, text, reason, stop_reason
        self.pos = 0
        self.done = False
        self.finish: str | None = None  # how it ended: its planned reason, or length (cut) / abort
        self.cut = False
        self.blocks = 0  # blocks of its own (past the prompt's full blocks)
        self.offsets: list[int] | None = None
        self.full = ""

    def text_at(self, pos: int) -> str:
        """The text of its first ``pos`` tokens, as shown (never past a stop string)."""
        if pos >= self.n:
            return self.text
        if self.offsets is None:
            self.offsets = list(itertools.accumulate(len(p) for p in self.pieces))
            self.full = "".join(self.pieces)
        end = self.offsets[min(pos, len(self.pieces)) - 1] if pos > 0 and self.pieces else 0
        return self.full[: min(end, len(self.text))]


class _Call:
    """One engine request: a generation of ``seqs``, or a scoring prefill (``result`` ready once computed)."""

    def __init__(self, rid: str, kind: str, ids: list[int], hashes: list[int], *, reads_cache: bool) -> None:
        self.id, self.kind, self.ids, self.hashes, self.reads_cache = rid, kind, ids, hashes, reads_cache
        self.seqs: list[_Seq] = []
        self.prefill_left = len(ids)
        self.cached = 0
        self.held = False
        self.pool: TokenPool | None = None
        self.result: object = None
        self.fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[StreamDelta | None] | None = None
        self.shown: dict[int, int] = {}  # stream: characters of each sequence sent so far
        self.finished_at = 0  # step of the iteration it finished in (delivery order)
        self.private = 0  # a scoring prefill's blocks of its own (its prompt's last, partial block)
        self.logprobs = False

    @property
    def prompt(self) -> int:
        return len(self.ids)

    @property
    def full(self) -> int:
        """The prompt's full blocks it holds by hash (shared, cached); a call that neither reads nor writes the
        prefix cache has none: its blocks are all its own."""
        return len(self.hashes)

    @property
    def live(self) -> list[_Seq]:
        return [s for s in self.seqs if not s.done]


class SyntheticEngine:
    """See the module docstring. Build it inside a running event loop."""

    def __init__(self, config: SimConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.world = World(config.writing, config.profile, seed=config.world_seed)
        self.kv = KVCache(config.blocks, config.block_size, prefix_caching=config.prefix_caching)
        self._rng = random.Random(config.seed)
        self._waiting: deque[_Call] = deque()
        self._running: list[_Call] = []
        self._by_id: dict[str, _Call] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.clock = 0.0  # modeled busy seconds
        self.lag_s = 0.0  # wall seconds the engine's own work ran past its paced schedule
        self._anchor = 0.0
        self._target = 0.0
        self._peak = 0
        self._block_steps = 0
        self._steps = 0
        self.preemptions = 0
        self._pressure = False  # some running sequence could not grow last iteration: admit nothing new
        tag = config.step_tag or config.profile.prm.step_tag
        self._pool_tag = token_ids(tag)[-1]
        self._prm_tag = token_ids(config.profile.prm.tag)[-1]

    @property
    def role(self) -> str:
        return self.name.rpartition("-")[0] or self.name

    # ------------------------------------------------------------------------------------------ calls

    async def generate(self, spec: SamplingSpec) -> Generation:
        call = self._generation_call(spec)
        await self._wait(call)
        return self._result(call)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        call = self._generation_call(spec)
        call.queue = asyncio.Queue()
        self._submit(call)
        try:
            while True:
                delta = await call.queue.get()
                if delta is None:
                    return
                yield delta
        finally:
            if not call.fut.done():
                self._abort(call)

    async def abort(self, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            call = self._by_id.get(rid)
            if call is not None:
                self._abort(call)

    async def score(self, spec: ScoreSpec) -> Scores:
        ids, text = self._prompt_ids(spec.prompt)
        if len(ids) < 2:
            raise InvalidRequest(f"{self.name}: scoring needs a prompt of at least 2 tokens, got {len(ids)}")
        if not 0 <= spec.start < len(ids) - 1:
            raise InvalidRequest(f"{self.name}: score start {spec.start} outside 0..{len(ids) - 2} for a {len(ids)}-token prompt")
        # As the vLLM engine: the prefix cache is read only from a start past the first block.
        reads = self.config.prefix_caching and spec.start >= self.config.block_size
        # A scoring call that does not read the cache is not entered into it either (a PRM's calls all score from
        # token 0: none of them could read what another wrote), which spares hashing every long prompt.
        hashes = block_hashes(ids, self.config.block_size) if reads else []
        call = _Call(spec.request_id or uuid.uuid4().hex, "score", ids, hashes, reads_cache=reads)
        call.result = self._scores(spec, ids, text)
        await self._wait(call)
        scores: Scores = call.result  # type: ignore[assignment]
        cached = min(call.cached, spec.start) if reads else 0
        return replace(scores, usage=Usage(prompt_tokens=len(ids), completion_tokens=1, cached_tokens=cached))

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        ids, text = (list(spec.prompt), "") if not isinstance(spec.prompt, str) else (token_ids(spec.prompt), spec.prompt)
        if len(ids) > self.config.max_model_len:  # nothing is generated: the prompt may fill the window
            raise ContextTooLong(f"{self.name}: the prompt is {len(ids)} tokens; role {self.role} has max_model_len {self.config.max_model_len}")
        call = _Call(spec.request_id or uuid.uuid4().hex, "classify", ids, [], reads_cache=False)  # pooling: no prefix cache
        call.result = self._classes(ids, text)
        await self._wait(call)
        return call.result  # type: ignore[return-value]

    async def tokenize(self, text: str) -> list[int]:
        return token_ids(text)

    async def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Qwen's ChatML; a reasoning profile's generation prompt opens the think span, as R1-Distill's does."""
        body = "".join(f"{CHAT_OPEN}{m.get('role', 'user')}\n{m.get('content', '')}{CHAT_CLOSE}\n" for m in messages)
        think = f"{self.config.profile.think_open}\n" if self.config.profile.reasoning == "think" else ""
        return body + ASSISTANT + think

    async def stats(self) -> EngineStats:
        peak, self._peak = max(self._peak, self.kv.used), self.kv.used
        return EngineStats(
            worker=self.name,
            running=sum(len(c.live) or (1 if c.prefill_left else 0) for c in self._running),
            waiting=sum(max(len(c.seqs), 1) for c in self._waiting),
            kv_blocks_total=self.kv.total,
            kv_blocks_used=self.kv.used,
            prefix_cache_queries=self.kv.queries,
            prefix_cache_hits=self.kv.hits,
            kv_blocks_peak=peak,
            kv_block_steps=self._block_steps,
            scheduler_steps=self._steps,
            modeled_s=self.clock,
        )

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # ------------------------------------------------------------------------------------------ preparing calls

    def _prompt_ids(self, prompt: str | Sequence[int]) -> tuple[list[int], str]:
        ids, text = (list(prompt), "") if not isinstance(prompt, str) else (token_ids(prompt), prompt)
        if len(ids) >= self.config.max_model_len:
            raise ContextTooLong(f"{self.name}: the prompt is {len(ids)} tokens; role {self.role} has max_model_len {self.config.max_model_len}")
        return ids, text

    def _generation_call(self, spec: SamplingSpec) -> _Call:
        ids, text = self._prompt_ids(spec.prompt)
        limit = min(spec.max_tokens, self.config.max_model_len - len(ids))
        hashes = block_hashes(ids, self.config.block_size) if self.config.prefix_caching else []
        call = _Call(spec.request_id or uuid.uuid4().hex, "generate", ids, hashes, reads_cache=self.config.prefix_caching)
        call.logprobs = spec.logprobs
        key = self.world.key_of(text) if text else (1 << 41) + mix(*ids[:64]) % (1 << 32)
        facts = self.world.facts(key)
        state = self.world.parse(key, self.world.response(text))
        rates = self.world.rates(key, self.config.accuracy)
        for i in range(spec.n):
            if spec.temperature == 0:
                sample = GREEDY
            elif spec.seed is not None:
                sample = mix(spec.seed + i, 0x5A)
            else:
                sample = self._rng.getrandbits(62)
            call.seqs.append(self._plan(i, facts, state, rates, sample, spec, limit))
        if spec.token_cap is not None:
            call.pool = TokenPool(spec.token_cap - len(ids), spec.n, spec.expected_tokens, spec.length_quantiles)
            if call.pool.left <= 0:
                raise BudgetExceeded(f"{self.name}: the prompt is {len(ids)} tokens, over the call's cap of {spec.token_cap}")
        return call

    def _plan(self, index: int, facts: Facts, state: PathState, rates: tuple[float, float], sample: int, spec: SamplingSpec, limit: int) -> _Seq:
        """Sequence ``index``'s whole output, decided now (the loop only reveals it over modeled time)."""
        st = replace(state, partial=list(state.partial))
        out: list[str] = []
        stops = tuple(s for s in spec.stop if s)
        longest = max((len(s) for s in stops), default=0)
        text = ""
        eos = False
        for seg in self.world.continuation(facts, st, rates, sample):
            out.extend(seg.tokens)
            if stops:
                before = len(text)
                text += "".join(seg.tokens)
                hit = _first_stop(text, stops, max(0, before - longest + 1))
                if hit is not None:
                    start, end, s = hit
                    n = _tokens_to(out, end)
                    if n <= limit:
                        return _Seq(index, out[:n], n, text[:start], "stop", s)
                    break
            if len(out) >= limit:
                break
            if seg.eos:
                eos = True
                break
        if eos and not spec.ignore_eos and len(out) + 1 <= limit:
            return _Seq(index, out, len(out) + 1, "".join(out), "stop", None)
        if spec.ignore_eos and len(out) < limit:  # benchmarks: words past the end, to max_tokens
            rng = random.Random(sample)
            out += [" " + VOCAB[rng.getrandbits(11)] for _ in range(limit - len(out))]
        out = out[:limit]
        return _Seq(index, out, len(out), "".join(out), "length", None)

    def _result(self, call: _Call) -> Generation:
        completions = tuple(
            Completion(
                text=s.text_at(s.pos),
                tokens=s.pos,
                finish_reason=s.finish,  # type: ignore[arg-type]
                token_logprobs=(-0.5,) * s.pos if call.logprobs else None,
                stop_reason=s.stop_reason if s.finish == "stop" else None,
            )
            for s in call.seqs
        )
        usage = Usage(prompt_tokens=call.prompt, completion_tokens=sum(c.tokens for c in completions), cached_tokens=call.cached)
        return Generation(completions=completions, usage=usage, worker=self.name, budget_cut=sum(s.cut for s in call.seqs))

    # ------------------------------------------------------------------------------------------ the loop

    async def _wait(self, call: _Call) -> None:
        self._submit(call)
        try:
            await asyncio.shield(call.fut)
        except asyncio.CancelledError:
            self._abort(call)  # cancelling the caller stops the work, as vLLM aborts on a closed generator
            raise

    def _submit(self, call: _Call) -> None:
        self._by_id[call.id] = call
        self._waiting.append(call)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"synthetic-{self.name}")
        assert self._wake is not None
        self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        idle = True
        while True:
            if not self._waiting and not self._running:
                self._wake.clear()
                await self._wake.wait()
                idle = True
            if idle:  # a busy period starts: pace it from now
                await asyncio.sleep(0)  # calls sent together (one batch, one gather) start together
                self._anchor, self._target, idle = time.perf_counter(), 0.0, False
            self._admit()
            dt, done, moved = self._iterate()
            self.clock += dt
            if self.config.time_scale > 0 and dt > 0:
                self._target += self.config.time_scale * dt
                delay = self._anchor + self._target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.lag_s = max(self.lag_s, -delay)
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(0)
            self._deliver(done, moved)

    def _admit(self) -> None:
        if self._pressure and self._running:  # as vLLM: running requests get the blocks first
            return
        bs = self.config.block_size
        running = sum(len(c.live) or 1 for c in self._running)
        while self._waiting:
            call = self._waiting[0]
            if call.fut.done():  # aborted while waiting
                self._waiting.popleft()
                continue
            width = max(len(call.live), 1)
            if self._running and running + width > self.config.max_num_seqs:
                return
            full = call.full
            hit = self.kv.cached_prefix(call.hashes, call.prompt) if call.reads_cache else 0
            own = [-(-(call.prompt + s.pos + 1) // bs) - full for s in call.live] or [-(-call.prompt // bs) - full]
            if not self.kv.hold(call.hashes[:full], copies=width):
                if not self._running:
                    self._fail(call, EngineError(f"{self.name}: a prompt of {call.prompt} tokens does not fit the KV cache ({self.kv.total} blocks)", worker=self.name))
                    continue
                return
            if not self.kv.take(sum(own)):
                self.kv.release(call.hashes[:full] * width)
                if not self._running:
                    self._fail(call, EngineError(f"{self.name}: a call of {width} sequences does not fit the KV cache", worker=self.name))
                    continue
                return
            call.held = True
            for s, o in zip(call.live, own):
                s.blocks = o
            if not call.seqs:
                call.private = own[0]
            if call.kind != "requeued":
                self.kv.queries += call.prompt
                self.kv.hits += hit * bs
                call.cached = hit * bs
            call.prefill_left = call.prompt - hit * bs + (max((s.pos for s in call.live), default=0) if call.kind == "requeued" else 0)
            if call.kind == "requeued":
                call.kind = "generate"
            self._waiting.popleft()
            self._running.append(call)
            running += width
            if call.pool is not None:  # with an expectation, some sequences may not fit at all: never start them
                for v in call.pool.victims():
                    self._end(call, call.seqs[v], "length", cut=True)
                    if call.queue is not None:
                        self._stream_delta(call, call.seqs[v])

    def _iterate(self) -> tuple[float, list[_Call], list[tuple[_Call, _Seq]]]:
        """One iteration of ``tick`` scheduler steps: its modeled seconds, the calls it finished (in the order
        they finished) and the streamed sequences it moved."""
        cfg, bs = self.config, self.config.block_size
        k = cfg.tick
        decoding = [(c, s) for c in self._running if c.prefill_left == 0 and c.kind == "generate" for s in c.seqs if not s.done]
        budget = k * cfg.max_batched_tokens - len(decoding) * k
        prefill = prefill_ctx = 0
        for c in self._running:
            if c.prefill_left <= 0 or budget <= 0:
                continue
            take = min(c.prefill_left, budget)
            before = c.prompt - c.prefill_left
            prefill_ctx += int(take * (before + take / 2))
            c.prefill_left -= take
            prefill += take
            budget -= take
        context = sum(c.prompt + s.pos for c, s in decoding)
        produced = steps = 0
        stalled: list[tuple[_Call, _Seq]] = []
        moved: list[tuple[_Call, _Seq]] = []
        for c, s in decoding:
            if s.done:  # ended by its pool while this iteration ran
                continue
            a = min(k, s.n - s.pos)
            need = -(-(c.prompt + s.pos + a) // bs) - c.full - s.blocks
            if need > 0:
                if not self.kv.take(need):
                    stalled.append((c, s))  # no room to grow: it waits this iteration
                    continue
                s.blocks += need
            kept = c.pool.take(s.index, a) if c.pool is not None else a
            s.pos += kept
            produced += kept
            steps = max(steps, kept)
            c.finished_at = max(c.finished_at, kept)
            if kept < a:
                self._end(c, s, "length", cut=True)
            elif s.pos >= s.n:
                if c.pool is not None:
                    c.pool.finished(s.index, complete=s.reason == "stop")
                self._end(c, s, s.reason)
            if c.pool is not None:
                for v in c.pool.victims():
                    self._end(c, c.seqs[v], "length", cut=True)
                    moved.append((c, c.seqs[v]))
            moved.append((c, s))
        self._pressure = bool(stalled)
        if stalled and not produced and not prefill and not self._preempt():
            for c, s in stalled:  # alone and still no room: vLLM would never have admitted it
                log.warning("%s: KV cache full with one call running; its sequence %d ends at %d tokens", self.name, s.index, s.pos)
                self._end(c, s, "length")
                moved.append((c, s))
        dt = cfg.cost.iteration(decode_tokens=produced, steps=steps, context=context, prefill=prefill, prefill_context=prefill_ctx, max_batched_tokens=cfg.max_batched_tokens)
        used = self.kv.used
        self._peak = max(self._peak, used)
        n_steps = max(steps, 1 if prefill else 0)
        self._steps += n_steps
        self._block_steps += used * n_steps
        done = [c for c in self._running if c.prefill_left == 0 and (c.kind != "generate" or not c.live)]
        done.sort(key=lambda c: c.finished_at)
        return dt, done, [(c, s) for c, s in moved if c.queue is not None]

    def _stream_delta(self, call: _Call, s: _Seq) -> None:
        assert call.queue is not None
        text = s.text_at(s.pos)
        sent = call.shown.get(s.index, 0)
        call.shown[s.index] = len(text)
        call.queue.put_nowait(StreamDelta(index=s.index, text=text[sent:], tokens=s.pos, finish_reason=s.finish if s.done else None, cut=s.cut))  # type: ignore[arg-type]

    def _end(self, call: _Call, s: _Seq, reason: str, *, cut: bool = False) -> None:
        if s.done:
            return
        s.done, s.finish, s.cut = True, reason, cut
        if call.held:
            self._release(call, s)

    def _release(self, call: _Call, s: _Seq) -> None:
        bs = self.config.block_size
        full = call.full
        register: list[int] = []
        if self.config.prefix_caching and s.pos and s.finish != "abort":
            ids = call.ids + ids_of(s.pieces[: s.pos])
            register = block_hashes(ids, bs, start=full, parent=call.hashes[full - 1] if full else 0)
        self.kv.release(call.hashes[:full], private=s.blocks, register=register)
        s.blocks = 0

    def _deliver(self, done: list[_Call], moved: list[tuple[_Call, _Seq]]) -> None:
        """After the iteration's modeled time has passed: stream deltas, then finished calls, in finish order."""
        for c, s in moved:
            self._stream_delta(c, s)
        for c in done:
            if c in self._running:
                self._running.remove(c)
            if c.kind != "generate" and c.held:  # a scoring prefill: its prompt stays cached
                self.kv.release(c.hashes[: c.full], private=c.private)
                c.held = False
            self._finish(c)

    def _finish(self, call: _Call) -> None:
        self._by_id.pop(call.id, None)
        if call.queue is not None:
            call.queue.put_nowait(None)
        if not call.fut.done():
            call.fut.set_result(None)

    def _fail(self, call: _Call, err: BaseException) -> None:
        self._waiting.popleft()
        self._by_id.pop(call.id, None)
        if call.queue is not None:
            call.queue.put_nowait(None)
        if not call.fut.done():
            call.fut.set_exception(err)

    def _abort(self, call: _Call) -> None:
        """Stop a call now: its unfinished sequences end ``abort`` with what they generated."""
        if call.fut.done():
            return
        for s in call.seqs:
            if not s.done:
                self._end(call, s, "abort")
                if call.queue is not None:
                    self._stream_delta(call, s)
        if call in self._running:
            self._running.remove(call)
            if call.kind != "generate" and call.held:
                self.kv.release(call.hashes[: call.full], private=call.private)
        elif call in self._waiting:
            self._waiting.remove(call)
        self._finish(call)

    def _preempt(self) -> bool:
        """Nothing could move for want of KV blocks: the newest call gives its blocks back and waits to be
        recomputed (vLLM's recompute preemption). False when there is no other call to make room for."""
        victim = next((c for c in reversed(self._running) if c.kind == "generate" and c.live), None)
        if victim is None or len(self._running) == 1:
            return False
        self.preemptions += 1
        self._running.remove(victim)
        for s in victim.live:
            self.kv.release([], private=s.blocks)
            s.blocks = 0
        self.kv.release(victim.hashes[: victim.full] * len(victim.live))
        victim.held = False
        victim.kind = "requeued"
        self._waiting.appendleft(victim)
        return True

    # ------------------------------------------------------------------------------------------ reading prompts

    def _scores(self, spec: ScoreSpec, ids: list[int], text: str) -> Scores:
        rows = len(ids) - spec.start - 1
        if not text:
            return Scores(tuple(ids), spec.start, (-1.0,) * rows, (((-1.0,) * len(spec.candidates),) * rows) if spec.candidates else (), Usage())
        key = self.world.key_of(text)
        if spec.candidates:  # a tag PRM: P(good) among the candidates at every step tag
            steps = self._tag_steps(text)
            probs = self._step_probs(key, steps)
            filler = (-3.0,) * len(spec.candidates)
            cands: list[tuple[float, ...]] = [filler] * rows
            tags = _positions(ids, self._prm_tag)[-len(steps) :] if steps else []
            for p, prob in zip(tags, probs):
                if 0 <= p - spec.start < rows:
                    row = [-3.0] * len(spec.candidates)
                    row[0] = math.log(max(prob, 1e-9))
                    if len(row) > 1:
                        row[1] = math.log(max(1 - prob, 1e-9))
                    cands[p - spec.start] = tuple(row)
            return Scores(tuple(ids), spec.start, (-1.0,) * rows, tuple(cands), Usage())
        return Scores(tuple(ids), spec.start, tuple(self._own_logprobs(key, text, len(ids))[spec.start + 1 :]), (), Usage())

    def _classes(self, ids: list[int], text: str) -> TokenClasses:
        key = self.world.key_of(text) if text else 0
        at = text.find(ASSISTANT)
        body = text[at + len(ASSISTANT) :] if at >= 0 else text
        tag = self.config.step_tag or self.config.profile.prm.step_tag
        steps = body.split(tag)[:-1]
        good = self.config.profile.prm.good_class
        rows = []
        for prob in self._step_probs(key, steps):
            row = [1.0 - prob] * max(2, good + 1)
            row[good] = prob
            rows.append(tuple(row))
        n_tags = len(_positions(ids, self._pool_tag))
        rows = rows[-n_tags:] if n_tags else []
        return TokenClasses(token_ids=tuple(ids), rows=tuple(rows), usage=Usage(prompt_tokens=len(ids)), worker=self.name)

    def _tag_steps(self, text: str) -> list[str]:
        """The steps of a tag PRM's prompt (question, then every step followed by the tag and a separator)."""
        fmt = self.config.profile.prm
        parts = text.split(fmt.tag)[:-1]
        if not parts:
            return []
        steps = [p[1:] if p.startswith("\n") else p for p in parts[1:]]
        return [self._first_step(parts[0], fmt.question_template)] + steps

    def _first_step(self, head: str, template: str) -> str:
        """Step 0 of a tag PRM's prompt: from its nonce (the first sentence-opening word the simulated policy
        writes after the question's marker), else after the question template's end."""
        marker = QUESTION_MARKER.search(head)
        start = marker.end() if marker else 0
        offset = start
        for p in pieces(head[start:]):
            if p.strip() in _NONCE_SET:
                return head[offset:].lstrip()
            offset += len(p)
        prefix, _, suffix = template.partition("{question}")
        at = head.find(suffix, len(prefix)) if suffix else -1
        return head[at + len(suffix) :] if at >= 0 else head

    def _step_probs(self, key: int, steps: Sequence[str]) -> list[float]:
        """A PRM's P(good) per step: the world's truth of each step read through noise of ``prm_auroc``."""
        texts = [s.strip() for s in steps]
        ref = self.world.rates(key, self.config.reference_accuracy or self.config.accuracy)
        labels = self.world.labels(key, texts, reference=ref, last_partial=True)
        return [_phi(self.world.signal(key, t, sign, share, auroc=self.config.prm_auroc, salt=1)) for t, (sign, share) in zip(texts, labels)]

    def _own_logprobs(self, key: int, text: str, n_ids: int) -> list[float]:
        """Per prompt token, the log-probability this model gives it: its steps' truth read through noise of
        ``verify_auroc`` (a wrong step is less likely under it), outside the response a flat -1."""
        response = self.world.response(text)
        out = [-1.0] * n_ids
        if not response:
            return out
        segments = response.split(self.world.delimiter)
        texts = [s.strip() for s in segments]
        labels = self.world.labels(key, texts, reference=self.world.rates(key, self.config.accuracy), last_partial=True)
        means = [-0.45 + 0.15 * self.world.signal(key, t, sign, share, auroc=self.config.verify_auroc, salt=2) for t, (sign, share) in zip(texts, labels)]
        # The response is the prompt's tail: walk its tokens back from the end, segment by segment.
        pos = n_ids
        for i, (seg, mean) in enumerate(zip(reversed(segments), reversed(means))):
            if i:
                for _ in self.world.delimiter_tokens:
                    pos -= 1
                    out[max(pos, 0)] = -0.05
            for _ in pieces(seg):
                pos -= 1
                if pos >= 0:
                    out[pos] = min(mean, -0.01)
        return out


def _positions(ids: list[int], token: int) -> list[int]:
    """Where ``token`` occurs in ``ids`` (``list.index`` scans in C: a long prompt holds few tags)."""
    out: list[int] = []
    at = -1
    try:
        while True:
            at = ids.index(token, at + 1)
            out.append(at)
    except ValueError:
        return out


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _first_stop(text: str, stops: Sequence[str], start: int) -> tuple[int, int, str] | None:
    """The stop string that ends first in ``text`` from ``start`` on: (its start, its end, the string)."""
    best: tuple[int, int, str] | None = None
    for s in stops:
        at = text.find(s, start)
        if at >= 0 and (best is None or at + len(s) < best[1]):
            best = (at, at + len(s), s)
    return best


def _tokens_to(pieces_: Sequence[str], end: int) -> int:
    """How many of ``pieces_`` it takes to cover ``end`` characters."""
    total = 0
    for i, p in enumerate(pieces_):
        total += len(p)
        if total >= end:
            return i + 1
    return len(pieces_)

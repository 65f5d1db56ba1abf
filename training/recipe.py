"""Retrain the bundled models from scratch (CPU by default), then measure them with vLLM and write their model cards.

    python -m training.recipe                      # every stage on CPU (see the model cards for stage times)
    python -m training.recipe --device cuda        # the training stages on a GPU (a few minutes)
    python -m training.recipe --stages evaluate    # re-measure the committed weights only

Stages, in order (each reads what the previous ones wrote under --out, default models/):
  draft, target   train the two policies on the task's train split (solve + refine formats)
  refine-data     sample 8 drafts per train-split problem from `target` with vLLM
  refine-tune     continue training `target` on refine prompts built from those drafts
  prm-data        sample solutions to train-split problems from both policies with vLLM, label every step
  prm             fine-tune a copy of `target` into a Math-Shepherd-style PRM on those labels and on the
                  refine-data drafts, labelled the same way
  evaluate        measure everything on the test split with vLLM; write metrics.json and the model cards
  time-cpu        (only when named) seconds per CPU training step of each training stage, for the cards
All seeds are fixed, so a rerun on the same kind of device reproduces the committed weights up to floating-point
nondeterminism; a CPU and a GPU run give different weights of similar quality (the model cards say which device
trained each stage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from orchestrator.config import REPO_ROOT

STAGES = ("draft", "target", "refine-data", "refine-tune", "prm-data", "prm", "evaluate")
EXTRA_STAGES = ("time-cpu",)  # run only when named
DEFAULT_OUT = REPO_ROOT / "models"  # the bundled models are served from there

# Rows are 16 x 512 tokens of whole examples (see train.row_batches): refine examples need the length, and
# in the GPU sweep of this recipe 16 rows per step learned more per token than 32 (same tokens: 45.9% vs
# 32.3% pass@1). Pass@1 grew steeply with steps: 31% at 2400, 49% at 2800, 89% after 2400 steps of 32 rows, so the
# target stops where its pass@1 sits inside the 40-75% band the strategies need.
POLICY_RECIPES = {
    # The draft must stay well below the target (>= 15 points) yet solve easy problems, for draft/target strategies.
    "draft": {"steps": 2000, "batch": 16, "seq_len": 512, "lr": 3e-3, "warmup": 50, "refine_fraction": 0.25},
    "target": {"steps": 2800, "batch": 16, "seq_len": 512, "lr": 2.5e-3, "warmup": 100, "refine_fraction": 0.25},
}
# The target's last stage: refine examples whose workspaces hold its own drafts (see train.refine_tune).
REFINE_DATA = {"problems": 2000, "drafts": 8, "temperature": 0.8}
REFINE_TUNE = {"steps": 300, "lr": 5e-4, "warmup": 20, "batch": 16, "seq_len": 512, "solve_fraction": 0.3}
# The PRM learns from prm-data's rows and refine-data's drafts (see measure.load_prm_examples); in a GPU sweep
# of PRM recipes (dev split) its step AUROC rose with steps on that data (0.824 at 600, 0.848 at 1500,
# 0.856 at 3000 of a 3000-step run) and not on prm-data alone (0.816 at 600, 0.771 at 3000).
PRM_RECIPE = {"steps": 2400, "lr": 5e-4, "batch": 32, "warmup": 20, "lm_weight": 1.0}
PRM_DATA = {"problems": 1200, "samples": 4, "temperature": 0.8, "simulated": 2}
# The stages that train (on --device); the others sample or evaluate with vLLM on the CPU.
TRAINING_STAGES = {**POLICY_RECIPES, "refine-tune": REFINE_TUNE, "prm": PRM_RECIPE}


def _config(recipe: dict, device: str):
    """A TrainConfig from one of the recipe dicts above (keys that are not TrainConfig fields are ignored)."""
    from dataclasses import fields

    from training import train

    names = {f.name for f in fields(train.TrainConfig)}
    return train.TrainConfig(**{k: v for k, v in recipe.items() if k in names}, device=device)


def stage_config(stage: str, device: str = "cpu"):
    """The TrainConfig of training stage ``stage`` (one of TRAINING_STAGES)."""
    return _config(TRAINING_STAGES[stage], device)


def time_cpu(out: Path, steps: int = 8) -> dict:
    """Seconds per training step on this machine's CPU for each training stage, and the stage time they give.

    For weights trained on a GPU this is what says how long the CPU recipe takes. Each stage is timed as it
    trains (same setup and loop), so refine-tune and prm need the data files their stages read."""
    from training import measure, train

    setups = {
        name: lambda cfg, name=name: train.policy_setup(name, cfg, refine_fraction=POLICY_RECIPES[name]["refine_fraction"])
        for name in POLICY_RECIPES
    }
    setups["refine-tune"] = lambda cfg: train.refine_setup(out / "target", measure.load_refine_rows(out), cfg, solve_fraction=REFINE_TUNE["solve_fraction"])
    setups["prm"] = lambda cfg: train.prm_setup(out / "target", measure.load_prm_examples(out)[0], cfg, lm_weight=PRM_RECIPE["lm_weight"])
    rates = {}
    for stage, setup in setups.items():
        cfg = stage_config(stage)
        per_step = train.seconds_per_step(setup(cfg), cfg, steps=steps)
        rates[stage] = {"steps": cfg.steps, "per_step": round(per_step, 3), "seconds": round(per_step * cfg.steps, 1)}
    return rates


def run(stages: list[str], out: Path, device: str = "cpu") -> None:
    from training import train

    train.set_threads()
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        t0 = time.time()
        if stage in POLICY_RECIPES:
            info = train.train_policy(stage, out / stage, stage_config(stage, device), refine_fraction=POLICY_RECIPES[stage]["refine_fraction"])
            print(f"{stage}: {info['params']} params, loss {info['final_loss']}, {info['train_seconds']} s")
        elif stage == "refine-data":
            from training import measure

            n = measure.write_refine_data(out, **REFINE_DATA)
            print(f"refine-data: {n} problems with {REFINE_DATA['drafts']} drafts each")
        elif stage == "refine-tune":
            from training import measure

            info = train.refine_tune(out / "target", measure.load_refine_rows(out), stage_config("refine-tune", device), solve_fraction=REFINE_TUNE["solve_fraction"])
            print(f"refine-tune: loss {info['final_loss']}, {info['train_seconds']} s")
        elif stage == "prm-data":
            from training import measure

            n = measure.write_prm_data(out, **PRM_DATA)
            print(f"prm-data: {n} labelled traces")
        elif stage == "prm":
            from training import measure

            examples, sources = measure.load_prm_examples(out)
            info = train.train_prm(
                out / "target", out / "prm", examples, stage_config("prm", device), lm_weight=PRM_RECIPE["lm_weight"], sources=sources
            )
            print(f"prm: {info['params']} params, loss {info['final_loss']}, {info['train_seconds']} s")
        elif stage == "time-cpu":
            rates = time_cpu(out)
            print(json.dumps(rates, indent=2))
        elif stage == "evaluate":
            from training import cards, measure

            metrics = measure.evaluate(out)
            cards.write_all(out, metrics, stages=STAGES)
            print(json.dumps(metrics["headline"], indent=2))
        else:
            raise SystemExit(f"unknown stage {stage!r}; expected some of {', '.join(STAGES)}")
        timings_path = out / "recipe_timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        if stage == "time-cpu":
            timings["cpu_seconds_per_step"] = rates
        else:
            timings[stage] = round(time.time() - t0, 1)
            timings.setdefault("device", {})[stage] = device if stage in TRAINING_STAGES else "cpu"
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where model directories are written")
    parser.add_argument(
        "--device", default="cpu", help="torch device for the training stages (cpu, cuda); sampling and evaluation use vLLM on CPU"
    )
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"))
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES + EXTRA_STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; expected some of {list(STAGES)}")
    run(stages, args.out, args.device)


if __name__ == "__main__":
    main()

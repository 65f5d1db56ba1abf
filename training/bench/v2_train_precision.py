"""Training steps of the v2 family on this CPU at float32 and at bf16 autocast, side by side.

    python -m training.bench.v2_train_precision [--size full] [--stages target draft prm] [--steps 6]
    python -m training.bench.v2_train_precision --size small --stages target --steps 200   # does bf16 learn as well?

For each stage, the same model (same seed, same shape as ``training.v2.train.SIZES[size]``) takes ``--steps``
steps of the recipe's own loop (``training.v2.train.fit``: its example stream, loss, optimizer and clipping)
once per precision, the two runs interleaved so machine noise hits both. Reported: seconds per step after the
whole run (example making included, as in the recipe at ``data_workers`` 0) and the mean loss of the last quarter of the steps, so a long run
also shows whether bf16 matmuls (float32 weights and optimizer) train as well as float32 ones. The PRM row
trains on solver traces and planted errors (no sampled data is needed). Writes
training/bench/results/v2_train_precision_<size>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench import commit

RESULTS = Path(__file__).resolve().parent / "results"


def _stage_parts(stage: str, size: str, out: Path, tok):
    """(model factory, example function, loss) for ``stage`` at ``size`` as the recipe builds them."""
    from transformers import Qwen2ForCausalLM

    from training.common import lm_loss
    from training.v2 import train
    from training.v2.modeling_prm import Qwen2ForProcessRewardModel

    s = train.SIZES[size]
    params = s[stage]
    problems = train.train_problems(out, min(s["problems"], 2000), seed=train.POLICY_PROBLEMS_SEED, levels=s["levels"])
    if stage in ("target", "draft"):
        config = train.qwen2_config(params["shape"], tok)
        return (lambda: Qwen2ForCausalLM(config)), train.policy_example_fn(tok, problems, params["seed"]), lm_loss
    if stage == "prm":
        config = train.qwen2_config(params["shape"], tok, num_labels=2, tie_word_embeddings=False)
        rows = train.synthetic_rows(problems[:500], params["seed"])
        return (lambda: Qwen2ForProcessRewardModel(config)), train.prm_example_fn(tok, rows, params["seed"]), train.prm_loss
    raise SystemExit(f"error: stage {stage!r} has no row here; choose among target, draft, prm")


def measure(size: str, stages: list[str], steps: int) -> dict:
    from training.v2 import recipe, train

    train.set_threads()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        recipe.build_tokenizer(out, "smoke")  # vocab 512 at every size; the smoke corpus builds in seconds
        tok = train.load_tokenizer(out)
        for stage in stages:
            make_model, make_example, loss_fn = _stage_parts(stage, size, out, tok)
            params = train.SIZES[size][stage]
            per = {}
            for precision in ("fp32", "bf16"):
                os.environ["TRAIN_PRECISION"] = precision
                cfg = train.train_config({**params, "steps": steps}, "cpu")
                torch.manual_seed(params["seed"])
                model = make_model()
                t0 = time.perf_counter()
                run = train.fit(model, make_example, loss_fn, cfg, out / "ckpt" / stage / precision / "state.pt",
                                checkpoint_every=10**9, desc=f"{stage} {precision}")
                total = time.perf_counter() - t0
                tail = run.losses[-max(1, steps // 4):]
                per[precision] = {"seconds": round(total, 2), "loss_tail": round(sum(tail) / len(tail), 4), "steps": run.steps}
                print(f"{stage} {precision}: {total / steps:.2f} s/step, loss (last quarter) {per[precision]['loss_tail']}", flush=True)
            os.environ.pop("TRAIN_PRECISION", None)
            per["speedup"] = round(per["fp32"]["seconds"] / per["bf16"]["seconds"], 2)
            per["shape"] = params.get("shape")
            per["batch"], per["seq_len"] = params["batch"], params["seq_len"]
            rows[stage] = per
    return {
        "size": size,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.bench.v2_train_precision", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", help="a size of training.v2.train.SIZES (its shapes, batch and sequence length)")
    parser.add_argument("--stages", nargs="+", default=["target", "draft", "prm"])
    parser.add_argument("--steps", type=int, default=6, help="training steps per precision and stage")
    args = parser.parse_args(argv)
    from training.v2 import train

    if args.size not in train.SIZES:
        parser.error(f"unknown size {args.size!r}; expected one of {sorted(train.SIZES)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    result = measure(args.size, args.stages, args.steps)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"v2_train_precision_{args.size}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

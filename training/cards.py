"""Model cards (README.md in each model directory), written from the measured metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tasks import arithmetic as task

RECIPE_CMD = "python -m training.recipe"
EVAL_CMD = "python -m training.recipe --stages evaluate"

GOALS = [
    ("target pass@1 in [40%, 75%]", lambda h: 0.40 <= h["target_pass@1"] <= 0.75),
    ("draft at least 15 points below target", lambda h: h["target_minus_draft"] >= 0.15),
    ("maj@16 at least +10 points over pass@1", lambda h: h["maj@16_gain"] >= 0.10),
    ("pass@16 at least +25 points over pass@1", lambda h: h["pass@16_gain"] >= 0.25),
    ("PRM step AUROC >= 0.85 (both policies' steps pooled)", lambda h: h["prm_step_auroc"] >= 0.85),
    ("PRM-weighted best-of-16 at least +5 points over maj@16", lambda h: h["prm_weighted_bo16_gain_over_maj16"] >= 0.05),
    ("correct traces shorter than incorrect", lambda h: h["tokens_correct_vs_incorrect"][0] < h["tokens_correct_vs_incorrect"][1]),
    ("one refine round at least +10 points over pass@1", lambda h: h["refine_gain_over_pass@1"] >= 0.10),
]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


def _levels_table(per_level: dict) -> str:
    rows = ["| level | ops | start / operand range | pass@1 |", "|---|---|---|---|"]
    for lv, acc in per_level.items():
        spec = task.LEVEL_SPECS[int(lv)]
        rows.append(f"| {lv} | {spec.n_ops} | {spec.start} / {spec.addend}, factors {spec.factor} | {_pct(acc)} |")
    return "\n".join(rows)


def _training(model_dir: Path) -> dict:
    path = model_dir / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def goals_table(headline: dict) -> str:
    rows = ["| goal | met |", "|---|---|"]
    rows += [f"| {name} | {'yes' if check(headline) else '**no**'} |" for name, check in GOALS]
    return "\n".join(rows)


def recipe_time(timings: dict, stages: Sequence[str]) -> str:
    """Stage times as run, in the order of ``stages``, and for stages trained on a GPU the CPU time their measured
    CPU step rate gives. ``stages`` is the recipe's (``training.recipe.STAGES``), passed in because the recipe imports
    this module."""
    devices = timings.get("device", {})
    rates = timings.get("cpu_seconds_per_step", {})
    timings = {k: timings[k] for k in stages if isinstance(timings.get(k), (int, float))}
    ran = [f"{k} {v / 60:.1f} min ({devices.get(k, 'cpu')})" for k, v in timings.items()]
    text = ", ".join(ran) or "see recipe_timings.json"
    on_gpu = {k: r for k, r in rates.items() if devices.get(k, "cpu") != "cpu" or k not in timings}
    if on_gpu:
        total = sum(r["seconds"] for r in on_gpu.values()) + sum(v for k, v in timings.items() if k not in on_gpu)
        parts = ", ".join(f"{k} {r['steps']} steps x {r['per_step']:.2f} s = {r['seconds'] / 60:.0f} min" for k, r in on_gpu.items())
        text += f". On 2 CPU cores (measured seconds per step): {parts}; the whole recipe about {total / 60:.0f} min on CPU"
    return text


def _common(metrics: dict, stages: Sequence[str]) -> str:
    s = metrics["settings"]
    timing = recipe_time(metrics.get("recipe_timings", {}), stages)
    return f"""## How it was measured
vLLM {metrics.get('vllm_version', '')} on CPU, float32, the test split: {s['problems']} problems
({s['problems_per_level']} per difficulty level 1-5), {s['samples']} samples each at temperature
{s['temperature']}, top_p 1.0, at most {s['max_tokens']} new tokens, engine seed {s['seed']}.
Reproduce the numbers with `{EVAL_CMD}`; retrain everything from scratch with `{RECIPE_CMD}`
(add `--device cuda` to train on a GPU). Fixed seeds; a GPU and a CPU run give different weights of
similar quality. Stage times: {timing}.

## Format
Prompt: the question and a newline (the chat template renders a user message the same way), e.g.
`Start at 37 and apply +48, *3.` Solution: one step per line (`37+48=85`), optional corrections
(`wait, 85*3=255`), then `Answer: <integer>`, then EOS. Refine prompts add a workspace after the question
(the step lines and answers of earlier drafts with counts, ended by `---`), see `tasks/arithmetic.py`.

## All goals of the bundled models
{goals_table(metrics['headline'])}
"""


def _refine_tune_line(tr: dict) -> str:
    rt = tr.get("refine_tune")
    if not rt:
        return ""
    return (
        f"\n- Then refine-tuned: {rt['config']['steps']} steps ({rt['train_tokens'] / 1e6:.1f}M tokens) on refine prompts whose "
        f"workspaces hold {rt['drafts_per_problem']} of its own drafts (random subsets) of {rt['problems']} train-split problems, "
        f"{_pct(rt['solve_fraction'])} solve examples mixed in; final loss {rt['final_loss']}; "
        f"{rt['train_seconds'] / 60:.1f} min on {rt['config'].get('device', 'cpu')}."
    )


def policy_card(name: str, metrics: dict, model_dir: Path, *, stages: Sequence[str]) -> str:
    m = metrics[name]
    tr = _training(model_dir)
    extra = ""
    if name == "target":
        r = metrics["refine"]
        extra = f"""
### Refine (one round, workspace distilled from 8 of its own drafts)
refine@1 {_pct(r['refine@1'])} vs pass@1 {_pct(m['pass@1'])} ({_pts(r['gain_over_pass@1'])}).
"""
    return f"""# `{name}` policy

A {tr.get('params', 0) / 1e6:.2f}M-parameter Llama (character-level tokenizer shared by all bundled models)
trained from scratch on the bundled chained-arithmetic task, for the test-time scaling service's tests,
benchmarks and offline default. Not a general language model.

- Training: {tr.get('train_tokens', 0) / 1e6:.1f}M tokens (rows of whole examples) of train-split problems
  (levels 1-5 uniformly), {_pct(tr.get('refine_fraction', 0))} of examples in the refine format, 10% of traces
  with a masked slip followed by a `wait,` correction; final loss {tr.get('final_loss')};
  {tr.get('train_seconds', 0) / 60:.1f} min on {tr.get('config', {}).get('device', 'cpu')}.
- Settings: {json.dumps(tr.get('config', {}))}{_refine_tune_line(tr)}

## Results (test split)
| metric | value |
|---|---|
| pass@1 | {_pct(m['pass@1'])} |
| majority@16 | {_pct(m['maj@16'])} ({_pts(m['maj@16'] - m['pass@1'])}) |
| pass@16 | {_pct(m['pass@16'])} ({_pts(m['pass@16'] - m['pass@1'])}) |
| mean tokens, correct traces | {m['mean_tokens_correct']:.1f} |
| mean tokens, incorrect traces | {m['mean_tokens_incorrect']:.1f} |
| traces with a `wait,` correction | {_pct(m['with_correction_line'])} |
| traces ended by EOS | {_pct(m['finished_by_eos'])} |

{_levels_table(m['per_level_pass@1'])}
{extra}
{_common(metrics, stages)}"""


def _sources(tr: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in tr.get("sources", {}).items()) or "sources not recorded"


def prm_card(metrics: dict, model_dir: Path, *, stages: Sequence[str]) -> str:
    p = metrics["prm"]
    tr = _training(model_dir)
    return f"""# `prm` process reward model

A {tr.get('params', 0) / 1e6:.2f}M-parameter Llama in the Math-Shepherd style, fine-tuned from `target`.
Input: the prompt, then each step followed by ` ки` and a newline. A step's score is P(`+`) among
{{`+`, `-`}} in the next-token distribution at its tag, read from prompt log-probabilities (one prefill
scores every step of a solution). Label of a step: the exact checker's *on track* verdict (the trace's
value after the step is the true intermediate value).

- Training data: {tr.get('train_examples', 0)} labelled traces of train-split problems ({_sources(tr)}):
  solutions sampled from `draft` and `target` with vLLM (temperature 0.8), every step labelled by the
  checker, so its errors are the policies' real errors, and simulated drafts (reference solutions with
  random arithmetic slips carried forward), which contrast a right step with the same step slipped.
  Loss: cross-entropy of the label at each tag, plus {tr.get('lm_weight', 0)} x next-token loss on the tokens of
  on-track steps (keeps the policy's arithmetic). {tr.get('train_seconds', 0) / 60:.1f} min on {tr.get('config', {}).get('device', 'cpu')}, final loss {tr.get('final_loss')}.
- Settings: {json.dumps(tr.get('config', {}))}

## Results (test split, samples of both policies)
| metric | value |
|---|---|
| step AUROC, all policy steps ({p['steps_scored']} steps, {_pct(p['positive_step_fraction'])} on track) | {p['step_auroc']:.3f} |
| step AUROC, `target` steps | {p['step_auroc_target']:.3f} |
| step AUROC, `draft` steps | {p['step_auroc_draft']:.3f} |
| `target` majority@16 | {_pct(metrics['target']['maj@16'])} |
| `target` PRM-weighted best-of-16 (votes weighted by last-step score) | {_pct(p['target_best_of_16_weighted'])} ({_pts(p['gain_weighted_over_maj@16'])} over majority) |
| `target` PRM best-of-16 (argmax of last-step score) | {_pct(p['target_best_of_16_argmax'])} |

{_common(metrics, stages)}"""


def write_all(out: Path, metrics: dict, *, stages: Sequence[str]) -> None:
    """Write the three model cards under ``out`` from ``metrics`` (and ``out/recipe_timings.json`` when present)."""
    timings_path = out / "recipe_timings.json"
    if timings_path.exists():
        metrics = {**metrics, "recipe_timings": json.loads(timings_path.read_text())}
    import vllm

    metrics = {**metrics, "vllm_version": vllm.__version__}
    for name in ("draft", "target"):
        (out / name / "README.md").write_text(policy_card(name, metrics, out / name, stages=stages))
    (out / "prm" / "README.md").write_text(prm_card(metrics, out / "prm", stages=stages))

"""Model cards (``README.md``, Hugging Face style) of the v2 family, written from the measured metrics.json.

Every number in a card comes from ``metrics`` (the evaluate stage's), ``training.json`` of the model
directory (the training stages') or the recipe's stage timings: nothing is typed in by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tasks import countdown
from training.v2 import formats, sampling

RECIPE_CMD = "python -m training.v2.recipe"
EVAL_CMD = "python -m training.v2.recipe --stages evaluate"
PROFILE = "models/v2/profile.toml"
# The project carries no licence file: "other" until one is chosen, rather than a guessed one.
LICENSE = "other"
TAGS = ["countdown", "synthetic", "test-time-scaling", "test-fixture"]
ROLES = {
    "target": ("text-generation", "Qwen2ForCausalLM", "the policy (the `policy` role)"),
    "draft": ("text-generation", "Qwen2ForCausalLM", "the draft policy (the `draft` role: ATTS and speculative strategies)"),
    "prm": ("token-classification", "Qwen2ForProcessRewardModel", "the process reward model (the `prm` role)"),
}


def _num(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, list):
        return ", ".join(_num(x, kind) for x in v)
    if isinstance(v, str):
        return v
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "pts":
        return f"{100 * v:+.1f} pts"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "ratio":
        return f"{v:.3f} (1/{1 / v:.1f})" if v > 0 else f"{v:.3f}"
    return f"{v:.3f}"


# How each goal's value reads (ids of training.v2.measure.GOALS).
GOAL_KIND = {
    "target_pass@1": "pct",
    "draft_gap": "pts",
    "draft_flops": "ratio",
    "draft_decode_time": "ratio",
    "majority_gain": "pts",
    "pass_k_gain": "pts",
    "length_cv": "num",
    "length_incorrect": "x",
    "first_finish": "pct",
    "prm_auroc": "num",
    "prm_best_of_n": "pts",
    "refine_vs_majority": "pts",
    "refine_vs_pass1": "pts",
    "difficulty": "pct",
}


def goals_table(metrics: dict, key: str = "goals") -> str:
    """The ``goals`` rows of metrics.json (or its ``checks``, the measures earlier issues set targets for)."""
    rows = ["| measure | goal | measured | met |", "|---|---|---|---|"]
    for g in metrics.get(key, []):
        rows.append(f"| {g['name']} | {g['goal']} | {_num(g['value'], GOAL_KIND.get(g.get('id', ''), 'num'))} | {'yes' if g['met'] else '**no**'} |")
    s = metrics.get("settings", {})
    k, drafts = s.get("samples", 16), s.get("refine_drafts", 8)
    if (k, drafts) != (16, 8) and key == "goals":
        # The goals are stated for 16 samples and 8 drafts; a smaller run is a smoke check, not those numbers.
        rows.append(f"\nMeasured with {k} samples per problem and {drafts} drafts: the @16 rows are @{k}, the @8 row @{drafts}.")
    return "\n".join(rows)


def levels_table(metrics: dict) -> str:
    levels = metrics.get("levels", {})
    if not levels:
        return "(no per-level numbers)"
    k = metrics.get("settings", {}).get("samples", 16)
    cols = [
        ("problems", "problems", "int"),
        ("target pass@1", "target_pass@1", "pct"),
        (f"target majority@{k}", f"target_majority@{k}", "pct"),
        (f"target pass@{k}", f"target_pass@{k}", "pct"),
        ("draft pass@1", "draft_pass@1", "pct"),
        (f"PRM-weighted best-of-{k}", "prm_weighted_best_of_k", "pct"),
        ("refine", "refine", "pct"),
        ("target mean tokens", "target_mean_tokens", "int"),
        ("length CV (median)", "target_median_length_cv", "num"),
    ]
    rows = ["| level | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for lv, row in sorted(levels.items(), key=lambda kv: int(kv[0])):
        cells = [f"{row.get(key):.0f}" if kind == "int" and row.get(key) is not None else _num(row.get(key), kind) for _, key, kind in cols]
        rows.append(f"| {lv} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def failures_table(metrics: dict) -> str:
    """Why wrong samples are wrong, per policy: the share of all samples by ``countdown.failure``."""
    kinds = [k for k in countdown.FAILURES if any(k in metrics.get(n, {}).get("failures", {}) for n in ("target", "draft"))]
    if not kinds:
        return "(no failure breakdown in metrics.json: rerun the evaluate stage)"
    rows = ["| first untrue step of a wrong sample | target | draft |", "|---|---|---|"]
    for k in kinds:
        rows.append(f"| {k} | " + " | ".join(_num(metrics.get(n, {}).get("failures", {}).get(k, 0.0), "pct") for n in ("target", "draft")) + " |")
    return "\n".join(rows)


def timings_table(timings: dict) -> str:
    """Wall and CPU minutes per recipe stage and in all. The CPU minutes are the stage's own processes' (the
    machine's other users excluded): on two cores, a stage using both can show up to twice its wall time."""
    if not timings:
        return "(no recipe timings recorded)"
    rows = ["| stage | wall minutes | CPU minutes | device | size | precision |", "|---|---|---|---|---|---|"]
    wall = cpu = 0.0
    for stage, t in timings.items():
        if isinstance(t, dict) and "seconds" in t:
            wall += t["seconds"]
            cpu += t.get("cpu_seconds") or 0.0
            cpu_cell = f"{t['cpu_seconds'] / 60:.1f}" if t.get("cpu_seconds") is not None else "n/a"
            rows.append(f"| {stage} | {t['seconds'] / 60:.1f} | {cpu_cell} | {t.get('device', '')} | {t.get('size', '')} | {t.get('precision', '')} |")
    rows.append(f"| all | {wall / 60:.1f} | {cpu / 60:.1f} | | | |")
    return "\n".join(rows)


def _training(model_dir: Path) -> dict:
    path = model_dir / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _shape(tr: dict, name: str) -> str:
    if not tr:
        return "(no training.json)"
    lines = []
    if "params" in tr:
        lines.append(f"- Parameters: {tr['params']:,} ({tr.get('non_embedding_params', 0):,} outside the embedding)")
    if "flops_per_token" in tr:
        how = "2 x non-embedding parameters + 2 x hidden x vocab, the tied LM head" if name != "prm" else "as training.json counts them"
        lines.append(f"- FLOPs per token: {tr['flops_per_token']:,.0f} ({how})")
    if tr.get("shape"):
        lines.append(f"- Shape: `{json.dumps(tr['shape'], sort_keys=True)}`")
    trained = [f"{k} {tr[k]}" for k in ("size", "device", "precision", "steps") if k in tr]
    if "seconds" in tr:
        trained.append(f"{tr['seconds'] / 60:.1f} min")
    if trained:
        lines.append(f"- Trained: {', '.join(trained)}")
    if tr.get("loss"):
        lines.append(f"- Loss: `{json.dumps(tr['loss'], sort_keys=True)}`")
    return "\n".join(lines)


def _front_matter(name: str) -> str:
    pipeline, arch, _ = ROLES[name]
    tags = "\n".join(f"- {t}" for t in [*TAGS, "qwen2", arch])
    return f"---\nlicense: {LICENSE}\nlibrary_name: transformers\npipeline_tag: {pipeline}\ntags:\n{tags}\n---\n"


def _format_section(name: str) -> str:
    system = formats.SYSTEM
    if name == "prm":
        return f"""## Format
Qwen2.5-Math-PRM's layout: a ChatML chat with the system prompt `{system}`, the question as the user's
turn and the solution as the assistant's, every step (a paragraph of the reasoning, the `<think>` tags
dropped, and the answer paragraph) followed by the separator token `<extra_0>`. At each separator the model
gives two class probabilities; class 1 means the step is good (its arithmetic and `left:` list are right and
the numbers held can still reach the target, the exact labels of `tasks.countdown.check_steps`), and the
step's score is P(class 1). vLLM serves it with `runner = "pooling"` and `step_tag = "<extra_0>"`;
`AutoModel.from_pretrained(dir, trust_remote_code=True)` loads it in transformers (`modeling_prm.py`)."""
    return f"""## Format
ChatML (`<|im_start|>role ... <|im_end|>`, eos `<|im_end|>`, pad `<|endoftext|>`, no BOS) with the system
prompt `{system}` (send it as the system message: the model was trained under it) and the question as the
user's turn, e.g. `Using the numbers 8 4 3 1, each at most once, and + - * /, make 100.` The answer thinks in
`<think> ... </think>`, one step per paragraph (steps separated by a blank line): moves
`8 * 3 = 24, left: 24 4 1` and backtracks `35 1 cannot reach 100, back to: 8 4 3 1`, then answers
`The answer is \\boxed{{(8 * 3 + 1) * 4}}.` A refine call's user message is `tasks.countdown.refine_prompt`
(the question and the deepest route each earlier draft reached, with its answer)."""


def _serving(name: str) -> str:
    return f"""## Serving
With the service (a workers file, `TTS_WORKERS_FILE`, and the family's model profile `{PROFILE}` as
`TTS_PROFILE`; answers are keyed by expression, steps by blank lines, `max_tokens` {sampling.MAX_TOKENS}):

```toml
[roles.policy]
model = "models/v2/target"
dtype = "float32"
max_model_len = 1024

[roles.draft]
model = "models/v2/draft"
dtype = "float32"
max_model_len = 1024

[roles.prm]
model = "models/v2/prm"
runner = "pooling"
step_tag = "<extra_0>"
dtype = "float32"
max_model_len = 1024
```

This card is for {ROLES[name][2]}."""


def _levels(settings: dict) -> str:
    levels = settings.get("levels") or sorted(countdown.LEVEL_SPECS)
    return f"{levels[0]}-{levels[-1]}" if len(levels) > 1 else str(levels[0])


def _settings_line(metrics: dict) -> str:
    s = metrics.get("settings", {})
    if not s:
        return ""
    return (
        f"Measured with vLLM {s.get('vllm_version', '')} (float32) on the test split of `tasks.countdown`: "
        f"{s.get('problems')} problems ({s.get('problems_per_level')} per level {_levels(s)}), {s.get('samples')} samples each at "
        f"temperature {s.get('temperature')}, top_p {s.get('top_p', 1.0)}, at most {s.get('max_tokens')} new tokens, seed "
        f"{s.get('seed')}. Refinement: {s.get('refine_drafts')} drafts (the first samples of each problem), the refine prompt "
        f"sampled {s.get('refine_samples')} times. Decode time (on {s.get('timing', {}).get('device', 'cpu')}): {s.get('timing', {}).get('batch')} greedy sequences together, "
        f"EOS ignored, the time of {s.get('timing', {}).get('tokens')} more tokens per sequence."
    )


def _measures(metrics: dict) -> str:
    prm = metrics.get("prm", {})
    k = metrics.get("settings", {}).get("samples", 16)
    agg = prm.get("headline_aggregate", "min")
    return f"""How the numbers are computed: pass@1 is the mean correctness of all samples (`tasks.countdown.check_answer`);
majority@{k} votes over the boxed expression up to reordering of `+` and `*` (`tasks.countdown.canonical_answer`;
unanswered samples do not vote, a tie goes to the answer seen first); pass@{k}: any sample correct. Length
spread: the median over problems of the coefficient of variation of the samples' token counts; the
first-finish saving is 1 - (tokens if every sample stops when the problem's shortest answered sample ends) /
(tokens of all samples), summed over problems. PRM AUROC: the PRM's scores of correct steps (those before a
sample's first wrong step) against first wrong steps, both policies' samples, problems having both kinds.
PRM-weighted best-of-{k}: the vote with each sample weighted by its {agg} step score ({prm.get('headline_rule', '')});
min: {_num(prm.get('aggregates', {}).get('min', {}).get('target'), 'pct')}, last: {_num(prm.get('aggregates', {}).get('last', {}).get('target'), 'pct')}."""


def card(name: str, metrics: dict, timings: dict, model_dir: Path) -> str:
    """The README.md of model ``name`` (target, draft or prm)."""
    what = {
        "target": "This is the policy. It solves Countdown problems by a depth-first search written out step by step, dead ends and backtracks included, so its sample lengths vary and sampling several pays off.",
        "draft": "This is the draft, a much smaller policy of the same tokenizer and format, far cheaper per token and weaker, for draft-then-target strategies.",
        "prm": "This is the process reward model. It scores every step of a solution, for best-of-n, beam search and the other PRM-guided strategies.",
    }[name]
    return f"""{_front_matter(name)}
# v2 `{name}`

A test vehicle, not a product model. {what} Trained by `{RECIPE_CMD}` on the synthetic
Countdown task (`tasks/countdown.py`: make a target from a few numbers with + - * /), it exists so that the
test-time scaling service's strategies can be tested and benchmarked on models whose accuracy, length
spread and step errors behave like a real reasoning model's, in minutes on a CPU. It knows nothing else.

{_format_section(name)}

## Model
`{ROLES[name][1]}`, float32; one byte-level BPE tokenizer (single-digit tokens) shared by `target`, `draft` and `prm`.
{_shape(_training(model_dir), name)}

## Goals (test split)
{goals_table(metrics)}

Also measured, against the targets earlier issues set (not goals of this family):

{goals_table(metrics, "checks")}

{_measures(metrics)}

## By level
{levels_table(metrics)}

## Why samples are wrong
Shares of all samples (test split), by the first step of each wrong one that the checker finds untrue; "no
answer" means every step was true but nothing was boxed (out of tokens), "wrong answer" a boxed answer after
true steps.

{failures_table(metrics)}

{_settings_line(metrics)}

## Recipe
{timings_table(timings)}

Reproduce the numbers (reads the trained models under `models/v2/`, writes `models/v2/metrics.json` and the cards):

```
{EVAL_CMD}
```

Retrain everything: `{RECIPE_CMD} --size full --device cuda` (one GPU) or `{RECIPE_CMD} --size smoke` (CPU, minutes).

{_serving(name)}
"""


def write_all(out: Path, metrics: dict, timings: dict) -> None:
    """Write ``<out>/{{target,draft,prm}}/README.md`` from ``metrics`` and the recipe's ``timings``."""
    out = Path(out)
    for name in ROLES:
        (out / name / "README.md").write_text(card(name, metrics, timings, out / name))

"""Training for the v2 family: two Qwen2 policies from scratch, the target's refine round, and the PRM.

Every stage is resumable: it checkpoints (weights, optimizer, scheduler, torch RNG, step, and the position
in its example stream) under ``<out>/checkpoints/<stage>/`` and a rerun carries on from there. Example
streams are indexed (example ``k`` is a pure function of the seed and ``k``), so the position is just the
number of examples consumed and a resumed run sees the same rows a straight run would have.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tokenizers import Tokenizer

from tasks import countdown
from training import countdown_traces
from training.common import TrainConfig, lm_loss, loss_summary, lr_schedule, make_optimizer, optimizer_step, row_batches
from training.fixture import STEP_TAG
from training.v2 import formats, synthetic

log = logging.getLogger(__name__)

ASSISTANT_OPEN = "<|im_start|>assistant\n"
EOS = "<|im_end|>"
PAD = "<|endoftext|>"
MAX_POSITIONS = 1024  # the family's context (training.fixture.MAX_LEN): prompt + sampling.MAX_TOKENS fit it
DRAFT_FLOPS_RATIO = 8  # the draft costs at most 1/8 of the target per token
POLICY_PROBLEMS_SEED = 0


def _shape(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict:
    assert hidden == heads * 32, "vLLM's CPU attention needs head_dim 32"
    return {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads, "intermediate": intermediate}


# Per size, the parameters of every stage. `smoke` runs the whole recipe on two CPU cores in CI (its models
# learn little). `full` is sized for one GPU, not yet run on one: its shapes were checked on CPU (random
# weights in vLLM, batch 16: draft 0.29x the target's decode time per token, 1/37 of its FLOPs per token);
# its step counts are estimates (the target sees ~4x the tokens v1's target needed for ~50% pass@1).
SIZES: dict[str, dict] = {
    "smoke": {
        "vocab": 512,
        "data_workers": 0,  # examples made in the training process: CI's two cores are busy enough
        "levels": (1, 2, 3),
        "problems": 200,  # the train problems both policies (and refine-tune's solve examples) learn from
        "tokenizer": {"problems": 300, "seed": 11},
        "target": {
            "shape": _shape(128, 2, 4, 1, 256),
            "steps": 120, "batch": 4, "seq_len": 512, "lr": 3e-3, "warmup": 10,
            "seed": 0, "checkpoint_every": 40,
        },
        "draft": {
            "shape": _shape(32, 1, 1, 1, 64),
            "steps": 60, "batch": 4, "seq_len": 512, "lr": 3e-3, "warmup": 5,
            "seed": 1, "checkpoint_every": 20,
        },
        "refine-data": {"problems": 12, "drafts": 8, "max_tokens": 128, "seed": 2},
        "refine-tune": {
            "steps": 16, "batch": 4, "seq_len": 512, "lr": 1e-3, "warmup": 2,
            "solve_fraction": 0.3, "seed": 3, "checkpoint_every": 4,
        },
        "prm-data": {"problems": 12, "samples": 2, "max_tokens": 128, "seed": 4, "synthetic_problems": 60, "solver_per_problem": 1},
        "prm": {
            "shape": _shape(128, 2, 4, 1, 256), "init": "target",
            "steps": 60, "batch": 4, "seq_len": 512, "lr": 1e-3, "warmup": 5, "seed": 5, "checkpoint_every": 20,
        },
        "evaluate": {"problems_per_level": 2, "samples": 4, "refine_drafts": 4, "max_tokens": 128},
    },
    "full": {
        "vocab": 512,
        "data_workers": None,  # every core but the training process's
        "levels": tuple(countdown.LEVEL_SPECS),
        "problems": 20000,
        "tokenizer": {"problems": 1500, "seed": 11},
        "target": {
            "shape": _shape(256, 6, 8, 2, 768),
            "steps": 3000, "batch": 32, "seq_len": 1024, "lr": 2e-3, "warmup": 100,
            "seed": 0, "checkpoint_every": 250,
        },
        "draft": {
            "shape": _shape(64, 2, 2, 1, 192),
            "steps": 2000, "batch": 32, "seq_len": 1024, "lr": 3e-3, "warmup": 50,
            "seed": 1, "checkpoint_every": 250,
        },
        "refine-data": {"problems": 1500, "drafts": 8, "max_tokens": None, "seed": 2},
        "refine-tune": {
            "steps": 300, "batch": 32, "seq_len": 1024, "lr": 4e-4, "warmup": 20,
            "solve_fraction": 0.3, "seed": 3, "checkpoint_every": 100,
        },
        "prm-data": {"problems": 800, "samples": 4, "max_tokens": None, "seed": 4, "synthetic_problems": 3000, "solver_per_problem": 1},
        "prm": {
            "shape": _shape(256, 6, 8, 2, 768), "init": "target",
            "steps": 1500, "batch": 32, "seq_len": 1024, "lr": 5e-4, "warmup": 50, "seed": 5, "checkpoint_every": 250,
        },
        "evaluate": {"problems_per_level": 40, "samples": 16, "refine_drafts": 8},
    },
    # A CPU iteration size between the two: every level, real (small) shapes, a target that trains in about
    # half an hour on two cores, to see on CPU whether the task's phenomena appear before a GPU run.
    "small": {
        "vocab": 512,
        "levels": tuple(countdown.LEVEL_SPECS),
        "problems": 6000,
        "tokenizer": {"problems": 600, "seed": 11},
        "target": {
            "shape": _shape(128, 4, 4, 1, 384),
            "steps": 1500, "batch": 16, "seq_len": 1024, "lr": 3e-3, "warmup": 50,
            "seed": 0, "checkpoint_every": 100,
        },
        "draft": {
            "shape": _shape(64, 2, 2, 1, 96),
            "steps": 600, "batch": 16, "seq_len": 1024, "lr": 3e-3, "warmup": 30,
            "seed": 1, "checkpoint_every": 100,
        },
        "refine-data": {"problems": 200, "drafts": 8, "max_tokens": None, "seed": 2},
        "refine-tune": {
            "steps": 100, "batch": 16, "seq_len": 1024, "lr": 1e-3, "warmup": 10,
            "solve_fraction": 0.3, "seed": 3, "checkpoint_every": 50,
        },
        "prm-data": {"problems": 150, "samples": 4, "max_tokens": None, "seed": 4, "synthetic_problems": 1000, "solver_per_problem": 1},
        "prm": {
            "shape": _shape(128, 4, 4, 1, 384), "init": "target",
            "steps": 500, "batch": 16, "seq_len": 1024, "lr": 1e-3, "warmup": 20, "seed": 5, "checkpoint_every": 100,
        },
        "evaluate": {"problems_per_level": 20, "samples": 16, "refine_drafts": 8},
    },
}


def _size_from(base: dict, **changes: object) -> dict:
    """A copy of the size ``base`` with ``changes``: a stage's dict of settings is updated, not replaced."""
    size = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        size[key] = {**size[key], **value} if isinstance(value, dict) and isinstance(size.get(key), dict) else value
    return size


# Issue 40's size: the whole recipe on this project's 2-core CPU in at most 150 minutes of wall time. The small
# size with run B's target (docs/bundled-models.md, the dev-split frontier: pass@1 still rising at 1250 steps)
# trained longer, and the evaluation on the issue's >= 200 test problems x 16 samples.
SIZES["cpu"] = _size_from(
    SIZES["small"],
    problems=3000,
    data_workers=1,
    target={"steps": 2500, "warmup": 30, "checkpoint_every": 250},
    evaluate={"problems_per_level": 67},
)


# --------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(out: Path) -> Tokenizer:
    return Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))


def special_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in (PAD, EOS, STEP_TAG, "<|im_start|>")}


def encode_chat(tok: Tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Ids of a rendered chat and a 0/1 mask that is 1 on the assistant's last turn and its ``<|im_end|>``.

    Prompt and reply are encoded apart, the prompt exactly as vLLM encodes a generation prompt, so no BPE
    merge crosses the point where sampling starts; the newline after ``<|im_end|>`` is never generated and
    is dropped."""
    cut = text.rindex(ASSISTANT_OPEN) + len(ASSISTANT_OPEN)
    end = text.index(EOS, cut) + len(EOS)
    prompt, reply = tok.encode(text[:cut]).ids, tok.encode(text[cut:end]).ids
    return prompt + reply, [0] * len(prompt) + [1] * len(reply)


# ------------------------------------------------------------------------------------------------ shapes


def qwen2_config(shape: dict, tok: Tokenizer, **extra):
    """The family's Qwen2Config (ids as training.fixture._qwen2_config sets them: no BOS, so bos = pad)."""
    from transformers import Qwen2Config

    ids = special_ids(tok)
    return Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        bos_token_id=ids[PAD],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        dtype="float32",
        **({"tie_word_embeddings": True} | extra),
    )


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside the token embedding); a tied LM head is counted once."""
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n)
    return total, total - embed


def flops_per_token(config) -> int:
    """Forward FLOPs per token: 2 x non-embedding parameters + 2 x hidden x vocab for the LM head."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    _, non_embedding = param_counts(model)
    return 2 * non_embedding + 2 * config.hidden_size * config.vocab_size


def check_draft_ratio(size: str, tok: Tokenizer) -> tuple[int, int]:
    """The target's and the draft's FLOPs per token; raises when the draft costs more than 1/8."""
    s = SIZES[size]
    target, draft = flops_per_token(qwen2_config(s["target"]["shape"], tok)), flops_per_token(qwen2_config(s["draft"]["shape"], tok))
    if draft * DRAFT_FLOPS_RATIO > target:
        raise ValueError(f"{size}: draft {draft} FLOPs/token is more than 1/{DRAFT_FLOPS_RATIO} of the target's {target}")
    return target, draft


# -------------------------------------------------------------------------------------------------- data


# Problems are drawn in chunks of their own seeds, in parallel: the exact search behind every draw costs
# ~15 ms, so 20000 problems are minutes on one core.
PROBLEM_CHUNK = 500


def _generate_chunk(args: tuple[int, int, tuple[int, ...]]) -> list[countdown.Problem]:
    n, seed, levels = args
    return countdown.generate("train", n, seed=seed, levels=levels)


def generate_problems(n: int, seed: int, levels: tuple[int, ...]) -> list[countdown.Problem]:
    jobs = [(min(PROBLEM_CHUNK, n - start), seed * 100_000 + start // PROBLEM_CHUNK, levels) for start in range(0, n, PROBLEM_CHUNK)]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_generate_chunk, jobs))
    else:
        chunks = [_generate_chunk(j) for j in jobs]
    seen: set[str] = set()
    out = []
    for p in (p for chunk in chunks for p in chunk):
        if p.question not in seen:  # chunks are drawn apart, so a few repeats are dropped
            seen.add(p.question)
            out.append(p)
    return out


@lru_cache(maxsize=16)
def train_problems_cached(path: Path, n: int, seed: int, levels: tuple[int, ...]) -> tuple[countdown.Problem, ...]:
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return tuple(countdown.Problem(tuple(r["numbers"]), r["target"], r["level"]) for r in rows)
    problems = generate_problems(n, seed, levels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"numbers": list(p.numbers), "target": p.target, "level": p.level}) + "\n" for p in problems))
    tmp.replace(path)
    return tuple(problems)


def train_problems(out: Path, n: int, *, seed: int, levels: Sequence[int]) -> list[countdown.Problem]:
    """About ``n`` distinct train-split problems (repeats across chunks dropped), deterministic in ``seed``;
    cached under ``<out>/data/`` since several stages need the same ones."""
    levels = tuple(levels)
    path = out / "data" / f"problems-train-{n}-{seed}-{''.join(map(str, levels))}.jsonl"
    return list(train_problems_cached(path, n, seed, levels))


_MAKER: Callable[[int], tuple[list[int], list[int]] | None] | None = None


def _call_maker(k: int):
    return _MAKER(k)  # type: ignore[misc]


def _indexed(
    make: Callable[[int], tuple[list[int], list[int]] | None], start: int, width: int, *, workers: int = 0
) -> Iterator[tuple[list[int], list[int]]]:
    """``make(k)`` for k = start, start + 1, ...; examples that would not fit a row are skipped (their
    index is still consumed, so positions stay comparable between runs).

    With ``workers`` > 1 the examples are made in forked worker processes, in blocks, the next block while
    the current one is consumed: a solver trace and its encoding take ~2.5 ms, so one core feeds a GPU
    at about a fifth of the rate the full-size target trains at. The order, and so training, is the same."""

    def fit(ex):
        return ex if ex is not None and len(ex[0]) <= width else ([], [])

    if workers <= 1:
        k = start
        while True:
            yield fit(make(k))
            k += 1
    global _MAKER
    _MAKER = make  # fork hands the closure to the workers; it need not pickle
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import multiprocessing

    block = 64 * workers
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending = pool.map_async(_call_maker, range(start, start + block), chunksize=16)
        k = start + block
        while True:
            current = pending.get()
            pending = pool.map_async(_call_maker, range(k, k + block), chunksize=16)
            k += block
            for ex in current:
                yield fit(ex)


def data_workers(size: str) -> int:
    """Processes that make training examples: ``SIZES[size]["data_workers"]``, or all cores but one."""
    n = SIZES[size].get("data_workers")
    return max(0, (os.cpu_count() or 1) - 1) if n is None else n


def _epoch_order(n: int, seed: int, k: int) -> int:
    """Index into ``n`` items of example ``k``: a fresh seeded shuffle every pass."""
    epoch, i = divmod(k, n)
    return _permutation(n, seed, epoch)[i]


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"order:{seed}:{epoch}").shuffle(order)
    return tuple(order)


def solve_text(problem: countdown.Problem, rng: random.Random) -> str:
    return formats.chat_example(problem, countdown_traces.solve_trace(problem, rng))


def policy_example_fn(tok: Tokenizer, problems: Sequence[countdown.Problem], seed: int) -> Callable[[int], tuple[list[int], list[int]]]:
    def make(k: int) -> tuple[list[int], list[int]]:
        problem = problems[_epoch_order(len(problems), seed, k)]
        return encode_chat(tok, solve_text(problem, random.Random(f"policy:{seed}:{k}")))

    return make


# --------------------------------------------------------------------------------------------- refining


def _state(values) -> tuple[int, ...]:
    return tuple(sorted(values, reverse=True))


def expression_moves(problem: countdown.Problem, expr: countdown.Expr) -> list[countdown.Move] | None:
    """The moves that compute ``expr`` innermost first, from the problem's numbers (None when a move
    breaks the rule or uses a number not held)."""
    moves: list[countdown.Move] = []
    held = list(problem.numbers)

    def walk(e) -> int | None:
        if isinstance(e, int):
            return e
        u, v = walk(e[1]), walk(e[2])
        if u is None or v is None:
            return None
        a, b = (u, v) if u >= v or e[0] in "-/" else (v, u)
        c = countdown.combine(a, e[0], b)
        if c is None or a not in held:
            return None
        held.remove(a)
        if b not in held:
            return None
        held.remove(b)
        held.append(c)
        moves.append(countdown.Move(a, e[0], b, c, _state(held)))
        return c

    return moves if walk(expr) is not None else None


def _substitute(expr, values: dict[int, list]) -> object:
    if isinstance(expr, int):
        return values[expr].pop() if values.get(expr) else expr
    return (expr[0], _substitute(expr[1], values), _substitute(expr[2], values))


def _route_exprs(problem: countdown.Problem, route: Sequence[countdown.Move]) -> dict[int, list]:
    """For the numbers held after ``route``: the expression over the given numbers behind each value."""
    exprs: list[tuple[int, object]] = [(v, v) for v in problem.numbers]
    for m in route:
        ea = exprs.pop(next(i for i, (v, _) in enumerate(exprs) if v == m.a))
        eb = exprs.pop(next(i for i, (v, _) in enumerate(exprs) if v == m.b))
        exprs.append((m.result, (m.op, ea[1], eb[1])))
    out: dict[int, list] = {}
    for v, e in exprs:
        out.setdefault(v, []).append(e)
    return out


def _valid(problem: countdown.Problem, trace: str) -> bool:
    """A correct answer after steps that are all true (dead ends the solver explored are allowed, as in
    every solver trace)."""
    return countdown.check_answer(problem, trace).correct and all(v.valid for v in countdown.check_steps(problem, trace))


def refine_trace(problem: countdown.Problem, drafts: Sequence[str], rng: random.Random) -> str:
    """What a refine call should answer over ``drafts``, reusing what they got right: a correct draft
    answer is replayed move by move and boxed as written; otherwise the deepest route a draft found that
    can still reach the target is replayed and the solver carries on from its end; with neither, the
    solver starts afresh. Every returned trace is valid by the checker (see _valid)."""
    progress = [countdown.read_progress(problem, d) for d in drafts]
    for _, answer in sorted(progress, key=lambda ra: ra[1] or ""):
        if answer is None or not countdown.check_answer(problem, countdown.ANSWER_TEMPLATE.format(expr=answer)).correct:
            continue
        try:
            moves = expression_moves(problem, countdown.parse_expression(answer.partition("=")[0]))
        except ValueError:
            continue
        if moves:
            steps = [m.render() for m in moves]
            trace = f"{countdown.THINK_OPEN}\n{countdown.STEP_DELIMITER.join(steps)}\n{countdown.THINK_CLOSE}\n\n{countdown.ANSWER_TEMPLATE.format(expr=answer)}"
            if _valid(problem, trace):
                return trace
    routes = sorted({r for r, _ in progress if r and countdown.reachable(r[-1].after, problem.target)}, key=lambda r: (-len(r), countdown.render_route(r)))
    for route in routes[:1]:
        state = route[-1].after
        if problem.target in state:
            sub_steps, expr = [], _route_exprs(problem, route)[problem.target][0]
        else:
            sub = countdown.Problem(state, problem.target, problem.level)
            sub_trace = countdown_traces.solve_trace(sub, rng)
            sub_steps = countdown.steps_of(sub_trace)[0]
            sub_expr = countdown.parse_expression(countdown.extract_answer(sub_trace))
            expr = _substitute(sub_expr, _route_exprs(problem, route))
        steps = [m.render() for m in route] + list(sub_steps)
        trace = (
            f"{countdown.THINK_OPEN}\n{countdown.STEP_DELIMITER.join(steps)}\n{countdown.THINK_CLOSE}\n\n"
            f"{countdown.ANSWER_TEMPLATE.format(expr=countdown.render_expr(expr))}"
        )
        if _valid(problem, trace):
            return trace
    return countdown_traces.solve_trace(problem, rng)


def refine_text(problem: countdown.Problem, drafts: Sequence[str], trace: str) -> str:
    return formats.render_chat(
        [
            {"role": "system", "content": formats.SYSTEM},
            {"role": "user", "content": countdown.refine_prompt(problem, drafts)},
            {"role": "assistant", "content": trace},
        ]
    )


def load_refine_rows(out: Path) -> list[tuple[countdown.Problem, list[str]]]:
    rows = []
    for line in (out / "data" / "refine.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            p = countdown.parse_question(r["question"])
            rows.append((countdown.Problem(p.numbers, p.target, r.get("level", p.level)), list(r["drafts"])))
    if not rows:
        raise ValueError(f"{out / 'data' / 'refine.jsonl'} holds no rows; run the refine-data stage")
    return rows


def refine_example_fn(
    tok: Tokenizer, rows: Sequence[tuple[countdown.Problem, Sequence[str]]], solve: Sequence[countdown.Problem], seed: int, solve_fraction: float
) -> Callable[[int], tuple[list[int], list[int]]]:
    """Example ``k`` of the refine round: with probability ``solve_fraction`` a plain solve example (so the
    target keeps solving from scratch), else a refine call over a random subset (>= half) of a row's drafts."""

    def make(k: int) -> tuple[list[int], list[int]]:
        rng = random.Random(f"refine:{seed}:{k}")
        if rng.random() < solve_fraction:
            return encode_chat(tok, solve_text(solve[_epoch_order(len(solve), seed, k)], rng))
        problem, drafts = rows[_epoch_order(len(rows), seed + 1, k)]
        subset = rng.sample(list(drafts), rng.randint(max(1, (len(drafts) + 1) // 2), len(drafts)))
        return encode_chat(tok, refine_text(problem, subset, refine_trace(problem, subset, rng)))

    return make


# -------------------------------------------------------------------------------------------------- PRM


def load_prm_rows(out: Path) -> list[dict]:
    path = out / "data" / "prm.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no rows; run the prm-data stage")
    return rows


def prm_encode(tok: Tokenizer, problem: countdown.Problem, text: str) -> tuple[list[int], list[int]] | None:
    """Ids of the PRM example of ``text`` and, at each ``<extra_0>``, 1 + its label (2: good, 1: bad; 0
    elsewhere), the mask layout :func:`training.common.row_batches` packs. None when ``text`` has no steps."""
    try:
        ex = formats.prm_example(problem, text)
    except ValueError:
        return None
    ids = tok.encode(ex.text).ids
    tag = tok.token_to_id(STEP_TAG)
    positions = [i for i, t in enumerate(ids) if t == tag]
    if len(positions) != len(ex.labels):
        return None
    mask = [0] * len(ids)
    for pos, good in zip(positions, ex.labels):
        mask[pos] = 1 + int(good)
    return ids, mask


def prm_example_fn(tok: Tokenizer, rows: Sequence[dict], seed: int) -> Callable[[int], tuple[list[int], list[int]] | None]:
    cache: dict[int, tuple[list[int], list[int]] | None] = {}

    def make(k: int):
        i = _epoch_order(len(rows), seed, k)
        if i not in cache:
            r = rows[i]
            p = countdown.parse_question(r["question"])
            cache[i] = prm_encode(tok, countdown.Problem(p.numbers, p.target, r.get("level", p.level)), r["text"])
        return cache[i]

    return make


def prm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, m = batch
    # Rows are right-padded and attention is causal, so no mask is needed: padding follows everything scored.
    logits = model(input_ids=x).logits
    tagged = m > 0
    return torch.nn.functional.cross_entropy(logits[tagged].float(), m[tagged] - 1)


def synthetic_rows(problems: Sequence[countdown.Problem], seed: int, *, solver_per_problem: int = 1) -> list[dict]:
    """prm.jsonl rows that need no sampling: solver traces (every step true, dead ends labelled bad) and one planted error of every
    kind of :mod:`training.v2.synthetic` per problem."""
    rows = []
    for i, p in enumerate(problems):
        rng = random.Random(f"synthetic:{seed}:{i}")
        for _ in range(solver_per_problem):
            rows.append({"question": p.question, "level": p.level, "text": countdown_traces.solve_trace(p, rng), "source": "solver"})
        for kind in synthetic.KINDS:
            text = synthetic.negative(p, kind, rng)
            if text is not None:
                rows.append({"question": p.question, "level": p.level, "text": text, "source": f"synthetic-{kind}"})
    return rows


# ------------------------------------------------------------------------------------------- training loop


PRECISIONS = ("auto", "bf16", "fp32")


def precision(device: str) -> str:
    """The matmul precision training runs at on ``device``: ``TRAIN_PRECISION`` (auto, bf16 or fp32).

    auto is bf16 on a GPU and on a CPU with native bf16 (AMX or AVX512-BF16, where oneDNN runs the
    matmuls 1.4-2.2x faster than float32, training.bench.v2_train_precision), else fp32: bf16 emulated in software
    is slower than float32. Either way weights and optimizer state stay float32."""
    wanted = os.environ.get("TRAIN_PRECISION", "auto").strip().lower() or "auto"
    if wanted not in PRECISIONS:
        raise ValueError(f"TRAIN_PRECISION={wanted!r}; expected one of {', '.join(PRECISIONS)}")
    if wanted != "auto":
        return wanted
    if device.startswith("cuda"):
        return "bf16"
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return "bf16" if device == "cpu" and native else "fp32"


def _autocast(device: str):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision(device) == "bf16")


@dataclass
class Run:
    """What a stage's training loop returns."""

    model: torch.nn.Module
    losses: list[float]
    seconds: float
    steps: int
    resumed_from: int


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-write leaves the previous checkpoint intact


def checkpoint_path(out: Path, stage: str) -> Path:
    return out / "checkpoints" / stage / "state.pt"


def stage_done(out: Path, stage: str) -> bool:
    path = checkpoint_path(out, stage)
    return path.exists() and bool(torch.load(path, map_location="cpu", weights_only=False).get("done"))


def fit(
    model: torch.nn.Module,
    make_example: Callable[[int], tuple[list[int], list[int]] | None],
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    cfg: TrainConfig,
    ckpt: Path,
    *,
    checkpoint_every: int,
    desc: str,
    stop_after: int | None = None,
    workers: int = 0,
) -> Run:
    """Train ``model`` for ``cfg.steps`` steps on packed rows of ``make_example(k)``, resuming from and
    saving to ``ckpt``. ``stop_after`` ends the run early after that many steps in total (as a crash
    would, after the checkpoint of that step): what the resume test uses. ``workers``: see _indexed."""
    model.to(cfg.device)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s, cfg))
    step, position, losses, seconds = 0, 0, [], 0.0
    torch.manual_seed(cfg.seed)
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, position, losses, seconds = state["step"], state["position"], state["losses"], state["seconds"]
        torch.set_rng_state(state["rng"])
        log.info("%s: resuming at step %d of %d", desc, step, cfg.steps)
    resumed_from = step
    consumed = 0

    def counted() -> Iterator[tuple[list[int], list[int]]]:
        nonlocal consumed
        for ex in _indexed(make_example, position, cfg.seq_len + 1, workers=workers):
            consumed += 1
            if ex[0]:
                yield ex

    # row_batches has taken the example that overflowed the last row when it yields a batch; that example
    # opens the next batch, so the resume position is one before everything taken.
    batches = row_batches(counted(), cfg.batch, cfg.seq_len)
    base = position
    model.train()
    t_start, last_log = time.time(), time.time()
    while step < cfg.steps and (stop_after is None or step < stop_after):
        x, m = next(batches)
        with _autocast(cfg.device):
            loss = loss_fn(model, (x.to(cfg.device), m.to(cfg.device)))
        losses.append(optimizer_step(model, opt, sched, loss))
        step += 1
        position = base + consumed - 1
        done = step == cfg.steps
        if done or step % checkpoint_every == 0 or step == stop_after:
            _save_state(
                ckpt,
                {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step,
                    "position": position,
                    "losses": losses,
                    "seconds": seconds + time.time() - t_start,
                    "done": done,
                },
            )
        if time.time() - last_log > 30 or done:
            last_log = time.time()
            tail = losses[-20:]
            print(f"  {desc}: step {step}/{cfg.steps} loss {sum(tail) / len(tail):.4f}", flush=True)
    batches.close()  # stops the example workers now, not whenever the generator is collected
    return Run(model, losses, seconds + time.time() - t_start, step, resumed_from)


def train_config(params: dict, device: str) -> TrainConfig:
    return TrainConfig(
        steps=params["steps"], batch=params["batch"], seq_len=params["seq_len"], lr=params["lr"], warmup=params["warmup"], seed=params["seed"], device=device
    )


def _fresh(out: Path, stage: str) -> None:
    shutil.rmtree(checkpoint_path(out, stage).parent, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ saving


def _copy_tokenizer(out: Path, model_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(out / "tokenizer" / name, model_dir / name)


def _training_info(model: torch.nn.Module, config, params: dict, run: Run, size: str, device: str, **extra) -> dict:
    total, non_embedding = param_counts(model)
    return {
        "size": size,
        "device": device,
        "steps": run.steps,
        "params": total,
        "non_embedding_params": non_embedding,
        "flops_per_token": 2 * non_embedding + 2 * config.hidden_size * config.vocab_size,
        "shape": dict(params["shape"]) if "shape" in params else None,
        "loss": loss_summary(run.losses),
        "seconds": round(run.seconds, 1),
        "train_tokens": run.steps * params["batch"] * params["seq_len"],
        "precision": precision(device),
        "config": {k: v for k, v in params.items() if k != "shape"},
        **extra,
    }


# Weights are stored in float16 (models compute in float32: config.json's dtype): the committed family stays a few
# MB, and float16's 10-bit mantissa rounds these small models' weights about 8x finer than bfloat16's 7 bits.
STORED_DTYPE = torch.float16


def _store_half(model_dir: Path) -> None:
    """Rewrite ``model.safetensors`` in STORED_DTYPE; vLLM and transformers cast it to config.json's dtype."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = {k: v.to(STORED_DTYPE) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def save_policy(model, out: Path, model_dir: Path, info: dict) -> None:
    """A directory vLLM and transformers load: float16 safetensors (float32 in config.json), generation config,
    tokenizer, training.json."""
    from transformers import GenerationConfig

    from training.v2 import sampling

    model = model.cpu().float().eval()
    cfg = model.config
    # do_sample must accompany temperature, or transformers refuses to save a model loaded from here.
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=sampling.TEMPERATURE,
        top_p=1.0,
        max_new_tokens=sampling.MAX_TOKENS,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    _store_half(model_dir)
    _copy_tokenizer(out, model_dir)
    (model_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def save_prm(model, out: Path, model_dir: Path, info: dict) -> None:
    """vLLM's Qwen2ForProcessRewardModel layout (``model.*``, ``score.0.*``, ``score.2.*``, num_labels 2),
    with ``modeling_prm.py`` and ``auto_map`` for transformers' remote-code loading."""
    model = model.cpu().float().eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    _store_half(model_dir)
    shutil.copy2(Path(__file__).with_name("modeling_prm.py"), model_dir / "modeling_prm.py")
    config_path = model_dir / "config.json"
    raw = json.loads(config_path.read_text())
    raw["architectures"] = ["Qwen2ForProcessRewardModel"]
    raw["num_labels"] = 2
    raw["auto_map"] = {
        "AutoModel": "modeling_prm.Qwen2ForProcessRewardModel",
        "AutoModelForTokenClassification": "modeling_prm.Qwen2ForProcessRewardModel",
    }
    config_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    _copy_tokenizer(out, model_dir)
    (model_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ stages


def train_policy(out: Path, name: str, size: str, device: str = "cpu", *, fresh: bool = False, stop_after: int | None = None) -> dict:
    """Stage ``target`` or ``draft``: a Qwen2ForCausalLM from scratch on solver traces of train problems."""
    from transformers import Qwen2ForCausalLM

    s = SIZES[size]
    params = s[name]
    if fresh:
        _fresh(out, name)
    model_dir = out / name
    if stage_done(out, name) and (model_dir / "training.json").exists():
        return {"skipped": True, **json.loads((model_dir / "training.json").read_text())}
    tok = load_tokenizer(out)
    target_flops, draft_flops = check_draft_ratio(size, tok)
    config = qwen2_config(params["shape"], tok)
    torch.manual_seed(params["seed"])
    model = Qwen2ForCausalLM(config)
    problems = train_problems(out, s["problems"], seed=POLICY_PROBLEMS_SEED, levels=s["levels"])
    cfg = train_config(params, device)
    run = fit(
        model, policy_example_fn(tok, problems, params["seed"]), lm_loss, cfg, checkpoint_path(out, name),
        checkpoint_every=params["checkpoint_every"], desc=name, stop_after=stop_after, workers=data_workers(size),
    )
    info = _training_info(run.model, config, params, run, size, device, problems=len(problems), levels=list(s["levels"]),
                          flops_ratio_target_to_draft=round(target_flops / draft_flops, 2))
    if run.steps == cfg.steps:
        save_policy(run.model, out, model_dir, info)
    return info


def refine_tune(out: Path, size: str, device: str = "cpu", *, fresh: bool = False, stop_after: int | None = None) -> dict:
    """Stage ``refine-tune``: continue the target on refine calls over its own drafts (refine-data) mixed
    with plain solve examples, and save it in place. It starts from the target stage's final checkpoint
    when there is one, so redoing this stage never refines an already refined target."""
    from transformers import Qwen2ForCausalLM

    s = SIZES[size]
    params = s["refine-tune"]
    if fresh:
        _fresh(out, "refine-tune")
    model_dir = out / "target"
    info = json.loads((model_dir / "training.json").read_text())
    if stage_done(out, "refine-tune") and "refine_tune" in info:
        return {"skipped": True, **info["refine_tune"]}
    tok = load_tokenizer(out)
    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = checkpoint_path(out, "target")
    state = torch.load(base, map_location="cpu", weights_only=False) if base.exists() else {}
    if "model" in state:  # the target stage's own weights: model_dir holds refine-tune's once it has run
        model.load_state_dict(state["model"])
    elif "refine_tune" in info:
        # A packed output (training.v2.device) keeps the saved models only, so the weights refine-tune started
        # from are gone: training again would tune the tuned model.
        raise ValueError(f"{model_dir} is already refine-tuned and the target stage's weights are not under {out}/checkpoints: rerun the target stage first")
    rows = load_refine_rows(out)
    solve = train_problems(out, s["problems"], seed=POLICY_PROBLEMS_SEED, levels=s["levels"])
    cfg = train_config(params, device)
    run = fit(
        model, refine_example_fn(tok, rows, solve, params["seed"], params["solve_fraction"]), lm_loss, cfg,
        checkpoint_path(out, "refine-tune"), checkpoint_every=params["checkpoint_every"], desc="refine-tune", stop_after=stop_after, workers=data_workers(size),
    )
    info = {k: v for k, v in info.items() if k != "refine_tune"}
    info["refine_tune"] = {
        "device": device,
        "steps": run.steps,
        "loss": loss_summary(run.losses),
        "seconds": round(run.seconds, 1),
        "problems": len(rows),
        "drafts_per_problem": max(len(d) for _, d in rows),
        "precision": precision(device),
        "train_tokens": run.steps * params["batch"] * params["seq_len"],
        "config": dict(params),
    }
    if run.steps == cfg.steps:
        save_policy(run.model, out, model_dir, info)
    return info["refine_tune"]


def train_prm(out: Path, size: str, device: str = "cpu", *, fresh: bool = False, stop_after: int | None = None) -> dict:
    """Stage ``prm``: a Qwen2 body + score head on the labelled steps of prm.jsonl, the body copied from
    the target's when the shapes match (``init: target``), else from scratch."""
    from transformers import Qwen2ForCausalLM

    from training.v2.modeling_prm import Qwen2ForProcessRewardModel

    s = SIZES[size]
    params = s["prm"]
    if fresh:
        _fresh(out, "prm")
    model_dir = out / "prm"
    if stage_done(out, "prm") and (model_dir / "training.json").exists():
        return {"skipped": True, **json.loads((model_dir / "training.json").read_text())}
    tok = load_tokenizer(out)
    config = qwen2_config(params["shape"], tok, num_labels=2, tie_word_embeddings=False)
    torch.manual_seed(params["seed"])
    model = Qwen2ForProcessRewardModel(config)
    init = "scratch"
    if params.get("init") == "target" and params["shape"] == s["target"]["shape"]:
        policy = Qwen2ForCausalLM.from_pretrained(out / "target", dtype=torch.float32)
        model.model.load_state_dict(policy.model.state_dict())
        init = "target"
    rows = load_prm_rows(out)
    cfg = train_config(params, device)
    run = fit(
        model, prm_example_fn(tok, rows, params["seed"]), prm_loss, cfg, checkpoint_path(out, "prm"),
        checkpoint_every=params["checkpoint_every"], desc="prm", stop_after=stop_after, workers=data_workers(size),
    )
    sources: dict[str, int] = {}
    for r in rows:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    info = _training_info(run.model, config, params, run, size, device, initialised_from=init, train_examples=len(rows), sources=sources)
    info["flops_per_token"] = 2 * info["non_embedding_params"]  # no LM head: the score head is in non-embedding
    if run.steps == cfg.steps:
        save_prm(run.model, out, model_dir, info)
    return info


def set_threads() -> None:
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", os.cpu_count() or 1)))

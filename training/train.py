"""Training loops for the bundled models (CPU, fixed seeds, torch + transformers' Llama).

Policies learn only the solution tokens of whole (prompt, solution) examples packed into rows; the PRM learns
the ``+``/``-`` prediction at each step tag (Math-Shepherd style: the logits *at* the tag position are read),
plus, as an auxiliary loss, the tokens of the steps that are on track.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from tasks import arithmetic as task
from training import data, tokenizer as tok_mod
from training.common import TrainConfig, lm_loss, loss_summary, lr_schedule, make_optimizer, optimizer_step, row_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


SHAPES: dict[str, Shape] = {
    "draft": Shape(hidden=128, layers=4, heads=4, intermediate=384),
    "target": Shape(hidden=256, layers=4, heads=8, intermediate=768),
}


def llama_config(shape: Shape, vocab_size: int) -> LlamaConfig:
    eos = 1
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=tok_mod.MODEL_MAX_LENGTH,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=0,
        torch_dtype="float32",
    )


def encode(tok: Tokenizer, example: data.Example) -> tuple[list[int], list[int]]:
    """Token ids of prompt + target + EOS and a 0/1 mask of the positions the model learns."""
    ids = tok.encode(example.prompt).ids
    mask = [0] * len(ids)
    for seg in example.target:
        seg_ids = tok.encode(seg.text).ids
        ids += seg_ids
        mask += [int(seg.learn)] * len(seg_ids)
    ids.append(1)
    mask.append(1)
    return ids, mask


def _fit(
    model: LlamaForCausalLM,
    batches: Iterator[tuple[torch.Tensor, ...]],
    loss_fn: Callable[[LlamaForCausalLM, tuple[torch.Tensor, ...]], torch.Tensor],
    cfg: TrainConfig,
    desc: str,
    *,
    step_seconds: list[float] | None = None,
) -> list[float]:
    """Train for ``cfg.steps`` steps; returns the loss of each. ``step_seconds``, when given, receives the
    wall time of each step (what :func:`seconds_per_step` measures)."""
    model.to(cfg.device)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s, cfg))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=desc, mininterval=30, disable=False)
    for _ in bar:
        t0 = time.perf_counter()
        loss = loss_fn(model, tuple(t.to(cfg.device, non_blocking=True) for t in next(batches)))
        losses.append(optimizer_step(model, opt, sched, loss))
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
    return losses


def policy_examples(
    seed: int, *, refine_fraction: float, backtrack_rate: float = 0.1
) -> Iterator[data.Example]:
    """An endless, seeded stream of train-split examples, cycling through all difficulty levels."""
    rng = random.Random(f"policy:{seed}")
    chunk = 0
    while True:
        for problem in task.generate("train", 5000, seed=seed * 1000 + chunk):
            if rng.random() < refine_fraction:
                yield data.refine_example(problem, rng, backtrack_rate=backtrack_rate)
            else:
                yield data.solve_example(problem, rng, backtrack_rate=backtrack_rate)
        chunk += 1


# What a training stage runs: the model it starts from, its batches and its loss. Building it is all a
# stage does before the common loop, so the CPU timing of a stage (seconds_per_step) builds the same one.
Setup = tuple[LlamaForCausalLM, Iterator[tuple[torch.Tensor, ...]], Callable[[LlamaForCausalLM, tuple[torch.Tensor, ...]], torch.Tensor]]


def policy_setup(name: str, cfg: TrainConfig, *, refine_fraction: float) -> Setup:
    """Policy ``name`` (a key of SHAPES), freshly initialised, on packed rows of train-split examples."""
    torch.manual_seed(cfg.seed)
    tok = tok_mod.build()
    model = LlamaForCausalLM(llama_config(SHAPES[name], tok.get_vocab_size()))
    stream = (encode(tok, ex) for ex in policy_examples(cfg.seed, refine_fraction=refine_fraction))
    return model, row_batches(stream, cfg.batch, cfg.seq_len), lm_loss


def train_policy(name: str, out_dir: Path, cfg: TrainConfig, *, refine_fraction: float) -> dict:
    """Train policy ``name`` (a key of SHAPES) from scratch and save it as a Hugging Face directory."""
    model, batches, loss_fn = policy_setup(name, cfg, refine_fraction=refine_fraction)
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.time()
    losses = _fit(model, batches, loss_fn, cfg, f"train {name}")
    info = {
        "params": n_params,
        "train_seconds": round(time.time() - t0, 1),
        **loss_summary(losses),
        "train_tokens": cfg.steps * cfg.batch * cfg.seq_len,
        "refine_fraction": refine_fraction,
        "config": asdict(cfg),
    }
    save_model(model.cpu(), out_dir, info)
    return info


def own_draft_examples(
    rows: Sequence[tuple[task.Problem, Sequence[str]]], seed: int, *, solve_fraction: float, min_drafts: int = 4
) -> Iterator[data.Example]:
    """An endless, seeded stream of refine examples whose workspaces come from a policy's own sampled drafts
    (``rows``: a problem and its drafts; a random subset of at least ``min_drafts`` of them per example),
    mixed with plain solve examples so the policy keeps solving from scratch."""
    rng = random.Random(f"own-drafts:{seed}")
    solve = policy_examples(seed + 1, refine_fraction=0.0)
    while True:
        for i in rng.sample(range(len(rows)), len(rows)):
            if rng.random() < solve_fraction:
                yield next(solve)
            problem, drafts = rows[i]
            subset = rng.sample(list(drafts), rng.randint(min(min_drafts, len(drafts)), len(drafts)))
            yield data.Example(task.refine_prompt(problem, subset), tuple(data.training_trace(problem, rng, backtrack_rate=0.1)))


def refine_setup(model_dir: Path, rows: Sequence[tuple[task.Problem, Sequence[str]]], cfg: TrainConfig, *, solve_fraction: float) -> Setup:
    """The policy in ``model_dir`` on packed rows of refine examples from its own drafts (see own_draft_examples)."""
    torch.manual_seed(cfg.seed)
    tok = tok_mod.build()
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    stream = (encode(tok, ex) for ex in own_draft_examples(rows, cfg.seed, solve_fraction=solve_fraction))
    return model, row_batches(stream, cfg.batch, cfg.seq_len), lm_loss


def refine_tune(model_dir: Path, rows: Sequence[tuple[task.Problem, Sequence[str]]], cfg: TrainConfig, *, solve_fraction: float) -> dict:
    """Continue training the policy in ``model_dir`` on refine examples built from its own drafts, in place.

    Simulated drafts slip in ways the policy does not, and with them the target learned to ignore the
    workspace; its own drafts hold its own mistakes, which is what a refine round has to see past."""
    model, batches, loss_fn = refine_setup(model_dir, rows, cfg, solve_fraction=solve_fraction)
    t0 = time.time()
    losses = _fit(model, batches, loss_fn, cfg, "refine-tune")
    info = json.loads((model_dir / "training.json").read_text())
    info["refine_tune"] = {
        "train_seconds": round(time.time() - t0, 1),
        **loss_summary(losses),
        "problems": len(rows),
        "drafts_per_problem": max(len(d) for _, d in rows),
        "solve_fraction": solve_fraction,
        "train_tokens": cfg.steps * cfg.batch * cfg.seq_len,
        "config": asdict(cfg),
    }
    save_model(model.cpu(), model_dir, info)
    return info["refine_tune"]


# -------------------------------------------------------------------------------------------------- PRM


def prm_text(question: str, steps: Sequence[str], *, tag: str = " " + tok_mod.STEP_TAG) -> str:
    """The PRM's input: the task prompt, then every step followed by the step tag, one per line.

    The score of step i is read from the next-token distribution at its tag (P(+) among {+, -}); the
    newline after each tag means the tag is never the last prompt token, so prompt log-probabilities of
    the following token expose that distribution."""
    return task.prompt_for(question) + "".join(f"{s}{tag}\n" for s in steps)


def prm_example(
    tok: Tokenizer, question: str, steps: Sequence[str], labels: Sequence[bool]
) -> tuple[list[int], list[int], list[int]]:
    """Ids of :func:`prm_text`; at each tag position the id of the label token (-100 elsewhere); and a 0/1
    mask over the tokens of on-track steps, which the auxiliary language-model loss learns."""
    if len(steps) != len(labels):
        raise ValueError(f"{len(steps)} steps for {len(labels)} labels")
    ids = tok.encode(prm_text(question, steps)).ids
    tag_id = tok.token_to_id(tok_mod.STEP_TAG)
    good, bad = tok.token_to_id(tok_mod.PRM_GOOD), tok.token_to_id(tok_mod.PRM_BAD)
    positions = [i for i, t in enumerate(ids) if t == tag_id]
    if len(positions) != len(labels):
        raise ValueError(f"{len(positions)} tags for {len(labels)} labels")
    space, newline = len(tok.encode(" ").ids), len(tok.encode("\n").ids)
    target = [-100] * len(ids)
    lm = [0] * len(ids)
    start = len(tok.encode(task.prompt_for(question)).ids)  # where the first step's tokens begin
    for pos, ok in zip(positions, labels):
        target[pos] = good if ok else bad
        if ok:
            lm[start : pos - space] = [1] * (pos - space - start)
        start = pos + 1 + newline
    return ids, target, lm


def _prm_batches(
    examples: list[tuple[list[int], list[int], list[int]]], batch: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch + 1, batch):
            chunk = [examples[i] for i in order[start : start + batch]]
            width = max(len(ids) for ids, _, _ in chunk)
            x = torch.zeros(batch, width, dtype=torch.long)
            y = torch.full((batch, width), -100, dtype=torch.long)
            m = torch.zeros(batch, width, dtype=torch.long)
            for row, (ids, target, lm) in enumerate(chunk):
                x[row, : len(ids)] = torch.tensor(ids)
                y[row, : len(target)] = torch.tensor(target)
                m[row, : len(lm)] = torch.tensor(lm)
            yield x, y, m


def _prm_loss(model: LlamaForCausalLM, batch: tuple[torch.Tensor, ...], *, lm_weight: float = 0.0) -> torch.Tensor:
    """Label cross-entropy at the tags, plus ``lm_weight`` times next-token loss on on-track steps' tokens.

    The auxiliary term is there to keep the policy's arithmetic in the weights while the labels are learned;
    in the sweep of PRM recipes it raised the dev-split step AUROC after 3000 steps from 0.849 to 0.856 (after
    1500 steps both stood at 0.848)."""
    x, y, m = batch
    logits = model(input_ids=x, attention_mask=(x != 0).long()).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)
    learn = m[:, 1:].bool()
    if lm_weight and learn.any():
        loss = loss + lm_weight * torch.nn.functional.cross_entropy(logits[:, :-1][learn], x[:, 1:][learn])
    return loss


def prm_setup(init_dir: Path, examples: list[tuple[list[int], list[int], list[int]]], cfg: TrainConfig, *, lm_weight: float = 0.0) -> Setup:
    """A copy of the policy in ``init_dir`` on shuffled batches of labelled step examples."""
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM.from_pretrained(init_dir, torch_dtype=torch.float32)
    return model, _prm_batches(examples, cfg.batch, cfg.seed), partial(_prm_loss, lm_weight=lm_weight)


def train_prm(
    init_dir: Path,
    out_dir: Path,
    examples: list[tuple[list[int], list[int], list[int]]],
    cfg: TrainConfig,
    *,
    lm_weight: float = 0.0,
    sources: dict[str, int] | None = None,
) -> dict:
    """Fine-tune a copy of the policy in ``init_dir`` into a PRM on labelled step examples (``sources``: how
    many came from where, recorded for the model card; ``lm_weight``: see :func:`_prm_loss`)."""
    model, batches, loss_fn = prm_setup(init_dir, examples, cfg, lm_weight=lm_weight)
    t0 = time.time()
    losses = _fit(model, batches, loss_fn, cfg, "train prm")
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - t0, 1),
        "final_loss": loss_summary(losses)["final_loss"],
        "train_examples": len(examples),
        "sources": sources or {},
        "lm_weight": lm_weight,
        "initialised_from": init_dir.name,
        "config": asdict(cfg),
    }
    save_model(model.cpu(), out_dir, info)
    return info


def seconds_per_step(setup: Setup, cfg: TrainConfig, *, steps: int = 8) -> float:
    """Median wall time of a step of the training stage ``setup`` builds, run by the training loop itself
    for ``steps`` steps after one warm-up step (the weights are thrown away)."""
    model, batches, loss_fn = setup
    times: list[float] = []
    _fit(model, batches, loss_fn, replace(cfg, steps=steps + 1), "time step", step_seconds=times)
    return sorted(times[1:])[steps // 2]


def save_model(model: LlamaForCausalLM, out_dir: Path, info: dict) -> None:
    """Write a directory vLLM loads: config, safetensors weights, tokenizer, generation config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    # do_sample must accompany temperature, or transformers refuses to save a model loaded from here.
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.8, top_p=1.0, max_new_tokens=256, eos_token_id=1, pad_token_id=0
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok_mod.save(out_dir)
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def set_threads() -> None:
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", os.cpu_count() or 1)))

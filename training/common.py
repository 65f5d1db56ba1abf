"""What the v1 and v2 recipes share to train: the run's configuration, packing whole examples into rows, the
optimizer and its schedule, one update step, the policies' loss, and the loss summary training.json keeps.

Both recipes' training loops are built from these (``training.train`` for v1, ``training.v2.train`` for v2),
so a change here changes how both families train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch: int = 32
    seq_len: int = 256
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"


def row_batches(
    examples: Iterator[tuple[list[int], list[int]]], batch: int, seq_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fill ``batch`` x ``seq_len`` blocks with whole examples, padding each row's tail (masked out).

    No example is ever cut across rows: a refine example whose workspace landed in one row and its
    solution in the next taught the model to solve without seeing the workspace (the first recipe packed
    a plain stream and its refine round lost 24 points to pass@1). Several short examples share a row; a
    later one sees the earlier ones, which is harmless because every example starts with a self-contained
    question."""
    width = seq_len + 1
    rows: list[tuple[list[int], list[int]]] = []
    row_ids: list[int] = []
    row_mask: list[int] = []
    for ids, mask in examples:
        if len(ids) > width:
            raise ValueError(f"an example of {len(ids)} tokens does not fit a row of {width}; raise seq_len")
        if len(row_ids) + len(ids) > width:
            pad = width - len(row_ids)
            rows.append((row_ids + [0] * pad, row_mask + [0] * pad))
            row_ids, row_mask = [], []
            if len(rows) == batch:
                yield torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
                rows = []
        row_ids = row_ids + ids
        row_mask = row_mask + mask


def lr_schedule(step: int, cfg: TrainConfig) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``cfg.warmup`` steps, then a cosine down to 0.1."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with ``cfg.weight_decay`` on the matrices only (biases, norms: none)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched, loss: torch.Tensor) -> float:
    """One update from ``loss`` (gradients clipped to norm 1, as every recipe here trains); its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A causal LM's cross-entropy on the positions the mask marks (``batch``: ids and mask, as row_batches yields)."""
    x, m = batch
    logits = model(input_ids=x[:, :-1]).logits
    target = x[:, 1:]
    learn = m[:, 1:].bool()
    return torch.nn.functional.cross_entropy(logits[learn], target[learn])


def loss_summary(losses: Sequence[float]) -> dict:
    """What training.json keeps of a loss curve: the mean of the last 50 steps and the mean of every 50."""
    return {
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "loss_every_50_steps": [round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4) for i in range(0, len(losses), 50)],
    }

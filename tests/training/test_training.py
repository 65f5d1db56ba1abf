"""Every training stage of the recipe runs end to end at toy size: it trains, lowers its loss, saves a
directory transformers loads back, and the CPU timing runs the same stage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from tasks import arithmetic as task
from training import tokenizer as tok_mod, train

TOY = train.TrainConfig(steps=12, batch=2, seq_len=512, lr=3e-3, warmup=2)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "draft"
    info = train.train_policy("draft", out, TOY, refine_fraction=0.25)
    return out, info


def test_policy_stage_trains_and_saves_a_loadable_model(draft_dir):
    out, info = draft_dir
    assert info["train_tokens"] == TOY.steps * TOY.batch * TOY.seq_len
    # Below a uniform guess over the vocabulary: the loop does learn.
    assert 0 < info["final_loss"] < math.log(tok_mod.build().get_vocab_size())
    model = LlamaForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == tok_mod.EOS


def test_refine_tune_continues_the_policy_in_place(draft_dir):
    out, _ = draft_dir
    problem = task.generate("train", 1, seed=5, levels=[2])[0]
    before = {k: v.clone() for k, v in LlamaForCausalLM.from_pretrained(out).state_dict().items()}
    info = train.refine_tune(out, [(problem, [problem.solution()] * 4)], TOY, solve_fraction=0.3)
    after = LlamaForCausalLM.from_pretrained(out).state_dict()
    assert info["problems"] == 1 and any(not torch.equal(before[k], after[k]) for k in before)
    assert "refine_tune" in json.loads((out / "training.json").read_text())


def test_prm_stage_trains_from_the_policy_and_saves(draft_dir, tmp_path):
    out, _ = draft_dir
    tok = tok_mod.build()
    problems = task.generate("train", 8, seed=7, levels=[2])
    examples = []
    for p in problems:
        steps = task.split_steps(p.solution())
        examples.append(train.prm_example(tok, p.question, steps, [v.on_track for v in task.check_steps(p, p.solution())]))
    info = train.train_prm(out, tmp_path / "prm", examples, TOY, lm_weight=1.0, sources={"toy": len(examples)})
    assert info["train_examples"] == len(examples) and info["sources"] == {"toy": len(examples)}
    assert LlamaForCausalLM.from_pretrained(tmp_path / "prm").config.vocab_size == tok.get_vocab_size()


def test_seconds_per_step_times_the_stage_as_it_trains():
    cfg = train.TrainConfig(steps=1000, batch=1, seq_len=512)
    setup = train.policy_setup("draft", cfg, refine_fraction=0.25)
    assert 0 < train.seconds_per_step(setup, cfg, steps=2) < 30

"""The v2 evaluate stage: its metrics on scripted samples, the cards it writes, the family's profile, and one
small evaluate on the random fixture family with real vLLM engines."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from orchestrator.profile import load_profile
from tasks import countdown
from training import countdown_traces
from training.v2 import cards, formats, measure, sampling

REPO = Path(__file__).resolve().parents[3]


def g(tokens: int, correct: bool, key: str | None = None, answered: bool | None = None, failure: str | None = None) -> measure.Graded:
    answered = (key is not None) if answered is None else answered
    return measure.Graded(tokens=tokens, answered=answered, correct=correct, key=key, finish="stop", failure=failure)


# ----------------------------------------------------------------------------------------- vote keys


def test_canonical_groups_commutative_and_associative_rewritings_only():
    c = measure.canonical
    assert c("(8 * 3 + 1) * 4") == c("4 * (1 + 3 * 8)") == c("4 \\times (3 \\cdot 8 + 1)")
    assert c("3 + 4 + 5") == c("5 + (4 + 3)")
    assert c("8 - 3") != c("3 - 8") and c("8 / 4") != c("4 / 8")
    assert c("(8 * 3 + 1) * 4 = 100") == c("(8 * 3 + 1) * 4")  # the service's key: the expression only
    assert c(None) is None and c("  ") is None
    assert c("x + 1") == "x+1"  # an answer that does not parse still votes, as its text


def test_vote_skips_unanswered_and_breaks_ties_by_first_seen():
    assert measure.vote([None, "b", "a", "a", "b"]) == 1  # b and a tie at 2: b came first
    assert measure.vote([None, "b", "a", "a"]) == 2
    assert measure.vote([None, None]) is None and measure.vote([]) is None
    assert measure.vote(["a", "b", "b"], weights=[0.9, 0.2, 0.3]) == 0
    assert measure.voted_correct(["a", "b", "b"], [False, True, True])
    assert not measure.voted_correct([None, None], [False, False])


def test_cv_and_first_finish():
    assert measure.cv([5, 5, 5]) == 0.0
    assert measure.cv([1, 3]) == pytest.approx(0.5)
    # The shortest *answered* sample (20 tokens) ends the race; the unanswered 10-token one does not.
    assert measure.first_finish_tokens([10, 20, 30], [False, True, True]) == (10 + 20 + 20, 60)
    assert measure.first_finish_tokens([10, 20], [False, False]) == (30, 30)


def test_first_wrong_auroc_uses_prefix_steps_and_first_errors_of_shared_problems():
    items = [
        ([0.9, 0.8, 0.1, 0.95], [True, True, False, True]),  # the step after the error is left out
        ([0.7], [True]),
        ([0.2, 0.3], [False, False]),  # only its first wrong step counts
        ([0.99, 0.01], [True, False]),
        ([0.5], [True]),  # problem 2 has no wrong step: none of its steps count
    ]
    owners = [0, 0, 0, 1, 2]
    a, pos, neg = measure.first_wrong_auroc(items, owners)
    assert (pos, neg) == (4, 3)  # 0.9 0.8 0.7 0.99 vs 0.1 0.2 0.01
    assert a == 1.0
    a, _, _ = measure.first_wrong_auroc([([0.1, 0.9], [True, False])], [0])
    assert a == 0.0
    assert math.isnan(measure.first_wrong_auroc([([0.5], [True])], [0])[0])


def test_policy_metrics_on_scripted_samples():
    groups = [
        # problem A: 2 of 4 right, both with one expression written two ways; the wrong ones split their vote
        [g(10, True, "k1"), g(30, False, "w1"), g(12, True, "k1"), g(40, False, "w2")],
        # problem B: all wrong, one never answered
        [g(50, False, "w1", failure="arithmetic"), g(60, False, None, failure="no answer"), g(50, False, "w3", failure="arithmetic"), g(40, False, "w1")],
    ]
    m = measure.policy_metrics(groups)
    assert m["failures"] == {"arithmetic": pytest.approx(2 / 8), "no answer": pytest.approx(1 / 8)}  # kinds no sample had are left out
    assert m["pass@1"] == pytest.approx(2 / 8)
    assert m["majority@4"] == pytest.approx(0.5) and m["pass@4"] == pytest.approx(0.5)
    assert m["mean_tokens_correct"] == pytest.approx(11) and m["mean_tokens_incorrect"] == pytest.approx(270 / 6)
    assert m["incorrect_over_correct_tokens"] == pytest.approx(45 / 11)
    # ratio of sums: A stops at 10 (4 x 10 of 92), B at 40 (4 x 40 of 200)
    assert m["first_finish_saving"] == pytest.approx(1 - (40 + 160) / (92 + 200))
    assert m["first_finish_accuracy"] == pytest.approx(0.5)
    assert m["median_length_cv"] == pytest.approx((measure.cv([10, 30, 12, 40]) + measure.cv([50, 60, 50, 40])) / 2)
    assert m["answered"] == pytest.approx(7 / 8)


def test_flops_per_token_prefers_training_json_and_counts_like_it_from_config(tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    non_embedding = total - 300 * 64
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    assert measure.flops_per_token(tmp_path) == 2 * non_embedding + 2 * 64 * 300
    (tmp_path / "training.json").write_text(json.dumps({"flops_per_token": 1234}))
    assert measure.flops_per_token(tmp_path) == 1234


# --------------------------------------------------------------------------------------- goals, cards


def _scripted_metrics(tmp_path: Path) -> dict:
    """metrics as evaluate assembles them, from scripted samples and PRM scores (2 problems a level)."""
    problems = [countdown.Problem((9, 8, 7), 10 * lv + i, lv) for lv in measure.LEVELS for i in range(2)]
    target, draft, refine, prm_t, prm_d = [], [], [], [], []
    for p in problems:
        right = max(0, 4 - p.level)  # falls with level
        target.append([g(20 + 10 * j, j < right, "k" if j < right else f"w{j}", failure=None if j < right else "arithmetic") for j in range(4)])
        draft.append([g(30, j == 0 and p.level == 1, "k" if j == 0 else None) for j in range(4)])
        refine.append([g(25, p.level < 4, "k"), g(25, p.level < 3, "k")])
        prm_t.append([([0.9, 0.8], (True, True)) if s.correct else ([0.9, 0.2], (True, False)) for s in target[-1]])
        prm_d.append([None] * 4)
    for name, flops in (("target", 800.0), ("draft", 80.0)):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "training.json").write_text(json.dumps({"flops_per_token": flops, "params": 1000, "non_embedding_params": 400, "shape": {"hidden": 64}}))
    (tmp_path / "prm").mkdir(exist_ok=True)
    timing = {"target": {"seconds_per_token": 0.01}, "draft": {"seconds_per_token": 0.002}}
    graded = {"target": target, "draft": draft, "refine": refine}
    meta = {"unscored_samples": 0, "score_count_mismatches": 0, "context": 1024}
    m = measure._assemble(problems, graded, {"target": prm_t, "draft": prm_d}, meta, timing, tmp_path, 4)
    m["settings"] = {"samples": 4, "refine_drafts": 4, "problems": len(problems), "problems_per_level": 2}
    return m


def test_every_goal_row_is_measured(tmp_path):
    m = _scripted_metrics(tmp_path)
    rows = {r["id"]: r for r in m["goals"]}
    assert list(rows) == [gid for gid, *_ in measure.GOALS]
    checks = {r["id"]: r for r in m["checks"]}
    assert list(checks) == [gid for gid, *_ in measure.CHECKS]
    assert all(set(r) >= {"name", "value", "goal", "met"} and isinstance(r["met"], bool) for r in [*rows.values(), *checks.values()])
    h = m["headline"]
    assert h["target_pass@1_by_level"] == pytest.approx([0.75, 0.5, 0.25])
    assert checks["difficulty"]["met"] and rows["draft_flops"]["met"] and checks["draft_decode_time"]["met"]
    assert h["draft_over_target_flops"] == pytest.approx(0.1) and h["draft_over_target_decode_time"] == pytest.approx(0.2)
    # The PRM separates right from wrong perfectly here, so its vote finds every problem with a right sample.
    assert h["prm_auroc"] == 1.0 and m["prm"]["weighted_best_of_k"] == pytest.approx(1.0)
    assert h["refine"] == pytest.approx(10 / 12)  # levels 1-3: 2, 2 and 1 of 2 samples right, per problem
    assert m["refine"]["drafts_majority"] == pytest.approx(1.0)  # level 3's one right draft wins its tie, seen first
    assert rows["target_pass@1"]["met"] is True  # 50%
    assert rows["refine_vs_pass1"]["met"] and not checks["refine_vs_majority"]["met"]


def test_falls_with_level():
    assert measure._falls([0.9, 0.7, 0.7, 0.5, 0.2])
    assert not measure._falls([0.9, 0.7, 0.8, 0.5, 0.2]) and not measure._falls([0.5] * 5)


def test_cards_render_every_section(tmp_path):
    m = measure.json_safe(_scripted_metrics(tmp_path))
    timings = {"tokenizer": {"seconds": 30, "device": "cpu", "size": "smoke"}, "target": {"seconds": 600, "device": "cuda", "size": "full"}}
    cards.write_all(tmp_path, m, timings)
    for name, pipeline in (("target", "text-generation"), ("draft", "text-generation"), ("prm", "token-classification")):
        text = (tmp_path / name / "README.md").read_text()
        front = text.split("---\n")[1]
        assert "library_name: transformers" in front and f"pipeline_tag: {pipeline}" in front and "license:" in front
        assert "not a product model" in text and "Countdown" in text
        for row in m["goals"]:
            assert f"| {row['name']} | {row['goal']} |" in text
        assert "| 3 | 2 |" in text  # the per-level table
        assert "## Why samples are wrong" in text and "| arithmetic | 50.0% | 0.0% |" in text
        for row in m["checks"]:
            assert f"| {row['name']} | {row['goal']} |" in text
        assert "| target | 10.0 | n/a | cuda | full |" in text and "| all | 10.5 |" in text
        assert "python -m training.v2.recipe --stages evaluate" in text and "models/v2/profile.toml" in text
        assert "FLOPs per token: 800" in text or name != "target"
    assert "<extra_0>" in (tmp_path / "prm" / "README.md").read_text()
    assert "\\boxed{(8 * 3 + 1) * 4}" in (tmp_path / "target" / "README.md").read_text()


def test_metrics_json_is_strict():
    assert measure.json_safe({"a": float("nan"), "b": [1.0, float("inf")]}) == {"a": None, "b": [1.0, None]}


# ------------------------------------------------------------------------------------- profile, prompts


def test_the_familys_profile_loads_and_matches_the_family():
    p = load_profile(REPO / "models" / "v2" / "profile.toml")
    assert (p.answer, p.answer_key, p.reasoning, p.step_delimiter) == ("boxed", "expression", "think", "\n\n")
    assert p.max_tokens == sampling.MAX_TOKENS <= p.max_tokens_cap
    assert (p.prm.kind, p.prm.step_tag, p.prm.good_class, p.prm.system) == ("pooling", "<extra_0>", 1, formats.SYSTEM)
    # The profile splits a trace where the task does.
    problem = countdown.Problem((8, 4, 3, 1), 100, 2)
    trace = countdown_traces.solve_trace(problem, random.Random(0))
    reasoning, final = p.split_reasoning(trace)
    assert reasoning.split(p.step_delimiter) == countdown.steps_of(trace)[0] and countdown.extract_answer(trace) in final


def test_prompts_and_seeds():
    problem = countdown.Problem((8, 4, 3, 1), 100, 2)
    prompt = sampling.policy_prompt(problem)
    assert prompt.startswith(f"<|im_start|>system\n{formats.SYSTEM}") and problem.question in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    refine = sampling.refine_prompt_text(problem, ["<think>\n8 * 3 = 24, left: 24 4 1\n</think>"])
    assert countdown.refine_prompt(problem, ["<think>\n8 * 3 = 24, left: 24 4 1\n</think>"]) in refine
    # vLLM seeds the n samples of a request s, s + 1, ...: no two prompts' samples may share one.
    seeds = {sampling._request_seed(s, i) + j for s in (0, 1) for i in range(50) for j in range(16)}
    assert len(seeds) == 2 * 50 * 16


# ------------------------------------------------------------------------------------------- engines


@pytest.mark.engine
def test_the_recipes_evaluate_stage_measured_every_goal(v2_family):
    """The smoke recipe (tests/conftest.py: every stage, evaluate included) wrote metrics.json and the cards."""
    saved = json.loads((v2_family / "metrics.json").read_text())
    assert [r["id"] for r in saved["goals"]] == [gid for gid, *_ in measure.GOALS]
    for name in ("target", "draft"):  # every wrong sample has its cause
        assert saved[name]["pass@1"] + sum(saved[name]["failures"].values()) == pytest.approx(1.0)
    assert saved["settings"]["problems"] == len(measure.LEVELS) * saved["settings"]["problems_per_level"]
    assert saved["headline"]["draft_over_target_flops"] <= 1 / 8
    assert all(saved["timing"][name]["seconds_per_token"] > 0 for name in ("target", "draft"))
    assert saved["prm"]["score_count_mismatches"] == 0
    # The samples keep their reasoning tags (text tokens, not special ones vLLM would drop from the text).
    rows = [json.loads(line) for line in (v2_family / "data" / "eval_samples.jsonl").read_text().splitlines()]
    target = [r["text"] for r in rows if r["policy"] == "target"]
    assert sum(t.startswith("<think>\n") for t in target) > len(target) / 2 and any("</think>" in t for t in target)
    for name in ("target", "draft", "prm"):
        card = (v2_family / name / "README.md").read_text()
        assert card.startswith("---\n") and "models/v2/profile.toml" in card

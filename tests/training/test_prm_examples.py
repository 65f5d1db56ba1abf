"""The PRM's training examples: labels sit at the step tags, the auxiliary LM mask covers on-track steps only."""

from __future__ import annotations

import json

import pytest

from tasks import arithmetic as task
from training import measure, tokenizer as tok_mod
from training.train import prm_example, prm_text


def test_prm_text_places_one_tag_per_step():
    assert prm_text("Q.", ["1+1=2", "Answer: 2"]) == "Q.\n1+1=2 ки\nAnswer: 2 ки\n"


def test_labels_sit_at_tags_and_lm_mask_covers_on_track_steps_only():
    tok = tok_mod.build()
    steps = ["3*3=9", "9*2=19", "Answer: 19"]
    ids, target, lm = prm_example(tok, "Start at 3 and apply *3, *2.", steps, [True, False, False])
    assert ids == tok.encode(prm_text("Start at 3 and apply *3, *2.", steps)).ids
    tag = tok.token_to_id(tok_mod.STEP_TAG)
    good, bad = tok.token_to_id(tok_mod.PRM_GOOD), tok.token_to_id(tok_mod.PRM_BAD)
    assert [t for i, t in zip(ids, target) if t != -100] == [good, bad, bad]
    assert all(i == tag for i, t in zip(ids, target) if t != -100)
    # One token per character: the mask is exactly the characters of the first (on-track) step.
    assert tok.decode([i for i, m in zip(ids, lm) if m]) == "3*3=9"


def test_example_rejects_a_label_count_that_does_not_match_the_steps():
    with pytest.raises(ValueError, match="2 steps for 1 labels"):
        prm_example(tok_mod.build(), "Q.", ["1+1=2", "Answer: 2"], [True])


def test_training_examples_include_the_refine_data_drafts(tmp_path):
    problem = task.generate("train", 1, seed=3, levels=[2])[0]
    wrong = problem.solution().replace(f"Answer: {problem.answer}", f"Answer: {problem.answer + 1}")
    (tmp_path / "prm_data.jsonl").write_text(
        json.dumps({"policy": "target", "question": problem.question, "steps": ["1+1=2"], "labels": [False]}) + "\n"
    )
    (tmp_path / "refine_data.jsonl").write_text(json.dumps({"question": problem.question, "drafts": [problem.solution(), wrong, ""]}) + "\n")
    examples, sources = measure.load_prm_examples(tmp_path)
    # The empty draft has no steps to label and is skipped.
    assert sources == {"target": 1, "target (refine-data)": 2}
    tok = tok_mod.build()
    good, bad = tok.token_to_id(tok_mod.PRM_GOOD), tok.token_to_id(tok_mod.PRM_BAD)
    labels = [[t for t in target if t != -100] for _, target, _ in examples[1:]]
    n = len(problem.ops)
    assert labels == [[good] * (n + 1), [good] * n + [bad]]  # only the wrong answer line is off track

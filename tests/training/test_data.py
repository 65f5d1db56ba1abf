"""Training examples of the bundled task: masked slips, and refine examples that fit the training rows."""

import random

from tasks import arithmetic as task
from training import data, tokenizer as tok_mod
from training.train import encode


def test_training_traces_mask_the_slip_only():
    rng = random.Random(0)
    p = task.generate("train", 1, seed=0, levels=[5])[0]
    trace = data.training_trace(p, rng, backtrack_rate=1.0)
    masked = [s for s in trace if not s.learn]
    assert len(masked) == 1
    text = "".join(s.text for s in trace)
    assert task.CORRECTION_PREFIX in text and task.check_answer(p, text).correct


def test_refine_examples_fit_the_training_rows():
    # train.row_batches refuses an example longer than a row; the longest refine example (level 5, eight
    # drafts that disagree everywhere, a correction line) must fit the 512-token context with room to spare.
    tok = tok_mod.build()
    rng = random.Random(1)
    longest = 0
    for p in task.generate("train", 200, seed=3, levels=[5]):
        drafts = [data.simulated_draft(p, rng, slip_rate=0.5) for _ in range(8)]
        ex = data.Example(task.refine_prompt(p, drafts), tuple(data.training_trace(p, rng, backtrack_rate=1.0)))
        longest = max(longest, len(encode(tok, ex)[0]))
    assert longest <= tok_mod.MODEL_MAX_LENGTH - 32, longest

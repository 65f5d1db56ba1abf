"""The v2 family's formats: its tokenizer, the policy's chat examples and the PRM's labelled examples."""

import json
import random

import pytest
from transformers import AutoTokenizer

from tasks import countdown
from training import countdown_traces
from training.fixture import QWEN_SPECIALS, STEP_TAG
from training.v2 import formats

P = countdown.Problem(numbers=(8, 4, 3, 1), target=100, level=2)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    problems = countdown.generate("train", 6, seed=0, levels=[1, 3])
    rng = random.Random(0)
    texts = [formats.chat_example(p, countdown_traces.solve_trace(p, rng)) for p in problems for _ in range(3)]
    out = tmp_path_factory.mktemp("v2tok")
    ids = formats.train_tokenizer(texts, 400, out)
    assert set(ids) == set(QWEN_SPECIALS) and len(set(ids.values())) == len(QWEN_SPECIALS)
    return out


def test_the_task_speaks_the_familys_special_tokens():
    assert {countdown.THINK_OPEN, countdown.THINK_CLOSE, STEP_TAG} <= set(QWEN_SPECIALS)


def test_tokenizer_round_trips_a_trace_with_single_special_ids(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = formats.chat_example(P, countdown_traces.solve_trace(P, random.Random(3)))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for special in QWEN_SPECIALS:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    # Digits are single tokens, so multi-digit numbers are spelled out digit by digit.
    assert tok.tokenize("1008") == ["1", "0", "0", "8"]
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] and config["bos_token"] is None


def test_apply_chat_template_renders_the_system_prompt(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [{"role": "system", "content": formats.SYSTEM}, {"role": "user", "content": P.question}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        f"<|im_start|>system\n{formats.SYSTEM}<|im_end|>\n<|im_start|>user\n{P.question}<|im_end|>\n<|im_start|>assistant\n"
    )
    trace = countdown_traces.optimal_trace(P)
    example = formats.chat_example(P, trace)
    assert example == tok.apply_chat_template(messages + [{"role": "assistant", "content": trace}], tokenize=False)
    assert example.startswith(rendered) and example.endswith(trace + "<|im_end|>\n")


def test_prm_example_tags_every_step_with_its_exact_label():
    trace = (
        "<think>\n8 * 4 = 32, left: 32 3 1\n\n32 3 1 cannot reach 100, back to: 8 4 3 1\n\n"
        "8 * 3 = 24, left: 24 4 1\n\n24 + 1 = 25, left: 25 4\n\n25 * 4 = 100, left: 100\n</think>\n\n"
        "The answer is \\boxed{(8 * 3 + 1) * 4}."
    )
    ex = formats.prm_example(P, trace)
    assert ex.labels == (False, True, True, True, True, True)
    assert ex.steps[0] == "8 * 4 = 32, left: 32 3 1" and ex.steps[-1].startswith("The answer is")
    assistant = ex.text.split("<|im_start|>assistant\n")[1]
    assert assistant == STEP_TAG.join(ex.steps) + STEP_TAG + "<|im_end|>\n"
    assert ex.text.count(STEP_TAG) == len(ex.steps) and "<think>" not in ex.text
    assert ex.text.startswith(f"<|im_start|>system\n{formats.SYSTEM}<|im_end|>\n")
    with pytest.raises(ValueError, match="step tag"):
        formats.prm_example(P, trace.replace("left: 100", f"left: 100{STEP_TAG}"))


def test_train_tokenizer_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        formats.train_tokenizer([], 400, tmp_path)
    with pytest.raises(ValueError, match="no room for merges"):
        formats.train_tokenizer(["abc"], 200, tmp_path)

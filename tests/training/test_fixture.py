"""The real-architecture fixture family (training/fixture.py): built in seconds, loadable by transformers, shaped
like the checkpoints it stands for. No engine: vLLM loads it in tests/workers/test_pooling.py."""

from __future__ import annotations

import json

import pytest

from training import fixture


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("fixture"))


def test_build_is_deterministic(family, tmp_path):
    again = fixture.build(tmp_path)
    for name in ("policy", "draft", "prm"):
        for f in ("tokenizer.json", "model.safetensors"):
            assert (getattr(again, name) / f).read_bytes() == (getattr(family, name) / f).read_bytes(), f"{name}/{f}"


def test_qwen_tokenizer_has_single_id_specials_and_a_chatml_template_with_a_system_prompt(family):
    from transformers import AutoTokenizer

    for path in (family.policy, family.prm):
        tok = AutoTokenizer.from_pretrained(path)
        assert tok.eos_token == "<|im_end|>" and tok.bos_token is None
        for special in fixture.QWEN_SPECIALS:
            assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
        ids = tok("a <think>b</think> c<extra_0>", add_special_tokens=False)["input_ids"]
        assert tok.convert_tokens_to_ids("<extra_0>") == ids[-1]
        text = tok.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
        )
        assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round-trips


def test_the_draft_is_another_family_whose_template_writes_the_bos(family):
    from transformers import AutoTokenizer

    qwen, llama = AutoTokenizer.from_pretrained(family.policy), AutoTokenizer.from_pretrained(family.draft)
    assert qwen.get_vocab() != llama.get_vocab()
    text = llama.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s>")
    # What the fixture exists to show: tokenising the rendered text with special tokens doubles the BOS.
    assert llama(text)["input_ids"][:2] == [llama.bos_token_id] * 2
    assert llama(text, add_special_tokens=False)["input_ids"].count(llama.bos_token_id) == 1


def test_models_load_in_transformers_with_the_architectures_they_claim(family):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Model

    archs = {n: json.loads((getattr(family, n) / "config.json").read_text())["architectures"] for n in ("policy", "draft", "prm")}
    assert archs == {"policy": ["Qwen2ForCausalLM"], "draft": ["LlamaForCausalLM"], "prm": ["Qwen2ForProcessRewardModel"]}
    for name in ("policy", "draft"):
        model = AutoModelForCausalLM.from_pretrained(getattr(family, name))
        assert model.config.hidden_size // model.config.num_attention_heads == 32 and model.dtype == torch.float32
        assert model(torch.tensor([[3, 4, 5]])).logits.shape[-1] == model.config.vocab_size
    prm = Qwen2Model.from_pretrained(family.prm)  # the body; the score head is read in test_pooling
    assert prm.config.num_labels == 2 and prm.config.hidden_size // prm.config.num_attention_heads == 32

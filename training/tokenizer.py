"""The bundled models' tokenizer: one token per byte, plus the PRM step tag as a single token.

Character-level tokens keep every digit its own token, which is what lets models of a few million
parameters do multi-digit arithmetic at all. The files are ordinary Hugging Face ``tokenizers`` JSON, so
vLLM and transformers load them like any other fast tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

PAD = "<pad>"
EOS = "</s>"
STEP_TAG = "ки"  # Math-Shepherd's tag, so its PRMs work with the same scorer settings
PRM_GOOD = "+"
PRM_BAD = "-"
MODEL_MAX_LENGTH = 512

# Renders chat messages as the bare task prompt: contents joined by newlines, then a newline for the
# model to continue from. A single user message therefore renders exactly as ``task.prompt_for``.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def _byte_alphabet() -> list[str]:
    return pre_tokenizers.ByteLevel.alphabet()


def build() -> Tokenizer:
    """Build the tokenizer from scratch (deterministic: ids depend on nothing but this code)."""
    alphabet = sorted(_byte_alphabet())
    vocab = {PAD: 0, EOS: 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, EOS])
    tok.add_tokens([STEP_TAG])
    return tok


def save(directory: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    build().save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": PAD,
        "bos_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

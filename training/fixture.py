"""A "real-architecture" fixture family: tiny random-weight models shaped like the checkpoints operators serve.

The bundled models are character-level Llamas with a bare chat template; real deployments are not. This
family reproduces what differs, so that tests meet the real code paths in seconds and without a model hub:

- ``policy``: a ``Qwen2ForCausalLM`` with a byte-level BPE tokenizer, a ChatML chat template with a system
  prompt, ``<think>`` / ``</think>`` and ``<extra_0>`` as single special tokens, eos ``<|im_end|>``, no BOS
  (Qwen2.5-Math-Instruct, DeepSeek-R1-Distill-Qwen).
- ``draft``: a ``LlamaForCausalLM`` of another family, with its own BPE vocabulary and a BOS ``<s>`` that both
  its tokenizer and its chat template write: a text prompt rendered by the template and tokenised with
  special tokens gets two BOS ids, which is the bug this fixture exists to show.
- ``prm``: a ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM layout: the Qwen2 body under ``model.``, the
  score head ``score.0`` (hidden x hidden), ReLU, ``score.2`` (2 x hidden)), sharing the policy's tokenizer;
  vLLM serves it with its pooling runner, scoring the positions of ``<extra_0>``.

Weights are random from a fixed seed, so the files (and so the scores) are the same on every build.

    python -m training.fixture OUT_DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<extra_0>")
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")
STEP_TAG = "<extra_0>"
PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
MAX_LEN = 1024
SEED = 1234

# ChatML with a system prompt: an explicit one if given, else none (the PRM's caller always gives one).
CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama-2 style: the template writes the BOS itself, as many real ones do.
LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '[SYS] ' + m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Enough text of the kind the models see for BPE to learn a few hundred merges; what it says is irrelevant.
_CORPUS = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Start at 37 and apply +48, *3, -59. Step 1: 37 + 48 = 85. Step 2: 85 * 3 = 255. Step 3: 255 - 59 = 196.",
    "The answer is \\boxed{196}. Let me think about this problem carefully before answering.",
    "First, we compute the sum of the numbers. Then we multiply the result by three and subtract.",
    "Therefore the final answer is \\boxed{42}. We check the result: it is correct.",
    "Solve for x: 2x + 3 = 11. Subtract 3 from both sides: 2x = 8. Divide by 2: x = 4.",
    "A train travels 60 miles per hour for 3 hours, so it covers 180 miles in total.",
    "The probability of rolling a six on a fair die is one in six, about 0.1667.",
]


@dataclass(frozen=True)
class FixturePaths:
    """The family's model directories (each loads in vLLM on CPU, float32, and in transformers)."""

    root: Path
    policy: Path
    draft: Path
    prm: Path


def _corpus() -> list[str]:
    lines = []
    for i in range(40):
        for j, text in enumerate(_CORPUS):
            lines.append(f"{text} ({i * len(_CORPUS) + j})")
    return lines


def _train_bpe(vocab_size: int, specials: tuple[str, ...], corpus: list[str], *, single_digits: bool = False) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # single_digits: every digit its own token, as Qwen2's pre-tokenizer does; models that must do arithmetic
    # learn it far more easily than over merged multi-digit tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if single_digits else byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def _save_tokenizer(tok: object, directory: Path, config: dict[str, object]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))  # type: ignore[attr-defined]
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, "model_max_length": MAX_LEN}
    (directory / "tokenizer_config.json").write_text(json.dumps(base | config, indent=2) + "\n")


# Added tokens that are text, not control: the reasoning tags. Real reasoning models' tokenizers (QwQ, Qwen3,
# DeepSeek-R1-Distill) add them with "special": false, because engines drop special tokens from the text they
# return (vLLM's skip_special_tokens), and a reply without its tags has no reasoning span to split off.
TEXT_TOKENS = ("<think>", "</think>")


def qwen_tokenizer(
    directory: Path, *, vocab_size: int = 512, corpus: list[str] | None = None, single_digits: bool = False, chat_template: str = CHATML_TEMPLATE
) -> dict[str, int]:
    """Train a byte-level BPE with the Qwen specials (the reasoning tags as text tokens) on ``corpus`` and write
    a Qwen-style ``tokenizer.json`` and ``tokenizer_config.json`` under ``directory``; the id of each special.
    The v2 family's tokenizer is one of these, trained on its own corpus."""
    tok = _train_bpe(vocab_size, QWEN_SPECIALS, _corpus() if corpus is None else corpus, single_digits=single_digits)
    _save_tokenizer(
        tok,
        directory,
        {
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": [t for t in QWEN_SPECIALS[1:] if t not in TEXT_TOKENS],
            "chat_template": chat_template,
        },
    )
    # The trainer adds every token it is given as special; the tags keep their ids and stay single tokens.
    path = directory / "tokenizer.json"
    raw = json.loads(path.read_text())
    for added in raw["added_tokens"]:
        if added["content"] in TEXT_TOKENS:
            added["special"] = False
    path.write_text(json.dumps(raw, ensure_ascii=False, indent=2) + "\n")
    return {t: tok.token_to_id(t) for t in QWEN_SPECIALS}  # type: ignore[attr-defined]


def _llama_tokenizer(directory: Path) -> dict[str, int]:
    from tokenizers import processors

    # Another corpus order and size: a different vocabulary, so ids never coincide by accident.
    tok = _train_bpe(384, LLAMA_SPECIALS, list(reversed(_corpus())))
    bos = tok.token_to_id("<s>")  # type: ignore[attr-defined]
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])  # type: ignore[attr-defined]
    _save_tokenizer(
        tok,
        directory,
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "add_bos_token": True,
            "chat_template": LLAMA_TEMPLATE,
        },
    )
    return {t: tok.token_to_id(t) for t in LLAMA_SPECIALS}  # type: ignore[attr-defined]


def _qwen2_config(vocab: int, ids: dict[str, int], **extra: object) -> object:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the CPU attention backend refuses 16
        num_key_value_heads=1,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
        **extra,
    )


def _write_policy(directory: Path, ids: dict[str, int], vocab: int) -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(SEED)
    Qwen2ForCausalLM(_qwen2_config(vocab, ids)).save_pretrained(directory)


def _write_draft(directory: Path, ids: dict[str, int], vocab: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED + 1)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<unk>"],
        dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(directory)


def _write_prm(directory: Path, ids: dict[str, int], vocab: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Model

    torch.manual_seed(SEED + 2)
    config = _qwen2_config(vocab, ids, num_labels=2)
    body = Qwen2Model(config)
    hidden = config.hidden_size
    # Larger than the default init so that the two classes differ visibly at each step tag.
    tensors = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    tensors["score.0.weight"] = torch.randn(hidden, hidden) * 0.3
    tensors["score.0.bias"] = torch.randn(hidden) * 0.1
    tensors["score.2.weight"] = torch.randn(2, hidden) * 0.5
    tensors["score.2.bias"] = torch.zeros(2)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    raw = config.to_dict()
    raw["architectures"] = ["Qwen2ForProcessRewardModel"]
    (directory / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def build(out_dir: Path) -> FixturePaths:
    """Write the family under ``out_dir`` (``policy/``, ``draft/``, ``prm/``) and return their paths."""
    out_dir = Path(out_dir)
    paths = FixturePaths(root=out_dir, policy=out_dir / "policy", draft=out_dir / "draft", prm=out_dir / "prm")
    qwen_ids = qwen_tokenizer(paths.policy)
    qwen_tokenizer(paths.prm)  # deterministic: the same vocabulary as the policy's
    vocab = len(json.loads((paths.policy / "tokenizer.json").read_text())["model"]["vocab"])
    llama_ids = _llama_tokenizer(paths.draft)
    draft_vocab = len(json.loads((paths.draft / "tokenizer.json").read_text())["model"]["vocab"])
    _write_policy(paths.policy, qwen_ids, vocab)
    _write_draft(paths.draft, llama_ids, draft_vocab)
    _write_prm(paths.prm, qwen_ids, vocab)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m training.fixture OUT_DIR", file=sys.stderr)
        return 2
    paths = build(Path(args[0]))
    print(f"policy {paths.policy}\ndraft {paths.draft}\nprm {paths.prm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

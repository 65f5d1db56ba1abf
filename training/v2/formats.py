"""The texts the v2 family is trained on: its tokenizer, the policy's chat examples and the PRM's examples.

The formats are the real ones the service meets in deployments, taken from :mod:`training.fixture` rather than
restated: ChatML with a system prompt, ``<think>`` / ``</think>`` / ``<extra_0>`` as single special tokens,
eos ``<|im_end|>``, pad ``<|endoftext|>``, no BOS. The PRM example is Qwen2.5-Math-PRM's layout (the solution
as the assistant's turn, ``<extra_0>`` after every step), cut into the same steps the service's pooling
scorer cuts, so that a label sits at every position the served PRM is read at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tasks import countdown
from training.fixture import CHATML_TEMPLATE, PRM_SYSTEM, QWEN_SPECIALS, STEP_TAG, qwen_tokenizer

# One system prompt for policy and PRM, the sentence Qwen2.5-Math models (and the fixture's PRM) are used
# with: the policy learns to answer in \boxed{} under the same prompt operators will send.
SYSTEM = PRM_SYSTEM
# ChatML whose system prompt defaults to SYSTEM when a chat has none, as Qwen2.5-Math-Instruct's template
# does: a client (or an evaluation) that sends only the question still gets the prompt the family learned.
CHAT_TEMPLATE = (
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM.replace("\\", "\\\\") + "<|im_end|>\\n' }}"
    "{% endif %}" + CHATML_TEMPLATE
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> dict[str, int]:
    """Train a byte-level BPE of ``vocab_size`` entries on ``texts`` and save it under ``out_dir``
    (``tokenizer.json``, ``tokenizer_config.json`` with the ChatML chat template) so that
    ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it. Digits are always single tokens
    (as in Qwen2's tokenizer). Returns the id of every special token."""
    corpus = [t for t in texts if t]
    if not corpus:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    # The 256 byte symbols and the specials are always in the vocabulary; below that BPE learns nothing.
    floor = 256 + len(QWEN_SPECIALS)
    if vocab_size <= floor:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges: it must exceed {floor}")
    return qwen_tokenizer(Path(out_dir), vocab_size=vocab_size, corpus=corpus, single_digits=True, chat_template=CHAT_TEMPLATE)


def render_chat(messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """``messages`` rendered by the family's chat template, by the renderer ``apply_chat_template`` uses."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=CHAT_TEMPLATE, add_generation_prompt=add_generation_prompt)
    return rendered[0]


def chat_example(problem: countdown.Problem, trace: str, *, system: str = SYSTEM) -> str:
    """A full policy training text: system prompt, the question as the user's turn, ``trace`` (a
    ``<think>`` span and the answer) as the assistant's turn closed by ``<|im_end|>``."""
    return render_chat(
        [
            {"role": "system", "content": system},
            {"role": "user", "content": countdown.prompt_for(problem.question)},
            {"role": "assistant", "content": trace},
        ]
    )


@dataclass(frozen=True)
class PRMExample:
    """A PRM training example: the rendered ``text``, its ``steps`` in order, one tag after each, and one
    label per step (True: good, by :func:`tasks.countdown.check_steps`)."""

    text: str
    steps: tuple[str, ...]
    labels: tuple[bool, ...]


def prm_example(problem: countdown.Problem, trace: str, *, system: str = SYSTEM) -> PRMExample:
    """``trace`` laid out for the PRM (Qwen2.5-Math-PRM: steps joined by ``<extra_0>``, one after the last)
    with the exact label of every step; the think tags are not steps, the answer paragraph is."""
    verdicts = countdown.check_steps(problem, trace)
    if not verdicts:
        raise ValueError("the trace has no steps to label")
    steps = tuple(v.text for v in verdicts)
    if any(STEP_TAG in s for s in steps):
        raise ValueError(f"a step contains the step tag {STEP_TAG!r}: its labels would be misplaced")
    text = render_chat(
        [
            {"role": "system", "content": system},
            {"role": "user", "content": countdown.prompt_for(problem.question)},
            {"role": "assistant", "content": "".join(f"{s}{STEP_TAG}" for s in steps)},
        ]
    )
    return PRMExample(text=text, steps=steps, labels=tuple(v.good for v in verdicts))

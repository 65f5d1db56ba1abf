"""Model profiles: what a served model's text looks like, as configuration.

Real reasoning models differ in how they write: DeepSeek-R1-Distill thinks inside ``<think>...</think>`` and
answers in ``\\boxed{}``, steps separated by a blank line; Math-Shepherd-style policies write one step per line;
the bundled models end with ``Answer: N``. Nothing in the strategies or the API may assume one of them: they ask
the request's profile. A profile is chosen per server (``TTS_PROFILE``: a bundled name or a TOML file).

    # profile.toml (every key optional)
    name = "r1-distill"
    answer = "boxed"              # task | boxed | regex
    reasoning = "think"           # think | none
    step_delimiter = "\\n\\n"
    max_tokens = 8192             # a strategy's default generation bound per sample
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import ConfigError

AnswerFormat = Literal["task", "boxed", "regex"]
# Strategy parameters are validated with the served model's profile under this key of pydantic's validation
# context (the default and the cap of ``max_tokens`` are the model's: see strategies/params.py).
VALIDATION_KEY = "profile"


class PRMProfile(BaseModel):
    """How the served PRM (role ``prm``) reads a solution. ``kind``: ``tag`` (generative, Math-Shepherd style:
    a tag token after each step, read as P(good) among {good, bad}), ``pooling`` (a token-classification
    reward model, Qwen2.5-Math-PRM style, scored at a separator token after each step) or ``auto`` (pooling
    when the role serves a pooling model). A kind the served model cannot do refuses to start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["auto", "tag", "pooling"] = Field("auto", description="Which kind of PRM the `prm` role serves.")
    question_template: str = Field("{question}\n", description="tag: the question before the steps (`{question}` is replaced).")
    tag: str = Field(" ки", description="tag: the step tag written after every step (Math-Shepherd: ` ки`).")
    good: str = Field("+", description="tag: the token meaning the step is right.")
    bad: str = Field("-", description="tag: the token meaning the step is wrong.")
    system: str = Field(
        "Please reason step by step, and put your final answer within \\boxed{}.",
        description="pooling: the system prompt of the PRM's chat (Qwen2.5-Math-PRM's).",
    )
    step_tag: str = Field("<extra_0>", description="pooling: the separator token after every step (the prm role's `step_tag`).")
    good_class: int = Field(1, ge=0, description="pooling: the class whose probability is the step's score.")
    overflow: Literal["last_steps", "final_part", "refuse"] = Field(
        "last_steps",
        description="A solution longer than the PRM's context (`max_model_len`): `last_steps` scores the last steps that fit "
        "(with the question), `final_part` the steps after the reasoning span (their last ones if even those do not fit; the last "
        "steps of the whole without a final part), `refuse` fails the request. Recorded in `tts.info.prm_overflow`.",
    )


class ScaleProfile(BaseModel):
    """How long this model's reasoning runs, which is what the strategies' step, depth, chunk and workspace
    defaults follow (a request may still set each). The defaults are the reference implementations' values at
    real scale (R1-Distill / Qwen2.5-Math on MATH-500): a search step up to 2,048 tokens and 40 iterations,
    then a final roll-out to the end (search-and-learn); tree steps of 256 tokens to depth 25 (ETS); a partial
    reward after 64 tokens and kept steps completed by 256 (ER-PRM); ATTS chunks of 500 tokens for 15 turns
    (its two-model script)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_tokens: int = Field(2048, ge=1, description="Beam search, DVTS, ER-PRM: most tokens of one step (it ends at the step delimiter first).")
    max_steps: int = Field(40, ge=1, description="Beam search, DVTS, ER-PRM: step iterations before the final roll-out to the end of the trace.")
    tree_step_tokens: int = Field(256, ge=1, description="REBASE, ETS: most tokens of one step.")
    tree_depth: int = Field(25, ge=1, description="REBASE, ETS: depths before the final roll-out.")
    partial_tokens: int = Field(64, ge=1, description="ER-PRM: tokens of a candidate step the PRM judges before it is finished (tau).")
    completion_tokens: int = Field(256, ge=1, description="ER-PRM: most tokens that complete a kept candidate's step.")
    chunk_tokens: int = Field(500, ge=1, description="ATTS reference mode: tokens of one draft chunk.")
    line_chunk_tokens: int = Field(2048, ge=1, description="ATTS line mode: most tokens of one chunk (one step).")
    turns: int = Field(15, ge=1, description="ATTS: chunks per sample before the target finishes it.")
    workspace_tokens: int = Field(4096, ge=8, description="PDR / SR: most tokens of a workspace (kappa): room for the drafts it shows, answers included.")


class SamplingProfile(BaseModel):
    """Sampling defaults of the model (its card's), for every strategy's samples; a request may set its own.
    Unset values come from the checkpoint's ``generation_config.json`` when ``from_checkpoint`` (the served
    policy's, read at start-up), else each strategy keeps its own default (its paper's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature of every strategy's samples.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass of every strategy's samples.")
    greedy_single_pass: bool = Field(True, description="`single_pass` decodes greedily (false: it samples at `temperature`, as R1's card asks).")
    from_checkpoint: bool = Field(True, description="Fill unset values from the policy checkpoint's generation_config.json.")


class ModelProfile(BaseModel):
    """How one served model writes: its answers, its reasoning span, its steps, its lengths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("custom", description="A label for logs and the trace.")
    answer: AnswerFormat = Field(
        "task",
        description="Answer extractor: `task` (the bundled task's last `Answer: N` line), `boxed` (the last `\\boxed{...}` "
        "of the final part, after the reasoning; math-verify makes the vote key), `regex` (`answer_pattern`'s first group).",
    )
    answer_pattern: str | None = Field(None, description="With `answer = \"regex\"`: a Python regex whose first group is the answer.")
    answer_key: Literal["value", "expression"] = Field(
        "value",
        description="With `answer = \"boxed\"`, what votes together: `value` (math-verify: equal values) or `expression` (the boxed "
        "arithmetic expression up to reordering of + and *, not evaluated: for tasks whose answers all claim one value, as Countdown's do).",
    )
    reasoning: Literal["none", "think"] = Field("none", description="`think`: the model reasons between `think_open` and `think_close` first.")
    think_open: str = Field("<think>", description="Opening tag of the reasoning span.")
    think_close: str = Field("</think>", description="Closing tag of the reasoning span.")
    step_delimiter: str = Field("\n", min_length=1, description="What separates two reasoning steps (`\\n\\n` for most real models).")
    stop: tuple[str, ...] = Field((), description="Stop strings every generation call adds (besides the model's EOS).")
    max_tokens: int = Field(256, ge=1, description="Default bound on generated tokens per sample when the request gives none.")
    max_tokens_cap: int = Field(4096, ge=1, description="Largest `max_tokens` a request may ask for per sample.")
    prompt_suffix: str = Field(
        "", description="Appended to the question of every problem an evaluation or a calibration asks, as the model card asks (R1's "
        "`\\nPlease reason step by step, and put your final answer within \\boxed{}.`); client requests are sent as they come."
    )
    system_prompt: str = Field(
        "", description="The system message of every problem an evaluation or a calibration asks, when the model card puts its "
        "instruction there (Qwen2.5-Math-Instruct); empty: none. Client requests are sent as they come."
    )
    prm: PRMProfile = Field(PRMProfile(), description="How the PRM served beside this policy reads its solutions (`[prm]` table).")
    scale: ScaleProfile = Field(ScaleProfile(), description="How long its reasoning runs: the strategies' step, depth and chunk defaults (`[scale]` table).")
    sampling: SamplingProfile = Field(SamplingProfile(), description="Its sampling defaults (`[sampling]` table).")

    @model_validator(mode="after")
    def _consistent(self) -> ModelProfile:
        if self.answer == "regex" and not self.answer_pattern:
            raise ValueError("answer = \"regex\" needs `answer_pattern`")
        if self.answer_pattern is not None:
            try:
                groups = re.compile(self.answer_pattern).groups
            except re.error as err:
                raise ValueError(f"answer_pattern {self.answer_pattern!r} is not a regex: {err}") from None
            if groups < 1:
                raise ValueError(f"answer_pattern {self.answer_pattern!r} needs a group: its first group is the answer")
        if self.answer_key == "expression" and self.answer != "boxed":
            raise ValueError(f"answer_key = \"expression\" keys boxed answers: it needs answer = \"boxed\", not {self.answer!r}")
        if self.max_tokens > self.max_tokens_cap:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds max_tokens_cap {self.max_tokens_cap}")
        return self

    def split_reasoning(self, text: str) -> tuple[str | None, str]:
        """(reasoning, final part) of a completion. With no reasoning span configured, (None, text). A
        completion whose reasoning never closed is all reasoning: its final part is empty."""
        if self.reasoning == "none":
            return None, text
        start = text.find(self.think_open)
        head = text[start + len(self.think_open) :] if start >= 0 and not text[:start].strip() else text
        end = head.find(self.think_close)
        if end < 0:
            return head.strip("\n") or None, ""
        return head[:end].strip("\n"), head[end + len(self.think_close) :].lstrip("\n")


# The bundled models' scale: solutions of 50-100 tokens in 4-7 one-line steps of about 12 tokens.
BUNDLED_SCALE = ScaleProfile(
    step_tokens=64, max_steps=40, tree_step_tokens=64, tree_depth=40, partial_tokens=4, completion_tokens=60, chunk_tokens=32,
    line_chunk_tokens=64, turns=16, workspace_tokens=256,
)

# The instruction DeepSeek-R1's and Qwen2.5-Math-Instruct's model cards give for math problems.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# The profiles shipped with the project, by name.
BUNDLED: dict[str, ModelProfile] = {
    # models/target, models/draft, models/prm: character-level, one step per line, `Answer: N`. Each strategy
    # keeps its paper's sampling defaults, as the measured tables were made.
    "bundled": ModelProfile(name="bundled", max_tokens_cap=448, scale=BUNDLED_SCALE, sampling=SamplingProfile(from_checkpoint=False)),
    # DeepSeek-R1-Distill-Qwen and its kin: 4-16k tokens in 50-200 blank-line paragraphs; its card asks for
    # temperature 0.6, top_p 0.95 and no greedy decoding (it repeats until the length limit). Its authors
    # evaluate at 32k tokens; 16k holds most MATH-500 traces, and serving it needs max_model_len above the cap.
    "r1-distill": ModelProfile(
        name="r1-distill", answer="boxed", reasoning="think", step_delimiter="\n\n", max_tokens=16384, max_tokens_cap=32768,
        sampling=SamplingProfile(temperature=0.6, top_p=0.95, greedy_single_pass=False),
        prompt_suffix=f"\n{BOXED_INSTRUCTION}",  # its card: no system prompt, the instruction in the user's message
    ),
    # Qwen2.5-Math-*-Instruct: no reasoning span, blank-line steps, `\boxed{}` answers, 300-700-token solutions
    # (4k context). Sampling comes from the checkpoint's generation_config.json.
    "qwen-math": ModelProfile(
        name="qwen-math", answer="boxed", step_delimiter="\n\n", max_tokens=2048, max_tokens_cap=3072, scale=ScaleProfile(workspace_tokens=2048),
        system_prompt=BOXED_INSTRUCTION,  # its card's CoT instruction is the system message
    ),
}


def load_profile(spec: str | Path) -> ModelProfile:
    """A bundled profile by name, or a TOML file of :class:`ModelProfile` keys."""
    if str(spec) in BUNDLED:
        return BUNDLED[str(spec)]
    path = Path(spec)
    if not path.suffix == ".toml":
        raise ConfigError(f"unknown model profile {str(spec)!r} (TTS_PROFILE): give one of {', '.join(BUNDLED)} or a .toml file")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read model profile {path} (TTS_PROFILE): {err}") from None
    try:
        return ModelProfile.model_validate(raw)
    except ValidationError as err:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'profile'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"model profile {path} (TTS_PROFILE): {details}") from None

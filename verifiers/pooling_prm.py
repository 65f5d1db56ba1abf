"""Process reward models served by vLLM's pooling runner: step scores from a token-classification head.

Qwen2.5-Math-PRM style: the conversation (a system prompt, the question as the user's turn, the solution as the
assistant's turn with a separator token after every step) rendered by the PRM's own chat template; the model
classifies every position, the engine keeps the rows at the separators (vLLM's STEP pooling, configured by the
role's ``step_tag``), and a step's score is P(class 1) there. One pooling call per solution, nothing generated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence

from orchestrator.errors import EngineError, InvalidRequest
from orchestrator.protocols import Engine
from orchestrator.types import Role, ScoreSpec
from verifiers.prm import Overflow, StepScores, StepScoring


@dataclass(frozen=True)
class PoolingPRMFormat:
    """How a solution is laid out for a pooling PRM (defaults: Qwen2.5-Math-PRM's). ``step_tag`` must be the
    token the engine's pooler keeps (the role's ``step_tag``); ``good_class`` is the label whose probability
    is the step's score."""

    system: str = "Please reason step by step, and put your final answer within \\boxed{}."
    step_delimiter: str = "\n\n"
    step_tag: str = "<extra_0>"
    good_class: int = 1
    hidden: tuple[str, ...] = ()  # removed before the solution is cut into steps (a reasoning model's <think> tags)
    overflow: Overflow = "last_steps"  # a solution longer than the PRM's context: see verifiers.prm.StepScoring
    reasoning_end: str = ""  # what closes a reasoning span (</think>): the final part follows it

    def messages(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": "".join(f"{s}{self.step_tag}" for s in steps)},
        ]


class PoolingPRM(StepScoring):
    """Step scores from the pooling PRM served by ``engine`` under ``role``; the same interface as
    :class:`~verifiers.prm.MathShepherdPRM`."""

    def __init__(self, engine: Engine, *, role: Role = "prm", fmt: PoolingPRMFormat = PoolingPRMFormat()) -> None:
        self.engine = engine
        self.role = role
        self.fmt = fmt
        self._tag_id: int | None = None

    async def _step_tag_id(self, engine: Engine) -> int:
        if self._tag_id is None:
            ids = await engine.tokenize(self.role, self.fmt.step_tag)
            self._tag_id = ids[-1]  # the tag is one special token; anything before it is a BOS
        return self._tag_id

    async def render(self, question: str, steps: Sequence[str], *, engine: Engine | None = None) -> str:
        """The PRM's prompt for ``steps``, in its own chat template. The template's trailing generation
        prompt (``render_chat`` adds one) follows the last tag, so it changes no score of a causal model."""
        engine = engine or self.engine
        return await engine.render_chat(self.role, self.fmt.messages(question, steps))

    async def _prompt(self, engine: Engine, question: str, steps: Sequence[str]) -> str:
        return await self.render(question, steps, engine=engine)

    async def _score_steps(self, engine: Engine, question: str, steps: tuple[str, ...]) -> StepScores:
        """Every step's P(good) in [0, 1] from one pooling call (a solution longer than the PRM's context:
        :meth:`~verifiers.prm.StepScoring.score`)."""
        if any(self.fmt.step_tag in s for s in steps):
            raise InvalidRequest("a step contains the PRM's step tag; it cannot be scored unambiguously")
        prompt, tag_id = await asyncio.gather(self.render(question, steps, engine=engine), self._step_tag_id(engine))
        out = await engine.classify_tokens(self.role, ScoreSpec(prompt))
        positions = [p for p, t in enumerate(out.token_ids) if t == tag_id]
        rows = out.rows
        if len(rows) == len(out.token_ids) and len(rows) != len(positions):
            rows = tuple(rows[p] for p in positions)  # served without a step tag: one row per token
        # The question may itself contain the tag; the step tags are always the last len(steps) ones.
        rows = rows[-len(steps) :] if len(rows) >= len(steps) else rows
        if len(rows) != len(steps):
            raise EngineError(
                f"the PRM returned {len(out.rows)} step rows for {len(steps)} steps: is the role's `step_tag` {self.fmt.step_tag!r}?",
                worker=out.worker,
            )
        return StepScores(steps, tuple(float(r[self.fmt.good_class]) for r in rows), out.usage)

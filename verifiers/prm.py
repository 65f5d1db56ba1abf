"""Process reward models: step scores read from a causal LM's prompt log-probabilities, and an outcome judge.

Math-Shepherd style: the question, then every step followed by a step tag; the model's distribution at each
tag is a verdict on the step, and the step's score is P(good) among {good, bad}. All of it is one ``score``
call per solution (no generation); many solutions are scored concurrently, which the engine batches. The tag,
the good/bad tokens and the layout are configuration, so a real Math-Shepherd checkpoint works by changing
:class:`PRMFormat` (``question_template="{question} "``, tag ``" ки"``, good ``"+"``, bad ``"-"``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Sequence

from orchestrator.errors import ContextTooLong, InvalidRequest
from orchestrator.protocols import Engine
from orchestrator.scoring import Aggregation, aggregate
from orchestrator.types import Role, ScoreSpec, Usage
from tasks import arithmetic as task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PRMFormat:
    """How a solution is laid out for the PRM. ``separator`` follows every tag so that the tag is never the
    prompt's last token (its next-token distribution is then among the prompt log-probabilities)."""

    question_template: str = "{question}\n"
    step_delimiter: str = "\n"
    tag: str = " ки"
    separator: str = "\n"
    good: str = "+"
    bad: str = "-"
    # Removed from a solution before it is cut into steps: a reasoning model's <think> tags are markup, not steps.
    hidden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.separator:
            raise ValueError("PRMFormat.separator must not be empty: the tag must not end the prompt")
        if not self.tag.strip():
            raise ValueError("PRMFormat.tag must contain a visible token")


@dataclass(frozen=True)
class StepScores:
    """Scores of one solution's steps, in order. A solution with no steps has none, and aggregates to 0.0
    (documented choice: nothing to vouch for ranks below anything scored)."""

    steps: tuple[str, ...]
    scores: tuple[float, ...]
    usage: Usage

    def aggregate(self, how: Aggregation = "last") -> float:
        return aggregate(self.scores, how)


def visible(solution: str, hidden: Sequence[str]) -> str:
    """``solution`` without the markup strings ``hidden`` (what a PRM should not see as steps)."""
    for h in hidden:
        solution = solution.replace(h, "")
    return solution


def p_good(lp_good: float, lp_bad: float) -> float:
    """P(good) among {good, bad}; 0.5 when the engine reported neither (both outside its top-k)."""
    if lp_good == -math.inf and lp_bad == -math.inf:
        return 0.5
    m = max(lp_good, lp_bad)
    a, b = math.exp(lp_good - m), math.exp(lp_bad - m)
    return a / (a + b)


class StepScoring:
    """What every PRM kind offers on top of its own ``score``: the StepScorer protocol and batch scoring."""

    async def score(self, question: str, solution: str, *, engine: Engine | None = None) -> StepScores:
        raise NotImplementedError

    async def step_scores(self, engine: Engine, question: str, solution: str) -> tuple[float, ...]:
        """The :class:`~orchestrator.protocols.StepScorer` protocol (how strategies reach the PRM)."""
        return (await self.score(question, solution, engine=engine)).scores

    async def score_many(self, question: str | Sequence[str], solutions: Sequence[str]) -> list[StepScores]:
        """Score many solutions concurrently (the engine batches them); ``question`` is one for all or one each."""
        questions = [question] * len(solutions) if isinstance(question, str) else list(question)
        if len(questions) != len(solutions):
            raise InvalidRequest(f"{len(questions)} questions for {len(solutions)} solutions")
        return list(await asyncio.gather(*(self.score(q, s) for q, s in zip(questions, solutions))))


class MathShepherdPRM(StepScoring):
    """Step scores from the PRM served by ``engine`` under ``role``."""

    def __init__(self, engine: Engine, *, role: Role = "prm", fmt: PRMFormat = PRMFormat()) -> None:
        self.engine = engine
        self.role = role
        self.fmt = fmt
        self._ids: tuple[int, int, int] | None = None

    async def _token_ids(self, engine: Engine) -> tuple[int, int, int]:
        """Ids of the tag, good and bad tokens: the last id each tokenises to (skips any BOS or space piece)."""
        if self._ids is None:
            tag, good, bad = await asyncio.gather(
                *(engine.tokenize(self.role, t) for t in (self.fmt.tag, self.fmt.good, self.fmt.bad))
            )
            self._ids = (tag[-1], good[-1], bad[-1])
        return self._ids

    def render(self, question: str, steps: Sequence[str]) -> str:
        f = self.fmt
        return f.question_template.format(question=question) + "".join(f"{s}{f.tag}{f.separator}" for s in steps)

    async def score(self, question: str, solution: str, *, engine: Engine | None = None) -> StepScores:
        """Every step's P(good), through ``engine`` (default: the one this scorer was built with)."""
        engine = engine or self.engine
        # An unfinished last step (a partial generation cut after some tokens) is a step like the others.
        steps = tuple(task.split_steps(visible(solution, self.fmt.hidden), delimiter=self.fmt.step_delimiter))
        if not steps:
            return StepScores((), (), Usage())
        if any(self.fmt.tag.strip() in s for s in steps):
            raise InvalidRequest("a step contains the PRM's step tag; it cannot be scored unambiguously")
        tag_id, good_id, bad_id = await self._token_ids(engine)
        try:
            scores = await engine.score(self.role, ScoreSpec(self.render(question, steps), start=0, candidates=(good_id, bad_id)))
        except ContextTooLong as err:
            log.info("solution of %d steps is longer than the PRM's context; its steps score 0: %s", len(steps), err.message)
            return StepScores(steps, (0.0,) * len(steps), Usage())
        positions = [p for p, t in enumerate(scores.token_ids) if t == tag_id]
        # The question may itself contain the tag; the step tags are always the last len(steps) ones.
        positions = positions[-len(steps) :]
        if len(positions) != len(steps):
            raise InvalidRequest(f"found {len(positions)} step tags for {len(steps)} steps after tokenisation")
        values = tuple(p_good(*scores.candidate_logprobs[p - scores.start]) for p in positions)
        return StepScores(steps, values, scores.usage)



@dataclass(frozen=True)
class JudgeFormat:
    """The judge's prompt; ``yes`` / ``no`` are the two answers whose probabilities are compared."""

    template: str = "{question}\n{solution}\nIs this solution correct? Answer:"
    yes: str = " yes"
    no: str = " no"


class OutcomeJudge:
    """P(yes) that a whole solution is correct, read from the judge model's next-token distribution."""

    def __init__(self, engine: Engine, *, role: Role = "prm", fmt: JudgeFormat = JudgeFormat()) -> None:
        self.engine = engine
        self.role = role
        self.fmt = fmt

    async def judge(self, question: str, solution: str, *, engine: Engine | None = None) -> float:
        engine = engine or self.engine
        if not solution.strip():
            return 0.0  # documented: an empty solution is judged incorrect without asking the model
        yes, no = await asyncio.gather(engine.tokenize(self.role, self.fmt.yes), engine.tokenize(self.role, self.fmt.no))
        prompt = self.fmt.template.format(question=question, solution=solution)
        # Append the `yes` token so that the row predicting it is the distribution right after the prompt.
        ids = list(await engine.tokenize(self.role, prompt)) + [yes[-1]]
        scores = await engine.score(self.role, ScoreSpec(tuple(ids), start=len(ids) - 2, candidates=(yes[-1], no[-1])))
        return p_good(*scores.candidate_logprobs[-1])

    async def outcome_score(self, engine: Engine, question: str, solution: str) -> float:
        """The :class:`~orchestrator.protocols.OutcomeScorer` protocol (how strategies reach the judge)."""
        return await self.judge(question, solution, engine=engine)

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
import re
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

from orchestrator.errors import ContextTooLong, InvalidRequest
from orchestrator.protocols import Engine
from orchestrator.scoring import Aggregation, aggregate
from orchestrator.types import PRMOverflow, PRMOverflowRead, Role, ScoredSteps, ScoreSpec, Usage
from tasks import arithmetic as task

log = logging.getLogger(__name__)

# What a PRM does with a solution longer than its context window (profile `[prm] overflow`).
Overflow = Literal["last_steps", "final_part", "refuse"]


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
    overflow: Overflow = "last_steps"  # a solution longer than the PRM's context: see StepScoring
    reasoning_end: str = ""  # what closes a reasoning span (</think>): the final part follows it

    def __post_init__(self) -> None:
        if not self.separator:
            raise ValueError("PRMFormat.separator must not be empty: the tag must not end the prompt")
        if not self.tag.strip():
            raise ValueError("PRMFormat.tag must contain a visible token")


@dataclass(frozen=True)
class StepScores:
    """Scores of one solution's steps, in order. A solution with no steps has none, and aggregates to 0.0
    (documented choice: nothing to vouch for ranks below anything scored). A solution longer than the PRM's
    context has ``steps`` and ``scores`` of the part it read, and ``overflow`` says which part."""

    steps: tuple[str, ...]
    scores: tuple[float, ...]
    usage: Usage
    overflow: PRMOverflow | None = None

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


class StepLayout(Protocol):
    """What :class:`StepScoring` reads of a PRM kind's format (:class:`PRMFormat`, ``PoolingPRMFormat``)."""

    @property
    def step_delimiter(self) -> str: ...

    @property
    def hidden(self) -> tuple[str, ...]: ...

    @property
    def overflow(self) -> Overflow: ...

    @property
    def reasoning_end(self) -> str: ...


def context_limit(err: ContextTooLong) -> int | None:
    """The context length a refusal names: every worker writes ``max_model_len N`` (workers/engine.py,
    workers/remote.py), a ``vllm serve`` ``maximum context length is N``. None when it names none."""
    m = re.search(r"max_model_len (\d+)|maximum context length is (\d+)", err.message)
    return int(m.group(1) or m.group(2)) if m else None


# Windows tried after the engine refused one it was estimated to fit (tokenisation at the joins of steps can
# differ from the whole prompt's); each try halves what is left.
WINDOW_TRIES = 6


class StepScoring:
    """What every PRM kind offers on top of its own scoring call: the StepScorer protocol, batch scoring, and
    what happens to a solution longer than the PRM's context window (``fmt.overflow``, the profile's
    ``[prm] overflow``):

    - ``last_steps``: the question and the last steps that fit are scored; the steps before them get no score.
      Whatever the solution's length the PRM reads its end, where the answer is.
    - ``final_part``: the steps after the reasoning span (``fmt.reasoning_end``) are scored, their last ones if
      even they do not fit; a solution with no final part (its reasoning never closed) as ``last_steps``.
    - ``refuse``: :class:`ContextTooLong`, naming the profile's choice: the request fails with a 400.

    The engine refuses an over-long prompt before computing anything, so the refusal costs no tokens; the
    window is sized by tokenising candidate prompts (free) against the context length the refusal names,
    and only the call that is scored is charged. The result carries :class:`PRMOverflow` (``StepScores.overflow``),
    which the strategy context records with the request (``tts.info.prm_overflow``): never an unmarked score."""

    engine: Engine
    role: Role
    fmt: StepLayout

    async def _score_steps(self, engine: Engine, question: str, steps: tuple[str, ...]) -> StepScores:
        """One scoring call over ``steps`` (raises :class:`ContextTooLong` when the prompt does not fit)."""
        raise NotImplementedError

    async def _prompt(self, engine: Engine, question: str, steps: Sequence[str]) -> str:
        """The prompt :meth:`_score_steps` sends for ``steps``."""
        raise NotImplementedError

    def _steps(self, solution: str) -> tuple[str, ...]:
        # An unfinished last step (a partial generation cut after some tokens) is a step like the others.
        return tuple(task.split_steps(visible(solution, self.fmt.hidden), delimiter=self.fmt.step_delimiter))

    async def score(self, question: str, solution: str, *, engine: Engine | None = None) -> StepScores:
        """Every step's P(good) in [0, 1], through ``engine`` (default: the one this scorer was built with);
        a solution longer than the PRM's context as ``fmt.overflow`` says (see the class)."""
        engine = engine or self.engine
        steps = self._steps(solution)
        if not steps:
            return StepScores((), (), Usage())
        try:
            return await self._score_steps(engine, question, steps)
        except ContextTooLong as err:
            if self.fmt.overflow == "refuse":
                raise ContextTooLong(
                    f"{err.message}: a solution of {len(steps)} steps is longer than the PRM's context, and the profile's "
                    '[prm] overflow is "refuse"',
                    param=err.param,
                ) from None
            return await self._overflowed(engine, question, solution, steps, context_limit(err))

    async def _overflowed(self, engine: Engine, question: str, solution: str, steps: tuple[str, ...], limit: int | None) -> StepScores:
        read: PRMOverflowRead = "last_steps"
        pool, fresh = steps, False  # the steps a window is cut from; fresh: not yet refused whole
        end = self.fmt.reasoning_end
        if self.fmt.overflow == "final_part" and end and end in solution:
            final = self._steps(solution.split(end, 1)[1])
            if final:
                read, pool, fresh = "final_part", final, True
        hi = len(pool) if fresh else len(pool) - 1
        for _ in range(WINDOW_TRIES):
            k = await self._fitting(engine, question, pool, hi=hi, limit=limit, whole=fresh)
            fresh = False
            if k <= 0:
                break
            try:
                out = await self._score_steps(engine, question, pool[-k:])
            except ContextTooLong as err:
                limit, hi = context_limit(err) or limit, k - 1
                continue
            log.info("a solution of %d steps is longer than the PRM's context (%s tokens): scored its %s, %d steps", len(steps), limit, read, k)
            return StepScores(out.steps, out.scores, out.usage, PRMOverflow(read, len(steps), k, limit))
        log.info("a solution of %d steps is longer than the PRM's context (%s tokens): no step of it fits", len(steps), limit)
        return StepScores((), (), Usage(), PRMOverflow(read, len(steps), 0, limit))

    async def _fitting(self, engine: Engine, question: str, pool: tuple[str, ...], *, hi: int, limit: int | None, whole: bool) -> int:
        """The most of ``pool``'s last steps, at most ``hi``, whose prompt fits ``limit`` tokens (found by
        bisection over free tokenisations; one token kept free, as a scoring call needs). Without a known
        limit: ``hi`` when ``whole`` (not yet tried), else half of it."""
        if hi <= 0:
            return 0
        if limit is None:
            return hi if whole else (hi + 1) // 2

        async def fits(k: int) -> bool:
            return len(await engine.tokenize(self.role, await self._prompt(engine, question, pool[-k:]))) < limit

        if await fits(hi):
            return hi
        lo, top = 0, hi  # fits(lo) or lo == 0; not fits(top)
        while top - lo > 1:
            mid = (lo + top) // 2
            lo, top = (mid, top) if await fits(mid) else (lo, mid)
        return lo

    async def step_scores(self, engine: Engine, question: str, solution: str) -> ScoredSteps:
        """The :class:`~orchestrator.protocols.StepScorer` protocol (how strategies reach the PRM)."""
        out = await self.score(question, solution, engine=engine)
        return ScoredSteps(out.scores, out.overflow)

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

    async def _prompt(self, engine: Engine, question: str, steps: Sequence[str]) -> str:
        return self.render(question, steps)

    async def _score_steps(self, engine: Engine, question: str, steps: tuple[str, ...]) -> StepScores:
        if any(self.fmt.tag.strip() in s for s in steps):
            raise InvalidRequest("a step contains the PRM's step tag; it cannot be scored unambiguously")
        tag_id, good_id, bad_id = await self._token_ids(engine)
        scores = await engine.score(self.role, ScoreSpec(self.render(question, steps), start=0, candidates=(good_id, bad_id)))
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

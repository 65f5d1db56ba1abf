"""The seams between packages: what the controller and strategies need from workers and verifiers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol, Sequence

from orchestrator.types import EngineState, EngineStatus, Generation, Role, SamplingSpec, Scores, ScoredSteps, ScoreSpec, StrategyResult, StreamDelta, TokenClasses


class Engine(Protocol):
    """Model roles served by workers. Cancelling an awaiting ``generate`` aborts the engine request, as does
    ``abort`` with the spec's ``request_id`` (how one branch stops its siblings)."""

    async def generate(self, role: Role, spec: SamplingSpec) -> Generation: ...

    def stream(self, role: Role, spec: SamplingSpec) -> AsyncIterator[StreamDelta]: ...

    async def abort(self, request_ids: Sequence[str]) -> None: ...

    async def score(self, role: Role, spec: ScoreSpec) -> Scores: ...

    async def classify_tokens(self, role: Role, spec: ScoreSpec) -> TokenClasses: ...

    async def tokenize(self, role: Role, text: str) -> list[int]: ...

    async def embed(self, role: Role, texts: Sequence[str]) -> list[list[float]]: ...

    async def render_chat(self, role: Role, messages: Sequence[dict[str, str]]) -> str: ...

    def roles(self) -> frozenset[Role]: ...


class EngineStates(Protocol):
    """Where the engines serving the model roles are in their life (the worker pool: a server listens once its
    policy is ready, and other roles may still be loading)."""

    def role_state(self, role: Role) -> EngineState | None:
        """``ready`` once one of the role's engines is; None when nothing serves the role."""
        ...

    def retry_after(self, role: Role) -> float:
        """Seconds a caller may wait before the role's engines are ready."""
        ...

    def status(self) -> list[EngineStatus]: ...


class AnswerVerifier(Protocol):
    """Turns a solution into a canonical answer key (equal keys mean equivalent answers: what votes group by)
    and reads the same answer as the model wrote it (what a caller is shown); None when there is none."""

    def extract(self, text: str) -> str | None: ...

    def written(self, text: str) -> str | None: ...


class ResultGrader(Protocol):
    """How an evaluation grades a strategy's result against a dataset's gold answer."""

    def grade(self, result: StrategyResult, gold: str) -> bool: ...


class StepScorer(Protocol):
    """A process reward model: a score in [0, 1] for every step of a solution (higher: more likely on track).
    It reaches its model only through ``engine`` (the strategy context's metered view). A plain tuple scores
    every step; a :class:`~orchestrator.types.ScoredSteps` also says how a solution longer than the model's
    context was read (the context records it with the request)."""

    async def step_scores(self, engine: Engine, question: str, solution: str) -> ScoredSteps | tuple[float, ...]: ...


class OutcomeScorer(Protocol):
    """An outcome judge: the probability in [0, 1] that a whole solution is correct."""

    async def outcome_score(self, engine: Engine, question: str, solution: str) -> float: ...


class StepClustering(Protocol):
    """Groups steps that say the same thing (ETS's coverage reward); labels are 0..k-1. ``threshold`` is the
    cosine distance calibrated for this clusterer's vectors (paraphrases of a step within it, different steps
    beyond it: ``python -m bench.ets_threshold``), the default when a strategy gives none."""

    threshold: float

    async def clusters(self, engine: Engine, texts: Sequence[str], threshold: float) -> list[int]: ...


class CalibrationStore(Protocol):
    """Where conformal calibration scores live (ATTS): named sets, appended to online, bounded in size."""

    async def scores(self, name: str) -> list[float]: ...

    async def add_scores(self, name: str, *, scores: Sequence[float], model: str, keep: int) -> int: ...


class Refiner(Protocol):
    """How drafts become a refine prompt (Parallel-Distill-Refine). Task knowledge lives here, not in the
    strategy: what a global summary of drafts says, and how the policy is asked to improve on a workspace."""

    def summary(self, question: str, drafts: Sequence[str]) -> list[str]:
        """A global summary of ``drafts`` as lines, computed without a model (a tally of their answers, or the
        workspace format a bundled model was trained on); the strategy keeps as many as its token bound allows."""
        ...

    def summary_messages(self, question: str, drafts: Sequence[str]) -> list[dict[str, str]] | None:
        """A request asking the policy to write the global summary of ``drafts`` (agreements, contradictions,
        derived facts, open subgoals, as the PDR paper's summary says), as chat messages; None when this
        refiner's summary is :meth:`summary`, computed (the workspace format a model was trained on)."""
        ...

    def draft_block(self, index: int, draft: str) -> str:
        """One draft as it appears verbatim in a workspace (top-k and random-k operators)."""
        ...

    def refine_prompt(self, question: str, workspace: str) -> str:
        """The policy's prompt for one refinement of ``question`` given ``workspace`` (may be empty)."""
        ...

    def refine_messages(self, question: str, workspace: str) -> list[dict[str, str]] | None:
        """The refine request as chat messages for the policy's own template; None: send ``refine_prompt`` raw."""
        ...


@dataclass(frozen=True)
class JobInfo:
    id: str
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str
    entrypoint: str
    metadata: dict[str, str]


class JobServer(Protocol):
    """Where evaluation jobs run (Ray's job server); blocking calls."""

    def submit(self, *, entrypoint: str, job_id: str, env: dict[str, str], metadata: dict[str, str]) -> None: ...

    def info(self, job_id: str) -> JobInfo | None: ...

    def logs(self, job_id: str) -> str: ...

    def stop(self, job_id: str) -> None: ...

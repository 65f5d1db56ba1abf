"""What the server can do besides generating: the one list of optional capabilities.

The controller refuses a request whose strategy needs a capability the toolbox lacks, before any compute;
the strategy context serves the same toolbox to the strategy. Both read :meth:`Toolbox.available`, so a
capability is declared once, here. A capability the server has may still be waiting for its engine (a server
serves once its policy is ready, other roles load behind it): :meth:`Toolbox.waiting` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Literal, Mapping

from orchestrator.profile import ModelProfile
from orchestrator.protocols import AnswerVerifier, CalibrationStore, EngineStates, OutcomeScorer, Refiner, StepClustering, StepScorer
from orchestrator.types import EngineState, Role

Capability = Literal["prm", "judge", "refiner", "clusterer", "draft", "calibration"]


@dataclass(frozen=True)
class Toolbox:
    """The verifier every request uses, and the capabilities a server may have.

    ``profile`` says how the served policy writes; ``draft_model`` names the model served as role ``draft`` (draft/target strategies); ``calibration`` is
    where conformal calibration sets live (ATTS), usually the database. ``roles`` names the engine role each
    capability calls (``prm``: the PRM's role, ``clusterer``: the embedder's), and ``engines`` says where those
    engines are (None: all ready)."""

    verifier: AnswerVerifier
    step_scorer: StepScorer | None = None
    outcome_scorer: OutcomeScorer | None = None
    refiner: Refiner | None = None
    clusterer: StepClustering | None = None
    calibration: CalibrationStore | None = None
    draft_model: str | None = None
    profile: ModelProfile = ModelProfile(name="bundled")  # how the policy writes (answers, reasoning, steps)
    roles: Mapping[Capability, Role] = field(default_factory=dict)
    engines: EngineStates | None = None

    def available(self) -> frozenset[Capability]:
        """The capabilities this toolbox has."""
        have: dict[Capability, object] = {
            "prm": self.step_scorer,
            "judge": self.outcome_scorer,
            "refiner": self.refiner,
            "clusterer": self.clusterer,
            "draft": self.draft_model,
            "calibration": self.calibration,
        }
        return frozenset(k for k, v in have.items() if v is not None)

    def waiting(self, needs: Collection[Capability]) -> dict[Capability, EngineState]:
        """Of ``needs``, the capabilities this toolbox has whose engine is not ready: ``loading`` or ``failed``."""
        if self.engines is None:
            return {}
        out: dict[Capability, EngineState] = {}
        for cap in sorted(set(needs) & self.available()):
            role = self.roles.get(cap)
            state = self.engines.role_state(role) if role is not None else None
            if state is not None and state != "ready":
                out[cap] = state
        return out

    def ready(self) -> frozenset[Capability]:
        """The capabilities this toolbox has whose engines are ready now."""
        have = self.available()
        return have - frozenset(self.waiting(have))

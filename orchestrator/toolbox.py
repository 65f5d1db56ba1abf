"""What the server can do besides generating: the one list of optional capabilities.

The controller refuses a request whose strategy needs a capability the toolbox lacks, before any compute;
the strategy context serves the same toolbox to the strategy. Both read :meth:`Toolbox.available`, so a
capability is declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.profile import ModelProfile
from orchestrator.protocols import AnswerVerifier, CalibrationStore, OutcomeScorer, Refiner, StepClustering, StepScorer

Capability = Literal["prm", "judge", "refiner", "clusterer", "draft", "calibration"]


@dataclass(frozen=True)
class Toolbox:
    """The verifier every request uses, and the capabilities a server may have.

    ``profile`` says how the served policy writes; ``draft_model`` names the model served as role ``draft`` (draft/target strategies); ``calibration`` is
    where conformal calibration sets live (ATTS), usually the database."""

    verifier: AnswerVerifier
    step_scorer: StepScorer | None = None
    outcome_scorer: OutcomeScorer | None = None
    refiner: Refiner | None = None
    clusterer: StepClustering | None = None
    calibration: CalibrationStore | None = None
    draft_model: str | None = None
    profile: ModelProfile = ModelProfile(name="bundled")  # how the policy writes (answers, reasoning, steps)

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

"""A strategy that needs what the server lacks is refused before any compute, with the missing piece named."""

from __future__ import annotations

import pytest

from orchestrator.controller import Controller, ReasoningRequest
from orchestrator.errors import InvalidRequest
from orchestrator.toolbox import Toolbox
from strategies import REGISTRY
from verifiers import TaskAnswerVerifier, TaskRefiner


def controller(**extra) -> Controller:
    return Controller(
        engine=None,  # type: ignore[arg-type]  # validation never reaches the engine
        store=None,  # type: ignore[arg-type]
        strategies=REGISTRY,
        tools=Toolbox(verifier=TaskAnswerVerifier(), **extra),
        models={"target": "policy"},
        max_request_tokens=10_000,
    )


def request(strategy: str, **params) -> ReasoningRequest:
    return ReasoningRequest(model="target", messages=({"role": "user", "content": "Start at 3 and apply +4."},), strategy=strategy, params=params)


@pytest.mark.parametrize(
    "strategy, params, missing",
    [
        ("beam_search", {}, "prm"),
        ("rebase", {}, "prm"),
        ("early_rejection", {}, "prm"),
        ("best_of_n", {"scorer": "judge"}, "judge"),
        ("ets", {}, "clusterer"),
        ("pdr", {}, "refiner"),
        ("sequential_refinement", {}, "refiner"),
    ],
)
def test_missing_verifiers_are_a_clear_400(strategy, params, missing):
    with pytest.raises(InvalidRequest, match=missing) as err:
        controller().validate(request(strategy, **params))
    assert err.value.param == "strategy"


def test_what_the_server_has_is_enough():
    ctl = controller(refiner=TaskRefiner())
    assert ctl.validate(request("pdr"))[0].name == "pdr"
    with pytest.raises(InvalidRequest, match="prm"):  # without lambda_s no clusters are needed, still a PRM
        ctl.validate(request("ets", lambda_s=0.0))

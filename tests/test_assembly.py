"""deploy.assembly: the served profile (the checkpoint's sampling, caps within the policy's context) and a
strategy run in-process as a library."""

from __future__ import annotations

import asyncio
import json

import pytest

from deploy.assembly import served_profile, strategy_context
from orchestrator.errors import ConfigError
from orchestrator.profile import BUNDLED, ModelProfile, SamplingProfile
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine
from verifiers import TaskAnswerVerifier
from workers.config import PoolConfig, RoleConfig


def _config(tmp_path, max_model_len: int = 4096, generation: dict | None = None) -> PoolConfig:
    (tmp_path / "config.json").write_text("{}")
    if generation is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    return PoolConfig(roles={"policy": RoleConfig(model=tmp_path, max_model_len=max_model_len)})


def test_a_cap_with_no_room_for_a_prompt_in_the_policys_context_is_refused_naming_both(tmp_path):
    with pytest.raises(ConfigError, match=r"max_tokens_cap = 32768 but role `policy` has max_model_len = 16384"):
        served_profile(BUNDLED["r1-distill"], _config(tmp_path, 16384))
    with pytest.raises(ConfigError, match=r"max_tokens_cap = 300 but role `policy` has max_model_len = 300"):
        served_profile(ModelProfile(max_tokens=300, max_tokens_cap=300), _config(tmp_path, 300))
    assert served_profile(BUNDLED["r1-distill"], _config(tmp_path, 34816)) == BUNDLED["r1-distill"]
    # A remote policy's context is its server's: not known before it answers, so not checked here.
    remote = PoolConfig(roles={"policy": RoleConfig(url="http://127.0.0.1:9", max_model_len=512)})
    assert served_profile(BUNDLED["r1-distill"], remote) == BUNDLED["r1-distill"]


def test_sampling_the_profile_leaves_unset_comes_from_the_checkpoint(tmp_path):
    config = _config(tmp_path, generation={"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20})
    served = served_profile(BUNDLED["qwen-math"], config)
    assert (served.sampling.temperature, served.sampling.top_p) == (0.7, 0.8)
    # The strategies take it as their default; a request's own value still wins.
    spec = REGISTRY["self_consistency"]
    assert (spec.parse({}, profile=served).temperature, spec.parse({"temperature": 0.2}, profile=served).temperature) == (0.7, 0.2)
    # The profile's own values win over the checkpoint's; the bundled profile keeps every strategy's paper default.
    r1 = ModelProfile(max_tokens=64, max_tokens_cap=128, sampling=SamplingProfile(temperature=0.6, top_p=0.95))
    assert served_profile(r1, config).sampling == r1.sampling
    assert served_profile(BUNDLED["bundled"], _config(tmp_path, 512)).sampling.temperature is None
    assert REGISTRY["first_finish"].parse({}, profile=BUNDLED["bundled"]).temperature == 0.6


def test_real_scale_defaults_follow_the_profile():
    r1, bundled = BUNDLED["r1-distill"], BUNDLED["bundled"]
    beam = REGISTRY["beam_search"].parse({}, profile=r1)
    assert (beam.step_tokens, beam.max_steps, beam.max_tokens, beam.temperature, beam.top_p) == (2048, 40, 16384, 0.6, 0.95)
    er = REGISTRY["early_rejection"].parse({}, profile=r1)
    assert (er.tau, er.step_tokens) == (64, 320)
    ets = REGISTRY["ets"].parse({}, profile=r1)
    assert (ets.step_tokens, ets.max_depth) == (256, 25)
    atts = REGISTRY["atts"].parse({"mode": "reference"}, profile=r1)
    assert (atts.chunk, atts.max_turns, atts.retries) == (500, 15, 0)
    assert REGISTRY["single_pass"].parse({}, profile=r1).temperature == 0.6  # R1 is not decoded greedily
    assert REGISTRY["single_pass"].parse({}, profile=bundled).temperature == 0.0
    # The bundled profile's scale is each parameter's class default: nothing changes for the bundled models.
    for name, spec in REGISTRY.items():
        got, default = spec.parse({}, profile=bundled), spec.params()
        assert got.model_dump(exclude={"chunk_tokens"}) == default.model_dump(exclude={"chunk_tokens"}), name
        assert getattr(got, "chunk", None) == getattr(default, "chunk", None), name  # ATTS names its line chunk


def test_a_strategy_runs_in_process_as_a_library():
    calls = []

    async def sink(call):
        calls.append(call)

    ctx = strategy_context(StepEngine(depth=0), Toolbox(verifier=TaskAnswerVerifier()), sink=sink)
    spec = REGISTRY["self_consistency"]
    result = asyncio.run(spec.run(Problem("q\n"), ctx, spec.params(n=4)))
    assert result.answer is not None and len(calls) == 1
    assert ctx.tally.usage.total_tokens == sum(c.usage.total_tokens for c in calls) > 0


def test_the_default_prm_is_eager_and_the_policy_compiled(monkeypatch):
    """The PRM only scores: compiling it costs start time and buys no measurable speed (bench.eager_roles)."""
    from deploy.assembly import pool_config
    from orchestrator.config import get_settings

    roles = pool_config(get_settings()).roles
    assert roles["prm"].enforce_eager and not roles["policy"].enforce_eager and not roles["draft"].enforce_eager
    monkeypatch.setenv("TTS_WORKER_PRM_ENFORCE_EAGER", "false")
    assert not pool_config(get_settings()).roles["prm"].enforce_eager

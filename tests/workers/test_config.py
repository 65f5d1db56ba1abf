"""Workers configuration: the TOML file, environment overrides, and clear errors."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from workers.config import load_pool_config
from workers.embedder import EmbedderSpec
from workers.factory import backend_spec
from workers.local import LocalSpec
from workers.remote import RemoteSpec


def test_file_and_env_overrides(tmp_path):
    f = tmp_path / "workers.toml"
    f.write_text('call_timeout_s = 30\n[roles.policy]\nmodel = "models/target"\nreplicas = 2\n[roles.target]\nurl = "http://127.0.0.1:9"\n')
    cfg = load_pool_config(f, env={"TTS_WORKER_POLICY_REPLICAS": "3", "TTS_WORKER_PRM_MODEL": "models/prm"})
    assert cfg.call_timeout_s == 30
    assert cfg.roles["policy"].replicas == 3 and cfg.roles["policy"].model.is_absolute()
    assert cfg.roles["prm"].model.name == "prm"
    remote = backend_spec("target", cfg.roles["target"])
    assert isinstance(remote, RemoteSpec) and remote.url == "http://127.0.0.1:9" and remote.model == "target"
    local = backend_spec("policy", cfg.roles["policy"])
    assert isinstance(local, LocalSpec) and local.replicas == 3 and local.placement.num_gpus == 0
    assert local.engine.model_path == cfg.roles["policy"].model


def test_a_role_is_pinned_to_nodes_by_custom_resources(tmp_path):
    f = tmp_path / "workers.toml"
    f.write_text('[roles.policy]\nmodel = "models/target"\ngpus = 1\nresources = { gpu_node = 1 }\n[roles.prm]\nmodel = "models/prm"\n')
    cfg = load_pool_config(f, env={})
    policy, prm = backend_spec("policy", cfg.roles["policy"]), backend_spec("prm", cfg.roles["prm"])
    assert isinstance(policy, LocalSpec) and isinstance(prm, LocalSpec)
    assert policy.placement.resources == (("gpu_node", 1.0),) and policy.placement.num_gpus == 1
    assert prm.placement.resources == ()


def test_the_embedder_role_is_an_embedder_backend_on_the_packaged_model():
    cfg = load_pool_config(None, env={}, default_roles={"embedder": {}, "policy": {"model": "models/draft"}})
    spec = backend_spec("embedder", cfg.roles["embedder"])
    assert isinstance(spec, EmbedderSpec) and spec.model_path is not None and spec.model_path.exists()
    assert spec.placement.num_gpus == 0


def test_defaults_without_a_file():
    cfg = load_pool_config(None, env={}, default_roles={"policy": {"model": "models/draft"}})
    assert list(cfg.roles) == ["policy"] and cfg.roles["policy"].max_model_len == 512


@pytest.mark.parametrize(
    "toml, env, match",
    [
        ('[roles.policy]\nmodel = "models/nope"\n', {}, "no Hugging Face model directory"),
        ('[roles.policy]\nmodel = "models/draft"\nurl = "http://x"\n', {}, "exactly one of"),
        ('[roles.policy]\nmodel = "models/draft"\nreplicas = 0\n', {}, "replicas"),
        ('[roles.critic]\nmodel = "models/draft"\n', {}, "critic"),
        ('[roles.policy]\nmodel = "models/draft"\ncolour = "red"\n', {}, "colour"),
        ("[roles.policy\n", {}, "cannot read"),
        ('[roles.policy]\nmodel = "models/draft"\n', {"TTS_WORKER_CRITIC_MODEL": "x"}, "TTS_WORKER_<ROLE>_<KEY>"),
        ('[roles.policy]\nmodel = "models/draft"\n', {"TTS_WORKER_POLICY_SPEED": "9"}, "unknown key 'speed'"),
        ('[roles.policy]\nmodel = "models/draft"\n', {"TTS_WORKER_POLICY_REPLICAS": "many"}, "replicas"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path, toml, env, match):
    f = tmp_path / "workers.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_pool_config(f, env=env)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read workers file"):
        load_pool_config(tmp_path / "absent.toml", env={})


def test_service_refuses_a_configuration_without_a_policy(tmp_path):
    from deploy.assembly import pool_config
    from orchestrator.config import get_settings

    f = tmp_path / "w.toml"
    f.write_text('[roles.prm]\nmodel = "models/prm"\n')
    with pytest.raises(ConfigError, match="no `policy` role"):
        pool_config(get_settings(workers_file=f))


def test_engine_settings_a_workers_file_overrides_are_named_in_a_warning(tmp_path, caplog):
    from deploy.assembly import pool_config
    from orchestrator.config import get_settings

    f = tmp_path / "w.toml"
    f.write_text('[roles.policy]\nmodel = "models/draft"\n')
    with caplog.at_level("WARNING", logger="deploy.serve"):
        cfg = pool_config(get_settings(workers_file=f, model_path="models/target", kv_cache_gib=3, port=9))
    assert cfg.roles["policy"].model.name == "draft"  # the file wins
    warned = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
    assert len(warned) == 1 and "TTS_KV_CACHE_GIB, TTS_MODEL_PATH" in warned[0] and "PORT" not in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="deploy.serve"):
        pool_config(get_settings(model_path="models/target", kv_cache_gib=3))  # no file: the settings are read
    assert not [r for r in caplog.records if "no effect" in r.getMessage()]


def test_engine_options_of_a_role_reach_the_engine_config(tmp_path):
    f = tmp_path / "w.toml"
    f.write_text(
        '[roles.prm]\nmodel = "models/prm"\nrunner = "pooling"\nstep_tag = "<extra_0>"\ntensor_parallel_size = 2\n'
        'quantization = "fp8"\ntrust_remote_code = true\nmax_logprobs = 40\nblock_size = 64\n'
        '[roles.policy]\nmodel = "models/target"\n'
    )
    cfg = load_pool_config(f, env={"TTS_WORKER_POLICY_RUNNER": "generate"})
    prm, policy = backend_spec("prm", cfg.roles["prm"]), backend_spec("policy", cfg.roles["policy"])
    assert isinstance(prm, LocalSpec) and isinstance(policy, LocalSpec)
    e = prm.engine
    assert (e.runner, e.step_tag, e.tensor_parallel_size, e.quantization, e.trust_remote_code, e.max_logprobs, e.block_size) == (
        "pooling", "<extra_0>", 2, "fp8", True, 40, 64
    )  # fmt: skip
    assert policy.engine.dtype == "auto" and policy.engine.block_size is None and policy.engine.max_logprobs is None
    assert cfg.roles["prm"].serves_pooling() and not cfg.roles["policy"].serves_pooling()


def test_dtype_auto_is_the_checkpoints_own_on_cpu(tmp_path):
    from pathlib import Path

    from workers.engine import EngineConfig, resolve_dtype

    target = Path(__file__).resolve().parents[2] / "models" / "target"
    assert resolve_dtype(EngineConfig(model_path=target), cpu=True) == "float32"  # the bundled config says float32
    assert resolve_dtype(EngineConfig(model_path=target), cpu=False) == "auto"  # vLLM's choice on GPUs
    assert resolve_dtype(EngineConfig(model_path=target, dtype="bfloat16"), cpu=True) == "bfloat16"
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    assert resolve_dtype(EngineConfig(model_path=tmp_path), cpu=True) == "bfloat16"


def test_a_pooling_checkpoint_is_recognised_without_a_runner(tmp_path):
    from workers.config import RoleConfig

    (tmp_path / "config.json").write_text('{"architectures": ["Qwen2ForProcessRewardModel"]}')
    assert RoleConfig(model=tmp_path).serves_pooling()
    assert not RoleConfig(model=tmp_path, runner="generate").serves_pooling()
    assert RoleConfig(url="http://x", runner="pooling").serves_pooling() and not RoleConfig(url="http://x").serves_pooling()


@pytest.mark.parametrize(
    "toml, match",
    [
        ('[roles.prm]\nmodel = "models/prm"\nrunner = "score"\n', "runner"),
        ('[roles.prm]\nmodel = "models/prm"\nblock_size = 20\n', "multiple of 16"),
        ('[roles.prm]\nmodel = "models/prm"\nmax_logprobs = 5\n', "max_logprobs"),
    ],
)
def test_bad_engine_options_are_clear_errors(tmp_path, toml, match):
    f = tmp_path / "w.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_pool_config(f, env={})


def test_a_pooling_role_leaves_prefix_caching_to_vllm(tmp_path):
    f = tmp_path / "w.toml"
    f.write_text('[roles.prm]\nmodel = "models/prm"\nrunner = "pooling"\n[roles.policy]\nmodel = "models/target"\n')
    cfg = load_pool_config(f, env={})
    assert backend_spec("prm", cfg.roles["prm"]).engine.enable_prefix_caching is None
    assert backend_spec("policy", cfg.roles["policy"]).engine.enable_prefix_caching is True


def test_cpu_engines_default_to_small_kv_blocks():
    """A role that names no block size gets CPU_BLOCK_SIZE on CPU (vLLM-CPU's own 128 shares no prefix shorter
    than 128 tokens); it is one the CPU attention backend takes. A role's own block size goes through."""
    from workers.config import CPU_BLOCK_SIZE

    assert CPU_BLOCK_SIZE % 32 == 0 and CPU_BLOCK_SIZE < 128
    cfg = load_pool_config(None, env={"TTS_WORKER_PRM_BLOCK_SIZE": "64"}, default_roles={"policy": {"model": "models/draft"}, "prm": {"model": "models/prm"}})
    policy, prm = backend_spec("policy", cfg.roles["policy"]), backend_spec("prm", cfg.roles["prm"])
    assert isinstance(policy, LocalSpec) and policy.engine.block_size is None  # resolved by the engine, which knows its device
    assert isinstance(prm, LocalSpec) and prm.engine.block_size == 64

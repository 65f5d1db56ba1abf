"""Service settings: environment variables prefixed ``TTS_`` (``DATABASE_URL`` also works unprefixed)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_", extra="ignore")

    data_dir: Path = Field(REPO_ROOT / "data", description="Folder for the embedded SQLite database and logs.")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "TTS_DATABASE_URL"),
        description="SQLAlchemy URL; default: SQLite file tts.db under data_dir.",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP API binds to (loopback by default).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    model_path: Path = Field(REPO_ROOT / "models" / "target", description="Hugging Face directory of the policy.")
    model_name: str = Field("target", description="Name callers use in the request's `model` field.")
    prm_path: Path = Field(REPO_ROOT / "models" / "prm", description="Hugging Face directory of the process reward model (role `prm`).")
    draft_path: Path = Field(REPO_ROOT / "models" / "draft", description="Hugging Face directory of the draft model (role `draft`, for atts).")
    draft_name: str = Field("draft", description="Name of the draft model in calibration set names (`<draft>-><model>/<dataset>`).")
    serve_draft: bool = Field(True, description="Serve the draft model (role `draft`) for atts; off saves an engine.")
    serve_prm: bool = Field(
        True, description="Serve the PRM (and the outcome judge on it) for best_of_n, beam_search and rebase; off saves an engine."
    )
    serve_embedder: bool = Field(
        True, description="Serve the packaged sentence embedder (role `embedder`): step clustering for ets; off saves an actor."
    )
    clusterer: Literal["embedder", "lexical"] = Field(
        "embedder",
        description="How ets clusters steps: `embedder` (the `embedder` role's sentence embeddings) or `lexical` (TF-IDF of "
        "the steps' character n-grams, no model: no embedder is served).",
    )
    profile: str = Field(
        "bundled",
        description="How the policy writes (answer format, reasoning tags, step delimiter, default lengths): a bundled "
        "profile (`bundled`, `r1-distill`, `qwen-math`) or a TOML file (see orchestrator/profile.py).",
    )
    refiner: Literal["task", "countdown", "text"] | None = Field(
        None,
        description="PDR/SR workspace format: the v1 bundled task's (what its target was trained on), Countdown's (what the v2 "
        "target was refine-tuned on, through its chat template) or plain text through the policy's chat template; default: "
        "`task` for a profile with `task` answers, else `text`.",
    )
    kv_cache_gib: int = Field(1, ge=1, description="KV-cache memory per CPU engine, whole GiB (VLLM_CPU_KVCACHE_SPACE).")
    max_model_len: int = Field(512, ge=16, description="Longest prompt + completion, in tokens.")
    workers_file: Path | None = Field(
        None,
        description="TOML file of model roles and their engines (see workers/config.py); default: `model_path` as the policy. "
        "With a file, the engine settings (model, PRM and draft paths, serve_*, kv_cache_gib, max_model_len, call_timeout_s) are not read.",
    )
    call_timeout_s: float = Field(600.0, gt=0, description="Deadline of one engine call, its one retry included.")
    ray_address: str | None = Field(None, description="Existing Ray cluster to join; default: start a local one.")
    start_order: Literal["policy_first", "together", "all"] = Field(
        "policy_first",
        description="When the API starts serving and how the engines load: `policy_first` serves once the policy's engines "
        "are ready and loads the other roles (draft, prm, judge, embedder) after them (on shared cores the policy then "
        "loads alone); `together` serves at the same point but loads every role at once (engines on separate machines); "
        "`all` serves once every engine is ready. Meanwhile a strategy whose role is loading answers 503 with Retry-After; "
        "GET /healthz lists each engine's state.",
    )
    default_strategy: str = Field("self_consistency", description="Strategy used when a request names none.")
    max_request_tokens: int = Field(200_000, ge=1, description="Ceiling on any one request's total tokens.")
    require_api_key: bool = Field(
        False,
        description="Refuse requests without a tenant's API key (401); otherwise keyless requests run unmetered. "
        "Always on when the server listens beyond loopback.",
    )
    metrics_key: SecretStr | None = Field(
        None,
        description="Bearer token Prometheus sends for GET /metrics while API keys are in force (beyond loopback, or "
        "TTS_REQUIRE_API_KEY); without it /metrics then answers 401. Tenants' keys do not open it: the metrics are "
        "the whole server's.",
    )
    jobs_address: str = Field("http://127.0.0.1:8265", description="Ray job server (the Ray dashboard) that POST /v1/jobs submits to.")
    max_running: int = Field(64, ge=1, description="Requests running strategies at once; more wait in the queue.")
    max_queued: int = Field(256, ge=0, description="Requests waiting for a run slot; beyond it, 429 with Retry-After.")
    server_id: str | None = Field(
        None,
        description="This server's name in the database's server leases; default: `<hostname>:<port>`. A server that "
        "restarts under the same id fails at once what its previous run left unfinished; give each API replica its own.",
    )
    lease_s: float = Field(
        30.0, ge=1, description="Server lease: heartbeat every lease/3 s; a server silent for longer is dead and its unfinished requests are failed."
    )
    keep_alive_s: int = Field(
        65,
        ge=1,
        description="Seconds an idle HTTP keep-alive connection stays open. Longer than clients' own idle expiry "
        "(httpx and the openai SDK: 5 s), so that a client never reuses a connection the server is closing.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body (413 beyond it).")
    limit_width: int = Field(64, ge=1, description="Most samples, beams or tree width of a request (`n`, `width`, PDR schedule entries).")
    limit_depth: int = Field(64, ge=1, description="Most rounds, turns, steps or tree depth of a request.")
    budget_mode: Literal["live", "reserve"] = Field(
        "live",
        description="How budgets admit generation: `live` meters tokens as they stream (calls keep their natural `max_tokens`; "
        "the engine ends sequences when the budget runs out); `reserve` reserves every call's worst case and cuts `max_tokens` to fit.",
    )
    limit_max_tokens: int | None = Field(
        None, ge=1, description="Most tokens of one generation, step or chunk (`max_tokens`, `step_tokens`, `chunk_tokens`); default: the model profile's `max_tokens_cap`."
    )

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tts.db'}"


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (nothing is read at import)."""
    return Settings(**overrides)  # type: ignore[arg-type]

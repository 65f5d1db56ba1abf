"""Request and response bodies of the API: OpenAI's shapes plus the service's extension fields, and the native
endpoints' views. Responses are built from these (see api/views.py), never from database rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from orchestrator.types import RequestState, Role


class ContentPart(BaseModel):
    """One part of a message's ``content`` array. Only text parts are served (the models read text); the
    route refuses any other ``type`` by name, which is why ``type`` is not a literal here."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=100, description="`text`; other part types (`image_url`, `input_audio`, `file`, ...) are refused.")
    text: str | None = Field(None, description="The text of a `text` part.")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"] = Field(description="`developer` is taken as `system`.")
    content: str | list[ContentPart] | None = Field(description="A string, or an array of text parts (joined by newlines).")


class BudgetBody(BaseModel):
    """Limits on one request, enforced on every engine call (see orchestrator/budget.py)."""

    model_config = ConfigDict(extra="forbid")

    total_tokens: int | None = Field(None, gt=0, description="Prompt + completion tokens of every sub-call, scoring included.")
    sequential_tokens: int | None = Field(None, gt=0, description="Longest chain of dependent generated tokens.")
    cost_usd: float | None = Field(None, gt=0, description="Dollars, from the price table.")
    deadline_s: float | None = Field(None, gt=0, description="Seconds; no new engine call starts after it.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send the whole request's usage in a last chunk with no choices.")


MODEL_DESCRIPTION = "A served model (`target`), or `<strategy>:<model>` (e.g. `ets:target`) to name the strategy too."
EXAMPLE_PARAMS = {"n": 4, "max_tokens": 64}


class ReasoningFields(BaseModel):
    """What every reasoning endpoint takes besides the prompt. Unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description=MODEL_DESCRIPTION, max_length=300)
    strategy: str | None = Field(None, description="Strategy name, or `auto`; default: the model name's prefix, else the server's default.", max_length=100)
    strategy_params: dict[str, Any] = Field(default_factory=dict, description="The strategy's parameters (see the README).")
    max_total_tokens: int | None = Field(None, description="Budget: prompt + completion tokens over all sub-calls.")
    budget: BudgetBody | None = Field(None, description="Every budget limit (total/sequential tokens, dollars, deadline).")


# Seeds are offset per sample and per round by the strategies, and end as a 64-bit engine seed: this leaves room.
MAX_SEED = 2**62


class OpenAIFields(ReasoningFields):
    """OpenAI's fields. The sampling ones set the strategy's parameter of the same name (see api/sampling.py)."""

    n: int = Field(1, description="Choices returned; only 1 (the strategy's answer) is supported.")
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens per sample: the strategy's `max_tokens`.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="The strategy's `temperature`.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="The strategy's `top_p`.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="The strategy's `seed` (each sample's engine seed is offset from it).")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings that end every sample the strategy generates (as the model profile's stop strings do); counted in `tts.info.stop`."
    )
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Only 0: no strategy applies penalties.")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Only 0: no strategy applies penalties.")
    stream: bool = Field(False, description="Server-sent events: progress while the strategy runs, then the answer.")
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(OpenAIFields):
    """OpenAI's chat request. Extension fields (send them with the SDK's ``extra_body``): ``strategy``,
    ``strategy_params``, ``max_total_tokens`` and ``budget``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "target", "messages": [{"role": "user", "content": "Start at 3 and apply +4, *2."}], "strategy_params": EXAMPLE_PARAMS}
            ]
        },
    )

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="The same as `max_tokens` (OpenAI's newer name).")


class CompletionRequest(OpenAIFields):
    """OpenAI's (legacy) completion request: the prompt is sent to the model as it is, no chat template."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "self_consistency:target", "prompt": "Start at 3 and apply +4, *2.\n", "strategy_params": EXAMPLE_PARAMS}]},
    )

    prompt: str | list[str] = Field(description="The prompt; a list must hold exactly one.")


class ReasonRequest(ReasoningFields):
    """The native endpoint: ``messages`` (chat template applied) or ``prompt`` (sent as it is), not both."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "target", "strategy": "beam_search", "prompt": "Start at 3 and apply +4, *2.\n", "strategy_params": EXAMPLE_PARAMS}]},
    )

    messages: list[Message] | None = Field(None, min_length=1)
    prompt: str | None = None


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = Field(
        None,
        description="With a reasoning model profile (`TTS_PROFILE`, reasoning `think`): the reasoning span, `content` being "
        "what follows it (null when there is none). Absent for models that do not reason in a span.",
    )

    # Unannotated on purpose: a return annotation would replace this model's schema in the OpenAPI document.
    @model_serializer(mode="wrap")
    def _omit_reasoning_unless_set(self, handler):  # type: ignore[no-untyped-def]
        # Clients of models without a reasoning span see OpenAI's message exactly, without a null key.
        out = handler(self)
        if "reasoning_content" not in self.model_fields_set:
            out.pop("reasoning_content", None)
        return out


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: Literal["stop", "length", "budget"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class StageUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class UsageBody(BaseModel):
    """OpenAI's usage (policy and draft generation: what the answer cost to write), plus the service's
    accounting of everything else: scoring tokens, the longest dependent chain, dollars, and the split by
    model role and strategy stage. Summed over ``by_role``, the tokens are exactly the request's ledger."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    verifier_tokens: int = Field(0, description="Tokens read by verifiers (PRM, judge, target scoring in atts).")
    all_tokens: int = Field(0, description="total_tokens + verifier_tokens: everything the request was charged.")
    sequential_tokens: int = Field(0, description="Prompt + completion tokens along the longest chain of dependent calls.")
    cost_usd: float = Field(0.0, description="Dollars from the price table (0 without prices).")
    by_role: dict[str, StageUsage] = Field(default_factory=dict, description="Usage per model role (policy, draft, prm, ...).")
    by_stage: dict[str, StageUsage] = Field(default_factory=dict, description="Usage per strategy stage.")


class CandidateBody(BaseModel):
    text: str
    answer: str | None = Field(description="The candidate's answer as the model wrote it (whitespace collapsed); null when it has none.")
    answer_key: str | None = Field(None, description="The answer's vote key: candidates with equal keys voted together.")
    completion_tokens: int
    finish_reason: str
    score: float | None = Field(None, description="The verifier's score of this candidate, when the strategy scored it.")


class QuotaBody(BaseModel):
    """The tenant's daily quota had less left than this request could spend: its token budget was cut to it."""

    wanted: int = Field(description="Tokens the request could at most spend (its worst case, prompt included).")
    granted: int = Field(description="Tokens today's remainder granted: the request's token budget.")
    tokens_per_day: int | None = Field(description="The tenant's daily quota.")


class TTSInfo(BaseModel):
    """What the strategy did: the answer it settled on, its candidates and the sub-calls it made."""

    request_id: str
    strategy: str
    answer: str | None = Field(description="The chosen answer as the model wrote it (`\\boxed{23.28}` shows `23.28`); null when it has none.")
    answer_key: str | None = Field(None, description="The chosen answer's vote key (math-verify's canonical form: `23.28` keys `582/25`).")
    subcalls: int
    latency_s: float
    verifier_tokens: int = Field(0, description="Tokens scored by verifiers (PRM, judge); counted against the budget.")
    cost_usd: float = Field(0.0, description="Dollar cost from the price table (0 when no price is set).")
    sequential_tokens: int = Field(0, description="Prompt + completion tokens along the longest chain of dependent calls.")
    usage_by_stage: dict[str, StageUsage] = Field(default_factory=dict, description="Policy and verifier usage by strategy stage.")
    usage_by_role: dict[str, StageUsage] = Field(default_factory=dict, description="Policy and verifier usage by model role.")
    candidates: list[CandidateBody]
    trace: list[dict[str, Any]] = Field(default_factory=list, description="Rounds, search steps or tree nodes, in order, with scores.")
    info: dict[str, Any]
    events: list[dict[str, Any]] = Field(default_factory=list, description="The strategy's progress events, in order.")
    quota: QuotaBody | None = Field(None, description="Set when the tenant's remaining daily quota shaped this request's budget.")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageBody
    tts: TTSInfo


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length", "budget"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageBody
    tts: TTSInfo


class ReasonResponse(TTSInfo):
    """Everything about one request: the answer and the whole trace."""

    model: str
    text: str
    finish_reason: Literal["stop", "length", "budget"]
    usage: UsageBody


class SubCallView(BaseModel):
    """One engine call of a request, as the ledger recorded it."""

    seq: int
    stage: str
    role: str
    branch: str
    n: int = Field(description="Samples the call asked for.")
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int = Field(description="Tokens generated by all ``n`` samples of the call.")
    verifier_tokens: int = Field(description="Tokens scored (non-zero for PRM, judge and target-scoring calls only).")
    finish_reasons: list[str] = Field(description="Each sample's finish reason, in order.")
    latency_s: float


class RequestView(BaseModel):
    """A recorded request as the ledger holds it."""

    id: str
    state: RequestState
    model: str
    strategy: str
    params: dict[str, Any]
    answer: str | None
    text: str | None
    finish_reason: str | None
    error: str | None
    usage: UsageBody
    subcalls: int
    calls: list[SubCallView] | None = Field(None, description="Its sub-calls in order (`GET /v1/requests/{id}` only; null in lists).")
    created_at: str
    finished_at: str | None


class RequestList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RequestView]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "tts"
    chat_template: bool = Field(
        True, description="Whether the model renders chat messages; without a template only /v1/completions (a raw prompt) serves it."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(description="What this server can run now: the models, and every `<strategy>:<model>` whose engines are ready.")
    loading: list[str] = Field(
        default_factory=list,
        description="`<strategy>:<model>` ids this server will run once the engines they need have loaded (GET /healthz: which).",
    )


class EngineView(BaseModel):
    name: str = Field(description="The replica, `<role>-<index>`.")
    role: Role
    state: Literal["loading", "ready", "failed"]
    since_s: float = Field(description="Seconds from the start of loading to ready or failed (while loading: to now).")
    error: str = Field("", description="Why it failed to start.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]
    strategies: list[str]
    engines: list[EngineView] = Field(default_factory=list, description="Every engine replica and its state; the API serves once the policy's are ready.")
    ready: bool = Field(True, description="Every engine is ready (none loading or failed).")
    no_chat_template: list[str] = Field(default_factory=list, description="Served models without a chat template (chat requests to them are a 400).")


class JobRequest(BaseModel):
    """A grid: every strategy at every budget, over a dataset of a bundled task."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"strategies": ["self_consistency"], "budgets": [500], "problems": 5}]})

    strategies: list[str] = Field(min_length=1, max_length=20)
    budgets: list[int] = Field(default_factory=list, max_length=20, description="max_total_tokens per problem; none: unbudgeted.")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Parameters per strategy name.")
    dataset: str = Field(
        "task:test", pattern=r"^(task|countdown):(train|dev|test)$",
        description="A split of a bundled task: `task` (the v1 family's chained arithmetic) or `countdown` (the v2 family's).",
    )
    problems: int = Field(30, ge=1, le=5000)
    seed: int = Field(0, ge=0)
    name: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$", description="Grid name (resubmitting resumes).")
    concurrency: int = Field(4, ge=1, le=64)


class JobSubmitted(BaseModel):
    id: str
    status: Literal["PENDING"] = "PENDING"


class JobProgress(BaseModel):
    """Problems answered so far over every run of the job, out of those planned."""

    done: int
    planned: int
    runs: int


class JobRun(BaseModel):
    """One (strategy, parameters, budget) run of the job's grid."""

    id: str
    strategy: str
    params: dict[str, Any]
    budget: int | None
    state: str
    done: int
    planned: int


class JobView(BaseModel):
    """An evaluation job: its status from the job server, its progress from the results stored so far."""

    id: str
    status: str = Field(description="The job server's: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED.")
    message: str
    entrypoint: str
    progress: JobProgress
    runs: list[JobRun]


class EvalPoint(BaseModel):
    """One evaluation run, summarised: what the dashboard plots."""

    label: str
    run_id: str
    problems: int = Field(description="Problems with a stored result.")
    accuracy: float
    ci95: tuple[float, float] = Field(description="Wilson 95% interval of the accuracy.")
    mean_tokens: float
    mean_sequential_tokens: float
    mean_cost_usd: float
    mean_latency_s: float
    by_level: dict[int, float] = Field(description="Accuracy per difficulty level.")
    skipped: int
    strategy: str
    params: dict[str, Any]
    budget: int | None
    grid: str
    dataset: str
    model: str
    state: str
    planned: int
    job_id: str | None


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalPoint]


class TenantUsage(BaseModel):
    """One tenant's usage from the ledger (keyless requests under ``(keyless)``)."""

    tenant: str
    requests: int
    running: int
    tokens: int
    verifier_tokens: int
    cost_usd: float


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TenantUsage]

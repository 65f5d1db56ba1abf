"""Request and response bodies of the OpenAI-compatible endpoint, plus the service's extension fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str


class BudgetBody(BaseModel):
    """Limits on one request, enforced on every engine call (see orchestrator/budget.py)."""

    model_config = ConfigDict(extra="forbid")

    total_tokens: int | None = Field(None, gt=0, description="Prompt + completion tokens of every sub-call, scoring included.")
    sequential_tokens: int | None = Field(None, gt=0, description="Longest chain of dependent generated tokens.")
    cost_usd: float | None = Field(None, gt=0, description="Dollars, from the price table.")
    deadline_s: float | None = Field(None, gt=0, description="Seconds; no new engine call starts after it.")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request; unknown OpenAI fields are ignored. Extension fields (send them with the SDK's
    ``extra_body``): ``strategy``, ``strategy_params``, ``max_total_tokens`` and ``budget``."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, description="Choices returned; only 1 (the strategy's answer) is supported.")
    stream: bool = False
    strategy: str | None = Field(None, description="Strategy name; default: the server's default strategy.")
    strategy_params: dict[str, Any] = Field(default_factory=dict, description="The strategy's parameters.")
    max_total_tokens: int | None = Field(None, description="Budget: prompt + completion tokens over all sub-calls.")
    budget: BudgetBody | None = Field(None, description="Every budget limit (total/sequential tokens, dollars, deadline).")


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: Literal["stop", "length", "budget"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CandidateBody(BaseModel):
    text: str
    answer: str | None
    completion_tokens: int
    finish_reason: str
    score: float | None = Field(None, description="The verifier's score of this candidate, when the strategy scored it.")


class StageUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class TTSInfo(BaseModel):
    """What the strategy did: the answer it settled on, its candidates and the sub-calls it made."""

    request_id: str
    strategy: str
    answer: str | None
    subcalls: int
    latency_s: float
    verifier_tokens: int = Field(0, description="Tokens scored by verifiers (PRM, judge); counted against the budget.")
    cost_usd: float = Field(0.0, description="Dollar cost from the price table (0 when no price is set).")
    sequential_tokens: int = Field(0, description="Prompt + completion tokens along the longest chain of dependent calls.")
    usage_by_stage: dict[str, StageUsage] = Field(default_factory=dict, description="Policy and verifier usage by strategy stage.")
    candidates: list[CandidateBody]
    trace: list[dict[str, Any]] = Field(default_factory=list, description="Rounds, search steps or tree nodes, in order, with scores.")
    info: dict[str, Any]


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

"""OpenAI's sampling fields as the strategy's parameters.

An unmodified OpenAI client steers sampling with top-level fields (``max_tokens``, ``temperature``, ...), not
with ``strategy_params``. Each such field sets the strategy's parameter of the same meaning when the strategy's
``Params`` has one. A field the strategy cannot honour, or one that contradicts ``strategy_params``, is a 400
naming it, never silently dropped. A field at OpenAI's own default value is what many clients send whether or
not anyone chose it, so it is never refused for that: it sets the parameter only where nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import BaseModel

from api.schemas import ChatCompletionRequest, OpenAIFields
from orchestrator.errors import InvalidRequest


@dataclass(frozen=True)
class SamplingField:
    """One OpenAI field: the strategy parameter it sets and OpenAI's default (what "routinely sent" means)."""

    name: str
    param: str
    default: object = None


FIELDS = (
    SamplingField("max_tokens", "max_tokens"),
    SamplingField("temperature", "temperature", 1.0),
    SamplingField("top_p", "top_p", 1.0),
    SamplingField("seed", "seed"),
    SamplingField("presence_penalty", "presence_penalty", 0.0),
    SamplingField("frequency_penalty", "frequency_penalty", 0.0),
)


def _sent(body: OpenAIFields) -> dict[str, tuple[SamplingField, object]]:
    """The sampling fields the body carries, by OpenAI name (``max_completion_tokens`` folded into ``max_tokens``)."""
    out = {f.name: (f, getattr(body, f.name)) for f in FIELDS if getattr(body, f.name) not in (None, [], "")}
    newer = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
    if newer is not None:
        older = out.get("max_tokens")
        if older is not None and older[1] != newer:
            raise InvalidRequest(
                f"max_completion_tokens={newer} and max_tokens={older[1]} disagree; send one of them", param="max_completion_tokens"
            )
        out["max_tokens"] = (SamplingField("max_completion_tokens", "max_tokens"), newer)
    return out


def strategy_params(body: OpenAIFields, strategy: str, params_model: type[BaseModel] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """``body.strategy_params`` with the body's OpenAI sampling fields applied, for strategy ``strategy``
    whose parameters are ``params_model`` (None for ``auto``, which chooses its own, or an unknown strategy,
    which the controller refuses); and the parameters the OpenAI fields set, each with its field's name, so
    that the controller, which validates them, names the field the client sent in an error.

    Raises ``InvalidRequest`` naming the OpenAI field for a value the strategy has no parameter for, or one
    that contradicts the same parameter in ``strategy_params``."""
    given: Mapping[str, Any] = body.strategy_params
    params = dict(given)
    filled: dict[str, str] = {}  # parameter -> the OpenAI field that set it
    for field, value in _sent(body).values():
        routine = value == field.default
        if params_model is None:
            if routine or strategy != "auto":
                continue
            raise InvalidRequest(f"{field.name}: strategy `auto` chooses its own sampling parameters; send no {field.name}", param=field.name)
        if field.param not in params_model.model_fields:
            if routine:
                continue
            raise InvalidRequest(f"{field.name}={value!r}: strategy {strategy!r} has no `{field.param}` parameter", param=field.name)
        if field.param in given:
            if routine or given[field.param] == value:
                continue
            raise InvalidRequest(
                f"{field.name}={value!r} conflicts with strategy_params.{field.param}={given[field.param]!r}; send one of them",
                param=field.name,
            )
        params[field.param] = value
        filled[field.param] = field.name
    return params, filled

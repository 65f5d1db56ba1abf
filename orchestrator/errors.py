"""Every error the service raises on purpose, in one tree.

    TTSError
    ├── InvalidRequest          the caller's input is wrong (HTTP 400)
    │   ├── UnknownStrategy     no strategy by that name
    │   ├── ContextTooLong      a prompt does not fit a model role's context window
    │   ├── NoChatTemplate      chat messages for a model whose tokenizer has no chat template
    │   ├── UnknownModel        no served model by that name (HTTP 404)
    │   ├── NotFound            no such request (or not the caller's: same answer, to hide it) (HTTP 404)
    │   ├── Conflict            the request is not in a state that allows this (HTTP 409)
    │   └── TooLarge            the request body is over the server's limit (HTTP 413)
    ├── BudgetExceeded          a call would cross the request's budget (strategies catch it)
    ├── QuotaExceeded           the tenant's daily tokens or concurrent requests are used up (HTTP 429)
    │   └── Overloaded          the server's queue is full (HTTP 429)
    ├── Unauthorized            a missing or unknown API key where one is required (HTTP 401)
    ├── EngineError             a worker or its engine failed a call (HTTP 502)
    │   ├── WorkerDied          the worker process or its engine died mid-call (retryable on another replica)
    │   ├── EngineTimeout       a call ran past its deadline and was aborted (HTTP 504)
    │   └── EngineUnavailable   no worker serves the role asked for (HTTP 503)
    │       └── EngineLoading   the role's engines are still loading; try again after Retry-After
    ├── StrategyError           a strategy broke its contract (HTTP 500)
    └── ConfigError             the service's own configuration is wrong (refuses to start)

The API maps the tree to HTTP statuses in one handler; nothing below the API knows about HTTP.
"""

from __future__ import annotations


class TTSError(Exception):
    """Base of every deliberate error. ``message`` is safe to show to the caller."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after  # seconds a client should wait before trying again (HTTP Retry-After)


class InvalidRequest(TTSError):
    status = 400
    code = "invalid_request"


class UnknownStrategy(InvalidRequest):
    code = "unknown_strategy"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class NoChatTemplate(InvalidRequest):
    code = "no_chat_template"


class UnknownModel(InvalidRequest):
    status = 404
    code = "model_not_found"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class Conflict(InvalidRequest):
    status = 409
    code = "conflict"


class TooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class BudgetExceeded(TTSError):
    status = 429
    code = "budget_exceeded"


class QuotaExceeded(TTSError):
    status = 429
    code = "quota_exceeded"


class Overloaded(QuotaExceeded):
    code = "server_overloaded"


class Unauthorized(TTSError):
    status = 401
    code = "invalid_api_key"


class EngineError(TTSError):
    status = 502
    code = "engine_error"

    def __init__(self, message: str, *, worker: str = "", param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{worker}: {message}" if worker else message, param=param, retry_after=retry_after)
        self.worker = worker


class WorkerDied(EngineError):
    code = "worker_died"


class EngineTimeout(EngineError):
    status = 504
    code = "engine_timeout"


class EngineUnavailable(EngineError):
    status = 503
    code = "engine_unavailable"


class EngineLoading(EngineUnavailable):
    code = "engine_loading"


class StrategyError(TTSError):
    status = 500
    code = "strategy_error"


class ConfigError(TTSError):
    code = "config_error"

"""Prometheus metrics of one service process, in a registry of its own (several services in one process,
as in tests, do not collide). Served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orchestrator.types import SubCall

# Requests on the bundled models take 0.1 s to a minute; real models up to many minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tts_requests", "Reasoning requests by strategy and final state.", ["strategy", "state"], registry=self.registry)
        self.rejected = Counter("tts_rejected_requests", "Requests refused before any compute, by reason (HTTP status).", ["status"], registry=self.registry)
        self.tokens = Counter(
            "tts_tokens", "Tokens of every engine sub-call, by model role and kind (prompt, cached, completion).", ["role", "kind"], registry=self.registry
        )
        self.subcalls = Counter("tts_subcalls", "Engine sub-calls by role and stage.", ["role", "stage"], registry=self.registry)
        self.latency = Histogram("tts_request_latency_seconds", "Request latency, admission to answer.", ["strategy"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("tts_queue_depth", "Requests admitted and waiting for a run slot.", registry=self.registry)
        self.running = Gauge("tts_requests_running", "Requests running a strategy now.", registry=self.registry)

    def subcall(self, call: SubCall) -> None:
        u = call.usage
        self.tokens.labels(call.role, "prompt").inc(u.prompt_tokens)
        self.tokens.labels(call.role, "cached").inc(u.cached_tokens)
        self.tokens.labels(call.role, "completion").inc(u.completion_tokens)
        self.subcalls.labels(call.role, call.stage).inc()

    def finished(self, strategy: str, state: str, latency_s: float) -> None:
        self.requests.labels(strategy, state).inc()
        self.latency.labels(strategy).observe(latency_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

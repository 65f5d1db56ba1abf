"""What a client sees while the server's optional engines load, and of a model without a chat template.

The server serves once its policy is ready: a strategy whose role is still loading answers 503 with
Retry-After (not a 400: the server will have it), one whose role failed to start a 503 without it, and
`/healthz`, `GET /v1/models` say which. A model whose tokenizer has no chat template answers chat requests
with a 400 that names it and points to /v1/completions, which serves it. The app is the real one on a real
SQLite ledger; the engine is the scripted one of the strategy tests; engine states are set by the test."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from orchestrator.config import get_settings
from orchestrator.controller import Controller
from orchestrator.db.store import Store
from orchestrator.errors import NoChatTemplate
from orchestrator.toolbox import Toolbox
from orchestrator.types import EngineState, EngineStatus, Role
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine
from verifiers import TaskAnswerVerifier

QUESTION = [{"role": "user", "content": "Start at 3 and apply +4."}]
TARGET = Path(__file__).resolve().parents[2] / "models" / "target"


@dataclass
class States:
    """Engine states as the pool reports them, set by the test."""

    roles: dict[Role, EngineState] = field(default_factory=lambda: {"policy": "ready", "prm": "loading"})

    def role_state(self, role: Role) -> EngineState | None:
        return self.roles.get(role)

    def retry_after(self, role: Role) -> float:
        return 42.0

    def status(self) -> list[EngineStatus]:
        return [EngineStatus(name=f"{r}-0", role=r, state=s, since_s=3.0, error="boom" if s == "failed" else "") for r, s in self.roles.items()]


class PRM:
    async def step_scores(self, engine, question, solution):
        return tuple(0.5 for _ in solution.split("\n"))


class NoTemplateEngine(StepEngine):
    async def render_chat(self, role, messages):
        raise NoChatTemplate("models/base has no chat template")


def _app(tmp_path, *, states: States | None = None, engine=None, no_chat_template=()):
    store = Store.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    tools = Toolbox(verifier=TaskAnswerVerifier(), step_scorer=PRM(), roles={"prm": "prm"}, engines=states)
    controller = Controller(
        engine=engine or StepEngine(depth=1), store=store, strategies=REGISTRY, tools=tools, models={"target": "policy"},
        max_request_tokens=10_000, budget_mode="reserve", no_chat_template=no_chat_template,
    )
    return create_app(get_settings(data_dir=tmp_path), controller)


def _calls(app, *calls):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return [await c.request(method, path, json=body) for method, path, body in calls]

    return asyncio.run(go())


def _chat(strategy: str, **params) -> tuple[str, str, dict]:
    return ("POST", "/v1/chat/completions", {"model": "target", "messages": QUESTION, "strategy": strategy, "strategy_params": params})


def test_a_strategy_whose_engine_is_loading_is_a_503_with_retry_after_and_says_so(tmp_path):
    states = States()
    app = _app(tmp_path, states=states)
    loading, served, health, models = _calls(app, _chat("best_of_n", n=2), _chat("self_consistency", n=2), ("GET", "/healthz", None), ("GET", "/v1/models", None))
    assert loading.status_code == 503 and loading.headers["Retry-After"] == "42"
    error = loading.json()["error"]
    assert error["code"] == "engine_loading" and "prm (role `prm`)" in error["message"] and "still loading" in error["message"]
    assert served.status_code == 200, served.text  # the policy's strategies are served meanwhile

    h = health.json()
    assert h["status"] == "ok" and h["ready"] is False
    assert {e["name"]: e["state"] for e in h["engines"]} == {"policy-0": "ready", "prm-0": "loading"}
    ids, waiting = {m["id"] for m in models.json()["data"]}, set(models.json()["loading"])
    assert "self_consistency:target" in ids and "best_of_n:target" not in ids and "best_of_n:target" in waiting

    states.roles["prm"] = "ready"
    ready, health, models = _calls(app, _chat("best_of_n", n=2), ("GET", "/healthz", None), ("GET", "/v1/models", None))
    assert ready.status_code == 200, ready.text
    assert health.json()["ready"] is True
    assert "best_of_n:target" in {m["id"] for m in models.json()["data"]} and models.json()["loading"] == []


def test_a_strategy_whose_engine_failed_to_start_is_a_503_without_retry_after(tmp_path):
    app = _app(tmp_path, states=States({"policy": "ready", "prm": "failed"}))
    failed, health = _calls(app, _chat("best_of_n", n=2), ("GET", "/healthz", None))
    assert failed.status_code == 503 and "Retry-After" not in failed.headers
    assert failed.json()["error"]["code"] == "engine_unavailable" and "failed to start" in failed.json()["error"]["message"]
    assert {e["name"]: (e["state"], e["error"]) for e in health.json()["engines"]}["prm-0"] == ("failed", "boom")


def test_a_strategy_the_server_lacks_is_still_a_400(tmp_path):
    [missing] = _calls(_app(tmp_path, states=States()), _chat("ets"))
    assert missing.status_code == 400 and "clusterer" in missing.json()["error"]["message"]


def test_chat_to_a_model_without_a_chat_template_is_a_400_naming_it_and_completions_serve_it(tmp_path):
    app = _app(tmp_path, no_chat_template=("target",))
    chat, text, models, health = _calls(
        app, _chat("self_consistency", n=2), ("POST", "/v1/completions", {"model": "target", "prompt": "Start at 3 and apply +4.\n", "strategy_params": {"n": 2}}),
        ("GET", "/v1/models", None), ("GET", "/healthz", None),
    )
    assert chat.status_code == 400
    error = chat.json()["error"]
    assert error["code"] == "no_chat_template" and "'target'" in error["message"] and "/v1/completions" in error["message"]
    assert error["param"] == "messages"
    assert text.status_code == 200, text.text
    assert {m["chat_template"] for m in models.json()["data"]} == {False}
    assert health.json()["no_chat_template"] == ["target"]


def test_an_engine_without_a_chat_template_is_a_400_naming_the_served_model(tmp_path):
    """The engine's own refusal (it names its directory) reaches the client naming the model it asked for."""
    [chat] = _calls(_app(tmp_path, engine=NoTemplateEngine(depth=1)), _chat("single_pass"))
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "no_chat_template"
    assert "'target'" in chat.json()["error"]["message"] and "/v1/completions" in chat.json()["error"]["message"]


def test_the_vllm_engine_refuses_to_render_chat_without_a_template(tmp_path):
    """A real tokenizer without ``chat_template`` (the bundled target's, with the template removed) is a typed
    refusal in the engine, not the tokenizer's ValueError (which the API would answer with a 502)."""
    import shutil

    from transformers import AutoTokenizer

    from workers.engine import EngineConfig, VllmEngine

    base = tmp_path / "base"
    shutil.copytree(TARGET, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    engine = VllmEngine(None, AutoTokenizer.from_pretrained(base), "policy-0", EngineConfig(model_path=base), None)  # type: ignore[arg-type]
    with pytest.raises(NoChatTemplate, match="no chat template"):
        engine.render_chat(QUESTION)
    templated = VllmEngine(None, AutoTokenizer.from_pretrained(TARGET), "policy-0", EngineConfig(model_path=TARGET), None)  # type: ignore[arg-type]
    assert "Start at 3" in templated.render_chat(QUESTION)


def test_a_remote_server_without_a_chat_template_is_the_same_refusal():
    """`vllm serve` refuses messages for a tokenizer without a template with a 400 that says so (its text
    below); the remote backend turns it into the same typed refusal as the local engine's."""
    from workers.remote import RemoteEngine

    said = (
        "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat template if the tokenizer "
        "does not define one."
    )

    def server(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/tokenize" and "messages" in json.loads(request.content)
        return httpx.Response(400, json={"error": {"message": said, "type": "BadRequestError", "code": 400}})

    async def go() -> None:
        engine = RemoteEngine("http://vllm.test:8000", model="base", name="policy-0")
        engine._client = httpx.AsyncClient(base_url="http://vllm.test:8000", transport=httpx.MockTransport(server))
        with pytest.raises(NoChatTemplate, match="base at http://vllm.test:8000 has no chat template"):
            await engine.render_chat(QUESTION)

    asyncio.run(go())

"""OpenAI's own request fields take effect: sampling fields set the strategy's parameters (or are refused by
name), content arrives as text parts, ``developer`` is a system message, and a reasoning profile's span comes
back as ``reasoning_content``, streamed first.

Most tests drive the real app (routes, dependencies, error handlers, SQLite ledger) over a scripted engine
that records every call it gets, since they check what reached the engine, not what a model writes; the
tests marked ``engine`` do the same through the unmodified openai SDK on the session's real service."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from dataclasses import replace

import httpx
import openai
import pytest

from api.app import create_app
from api.sse import answer_deltas
from api.views import chat_message
from orchestrator.config import get_settings
from orchestrator.controller import Controller
from orchestrator.db.store import Store
from orchestrator.profile import BUNDLED, ModelProfile
from orchestrator.toolbox import Toolbox
from orchestrator.types import Completion, Generation, Usage
from strategies import REGISTRY
from tasks import arithmetic as task
from verifiers import TaskAnswerVerifier

THINK = ModelProfile(name="think-over-bundled", reasoning="think")  # the bundled answer format, R1's span
THOUGHT = "<think>\nStart at 3.\n3 + 4 = 7\n</think>\n\nAnswer: 7"


class RecordingEngine:
    """Writes ``text`` for every sample, a word a token (cut at ``max_tokens``, finish ``length``), and keeps
    every call's spec and every chat it renders."""

    def __init__(self, text: str = "3 + 4 = 7\nAnswer: 7") -> None:
        self.text = text
        self.specs: list = []
        self.chats: list = []

    async def render_chat(self, role, messages):
        self.chats.append(list(messages))
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages)

    async def generate(self, role, spec):
        self.specs.append(spec)
        words = self.text.split(" ")
        kept = words[: spec.max_tokens]
        finish = "length" if len(kept) < len(words) else "stop"
        outs = tuple(Completion(" ".join(kept), len(kept), finish) for _ in range(spec.n))
        return Generation(outs, Usage(prompt_tokens=len(str(spec.prompt).split()), completion_tokens=len(kept) * spec.n), worker="scripted-0")

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        pass


def _app(tmp_path, engine, profile: ModelProfile = BUNDLED["bundled"]):
    store = Store.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    tools = Toolbox(verifier=TaskAnswerVerifier(), profile=profile)
    controller = Controller(engine=engine, store=store, strategies=REGISTRY, tools=tools, models={"target": "policy"}, max_request_tokens=10_000)
    return create_app(get_settings(data_dir=tmp_path), controller)


def _post(app, path: str, body: dict) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post(path, json=body)

    return asyncio.run(go())


def _chat(content="Start at 3 and apply +4.", **fields) -> dict:
    return {"model": "target", "messages": [{"role": "user", "content": content}], **fields}


# ------------------------------------------------------------------------------------- sampling fields


def test_openai_sampling_fields_reach_the_engine_and_the_ledger(tmp_path):
    engine = RecordingEngine()
    app = _app(tmp_path, engine)
    body = _chat(max_tokens=3, temperature=0.0, top_p=0.5, seed=11, strategy="self_consistency", strategy_params={"n": 2})
    r = _post(app, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    [spec] = engine.specs
    assert (spec.max_tokens, spec.temperature, spec.top_p, spec.seed, spec.n) == (3, 0.0, 0.5, 11, 2)
    assert r.json()["choices"][0]["finish_reason"] == "length"
    rec = _get(app, f"/v1/requests/{r.json()['id']}")
    assert rec["params"]["max_tokens"] == 3 and rec["params"]["seed"] == 11
    [call] = rec["calls"]
    assert call["n"] == 2 and call["completion_tokens"] == 2 * 3 and call["finish_reasons"] == ["length", "length"]


def _get(app, path: str) -> dict:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get(path)

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    return r.json()


def test_max_completion_tokens_and_completions_max_tokens(tmp_path):
    engine = RecordingEngine()
    app = _app(tmp_path, engine)
    assert _post(app, "/v1/chat/completions", _chat(max_completion_tokens=2)).status_code == 200
    assert _post(app, "/v1/chat/completions", _chat(max_completion_tokens=4, max_tokens=4)).status_code == 200
    r = _post(app, "/v1/completions", {"model": "single_pass:target", "prompt": "Start at 3.\n", "max_tokens": 1, "seed": 5})
    assert r.status_code == 200, r.text
    assert [(s.max_tokens, s.seed) for s in engine.specs] == [(2, None), (4, None), (1, 5)]
    both = _post(app, "/v1/chat/completions", _chat(max_completion_tokens=4, max_tokens=5))
    assert both.status_code == 400 and both.json()["error"]["param"] == "max_completion_tokens"
    assert "max_tokens=5" in both.json()["error"]["message"]


def test_fields_at_openai_defaults_are_harmless_and_strategy_params_win_over_them(tmp_path):
    engine = RecordingEngine()
    app = _app(tmp_path, engine)
    # What clients send routinely: OpenAI's defaults, including for parameters no strategy has.
    routine = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0, "frequency_penalty": 0.0, "stop": None, "seed": None, "n": 1}
    r = _post(app, "/v1/chat/completions", _chat(**routine, strategy_params={"temperature": 0.3, "n": 2}))
    assert r.status_code == 200, r.text
    assert (engine.specs[-1].temperature, engine.specs[-1].top_p) == (0.3, 1.0)
    assert _post(app, "/v1/chat/completions", _chat(stop=[])).status_code == _post(app, "/v1/completions", {"model": "target", "prompt": "3\n", "stop": ""}).status_code == 200
    # A default value the client did send still sets a parameter nothing else sets.
    assert _post(app, "/v1/chat/completions", _chat(temperature=1.0)).status_code == 200
    assert engine.specs[-1].temperature == 1.0
    # The same value twice is no conflict.
    assert _post(app, "/v1/chat/completions", _chat(temperature=0.5, strategy_params={"temperature": 0.5})).status_code == 200


@pytest.mark.parametrize(
    "fields,param,needle",
    [
        ({"temperature": 0.2, "strategy_params": {"temperature": 0.7}}, "temperature", "temperature=0.2 conflicts with strategy_params.temperature=0.7"),
        ({"seed": 1, "strategy_params": {"seed": 2}}, "seed", "strategy_params.seed=2"),
        ({"max_tokens": 8, "strategy_params": {"max_tokens": 9}}, "max_tokens", "strategy_params.max_tokens=9"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 strings"),
        ({"presence_penalty": 0.5}, "presence_penalty", "has no `presence_penalty` parameter"),
        ({"top_p": 0.0}, "top_p", "top_p: Input should be greater than 0"),
        ({"max_tokens": 5000}, "max_tokens", "448"),  # the bundled profile's cap
        ({"max_completion_tokens": 5000}, "max_completion_tokens", "448"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"model": "auto:target", "temperature": 0.1}, "temperature", "strategy `auto` chooses its own"),
    ],
)
def test_fields_a_strategy_cannot_honour_are_400s_naming_them(tmp_path, fields, param, needle):
    engine = RecordingEngine()
    r = _post(_app(tmp_path, engine), "/v1/chat/completions", {**_chat(), **fields})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"].startswith(param)
    assert engine.specs == []


def test_stop_ends_every_sample_of_every_call_and_is_counted(tmp_path):
    # Few-shot prompting of base models needs OpenAI's `stop`: it reaches every generation call, next to the
    # profile's own stop strings, and the samples it ended are counted in the answer's info.
    engine = RecordingEngine()
    app = _app(tmp_path, engine)
    r = _post(app, "/v1/completions", {"model": "target", "prompt": "3\n", "stop": ["\nQ:", "###"], "strategy": "self_consistency", "strategy_params": {"n": 3}})
    assert r.status_code == 200, r.text
    assert engine.specs and all(s.stop[-2:] == ("\nQ:", "###") for s in engine.specs)
    assert r.json()["tts"]["info"]["stop"] == {"strings": ["\nQ:", "###"], "samples_stopped": 0}
    r = _post(app, "/v1/chat/completions", _chat(stop="###"))
    assert r.status_code == 200 and engine.specs[-1].stop[-1] == "###"


def test_server_limits_name_the_openai_field(tmp_path):
    from orchestrator.admission import Limits

    engine = RecordingEngine()
    app = _app(tmp_path, engine)
    app.state.controller.limits = Limits(max_tokens=100)
    r = _post(app, "/v1/chat/completions", _chat(max_completion_tokens=101))
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_completion_tokens"
    assert err["message"].startswith("max_completion_tokens: 101 is over this server's limit of 100 (TTS_LIMIT_MAX_TOKENS)")


# ------------------------------------------------------------------------------ content parts and roles


def test_text_parts_are_joined_and_developer_is_a_system_message(tmp_path):
    engine = RecordingEngine()
    app = _app(tmp_path, engine)
    parts = [{"type": "text", "text": "Start at 3"}, {"type": "text", "text": "and apply +4."}]
    body = {"model": "target", "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be exact."}]}, {"role": "user", "content": parts}]}
    r = _post(app, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert engine.chats[-1] == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Start at 3\nand apply +4."}]
    r = _post(app, "/v1/reason", {**body, "strategy": "single_pass"})
    assert r.status_code == 200 and engine.chats[-1][1]["content"] == "Start at 3\nand apply +4."


@pytest.mark.parametrize(
    "part,param,needle",
    [
        ({"type": "image_url", "image_url": {"url": "http://x/y.png"}}, "messages.0.content.1.type", "type 'image_url' are not supported"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "messages.0.content.1.type", "'input_audio'"),
        ({"type": "text"}, "messages.0.content.1.text", "a text part needs `text`"),
    ],
)
def test_parts_that_are_not_text_are_400s_naming_the_type(tmp_path, part, param, needle):
    engine = RecordingEngine()
    r = _post(_app(tmp_path, engine), "/v1/chat/completions", _chat(content=[{"type": "text", "text": "hi"}, part]))
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"] and r.json()["error"]["param"] == param
    assert engine.chats == []


# ----------------------------------------------------------------------------------- reasoning_content


def test_chat_message_splits_a_reasoning_profiles_span():
    m = chat_message(THOUGHT, THINK).model_dump()
    assert m == {"role": "assistant", "content": "Answer: 7", "reasoning_content": "Start at 3.\n3 + 4 = 7"}
    # R1's template opens the span in the prompt: a completion starts inside it.
    assert chat_message("3 + 4 = 7\n</think>\nAnswer: 7", THINK).model_dump()["reasoning_content"] == "3 + 4 = 7"
    none = chat_message("Answer: 7", BUNDLED["bundled"]).model_dump()
    assert none == {"role": "assistant", "content": "Answer: 7"}  # no key at all: OpenAI's message exactly


def test_answer_deltas_send_reasoning_first_then_content():
    deltas = answer_deltas(THOUGHT, THINK, chat=True)
    assert deltas == [{"reasoning_content": "Start at 3.\n"}, {"reasoning_content": "3 + 4 = 7"}, {"content": "Answer: 7"}]
    assert answer_deltas(THOUGHT, BUNDLED["bundled"], chat=True) == [{"content": p} for p in THOUGHT.splitlines(keepends=True)]
    assert "".join(d["content"] for d in answer_deltas(THOUGHT, THINK, chat=False)) == THOUGHT  # completions: the text as it is


def _sse(app, body: dict) -> list[dict]:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/v1/chat/completions", json={**body, "stream": True})

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    lines = [ln[len("data: ") :] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_a_reasoning_profile_answers_with_reasoning_content_in_json_and_in_the_stream(tmp_path):
    engine = RecordingEngine(THOUGHT)
    app = _app(tmp_path, engine, THINK)
    body = _chat(strategy="single_pass", max_tokens=50)
    r = _post(app, "/v1/chat/completions", body)
    msg = r.json()["choices"][0]["message"]
    assert (msg["reasoning_content"], msg["content"]) == ("Start at 3.\n3 + 4 = 7", "Answer: 7")
    assert r.json()["tts"]["answer"] == "7" and r.json()["tts"]["candidates"][0]["text"] == THOUGHT  # the trace keeps the whole text
    deltas = [c["choices"][0]["delta"] for c in _sse(app, body) if c.get("choices")]
    said = [(k, v) for d in deltas for k, v in d.items() if k in ("reasoning_content", "content") and v]
    kinds = [k for k, _ in said]
    assert kinds == sorted(kinds, key=lambda k: k == "content") and "reasoning_content" in kinds  # all reasoning before any content
    assert "".join(v for k, v in said if k == "reasoning_content") == "Start at 3.\n3 + 4 = 7"
    assert "".join(v for k, v in said if k == "content") == "Answer: 7"


def test_the_bundled_profile_has_no_reasoning_content_key(tmp_path):
    app = _app(tmp_path, RecordingEngine(THOUGHT))
    r = _post(app, "/v1/chat/completions", _chat(strategy="single_pass"))
    assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": THOUGHT}
    deltas = [c["choices"][0]["delta"] for c in _sse(app, _chat(strategy="single_pass")) if c.get("choices")]
    assert not any("reasoning_content" in d for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == THOUGHT


def test_the_schema_documents_the_new_fields(tmp_path):
    schema = _app(tmp_path, RecordingEngine()).openapi()
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop"} <= chat.keys()
    message = schema["components"]["schemas"]["ChoiceMessage"]["properties"]
    assert "reasoning_content" in message


# ------------------------------------------------------------------------------ the real service (engine)


def _question(i: int) -> str:
    return task.generate("test", 1, seed=900 + i, levels=[2])[0].question


def _client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url + "/v1", api_key="not-needed", max_retries=0)


@contextmanager
def _profile(service, profile: ModelProfile):
    ctl = service.service.controller
    old = ctl.tools
    ctl.tools = replace(old, profile=profile)
    try:
        yield
    finally:
        ctl.tools = old


@pytest.mark.engine
def test_sdk_sampling_fields_and_content_parts_take_effect_on_the_engine(service):
    client = _client(service)
    ask = [{"role": "user", "content": [{"type": "text", "text": _question(0)}]}]
    cut = client.chat.completions.create(model="self_consistency:target", messages=ask, max_tokens=6, seed=3, extra_body={"strategy_params": {"n": 2}})
    assert all(c["completion_tokens"] <= 6 for c in cut.to_dict()["tts"]["candidates"])
    rec = httpx.get(f"{service.base_url}/v1/requests/{cut.id}").json()
    assert rec["params"]["max_tokens"] == 6 and rec["calls"]
    for call in rec["calls"]:  # every sample of every call stopped by the length bound, the ledger says
        assert call["completion_tokens"] <= 6 * call["n"] and set(call["finish_reasons"]) == {"length"}

    def samples(seed: int, temperature: float, n: int = 1) -> tuple[str, ...]:
        out = client.chat.completions.create(
            model="self_consistency:target", messages=hard, temperature=temperature, seed=seed, max_completion_tokens=40,
            extra_body={"strategy_params": {"n": n}},
        )
        return tuple(c["text"] for c in out.to_dict()["tts"]["candidates"])

    # The bundled model is sure of itself on easy problems: a hard one, sampled hot, is where seeds show.
    hard = [{"role": "user", "content": task.generate("test", 1, seed=901, levels=[5])[0].question}]
    assert samples(1, 0.0) == samples(2, 0.0)  # greedy: the seed does not matter
    hot = samples(1, 2.0, n=4)
    assert samples(1, 2.0, n=4) == hot  # a seed makes even hot sampling reproducible
    assert samples(2, 2.0, n=4) != hot  # and another seed changes it

    with pytest.raises(openai.BadRequestError, match="conflicts with strategy_params.seed"):
        client.chat.completions.create(model="target", messages=ask, seed=1, extra_body={"strategy_params": {"seed": 2}})
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(
            model="target", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]
        )


@pytest.mark.engine
def test_sdk_sees_reasoning_content_for_a_think_profile_and_none_for_the_bundled_one(service):
    client = _client(service)
    ask = [{"role": "developer", "content": "Solve it."}, {"role": "user", "content": _question(1)}]
    plain = client.chat.completions.create(model="single_pass:target", messages=ask, max_tokens=48)
    assert getattr(plain.choices[0].message, "reasoning_content", None) is None and "reasoning_content" not in plain.to_dict()["choices"][0]["message"]
    with _profile(service, THINK):
        # The bundled model writes no </think>: an unclosed span is all reasoning, as R1's would be.
        out = client.chat.completions.create(model="single_pass:target", messages=ask, max_tokens=48)
        msg = out.choices[0].message
        assert msg.reasoning_content == out.to_dict()["tts"]["candidates"][0]["text"].strip("\n") and msg.content == ""
        chunks = list(client.chat.completions.create(model="single_pass:target", messages=ask, max_tokens=48, stream=True))
    streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert streamed == msg.reasoning_content  # greedy: the same text, streamed as reasoning deltas

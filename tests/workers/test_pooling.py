"""The remote ``/pooling`` call's request / response mapping against vLLM's own protocol classes (no server:
one costs minutes here). The pooling PRM on a real engine: tests/test_fixture_family.py."""

from __future__ import annotations

import asyncio



# ---------------------------------------------------------------------------------------------- remote, no server


def test_remote_pooling_request_and_response_match_vllms_protocol():
    """The body RemoteEngine sends is a valid vLLM PoolingCompletionRequest for token classification, and a
    PoolingResponse vLLM would send maps to one row per step tag."""
    import httpx
    from vllm.entrypoints.pooling.pooling.protocol import PoolingCompletionRequest, PoolingResponse, PoolingResponseData
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    from orchestrator.types import ScoreSpec
    from workers.remote import RemoteEngine

    sent: list[dict] = []
    rows = [[0.3, 0.7], [0.9, 0.1]]

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content)
        sent.append(body)
        assert request.url.path == "/pooling"
        parsed = PoolingCompletionRequest.model_validate(body)
        assert parsed.task == "token_classify" and parsed.input == [5, 9, 7, 9]
        resp = PoolingResponse(
            model=body["model"],
            data=[PoolingResponseData(index=0, data=rows)],
            usage=UsageInfo(prompt_tokens=4, total_tokens=4),
        )
        return httpx.Response(200, json=resp.model_dump())

    async def run():
        engine = RemoteEngine("http://prm.test", model="prm", name="prm-0")
        engine._client = httpx.AsyncClient(base_url="http://prm.test", transport=httpx.MockTransport(handler))
        try:
            return await engine.classify_tokens(ScoreSpec((5, 9, 7, 9)))
        finally:
            await engine.shutdown()

    out = asyncio.run(run())
    assert out.token_ids == (5, 9, 7, 9) and out.rows == ((0.3, 0.7), (0.9, 0.1)) and out.worker == "prm-0"
    assert out.usage.prompt_tokens == 4 and out.usage.completion_tokens == 0
    assert sent[0]["model"] == "prm"

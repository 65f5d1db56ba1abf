"""A real worker pool (Ray actors owning vLLM engines on the bundled `draft`) shared by this package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DRAFT = Path(__file__).resolve().parents[2] / "models" / "draft"


@pytest.fixture(scope="module")
def pool(loop):
    """Two replicas of the draft model serving role `policy`."""
    from workers.engine import EngineConfig
    from workers.local import LocalSpec
    from workers.pool import WorkerPool, connect_ray

    connect_ray()
    spec = LocalSpec("policy", engine=EngineConfig(model_path=DRAFT, kv_cache_gib=1), replicas=2)
    p = loop.run(WorkerPool.start([spec], call_timeout_s=120))
    yield p
    loop.run(p.shutdown(), timeout=120)

"""HTTP API (FastAPI); imports no vllm or ray."""

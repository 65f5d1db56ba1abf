"""The synthetic engine's parts, each plain Python with no I/O: the world it writes about (``world``), the GPU time
it models (``gpu``), its paged KV cache with prefix caching (``kv``) and the engine that batches calls over them
(``engine``). ``workers.synthetic`` serves it as a backend."""

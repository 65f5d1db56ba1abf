"""Modeled GPU time of one engine: a roofline per scheduler step, in the spirit of Vidur (Agrawal et al., "Vidur:
A Large-Scale Simulation Framework for LLM Inference", MLSys 2024), which predicts a step's time from the batch
it runs. Vidur fits operator-level profiles; with no GPU here we use the roofline those profiles follow:

    t_step = overhead + max(FLOPs / (peak FLOP/s x compute efficiency), bytes / (HBM bandwidth x memory efficiency))

    FLOPs = 2 x parameters x (decode tokens + prefill tokens)             (the linear layers)
          + 4 x layers x heads x head_dim x (every decode token's context + every prefill token's causal context)
    bytes = parameters x 2                                                (bf16 weights, read once per step)
          + KV bytes per token x (context read by decoding sequences + tokens written this step)

so decode is memory-bound (weights, then KV as contexts and batches grow) and prefill compute-bound.

Rates and their sources:

- H100 SXM5 80 GB: 3.35 TB/s HBM3, 989 TFLOP/s dense BF16 (NVIDIA H100 Tensor Core GPU datasheet; the
  datasheet's 1,979 is with sparsity).
- Efficiencies: 0.8 of peak bandwidth for decode's weight and KV reads, 0.6 of peak FLOP/s for prefill GEMMs;
  ``overhead`` 1 ms per scheduler step (vLLM's scheduling, sampling and launch cost between CUDA graphs).
  These three are our assumptions, not measurements: with them a 7B model decodes one sequence at about 150
  tokens/s and a 1.5B at about 450, the order of single-stream vLLM figures on an H100.
- Model shapes from the models' config.json: Qwen2.5-Math-1.5B / R1-Distill-Qwen-1.5B: 1.54e9 parameters, 28
  layers, 12 query heads, 2 KV heads of 128; Qwen2.5-Math-7B / R1-Distill-Qwen-7B / Qwen2.5-Math-PRM-7B: 7.62e9
  parameters, 28 layers, 28 query heads, 4 KV heads of 128. KV per token = 2 (K, V) x layers x KV heads x
  head_dim x 2 bytes: 28 KiB (1.5B), 56 KiB (7B).
- KV blocks: (80 GiB x gpu_memory_utilization 0.9 - weights - 2 GiB for activations and CUDA graphs) / (block
  size x KV bytes per token), vLLM's way of sizing its cache (its default utilization is 0.9, its default CUDA
  block 16 tokens, its H100 defaults 8192 batched tokens and 1024 sequences per step).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GiB = 2**30


@dataclass(frozen=True)
class Device:
    """One accelerator: memory, peak bandwidth and dense BF16 FLOP/s, and the shares of them a step achieves."""

    name: str
    memory_bytes: float
    bandwidth: float
    flops: float
    memory_efficiency: float = 0.8
    compute_efficiency: float = 0.6


H100_SXM = Device("H100 SXM5 80GB", memory_bytes=80 * GiB, bandwidth=3.35e12, flops=989e12)


@dataclass(frozen=True)
class Shape:
    """A decoder's shape: what its weights and its KV cost."""

    name: str
    params: float
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def weight_bytes(self) -> float:
        return 2.0 * self.params  # bf16

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


QWEN2_5_1_5B = Shape("Qwen2.5-1.5B", params=1.54e9, layers=28, heads=12, kv_heads=2, head_dim=128)
QWEN2_5_7B = Shape("Qwen2.5-7B", params=7.62e9, layers=28, heads=28, kv_heads=4, head_dim=128)


@dataclass(frozen=True)
class CostModel:
    """Modeled seconds of scheduler steps of ``shape`` on ``device``. ``time_factor`` scales every step (a draft
    made deliberately cheaper than its target, say)."""

    device: Device
    shape: Shape
    overhead_s: float = 1e-3
    time_factor: float = 1.0
    activation_reserve_bytes: float = 2 * GiB

    def step(self, *, decode: int, context: int, prefill: int = 0, prefill_context: int = 0) -> float:
        """One scheduler step: ``decode`` sequences each generating a token over ``context`` tokens of KV in all,
        and ``prefill`` prompt tokens computed after ``prefill_context`` tokens of their own prompts (summed
        over the tokens: the causal part of attention)."""
        if decode <= 0 and prefill <= 0:
            return 0.0
        s, d = self.shape, self.device
        attn = 4.0 * s.layers * s.heads * s.head_dim
        flops = 2.0 * s.params * (decode + prefill) + attn * (context + prefill_context)
        data = s.weight_bytes + s.kv_bytes_per_token * (context + decode + prefill)
        t = self.overhead_s + max(flops / (d.flops * d.compute_efficiency), data / (d.bandwidth * d.memory_efficiency))
        return t * self.time_factor

    def iteration(self, *, decode_tokens: int, steps: int, context: int, prefill: int, prefill_context: int, max_batched_tokens: int) -> float:
        """``steps`` scheduler steps that generate ``decode_tokens`` tokens in all (each step a batch of about
        ``decode_tokens / steps``) over ``context`` tokens of KV at the start, and compute ``prefill`` prompt
        tokens (chunked: at most ``max_batched_tokens`` a step, the decode tokens included)."""
        if decode_tokens <= 0:
            steps = -(-prefill // max_batched_tokens) if prefill else 0
            if steps == 0:
                return 0.0
            return steps * self.step(decode=0, context=0, prefill=prefill // steps, prefill_context=prefill_context // steps)
        steps = max(steps, 1, -(-(prefill + decode_tokens) // max_batched_tokens))
        batch = decode_tokens / steps
        mid = context + decode_tokens / 2  # contexts grow by one token per sequence per step
        return steps * self.step(decode=round(batch) or 1, context=round(mid), prefill=prefill // steps, prefill_context=prefill_context // steps)

    def kv_blocks(self, block_size: int, *, gpu_memory_utilization: float = 0.9) -> int:
        """KV-cache blocks vLLM would allocate on ``device`` for this model (see the module docstring)."""
        room = self.device.memory_bytes * gpu_memory_utilization - self.shape.weight_bytes - self.activation_reserve_bytes
        return max(int(room // (block_size * self.shape.kv_bytes_per_token)), 1)

    def scaled(self, factor: float) -> CostModel:
        return replace(self, time_factor=self.time_factor * factor)

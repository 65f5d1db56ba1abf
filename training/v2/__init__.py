"""The v2 bundled family: models that speak a real reasoning model's formats (ChatML, ``<think>`` spans,
``\\boxed{}`` answers, blank-line steps, a Qwen2.5-Math-PRM-style reward model) on :mod:`tasks.countdown`."""

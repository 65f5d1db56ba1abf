"""Workers: vLLM engines in Ray actors, addressed by model role."""

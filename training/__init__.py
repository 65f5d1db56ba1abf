"""How the bundled models are made: training recipes, data synthesis, measurement and model cards.

Outside the service: nothing the service runs imports it (``tests/test_boundaries.py``), and the service's
wheel and images do not carry it. It writes what the service reads, the weights, tokenizers, cards and
metrics under ``models/``, from the repository root (``python -m training.recipe``, ``python -m
training.v2.recipe``):

- v1, the bundled family (chained arithmetic, ``tasks.arithmetic``): ``recipe``, ``train``, ``data``,
  ``tokenizer``, ``measure``, ``cards``;
- ``v2/``, the v2 family (Countdown, ``tasks.countdown``, in real reasoning models' formats);
- ``common``: the training loop pieces both recipes share;
- ``fixture``: the random real-architecture fixture family tests serve;
- ``countdown_traces``: the Countdown solver that writes v2's training traces;
- ``bench/``: benchmarks of the recipes, with their results.
"""

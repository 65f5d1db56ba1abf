"""Benchmarks of the training recipes (the service's own are in ``bench/``); each module is a ``python -m
training.bench.<name>`` command writing under ``training/bench/results/``, tables in ``training/bench/README.md``."""

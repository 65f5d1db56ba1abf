"""The tasks the service ships with: problems, exact checkers and prompt formats, one module per task.

``arithmetic`` is the bundled chained-arithmetic task the models in ``models/`` are trained on, ``countdown`` the
v2 family's. A task module imports only the standard library, so serving code (verifiers, deploy, bench) can use
it without torch. What only training needs (training traces, trace solvers, their CLIs) is in ``training/``.
"""

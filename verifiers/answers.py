"""Answer extraction and equivalence for the bundled chained-arithmetic task."""

from __future__ import annotations

from models import task


class TaskAnswerVerifier:
    """Canonical key of a solution's answer: the integer on its last ``Answer:`` line, as a string.

    Integers compare exactly, so equal keys are exactly the equivalent answers."""

    def extract(self, text: str) -> str | None:
        value = task.extract_answer(text)
        return None if value is None else str(value)

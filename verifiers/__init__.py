"""Judges of solutions: answer equivalence (more verifiers arrive with the PRM work)."""

from verifiers.answers import TaskAnswerVerifier

__all__ = ["TaskAnswerVerifier"]

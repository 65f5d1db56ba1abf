"""Judges of solutions: answer equivalence, process reward models, an outcome judge, step clustering."""

from verifiers.answers import (
    ANSWER_VERIFIERS,
    BoxedAnswerVerifier,
    CountdownVerifier,
    FinalPartVerifier,
    MathAnswerVerifier,
    RegexAnswerVerifier,
    ServedGrading,
    TaskAnswerVerifier,
    answer_verifier,
    verifier_for,
)
from verifiers.pooling_prm import PoolingPRM, PoolingPRMFormat
from verifiers.prm import JudgeFormat, MathShepherdPRM, OutcomeJudge, PRMFormat, StepScores
from verifiers.refine import CountdownRefiner, TaskRefiner, TextRefiner, refiner_for

__all__ = [
    "BoxedAnswerVerifier",
    "CountdownVerifier",
    "FinalPartVerifier",
    "RegexAnswerVerifier",
    "ServedGrading",
    "verifier_for",
    "ANSWER_VERIFIERS",
    "JudgeFormat",
    "MathAnswerVerifier",
    "MathShepherdPRM",
    "OutcomeJudge",
    "PRMFormat",
    "PoolingPRM",
    "PoolingPRMFormat",
    "StepScores",
    "TaskAnswerVerifier",
    "CountdownRefiner",
    "TaskRefiner",
    "TextRefiner",
    "answer_verifier",
    "refiner_for",
]

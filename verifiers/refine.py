"""Refiners: what Parallel-Distill-Refine's workspace says, and how the policy is asked to improve on it.

:class:`TaskRefiner` speaks the bundled task's workspace format, the one the bundled target was trained to
refine from (``tasks.arithmetic.refine_prompt``). :class:`TextRefiner` is task-agnostic: its global summary is
the tally of the drafts' final answers with one supporting line each, for any model that reads plain text;
for a chat model it asks as a user message (:meth:`TextRefiner.refine_messages`), which the strategy renders
through the policy's chat template.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from orchestrator.profile import ModelProfile
from orchestrator.protocols import AnswerVerifier
from tasks import arithmetic as task
from tasks import countdown
from verifiers.answers import CountdownVerifier, TaskAnswerVerifier


class TaskRefiner:
    """The bundled arithmetic task. Questions it cannot parse get the :class:`TextRefiner` treatment."""

    def __init__(self, *, top: int = task.WORKSPACE_TOP) -> None:
        self.top = top
        self._fallback = TextRefiner(TaskAnswerVerifier())

    def summary(self, question: str, drafts: Sequence[str]) -> list[str]:
        try:
            problem = task.parse_question(question)
        except ValueError:
            return self._fallback.summary(question, drafts)
        return task.distill(problem, drafts, top=self.top).render().split("\n")

    def draft_block(self, index: int, draft: str) -> str:
        return f"draft {index + 1}:\n{draft.strip()}"

    def refine_prompt(self, question: str, workspace: str) -> str:
        return f"{question}\n{workspace}\n" if workspace else task.prompt_for(question)

    def refine_messages(self, question: str, workspace: str) -> list[dict[str, str]] | None:
        """None: the bundled target reads :meth:`refine_prompt` as it is, the format it was trained on."""
        return None

    def summary_messages(self, question: str, drafts: Sequence[str]) -> list[dict[str, str]] | None:
        """None: the summary is the task's workspace, the one the bundled target was trained to refine from."""
        return None


class CountdownRefiner:
    """The Countdown task's workspace (``tasks.countdown.refine_prompt``: the deepest route each draft reached
    and its answer, the most common first), the format the v2 bundled target was refine-tuned on, asked as
    the user's message of a chat. Questions it cannot parse get the :class:`TextRefiner` treatment."""

    def __init__(self, *, top: int = countdown.REFINE_TOP, profile: ModelProfile | None = None) -> None:
        self.top = top
        self._fallback = TextRefiner(CountdownVerifier(), profile=profile, chat=True)

    def summary(self, question: str, drafts: Sequence[str]) -> list[str]:
        try:
            problem = countdown.parse_question(question)
        except ValueError:
            return self._fallback.summary(question, drafts)
        # The task's prompt starts with the question, which refine_prompt puts back.
        return countdown.refine_prompt(problem, drafts, top=self.top).rstrip("\n").split("\n")[1:]

    def draft_block(self, index: int, draft: str) -> str:
        return self._fallback.draft_block(index, draft)

    def refine_prompt(self, question: str, workspace: str) -> str:
        return f"{question}\n{workspace}\n" if workspace else countdown.prompt_for(question)

    def refine_messages(self, question: str, workspace: str) -> list[dict[str, str]] | None:
        return [{"role": "user", "content": self.refine_prompt(question, workspace)}]

    def summary_messages(self, question: str, drafts: Sequence[str]) -> list[dict[str, str]] | None:
        """None: the summary is the task's workspace, the one the v2 target was refine-tuned on."""
        return None


SUMMARY_INSTRUCTION = (
    "Below are {count} attempts at the problem. Write a short summary of them for someone who will solve it again: "
    "where the attempts agree, where they contradict each other, the intermediate facts they derive, the answers "
    "they reach (with how many reach each), and what is still open. Do not solve the problem yourself."
)


class TextRefiner:
    """A task-agnostic workspace. Its global summary is written by the policy (:meth:`summary_messages`: the
    PDR paper's summary of agreements, contradictions, derived facts and open subgoals); its computed summary
    (:meth:`summary`, PDR's ``tally`` distill) is the answers with their counts (most agreed first), each with
    the last line of its first draft as support, and how many drafts reached no answer. A single draft
    (Sequential Refinement) is shown itself: a tally of one answer would hide the very solution being refined.

    With ``profile`` given, a draft is shown by its final part (after the reasoning span) when it has one:
    a reasoning model's thinking would fill any workspace bound before its conclusion. With ``chat`` the
    refine request is a user message (:meth:`refine_messages`) for the policy's chat template."""

    def __init__(self, verifier: AnswerVerifier, *, profile: ModelProfile | None = None, chat: bool = False) -> None:
        self.verifier = verifier
        self.profile = profile
        self.chat = chat

    def summary(self, question: str, drafts: Sequence[str]) -> list[str]:
        if len(drafts) == 1:
            return [self.draft_block(0, drafts[0])]  # one piece: the bound truncates it visibly, never drops it
        answers = [self.verifier.extract(d) for d in drafts]
        counts = Counter(a for a in answers if a is not None)
        lines = [f"Summary of {len(drafts)} drafts:"]
        for answer, count in counts.most_common():
            first = next(d for d, a in zip(drafts, answers) if a == answer)
            support = self._shown(first).split("\n")
            # Tallied by key, shown as the first such draft wrote it: the policy reads `23.28`, not `582/25`.
            shown = self.verifier.written(first) or answer
            lines.append(f"- answer {shown} ({count} of {len(drafts)}); e.g. {support[-2] if len(support) > 1 else support[-1]}")
        missing = sum(a is None for a in answers)
        if missing:
            lines.append(f"- {missing} draft(s) reached no answer")
        return lines

    def draft_block(self, index: int, draft: str) -> str:
        return f"Draft {index + 1}:\n{self._shown(draft)}"

    def summary_messages(self, question: str, drafts: Sequence[str]) -> list[dict[str, str]] | None:
        if not self.chat:  # a model without a chat template is asked only to refine, in its raw prompt format
            return None
        blocks = "\n\n".join(drafts)
        content = f"Problem: {question}\n\n{SUMMARY_INSTRUCTION.format(count=len(drafts))}\n\n{blocks}"
        return [{"role": "user", "content": content}]

    def _shown(self, draft: str) -> str:
        if self.profile is None:
            return draft.strip()
        reasoning, final = self.profile.split_reasoning(draft)
        return (final or reasoning or draft).strip()

    def refine_prompt(self, question: str, workspace: str) -> str:
        if not workspace:
            return f"{question}\n"
        return f"{question}\n\nEarlier attempts:\n{workspace}\n\nWrite a complete, corrected solution.\n"

    def refine_messages(self, question: str, workspace: str) -> list[dict[str, str]] | None:
        """The refine request as chat messages (with ``chat``), else None: send :meth:`refine_prompt` raw."""
        if not self.chat:
            return None
        return [{"role": "user", "content": self.refine_prompt(question, workspace).strip("\n")}]


def refiner_for(name: str | None, profile: ModelProfile, verifier: AnswerVerifier) -> TaskRefiner | CountdownRefiner | TextRefiner:
    """The refiner a server uses (``TTS_REFINER``; none given: the v1 task's for a profile with ``task``
    answers, else plain text through the policy's chat template). ``verifier`` is the profile's."""
    chosen = name or ("task" if profile.answer == "task" else "text")
    if chosen == "task":
        return TaskRefiner()
    if chosen == "countdown":
        return CountdownRefiner(profile=profile)
    return TextRefiner(verifier, profile=profile, chat=True)

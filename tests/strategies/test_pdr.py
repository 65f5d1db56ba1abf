"""PDR and SR logic on a scripted engine: round sizes, the kappa bound of every workspace, operators."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.types import Completion, Generation, Problem, Usage
from strategies import REGISTRY
from tests.strategies.scripted import StepEngine, WordPRM, context
from verifiers import TaskAnswerVerifier, TextRefiner


class LongEngine(StepEngine):
    """Drafts of 30 words ending with an answer: a workspace of several of them cannot fit a small kappa."""

    async def generate(self, role, spec):
        self.calls.append(spec)
        outs = tuple(Completion(" ".join(["w"] * 30) + f"\nAnswer: {j % 3}", 31, "stop") for j in range(spec.n))
        return Generation(outs, Usage(prompt_tokens=len(spec.prompt.split()), completion_tokens=31 * spec.n))


def run(name, engine=None, **params):
    engine = engine or LongEngine()
    ctx, calls = context(engine, refiner=TextRefiner(TaskAnswerVerifier()), step_scorer=WordPRM())
    spec = REGISTRY[name]
    result = asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(**params)))
    return result, engine, ctx, calls


@pytest.mark.parametrize("distill", ["summary", "shared_top_k", "per_sample_top_k", "random_k"])
def test_rounds_follow_the_schedule_and_workspaces_stay_within_kappa(distill):
    result, engine, ctx, calls = run("pdr", schedule=[6, 3, 1], distill=distill, k=3, kappa=40, seed=1)
    assert [r["drafts"] for r in result.trace] == [6, 3, 1]
    assert len(result.candidates) == 1  # the last round returns one answer
    for r in result.trace[1:]:
        assert r["workspace_tokens"] and max(r["workspace_tokens"]) <= 40
    for spec in engine.calls:  # what the policy saw: the question, the workspace, the instruction
        if spec.prompt != "q\n":
            workspace = spec.prompt.split("Earlier attempts:\n", 1)[1].split("\n\nWrite", 1)[0]
            assert len(workspace.split()) <= 40
    per_call = distill in ("per_sample_top_k", "random_k")
    assert [c.n for c in engine.calls] == ([6] + [1] * 4 if per_call else [6, 3, 1])
    assert ctx.tally.sequential_tokens < ctx.tally.usage.total_tokens


def test_kappa_shares_out_among_the_top_k_drafts_each_keeping_its_answer():
    # Four 31-word drafts in 70 tokens: each gets an equal share, cut in its middle, so that every draft still
    # shows its start and the answer at its end (a head-only cut dropped a Qwen-Math solution's \boxed{}).
    result, engine, *_ = run("pdr", schedule=[4, 1], distill="shared_top_k", k=4, kappa=70)
    workspace = engine.calls[-1].prompt.split("Earlier attempts:\n", 1)[1].split("\n\nWrite", 1)[0]
    assert workspace.count("Draft ") == 4 and workspace.count("Answer: ") == 4
    assert workspace.count("[... truncated]") == 4 and len(workspace.split()) <= 70
    assert result.trace[1]["truncated"] == 1


def test_sequential_refinement_keeps_the_previous_answer_in_a_tight_workspace():
    result, engine, *_ = run("sequential_refinement", rounds=2, kappa=16)
    workspace = engine.calls[-1].prompt.split("Earlier attempts:\n", 1)[1]
    assert "Answer: 0" in workspace and "[... truncated]" in workspace


class SummaryEngine(LongEngine):
    """Drafts as :class:`LongEngine`'s; asked to summarise (a chat whose user turn starts "Problem:"), it writes
    ``<think>`` reasoning, then the summary, or runs out of tokens when ``cut``."""

    def __init__(self, cut: bool = False) -> None:
        super().__init__()
        self.cut = cut

    async def render_chat(self, role, messages):
        return "<chat>" + messages[-1]["content"]

    async def generate(self, role, spec):
        if not spec.prompt.startswith("<chat>Problem:"):
            return await super().generate(role, spec)
        self.calls.append(spec)
        if self.cut:
            return Generation((Completion("<think>\nhmm", 3, "length"),), Usage(len(spec.prompt.split()), 3))
        text = "<think>\nLet me compare.\n</think>\n\nThe drafts disagree: answers 0 (3), 1 (3), 2 (2)."
        return Generation((Completion(text, 12, "stop"),), Usage(len(spec.prompt.split()), 12))


def _run_written(engine):
    from orchestrator.profile import BUNDLED

    profile = BUNDLED["r1-distill"]
    ctx, calls = context(engine, refiner=TextRefiner(TaskAnswerVerifier(), profile=profile, chat=True), profile=profile)
    spec = REGISTRY["pdr"]
    params = spec.parse({"schedule": [8, 1], "kappa": 200, "max_tokens": 64}, profile=profile)
    return asyncio.run(spec.run(Problem("q\n", question="q"), ctx, params)), calls


def test_the_summary_is_written_by_the_policy_and_charged_to_the_request():
    engine = SummaryEngine()
    result, calls = _run_written(engine)
    [ask] = [s for s in engine.calls if s.prompt.startswith("<chat>Problem:")]
    assert ask.prompt.count("Draft ") == 8 and "where they contradict each other" in ask.prompt
    assert [c.stage for c in calls] == ["round0", "distill", "round1"]
    refine = engine.calls[-1].prompt
    assert "The drafts disagree: answers 0 (3)" in refine and "Let me compare" not in refine  # its final part only
    assert result.trace[1]["summary"] == "written"


def test_a_cut_summary_falls_back_to_the_computed_tally():
    result, calls = _run_written(SummaryEngine(cut=True))
    assert [c.stage for c in calls] == ["round0", "distill", "round1"]  # the cut call was paid for
    assert result.trace[1]["summary"].startswith("tally: the written summary was cut")


def test_sequential_refinement_keeps_one_candidate():
    result, engine, ctx, _ = run("sequential_refinement", rounds=4, kappa=64)
    assert [r["drafts"] for r in result.trace] == [1, 1, 1, 1]
    assert all(c.n == 1 for c in engine.calls) and len(engine.calls) == 4
    # Every call depends on the previous one: the sequential budget is the whole cost.
    assert ctx.tally.sequential_tokens == ctx.tally.usage.total_tokens


def test_pdr_needs_a_refiner():
    from orchestrator.errors import InvalidRequest

    engine = LongEngine()
    ctx, _ = context(engine)
    spec = REGISTRY["pdr"]
    with pytest.raises(InvalidRequest, match="refiner"):
        asyncio.run(spec.run(Problem("q\n"), ctx, spec.params()))
    assert engine.calls == []
    assert spec.needs(spec.params(distill="shared_top_k", rank_by="prm")) == {"refiner", "prm"}


def test_sequential_refinement_shows_the_text_refiner_the_draft_it_refines():
    result, engine, *_ = run("sequential_refinement", rounds=2, kappa=64)
    first, refine = engine.calls
    assert refine.prompt.startswith("q\n\nEarlier attempts:\nDraft 1:\n")
    assert " ".join(["w"] * 30) + "\nAnswer: 0" in refine.prompt  # the draft itself, not a tally of it
    assert result.trace[1]["truncated"] == 0


@pytest.mark.parametrize("name, params", [("sequential_refinement", {"rounds": 2}), ("pdr", {"schedule": [2, 1], "distill": "shared_top_k", "k": 1})])
def test_a_draft_longer_than_kappa_is_cut_visibly_never_dropped(name, params):
    result, engine, *_ = run(name, kappa=12, **params)
    refine = engine.calls[-1].prompt
    workspace = refine.split("Earlier attempts:\n", 1)[1].split("\n\nWrite", 1)[0]
    # Its start and its answer stay, the middle is marked as cut.
    assert workspace.startswith("Draft 1:\nw") and "[... truncated]" in workspace and workspace.endswith("Answer: 0")
    assert len(workspace.split()) <= 12  # still within kappa, the mark included
    assert result.trace[1]["truncated"] == 1 and result.info["truncated_workspaces"] == 1
    assert result.trace[1]["workspace_tokens"] == [len(workspace.split())]


def test_a_chat_refiner_is_rendered_through_the_chat_template():
    from orchestrator.profile import BUNDLED

    profile = BUNDLED["r1-distill"]
    engine = LongEngine()
    ctx, _ = context(engine, profile=profile, refiner=TextRefiner(TaskAnswerVerifier(), profile=profile, chat=True))
    spec = REGISTRY["sequential_refinement"]
    asyncio.run(spec.run(Problem("<user> q\n<assistant>\n", question="q"), ctx, spec.params(rounds=2, kappa=64)))
    refine = engine.calls[-1].prompt
    assert refine.startswith("<user> q\n\nEarlier attempts:\nDraft 1:\n") and refine.endswith("<assistant>\n")


def test_text_refiner_shows_a_reasoning_draft_by_its_conclusion():
    from orchestrator.profile import BUNDLED

    refiner = TextRefiner(TaskAnswerVerifier(), profile=BUNDLED["r1-distill"])
    assert refiner.draft_block(0, "long thinking\n</think>\n\nAnswer: 3") == "Draft 1:\nAnswer: 3"
    assert refiner.draft_block(1, "thinking, never closed") == "Draft 2:\nthinking, never closed"
    assert TextRefiner(TaskAnswerVerifier()).refine_messages("q", "ws") is None


def test_under_a_tight_live_budget_a_round_shrinks_to_the_drafts_that_fit():
    """31-token drafts seen before, 300 tokens left: round 0 plans for what fits after one draft of the later
    round, and says so in its events, instead of starting 8 drafts the budget would cut."""
    engine = LongEngine()
    ctx, calls = context(engine, total_tokens=300, refiner=TextRefiner(TaskAnswerVerifier()))
    ctx.meter.live = True
    ctx.lengths.add("policy", "round0", [31] * 4)
    spec = REGISTRY["pdr"]
    result = asyncio.run(spec.run(Problem("q\n", question="q"), ctx, spec.params(schedule=[8, 1], kappa=64)))
    [plan] = [e for e in ctx.tally.events if e.get("stage") == "plan"]
    one = len(b"q\n") + 2 + 31
    assert plan["round"] == 0 and plan["drafts"] == (300 - (one + 64)) // one < 8
    assert result.trace[0]["drafts"] == plan["drafts"] and result.finish_reason == "budget"
    assert sum(c.usage.total_tokens for c in calls) <= 300


def test_a_refine_request_keeps_the_clients_system_prompt():
    from orchestrator.profile import BUNDLED

    profile = BUNDLED["r1-distill"]
    engine = LongEngine()
    ctx, _ = context(engine, profile=profile, refiner=TextRefiner(TaskAnswerVerifier(), profile=profile, chat=True))
    spec = REGISTRY["sequential_refinement"]
    messages = ({"role": "system", "content": "Box it."}, {"role": "user", "content": "q"})
    asyncio.run(spec.run(Problem("<system> Box it.\n<user> q\n<assistant>\n", question="q", messages=messages), ctx, spec.params(rounds=2, kappa=64)))
    assert engine.calls[-1].prompt.startswith("<system> Box it.\n<user> q\n\nEarlier attempts:")


def test_the_countdown_refiner_asks_in_the_format_the_v2_target_was_tuned_on():
    from tasks import countdown
    from training import countdown_traces
    from verifiers import CountdownRefiner

    problem = countdown.generate("dev", 1, levels=[3])[0]
    rng = __import__("random").Random(0)
    drafts = [countdown_traces.solve_trace(problem, rng) for _ in range(4)] + ["<think>\nno idea"]
    refiner = CountdownRefiner()
    workspace = "\n".join(refiner.summary(problem.question, drafts))
    assert refiner.refine_messages(problem.question, workspace) == [
        {"role": "user", "content": countdown.refine_prompt(problem, drafts)}
    ]
    assert refiner.refine_prompt(problem.question, "") == countdown.prompt_for(problem.question)
    # A question of another task still gets a workspace (the plain-text one).
    assert refiner.summary("What is 2 + 2?", ["The answer is \\boxed{4}."])

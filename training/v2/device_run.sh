#!/usr/bin/env bash
# The GPU side of a v2 recipe run, as one command on a lent GPU machine (no vLLM there: training stages only).
#   bash training/v2/device_run.sh STAGES [SIZE]      e.g. target,draft full
# Unpacks what the tree carried in .v2carry/ (an earlier pack, if any), runs STAGES with --device cuda (DEVICE
# overrides, to rehearse on CPU), and packs the whole output into $OUT for training.v2.device unpack here.
set -euo pipefail
stages=${1:?usage: device_run.sh STAGES [SIZE]}
size=${2:-full}
out=${OUT:?OUT: the directory whose files come back}
work=${V2_WORK:-/tmp/v2work}
py=${PYTHON:-python3}
mkdir -p "$work"
if compgen -G ".v2carry/v2-pack.tgz.*" >/dev/null; then
  "$py" -m training.v2.device unpack --src .v2carry --out "$work"
fi
export PYTHONUNBUFFERED=1
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
"$py" -m training.v2.recipe --device "${DEVICE:-cuda}" --size "$size" --stages "$stages" --out "$work" 2>&1 | tee "$out/recipe.log"
"$py" -m training.v2.device pack --out "$work" --to "$out"

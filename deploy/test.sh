#!/usr/bin/env bash
# The test suite: install what is missing, then run pytest (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/python -m pytest "$@"

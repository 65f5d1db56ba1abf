#!/usr/bin/env bash
# The main job: install what is missing, then serve the API on 127.0.0.1:8000 (arguments go to deploy.serve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/python -m deploy.serve "$@"

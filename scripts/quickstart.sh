#!/usr/bin/env bash
# One command: set up this machine, then run the pipeline on the embedded default (profile `quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DVC_NO_ANALYTICS=1
dvc repro "$@"
askd summary

#!/usr/bin/env bash
# One command: set up this machine, then run the whole pipeline on the embedded default (profile `quick`)
# through the Prefect flow `distill_pipeline` (one task per DVC stage: `dvc repro -s <stage>`).
# Extra arguments go to `askd flow run`, e.g. `--set train.optim.max_steps=600`, `--profile full`, `--stop-after label`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DVC_NO_ANALYTICS=1
askd flow run "$@"
askd summary

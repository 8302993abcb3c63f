#!/usr/bin/env bash
# The GPU check on the GPU machine: install the wheels bench/gpu_prepare.sh put in .whl/ (without their
# dependencies, beside the machine's own torch), then run bench/gpu_check.py with the arguments given.
#
#   bash bench/gpu_check.sh --out DIR [--budget-seconds 450]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    SITE=${SITE:-/tmp/segkit_site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
exec "$PY" bench/gpu_check.py "$@"

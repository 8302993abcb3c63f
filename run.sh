#!/usr/bin/env bash
# One-command reproduction.
#   bash run.sh            set up .venv, generate the demo competition, run the whole pipeline on CPU
#   bash run.sh test       set up .venv, run the test suite
#   bash run.sh segkit ... set up .venv, run any segkit command inside it
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.requirements.sha256"

# Offline-friendly defaults: no update checks, no hub downloads unless the user asks for them.
export NO_ALBUMENTATIONS_UPDATE=1
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export PYTHONUNBUFFERED=1

setup_venv() {
    local want
    want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        return
    fi
    echo "[run.sh] creating $VENV from requirements.txt (about a minute)"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
        2> >(grep -v "is ignored: it is neither" >&2)
    echo "$want" > "$STAMP"
}

setup_venv
export PATH="$PWD/$VENV/bin:$PATH"

case "${1:-demo}" in
    test)
        shift
        python -m pytest "$@"
        ;;
    demo)
        [[ -f data/demo/sample_submission.csv ]] || segkit demo-data --out data/demo
        segkit run --config configs/demo.yaml
        ;;
    segkit)
        shift
        segkit "$@"
        ;;
    *)
        echo "usage: bash run.sh [test [pytest args] | segkit ARGS...]" >&2
        exit 2
        ;;
esac

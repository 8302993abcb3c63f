#!/usr/bin/env bash
# A bundle in a GPU notebook, as one prepared command: made on a CPU machine (with the package registry), run on
# the GPU machine, which is such a notebook (offline, its own Python 3.12 and CUDA torch, no smp).
#
#   bash bench/gpu_bundle.sh prepare     # CPU: a tiny demo experiment and its bundle, for kaggle-gpu and Python
#                                        # 3.12, into .gpu_bundle/ (git-ignored; carry it to the GPU machine)
#   bash bench/gpu_bundle.sh run OUT     # GPU: the notebook's two cells (install.py, infer.py on the GPU), then
#                                        # the GPU's csv against the CPU's (fp16 weights, GPU autocast: close,
#                                        # not equal) and the packages before and after (`pip freeze`: equal)
set -euo pipefail
cd "$(dirname "$0")/.."
B=.gpu_bundle
case "${1:-}" in
prepare)
    PY=${PYTHON:-.venv/bin/python}
    rm -rf "$B" && mkdir -p "$B"
    "$PY" -m segkit.cli demo-data --out "$B/demo" --n-train 24 --n-test 8 --size 32
    ARGS=(--config configs/demo.yaml "data.root=$B/demo" "paths.runs=$B/runs" "paths.folds=$B/folds"
          "paths.submissions=$B/subs" device=cpu folds.n_splits=2 train.epochs=12 train.batch_size=4 train.lr=0.01
          train.progress=false "train.keep=[best]" predict.tta=flips "ensemble.methods=[mean]"
          "models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")
    "$PY" -m segkit.cli run "${ARGS[@]}"
    "$PY" -m segkit.cli package "${ARGS[@]}" --out "$B/bundle" --target kaggle-gpu --python-version 3.12
    rm -rf "$B/runs"  # the bundle has what inference needs
    du -sh "$B"
    ;;
run)
    OUT=${2:?an output folder}
    PY=${PYTHON:-python3}
    export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 TMPDIR=${TMPDIR:-/tmp}
    "$PY" -m pip freeze > "$OUT/freeze_before.txt"
    "$PY" "$B/bundle/install.py" --device cuda | tee "$OUT/install.txt"
    "$PY" "$B/bundle/infer.py" --test "$B/demo/test/images" --sample "$B/demo/sample_submission.csv" \
        --out "$OUT/gpu.csv" --device cuda --time-budget 1h | tee "$OUT/infer.txt"
    "$PY" -m pip freeze > "$OUT/freeze_after.txt"
    cmp -s "$OUT/freeze_before.txt" "$OUT/freeze_after.txt" && echo "pip freeze: unchanged" || echo "pip freeze: CHANGED"
    "$PY" - "$OUT/gpu.csv" "$B/subs/demo.csv" <<'PYEOF'
import sys
gpu, cpu = (open(p).read().splitlines() for p in sys.argv[1:3])
same = sum(a == b for a, b in zip(gpu, cpu))
print(f"rows: {len(gpu)} on the GPU, {len(cpu)} on the CPU; {same} identical")
PYEOF
    ;;
*)
    echo "usage: bash bench/gpu_bundle.sh prepare | run OUT" >&2
    exit 2
    ;;
esac

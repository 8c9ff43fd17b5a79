#!/usr/bin/env bash
# GPU check of medseg in one call on a lent H100/H200 (see bench/README.md).
#
#   bash bench/gpu_check.sh fetch   # HERE, with PyPI: wheels the GPU machine lacks -> .whl/
#   bash bench/gpu_check.sh         # THERE (device `run`, carry [".whl"]): tests + benches -> $OUT
#   SKIP_INSTALL=1 PYTHON=... OUT=/tmp/x bash bench/gpu_check.sh   # dry run anywhere (installs nothing)
#
# The GPU machine reaches no registry and brings its own CUDA build of torch (2.11 when last
# seen), so `pip install -c constraints.txt -e .` cannot run there as written: its torch==2.13.0
# CPU pin would have to be downloaded. Instead the packages from constraints.txt that the image
# lacks (monai, nibabel, edt) travel as wheels pinned by constraints.txt, and medseg itself is
# installed from the carried tree without dependencies or network.
#
# Stages, each bounded so the whole run ends within BUDGET seconds (default 460; the device
# call's timeout_s should be ~540). Partial output still comes back: every stage tees to $OUT.
#   1. environment (GPU, driver, torch) and install          -> summary.txt
#   2. pytest -m gpu (all GPU-marked tests)                   -> pytest_gpu.txt
#   3. bench/inference.py --device cuda (stock vs ours)       -> inference.txt, inference.json
#   4. bench/training.py --device cuda (tutorial vs ours)     -> training.txt, training.json
#   5. torch.compile variants while time is left, in order: DynUNet inference (fp16,
#      channels-last; -> compile.json), training (bf16), our UNet inference -> compile.txt
set -u -o pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl

if [ "${1:-}" = "fetch" ]; then
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" "$WHEELS"
    grep -qx "/$WHEELS/" "$exclude" 2>/dev/null || echo "/$WHEELS/" >>"$exclude"
    rm -f "$WHEELS"/*.whl
    # versions from constraints.txt; binary wheels for the GPU machine's CPython 3.12 on x86-64
    ${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: -c constraints.txt \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" monai nibabel edt
    ls -l "$WHEELS"
    exit
fi

OUT=${OUT:-/tmp/medseg-gpu-check}
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.json
BUDGET=${BUDGET:-460}
END=$((SECONDS + BUDGET))
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# Run a stage with at most $1 seconds (less if the budget is running out); log to $OUT/$2.
stage() {
    local cap=$1 log=$2
    shift 2
    local left=$((END - SECONDS - 5))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        echo "SKIPPED (budget spent): $*" | tee -a "$OUT/summary.txt"
        return 0
    fi
    echo "== $* (limit ${limit}s)" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
    local rc=$?
    echo "== rc=$rc after $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
}

{
    echo "medseg gpu_check $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/summary.txt"

if [ -n "${SKIP_INSTALL:-}" ]; then
    echo "SKIP_INSTALL set: using $PY as it is" | tee -a "$OUT/summary.txt"
elif ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl 2>&1 | tail -3
    export PYTHONPATH=/tmp/site
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 ||
        echo "(editable install failed; using PYTHONPATH)" | tee -a "$OUT/summary.txt"
else
    echo "no $WHEELS/*.whl: run 'bash bench/gpu_check.sh fetch' here and carry .whl" | tee -a "$OUT/summary.txt"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import monai, nibabel, pipeline.networks; print('monai', monai.__version__, 'nibabel', nibabel.__version__)" \
    2>&1 | tee -a "$OUT/summary.txt"

stage 130 pytest_gpu.txt $PY -m pytest -m gpu -q -rA -p no:cacheprovider tests
stage 180 inference.txt $PY bench/inference.py --device cuda --repeats 2 --json "$OUT/inference.json"
stage 90 training.txt $PY bench/training.py --device cuda --json "$OUT/training.json"
# torch.compile fuses instance norm + activation in any layout: the likeliest route to 3x for
# instance-norm networks, but each compilation costs a minute, so it runs last on what is left
stage 150 compile.txt $PY bench/inference.py --device cuda --networks monai_dynunet \
    --variants fp16+cl+compile --repeats 2 --json "$OUT/compile.json"
stage 90 compile.txt $PY bench/training.py --device cuda --variants bf16+cl+compile+gpu --blocks 3
stage 150 compile.txt $PY bench/inference.py --device cuda --networks unet --variants fp16+cl+compile fp16+ncl+compile \
    --repeats 2
{
    echo
    echo "== verdicts"
    tail -n 1 "$OUT/pytest_gpu.txt" 2>/dev/null
    grep -h "MET\|bf16 matmul" "$OUT"/inference.txt "$OUT"/training.txt "$OUT"/compile.txt 2>/dev/null
} | tee -a "$OUT/summary.txt"

#!/usr/bin/env bash
# The one GPU call: on the lent NVIDIA machine, as it is (its own python3 with torch, no network, no venv),
# run the CUDA tests and the GPU bench, and leave one JSON report plus the log.
#
#   bash bench/gpu_check.sh             # on the GPU machine; the report and log go to $OUT (else bench/results/)
#   bash bench/gpu_check.sh --dry-run   # here, on a CPU: every step, in a throwaway Python 3.12 venv holding
#                                       # the GPU image's versions (bench/gpu_image_requirements.txt), tiny sizes
#
# Packages the GPU image lacks travel as wheels in ./.whl (fill it here with bench/gpu_wheels.sh; the device
# call names .whl in `carry`). They are installed with --no-deps into /tmp/site, never over the image's torch.
#
# Order (each step bounded by what is left of the deadline, so the report is written whatever happens):
#   1. the wheels, 2. the interpreter and versions, 3. pytest -m cuda, 4. python -m bench --only roofline,gpu,
#   5. if time is left: python -m bench --only probes,maps (the probe suite and the 100,000-point map).
# Exit status: 0 all passed; 1 a step failed; 3 no NVIDIA GPU here and no --dry-run (nothing was run).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
WHEELS="${WHEELS:-.whl}"
SITE="${SITE:-/tmp/site}"
RESULTS="${OUT:-bench/results}"
# 9 of the device call's 10 minutes on the GPU; a dry run gets 3x as long for every step (a 2-core CPU compiles and
# runs the same models, torch.compile included, far slower).
SCALE=1
[ "$DRY_RUN" = 1 ] && SCALE=3
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-$((540 * SCALE))}))
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check.log"
exec > >(tee "$LOG") 2>&1
left() { echo $((DEADLINE - SECONDS)); }
bounded() { local cap=$(($1 * SCALE)); shift; timeout $(( $(left) < cap ? $(left) : cap )) "$@"; }

if [ "$DRY_RUN" = 1 ]; then
    # The image's interpreter, imitated: Python 3.12 with the versions the GPU machine has (KINDS.md).
    VENV="${DRY_RUN_VENV:-/tmp/gpu-dryrun-venv}"
    PY312="$(command -v python3.12 || true)"
    [ -n "$PY312" ] || { echo "--dry-run needs python3.12 on PATH (the GPU image's Python)." >&2; exit 1; }
    [ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV" || exit 1
    "$VENV/bin/pip" install -q -r bench/gpu_image_requirements.txt || {
        echo "Could not install the GPU image's versions into $VENV (see pip above)." >&2; exit 1; }
    PYTHON="$VENV/bin/python"
    BENCH_SIZES=(--quick)
    echo "Dry run on $(uname -m), CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
else
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "bench/gpu_check.sh needs an NVIDIA GPU (nvidia-smi finds none here); nothing was run." >&2
        echo "On a CPU machine prove the steps with: bash bench/gpu_check.sh --dry-run" >&2
        exit 3
    fi
    PYTHON="$(command -v python3)"
    BENCH_SIZES=(--gpu-sizes)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi

echo "== 1. wheels ($(left) s left)"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || { echo "Installing the carried wheels from $WHEELS failed (pip's message above)." >&2; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no wheels in $WHEELS: the image's packages only"
fi

echo "== 2. interpreter ($(left) s left)"
"$PYTHON" - <<'EOF' || { echo "The project does not import on this interpreter (above): nothing else can run." >&2; exit 1; }
import platform, torch, torchvision, timm
import core.features.extract, core.probing.suite, bench.gpu  # the code every later step runs
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"timm {timm.__version__}, CUDA {torch.version.cuda}, GPU available {torch.cuda.is_available()}")
EOF

status=0
echo "== 3. CUDA tests ($(left) s left)"
bounded 150 "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests/core/features/test_cuda.py || status=1

echo "== 4. python -m bench --only roofline,gpu ${BENCH_SIZES[*]} ($(left) s left)"
bounded 330 "$PYTHON" -m bench --only roofline,gpu "${BENCH_SIZES[@]}" --workspace /tmp/flower-probe-gpu-bench \
    --out "$RESULTS/gpu-report.json" || status=1

if [ "$(left)" -gt $((120 * SCALE)) ]; then
    echo "== 5. python -m bench --only probes,maps ${BENCH_SIZES[*]} ($(left) s left)"
    bounded "$(( $(left) / SCALE ))" "$PYTHON" -m bench --only probes,maps "${BENCH_SIZES[@]}" \
        --workspace /tmp/flower-probe-gpu-bench --out "$RESULTS/gpu-report-probes-maps.json" || status=1
else
    echo "== 5. skipped: $(left) s left, too little for the probe suite and the map"
fi
echo "Reports: $(ls "$RESULTS"/gpu-report*.json 2>/dev/null | tr '\n' ' ')log: $LOG; exit $status"
exit $status

#!/usr/bin/env bash
# One short GPU check (issue 13): on a machine with an NVIDIA GPU and no internet, install Flower Probe's
# dependencies from wheels carried in a folder, run the CUDA tests, and run the roofline + extraction bench
# with GPU-sized inputs; the report lands in bench/results/gpu-<gpu name>.json. All within 8 minutes.
#
#   bash bench/gpu_check.sh            # wheels from ./.whl (default)
#   WHEELS=/path/to/wheels bash bench/gpu_check.sh
#
# Fill the wheel folder on a machine with internet, for the GPU machine's Python and platform, e.g.:
#   pip download -r requirements-dev.txt -d .whl --python-version 3.11 --platform manylinux_2_28_x86_64 --only-binary=:all:
# (torch's default Linux wheels carry CUDA). If the GPU machine's Python can already import torch with CUDA
# and the other requirements, nothing is installed.
#
# Exit status: 0 all passed; 1 a step failed; 3 no NVIDIA GPU here (nothing was run).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
WHEELS="${WHEELS:-.whl}"
VENV="${VENV:-.venv-gpu}"
DEADLINE=$((SECONDS + 480))  # 8 minutes for the whole check

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu_check.sh needs an NVIDIA GPU (nvidia-smi finds none here); nothing was run." >&2
    echo "On a CPU machine use: python -m bench --only roofline,extraction" >&2
    exit 3
fi
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
SLUG="$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')"
echo "GPU: $GPU_NAME"

left() { echo $((DEADLINE - SECONDS)); }

ready() {  # the interpreter $1 has torch with CUDA and the project's other imports
    "$1" -c "import torch, timm, sklearn, safetensors, pytest; assert torch.cuda.is_available()" >/dev/null 2>&1
}

PYTHON=""
for candidate in "$VENV/bin/python" ".venv/bin/python" "$(command -v python3 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && ready "$candidate"; then PYTHON="$candidate"; break; fi
done
if [ -z "$PYTHON" ]; then
    if [ ! -d "$WHEELS" ] || [ -z "$(ls -A "$WHEELS" 2>/dev/null)" ]; then
        echo "No Python here imports torch with CUDA, and the wheel folder $WHEELS is missing or empty." >&2
        echo "Fill it on a machine with internet (see the top of this script) and run again." >&2
        exit 1
    fi
    echo "Installing from $WHEELS into $VENV (offline)..."
    python3 -m venv "$VENV" || exit 1
    timeout "$(left)" "$VENV/bin/pip" install --quiet --no-index --find-links "$WHEELS" -r requirements-dev.txt || {
        echo "Offline install from $WHEELS failed: a wheel is missing for this Python/platform (see pip's message)." >&2
        exit 1
    }
    PYTHON="$VENV/bin/python"
    ready "$PYTHON" || { echo "torch in $VENV cannot use the GPU (a CPU-only torch wheel in $WHEELS?)." >&2; exit 1; }
fi
echo "Python: $PYTHON ($("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'))"

status=0
echo "== CUDA tests ($(left) s left)"
timeout $(( $(left) < 180 ? $(left) : 180 )) "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests/core/features/test_cuda.py || status=1

OUT="bench/results/gpu-$SLUG.json"
echo "== python -m bench --only roofline,extraction --gpu-sizes ($(left) s left)"
timeout "$(left)" "$PYTHON" -m bench --only roofline,extraction --gpu-sizes --out "$OUT" || status=1
[ -f "$OUT" ] && echo "Report: $OUT"
exit $status

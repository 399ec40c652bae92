#!/usr/bin/env bash
# Fill ./.whl with the packages the GPU image lacks (bench/gpu_check.sh installs them there with --no-deps).
# Python 3.12, manylinux x86-64 wheels, no dependencies the image already has. Run here, where PyPI answers.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl -r bench/gpu_wheels.txt
du -sh .whl

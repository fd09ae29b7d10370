#!/usr/bin/env bash
# One pass over everything in kadyn that needs a GPU, sized for a borrowed machine (< 5 minutes):
# the GPU kernel tests, the kernel benchmark, and a short `paper`-preset training run for tokens/s
# and MFU. The machine is bare apart from python3 (torch and triton usually present) and pip can
# only reach pre-downloaded wheels, so installing kadyn is attempted, never required: the kernels
# load without the native extension, the training run needs it and is skipped without it.
#
#   bash benches/gpu.sh            # from anywhere; runs in the repository root
#   PYTHON=/path/to/python bash benches/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${KADYN_GPU_OUT:-/tmp/kadyn-gpu}
mkdir -p "$OUT"
failed=()

section() { printf '\n=== %s (%ds elapsed)\n' "$1" "$SECONDS"; }

section "machine"
nvidia-smi || echo "nvidia-smi failed"
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "| triton", triton.__version__,
"| cuda", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")'

section "install kadyn (only if it does not import)"
if ! "$PY" -c 'import kadyn' 2>/dev/null; then
    set +e
    # A wheel carried in .whl/ first (no network needed), else an editable build, which needs
    # maturin and a Rust toolchain and may well be missing here.
    if ls .whl/kadyn-*.whl >/dev/null 2>&1; then
        timeout 45 "$PY" -m pip install --no-index --no-deps --find-links .whl kadyn
    else
        timeout 45 "$PY" -m pip install --no-deps --no-build-isolation -e .
    fi
    echo "install exit code $? (tolerated)"
    set -e
fi

section "GPU kernel tests"
# In-process pytest, after benches/kernels.py's import_kernels(): when kadyn/__init__ cannot load
# (native extension not built), the kernels are loaded under a bare `kadyn` package, and the test
# modules then import them from there (they need only torch and triton).
if ! timeout 90 "$PY" -c "
import pathlib, sys
sys.path.insert(0, 'benches')
from kernels import import_kernels
import_kernels()
import pytest
sys.exit(pytest.main(['-m', 'gpu', '-q', '-p', 'no:cacheprovider',
                      *sorted(map(str, pathlib.Path('tests').glob('test_kernel_*.py')))]))"; then
    failed+=("kernel tests")
fi

section "kernel benchmark"
if ! timeout 90 "$PY" benches/kernels.py --json "$OUT/kernels.json"; then
    failed+=("kernel benchmark")
fi

section "paper preset, 300 steps"
if "$PY" -c 'import kadyn.train' 2>/dev/null; then
    if command -v kadyn-train >/dev/null; then train=(kadyn-train); else train=("$PY" -m kadyn.train); fi
    run_dir=/tmp/kadyn-gpu-run
    rm -rf "$run_dir"  # kadyn-train refuses an --out that already holds a run
    set +e
    timeout 80 "${train[@]}" --preset paper --device cuda --steps 300 --eval-every 100 \
        --out "$run_dir" >"$OUT/train.log" 2>&1
    code=$?
    set -e
    tail -n 5 "$OUT/train.log"
    echo "--- tokens/s and MFU:"
    grep -E 'tok/s|MFU' "$OUT/train.log" || echo "(no tok/s or MFU line in $OUT/train.log)"
    if [ "$code" -ne 0 ]; then
        failed+=("training run (exit $code; 124 = timed out)")
    fi
else
    echo "skipped: kadyn.train does not import (native extension not installed)"
fi

section "done"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU checks passed"

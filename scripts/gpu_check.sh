#!/usr/bin/env bash
# GPU checks, for the day a CUDA machine is at hand. CI never runs this (it has no GPU).
#
#   scripts/gpu_check.sh [OUTPUT_DIR]        # default OUTPUT_DIR: gpu-check-<UTC time>
#
# 1. the CUDA-only tests (every test whose id mentions cuda, e.g. test_autocast's float16 and
#    bfloat16 cases on the GPU), at most 150 s;
# 2. `benchmarks/run.py --device cuda --quick`: WIAN, MCCL, the model with end-to-end AMP
#    training clips/s, and the data section (loader clips/s per worker next to the Pillow
#    decode floor, DataLoader with 0/1/2 workers), at most 300 s.
# Both limits together keep the run under 8 minutes. Reports go to OUTPUT_DIR (tests.log,
# bench.md, bench.log, gpu.txt). Needs the package installed (pip install -e '.[dev]');
# PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python3),
# BENCH_ARGS=... adds options to the benchmark (e.g. BENCH_ARGS="--threads 8").
# Exit status: 0 if both steps passed, 1 otherwise (each step still runs).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
out="${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out" || exit 1

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: $py sees no CUDA device (torch.cuda.is_available() is False)" >&2
    exit 1
fi
{
    "$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "|",
                                  torch.cuda.get_device_name(0))'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} | tee "$out/gpu.txt"

status=0

echo "== CUDA-only tests (limit 150 s)"
timeout 150 "$py" -m pytest -q -k cuda tests 2>&1 | tee "$out/tests.log"
rc=${PIPESTATUS[0]}
if [[ $rc -eq 5 ]]; then
    echo "gpu_check.sh: no test id mentions cuda: nothing GPU-specific was tested" >&2
    status=1
elif [[ $rc -ne 0 ]]; then
    echo "gpu_check.sh: CUDA tests failed (exit $rc; 124 = time limit)" >&2
    status=1
fi

echo "== benchmarks/run.py --device cuda --quick (limit 300 s)"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options on purpose
timeout 300 "$py" benchmarks/run.py --device cuda --quick --output "$out/bench.md" \
    ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
if [[ $rc -ne 0 ]]; then
    echo "gpu_check.sh: benchmark failed (exit $rc; 124 = time limit)" >&2
    status=1
fi

echo "== reports in $out/"
exit $status

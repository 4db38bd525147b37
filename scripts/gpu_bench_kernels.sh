#!/usr/bin/env bash
# The kernel benchmark on the GPU machine, in one call from the repository root:
#     bash scripts/gpu_bench_kernels.sh [more `bench kernels` options]
# First the decode kernels' GPU correctness test (if pytest is there), then `rla-convert bench kernels`
# writing kernels.json, kernels.png (if matplotlib is there) and kernels.md under $OUT.
set -eo pipefail
. scripts/gpu_env.sh
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_fused_recurrent.py 2>&1 | tail -5 || true
fi
python3 -c "import sys; from rla_convert.cli import main; sys.exit(main())" bench kernels \
  --json "$OUT/kernels.json" --plot "$OUT/kernels.png" --markdown "$OUT/kernels.md" "$@"

#!/usr/bin/env bash
# One GPU-machine call that checks and times the kernels: each part has its own time limit so a slow
# or hung part cannot eat the others. Logs (and bench json/md/png) land under $OUT.
#   bash scripts/gpu_session.sh [parts...]   parts: rla rdn tests bench distill convert (default: all)
set -o pipefail
. scripts/gpu_env.sh
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
parts=${*:-rla rdn tests bench}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
for part in $parts; do
  echo "=== $part $(date +%T)"
  case $part in
    rla) timeout ${RLA_LIMIT:-150} python3 scripts/gpu_check_rla.py ${RLA_ARGS:-} 2>&1 | tee "$OUT/check_rla.txt" ;;
    rdn) RDN_TRITON_ONE_CONFIG=1 timeout ${RDN_LIMIT:-280} python3 scripts/gpu_check_rdn.py ${RDN_ARGS:-} 2>&1 | tee "$OUT/check_rdn.txt" ;;
    tests) timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
             tests/kernels/test_fused_recurrent.py tests/kernels/test_api.py tests/kernels/test_torch_chunk.py 2>&1 | tee "$OUT/gpu_tests.txt" ;;
    bench) RLA_KERNELS_FIXED_CONFIG=${FIXED:-1} timeout ${BENCH_LIMIT:-240} python3 -c "import sys; from rla_convert.cli import main; sys.exit(main())" bench kernels \
             --seq-lens ${SEQ_LENS:-2048,8192,32768} --decode-contexts 2048,32768 --no-progress ${BENCH_ARGS:-} \
             --json "$OUT/kernels.json" --markdown "$OUT/kernels.md" 2>&1 | tee "$OUT/bench.txt" ;;
    distill) timeout ${DISTILL_LIMIT:-200} python3 -m pytest -q -p no:cacheprovider -m gpu -s tests/test_distill.py 2>&1 | tee "$OUT/distill_gpu.txt" ;;
    convert) timeout 150 python3 -m pytest -q -p no:cacheprovider -s tests/test_convert_gpu.py 2>&1 | tee "$OUT/convert_gpu.txt" ;;
  esac
  echo "=== $part done rc=$? $(date +%T)"
done

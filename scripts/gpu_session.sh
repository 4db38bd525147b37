#!/usr/bin/env bash
# One GPU-machine call that checks and times the kernels: each part has its own time limit so a slow
# or hung part cannot eat the others. Logs (and bench json/md/png) land under $OUT; only 8 files come back
# from a call, so pick a few parts per call (flagship: 2 files a recipe, benchmodel: 4). profile: GPU time per
# RLA/RDN kernel (scripts/profile_kernels.py; PROFILE_ARGS="--tune" autotunes, "--ops rdn" one op).
#   bash scripts/gpu_session.sh [parts...]   parts: rla rdn profile ncu determinism tests bench distill convert flagship benchmodel
#                                            (default: rla rdn tests bench; "rla+rdn+tests": side by side, checks only)
# Compiles: every part logs what it compiles to $OUT/compiles.jsonl (RLA_KERNELS_COMPILE_LOG; COMPILE_LOG=0: not,
# which frees one of the 8 files that come back), and before the parts the kernels of WARM_LOGS (default
# docs/next/compiles.jsonl: keep it as the last call's log, merged) are compiled all at once on every core
# (scripts/warm_kernels.py; WARM=0: not), so that the parts load them from Triton's cache instead of compiling one at
# a time. WARM_MODULES="rla_kernels.rla,fla.ops.common.chunk_h,...": only those modules' kernels (a call timing RLA
# and fla's simple GLA alone: 606 kernels in 57 s where the whole log took 177-206 s on a cold H100, 2026-12-05).
# PATCHES="docs/next/0001-x.patch ...": applied to the tree before gpu_env.sh installs it, so that every part runs
# them (a patch applied after the install does not reach the installed kernels the parts import: 2026-12-02); one
# that does not apply ends the call before any GPU work.
set -o pipefail
# Python block-buffers its output into a pipe (tee): a part killed by its limit would come back with nothing printed
# (2026-12-04 18:40: a cold gpu pytest came back as "..").
export PYTHONUNBUFFERED=1
for patch in ${PATCHES:-}; do
  git apply "$patch" || { echo "gpu_session.sh: $patch does not apply to this tree"; exit 2; }
  echo "applied $patch"
done
. scripts/gpu_env.sh
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
parts=${*:-rla rdn tests bench}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
RLA="python3 -m rla_convert"
if [ "${WARM:-1}" != 0 ]; then
  logs=""; for f in ${WARM_LOGS:-docs/next/compiles.jsonl}; do [ -f "$f" ] && logs="$logs $f"; done
  if [ -n "$logs" ]; then
    echo "=== warm $(date +%T)"; timeout ${WARM_LIMIT:-240} python3 scripts/warm_kernels.py $logs \
      ${WARM_MODULES:+--modules "$WARM_MODULES"} 2>&1  # (no file: 8 come back)
  fi
fi
if [ "${COMPILE_LOG:-1}" != 0 ]; then
  case $OUT in /*) export RLA_KERNELS_COMPILE_LOG=$OUT/compiles.jsonl ;; *) export RLA_KERNELS_COMPILE_LOG=$PWD/$OUT/compiles.jsonl ;; esac
fi
GGUF=/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
# The GGUF (98 MB) is over what one call carries: .gguf_a/part travels in one call (kept in /tmp on the warm
# machine), .gguf_b/part in the next, which must come within the 30 s the machine stays warm (BENCHMARKS.md).
assemble_gguf() {
  [ -f .gguf_a/part ] && mkdir -p /tmp/gguf && cp .gguf_a/part /tmp/gguf/a
  [ -f .gguf_b/part ] && [ -f /tmp/gguf/a ] && cat /tmp/gguf/a .gguf_b/part > "$GGUF"
  if [ ! -f "$GGUF" ]; then echo "no $GGUF yet: carry .gguf_a in one call, then .gguf_b in the next"; return 1; fi
  md5sum "$GGUF" | tee -a "$OUT/device.txt"  # a1231443440b107ff29f02bdb38c9d0a
}
TRITON_CACHE=${TRITON_CACHE_DIR:-${TRITON_HOME:-$HOME}/.triton/cache}
cache_entries() { find "$TRITON_CACHE" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l; }
entries=$(cache_entries)
# side_by_side FILE "ARGS; ARGS..." COMMAND...: COMMAND once per ;-group of arguments, all at once; their outputs into
# FILE one after the other (and to stdout); the status is a failing one's
side_by_side() {
  local file=$1 arg_groups=$2 i=0 pids="" group rc=0 pid; shift 2
  IFS=';' read -ra groups <<< "${arg_groups//$'\n'/;}"
  for group in "${groups[@]}"; do
    [ -z "${group// /}" ] && continue  # "a; " or "a;;b": no group of no arguments (pytest would run every test)
    i=$((i + 1)); "$@" $group > "$file.$i" 2>&1 & pids="$pids $!"
  done
  [ $i = 0 ] && { i=1; "$@" > "$file.1" 2>&1 & pids=$!; }  # no arguments at all: the command once, as it is
  for pid in $pids; do wait $pid || rc=$?; done
  for j in $(seq 1 $i); do cat "$file.$j"; rm "$file.$j"; done > "$file"
  cat "$file"; return $rc
}
run_part() {
  local part=$1
  case $part in
    rla) timeout ${RLA_LIMIT:-250} python3 scripts/gpu_check_rla.py ${RLA_ARGS:-} 2>&1 | tee "$OUT/check_rla.txt" ;;
    rdn)  # RDN_ARGS="--all; --all --set X=1": each ;-group its own check, side by side
      side_by_side "$OUT/check_rdn.txt" "${RDN_ARGS:-}" env RLA_KERNELS_FIXED_CONFIG=1 timeout ${RDN_LIMIT:-280} \
        python3 scripts/gpu_check_rdn.py ;;
    determinism) RLA_KERNELS_FIXED_CONFIG=1 timeout ${DETERMINISM_LIMIT:-150} python3 docs/next/rdn-grad-determinism.py 2>&1 | tee "$OUT/determinism.txt" ;;
    profile) timeout ${PROFILE_LIMIT:-150} python3 scripts/profile_kernels.py ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/profile.txt" ;;
    tests)  # TESTS="a.py b.py; c.py": each ;-group its own pytest, side by side (a cold one compiles on one core).
      # The limit interrupts pytest as ^C does, so that it still prints its failures' tracebacks (2026-12-05: a
      # SIGTERM at the limit took two failures' reasons with it)
      side_by_side "$OUT/gpu_tests.txt" "${TESTS:-tests/kernels}" env RLA_KERNELS_FIXED_CONFIG=${FIXED:-1} \
        timeout -s INT -k 20 ${TESTS_LIMIT:-240} python3 -m pytest -v -p no:cacheprovider -m gpu --durations=8 ;;
    bench) RLA_KERNELS_FIXED_CONFIG=${FIXED:-1} timeout ${BENCH_LIMIT:-240} $RLA bench kernels \
             --seq-lens ${SEQ_LENS:-2048,8192,32768} --decode-contexts 2048,32768 --no-progress ${BENCH_ARGS:-} \
             --json "$OUT/kernels.json" --markdown "$OUT/kernels.md" 2>&1 | tee "$OUT/bench.txt" ;;
    distill) timeout ${DISTILL_LIMIT:-200} python3 -m pytest -q -p no:cacheprovider -m gpu -s tests/test_distill.py 2>&1 | tee "$OUT/distill_gpu.txt" ;;
    flagship)  # RECIPES="rdn rla gdn": recipes/smollm2-135m-$r.yaml on the bundled GGUF, side by side when several
      assemble_gguf || return 1
      for r in ${RECIPES:-rdn}; do
        # a warm machine keeps /tmp/runs: start clean unless resuming, so no earlier run's results come back
        case " ${FLAGSHIP_SET:-} " in *" --resume "*) ;; *) rm -rf /tmp/runs/$r ;; esac
        (TQDM_MININTERVAL=15 RLA_KERNELS_FIXED_CONFIG=1 timeout ${FLAGSHIP_LIMIT:-560} $RLA distill recipes/smollm2-135m-$r.yaml \
          --set model=$GGUF --set output=/tmp/runs/$r ${FLAGSHIP_SET:-} > "$OUT/flagship_$r.txt" 2>&1; echo "rc=$?" >> "$OUT/flagship_$r.txt") &
      done
      wait
      for r in ${RECIPES:-rdn}; do
        tail -c 3000 "$OUT/flagship_$r.txt"
        # one tar a run (only 8 files come back from a call); metrics alone if the run did not finish
        if [ -f /tmp/runs/$r/final/summary.json ]; then
          tar -C /tmp/runs/$r -cf "$OUT/run_$r.tar" metrics.jsonl losses.png final
        else
          echo "flagship $r: no final/ (stopped early): bringing back its metrics only"
          tar -C /tmp/runs/$r -cf "$OUT/run_$r.tar" metrics.jsonl
        fi
      done ;;
    benchmodel)  # teacher vs the distilled flagship kept in docs/runs (the GGUF as for flagship)
      assemble_gguf || return 1
      rm -rf /tmp/rdnrun /tmp/rdn-export && cp -r docs/runs/smollm2-135m-rdn /tmp/rdnrun \
        && sed -i "s#^model: .*#model: $GGUF#" /tmp/rdnrun/final/recipe.yaml
      if ! timeout 200 $RLA export /tmp/rdnrun --out /tmp/rdn-export 2>&1 | tail -3; then
        echo "benchmodel: export of docs/runs/smollm2-135m-rdn failed"; return 1
      fi
      timeout ${BENCH_MODEL_LIMIT:-400} $RLA bench model "$GGUF" /tmp/rdn-export --no-progress ${BENCH_MODEL_ARGS:-} \
        --json "$OUT/model.json" --markdown "$OUT/model.md" --plot "$OUT/model.png" 2>&1 | tee "$OUT/bench_model.txt" ;;
    ncu)  # Nsight Compute's counters (warp states, issue slots, memory, stall samples per SASS instruction and per
      # Python line) for one call of each pass of scripts/ncu_kernels.py (NCU_ARGS); NCU_KERNELS: ncu's --kernel-name
      NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      timeout ${NCU_LIMIT:-420} $NCU --profile-from-start off --clock-control none --import-source yes \
        --kernel-name "${NCU_KERNELS:-regex:rdn_walk|rdn_bwd_walk|rdn_bwd_rebuild|rdn_bwd_mats|rdn_bwd_grad|kernel_h_|kernel_dhu}" \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section InstructionStats --section SourceCounters -f -o /tmp/ncu_kernels \
        python3 scripts/ncu_kernels.py ${NCU_ARGS:-} 2>&1 | tee "$OUT/ncu.txt"
      $NCU -i /tmp/ncu_kernels.ncu-rep --page details --csv > "$OUT/ncu_details.csv" 2>&1
      n=$(grep -c '"Duration"' "$OUT/ncu_details.csv")
      # every profiled kernel's SASS with its counters, in turn (the Python-line view comes back without them)
      for i in $(seq 0 $((n - 1))); do
        echo "### result $i"
        $NCU -i /tmp/ncu_kernels.ncu-rep --page source --csv --print-source sass --launch-skip $i --launch-count 1
      done > "$OUT/ncu_source_sass.csv" 2>&1
      [ -n "${NCU_KEEP:-}" ] && gzip -c /tmp/ncu_kernels.ncu-rep > "$OUT/ncu_kernels.ncu-rep.gz"; ls -la "$OUT" ;;
    convert) timeout 150 python3 -m pytest -q -p no:cacheprovider -s tests/test_convert_gpu.py 2>&1 | tee "$OUT/convert_gpu.txt" ;;
  esac
}
# A part joined to others by + runs beside them ("rdn+rla+tests"): for checks, whose results do not depend on what
# else the GPU runs, never for timings (bench, profile, ncu) nor two parts that assemble the GGUF. Their output comes
# after the group, one part at a time.
for group in $parts; do
  echo "=== $group $(date +%T)"
  if [[ $group == *+* ]]; then
    pids=""; logs=$(mktemp -d)
    for part in ${group//+/ }; do run_part "$part" > "$logs/$part.log" 2>&1 & pids="$pids $!"; done
    rc=0; for pid in $pids; do wait $pid || rc=$?; done
    for part in ${group//+/ }; do echo "--- $part"; cat "$logs/$part.log"; done; rm -r "$logs"
  else
    run_part "$group"; rc=$?
  fi
  # what the part compiled that the warm-up had not: each compile is a new folder of Triton's cache
  echo "=== $group done rc=$rc $(date +%T), $(( $(cache_entries) - entries )) kernels compiled (not in the cache)"
  entries=$(cache_entries)
done

#!/usr/bin/env bash
# GPU checks (issue 13, part 4), for one CUDA machine, in under 8 minutes:
#
#   bench/device_check.sh            # from the repository root, with actlang installed
#
# 1. the CUDA tests: statistics, selection, transfer and fine-tune agree with the CPU,
#    float32 and bfloat16 (tests/run/test_cuda.py);
# 2. `actc run` end to end on the GPU (the run tests pick CUDA when it is there);
# 3. the capture benchmark on the GPU, float32 and bfloat16 (bench/bench_stats.py).
#
# Prints one summary line per check; each check's full log goes to $LOGS (default: a
# temporary directory). The exit status is the number of checks that failed.
set -u
PYTHON=${PYTHON:-python3}
LOGS=${LOGS:-$(mktemp -d -t actlang-device-check-XXXXXX)}
export PYTHONUNBUFFERED=1 ACTLANG_CACHE_DIR=${ACTLANG_CACHE_DIR:-$LOGS/cache}
failed=0

check() {  # check NAME TIMEOUT_S COMMAND...: run it, print "NAME: ok|FAIL (s) last line"
    local name=$1 limit=$2 start status
    shift 2
    start=$(date +%s)
    if timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1; then status=ok; else
        status=FAIL; failed=$((failed + 1)); fi
    printf '%-16s %-4s (%3d s)  %s\n' "$name" "$status" "$(($(date +%s) - start))" \
        "$(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-110)"
}

"$PYTHON" - <<'EOF' || exit 99
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("device_check: no CUDA device here, nothing to check")
print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}")
EOF
check cuda-tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/run/test_cuda.py
check actc-run-gpu 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/run/test_actc_run.py
check capture-fp32 120 "$PYTHON" bench/bench_stats.py --device cuda --repeats 4 --threads 8
check capture-bf16 120 "$PYTHON" bench/bench_stats.py --device cuda --dtype bfloat16 \
    --repeats 4 --threads 8
grep -h "unpaired statistics" "$LOGS"/capture-*.log | sed 's/^/  /'
echo "logs: $LOGS"
exit "$failed"

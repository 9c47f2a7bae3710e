#!/usr/bin/env bash
# One-call GPU run: build, GPU tests, quick benchmarks, summary table printed last.
#
#   bash bench/gpu_suite.sh OUTDIR
#   bash bench/gpu_suite.sh --test-commands   # the test stages' pytest arguments, one stage a line
#
# For an H100/H200 machine with no network (python3 3.12, torch 2.11 cu130, triton 3.6,
# nvcc 13.0). Whole run held under SUITE_SECONDS (default 450 s, inside an 8-minute
# lease); every stage runs under `timeout` with what is left, so one hang cannot eat the
# budget. Files written to OUTDIR (8 at most, as a lease returns): suite.log,
# attention.jsonl, kv_cache.jsonl, accept.jsonl, e2e.jsonl, e2e_targets.jsonl,
# skipped.jsonl, summary.txt.
set -uo pipefail

# GPU tests, two stages: the CUDA extension's tests/cuda first (no Triton compiles), then
# every other test with a [triton] / [cuda] id in three shards run side by side
# (bench/run_shards.py), since each Triton kernel variant compiles from a cold cache and one
# pytest process compiles them one after another. Left out: slow tests and the CPU-only
# sm_90a compile checks (marker compile_check). bench.report_now prints each failure as it
# happens, so a stage killed by its timeout keeps them; -rf repeats them at the end.
# -v: one line per finished test, so the log of a killed stage shows how far it got.
TEST_OPTS=(-m "not slow and not compile_check" -k "triton or cuda" -p no:cacheprovider -p bench.report_now
           -v -rf --tb=short --maxfail=10)
TESTS_CUDA=(-m pytest tests/cuda "${TEST_OPTS[@]}")
SHARDS=("tests/triton" "tests/ops" "tests --ignore=tests/cuda --ignore=tests/triton --ignore=tests/ops")
SHARD_ARGS=()
for s in "${SHARDS[@]}"; do SHARD_ARGS+=(--shard "$s"); done
TESTS_REST=(-m bench.run_shards "${SHARD_ARGS[@]}" -- "${TEST_OPTS[@]}")
if [[ "${1:-}" == "--test-commands" ]]; then  # one pytest run a line: tests/cuda, then each shard
    printf '%q ' "${TESTS_CUDA[@]}"; echo
    for s in "${SHARDS[@]}"; do
        # shellcheck disable=SC2086 # a shard is its paths, split on spaces
        printf '%q ' -m pytest $s "${TEST_OPTS[@]}"; echo
    done
    exit 0
fi

OUT="${1:?usage: bench/gpu_suite.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
LOG="$OUT/suite.log"
# (the benchmarks switch tridiff's host value checks off themselves; the tests need them on)
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}"
START=$(date +%s)
DEADLINE=$((START + ${SUITE_SECONDS:-450}))
SUMMARY_RESERVE=15

left() { echo $((DEADLINE - $(date +%s) - SUMMARY_RESERVE)); }

# stage NAME MAX_SECONDS CMD...: run CMD under timeout min(MAX, time left); log everything.
stage() {
    local name="$1" max="$2"; shift 2
    local l; l=$(left)
    local t=$(( max < l ? max : l ))
    if (( t < 20 )); then
        echo "### $name: SKIPPED (only ${l}s left)" | tee -a "$LOG"
        return 0
    fi
    echo "### $name (timeout ${t}s) : $*" | tee -a "$LOG"
    local s=$(date +%s)
    STAGE_T=$t timeout -k 10 "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo >>"$LOG"  # a killed stage may leave its last line unterminated
    echo "### $name: rc=$rc in $(( $(date +%s) - s ))s" | tee -a "$LOG"
    return $rc
}

{
    echo "### environment $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | head -3
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
    nvcc --version 2>&1 | tail -1
    git rev-parse HEAD 2>/dev/null; git status --porcelain --untracked-files=no 2>/dev/null | head -5
} >>"$LOG" 2>&1

# 1. Build (CUDA extension included). If it fails or runs out of time, install the pure
#    Python + Triton package so the benchmarks still run (cuda backend then "not built").
if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
    echo "### install: skipped (SKIP_INSTALL=1)" | tee -a "$LOG"
elif ! stage install 220 "$PY" -m pip install --no-build-isolation --no-deps -e . ; then
    TRIDIFF_BUILD_CUDA=0 TRIDIFF_BUILD_CPP=0 stage install-python-only 60 \
        "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF'
from tridiff import _dispatch
for b in _dispatch.BACKENDS:
    m = _dispatch.backend_module(b)
    why = _dispatch._import_errors.get(b) if m is None else (getattr(m, "unavailable", lambda: None)())
    print(f"backend {b}: {'available' if not why else why}")
EOF

# 2. GPU tests (see TEST_OPTS above). Sized from a CPU dry run of the collection
#    (`--collect-only -p bench.gpu_collect`, as a CUDA machine collects): 48 tests in
#    tests/cuda (no Triton); shards of 157 / 246 / 90 tests with 157 / 123 / 16 [triton]
#    cases, each new kernel variant ~0.3-3 s of compiling (sm_90a compile test on CPU).
stage tests-cuda 45 "$PY" "${TESTS_CUDA[@]}"
stage tests 120 "$PY" "${TESTS_REST[@]}"

# 3. Benchmarks, quick mode; --budget-s stops starting new shapes early enough to write rows.
bench() {  # bench MODULE MAX_SECONDS
    local l; l=$(left)
    local t=$(( $2 < l ? $2 : l ))
    stage "$1" "$2" "$PY" -m "bench.$1" --quick --out "$OUT" --budget-s $(( t > 40 ? t - 25 : 15 ))
}
bench bench_attention 120
bench bench_e2e 110
bench bench_accept 60
bench bench_kv_cache 40

# 4. Summary last (the lease returns the end of the output).
echo "### total $(( $(date +%s) - START ))s" | tee -a "$LOG"
"$PY" -m bench.summarize "$OUT" | tee "$OUT/summary.txt"
grep -E "^### .*rc=|SKIPPED|passed|failed|error" "$LOG" | tail -15

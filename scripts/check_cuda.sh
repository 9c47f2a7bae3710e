#!/usr/bin/env bash
# Compile-check every torch-free CUDA source for sm_90a (no GPU needed):
#   csrc/**/*.cu   compiled as they are (the launchers instantiate every kernel);
#   csrc/**/*.cuh  each through a generated one-line .cu that defines
#                  TD_CHECK_INSTANTIATE (the header then instantiates its kernel
#                  templates) and includes it, so the device code is really built;
#   csrc/cpu/*.cpp with the host compiler (same headers, CUDA macros neutralised);
# then links the launcher objects (+ csrc/bindings.cpp when pybind11 is importable)
# into one shared object against libcudart and imports it, which catches duplicate
# or missing symbols across translation units (no GPU needed to import).
# Fails on the first error; prints what it compiled. Usage: bash scripts/check_cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
CXX=${CXX:-g++}
ARCH=(-gencode arch=compute_90a,code=sm_90a)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
command -v "$NVCC" >/dev/null || { echo "check_cuda: nvcc not found (set NVCC)"; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PY=${PYTHON:-}
[ -z "$PY" ] && { [ -x .venv/bin/python ] && PY=$PWD/.venv/bin/python || PY=python3; }
PYBIND_INC=$("$PY" -c 'import pybind11; print(pybind11.get_include())' 2>/dev/null || true)
PY_INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
HAVE_PYBIND=0
[ -n "$PYBIND_INC" ] && [ -f "$PY_INC/Python.h" ] && HAVE_PYBIND=1

jobs_file="$WORK/jobs"
: >"$jobs_file"
[ "$HAVE_PYBIND" = 1 ] && echo "pyb|csrc/bindings.cpp|csrc/bindings.cpp" >>"$jobs_file"
while IFS= read -r f; do
  if grep -qE '#include[[:space:]]*[<"](torch|ATen|c10)/' "$f"; then
    echo "skip (torch headers): $f"; continue
  fi
  echo "nvcc|$f|$f" >>"$jobs_file"
done < <(find csrc -name '*.cu' | sort)
while IFS= read -r h; do
  gen="$WORK/$(echo "$h" | tr '/.' '__').cu"
  printf '#define TD_CHECK_INSTANTIATE 1\n#include "%s"\n' "$PWD/$h" >"$gen"
  echo "nvcc|$gen|$h" >>"$jobs_file"
done < <(find csrc -name '*.cuh' | sort)
while IFS= read -r f; do
  grep -qiE 'pybind11' "$f" && { echo "skip (needs pybind11, built by setup.py): $f"; continue; }
  echo "cxx|$f|$f" >>"$jobs_file"
done < <(find csrc/cpu -name '*.cpp' | sort)

compile_one() {
  IFS='|' read -r tool src label <<<"$1"
  out="$WORK/$(echo "$label" | tr '/.' '__').o"
  if [ "$tool" = pyb ]; then
    "$CXX" -std=c++17 -O1 -fPIC -fvisibility=hidden -Icsrc -I"$PYBIND_INC" -I"$PY_INC" -c "$src" -o "$out" \
      || { echo "FAILED: $label"; return 1; }
  elif [ "$tool" = nvcc ]; then
    "$NVCC" -std=c++17 "${ARCH[@]}" -Xcompiler -fPIC -c "$src" -o "$out" -Icsrc || { echo "FAILED: $label"; return 1; }
  else
    "$CXX" -std=c++17 -O1 -fopenmp -Wall -Werror -c "$src" -o "$out" -Icsrc || { echo "FAILED: $label"; return 1; }
  fi
  echo "compiled ($tool): $label"
}
export -f compile_one
export NVCC CXX WORK PYBIND_INC PY_INC
export ARCH_STR="${ARCH[*]}"
start=$(date +%s)
# xargs returns non-zero if any job failed.
if ! tr '\n' '\0' <"$jobs_file" | xargs -0 -P "$JOBS" -I{} bash -c 'ARCH=($ARCH_STR); compile_one "$@"' _ {}; then
  echo "check_cuda: FAILED"; exit 1
fi

# ---- link check -------------------------------------------------------------------
CUDA_LIB=$(dirname "$(dirname "$(command -v "$NVCC")")")/lib64
[ -d "$CUDA_LIB" ] || CUDA_LIB=${CUDA_HOME:-/usr/local/cuda}/lib64
launchers=()
while IFS= read -r f; do launchers+=("$WORK/$(echo "$f" | tr '/.' '__').o"); done < <(find csrc -name '*_launch.cu' | sort)
if [ "$HAVE_PYBIND" = 1 ]; then
  suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
  mkdir -p "$WORK/mod"
  "$CXX" -shared "${launchers[@]}" "$WORK/csrc_bindings_cpp.o" -L"$CUDA_LIB" -lcudart -o "$WORK/mod/_cuda$suffix" \
    || { echo "FAILED: linking the CUDA module"; exit 1; }
  (cd "$WORK/mod" && LD_LIBRARY_PATH="$CUDA_LIB:${LD_LIBRARY_PATH:-}" "$PY" -c 'import _cuda; _cuda.scan_chunk(1)') \
    || { echo "FAILED: importing the linked CUDA module"; exit 1; }
  echo "linked + imported: launchers + bindings -> _cuda$suffix (cudart only: $(ldd "$WORK/mod/_cuda$suffix" | grep -o 'libcuda[a-z]*\.so[.0-9]*' | sort -u | tr '\n' ' '))"
else
  "$CXX" -shared "${launchers[@]}" -L"$CUDA_LIB" -lcudart -Wl,--no-undefined -o "$WORK/launchers.so" \
    || { echo "FAILED: linking the launchers"; exit 1; }
  echo "linked: launchers (pybind11 not importable: bindings.cpp skipped)"
fi
echo "check_cuda: OK ($(wc -l <"$jobs_file") files, $(( $(date +%s) - start ))s)"

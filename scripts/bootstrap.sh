#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repository root with the pinned CPU test
# environment and tridiff installed editable. Re-installs only when the
# requirements or the build inputs changed since the last run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $($python --version 2>&1)"
    "$python" -m venv .venv
fi

inputs=(requirements-cpu.txt pyproject.toml setup.py)
[ -f csrc_build.py ] && inputs+=(csrc_build.py)
stamp_now="$( (cat "${inputs[@]}"; find csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.inc' \) 2>/dev/null | sort | xargs -r cat) | sha256sum | cut -d' ' -f1)"
stamp_file=.venv/.tridiff-bootstrap
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_now" ]; then
    echo "bootstrap: installing the pinned environment (requirements-cpu.txt)"
    .venv/bin/python -m pip install -q --upgrade "pip>=24" "setuptools>=77" wheel
    .venv/bin/python -m pip install -q -r requirements-cpu.txt
    # --no-build-isolation: build against the torch just installed (an isolated
    # build would see no torch and compile nothing).
    echo "bootstrap: installing tridiff (editable)"
    # setuptools reports every editable install of a package-dir mapping (ours maps
    # kernels/ to tridiff.kernels) through an information-only warning; silence just that.
    PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
    echo "$stamp_now" > "$stamp_file"
fi

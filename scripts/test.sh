#!/usr/bin/env bash
# Bootstrap .venv/ if needed, then run the test suite (extra args go to pytest).
# pytest exits non-zero when it collects no test, so an empty run fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m pytest -q "$@"

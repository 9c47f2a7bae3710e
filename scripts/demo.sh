#!/usr/bin/env bash
# Bootstrap .venv/ if needed, then run the demo: the bundled tiny default model
# (random weights, written once to .tridiff-demo/) decoded in all four modes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/tridiff demo "$@"

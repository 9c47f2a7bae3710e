#!/usr/bin/env bash
# Bootstrap .venv/ if needed, then run the demo: the bundled trained model
# completes held-out Python prompts in all four decoding modes (about a minute on CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/tridiff demo "$@"

#!/usr/bin/env bash
# bench.sh - `make bench`: figures, never pass/fail on time.
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 tests/bench/bench.py "$@"

#!/usr/bin/env bash
# bench.sh - `make bench`: figures, never pass/fail on time.
#   1. the CLI on a random gpt2-shaped (124M) checkpoint, with the same
#      workload through transformers when it is installed;
#   2. a typing session through `gpt2 serve`, prefix reuse on and off.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 tests/bench/bench.py "$@"
/usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32

#!/usr/bin/env bash
# make-fixtures.sh - `make fixtures`: regenerate tests/fixtures from Hugging
# Face transformers (the oracle), run from .venv-oracle (oracle-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/oracle-env.sh
.venv-oracle/bin/python tests/oracle/make_fixtures.py "$@"

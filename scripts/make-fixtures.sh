#!/usr/bin/env bash
# make-fixtures.sh - `make fixtures`: regenerate tests/fixtures from Hugging
# Face transformers (the oracle). Needs Debian's python3-torch (installed
# here as root, else the apt-get line is printed) and transformers from PyPI
# in .venv-oracle, a venv that sees the system's torch.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}' python3-torch python3-venv 2>/dev/null | grep -c 'install ok installed' | grep -q 2; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run: sudo apt-get install -y python3-torch python3-venv" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-torch python3-venv >&2
fi
venv=.venv-oracle
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
# 4.46.x is the newest transformers that still runs on Debian 12's torch 1.13.
"$venv/bin/pip" install -q "transformers==4.46.3" "tokenizers==0.20.3" safetensors
"$venv/bin/python" tests/oracle/make_fixtures.py "$@"

#!/usr/bin/env bash
# oracle-env.sh - the reference Python: Debian's python3-torch (installed
# here as root, else the apt-get line is printed and the script fails) and
# transformers from PyPI in .venv-oracle, a venv that sees the system's
# torch. Used by `make fixtures` (the oracle) and `make bench` (the same
# workloads through transformers). Prints nothing on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}\n' python3-torch python3-venv 2>/dev/null | grep -c 'install ok installed' | grep -q 2; then
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
if ! "$venv/bin/python" -c 'import sys, safetensors, transformers
sys.exit(transformers.__version__ != "4.46.3")' 2>/dev/null; then
    "$venv/bin/pip" install -q "transformers==4.46.3" "tokenizers==0.20.3" safetensors >&2
fi

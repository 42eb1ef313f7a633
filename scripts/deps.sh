#!/usr/bin/env bash
# deps.sh build|test - make sure the Debian packages gpt2.nvim needs are
# installed. As root, installs what is missing with apt-get; otherwise prints
# the exact command to run and exits 1.
set -euo pipefail

build_pkgs=(gcc make pkg-config libcjson-dev libpcre2-dev libopenblas-dev libuv1-dev
            libmsgpack-dev)
test_pkgs=(python3 python3-numpy python3-pytest python3-msgpack neovim curl clang
           libclang-rt-dev)

case "${1:-build}" in
build) want=("${build_pkgs[@]}") ;;
test) want=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
*) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "gpt2.nvim needs these Debian packages: ${missing[*]}" >&2
    echo "run: sudo apt-get update && sudo $cmd" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
$cmd >&2

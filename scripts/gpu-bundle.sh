#!/usr/bin/env bash
# gpu-bundle.sh - for a GPU machine that has CUDA but none of our Debian
# packages and no network (the device machines lent to some sessions): build
# here and pack into .gpu/ (ignored by git, small enough to carry) the
# binaries and the shared libraries they load, with a script that installs
# them there:
#
#   here:  scripts/gpu-bundle.sh
#   there: . .gpu/setup.sh && GPT2_REQUIRE_GPU=1 python3 -m pytest -rs tests/test_gpu.py
#          (or python3 tests/bench/bench_gpu.py; build/test_unit data/gpt2-tokenizer
#          and build/bench_cpu --kernels for the host CPU's kernels, AMX there)
#
# The CUDA libraries are not packed: gpt2-cuda.so finds cuBLAS and the CUDA
# runtime of the machine (same major version as the nvcc that built it).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s all build/bench_cpu build/test_unit
[ -f build/gpt2-cuda.so ] || { echo "gpu-bundle: no build/gpt2-cuda.so (nvcc not found)" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/lib
cp build/gpt2 build/gpt2-cuda.so build/bench_cpu build/test_unit .gpu/
# every library the binaries load, except the C and compiler runtimes every
# system has (an older libgcc_s ahead on the path would break newer programs
# there, python3 included)
ldd build/gpt2 build/bench_cpu build/test_unit | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" .gpu/lib/; done
tar cJf .gpu/lib.tar.xz -C .gpu lib && rm -rf .gpu/lib
cat > .gpu/setup.sh <<'SETUP'
# . .gpu/setup.sh (from the repository root): the bundled binaries into
# build/, their libraries on the loader's path, CUDA's too.
mkdir -p build .gpu/lib && tar xJf .gpu/lib.tar.xz -C .gpu
cp .gpu/gpt2 .gpu/gpt2-cuda.so .gpu/bench_cpu .gpu/test_unit build/
export LD_LIBRARY_PATH="$PWD/.gpu/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
SETUP
echo "gpu-bundle: .gpu/ $(du -sh .gpu | cut -f1) ($(ls .gpu))"

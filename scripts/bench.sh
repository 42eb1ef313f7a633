#!/usr/bin/env bash
# bench.sh - `make bench`: figures, never pass/fail on time.
#   1. kernels, floor and the CLI on a random gpt2-shaped (124M) checkpoint in
#      each weight format, with the same workload through transformers
#      (set up first by oracle-env.sh, or GPT2_REF_PYTHON);
#   2. a typing session through `gpt2 serve` in each format (fp32 also
#      without prefix reuse); int8 again with a busy loop beside the helper
#      (on up to 4 CPUs: where one loop takes a real share), with and without
#      the pool's thread cuts; and where the CPU has AVX-512 int8 and bf16
#      again on the AVX2 kernels (int8 also with AVX-VNNI's, where it has that).
set -euo pipefail
cd "$(dirname "$0")/.."
# the transformers side (torch from Debian, transformers from PyPI); without
# it (no root, no network) bench.py prints SKIP and why
if [ -z "${GPT2_REF_PYTHON:-}" ] && ! scripts/oracle-env.sh; then
    echo "SKIP reference setup: scripts/oracle-env.sh failed (above)" >&2
fi
/usr/bin/python3 tests/bench/bench.py "$@"
/usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32 --cpu-dtype int4 int8 bf16 --no-off
/usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32 --cpu-dtype fp32
# with one busy loop beside the helper (another program keeping a CPU busy):
# the pool's thread cuts, and every thread regardless (GPT2_CPU_ADAPT=0)
if [ "$(nproc)" -le 4 ]; then
    /usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32 --cpu-dtype int8 --no-off --pauses 12 --busy 1
    GPT2_CPU_ADAPT=0 /usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32 --cpu-dtype int8 --no-off --pauses 12 --busy 1
fi
# as a CPU without AVX-512 types: the AVX2 kernels, OpenBLAS's Haswell sgemm
if grep -qw avx512f /proc/cpuinfo; then
    GPT2_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell \
        /usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32 --cpu-dtype int8 bf16 --no-off
    # and int8 with AVX-VNNI's kernel, where the CPU has it
    if grep -qw avx_vnni /proc/cpuinfo; then
        GPT2_CPU_ISA=avxvnni OPENBLAS_CORETYPE=Haswell \
            /usr/bin/python3 tests/bench/typing_session.py build/bench/gpt2-124m-f32 --cpu-dtype int8 --no-off
    fi
fi

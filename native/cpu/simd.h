/* simd.h - what the CPU kernels share: GNU vector types of 16 lanes (one
 * zmm, two ymm or four xmm, whichever the clone targets) and the
 * target_clones set every hot loop is compiled for, picked at load. */
#ifndef GPT2_SIMD_H
#define GPT2_SIMD_H

#include <stdint.h>

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define AI static inline __attribute__((always_inline))

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4))); /* unaligned access */
typedef int32_t i16v __attribute__((vector_size(64)));

#if defined(__x86_64__)
#include <immintrin.h>

/* Lanes 0..n-1 set (n in 0..8): the AVX2 mask for the last n elements of a
 * row. */
__attribute__((target("avx2"))) AI __m256i first_lanes(int n)
{
    static const int32_t ones[16] = {-1, -1, -1, -1, -1, -1, -1, -1};
    return _mm256_loadu_si256((const __m256i *)(ones + 8 - n));
}
#endif

#endif

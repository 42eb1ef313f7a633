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

#endif

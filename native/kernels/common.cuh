// common.cuh - shared by the kernels: 16-bit load/store, block reductions,
// and the launch check that names the kernel, the file and the line.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "kernels.h"

#define KERR_MAX 512

// After a launch: 0, or -1 with "kernel: error (file:line)" in err.
#define LAUNCH_CHECK(name, err)                                                              \
    do {                                                                                     \
        cudaError_t e_ = cudaGetLastError();                                                 \
        if (e_ != cudaSuccess) {                                                             \
            snprintf(err, KERR_MAX, "%s: %s (%s:%d)", name, cudaGetErrorString(e_), __FILE__, \
                     __LINE__);                                                              \
            return -1;                                                                       \
        }                                                                                    \
        return 0;                                                                            \
    } while (0)

#define ARG_CHECK(cond, name, err)                                                        \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            snprintf(err, KERR_MAX, "%s: bad arguments: %s (%s:%d)", name, #cond, __FILE__, \
                     __LINE__);                                                           \
            return -1;                                                                    \
        }                                                                                 \
    } while (0)

__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f32(float v) { return __float2half(v); }

// The MLP activations (model.h act_kind): gelu tanh, gelu erf, relu, quick
// gelu, silu.
__device__ __forceinline__ float activate(float x, int act)
{
    switch (act) {
    case 0: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case 1: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case 2: return fmaxf(x, 0.0f);
    case 3: return x / (1.0f + expf(-1.702f * x));
    default: return x / (1.0f + expf(-x));
    }
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum / max over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `sh` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}

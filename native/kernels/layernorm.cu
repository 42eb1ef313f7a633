// layernorm.cu - layer norm of fp32 rows into the 16-bit input of a GEMM.
#include "common.cuh"

// o (C) = (in - mean) / sqrt(var + eps) * w + b for one row, by the whole
// block: s is this thread's share of the row's sum (elements threadIdx.x +
// k * blockDim.x); a second pass over the row gives the variance (accuracy)
template <typename T>
__device__ __forceinline__ void normalize_row(T *o, const float *in, float s, const float *w,
                                              const float *b, int C, float eps, float *sh)
{
    float mean = block_sum(s, sh) / C;
    float v = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (in[i] - mean) * (in[i] - mean);
    float rstd = rsqrtf(block_sum(v, sh) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        o[i] = from_f32<T>((in[i] - mean) * rstd * w[i] + b[i]);
}

// out (R, C) = layernorm(x[map[r]]) * w + b; one block per row
template <typename T>
__global__ void layernorm_kernel(T *out, const float *x, const int *map, const float *w,
                                 const float *b, int C, float eps)
{
    __shared__ float sh[32];
    int r = blockIdx.x;
    const float *in = x + (size_t)(map ? map[r] : r) * C;
    float s = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += in[i];
    normalize_row(out + (size_t)r * C, in, s, w, b, C, eps, sh);
}

// x (R, C) += y + bias, then as layernorm_kernel on the new x; each thread
// reads back only what it wrote
template <typename T>
__global__ void add_layernorm_kernel(T *out, float *x, const float *y, const float *bias,
                                     const float *w, const float *b, int C, float eps)
{
    __shared__ float sh[32];
    int r = blockIdx.x;
    float *in = x + (size_t)r * C;
    const float *add = y + (size_t)r * C;
    float s = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = in[i] + add[i] + bias[i];
        in[i] = v;
        s += v;
    }
    normalize_row(out + (size_t)r * C, in, s, w, b, C, eps, sh);
}

extern "C" int k_add_layernorm(void *out16, float *x, const float *y, const float *bias,
                               const float *w, const float *b, int R, int C, float eps, int half,
                               cudaStream_t s, char *err)
{
    ARG_CHECK(out16 && x && y && bias && w && b && R > 0 && C > 0, "add_layernorm", err);
    if (half) add_layernorm_kernel<<<R, 256, 0, s>>>((__half *)out16, x, y, bias, w, b, C, eps);
    else add_layernorm_kernel<<<R, 256, 0, s>>>((__nv_bfloat16 *)out16, x, y, bias, w, b, C, eps);
    LAUNCH_CHECK("add_layernorm", err);
}

extern "C" int k_layernorm(void *out16, const float *x, const int *map, const float *w,
                           const float *b, int R, int C, float eps, int half, cudaStream_t s,
                           char *err)
{
    ARG_CHECK(out16 && x && w && b && R > 0 && C > 0, "layernorm", err);
    if (half) layernorm_kernel<<<R, 256, 0, s>>>((__half *)out16, x, map, w, b, C, eps);
    else layernorm_kernel<<<R, 256, 0, s>>>((__nv_bfloat16 *)out16, x, map, w, b, C, eps);
    LAUNCH_CHECK("layernorm", err);
}

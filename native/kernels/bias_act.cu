// bias_act.cu - GEMM epilogues: bias + activation into 16-bit, and the
// residual add.
#include "common.cuh"

// out16 (R, I) = act(y + bias)
template <typename T>
__global__ void bias_act_kernel(T *out, const float *y, const float *bias, size_t n, int I,
                                int act)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(activate(y[i] + bias[i % I], act));
}

// x (R, C) += y + bias
__global__ void residual_kernel(float *x, const float *y, const float *bias, size_t n, int C)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i] + bias[i % C];
}

static int grid_for(size_t n) { return (int)((n + 255) / 256 < 65535 ? (n + 255) / 256 : 65535); }

extern "C" int k_bias_act(void *out16, const float *y, const float *bias, int R, int I, int act,
                          int half, cudaStream_t s, char *err)
{
    ARG_CHECK(out16 && y && bias && R > 0 && I > 0 && act >= 0 && act <= 4, "bias_act", err);
    size_t n = (size_t)R * I;
    if (half) bias_act_kernel<<<grid_for(n), 256, 0, s>>>((__half *)out16, y, bias, n, I, act);
    else bias_act_kernel<<<grid_for(n), 256, 0, s>>>((__nv_bfloat16 *)out16, y, bias, n, I, act);
    LAUNCH_CHECK("bias_act", err);
}

extern "C" int k_residual(float *x, const float *y, const float *bias, int R, int C,
                          cudaStream_t s, char *err)
{
    ARG_CHECK(x && y && bias && R > 0 && C > 0, "residual", err);
    size_t n = (size_t)R * C;
    residual_kernel<<<grid_for(n), 256, 0, s>>>(x, y, bias, n, C);
    LAUNCH_CHECK("residual", err);
}

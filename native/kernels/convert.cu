// convert.cu - fp32 -> bf16/fp16, for uploading weights (round to nearest even).
#include "common.cuh"

template <typename T>
__global__ void convert_kernel(T *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_f32<T>(src[i]);
}

extern "C" int k_convert(void *dst16, const float *src, size_t n, int half, cudaStream_t s,
                         char *err)
{
    ARG_CHECK(dst16 && src, "convert", err);
    if (!n) return 0;
    int blocks = (int)((n + 255) / 256 < 65535 ? (n + 255) / 256 : 65535);
    if (half) convert_kernel<<<blocks, 256, 0, s>>>((__half *)dst16, src, n);
    else convert_kernel<<<blocks, 256, 0, s>>>((__nv_bfloat16 *)dst16, src, n);
    LAUNCH_CHECK("convert", err);
}

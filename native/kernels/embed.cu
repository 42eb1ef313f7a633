// embed.cu - token + position embeddings into the residual stream.
#include "common.cuh"

// x (R, C) = wte[token] + wpe[pos]; one block per row
template <typename T>
__global__ void embed_kernel(float *x, const T *wte, const float *wpe, const krow *rows, int C)
{
    const krow *r = &rows[blockIdx.x];
    const T *te = wte + (size_t)r->token * C;
    const float *pe = wpe + (size_t)r->pos * C;
    float *out = x + (size_t)blockIdx.x * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[i] = to_f32(te[i]) + pe[i];
}

extern "C" int k_embed(float *x, const void *wte16, const float *wpe, const krow *rows, int R,
                       int C, int half, cudaStream_t s, char *err)
{
    ARG_CHECK(x && wte16 && wpe && rows && R > 0 && C > 0, "embed", err);
    if (half) embed_kernel<<<R, 256, 0, s>>>(x, (const __half *)wte16, wpe, rows, C);
    else embed_kernel<<<R, 256, 0, s>>>(x, (const __nv_bfloat16 *)wte16, wpe, rows, C);
    LAUNCH_CHECK("embed", err);
}

// attention.cu - keys/values into the caches, and causal attention of each
// row over its context (a shared prefix cache, then its own cache).
#include "common.cuh"

// qkv (R, 3C) += bias; k, v of row r -> own cache at own_at of `layer`
__global__ void qkv_store_kernel(float *qkv, const float *bias, const krow *rows, int C,
                                 int layer)
{
    const krow *r = &rows[blockIdx.x];
    float *q = qkv + (size_t)blockIdx.x * 3 * C;
    size_t at = ((size_t)layer * r->cap1 + r->own_at) * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        q[i] += bias[i];
        float k = q[C + i] + bias[C + i], v = q[2 * C + i] + bias[2 * C + i];
        q[C + i] = k;
        q[2 * C + i] = v;
        r->k1[at + i] = k;
        r->v1[at + i] = v;
    }
}

// Key (value) row of context position p for head h of `layer`.
__device__ __forceinline__ const float *ctx_row(const krow *r, int value, int layer, int p,
                                                int C, int hoff)
{
    if (p < r->len0)
        return (value ? r->v0 : r->k0) + ((size_t)layer * r->cap0 + p) * C + hoff;
    return (value ? r->v1 : r->k1) + ((size_t)layer * r->cap1 + (p - r->len0)) * C + hoff;
}

// One block per (row, head): scores in shared memory, softmax, weighted sum.
template <typename T>
__global__ void attention_kernel(T *out, const float *qkv, const krow *rows, int C, int H,
                                 int layer, float scale)
{
    extern __shared__ float sm[]; // q (hd), then scores (context length)
    __shared__ float red[32];
    const krow *r = &rows[blockIdx.x];
    int h = blockIdx.y, hd = C / H, hoff = h * hd, n = r->len0 + r->own_at + 1;
    float *q = sm, *s = sm + hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        q[d] = qkv[(size_t)blockIdx.x * 3 * C + hoff + d];
    __syncthreads();
    float mx = -INFINITY;
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const float *k = ctx_row(r, 0, layer, p, C, hoff);
        float dot = 0;
        for (int i = 0; i < hd; i++) dot += q[i] * k[i];
        s[p] = dot * scale;
        mx = fmaxf(mx, s[p]);
    }
    mx = block_max(mx, red);
    float sum = 0;
    for (int p = threadIdx.x; p < n; p += blockDim.x) sum += s[p] = expf(s[p] - mx);
    sum = block_sum(sum, red); // ends with __syncthreads: all of s is written
    __syncthreads();
    float inv = 1.0f / sum;
    T *o = out + (size_t)blockIdx.x * C + hoff;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0;
        for (int p = 0; p < n; p++) acc += s[p] * ctx_row(r, 1, layer, p, C, hoff)[d];
        o[d] = from_f32<T>(acc * inv);
    }
}

extern "C" int k_qkv_store(float *qkv, const float *bias, const krow *rows, int R, int C,
                           int layer, cudaStream_t s, char *err)
{
    ARG_CHECK(qkv && bias && rows && R > 0 && C > 0 && layer >= 0, "qkv_store", err);
    qkv_store_kernel<<<R, 256, 0, s>>>(qkv, bias, rows, C, layer);
    LAUNCH_CHECK("qkv_store", err);
}

extern "C" int k_attention(void *out16, const float *qkv, const krow *rows, int R, int C, int H,
                           int layer, float scale, int max_ctx, int half, cudaStream_t s,
                           char *err)
{
    ARG_CHECK(out16 && qkv && rows && R > 0 && H > 0 && C % H == 0 && max_ctx > 0, "attention",
              err);
    size_t shared = (size_t)(C / H + max_ctx) * sizeof(float);
    ARG_CHECK(shared <= 48 * 1024, "attention", err); /* n_ctx up to ~12K positions */
    dim3 grid(R, H);
    if (half)
        attention_kernel<<<grid, 128, shared, s>>>((__half *)out16, qkv, rows, C, H, layer, scale);
    else
        attention_kernel<<<grid, 128, shared, s>>>((__nv_bfloat16 *)out16, qkv, rows, C, H, layer,
                                                   scale);
    LAUNCH_CHECK("attention", err);
}

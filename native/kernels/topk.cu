// topk.cu - the k largest logits of each row, so a decode step copies k
// candidates to the host instead of the whole vocabulary.
//
// Each logit becomes one 64-bit key: its order-preserving bits above, the
// complement of its id below, so sorting keys descending orders by larger
// value, then smaller id (a total order: the result does not depend on
// thread timing). Two kernels: blocks over slices of a row keep the k
// largest of their slice (a bitonic sort in shared memory); then one block
// per row sorts those candidates and keeps k.
#include "common.cuh"

#define LOCAL_THREADS 512
#define MERGE_THREADS 256

// Larger float -> larger unsigned key, and back.
__device__ __forceinline__ unsigned order_key(float v)
{
    unsigned u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Sorts s[0..n) descending; n a power of two; every thread of the block.
__device__ void bitonic_desc(unsigned long long *s, int n)
{
    for (int size = 2; size <= n; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
                int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
                bool desc = (lo & size) == 0;
                unsigned long long a = s[lo], b = s[hi];
                if ((a < b) == desc) s[lo] = b, s[hi] = a;
            }
            __syncthreads();
        }
}

// Block (row, slice): the k largest keys of logits[row][slice*ch ..][..ch)
// into cand[row][slice][0..k). Padding keys are 0, below every logit's.
__global__ void __launch_bounds__(LOCAL_THREADS)
topk_local_kernel(const float *logits, int V, int k, int ch, unsigned long long *cand)
{
    extern __shared__ unsigned long long s[];
    const float *row = logits + (size_t)blockIdx.x * V;
    int base = blockIdx.y * ch;
    for (int i = threadIdx.x; i < ch; i += blockDim.x) {
        int id = base + i;
        s[i] = id < V ? (unsigned long long)order_key(row[id]) << 32 | (0xffffffffu - (unsigned)id)
                      : 0ull;
    }
    __syncthreads();
    bitonic_desc(s, ch);
    unsigned long long *out = cand + ((size_t)blockIdx.x * gridDim.y + blockIdx.y) * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = s[i];
}

// Block row: the k largest of the row's slices*k candidates. Each slice's
// list is sorted, and its k-th key bounds the answer from below (that slice
// alone has k keys at least as large), so only keys at or above the largest
// such bound are sorted: about k of them, not slices*k.
__global__ void __launch_bounds__(MERGE_THREADS)
topk_merge_kernel(const unsigned long long *cand, int slices, int k, float *vals, int *ids)
{
    extern __shared__ unsigned long long s[];
    __shared__ unsigned long long wmax[MERGE_THREADS / 32], bound;
    __shared__ unsigned n;
    int tid = threadIdx.x, m = slices * k;
    const unsigned long long *c = cand + (size_t)blockIdx.x * m;
    unsigned long long t = 0;
    for (int i = tid; i < slices; i += blockDim.x) t = max(t, c[i * k + k - 1]);
    for (int o = 16; o > 0; o >>= 1) t = max(t, __shfl_xor_sync(0xffffffffu, t, o));
    if ((tid & 31) == 0) wmax[tid >> 5] = t;
    if (tid == 0) n = 0;
    __syncthreads();
    if (tid == 0) {
        unsigned long long b = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) b = max(b, wmax[w]);
        bound = b;
    }
    __syncthreads();
    for (int i = tid; i < m; i += blockDim.x)
        if (c[i] >= bound) s[atomicAdd(&n, 1u)] = c[i]; // order fixed by the sort below
    __syncthreads();
    int pow2 = 1;
    while (pow2 < (int)n) pow2 <<= 1;
    for (int i = n + tid; i < pow2; i += blockDim.x) s[i] = 0ull;
    __syncthreads();
    bitonic_desc(s, pow2);
    for (int i = tid; i < k; i += blockDim.x) {
        unsigned long long key = s[i];
        vals[(size_t)blockIdx.x * k + i] = key_value((unsigned)(key >> 32));
        ids[(size_t)blockIdx.x * k + i] = (int)(0xffffffffu - (unsigned)key);
    }
}

extern "C" int k_topk(const float *logits, int n, int V, int k, void *scratch, float *vals,
                      int *ids, cudaStream_t s, char *err)
{
    ARG_CHECK(logits && scratch && vals && ids && n > 0 && V > 0 && k > 0 && k <= V &&
                  k <= K_TOPK_MAX && V <= K_TOPK_MAX_VOCAB,
              "topk", err);
    int ch = 1024;
    while ((V + ch - 1) / ch * k > K_TOPK_CAND && ch < 4096) ch <<= 1;
    int slices = (V + ch - 1) / ch, m = slices * k, pow2 = 1;
    while (pow2 < m) pow2 <<= 1;
    ARG_CHECK(m <= K_TOPK_CAND, "topk", err);
    topk_local_kernel<<<dim3(n, slices), LOCAL_THREADS, ch * sizeof(unsigned long long), s>>>(
        logits, V, k, ch, (unsigned long long *)scratch);
    topk_merge_kernel<<<n, MERGE_THREADS, pow2 * sizeof(unsigned long long), s>>>(
        (const unsigned long long *)scratch, slices, k, vals, ids);
    LAUNCH_CHECK("topk", err);
}

// topk.cu - the k largest logits of each row, so a decode step copies k
// candidates to the host instead of the whole vocabulary.
#include "common.cuh"

// (v, i) beats (w, j): larger value, then smaller id (a total order).
__device__ __forceinline__ bool beats(float v, int i, float w, int j)
{
    return v > w || (v == w && i < j);
}

// One block per row, k rounds of a block-wide argmax; the winner is struck
// out (set to -inf) before the next round. Threads: a multiple of 32.
__global__ void topk_kernel(float *logits, int V, int k, float *vals, int *ids)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    float *row = logits + (size_t)blockIdx.x * V;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int round = 0; round < k; round++) {
        float bv = -INFINITY;
        int bi = V;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            if (beats(row[i], i, bv, bi)) bv = row[i], bi = i;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (beats(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (lane == 0) sv[warp] = bv, si[warp] = bi;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < nw; w++)
                if (beats(sv[w], si[w], sv[0], si[0])) sv[0] = sv[w], si[0] = si[w];
            int best = si[0] < V ? si[0] : 0;
            vals[(size_t)blockIdx.x * k + round] = sv[0];
            ids[(size_t)blockIdx.x * k + round] = best;
            row[best] = -INFINITY;
        }
        __syncthreads();
    }
}

extern "C" int k_topk(float *logits, int n, int V, int k, float *vals, int *ids, cudaStream_t s,
                      char *err)
{
    ARG_CHECK(logits && vals && ids && n > 0 && V > 0 && k > 0 && k <= V, "topk", err);
    topk_kernel<<<n, 1024, 0, s>>>(logits, V, k, vals, ids);
    LAUNCH_CHECK("topk", err);
}

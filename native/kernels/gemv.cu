// gemv.cu - the matrix products of a decode step (at most 8 rows), which
// cuBLAS runs on a few dozen blocks: these give every SM a share of the
// weights and finish with the step's next small operation fused in.
//
// y (R, O) = x16 (R, K) @ W16 (K, O), W row-major as HF's Conv1D stores it.
// A block owns 16 columns (one 32-byte sector of each weight row) over all
// of K, so no partial sums leave the block: thread t reads 8 columns (16
// bytes) of rows t/2, t/2 + 128, ...; the 128 row groups are summed by
// warp shuffles and then across the 8 warps in shared memory, in a fixed
// order (the same result every run).
#include "common.cuh"

#define GV_THREADS 256
#define GV_WARPS (GV_THREADS / 32)
#define GV_COLS 16
#define GV_GROUPS (GV_THREADS / 2) // row groups
#define GV_UNROLL 8

// The 8 16-bit values of w (type T) as floats.
template <typename T> __device__ __forceinline__ void widen8(uint4 w, float *f)
{
    const T *h = (const T *)&w;
#pragma unroll
    for (int i = 0; i < 8; i++) f[i] = to_f32(h[i]);
}

// The finished value v of row r, column col.
template <typename T>
__device__ __forceinline__ void epilogue(const k_gemv_epi &e, int r, int col, int O, float v)
{
    switch (e.kind) {
    case K_EPI_STORE: e.y[(size_t)r * O + col] = v; break;
    case K_EPI_BIAS_ACT:
        ((T *)e.out16)[(size_t)r * O + col] = from_f32<T>(activate(v + e.bias[col], e.act));
        break;
    default: { // K_EPI_QKV: q, k, v with their bias; k and v also into the cache
        v += e.bias[col];
        e.y[(size_t)r * O + col] = v;
        int C = O / 3;
        if (col >= C) {
            const krow *w = &e.rows[r];
            size_t at = ((size_t)e.layer * w->cap1 + w->own_at) * C + (col % C);
            (col < 2 * C ? w->k1 : w->v1)[at] = v;
        }
    }
    }
}

template <typename T, int R>
__global__ void __launch_bounds__(GV_THREADS)
gemv_kernel(const T *W, const T *x, int K, int O, k_gemv_epi e)
{
    __shared__ float red[GV_WARPS][R][GV_COLS];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, half = tid & 1, g = tid >> 1;
    int c = blockIdx.x * GV_COLS + half * 8;
    bool cok = c < O; // O % 8 == 0: a thread's 8 columns are all in or all out
    float acc[R][8];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[r][j] = 0;
    for (int i0 = g; i0 < K; i0 += GV_GROUPS * GV_UNROLL) {
        uint4 w[GV_UNROLL];
#pragma unroll
        for (int u = 0; u < GV_UNROLL; u++) {
            int i = i0 + u * GV_GROUPS;
            w[u] = cok && i < K ? __ldg((const uint4 *)(W + (size_t)i * O + c))
                                : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GV_UNROLL; u++) {
            int i = i0 + u * GV_GROUPS;
            if (i >= K) break;
            float f[8];
            widen8<T>(w[u], f);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float xv = to_f32(x[(size_t)r * K + i]);
#pragma unroll
                for (int j = 0; j < 8; j++) acc[r][j] += xv * f[j];
            }
        }
    }
    // the 16 row groups of the warp (lanes of the same half), then the warps
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float a = acc[r][j];
            for (int o = 2; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
            acc[r][j] = a;
        }
    if (lane < 2)
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int j = 0; j < 8; j++) red[warp][r][lane * 8 + j] = acc[r][j];
    __syncthreads();
    if (tid < R * GV_COLS) {
        int r = tid / GV_COLS, col = blockIdx.x * GV_COLS + tid % GV_COLS;
        float a = 0;
#pragma unroll
        for (int w = 0; w < GV_WARPS; w++) a += red[w][r][tid % GV_COLS];
        if (col < O) epilogue<T>(e, r, col, O, a);
    }
}

template <typename T>
static void launch(const T *W, const T *x, int R, int K, int O, const k_gemv_epi &e,
                   cudaStream_t s)
{
    int grid = (O + GV_COLS - 1) / GV_COLS;
    switch (R) {
#define GV_CASE(n) case n: gemv_kernel<T, n><<<grid, GV_THREADS, 0, s>>>(W, x, K, O, e); break;
        GV_CASE(1) GV_CASE(2) GV_CASE(3) GV_CASE(4) GV_CASE(5) GV_CASE(6) GV_CASE(7) GV_CASE(8)
#undef GV_CASE
    }
}

extern "C" int k_gemv(const void *W16, const void *x16, int R, int K, int O, int half,
                      const k_gemv_epi *e, cudaStream_t s, char *err)
{
    ARG_CHECK(W16 && x16 && e && R >= 1 && R <= K_GEMV_ROWS && K > 0 && O > 0 && O % 8 == 0 &&
                  (e->kind != K_EPI_QKV || (e->rows && O % 3 == 0)),
              "gemv", err);
    if (half) launch((const __half *)W16, (const __half *)x16, R, K, O, *e, s);
    else launch((const __nv_bfloat16 *)W16, (const __nv_bfloat16 *)x16, R, K, O, *e, s);
    LAUNCH_CHECK("gemv", err);
}

// ==== logits ====

#define LG_THREADS 256
#define LG_ROWS 4 // vocabulary rows per warp

// out (R, V) = h16 (R, C) @ wte16 (V, C)^T: a warp per LG_ROWS rows of the
// tied embedding, lanes across C (16 bytes each), h in shared memory as
// fp32; the lanes' sums meet by shuffles in a fixed order.
template <typename T, int R>
__global__ void __launch_bounds__(LG_THREADS)
logits_kernel(const T *wte, const T *h, int C, int V, float *out)
{
    extern __shared__ float hs[]; // R * C
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int i = tid; i < R * C; i += LG_THREADS) hs[i] = to_f32(h[i]);
    __syncthreads();
    int v0 = (blockIdx.x * (LG_THREADS / 32) + warp) * LG_ROWS, n8 = C / 8;
    float acc[LG_ROWS][R];
#pragma unroll
    for (int u = 0; u < LG_ROWS; u++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[u][r] = 0;
    for (int q0 = lane; q0 < n8; q0 += 64) {
        uint4 w[2][LG_ROWS];
#pragma unroll
        for (int s = 0; s < 2; s++)
#pragma unroll
            for (int u = 0; u < LG_ROWS; u++) {
                int q = q0 + 32 * s, v = v0 + u;
                w[s][u] = q < n8 && v < V ? __ldg((const uint4 *)(wte + (size_t)v * C) + q)
                                          : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int s = 0; s < 2; s++) {
            int q = q0 + 32 * s;
            if (q >= n8) break;
#pragma unroll
            for (int u = 0; u < LG_ROWS; u++) {
                float f[8];
                widen8<T>(w[s][u], f);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float4 *x = (const float4 *)(hs + r * C + q * 8);
                    float4 a = x[0], b = x[1];
                    acc[u][r] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w +
                                 f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
                }
            }
        }
    }
#pragma unroll
    for (int u = 0; u < LG_ROWS; u++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float a = warp_sum(acc[u][r]);
            if (lane == 0 && v0 + u < V) out[(size_t)r * V + v0 + u] = a;
        }
}

template <typename T>
static void launch_logits(const T *wte, const T *h, int R, int C, int V, float *out,
                          cudaStream_t s)
{
    int per_block = LG_THREADS / 32 * LG_ROWS, grid = (V + per_block - 1) / per_block;
    size_t shared = (size_t)R * C * sizeof(float);
    switch (R) {
#define LG_CASE(n) \
    case n: logits_kernel<T, n><<<grid, LG_THREADS, shared, s>>>(wte, h, C, V, out); break;
        LG_CASE(1) LG_CASE(2) LG_CASE(3) LG_CASE(4) LG_CASE(5) LG_CASE(6) LG_CASE(7) LG_CASE(8)
#undef LG_CASE
    }
}

extern "C" int k_logits_fits(int R, int C)
{
    return R >= 1 && R <= K_GEMV_ROWS && C % 8 == 0 && (size_t)R * C * sizeof(float) <= 48 * 1024;
}

extern "C" int k_logits(const void *wte16, const void *h16, int R, int C, int V, int half,
                        float *out, cudaStream_t s, char *err)
{
    ARG_CHECK(wte16 && h16 && out && V > 0 && k_logits_fits(R, C), "logits", err);
    if (half) launch_logits((const __half *)wte16, (const __half *)h16, R, C, V, out, s);
    else launch_logits((const __nv_bfloat16 *)wte16, (const __nv_bfloat16 *)h16, R, C, V, out, s);
    LAUNCH_CHECK("logits", err);
}

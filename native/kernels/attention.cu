// attention.cu - keys/values into the caches, and causal attention of each
// row over its context (a shared prefix cache, then its own cache).
//
// Three kernels, chosen by k_attention:
//   decode  few rows with their own contexts (a decode step): each block
//           takes one (row, head) and one of `splits` slices of the context;
//           four lanes share a position (a quarter of the head each), so a
//           warp reads 8 keys at once; online softmax in registers; slices
//           meet in the last block to finish (flash-decoding), so a short
//           batch still spreads over the whole GPU.
//   tiled   the rows of one prompt (consecutive positions of one context):
//           16 query rows of a head per block share each 32-position tile of
//           keys and values in shared memory.
//   simple  head sizes past 128 (no GPT-2 has them): one block per (row,
//           head), scores in shared memory.
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

// ==== decode ====

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)

// Lane `sub` (0..3) of a position's quad holds dims sub*4 + 16*j .. +3
// (float4 units interleaved, so a quad reads 64 contiguous bytes per j) when
// V4, else dims sub + 4*j. HDMAX/4 values per lane.
template <int HDMAX, bool V4>
__device__ __forceinline__ void load_quarter(float *dst, const float *src, int sub, int hd)
{
    if (V4) {
#pragma unroll
        for (int j = 0; j < HDMAX / 16; j++) {
            int d = sub * 4 + 16 * j;
            float4 t = d < hd ? *(const float4 *)(src + d) : make_float4(0, 0, 0, 0);
            dst[4 * j] = t.x, dst[4 * j + 1] = t.y, dst[4 * j + 2] = t.z, dst[4 * j + 3] = t.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < HDMAX / 4; j++) {
            int d = sub + 4 * j;
            dst[j] = d < hd ? src[d] : 0.0f;
        }
    }
}

template <int HDMAX, bool V4>
__device__ __forceinline__ int dim_of(int sub, int j)
{
    return V4 ? sub * 4 + 16 * (j / 4) + (j % 4) : sub + 4 * j;
}

// Partial results of the slices, (R, H, splits) x (hd + 2): m, l, acc[hd].
template <typename T, int HDMAX, bool V4>
__global__ void __launch_bounds__(DEC_THREADS)
attend_decode_kernel(T *out, const float *qkv, const krow *rows, int C, int H, int layer,
                     float scale, float *part, unsigned *count)
{
    constexpr int NV = HDMAX / 4;
    __shared__ float wm[DEC_WARPS], wl[DEC_WARPS], wacc[DEC_WARPS][HDMAX];
    const krow *r = &rows[blockIdx.x];
    int h = blockIdx.y, S = gridDim.z, s = blockIdx.z, hd = C / H, hoff = h * hd;
    int n = r->len0 + r->own_at + 1, chunk = (n + S - 1) / S;
    int p0 = s * chunk, p1 = min(n, p0 + chunk);
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, sub = tid & 3;

    float q[NV], acc[NV], kv[NV], vv[NV];
    load_quarter<HDMAX, V4>(q, qkv + (size_t)blockIdx.x * 3 * C + hoff, sub, hd);
#pragma unroll
    for (int j = 0; j < NV; j++) q[j] *= scale, acc[j] = 0;
    float m = -INFINITY, l = 0;
    // warp-uniform trip count (the quads shuffle); a quad past p1 idles
    for (int pw = p0 + warp * 8; pw < p1; pw += DEC_THREADS / 4) {
        int p = pw + (lane >> 2);
        bool ok = p < p1;
        float dot = 0;
        if (ok) { // both loads issued before the quad's exchange
            load_quarter<HDMAX, V4>(kv, ctx_row(r, 0, layer, p, C, hoff), sub, hd);
            load_quarter<HDMAX, V4>(vv, ctx_row(r, 1, layer, p, C, hoff), sub, hd);
#pragma unroll
            for (int j = 0; j < NV; j++) dot += q[j] * kv[j];
        }
        dot += __shfl_xor_sync(0xffffffffu, dot, 1);
        dot += __shfl_xor_sync(0xffffffffu, dot, 2);
        if (ok) {
            float mn = fmaxf(m, dot), c = expf(m - mn), e = expf(dot - mn);
            l = l * c + e;
#pragma unroll
            for (int j = 0; j < NV; j++) acc[j] = acc[j] * c + e * vv[j];
            m = mn;
        }
    }
    // the 8 quads of a warp (lanes with the same sub)
    float mw = m;
    for (int o = 4; o < 32; o <<= 1) mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, o));
    float c = mw == -INFINITY ? 0.0f : expf(m - mw);
    l *= c;
    for (int o = 4; o < 32; o <<= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
#pragma unroll
    for (int j = 0; j < NV; j++) {
        float a = acc[j] * c;
        for (int o = 4; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane < 4) { // sub == lane
            int d = dim_of<HDMAX, V4>(sub, j);
            if (d < hd) wacc[warp][d] = a;
        }
    }
    if (lane == 0) wm[warp] = mw, wl[warp] = l;
    __syncthreads();
    // the warps of the block
    float M = wm[0];
    for (int w = 1; w < DEC_WARPS; w++) M = fmaxf(M, wm[w]);
    float L = 0, f[DEC_WARPS];
    for (int w = 0; w < DEC_WARPS; w++) {
        f[w] = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - M);
        L += wl[w] * f[w];
    }
    size_t rh = (size_t)blockIdx.x * H + h;
    T *o = out + (size_t)blockIdx.x * C + hoff;
    if (S == 1) {
        for (int d = tid; d < hd; d += DEC_THREADS) {
            float a = 0;
            for (int w = 0; w < DEC_WARPS; w++) a += wacc[w][d] * f[w];
            o[d] = from_f32<T>(a / L);
        }
        return;
    }
    float *mine = part + (rh * S + s) * (hd + 2);
    for (int d = tid; d < hd; d += DEC_THREADS) {
        float a = 0;
        for (int w = 0; w < DEC_WARPS; w++) a += wacc[w][d] * f[w];
        mine[2 + d] = a;
    }
    if (tid == 0) mine[0] = M, mine[1] = L;
    // the last slice to finish combines them all
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        unsigned done = atomicAdd(&count[rh], 1u);
        last = done == (unsigned)S - 1;
        if (last) count[rh] = 0; // ready for the next launch
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // the slices' maxima and sums first (ld.cg: from L2, where the other
    // blocks' writes are), then each dim's weighted sum, loads independent
    __shared__ float wk[K_ATTN_SPLITS_MAX], Lt;
    const float *all = part + rh * S * (hd + 2);
    if (tid < S) wk[tid] = __ldcg(all + tid * (hd + 2));
    __syncthreads();
    if (tid == 0) {
        float Mt = -INFINITY, L = 0;
        for (int k = 0; k < S; k++) Mt = fmaxf(Mt, wk[k]);
        for (int k = 0; k < S; k++) {
            wk[k] = wk[k] == -INFINITY ? 0.0f : expf(wk[k] - Mt);
            L += __ldcg(all + k * (hd + 2) + 1) * wk[k];
        }
        Lt = L;
    }
    __syncthreads();
    for (int d = tid; d < hd; d += DEC_THREADS) {
        float a = 0;
#pragma unroll
        for (int k = 0; k < K_ATTN_SPLITS_MAX; k++) // unrolled: the loads overlap
            if (k < S) a += __ldcg(all + k * (hd + 2) + 2 + d) * wk[k];
        o[d] = from_f32<T>(a / Lt);
    }
}

// ==== tiled (a prompt's rows) ====

#define TQ 16      // query rows per block
#define TK 32      // positions per tile
#define THD 64     // largest head size
#define TPAD (THD + 1)

// Rows rows[0..R) are consecutive positions of one context (rows[i].own_at
// = rows[0].own_at + i, same caches). Thread t: query row t/8 of the block,
// sub = t%8 scores positions sub + 8u of a tile and owns dims sub + 8k.
// FAST (head size 64, aligned): each thread fetches its share of the next
// tile as float4s into registers while the current one is computed.
template <typename T, bool FAST>
__global__ void __launch_bounds__(TQ * 8)
attend_tiled_kernel(T *out, const float *qkv, const krow *rows, int R, int C, int H, int layer,
                    float scale)
{
    __shared__ float Qs[TQ][TPAD], Ks[TK][TPAD], Vs[TK][TPAD], P[TQ][TK + 1];
    const int hd = FAST ? THD : C / H;
    int h = blockIdx.y, hoff = h * hd, r0 = blockIdx.x * TQ;
    int tid = threadIdx.x, qr = tid >> 3, sub = tid & 7;
    int rows_here = min(TQ, R - r0);
    const krow *base = &rows[r0];
    for (int i = tid; i < TQ * hd; i += TQ * 8) {
        int a = i / hd, d = i % hd;
        Qs[a][d] = a < rows_here ? qkv[(size_t)(r0 + a) * 3 * C + hoff + d] * scale : 0.0f;
    }
    int me = min(qr, rows_here - 1); // rows past the end shadow the last one, unused
    int n_me = base[me].len0 + base[me].own_at + 1;
    int n_all = base[rows_here - 1].len0 + base[rows_here - 1].own_at + 1;
    float m = -INFINITY, l = 0, acc[THD / 8];
#pragma unroll
    for (int k = 0; k < THD / 8; k++) acc[k] = 0;
    // FAST: rows (tid / 16) + 8u, float4 column tid % 16
    float4 kr[4], vr[4];
    auto fetch = [&](int t0) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int p = t0 + (tid >> 4) + 8 * u, c = 4 * (tid & 15);
            bool in = p < n_all;
            float4 zero = make_float4(0, 0, 0, 0);
            kr[u] = in ? *(const float4 *)(ctx_row(base, 0, layer, p, C, hoff) + c) : zero;
            vr[u] = in ? *(const float4 *)(ctx_row(base, 1, layer, p, C, hoff) + c) : zero;
        }
    };
    if (FAST) fetch(0);
    for (int t0 = 0; t0 < n_all; t0 += TK) {
        __syncthreads(); // the last tile is read by everyone
        if (FAST) {
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int a = (tid >> 4) + 8 * u, c = 4 * (tid & 15);
                Ks[a][c] = kr[u].x, Ks[a][c + 1] = kr[u].y;
                Ks[a][c + 2] = kr[u].z, Ks[a][c + 3] = kr[u].w;
                Vs[a][c] = vr[u].x, Vs[a][c + 1] = vr[u].y;
                Vs[a][c + 2] = vr[u].z, Vs[a][c + 3] = vr[u].w;
            }
        } else {
            for (int i = tid; i < TK * hd; i += TQ * 8) {
                int a = i / hd, d = i % hd, p = t0 + a;
                bool in = p < n_all;
                Ks[a][d] = in ? ctx_row(base, 0, layer, p, C, hoff)[d] : 0.0f;
                Vs[a][d] = in ? ctx_row(base, 1, layer, p, C, hoff)[d] : 0.0f;
            }
        }
        __syncthreads();
        if (FAST && t0 + TK < n_all) fetch(t0 + TK); // in flight during the work below
        float sc[TK / 8], mx = -INFINITY;
#pragma unroll
        for (int u = 0; u < TK / 8; u++) sc[u] = 0;
        for (int d = 0; d < hd; d++) {
            float q = Qs[qr][d];
#pragma unroll
            for (int u = 0; u < TK / 8; u++) sc[u] += q * Ks[sub + 8 * u][d];
        }
#pragma unroll
        for (int u = 0; u < TK / 8; u++) {
            if (t0 + sub + 8 * u >= n_me) sc[u] = -INFINITY;
            mx = fmaxf(mx, sc[u]);
        }
        for (int o = 1; o < 8; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float mn = fmaxf(m, mx); // finite: position t0 <= n_me - 1 whenever this row has one here
        float c = mn == -INFINITY ? 1.0f : expf(m - mn), sum = 0;
#pragma unroll
        for (int u = 0; u < TK / 8; u++) {
            float e = sc[u] == -INFINITY ? 0.0f : expf(sc[u] - mn);
            P[qr][sub + 8 * u] = e;
            sum += e;
        }
        for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        l = l * c + sum;
        m = mn;
        __syncwarp();
#pragma unroll
        for (int k = 0; k < THD / 8; k++) {
            int d = sub + 8 * k;
            if (d >= hd) break;
            float a = acc[k] * c;
#pragma unroll 8
            for (int j = 0; j < TK; j++) a += P[qr][j] * Vs[j][d];
            acc[k] = a;
        }
    }
    if (qr >= rows_here) return;
    T *o = out + (size_t)(r0 + qr) * C + hoff;
#pragma unroll
    for (int k = 0; k < THD / 8; k++) {
        int d = sub + 8 * k;
        if (d < hd) o[d] = from_f32<T>(acc[k] / l);
    }
}

// ==== simple (any head size) ====

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

// One pass of the chosen kernel for element type T of the output.
template <typename T>
static void launch(T *out, const float *qkv, const krow *rows, int R, int C, int H, int layer,
                   float scale, int max_ctx, int mode, int splits, float *part, unsigned *count,
                   cudaStream_t s)
{
    int hd = C / H;
    bool v4 = hd % 4 == 0 && C % 4 == 0;
    if (mode == K_ATTN_TILED) {
        dim3 grid((R + TQ - 1) / TQ, H);
        if (hd == THD && v4)
            attend_tiled_kernel<T, true><<<grid, TQ * 8, 0, s>>>(out, qkv, rows, R, C, H, layer,
                                                                 scale);
        else
            attend_tiled_kernel<T, false><<<grid, TQ * 8, 0, s>>>(out, qkv, rows, R, C, H, layer,
                                                                  scale);
    } else if (mode == K_ATTN_DECODE) {
        dim3 grid(R, H, splits);
#define DECODE(HDMAX, V4)                                                                  \
    attend_decode_kernel<T, HDMAX, V4><<<grid, DEC_THREADS, 0, s>>>(out, qkv, rows, C, H, layer, \
                                                                    scale, part, count)
        if (hd <= 64) {
            if (v4) DECODE(64, true);
            else DECODE(64, false);
        } else {
            if (v4) DECODE(128, true);
            else DECODE(128, false);
        }
#undef DECODE
    } else {
        size_t shared = (size_t)(hd + max_ctx) * sizeof(float);
        attention_kernel<<<dim3(R, H), 128, shared, s>>>(out, qkv, rows, C, H, layer, scale);
    }
}

extern "C" int k_attention(void *out16, const float *qkv, const krow *rows, int R, int C, int H,
                           int layer, float scale, int max_ctx, int mode, int splits,
                           float *part, unsigned *count, int half, cudaStream_t s, char *err)
{
    ARG_CHECK(out16 && qkv && rows && R > 0 && H > 0 && C % H == 0 && max_ctx > 0, "attention",
              err);
    int hd = C / H;
    if (mode == K_ATTN_TILED && hd > THD) mode = K_ATTN_DECODE;
    if (mode == K_ATTN_DECODE && hd > 128) mode = K_ATTN_SIMPLE;
    if (mode == K_ATTN_DECODE)
        ARG_CHECK(splits >= 1 && splits <= K_ATTN_SPLITS_MAX && (splits == 1 || (part && count)),
                  "attention", err);
    else
        splits = 1;
    if (mode == K_ATTN_SIMPLE) /* n_ctx up to ~12K positions */
        ARG_CHECK((size_t)(hd + max_ctx) * sizeof(float) <= 48 * 1024, "attention", err);
    if (half)
        launch((__half *)out16, qkv, rows, R, C, H, layer, scale, max_ctx, mode, splits, part,
               count, s);
    else
        launch((__nv_bfloat16 *)out16, qkv, rows, R, C, H, layer, scale, max_ctx, mode, splits,
               part, count, s);
    LAUNCH_CHECK("attention", err);
}

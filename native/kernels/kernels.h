/* kernels.h - launchers of the CUDA kernels in native/kernels/, callable
 * from C (native/cuda.c). Every launcher runs on the given stream, checks
 * its arguments and the launch, and returns 0 or -1 with a message naming
 * the kernel, the file and the line in err (ERR_MAX bytes).
 *
 * Types: `w16` is a weight array of 16-bit floats, bf16 unless half != 0
 * (then fp16). Activations are fp32 unless named *16 (same 16-bit type as
 * the weights, the input of a cuBLAS GEMM). Shapes in the comments.
 */
#ifndef GPT2_KERNELS_H
#define GPT2_KERNELS_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Per-row description of a forward pass, in device memory. */
typedef struct {
    int token, pos;            /* pos = len0 + own_at */
    int len0, own_at;          /* context: ctx0[0..len0) then own[0..own_at] */
    float *k0, *v0;            /* ctx0 cache (layer 0), NULL if len0 == 0 */
    float *k1, *v1;            /* own cache (layer 0) */
    int cap0, cap1;            /* positions per layer of each cache */
} krow;

/* dst16 (n) = src (n), converted to bf16/fp16 */
int k_convert(void *dst16, const float *src, size_t n, int half, cudaStream_t s, char *err);

/* x (R, C) = wte[token] + wpe[pos]; wte16 (V, C), wpe (n_ctx, C) */
int k_embed(float *x, const void *wte16, const float *wpe, const krow *rows, int R, int C,
            int half, cudaStream_t s, char *err);

/* out16 (R, C) = layernorm(x[map[r]]) * w + b; map NULL: identity */
int k_layernorm(void *out16, const float *x, const int *map, const float *w, const float *b,
                int R, int C, float eps, int half, cudaStream_t s, char *err);

/* qkv (R, 3C) += bias; then each row's key and value go to its own cache
 * at own_at of `layer` */
int k_qkv_store(float *qkv, const float *bias, const krow *rows, int R, int C, int layer,
                cudaStream_t s, char *err);

/* out16 (R, C): softmax(q k^T * scale) v per head over each row's context;
 * q from qkv (R, 3C).
 * K_ATTN_TILED: the rows are consecutive positions of one context (a
 * prompt): blocks of 16 rows share the keys and values they read.
 * K_ATTN_DECODE: any rows; each row's context is cut into `splits` slices
 * run by separate blocks; with splits > 1, part holds R*H*splits*(C/H+2)
 * floats and count R*H zeros (left zero again).
 * K_ATTN_SIMPLE: one block per (row, head), the scores in shared memory;
 * also what head sizes past 128 get. */
#define K_ATTN_SPLITS_MAX 16
#define K_ATTN_DECODE 0
#define K_ATTN_TILED 1
#define K_ATTN_SIMPLE 2 /* one block per (row, head); any head size (tests) */
int k_attention(void *out16, const float *qkv, const krow *rows, int R, int C, int H,
                int layer, float scale, int max_ctx, int mode, int splits, float *part,
                unsigned *count, int half, cudaStream_t s, char *err);

/* out16 (R, I) = act(y + bias), y (R, I); act: 0 gelu tanh, 1 gelu erf, 2 relu,
 * 3 quick gelu, 4 silu */
int k_bias_act(void *out16, const float *y, const float *bias, int R, int I, int act, int half,
               cudaStream_t s, char *err);

/* Decode-step products: y (R, O) = x16 (R, K) @ W16 (K, O) for R <=
 * K_GEMV_ROWS, O % 8 == 0, then the epilogue:
 *   K_EPI_STORE     y (fp32) = the product
 *   K_EPI_BIAS_ACT  out16 = act(product + bias)
 *   K_EPI_QKV       y (R, 3C) = product + bias, and each row's k and v
 *                   into its own cache at own_at of `layer` (as k_qkv_store) */
#define K_GEMV_ROWS 8
#define K_EPI_STORE 0
#define K_EPI_BIAS_ACT 1
#define K_EPI_QKV 2
typedef struct {
    int kind, act, layer;
    float *y;
    void *out16;
    const float *bias;
    const krow *rows;
} k_gemv_epi;
int k_gemv(const void *W16, const void *x16, int R, int K, int O, int half, const k_gemv_epi *e,
           cudaStream_t s, char *err);

/* The logits of a decode step: out (R, V) = h16 (R, C) @ wte16 (V, C)^T,
 * when k_logits_fits(R, C) (R <= K_GEMV_ROWS, C % 8 == 0, h in 48 KiB). */
int k_logits_fits(int R, int C);
int k_logits(const void *wte16, const void *h16, int R, int C, int V, int half, float *out,
             cudaStream_t s, char *err);

/* x (R, C) += y + bias; then out16 (R, C) = layernorm(x) * w + b */
int k_add_layernorm(void *out16, float *x, const float *y, const float *bias, const float *w,
                    const float *b, int R, int C, float eps, int half, cudaStream_t s, char *err);

/* x (R, C) += y + bias */
int k_residual(float *x, const float *y, const float *bias, int R, int C, cudaStream_t s,
               char *err);

/* For each of the n rows of logits (n, V): the k largest (descending; equal
 * values by smaller id) into vals (n, k) and ids (n, k); k <= K_TOPK_MAX,
 * V <= K_TOPK_MAX_VOCAB; scratch holds n * K_TOPK_CAND * 8 bytes. */
#define K_TOPK_MAX 64
#define K_TOPK_CAND 4096
#define K_TOPK_MAX_VOCAB 262144
int k_topk(const float *logits, int n, int V, int k, void *scratch, float *vals, int *ids,
           cudaStream_t s, char *err);

#ifdef __cplusplus
}
#endif

#endif

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
 * q from qkv (R, 3C) */
int k_attention(void *out16, const float *qkv, const krow *rows, int R, int C, int H,
                int layer, float scale, int max_ctx, int half, cudaStream_t s, char *err);

/* out16 (R, I) = act(y + bias), y (R, I); act: 0 gelu tanh, 1 gelu erf, 2 relu,
 * 3 quick gelu, 4 silu */
int k_bias_act(void *out16, const float *y, const float *bias, int R, int I, int act, int half,
               cudaStream_t s, char *err);

/* x (R, C) += y + bias */
int k_residual(float *x, const float *y, const float *bias, int R, int C, cudaStream_t s,
               char *err);

/* For each of the n rows of logits (n, V): the k largest (descending) into
 * vals (n, k) and ids (n, k). logits is used as scratch (clobbered). */
int k_topk(float *logits, int n, int V, int k, float *vals, int *ids, cudaStream_t s, char *err);

#ifdef __cplusplus
}
#endif

#endif

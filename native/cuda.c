/* cuda.c - the CUDA backend, host side (built into build/gpt2-cuda.so with
 * the kernels of native/kernels/; loaded by gpu.c, see gpu.h).
 *
 * The model's weights are uploaded once: the four matrices of each layer and
 * the embedding as bf16 (or fp16), everything else fp32. Activations for
 * max_rows rows are allocated at init, so nothing is allocated per token.
 * One forward pass: embed, then per layer layernorm -> QKV GEMM -> bias and
 * cache store -> attention -> output GEMM -> residual -> layernorm -> FC GEMM
 * -> bias+gelu -> projection GEMM -> residual; ln_f and the logits GEMM only
 * for the rows asked for; then top-k on the device, and one copy back.
 * GEMMs: cuBLAS, 16-bit inputs, fp32 accumulation and output. HF's Conv1D
 * [in, out] row-major is cuBLAS's column-major [out, in]: no transposes.
 * Every allocation goes through gmalloc, which enforces the optional memory
 * cap and counts out-of-memory events for `status`.
 */
#define _GNU_SOURCE
#include "gpu.h"
#include "kernels/kernels.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *ln1_w, *ln1_b, *qkv_b, *attn_b, *ln2_w, *ln2_b, *fc_b, *proj_b;
    void *qkv_w, *attn_w, *fc_w, *proj_w; /* 16-bit */
} dlayer;

struct gpu_kv {
    float *k, *v; /* (n_layer, cap, C) */
    int cap;
};

struct gpu_ctx {
    model_cfg cfg;
    int half, device, max_rows;
    size_t cap, used;
    unsigned long ooms;
    char name[128];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *wte16;
    float *wpe, *lnf_w, *lnf_b;
    dlayer *L;
    float *x, *qkv, *y, *fc, *logits, *vals;
    void *h16, *a16, *f16;
    int *ids, *map;
    krow *rows, *h_rows; /* device, pinned host */
    int *h_map;
};

static int fail(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, ERR_MAX, fmt, ap);
    va_end(ap);
    return -1;
}

#define CUDA_TRY(call, err)                                                                \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return fail(err, "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

/* ==== Memory ==== */

static void *gmalloc(gpu_ctx *g, size_t bytes, const char *what, char *err)
{
    void *p = NULL;
    if (g->cap && g->used + bytes > g->cap) {
        g->ooms++;
        fail(err, "GPU memory cap of %zu MiB reached allocating %zu MiB for %s", g->cap >> 20,
             bytes >> 20, what);
        return NULL;
    }
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError(); /* clear the sticky-free error state */
        cudaMemGetInfo(&fr, &tot);
        g->ooms++;
        fail(err, "out of GPU memory allocating %zu MiB for %s (%zu MiB in use by gpt2, %zu MiB "
             "free): %s", bytes >> 20, what, g->used >> 20, fr >> 20, cudaGetErrorString(e));
        return NULL;
    }
    g->used += bytes;
    return p;
}

static void gfree(gpu_ctx *g, void *p, size_t bytes)
{
    if (!p) return;
    cudaFree(p);
    g->used -= bytes;
}

/* ==== Weights ==== */

static int up32(gpu_ctx *g, float **dst, const float *src, size_t n, const char *what, char *err)
{
    if (!(*dst = gmalloc(g, n * sizeof(float), what, err))) return -1;
    CUDA_TRY(cudaMemcpy(*dst, src, n * sizeof(float), cudaMemcpyHostToDevice), err);
    return 0;
}

/* 16-bit copy of src (n floats) through the fp32 staging buffer. */
static int up16(gpu_ctx *g, void **dst, const float *src, size_t n, float *stage,
                const char *what, char *err)
{
    if (!(*dst = gmalloc(g, n * 2, what, err))) return -1;
    CUDA_TRY(cudaMemcpy(stage, src, n * sizeof(float), cudaMemcpyHostToDevice), err);
    if (k_convert(*dst, stage, n, g->half, g->stream, err) < 0) return -1;
    CUDA_TRY(cudaStreamSynchronize(g->stream), err);
    return 0;
}

static int upload(gpu_ctx *g, const model *m, char *err)
{
    const model_cfg *c = &m->cfg;
    size_t C = c->n_embd, I = c->n_inner, V = c->n_vocab;
    size_t biggest = V * C > C * I ? V * C : C * I;
    if (3 * C * C > biggest) biggest = 3 * C * C;
    float *stage = gmalloc(g, biggest * sizeof(float), "the upload staging buffer", err);
    if (!stage) return -1;
    int rc = -1;
    if (!(g->L = calloc(c->n_layer, sizeof *g->L))) {
        fail(err, "out of host memory");
        goto out;
    }
    if (up16(g, &g->wte16, m->wte, V * C, stage, "wte", err) ||
        up32(g, &g->wpe, m->wpe, (size_t)c->n_ctx * C, "wpe", err) ||
        up32(g, &g->lnf_w, m->lnf_w, C, "ln_f", err) || up32(g, &g->lnf_b, m->lnf_b, C, "ln_f", err))
        goto out;
    for (int l = 0; l < c->n_layer; l++) {
        const layer_weights *w = &m->layers[l];
        dlayer *d = &g->L[l];
        if (up32(g, &d->ln1_w, w->ln1_w, C, "ln_1", err) || up32(g, &d->ln1_b, w->ln1_b, C, "ln_1", err) ||
            up16(g, &d->qkv_w, w->qkv_w, C * 3 * C, stage, "c_attn", err) ||
            up32(g, &d->qkv_b, w->qkv_b, 3 * C, "c_attn", err) ||
            up16(g, &d->attn_w, w->attn_w, C * C, stage, "attn.c_proj", err) ||
            up32(g, &d->attn_b, w->attn_b, C, "attn.c_proj", err) ||
            up32(g, &d->ln2_w, w->ln2_w, C, "ln_2", err) || up32(g, &d->ln2_b, w->ln2_b, C, "ln_2", err) ||
            up16(g, &d->fc_w, w->fc_w, C * I, stage, "c_fc", err) ||
            up32(g, &d->fc_b, w->fc_b, I, "c_fc", err) ||
            up16(g, &d->proj_w, w->proj_w, I * C, stage, "mlp.c_proj", err) ||
            up32(g, &d->proj_b, w->proj_b, C, "mlp.c_proj", err))
            goto out;
    }
    rc = 0;
out:
    gfree(g, stage, biggest * sizeof(float));
    return rc;
}

static int activations(gpu_ctx *g, char *err)
{
    size_t R = g->max_rows, C = g->cfg.n_embd, I = g->cfg.n_inner, V = g->cfg.n_vocab;
    if (!(g->x = gmalloc(g, R * C * 4, "activations", err)) ||
        !(g->qkv = gmalloc(g, R * 3 * C * 4, "activations", err)) ||
        !(g->y = gmalloc(g, R * C * 4, "activations", err)) ||
        !(g->fc = gmalloc(g, R * I * 4, "activations", err)) ||
        !(g->logits = gmalloc(g, R * V * 4, "logits", err)) ||
        !(g->vals = gmalloc(g, R * GPU_MAX_TOPK * 4, "top-k", err)) ||
        !(g->ids = gmalloc(g, R * GPU_MAX_TOPK * 4, "top-k", err)) ||
        !(g->h16 = gmalloc(g, R * C * 2, "activations", err)) ||
        !(g->a16 = gmalloc(g, R * C * 2, "activations", err)) ||
        !(g->f16 = gmalloc(g, R * I * 2, "activations", err)) ||
        !(g->map = gmalloc(g, R * sizeof(int), "row maps", err)) ||
        !(g->rows = gmalloc(g, R * sizeof(krow), "row descriptions", err)))
        return -1;
    CUDA_TRY(cudaMallocHost((void **)&g->h_rows, R * sizeof(krow)), err);
    CUDA_TRY(cudaMallocHost((void **)&g->h_map, R * sizeof(int)), err);
    return 0;
}

/* ==== Life cycle ==== */

static void destroy(gpu_ctx *g)
{
    if (!g) return;
    /* freeing the context's memory: cudaFree of NULL is a no-op */
    if (g->L)
        for (int l = 0; l < g->cfg.n_layer; l++) {
            dlayer *d = &g->L[l];
            void *ps[] = {d->ln1_w, d->ln1_b, d->qkv_b, d->attn_b, d->ln2_w, d->ln2_b, d->fc_b,
                          d->proj_b, d->qkv_w, d->attn_w, d->fc_w, d->proj_w};
            for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) cudaFree(ps[i]);
        }
    void *ps[] = {g->wte16, g->wpe, g->lnf_w, g->lnf_b, g->x, g->qkv, g->y, g->fc, g->logits,
                  g->vals, g->ids, g->h16, g->a16, g->f16, g->map, g->rows};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) cudaFree(ps[i]);
    cudaFreeHost(g->h_rows);
    cudaFreeHost(g->h_map);
    if (g->blas) cublasDestroy(g->blas);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g->L);
    free(g);
}

static gpu_ctx *init(const model *m, const gpu_opts *o, char *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        fail(err, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return NULL;
    }
    if (o->device < 0 || o->device >= n) {
        fail(err, "CUDA device %d does not exist (%d present)", o->device, n);
        return NULL;
    }
    gpu_ctx *g = calloc(1, sizeof *g);
    if (!g) {
        fail(err, "out of host memory");
        return NULL;
    }
    g->cfg = m->cfg;
    g->half = o->half;
    g->device = o->device;
    g->cap = o->mem_cap;
    g->max_rows = o->max_rows > 0 ? o->max_rows : 256;
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(o->device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, o->device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        fail(err, "CUDA start-up failed: %s", cudaGetErrorString(e));
        destroy(g);
        return NULL;
    }
    snprintf(g->name, sizeof g->name, "%.100s", prop.name);
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(g->blas, g->stream) != CUBLAS_STATUS_SUCCESS) {
        fail(err, "cuBLAS start-up failed");
        destroy(g);
        return NULL;
    }
    if (upload(g, m, err) < 0 || activations(g, err) < 0) {
        destroy(g);
        return NULL;
    }
    return g;
}

static gpu_kv *kv_new(gpu_ctx *g, int cap, char *err)
{
    gpu_kv *kv = calloc(1, sizeof *kv);
    size_t bytes = (size_t)g->cfg.n_layer * cap * g->cfg.n_embd * sizeof(float);
    if (!kv) {
        fail(err, "out of host memory");
        return NULL;
    }
    kv->cap = cap;
    if (!(kv->k = gmalloc(g, bytes, "the KV cache", err)) ||
        !(kv->v = gmalloc(g, bytes, "the KV cache", err))) {
        gfree(g, kv->k, bytes);
        free(kv);
        return NULL;
    }
    return kv;
}

static void kv_free(gpu_ctx *g, gpu_kv *kv)
{
    if (!kv) return;
    size_t bytes = (size_t)g->cfg.n_layer * kv->cap * g->cfg.n_embd * sizeof(float);
    gfree(g, kv->k, bytes);
    gfree(g, kv->v, bytes);
    free(kv);
}

static void info(gpu_ctx *g, gpu_info *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", g->name);
    cudaMemGetInfo(&out->free_bytes, &out->total);
    out->used_by_us = g->used;
    out->cap = g->cap;
    out->oom_count = g->ooms;
}

/* ==== Forward ==== */

/* out (R, O) fp32 = x16 (R, I) @ W16 (I, O) */
static int gemm(gpu_ctx *g, const void *W, const void *x16, float *out, int R, int I, int O,
                int trans, char *err)
{
    const float one = 1, zero = 0;
    cudaDataType t = g->half ? CUDA_R_16F : CUDA_R_16BF;
    /* column-major: out^T (O, R) = op(W) (O, I) x16^T (I, R) */
    cublasStatus_t st = cublasGemmEx(g->blas, trans ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, O,
                                     R, I, &one, W, t, trans ? I : O, x16, t, I, &zero, out,
                                     CUDA_R_32F, O, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        return fail(err, "cublasGemmEx (%d x %d x %d): status %d", O, R, I, (int)st);
    return 0;
}

static int describe_rows(gpu_ctx *g, const gpu_row *rows, int R, char *err)
{
    const model_cfg *c = &g->cfg;
    for (int r = 0; r < R; r++) {
        const gpu_row *w = &rows[r];
        if (w->token < 0 || w->token >= c->n_vocab)
            return fail(err, "token id %d is outside the vocabulary", w->token);
        if (!w->own || w->own_at < 0 || w->own_at >= w->own->cap || w->len0 < 0 ||
            (w->len0 && (!w->ctx0 || w->len0 > w->ctx0->cap)))
            return fail(err, "internal error: row %d does not fit its cache", r);
        if (w->len0 + w->own_at >= c->n_ctx)
            return fail(err, "position %d is past the model's window", w->len0 + w->own_at);
        g->h_rows[r] = (krow){.token = w->token, .pos = w->len0 + w->own_at, .len0 = w->len0,
                              .own_at = w->own_at, .k0 = w->ctx0 ? w->ctx0->k : NULL,
                              .v0 = w->ctx0 ? w->ctx0->v : NULL, .k1 = w->own->k,
                              .v1 = w->own->v, .cap0 = w->ctx0 ? w->ctx0->cap : 0,
                              .cap1 = w->own->cap};
    }
    CUDA_TRY(cudaMemcpyAsync(g->rows, g->h_rows, R * sizeof(krow), cudaMemcpyHostToDevice,
                             g->stream), err);
    return 0;
}

static int layer(gpu_ctx *g, int l, int R, char *err)
{
    const model_cfg *c = &g->cfg;
    const dlayer *d = &g->L[l];
    int C = c->n_embd, I = c->n_inner;
    float scale = c->scale_attn ? 1.0f / sqrtf((float)(C / c->n_head)) : 1.0f;
    if (c->scale_inv_layer) scale /= (float)(l + 1);
    if (k_layernorm(g->h16, g->x, NULL, d->ln1_w, d->ln1_b, R, C, c->eps, g->half, g->stream, err) ||
        gemm(g, d->qkv_w, g->h16, g->qkv, R, C, 3 * C, 0, err) ||
        k_qkv_store(g->qkv, d->qkv_b, g->rows, R, C, l, g->stream, err) ||
        k_attention(g->a16, g->qkv, g->rows, R, C, c->n_head, l, scale, c->n_ctx, g->half,
                    g->stream, err) ||
        gemm(g, d->attn_w, g->a16, g->y, R, C, C, 0, err) ||
        k_residual(g->x, g->y, d->attn_b, R, C, g->stream, err) ||
        k_layernorm(g->h16, g->x, NULL, d->ln2_w, d->ln2_b, R, C, c->eps, g->half, g->stream, err) ||
        gemm(g, d->fc_w, g->h16, g->fc, R, C, I, 0, err) ||
        k_bias_act(g->f16, g->fc, d->fc_b, R, I, (int)c->act, g->half, g->stream, err) ||
        gemm(g, d->proj_w, g->f16, g->y, R, I, C, 0, err) ||
        k_residual(g->x, g->y, d->proj_b, R, C, g->stream, err))
        return -1;
    return 0;
}

static int run(gpu_ctx *g, const gpu_row *rows, int R, const int *out_rows, int n_out, int topk,
               float *vals, int *ids, char *err)
{
    const model_cfg *c = &g->cfg;
    int C = c->n_embd, V = c->n_vocab;
    if (R < 1 || R > g->max_rows || n_out < 0 || n_out > R || topk < 0 || topk > GPU_MAX_TOPK)
        return fail(err, "internal error: %d rows (%d out) for a GPU pass of at most %d", R, n_out,
                    g->max_rows);
    if (describe_rows(g, rows, R, err) < 0) return -1;
    if (k_embed(g->x, g->wte16, g->wpe, g->rows, R, C, g->half, g->stream, err) < 0) return -1;
    for (int l = 0; l < c->n_layer; l++)
        if (layer(g, l, R, err) < 0) return -1;
    if (n_out) {
        for (int i = 0; i < n_out; i++) {
            if (out_rows[i] < 0 || out_rows[i] >= R) return fail(err, "internal error: logit row");
            g->h_map[i] = out_rows[i];
        }
        CUDA_TRY(cudaMemcpyAsync(g->map, g->h_map, n_out * sizeof(int), cudaMemcpyHostToDevice,
                                 g->stream), err);
        if (k_layernorm(g->h16, g->x, g->map, g->lnf_w, g->lnf_b, n_out, C, c->eps, g->half,
                        g->stream, err) ||
            gemm(g, g->wte16, g->h16, g->logits, n_out, C, V, 1, err))
            return -1;
        if (topk) {
            if (k_topk(g->logits, n_out, V, topk, g->vals, g->ids, g->stream, err) < 0) return -1;
            CUDA_TRY(cudaMemcpyAsync(vals, g->vals, (size_t)n_out * topk * sizeof(float),
                                     cudaMemcpyDeviceToHost, g->stream), err);
            CUDA_TRY(cudaMemcpyAsync(ids, g->ids, (size_t)n_out * topk * sizeof(int),
                                     cudaMemcpyDeviceToHost, g->stream), err);
        } else {
            CUDA_TRY(cudaMemcpyAsync(vals, g->logits, (size_t)n_out * V * sizeof(float),
                                     cudaMemcpyDeviceToHost, g->stream), err);
        }
    }
    CUDA_TRY(cudaStreamSynchronize(g->stream), err);
    return 0;
}

static const gpu_api API = {
    .version = GPU_API_VERSION, .init = init, .destroy = destroy, .kv_new = kv_new,
    .kv_free = kv_free, .run = run, .info = info,
};

__attribute__((visibility("default"))) const gpu_api *gpt2_cuda_api(void) { return &API; }

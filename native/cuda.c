/* cuda.c - the CUDA backend, host side (built into build/gpt2-cuda.so with
 * the kernels of native/kernels/; loaded by gpu.c, see gpu.h).
 *
 * The model's weights are uploaded once: the four matrices of each layer and
 * the embedding as fp16 (or bf16), everything else fp32. Activations for
 * max_rows rows are allocated at init, so nothing is allocated per token.
 * One forward pass: embed, then per layer (residual +) layernorm -> QKV
 * product, bias and cache store -> attention -> output product -> residual
 * + layernorm -> FC product, bias + GELU -> projection product; ln_f and
 * the logits only for the rows asked for; then top-k on the device, and
 * one copy back.
 * Prompt passes: cuBLAS GEMMs (16-bit inputs, fp32 accumulation; HF's
 * Conv1D [in, out] row-major is cuBLAS's column-major [out, in], no
 * transposes) and tiled attention. Decode passes (<= K_GEMV_ROWS rows): our
 * products with their epilogues fused, attention in slices, and one CUDA
 * graph per shape, replayed per token.
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

_Static_assert(GPU_MAX_TOPK <= K_TOPK_MAX && GPU_TOPK_MAX_VOCAB <= K_TOPK_MAX_VOCAB,
               "the top-k kernel takes what device.c asks of it");

typedef struct {
    float *ln1_w, *ln1_b, *qkv_b, *attn_b, *ln2_w, *ln2_b, *fc_b, *proj_b;
    void *qkv_w, *attn_w, *fc_w, *proj_w; /* 16-bit */
} dlayer;

struct gpu_kv {
    float *k, *v; /* (n_layer, cap, C) */
    int cap;
};

/* Decode passes of at most this many rows replay a CUDA graph. */
#define GRAPH_MAX_ROWS 32
#define GRAPHS_MAX 48
/* Attention slices: a decode pass aims at this many blocks per SM. */
#define SPLIT_BLOCKS_PER_SM 2
#define BLAS_WORKSPACE (32u << 20)

typedef struct {
    int R, n_out, topk;
    cudaGraphExec_t exec;
} graph_entry;

struct gpu_ctx {
    model_cfg cfg;
    int half, device, max_rows, sms;
    size_t cap, used;
    unsigned long ooms;
    char name[128];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    void *wte16;
    float *wpe, *lnf_w, *lnf_b;
    dlayer *L;
    float *x, *qkv, *y, *fc, *logits, *vals, *part;
    void *topk_scratch;
    void *h16, *a16, *f16;
    int *ids, *map;
    unsigned *count;
    krow *rows, *h_rows; /* device, pinned host */
    int *h_map;
    float *h_vals;       /* pinned: top-k results */
    int *h_ids;
    int use_graphs;      /* GPT2_CUDA_GRAPHS=0 turns them off; a failed capture too */
    int attn_force;      /* GPT2_CUDA_ATTN=decode|simple: one kernel for every pass (tests) */
    int use_gemv;        /* GPT2_CUDA_GEMV=0: cuBLAS for decode products and logits too (tests) */
    graph_entry graphs[GRAPHS_MAX];
    int n_graphs;
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
    CUDA_TRY(cudaMemcpyAsync(*dst, src, n * sizeof(float), cudaMemcpyHostToDevice, g->stream), err);
    return 0;
}

/* Floats of the upload staging buffer: the weights pass through it in
 * pieces, so loading needs little more than the weights themselves. */
#define STAGE_FLOATS ((size_t)2 << 20)

/* 16-bit copy of src (n floats) through the fp32 staging buffer. */
static int up16(gpu_ctx *g, void **dst, const float *src, size_t n, float *stage,
                const char *what, char *err)
{
    if (!(*dst = gmalloc(g, n * 2, what, err))) return -1;
    for (size_t at = 0; at < n; at += STAGE_FLOATS) {
        size_t k = n - at < STAGE_FLOATS ? n - at : STAGE_FLOATS;
        /* on the stream: a plain cudaMemcpy from pageable memory may return
         * before its data lands, and the stream does not wait for it */
        CUDA_TRY(cudaMemcpyAsync(stage, src + at, k * sizeof(float), cudaMemcpyHostToDevice,
                                 g->stream), err);
        if (k_convert((char *)*dst + at * 2, stage, k, g->half, g->stream, err) < 0) return -1;
        CUDA_TRY(cudaStreamSynchronize(g->stream), err);
    }
    return 0;
}

static int upload(gpu_ctx *g, const model *m, char *err)
{
    const model_cfg *c = &m->cfg;
    size_t C = c->n_embd, I = c->n_inner, V = c->n_vocab;
    size_t biggest = STAGE_FLOATS;
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
    if (cudaStreamSynchronize(g->stream) != cudaSuccess && rc == 0)
        rc = fail(err, "uploading the weights failed: %s", cudaGetErrorString(cudaGetLastError()));
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
    /* attention slices (split_for): R*H < target rows and heads, fewer than
     * 2 * target slices */
    size_t hd = C / g->cfg.n_head, target = (size_t)SPLIT_BLOCKS_PER_SM * g->sms;
    if (!(g->part = gmalloc(g, 2 * target * (hd + 2) * sizeof(float), "attention slices", err)) ||
        !(g->count = gmalloc(g, target * sizeof(unsigned), "attention slices", err)) ||
        !(g->blas_ws = gmalloc(g, BLAS_WORKSPACE, "the cuBLAS workspace", err)) ||
        !(g->topk_scratch = gmalloc(g, R * K_TOPK_CAND * 8, "top-k", err)))
        return -1;
    CUDA_TRY(cudaMemset(g->count, 0, target * sizeof(unsigned)), err);
    if (cublasSetWorkspace(g->blas, g->blas_ws, BLAS_WORKSPACE) != CUBLAS_STATUS_SUCCESS)
        return fail(err, "cuBLAS workspace refused");
    CUDA_TRY(cudaMallocHost((void **)&g->h_rows, R * sizeof(krow)), err);
    CUDA_TRY(cudaMallocHost((void **)&g->h_map, R * sizeof(int)), err);
    CUDA_TRY(cudaMallocHost((void **)&g->h_vals, R * GPU_MAX_TOPK * sizeof(float)), err);
    CUDA_TRY(cudaMallocHost((void **)&g->h_ids, R * GPU_MAX_TOPK * sizeof(int)), err);
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
    for (int i = 0; i < g->n_graphs; i++) cudaGraphExecDestroy(g->graphs[i].exec);
    void *ps[] = {g->wte16, g->wpe, g->lnf_w, g->lnf_b, g->x, g->qkv, g->y, g->fc, g->logits,
                  g->vals, g->ids, g->h16, g->a16, g->f16, g->map, g->rows, g->part, g->count,
                  g->blas_ws, g->topk_scratch};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) cudaFree(ps[i]);
    cudaFreeHost(g->h_rows);
    cudaFreeHost(g->h_map);
    cudaFreeHost(g->h_vals);
    cudaFreeHost(g->h_ids);
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
    g->sms = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    const char *graphs = getenv("GPT2_CUDA_GRAPHS");
    g->use_graphs = !(graphs && !strcmp(graphs, "0"));
    const char *gemv = getenv("GPT2_CUDA_GEMV");
    g->use_gemv = !(gemv && !strcmp(gemv, "0"));
    const char *attn = getenv("GPT2_CUDA_ATTN");
    g->attn_force = !attn ? -1 : !strcmp(attn, "decode") ? K_ATTN_DECODE
                             : !strcmp(attn, "simple") ? K_ATTN_SIMPLE : -1;
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

/* How many slices each (row, head) of a decode pass is cut into: enough
 * blocks for SPLIT_BLOCKS_PER_SM per SM. R*H*splits < 2 * target, which
 * the slice buffers hold. */
static int split_for(const gpu_ctx *g, int R)
{
    int target = SPLIT_BLOCKS_PER_SM * g->sms, rh = R * g->cfg.n_head;
    if (rh >= target) return 1;
    int s = (target + rh - 1) / rh;
    return s < K_ATTN_SPLITS_MAX ? s : K_ATTN_SPLITS_MAX;
}

/* Rows that are consecutive positions of one context (a prompt's chunk). */
static int is_sequence(const gpu_row *rows, int R)
{
    for (int r = 1; r < R; r++)
        if (rows[r].own != rows[0].own || rows[r].ctx0 != rows[0].ctx0 ||
            rows[r].len0 != rows[0].len0 || rows[r].own_at != rows[0].own_at + r)
            return 0;
    return 1;
}

/* A layer's matrix product W (K, O) on x16 (R, K), then what follows it
 * (e): decode passes (R <= K_GEMV_ROWS) fuse the two in k_gemv; larger
 * ones run cuBLAS into e.y (or tmp) and the epilogue as its own kernel. */
static int product(gpu_ctx *g, const void *W, const void *x16, int R, int K, int O,
                   k_gemv_epi e, float *tmp, char *err)
{
    if (g->use_gemv && R <= K_GEMV_ROWS && O % 8 == 0)
        return k_gemv(W, x16, R, K, O, g->half, &e, g->stream, err);
    float *out = e.kind == K_EPI_BIAS_ACT ? tmp : e.y;
    if (gemm(g, W, x16, out, R, K, O, 0, err) < 0) return -1;
    if (e.kind == K_EPI_BIAS_ACT)
        return k_bias_act(e.out16, out, e.bias, R, O, e.act, g->half, g->stream, err);
    if (e.kind == K_EPI_QKV)
        return k_qkv_store(out, e.bias, g->rows, R, O / 3, e.layer, g->stream, err);
    return 0;
}

/* One layer. Its input residual is x plus, after the first layer, the
 * previous layer's MLP output in y (added here, fused with ln_1); it leaves
 * its own MLP output in y. */
static int layer(gpu_ctx *g, int l, int R, int mode, int splits, char *err)
{
    const model_cfg *c = &g->cfg;
    const dlayer *d = &g->L[l];
    int C = c->n_embd, I = c->n_inner;
    float scale = c->scale_attn ? 1.0f / sqrtf((float)(C / c->n_head)) : 1.0f;
    if (c->scale_inv_layer) scale /= (float)(l + 1);
    int ln1 = l == 0 ? k_layernorm(g->h16, g->x, NULL, d->ln1_w, d->ln1_b, R, C, c->eps, g->half,
                                   g->stream, err)
                     : k_add_layernorm(g->h16, g->x, g->y, g->L[l - 1].proj_b, d->ln1_w, d->ln1_b,
                                       R, C, c->eps, g->half, g->stream, err);
    k_gemv_epi qkv = {.kind = K_EPI_QKV, .layer = l, .y = g->qkv, .bias = d->qkv_b, .rows = g->rows},
               store = {.kind = K_EPI_STORE, .y = g->y},
               act = {.kind = K_EPI_BIAS_ACT, .act = (int)c->act, .out16 = g->f16, .bias = d->fc_b};
    if (ln1 || product(g, d->qkv_w, g->h16, R, C, 3 * C, qkv, NULL, err) ||
        k_attention(g->a16, g->qkv, g->rows, R, C, c->n_head, l, scale, c->n_ctx, mode, splits,
                    g->part, g->count, g->half, g->stream, err) ||
        product(g, d->attn_w, g->a16, R, C, C, store, NULL, err) ||
        k_add_layernorm(g->h16, g->x, g->y, d->attn_b, d->ln2_w, d->ln2_b, R, C, c->eps, g->half,
                        g->stream, err) ||
        product(g, d->fc_w, g->h16, R, C, I, act, g->fc, err) ||
        product(g, d->proj_w, g->f16, R, I, C, store, NULL, err))
        return -1;
    return 0;
}

/* Everything of a pass on the stream, from the rows and the output map
 * already in device memory to the logits (or their top-k) in g->logits
 * (g->vals, g->ids): no host work, so a decode pass can be captured. */
static int forward(gpu_ctx *g, int R, int n_out, int topk, int mode, int splits, char *err)
{
    const model_cfg *c = &g->cfg;
    int C = c->n_embd, V = c->n_vocab;
    if (k_embed(g->x, g->wte16, g->wpe, g->rows, R, C, g->half, g->stream, err) < 0) return -1;
    for (int l = 0; l < c->n_layer; l++)
        if (layer(g, l, R, mode, splits, err) < 0) return -1;
    if (k_residual(g->x, g->y, g->L[c->n_layer - 1].proj_b, R, C, g->stream, err) < 0) return -1;
    if (!n_out) return 0;
    if (k_layernorm(g->h16, g->x, g->map, g->lnf_w, g->lnf_b, n_out, C, c->eps, g->half,
                    g->stream, err))
        return -1;
    if (g->use_gemv && k_logits_fits(n_out, C)) {
        if (k_logits(g->wte16, g->h16, n_out, C, V, g->half, g->logits, g->stream, err) < 0)
            return -1;
    } else if (gemm(g, g->wte16, g->h16, g->logits, n_out, C, V, 1, err) < 0) {
        return -1;
    }
    return topk ? k_topk(g->logits, n_out, V, topk, g->topk_scratch, g->vals, g->ids, g->stream,
                         err)
                : 0;
}

/* A decode pass through the CUDA graph captured for its shape (R, n_out,
 * topk), capturing it the first time: one launch instead of ~10 per layer.
 * The graph reads the rows, positions and caches from g->rows, so it is
 * replayed as the contexts grow. A capture the driver refuses turns graphs
 * off and runs the pass as is. */
static int replay(gpu_ctx *g, int R, int n_out, int topk, int splits, char *err)
{
    graph_entry *e = NULL;
    for (int i = 0; i < g->n_graphs && !e; i++)
        if (g->graphs[i].R == R && g->graphs[i].n_out == n_out && g->graphs[i].topk == topk)
            e = &g->graphs[i];
    if (!e) {
        if (g->n_graphs == GRAPHS_MAX) return forward(g, R, n_out, topk, K_ATTN_DECODE, splits, err);
        cudaGraph_t graph = NULL;
        CUDA_TRY(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal), err);
        int rc = forward(g, R, n_out, topk, K_ATTN_DECODE, splits, err);
        cudaError_t ce = cudaStreamEndCapture(g->stream, &graph);
        cudaGraphExec_t exec = NULL;
        if (rc == 0 && ce == cudaSuccess) ce = cudaGraphInstantiate(&exec, graph, 0);
        if (graph) cudaGraphDestroy(graph);
        if (rc < 0) return -1;
        if (ce != cudaSuccess) {
            cudaGetLastError();
            g->use_graphs = 0;
            return forward(g, R, n_out, topk, K_ATTN_DECODE, splits, err);
        }
        e = &g->graphs[g->n_graphs++];
        *e = (graph_entry){.R = R, .n_out = n_out, .topk = topk, .exec = exec};
    }
    CUDA_TRY(cudaGraphLaunch(e->exec, g->stream), err);
    return 0;
}

static int run(gpu_ctx *g, const gpu_row *rows, int R, const int *out_rows, int n_out, int topk,
               float *vals, int *ids, char *err)
{
    const model_cfg *c = &g->cfg;
    int V = c->n_vocab;
    if (R < 1 || R > g->max_rows || n_out < 0 || n_out > R || topk < 0 || topk > GPU_MAX_TOPK)
        return fail(err, "internal error: %d rows (%d out) for a GPU pass of at most %d", R, n_out,
                    g->max_rows);
    if (describe_rows(g, rows, R, err) < 0) return -1;
    for (int i = 0; i < n_out; i++) {
        if (out_rows[i] < 0 || out_rows[i] >= R) return fail(err, "internal error: logit row");
        g->h_map[i] = out_rows[i];
    }
    if (n_out)
        CUDA_TRY(cudaMemcpyAsync(g->map, g->h_map, n_out * sizeof(int), cudaMemcpyHostToDevice,
                                 g->stream), err);
    int mode = R >= 16 && is_sequence(rows, R) ? K_ATTN_TILED : K_ATTN_DECODE;
    if (g->attn_force >= 0) mode = g->attn_force;
    int splits = mode == K_ATTN_DECODE ? split_for(g, R) : 1;
    int rc = g->use_graphs && mode == K_ATTN_DECODE && R <= GRAPH_MAX_ROWS
                 ? replay(g, R, n_out, topk, splits, err)
                 : forward(g, R, n_out, topk, mode, splits, err);
    if (rc < 0) return -1;
    if (n_out && topk) {
        size_t n = (size_t)n_out * topk;
        CUDA_TRY(cudaMemcpyAsync(g->h_vals, g->vals, n * sizeof(float), cudaMemcpyDeviceToHost,
                                 g->stream), err);
        CUDA_TRY(cudaMemcpyAsync(g->h_ids, g->ids, n * sizeof(int), cudaMemcpyDeviceToHost,
                                 g->stream), err);
        CUDA_TRY(cudaStreamSynchronize(g->stream), err);
        memcpy(vals, g->h_vals, n * sizeof(float));
        memcpy(ids, g->h_ids, n * sizeof(int));
        return 0;
    }
    if (n_out)
        CUDA_TRY(cudaMemcpyAsync(vals, g->logits, (size_t)n_out * V * sizeof(float),
                                 cudaMemcpyDeviceToHost, g->stream), err);
    CUDA_TRY(cudaStreamSynchronize(g->stream), err);
    return 0;
}

static double copy_bandwidth(gpu_ctx *g)
{
    size_t bytes = (size_t)256 << 20;
    char err[ERR_MAX];
    void *a = gmalloc(g, bytes, "a bandwidth test", err);
    void *b = a ? gmalloc(g, bytes, "a bandwidth test", err) : NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = 0;
    if (b && cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess &&
        cudaMemsetAsync(a, 1, bytes, g->stream) == cudaSuccess)
        for (int i = 0; i < 10; i++) {
            float ms = 0;
            if (cudaEventRecord(e0, g->stream) != cudaSuccess ||
                cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g->stream) != cudaSuccess ||
                cudaEventRecord(e1, g->stream) != cudaSuccess ||
                cudaEventSynchronize(e1) != cudaSuccess ||
                cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
                break;
            double gbs = 2.0 * bytes / (ms * 1e6);
            if (i && gbs > best) best = gbs; /* the first copy warms up */
        }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    gfree(g, b, bytes);
    gfree(g, a, bytes);
    cudaGetLastError();
    return best;
}

static const gpu_api API = {
    .version = GPU_API_VERSION, .init = init, .destroy = destroy, .kv_new = kv_new,
    .kv_free = kv_free, .run = run, .info = info, .copy_bandwidth = copy_bandwidth,
};

__attribute__((visibility("default"))) const gpu_api *gpt2_cuda_api(void) { return &API; }

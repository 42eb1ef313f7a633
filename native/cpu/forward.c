/* forward.c - GPT-2 on the CPU (see forward.h).
 *
 * Per layer: x += attn(ln_1(x)) ; x += mlp(ln_2(x)), then ln_f and logits
 * through the tied embedding. Matrix products go through OpenBLAS sgemm on
 * column slices run by our own pool (OpenBLAS itself is kept single-threaded
 * so two thread systems never fight over the cores). HF's Conv1D weights are
 * [in, out], which is exactly the row-major B of out = x @ W.
 */
#include "forward.h"
#include "matvec.h"

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>, whose I would shadow our names */
#include <math.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int n);

#define SUB 128 /* compact formats: weight columns widened to fp32 per prefill sgemm */

/* A compact copy of a matrix the passes stream (HF [in, out] layout kept):
 * bf16, or int8 with fp32 scales per output column (per row for wte). */
typedef struct {
    void *w;
    float *scale;
} qmat;

typedef struct {
    qmat qkv, attn, fc, proj;
} layerq;

struct fwd {
    const model *m;
    pool *pool;
    int fmt;                                /* FWD_FP32 | FWD_BF16 | FWD_INT8 */
    layerq *wq;                             /* compact copies (NULL for fp32) */
    qmat wte;                               /* (V, C) */
    int cap;                                /* rows the buffers hold */
    float *x, *h, *qkv, *att, *fc;          /* (cap, C|C|3C|C|I) */
    float *wide;                            /* (threads, max(C, I), SUB): widened weights */
    float *scores;                          /* (threads, score_cap) */
    size_t score_cap;
};

kv_cache *kv_new(const model_cfg *c, int cap)
{
    kv_cache *kv = xcalloc(1, sizeof *kv);
    size_t n = (size_t)c->n_layer * cap * c->n_embd;
    if (!kv) return NULL;
    kv->k = xmallocarray(n, sizeof(float));
    kv->v = xmallocarray(n, sizeof(float));
    if (!kv->k || !kv->v) {
        kv_free(kv);
        return NULL;
    }
    kv->cap = cap;
    kv->n_layer = c->n_layer;
    kv->n_embd = c->n_embd;
    return kv;
}

void kv_free(kv_cache *kv)
{
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

static float *kv_row(float *base, const kv_cache *kv, int layer, int pos)
{
    return base + ((size_t)layer * kv->cap + pos) * kv->n_embd;
}

/* The compact copy of w: (rows, cols) row-major; cols_scaled: int8 scales
 * per column ([in, out] matrices) rather than per row (the embedding). */
static int compact(qmat *q, const float *w, size_t rows, size_t cols, int fmt, int cols_scaled)
{
    size_t n = rows * cols;
    if (fmt == FWD_BF16) {
        if (!(q->w = xmallocarray(n, sizeof(uint16_t)))) return -1;
        mv_to_bf16(q->w, w, n);
        return 0;
    }
    q->w = xmallocarray(n, 1);
    q->scale = xmallocarray(cols_scaled ? cols : rows, sizeof(float));
    if (!q->w || !q->scale) return -1;
    if (cols_scaled) mv_quantize_cols(q->w, q->scale, w, (int)rows, (int)cols);
    else mv_quantize_rows(q->w, q->scale, w, (int)rows, (int)cols);
    return 0;
}

static void qfree(qmat *q)
{
    free(q->w);
    free(q->scale);
}

/* Compact copies of every matrix the passes stream. */
static int make_compact(fwd *f)
{
    const model_cfg *c = &f->m->cfg;
    size_t C = c->n_embd, I = c->n_inner;
    if (!(f->wq = xcalloc(c->n_layer, sizeof *f->wq))) return -1;
    if (compact(&f->wte, f->m->lm_head, c->n_vocab, C, f->fmt, 0) < 0) return -1;
    for (int l = 0; l < c->n_layer; l++) {
        const layer_weights *w = &f->m->layers[l];
        layerq *d = &f->wq[l];
        if (compact(&d->qkv, w->qkv_w, C, 3 * C, f->fmt, 1) ||
            compact(&d->attn, w->attn_w, C, C, f->fmt, 1) ||
            compact(&d->fc, w->fc_w, C, I, f->fmt, 1) ||
            compact(&d->proj, w->proj_w, I, C, f->fmt, 1))
            return -1;
    }
    return 0;
}

fwd *fwd_new(const model *m, pool *p, int fmt, char *err)
{
    fwd *f = xcalloc(1, sizeof *f);
    if (!f) {
        errf(err, "out of memory");
        return NULL;
    }
    f->m = m;
    f->pool = p;
    f->fmt = fmt;
    if (fmt != FWD_FP32 && make_compact(f) < 0) {
        fwd_free(f);
        errf(err, "out of memory for the %s weights", fmt == FWD_BF16 ? "bf16" : "int8");
        return NULL;
    }
    openblas_set_num_threads(1);
    return f;
}

void fwd_free(fwd *f)
{
    if (!f) return;
    free(f->x);
    free(f->h);
    free(f->qkv);
    free(f->att);
    free(f->fc);
    free(f->wide);
    free(f->scores);
    for (int l = 0; f->wq && l < f->m->cfg.n_layer; l++) {
        qfree(&f->wq[l].qkv);
        qfree(&f->wq[l].attn);
        qfree(&f->wq[l].fc);
        qfree(&f->wq[l].proj);
    }
    free(f->wq);
    qfree(&f->wte);
    free(f);
}

static int reserve(fwd *f, int rows)
{
    if (rows <= f->cap) return 0;
    const model_cfg *c = &f->m->cfg;
    size_t C = c->n_embd, I = c->n_inner;
    float **bufs[5] = {&f->x, &f->h, &f->qkv, &f->att, &f->fc};
    size_t width[5] = {C, C, 3 * C, C, I};
    for (int i = 0; i < 5; i++) {
        float *p = xmallocarray((size_t)rows * width[i], sizeof(float));
        if (!p) return -1;
        free(*bufs[i]);
        *bufs[i] = p;
    }
    /* attention scores: one context row per thread for decode rows, a
     * (rows x window) block per thread for a prompt chunk */
    size_t sc = (size_t)rows * c->n_ctx;
    float *s = xmallocarray(sc * pool_size(f->pool), sizeof(float));
    if (!s) return -1;
    free(f->scores);
    f->scores = s;
    f->score_cap = sc;
    if (f->fmt != FWD_FP32 && !f->wide &&
        !(f->wide = xmallocarray((size_t)pool_size(f->pool) * (C > I ? C : I) * SUB, sizeof(float))))
        return -1;
    f->cap = rows;
    return 0;
}

/* ==== Elementwise ==== */

static void layernorm(float *out, const float *x, const float *w, const float *b, int C,
                      float eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    float rstd = (float)(1.0 / sqrt(var / C + eps)), m = (float)mean;
    for (int i = 0; i < C; i++) out[i] = (x[i] - m) * rstd * w[i] + b[i];
}

static float activate(float x, act_kind k)
{
    switch (k) {
    case ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case ACT_RELU: return x > 0 ? x : 0;
    case ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    case ACT_SILU: return x / (1.0f + expf(-x));
    }
    return x;
}

/* ==== Matrix products ==== */

typedef struct {
    float *out;            /* (R, O) */
    const float *x, *w;    /* x (R, I); w (I, O), or (O, I) when trans */
    const qmat *q;         /* the same weights compacted (fmt), or NULL: then w */
    int fmt;
    float *scratch;        /* (threads, I, SUB): widened compact weights */
    const float *bias;     /* (O) or NULL */
    int R, I, O, chunk;
    int trans, accumulate, act;
    act_kind kind;
} gemm_job;

/* Columns c0..c0+m of the job's compact weights as fp32 into wf: (I, m)
 * for [in, out] matrices, (m, I) for the embedding (trans). */
static void widen(const gemm_job *j, float *wf, int c0, int m)
{
    const qmat *q = j->q;
    if (j->trans) { /* rows c0.. of (O, I): contiguous */
        for (int v = 0; v < m; v++) {
            size_t at = (size_t)(c0 + v) * j->I;
            if (j->fmt == FWD_BF16) mv_from_bf16(wf + (size_t)v * j->I, (const uint16_t *)q->w + at, j->I);
            else mv_from_i8(wf + (size_t)v * j->I, (const int8_t *)q->w + at, &q->scale[c0 + v], j->I, 0);
        }
        return;
    }
    for (int i = 0; i < j->I; i++) { /* one run per weight row */
        size_t at = (size_t)i * j->O + c0;
        if (j->fmt == FWD_BF16) mv_from_bf16(wf + (size_t)i * m, (const uint16_t *)q->w + at, m);
        else mv_from_i8(wf + (size_t)i * m, (const int8_t *)q->w + at, q->scale + c0, m, 1);
    }
}

static void gemm_task(void *arg, int task, int thread)
{
    gemm_job *j = arg;
    int o0 = task * j->chunk, n = j->O - o0 < j->chunk ? j->O - o0 : j->chunk;
    if (j->R <= MV_MAX_ROWS && j->q) { /* decode: stream the weights once */
        if (j->fmt == FWD_BF16 && j->trans)
            mv_out_in_bf16(j->out, j->O, j->x, j->R, j->I, j->q->w, o0, o0 + n);
        else if (j->fmt == FWD_BF16)
            mv_in_out_bf16(j->out, j->O, j->x, j->R, j->I, j->q->w, j->O, o0, o0 + n, j->accumulate);
        else if (j->trans)
            mv_out_in_i8(j->out, j->O, j->x, j->R, j->I, j->q->w, j->q->scale, o0, o0 + n);
        else
            mv_in_out_i8(j->out, j->O, j->x, j->R, j->I, j->q->w, j->q->scale, j->O, o0, o0 + n,
                         j->accumulate);
    } else if (j->R <= MV_MAX_ROWS) {
        if (j->trans) mv_out_in(j->out, j->O, j->x, j->R, j->I, j->w, o0, o0 + n);
        else mv_in_out(j->out, j->O, j->x, j->R, j->I, j->w, j->O, o0, o0 + n, j->accumulate);
    } else if (j->q) { /* prefill: widen SUB columns of compact weights at a time, sgemm */
        float *wf = j->scratch + (size_t)thread * j->I * SUB;
        for (int c0 = o0; c0 < o0 + n; c0 += SUB) {
            int m = o0 + n - c0 < SUB ? o0 + n - c0 : SUB;
            widen(j, wf, c0, m);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, j->trans ? CblasTrans : CblasNoTrans, j->R,
                        m, j->I, 1.0f, j->x, j->I, wf, j->trans ? j->I : m,
                        j->accumulate ? 1.0f : 0.0f, j->out + c0, j->O);
        }
    } else {
        const float *w = j->trans ? j->w + (size_t)o0 * j->I : j->w + o0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, j->trans ? CblasTrans : CblasNoTrans, j->R, n,
                    j->I, 1.0f, j->x, j->I, w, j->trans ? j->I : j->O,
                    j->accumulate ? 1.0f : 0.0f, j->out + o0, j->O);
    }
    if (!j->bias && !j->act) return;
    for (int r = 0; r < j->R; r++) {
        float *o = j->out + (size_t)r * j->O + o0;
        if (j->bias)
            for (int i = 0; i < n; i++) o[i] += j->bias[o0 + i];
        if (j->act)
            for (int i = 0; i < n; i++) o[i] = activate(o[i], j->kind);
    }
}

static void gemm(fwd *f, gemm_job *j)
{
    j->scratch = f->wide;
    j->fmt = f->fmt;
    /* Decode (few rows) is bandwidth-bound: one wide contiguous slice per
     * thread streams best. Prefill: a few slices per thread balance load. */
    int tasks = pool_size(f->pool) * (j->R <= MV_MAX_ROWS ? 1 : 4);
    int chunk = (j->O + tasks - 1) / tasks;
    chunk = (chunk + 15) & ~15;
    if (chunk < 64) chunk = 64;
    j->chunk = chunk;
    pool_run(f->pool, gemm_task, j, (j->O + chunk - 1) / chunk);
}

/* ==== Attention ==== */

typedef struct {
    fwd *f;
    const fwd_row *rows;
    int R, layer;
    float scale;
} attn_job;

/* Key or value row of context position p for a row: ctx0 first, then own. */
static const float *ctx_row(const fwd_row *row, int value, int layer, int p)
{
    const kv_cache *kv = p < row->len0 ? row->ctx0 : row->own;
    int at = p < row->len0 ? p : p - row->len0;
    return kv_row(value ? kv->v : kv->k, kv, layer, at);
}

/* Softmax of s[0..n) in place; returns nothing, s sums to 1. */
static void softmax(float *s, int n)
{
    float max = -INFINITY, sum = 0;
    for (int p = 0; p < n; p++) max = s[p] > max ? s[p] : max;
    for (int p = 0; p < n; p++) sum += s[p] = expf(s[p] - max);
    float inv = 1.0f / sum;
    for (int p = 0; p < n; p++) s[p] *= inv;
}

/* One (row, head): decode rows, each with its own context. */
static void attn_row_task(void *arg, int task, int thread)
{
    attn_job *j = arg;
    const model_cfg *c = &j->f->m->cfg;
    int C = c->n_embd, H = c->n_head, hd = C / H, r = task / H, h = task % H;
    const fwd_row *row = &j->rows[r];
    const float *q = j->f->qkv + (size_t)r * 3 * C + h * hd;
    float *s = j->f->scores + (size_t)thread * j->f->score_cap;
    float *out = j->f->att + (size_t)r * C + h * hd;
    int n = row->len0 + row->own_at + 1;
    for (int p = 0; p < n; p++) s[p] = mv_dot(q, ctx_row(row, 0, j->layer, p) + h * hd, hd) * j->scale;
    softmax(s, n);
    memset(out, 0, hd * sizeof *out);
    for (int p = 0; p < n; p++) mv_axpy(out, s[p], ctx_row(row, 1, j->layer, p) + h * hd, hd);
}

/* One head over all rows of a prompt chunk (rows at consecutive positions of
 * one cache, after a shared ctx0): scores and outputs as GEMMs. */
static void attn_block_task(void *arg, int h, int thread)
{
    attn_job *j = arg;
    const model_cfg *c = &j->f->m->cfg;
    const fwd_row *r0 = &j->rows[0];
    int C = c->n_embd, hd = C / c->n_head, R = j->R, L0 = r0->len0;
    int N = L0 + r0->own_at + R; /* context length of the last row */
    float *S = j->f->scores + (size_t)thread * j->f->score_cap; /* (R, N) */
    const float *q = j->f->qkv + h * hd;
    const kv_cache *own = r0->own;
    if (L0) /* S[:, 0:L0] = Q K0^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, L0, hd, j->scale, q, 3 * C,
                    kv_row(r0->ctx0->k, r0->ctx0, j->layer, 0) + h * hd, C, 0, S, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, N - L0, hd, j->scale, q, 3 * C,
                kv_row(own->k, own, j->layer, 0) + h * hd, C, 0, S + L0, N);
    for (int r = 0; r < R; r++) { /* causal: row r sees N - R + r + 1 positions */
        int n = N - R + r + 1;
        softmax(S + (size_t)r * N, n);
        memset(S + (size_t)r * N + n, 0, (size_t)(N - n) * sizeof *S);
    }
    float *out = j->f->att + h * hd;
    if (L0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, hd, L0, 1.0f, S, N,
                    kv_row(r0->ctx0->v, r0->ctx0, j->layer, 0) + h * hd, C, 0, out, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, hd, N - L0, 1.0f, S + L0, N,
                kv_row(own->v, own, j->layer, 0) + h * hd, C, L0 ? 1.0f : 0.0f, out, C);
}

/* Rows form one prompt chunk: same caches, consecutive positions. */
static int is_block(const fwd_row *rows, int R)
{
    if (R <= MV_MAX_ROWS) return 0;
    for (int r = 1; r < R; r++)
        if (rows[r].own != rows[0].own || rows[r].ctx0 != rows[0].ctx0 ||
            rows[r].len0 != rows[0].len0 || rows[r].own_at != rows[0].own_at + r)
            return 0;
    return 1;
}

/* ==== Layers ==== */

static void attention_block(fwd *f, const fwd_row *rows, int R, int l)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd;
    for (int r = 0; r < R; r++)
        layernorm(f->h + (size_t)r * C, f->x + (size_t)r * C, w->ln1_w, w->ln1_b, C, c->eps);
    const layerq *wq = f->wq ? &f->wq[l] : NULL;
    gemm(f, &(gemm_job){.out = f->qkv, .x = f->h, .w = w->qkv_w, .q = wq ? &wq->qkv : NULL,
                        .bias = w->qkv_b, .R = R,
                        .I = C, .O = 3 * C});
    for (int r = 0; r < R; r++) { /* store this row's key and value */
        const fwd_row *row = &rows[r];
        memcpy(kv_row(row->own->k, row->own, l, row->own_at), f->qkv + (size_t)r * 3 * C + C,
               C * sizeof(float));
        memcpy(kv_row(row->own->v, row->own, l, row->own_at),
               f->qkv + (size_t)r * 3 * C + 2 * C, C * sizeof(float));
    }
    float scale = c->scale_attn ? 1.0f / sqrtf((float)(C / c->n_head)) : 1.0f;
    if (c->scale_inv_layer) scale /= (float)(l + 1);
    attn_job job = {f, rows, R, l, scale};
    if (is_block(rows, R)) pool_run(f->pool, attn_block_task, &job, c->n_head);
    else pool_run(f->pool, attn_row_task, &job, R * c->n_head);
    gemm(f, &(gemm_job){.out = f->x, .x = f->att, .w = w->attn_w, .q = wq ? &wq->attn : NULL,
                        .bias = w->attn_b, .R = R,
                        .I = C, .O = C, .accumulate = 1});
}

static void mlp_block(fwd *f, int R, int l)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd, I = c->n_inner;
    for (int r = 0; r < R; r++)
        layernorm(f->h + (size_t)r * C, f->x + (size_t)r * C, w->ln2_w, w->ln2_b, C, c->eps);
    const layerq *wq = f->wq ? &f->wq[l] : NULL;
    gemm(f, &(gemm_job){.out = f->fc, .x = f->h, .w = w->fc_w, .q = wq ? &wq->fc : NULL,
                        .bias = w->fc_b, .R = R, .I = C,
                        .O = I, .act = 1, .kind = c->act});
    gemm(f, &(gemm_job){.out = f->x, .x = f->fc, .w = w->proj_w, .q = wq ? &wq->proj : NULL,
                        .bias = w->proj_b, .R = R,
                        .I = I, .O = C, .accumulate = 1});
}

static int check_rows(const model_cfg *c, const fwd_row *rows, int R, char *err)
{
    for (int r = 0; r < R; r++) {
        const fwd_row *w = &rows[r];
        if (w->token < 0 || w->token >= c->n_vocab)
            return errf(err, "token id %d is outside the vocabulary (0..%d)", w->token,
                        c->n_vocab - 1);
        if (w->len0 < 0 || (w->len0 && (!w->ctx0 || w->len0 > w->ctx0->cap)) ||
            !w->own || w->own_at < 0 || w->own_at >= w->own->cap)
            return errf(err, "internal error: row %d does not fit its cache", r);
        if (w->len0 + w->own_at >= c->n_ctx)
            return errf(err, "position %d is past the model's window of %d tokens",
                        w->len0 + w->own_at, c->n_ctx);
    }
    return 0;
}

int fwd_run(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out,
            float *logits, char *err)
{
    const model *m = f->m;
    const model_cfg *c = &m->cfg;
    int C = c->n_embd;
    if (check_rows(c, rows, R, err) < 0) return -1;
    if (reserve(f, R) < 0) return errf(err, "out of memory for %d rows of activations", R);
    for (int r = 0; r < R; r++) {
        const float *te = m->wte + (size_t)rows[r].token * C;
        const float *pe = m->wpe + (size_t)(rows[r].len0 + rows[r].own_at) * C;
        for (int i = 0; i < C; i++) f->x[(size_t)r * C + i] = te[i] + pe[i];
    }
    for (int l = 0; l < c->n_layer; l++) {
        attention_block(f, rows, R, l);
        mlp_block(f, R, l);
    }
    for (int i = 0; i < n_out; i++) {
        if (out_rows[i] < 0 || out_rows[i] >= R) return errf(err, "internal error: logit row");
        layernorm(f->h + (size_t)i * C, f->x + (size_t)out_rows[i] * C, m->lnf_w, m->lnf_b, C,
                  c->eps);
    }
    if (n_out)
        gemm(f, &(gemm_job){.out = logits, .x = f->h, .w = m->lm_head,
                            .q = f->fmt != FWD_FP32 ? &f->wte : NULL,
                            .R = n_out, .I = C,
                            .O = c->n_vocab, .trans = 1});
    return 0;
}

/* forward.c - GPT-2 on the CPU (see forward.h).
 *
 * Per layer: x += attn(ln_1(x)) ; x += mlp(ln_2(x)), then ln_f and logits
 * through the tied embedding. Matrix products go through OpenBLAS sgemm on
 * column slices run by our own pool (OpenBLAS itself is kept single-threaded
 * so two thread systems never fight over the cores). HF's Conv1D weights are
 * [in, out], which is exactly the row-major B of out = x @ W.
 */
#include "forward.h"

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>, whose I would shadow our names */
#include <math.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int n);

struct fwd {
    const model *m;
    pool *pool;
    int cap;                                /* rows the buffers hold */
    float *x, *h, *qkv, *att, *fc;          /* (cap, C|C|3C|C|I) */
    float *scores;                          /* (threads, n_ctx) */
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

fwd *fwd_new(const model *m, pool *p, char *err)
{
    fwd *f = xcalloc(1, sizeof *f);
    if (!f) {
        errf(err, "out of memory");
        return NULL;
    }
    f->m = m;
    f->pool = p;
    f->scores = xmallocarray((size_t)pool_size(p) * m->cfg.n_ctx, sizeof(float));
    if (!f->scores) {
        free(f);
        errf(err, "out of memory");
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
    free(f->scores);
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
    const float *bias;     /* (O) or NULL */
    int R, I, O, chunk;
    int trans, accumulate, act;
    act_kind kind;
} gemm_job;

static void gemm_task(void *arg, int task, int thread)
{
    (void)thread;
    gemm_job *j = arg;
    int o0 = task * j->chunk, n = j->O - o0 < j->chunk ? j->O - o0 : j->chunk;
    const float *w = j->trans ? j->w + (size_t)o0 * j->I : j->w + o0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, j->trans ? CblasTrans : CblasNoTrans, j->R, n,
                j->I, 1.0f, j->x, j->I, w, j->trans ? j->I : j->O, j->accumulate ? 1.0f : 0.0f,
                j->out + o0, j->O);
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
    /* a few slices per thread balance the load; keep slices 16-aligned */
    int tasks = pool_size(f->pool) * 4;
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
    int layer;
    float scale;
} attn_job;

static void attn_task(void *arg, int task, int thread)
{
    attn_job *j = arg;
    const model_cfg *c = &j->f->m->cfg;
    int C = c->n_embd, H = c->n_head, hd = C / H, r = task / H, h = task % H;
    const fwd_row *row = &j->rows[r];
    const float *q = j->f->qkv + (size_t)r * 3 * C + h * hd;
    float *s = j->f->scores + (size_t)thread * c->n_ctx, *out = j->f->att + (size_t)r * C + h * hd;
    int n = row->len0 + row->own_at + 1;
    float max = -INFINITY;
    for (int p = 0; p < n; p++) {
        const kv_cache *kv = p < row->len0 ? row->ctx0 : row->own;
        int at = p < row->len0 ? p : p - row->len0;
        const float *k = kv_row(kv->k, kv, j->layer, at) + h * hd;
        float d = 0;
        for (int i = 0; i < hd; i++) d += q[i] * k[i];
        s[p] = d * j->scale;
        if (s[p] > max) max = s[p];
    }
    float sum = 0;
    for (int p = 0; p < n; p++) sum += s[p] = expf(s[p] - max);
    float inv = 1.0f / sum;
    memset(out, 0, hd * sizeof *out);
    for (int p = 0; p < n; p++) {
        const kv_cache *kv = p < row->len0 ? row->ctx0 : row->own;
        int at = p < row->len0 ? p : p - row->len0;
        const float *v = kv_row(kv->v, kv, j->layer, at) + h * hd;
        float w = s[p] * inv;
        for (int i = 0; i < hd; i++) out[i] += w * v[i];
    }
}

/* ==== Layers ==== */

static void attention_block(fwd *f, const fwd_row *rows, int R, int l)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd;
    for (int r = 0; r < R; r++)
        layernorm(f->h + (size_t)r * C, f->x + (size_t)r * C, w->ln1_w, w->ln1_b, C, c->eps);
    gemm(f, &(gemm_job){.out = f->qkv, .x = f->h, .w = w->qkv_w, .bias = w->qkv_b, .R = R,
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
    pool_run(f->pool, attn_task, &(attn_job){f, rows, l, scale}, R * c->n_head);
    gemm(f, &(gemm_job){.out = f->x, .x = f->att, .w = w->attn_w, .bias = w->attn_b, .R = R,
                        .I = C, .O = C, .accumulate = 1});
}

static void mlp_block(fwd *f, int R, int l)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd, I = c->n_inner;
    for (int r = 0; r < R; r++)
        layernorm(f->h + (size_t)r * C, f->x + (size_t)r * C, w->ln2_w, w->ln2_b, C, c->eps);
    gemm(f, &(gemm_job){.out = f->fc, .x = f->h, .w = w->fc_w, .bias = w->fc_b, .R = R, .I = C,
                        .O = I, .act = 1, .kind = c->act});
    gemm(f, &(gemm_job){.out = f->x, .x = f->fc, .w = w->proj_w, .bias = w->proj_b, .R = R,
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
        gemm(f, &(gemm_job){.out = logits, .x = f->h, .w = m->lm_head, .R = n_out, .I = C,
                            .O = c->n_vocab, .trans = 1});
    return 0;
}

/* forward.c - GPT-2 on the CPU (see forward.h).
 *
 * Per layer: x += attn(ln_1(x)) ; x += mlp(ln_2(x)), then ln_f and logits
 * through the tied embedding. Every matrix is repacked at load (packed.h) in
 * the context's format. Products of a few rows (decode, the logits) stream
 * the tiles once. Prompt chunks: int8's exact int32 kernel serves every row
 * count; bf16 rounds activations to bf16 where vdpbf16ps outruns fp32 fmas;
 * otherwise fp32 tiles (bf16 ones widened) go to our AVX-512 panels
 * (pk_f32_product, attention too); without AVX-512 the AVX2 kernels read the
 * fp32 or bf16 tiles as they lie (pk_float_prompts; attention on
 * pk_f32_product's AVX2 kernel), and only a CPU with neither (or a bf16
 * product of odd K) widens a few tiles at a time for OpenBLAS's sgemm,
 * which also serves attention there. Our own pool splits
 * the tiles among threads (OpenBLAS itself is kept single-threaded so two
 * thread systems never fight over the cores).
 */
#include "forward.h"
#include "amx.h"
#include "ops.h"
#include "packed.h"
#include "topk.h"

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>, whose I would shadow our names */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int n);

/* Products of up to STREAM_ROWS rows (on the AVX-512 and AVX2 kernels; with
 * the portable loops MV_MAX_ROWS, not measured there) stream the packed
 * tiles as decode does: a contiguous
 * run of tiles per thread, a few rows a pass (the later passes reading the
 * tile from L2), bf16 widened in registers. More rows go to the prompt
 * kernels (panels on tiles widened once, bf16 or int8 activations), a tile
 * per task.
 * A typing pause's prompt is about 14 tokens: with 8 here its bf16 prefill
 * took 30-33 ms, with 24 23-25 (the tile widened in a pass of its own did
 * not overlap its reads from memory with the sums). On the AVX2 kernels
 * (Zen 4 forced to them, OpenBLAS's Haswell sgemm) 20 tokens after 600 took
 * 31-42 ms in bf16 with 24 here, 40-56 with 8; fp32 37-45 against 55-63. */
#define STREAM_ROWS 24
#define SUB 256 /* prefill: packed tiles widened to fp32 per sgemm (4 tiles) */
/* a prompt's packed products: rows per pk_matmul (which adds the bias),
 * then the activation (two whole blocks of AMX rows where those run) */
int fwd_prompt_rows(void) { return pk_amx() ? 2 * AMX_ROWS : 24; }
#define ATT_BLOCK 64 /* a prompt's attention: rows per block (attn_block_task) */

/* Freed caches of KV_SPARE_MIN bytes or more (memory the C library maps
 * afresh, not a keystroke's few positions) are kept for kv_new, up to
 * KV_SPARES of them and KV_SPARE_BYTES in all. A fresh cache's first
 * writes fault its pages in, each 2 MB zeroed by the kernel, on whichever
 * thread writes first, and the other waits for it: a cold 512-token bf16
 * prefill on a fresh cache spent about 10% of its time so. The helper's
 * prefix slots keep their caches; its private caches (slots all busy) and
 * the bench's are what this saves. Spares are not in status's
 * kv_cache_bytes. */
#define KV_SPARES 4
#define KV_SPARE_MIN ((size_t)1 << 20)
#define KV_SPARE_BYTES ((size_t)192 << 20)

typedef struct screen screen;
static int screen_new(fwd *f);
static void screen_free(screen *s);
static int screen_topk(fwd *f, int n, int k, float *vals, int *ids);

/* Every matrix the passes stream, packed (packed.h) in the context's format. */
typedef struct {
    pmat qkv, attn, fc, proj;
} layerp;

struct fwd {
    const model *m;
    pool *pool;
    int fmt;                                /* FWD_FP32 | FWD_BF16 | FWD_INT8 | FWD_INT4 */
    int kv_elt;                             /* what caches hold: MV_F32, MV_F16 or MV_I8 */
    layerp *wp;                             /* per layer */
    void *arena;                            /* every pmat's data (pack_all) */
    pmat wte;                               /* the tied embedding as (C, V) */
    pk_act act;                             /* int8, bf16 prefill: the product's input */
    int cap;                                /* rows the buffers hold */
    float *x, *h, *qkv, *att, *fc;          /* (cap, C|C|3C|C|I) */
    fwd_row *sel;                           /* (cap): last_layer's rows */
    float *wide;                            /* (threads, max(C, I), SUB): widened weights */
    float *scores;                          /* (threads, score_cap) */
    size_t score_cap;
    float *wkv;                             /* (threads, wkv_cap): half or int8 keys/values widened */
    size_t wkv_cap;
    int att_bf16;                           /* a prompt's weighted values in bf16 */
    int bf16_dp;                            /* bf16 prompts take bf16 activations (vdpbf16ps) */
    int fuse_qkv;                           /* prompts: a head's q, k, v in its attention task */
    uint32_t *abf;                          /* (threads, abf_cap): their tiles and rows */
    size_t abf_cap;
    float *kt;                              /* (threads, hd, kt_ld): a prompt's keys transposed */
    int kt_ld;                              /* n_ctx rounded up to whole panels, + 16 */
    screen *scr;                            /* top-k rows: the head's int8 screen, or NULL */
    pool_span *spans;                       /* (threads): pool_run_then's */
    int pull;                               /* decode: pull the next product's weights */
    atomic_ulong screened, fallback;        /* fwd_topk_stats */
    pthread_mutex_t spare_mu;               /* guards spare, n_spare */
    kv_cache *spare[KV_SPARES];             /* freed caches kept for kv_new */
    int n_spare;
};

static size_t kv_elt(const kv_cache *kv)
{
    return kv->elt == MV_I8 ? 1 : kv->elt == MV_F16 ? sizeof(uint16_t) : sizeof(float);
}

/* Memory a cache gives back to the system. */
static void release(kv_cache *kv)
{
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv->ks);
    free(kv->vs);
    free(kv);
}

/* A spare of at least cap positions and at most twice that, the smallest
 * (taken out of f->spare), or NULL. */
static kv_cache *take_spare(fwd *f, int cap)
{
    pthread_mutex_lock(&f->spare_mu);
    int best = -1;
    for (int i = 0; i < f->n_spare; i++) {
        int c = f->spare[i]->cap;
        if (c >= cap && c / 2 <= cap && (best < 0 || c < f->spare[best]->cap)) best = i;
    }
    kv_cache *kv = best < 0 ? NULL : f->spare[best];
    if (kv) f->spare[best] = f->spare[--f->n_spare];
    pthread_mutex_unlock(&f->spare_mu);
    return kv;
}

kv_cache *kv_new(fwd *f, int cap)
{
    const model_cfg *c = &f->m->cfg;
    kv_cache *kv = take_spare(f, cap);
    if (kv) return kv;
    kv = xcalloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->elt = f->kv_elt;
    size_t n = (size_t)c->n_layer * cap * c->n_embd, ns = (size_t)c->n_layer * c->n_head * cap;
    kv->k = xbig_alloc(n, kv_elt(kv));
    kv->v = xbig_alloc(n, kv_elt(kv));
    if (kv->elt == MV_I8) {
        kv->ks = xmallocarray(ns, sizeof(float));
        kv->vs = xmallocarray(ns, sizeof(float));
    }
    if (!kv->k || !kv->v || (kv->elt == MV_I8 && (!kv->ks || !kv->vs))) {
        release(kv);
        return NULL;
    }
    kv->cap = cap;
    kv->n_layer = c->n_layer;
    kv->n_embd = c->n_embd;
    kv->n_head = c->n_head;
    return kv;
}

size_t kv_bytes(const kv_cache *kv)
{
    size_t scales = kv->elt == MV_I8 ? (size_t)kv->n_head * sizeof(float) : 0;
    return 2 * (size_t)kv->n_layer * kv->cap * (kv->n_embd * kv_elt(kv) + scales);
}

void kv_free(fwd *f, kv_cache *kv)
{
    if (!kv) return;
    if (kv_bytes(kv) >= KV_SPARE_MIN) {
        pthread_mutex_lock(&f->spare_mu);
        size_t held = kv_bytes(kv);
        for (int i = 0; i < f->n_spare; i++) held += kv_bytes(f->spare[i]);
        int keep = f->n_spare < KV_SPARES && held <= KV_SPARE_BYTES;
        if (keep) f->spare[f->n_spare++] = kv;
        pthread_mutex_unlock(&f->spare_mu);
        if (keep) return;
    }
    release(kv);
}

/* Keys or values of one head of one layer: cap rows of head-size elements,
 * so attention streams a head's context contiguously. */
static void *kv_head(void *base, const kv_cache *kv, int layer, int head)
{
    int hd = kv->n_embd / kv->n_head;
    return (char *)base + ((size_t)layer * kv->n_head + head) * kv->cap * hd * kv_elt(kv);
}

/* The int8 scales (ks or vs) of one head of one layer, a position apart;
 * NULL for other caches. */
static float *kv_scales(float *base, const kv_cache *kv, int layer, int head)
{
    return base ? base + ((size_t)layer * kv->n_head + head) * kv->cap : NULL;
}

/* Keys (k, ks) or values (v, vs) of positions 0..n of one head as floats:
 * the cache itself, or widened into w. */
static const float *kv_floats(void *base, float *scales, const kv_cache *kv, int layer, int head, int n,
                              float *w)
{
    void *p = kv_head(base, kv, layer, head);
    int hd = kv->n_embd / kv->n_head;
    if (kv->elt == MV_F32) return p;
    if (kv->elt == MV_I8) {
        mv_from_i8(w, p, kv_scales(scales, kv, layer, head), n, hd);
        return w;
    }
    mv_from_half(w, p, (size_t)n * hd);
    return w;
}

_Static_assert((int)FWD_FP32 == PK_F32 && (int)FWD_BF16 == PK_BF16 && (int)FWD_INT8 == PK_I8 && (int)FWD_INT4 == PK_I4,
               "a forward format is its packed format");

/* Matrices to pack, and their tiles in tasks for the threads. */
typedef struct {
    pmat *p;
    const float *w;
    int out_in;
} pack_item;

#define PACK_TILES 8 /* tiles per task */

typedef struct {
    pack_item *items;
    int n, *first; /* first[i]: item i's first task; first[n]: the count */
} pack_job;

static void pack_task(void *arg, int task, int thread)
{
    pack_job *j = arg;
    int i = 0;
    while (j->first[i + 1] <= task) i++; /* at most a few hundred items */
    const pack_item *it = &j->items[i];
    int t0 = (task - j->first[i]) * PACK_TILES, t1 = t0 + PACK_TILES < it->p->tiles ? t0 + PACK_TILES : it->p->tiles;
    pk_pack_tiles(it->p, it->w, it->out_in, t0, t1);
}

/* w packed at *at, which then moves past it (its tiles later, by pack_job). */
static int pack_at(fwd *f, unsigned char **at, pack_job *j, pmat *p, const float *w, int K, int N,
                   int out_in, char *err)
{
    if (pk_pack_begin(p, *at, w, K, N, f->fmt, err)) return -1;
    *at += pk_size(K, N, f->fmt);
    j->items[j->n++] = (pack_item){p, w, out_in};
    return 0;
}

/* Every matrix, packed back to back into one block of huge pages
 * (xbig_alloc), in the order a decode step streams them; the tiles by
 * every thread (int4's scale search made packing the bulk of a load: 1.1 s
 * for gpt2 on one Zen 3 core). */
static int pack_all(fwd *f, char *err)
{
    const model_cfg *c = &f->m->cfg;
    int C = c->n_embd, I = c->n_inner, fmt = f->fmt;
    if (!(f->wp = xcalloc(c->n_layer, sizeof *f->wp))) return errf(err, "out of memory");
    size_t layer = pk_size(C, 3 * C, fmt) + pk_size(C, C, fmt) + pk_size(C, I, fmt) + pk_size(I, C, fmt);
    size_t total = pk_size(C, c->n_vocab, fmt) + c->n_layer * layer;
    if (!(f->arena = xbig_alloc(total, 1)))
        return errf(err, "out of memory (%zu MB of packed weights)", total >> 20);
    int items = 4 * c->n_layer + 1, rc = -1;
    pack_job j = {xmallocarray(items, sizeof *j.items), 0, xmallocarray(items + 1, sizeof(int))};
    if (!j.items || !j.first) {
        errf(err, "out of memory");
        goto out;
    }
    unsigned char *at = f->arena;
    for (int l = 0; l < c->n_layer; l++) {
        const layer_weights *w = &f->m->layers[l];
        layerp *d = &f->wp[l];
        if (pack_at(f, &at, &j, &d->qkv, w->qkv_w, C, 3 * C, 0, err) ||
            pack_at(f, &at, &j, &d->attn, w->attn_w, C, C, 0, err) ||
            pack_at(f, &at, &j, &d->fc, w->fc_w, C, I, 0, err) ||
            pack_at(f, &at, &j, &d->proj, w->proj_w, I, C, 0, err))
            goto out;
    }
    if (pack_at(f, &at, &j, &f->wte, f->m->lm_head, C, c->n_vocab, 1, err)) goto out;
    j.first[0] = 0;
    for (int i = 0; i < j.n; i++) j.first[i + 1] = j.first[i] + (j.items[i].p->tiles + PACK_TILES - 1) / PACK_TILES;
    pool_run(f->pool, pack_task, &j, j.first[j.n]);
    rc = 0;
out:
    free(j.items);
    free(j.first);
    return rc;
}

fwd *fwd_new(const model *m, pool *p, int fmt, int kv, char *err)
{
    fwd *f = xcalloc(1, sizeof *f);
    if (!f) {
        errf(err, "out of memory");
        return NULL;
    }
    f->m = m;
    f->pool = p;
    f->fmt = fmt;
    pthread_mutex_init(&f->spare_mu, NULL);
    if (!(f->spans = xcalloc(pool_size(p), sizeof *f->spans))) {
        fwd_free(f);
        errf(err, "out of memory");
        return NULL;
    }
    /* for the bench, GPT2_CPU_PULL=0: threads that end a decode product early just wait */
    const char *pull = getenv("GPT2_CPU_PULL");
    f->pull = !pull || strcmp(pull, "0");
    /* for tests and the bench: the AVX2 kernels (of products, attention and
     * conversions; avxvnni: with AVX-VNNI's int8 kernel where the CPU has
     * it), or the portable loops, as on a CPU with no more: no vdpbf16ps,
     * no AVX-512 panels (prompts' float products go to sgemm) */
    const char *isa = getenv("GPT2_CPU_ISA");
    pk_force_generic = !isa                          ? 0
                       : !strcmp(isa, "portable") ? 1
                       : !strcmp(isa, "avx2")     ? 2
                       : !strcmp(isa, "avxvnni")  ? 4
                                                  : 0;
    if (isa) mv_half_path = pk_force_generic == 1 ? 2 : pk_forced_avx2() ? 1 : 0;
    /* auto: int8 weights keep int8 keys and values where decode attention
     * reads them in place (AVX-512: a third less attention time at 640
     * positions, typing p50 8-16 ms lower; AVX2 kernels, on an AVX-512
     * Xeon: p50 254-266 against 271-274 ms, a keystroke's prefill 25-27
     * against 41 ms; measured; 7% more to int8's mean KL against fp32),
     * bf16 and int8 otherwise fp16 ones where the CPU converts half floats
     * in hardware */
    if (kv == FWD_KV_AUTO)
        kv = (fmt == FWD_INT8 || fmt == FWD_INT4) && mv_i8_fast(m->cfg.n_embd / m->cfg.n_head) ? FWD_KV_INT8
             : fmt != FWD_FP32 && mv_half_fast()                          ? FWD_KV_FP16
                                                                          : FWD_KV_FP32;
    f->kv_elt = kv == FWD_KV_INT8 ? MV_I8 : kv == FWD_KV_FP16 ? MV_F16 : MV_F32;
    /* for tests, GPT2_CPU_FUSE=0: a prompt's qkv product as a pass of its own */
    const char *fuse = getenv("GPT2_CPU_FUSE");
    f->fuse_qkv = !fuse || strcmp(fuse, "0");
    /* for tests and the bench, GPT2_CPU_AMX=0: prompts on AVX-512 where the CPU has AMX */
    const char *amx = getenv("GPT2_CPU_AMX");
    pk_amx_off = amx && !strcmp(amx, "0");
    pk_prefetch_init();
    /* bf16 activations on AMX tiles, or by vdpbf16ps where the CPU has it
     * and it outruns fp32 fmas (timed once); for tests, GPT2_CPU_BF16=dp|fp32
     * forces either (dp: where the CPU has it) */
    const char *bdp = getenv("GPT2_CPU_BF16");
    int dp = pk_bf16_dp() && pk_force_generic != 1 && !pk_forced_avx2(); /* not under GPT2_CPU_ISA */
    f->bf16_dp = dp && (bdp && !strcmp(bdp, "dp")     ? 1
                        : bdp && !strcmp(bdp, "fp32") ? 0
                                                      : pk_amx() || pk_bf16_dp_faster());
    /* for tests, GPT2_CPU_ATTN=fp32|bf16: a prompt's weighted values so, whatever the weights */
    const char *att = getenv("GPT2_CPU_ATTN");
    f->att_bf16 = dp && m->cfg.n_embd == m->cfg.n_head * PK_TILE &&
                  (att && !strcmp(att, "bf16") ? 1 : att && !strcmp(att, "fp32") ? 0
                                                                                  : fmt != FWD_FP32 && f->bf16_dp);
    char why[ERR_MAX];
    if (pack_all(f, why) < 0) {
        fwd_free(f);
        errf(err, "%s weights: %s", fwd_fmt_name(fmt), why);
        return NULL;
    }
    /* for tests and the bench, GPT2_CPU_SCREEN=0: every logit of a top-k row too */
    const char *scr = getenv("GPT2_CPU_SCREEN");
    if ((!scr || strcmp(scr, "0")) && screen_new(f) < 0) {
        fwd_free(f);
        errf(err, "out of memory (the head's int8 screen)");
        return NULL;
    }
    openblas_set_num_threads(1);
    return f;
}

void fwd_free(fwd *f)
{
    if (!f) return;
    free(f->x);
    free(f->sel);
    free(f->h);
    free(f->qkv);
    free(f->att);
    free(f->fc);
    free(f->wide);
    free(f->scores);
    free(f->wkv);
    free(f->abf);
    free(f->spans);
    for (int l = 0; f->wp && l < f->m->cfg.n_layer; l++) {
        pk_free(&f->wp[l].qkv);
        pk_free(&f->wp[l].attn);
        pk_free(&f->wp[l].fc);
        pk_free(&f->wp[l].proj);
    }
    free(f->wp);
    free(f->kt);
    pk_free(&f->wte);
    screen_free(f->scr);
    free(f->arena);
    pk_act_free(&f->act);
    for (int i = 0; i < f->n_spare; i++) release(f->spare[i]);
    pthread_mutex_destroy(&f->spare_mu);
    free(f);
}

/* Whether a prompt's fp32 and bf16 products (without bf16 activations) run
 * on pk_f32_product's panels: on AVX-512, unless GPT2_CPU_ISA forces the
 * kernels of a CPU without it (then sgemm, as there). */
static int panels(void) { return pk_f32_prompts() && !pk_force_generic; }

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
    fwd_row *sel = xmallocarray(rows, sizeof *sel);
    if (!sel) return -1;
    free(f->sel);
    f->sel = sel;
    /* attention scores, per thread: a group's context rows for decode rows,
     * one block of ATT_BLOCK rows at a time for a prompt chunk (its rows
     * each block over again: a 512-token prefill's L2 then held 128 KB of
     * scores instead of 512, and ran 2-3% faster at best of 12 on Zen 4) */
    size_t sc = (size_t)(rows < ATT_BLOCK ? rows : ATT_BLOCK) * c->n_ctx;
    float *s = xmallocarray(sc * pool_size(f->pool), sizeof(float));
    if (!s) return -1;
    free(f->scores);
    f->scores = s;
    f->score_cap = sc;
    if (!f->wide &&
        !(f->wide = xmallocarray((size_t)pool_size(f->pool) * (C > I ? C : I) * SUB, sizeof(float))))
        return -1;
    size_t hd = C / c->n_head, wk = 2 * (size_t)c->n_ctx * hd; /* a prompt's keys and values */
    wk = wk > mv_attn_wide(hd) ? wk : mv_attn_wide(hd);
    if (f->kv_elt != MV_F32 && !f->wkv) {
        if (!(f->wkv = xmallocarray(wk * pool_size(f->pool), sizeof(float)))) return -1;
        f->wkv_cap = wk;
    }
    if (pk_f32_products() && !f->kt) {
        /* whole panels of keys a row, and a line more: rows 1024 floats
         * apart share one L1 set, and the scores' 16 columns of 64 rows
         * then came from L2 (AVX2 on Zen 3: 21 -> 28-36 G multiply-adds a
         * second on 512 keys) */
        int ld = (c->n_ctx + PK_TILE - 1) / PK_TILE * PK_TILE + 16;
        if (!(f->kt = xmallocarray((size_t)pool_size(f->pool) * hd * ld, sizeof(float)))) return -1;
        f->kt_ld = ld;
    }
    if (f->att_bf16 && !f->abf) { /* a prompt's value tile and a block's probabilities */
        size_t pairs = (size_t)(c->n_ctx + 1) / 2, wa = pairs * PK_TILE + ATT_BLOCK * pairs;
        if (!(f->abf = xmallocarray(wa * pool_size(f->pool), sizeof *f->abf))) return -1;
        f->abf_cap = wa;
    }
    int quant = f->fmt == FWD_INT8 || f->fmt == FWD_INT4;
    if ((quant || (f->fmt == FWD_BF16 && f->bf16_dp)) &&
        pk_act_reserve(&f->act, quant ? PK_I8 : PK_BF16, rows, (int)(C > I ? C : I)) < 0)
        return -1;
    f->cap = rows;
    return 0;
}

/* ==== Elementwise ==== */

/* o[0..n) = act(o): GPT-2's own GELU vectorised, the others per value. */
static void activate(float *o, int n, act_kind k)
{
    if (k == ACT_GELU_TANH) {
        mv_gelu_tanh(o, n);
        return;
    }
    for (int i = 0; i < n; i++) {
        float x = o[i];
        switch (k) {
        case ACT_GELU_TANH: break; /* above */
        case ACT_GELU_ERF: o[i] = 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)); break;
        case ACT_RELU: o[i] = x > 0 ? x : 0; break;
        case ACT_QUICK_GELU: o[i] = x / (1.0f + expf(-1.702f * x)); break;
        case ACT_SILU: o[i] = x / (1.0f + expf(-x)); break;
        }
    }
}

/* ==== Matrix products ==== */

typedef struct {
    float *out;            /* (R, O) */
    const float *x;        /* (R, I) */
    const pmat *w;         /* (I, O) */
    const pk_act *q;       /* x quantized for int8 weights, or as bf16 for bf16 ones */
    float *scratch;        /* (threads, I, SUB): widened tiles */
    const float *bias;     /* (O) or NULL */
    int R, I, O, tiles;    /* tiles: per task */
    int accumulate, act;
    act_kind kind;
    const pmat *next;      /* decode: the product after this one, for pool_run_then */
} gemm_job;

/* Bias (unless the product added it: bias_added) and activation on
 * columns c0..c1 of rows r0..r1. */
static void finish_cols(const gemm_job *j, int r0, int r1, int c0, int c1, int bias_added)
{
    int bias = j->bias && !bias_added;
    if (!bias && !j->act) return;
    for (int r = r0; r < r1; r++) {
        float *o = j->out + (size_t)r * j->O + c0;
        if (bias) mv_add(o, j->bias + c0, c1 - c0);
        if (j->act) activate(o, c1 - c0, j->kind);
    }
}

/* Rows up to which a product streams the packed tiles (STREAM_ROWS). */
static int stream_rows(void) { return strcmp(pk_kernels(PK_F32), "portable") ? STREAM_ROWS : MV_MAX_ROWS; }

/* Columns of tiles t0..t1 of a product, finished (bias, activation). */
static void gemm_tiles(const gemm_job *j, int t0, int t1, int thread)
{
    /* decode and short prompts stream the tiles; int8 products stay exact in int32; bf16
     * prompts take vdpbf16ps where it is the faster; else a prompt's fp32
     * tiles (bf16 ones widened) go to pk_f32_product on AVX-512, to
     * pk_matmul's AVX2 kernels as they lie (pk_float_prompts), or a few
     * widened tiles at a time to sgemm */
    int stream = j->R <= stream_rows();
    /* j->q: int8 (VNNI or AVX2 for a prompt), or bf16 activations; or float
     * tiles the AVX2 kernels read as they lie */
    int packed = stream || j->q || pk_float_prompts(j->w);
    int panel = !packed && panels();
    /* a prompt's columns are finished block by block, while still in cache */
    int step = stream ? t1 - t0 : packed || panel ? 1 : SUB / PK_TILE;
    float *wf = j->scratch + (size_t)thread * j->I * SUB;
    for (int t = t0; t < t1; t += step) {
        int te = t + step < t1 ? t + step : t1;
        int c0 = t * PK_TILE, c1 = te * PK_TILE < j->O ? te * PK_TILE : j->O;
        const float *wt = panel ? pk_f32_tile(j->w, t, wf) : NULL; /* the tile in fp32, once */
        if ((packed || panel) && !stream) { /* a prompt: finished a few rows at a time, in L2 */
            int fr = fwd_prompt_rows();
            for (int r0 = 0; r0 < j->R; r0 += fr) {
                int r1 = j->R - r0 < fr ? j->R : r0 + fr;
                float *o = j->out + (size_t)r0 * j->O;
                if (panel) {
                    pk_f32_product(wt, PK_TILE, j->I, j->x + (size_t)r0 * j->I, j->I, r1 - r0, 1.0f,
                                   o + c0, j->O, c1 - c0, j->accumulate, j->bias ? j->bias + c0 : NULL);
                } else {
                    pk_act rows = j->q ? pk_act_rows(j->q, j->I, r0) : (pk_act){0};
                    rows.warm = r0 > 0;
                    rows.hold = 1; /* given back below */
                    pk_matmul(j->w, o, j->O, j->x + (size_t)r0 * j->I, j->I, j->q ? &rows : NULL, r1 - r0,
                              t, te, j->accumulate, j->bias);
                }
                finish_cols(j, r0, r1, c0, c1, 1);
            }
            continue;
        }
        if (packed) {
            pk_matmul(j->w, j->out, j->O, j->x, j->I, j->q, j->R, t, te, j->accumulate, j->bias);
        } else {
            for (int u = t; u < te; u++) pk_widen(j->w, u, wf + (u - t) * PK_TILE, SUB);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->R, c1 - c0, j->I, 1.0f, j->x,
                        j->I, wf, SUB, j->accumulate ? 1.0f : 0.0f, j->out + c0, j->O);
        }
        finish_cols(j, 0, j->R, c0, c1, packed);
    }
    amx_release();
}

static void gemm_task(void *arg, int task, int thread)
{
    gemm_job *j = arg;
    int t0 = task * j->tiles, t1 = t0 + j->tiles < j->w->tiles ? t0 + j->tiles : j->w->tiles;
    gemm_tiles(j, t0, t1, thread);
}

typedef struct {
    pk_act *a;
    const float *x;
    int fmt, R, I, rows;
} quant_job;

static void quant_task(void *arg, int task, int thread)
{
    quant_job *j = arg;
    int r0 = task * j->rows, r1 = r0 + j->rows < j->R ? r0 + j->rows : j->R;
    pk_act_quantize(j->a, j->fmt, j->x, r0, r1, j->I, j->I);
}

/* The form R rows of input take for products with w (pk_act_quantize's
 * format), or -1 when they read the floats. */
static int act_fmt(const fwd *f, const pmat *w, int R)
{
    if (w->fmt == PK_I4) return PK_I8; /* its kernels take every count of rows */
    if (w->fmt == PK_I8) return R <= MV_MAX_ROWS || pk_i8_prompts() ? PK_I8 : -1; /* else widened for sgemm */
    return w->fmt == PK_BF16 && R > MV_MAX_ROWS && f->bf16_dp ? PK_BF16 : -1;
}

/* Rows per task when a pass over R rows is split among the threads. */
static int rows_per_task(const fwd *f, int R)
{
    int tasks = 4 * pool_size(f->pool);
    return (R + tasks - 1) / tasks;
}

/* Ready j to run: the input in the products' form (j->q: already so, from
 * norm, else put so here) and the tiles per task. */
static void gemm_prepare(fwd *f, gemm_job *j)
{
    j->scratch = f->wide;
    int fmt = act_fmt(f, j->w, j->R);
    if (fmt >= 0 && !j->q) { /* the input in the products' form, once for every task */
        quant_job q = {&f->act, j->x, fmt, j->R, j->I, rows_per_task(f, j->R)};
        if (j->R <= MV_MAX_ROWS) pk_act_quantize(&f->act, fmt, j->x, 0, j->R, j->I, j->I); /* no sync for a few rows */
        else pool_run(f->pool, quant_task, &q, (j->R + q.rows - 1) / q.rows);
        j->q = &f->act;
    }
    /* Decode (few rows) is bandwidth-bound: one contiguous run of tiles per
     * thread streams best. Prompts: a tile per task where the product reads
     * the packed tiles (int8, bf16 activations) or a tile as fp32 (panels),
     * so the threads end within a tile of each other; a few runs per thread
     * where tiles are widened for sgemm, whose calls want several tiles. */
    int tasks = j->R <= stream_rows() ? pool_size(f->pool)
                : j->q || panels() || pk_float_prompts(j->w) ? j->w->tiles
                                   : pool_size(f->pool) * 4;
    j->tiles = (j->w->tiles + tasks - 1) / tasks;
}

#define PULL_MAX (768 * 1024) /* of a thread's part of the next product: within its L2 */

/* The spans a decode step's threads stream first in product w (thread t
 * takes the t-th run of tiles, gemm_prepare), or NULL where rows are not
 * decode rows. */
static const pool_span *next_spans(fwd *f, const pmat *w, int R)
{
    if (!w || !f->pull || R > stream_rows()) return NULL;
    int n = pool_size(f->pool), per = (w->tiles + n - 1) / n;
    for (int t = 0; t < n; t++) {
        int t0 = t * per < w->tiles ? t * per : w->tiles;
        int t1 = t0 + per < w->tiles ? t0 + per : w->tiles;
        size_t bytes = (size_t)(t1 - t0) * w->tile_bytes;
        f->spans[t] = (pool_span){w->data + (size_t)t0 * w->tile_bytes, bytes < PULL_MAX ? bytes : PULL_MAX};
    }
    return f->spans;
}

/* out = x @ w (+ bias, activation); reserve() made the room. */
static void gemm(fwd *f, gemm_job *j)
{
    gemm_prepare(f, j);
    pool_run_then(f->pool, gemm_task, j, (j->w->tiles + j->tiles - 1) / j->tiles,
                  next_spans(f, j->next, j->R));
}

/* ==== The k best logits of decode rows: an int8 screen of the head ==== */

/* Rows (at most FWD_TOPK_ROWS, no more than MV_MAX_ROWS: their head
 * product reads fp32 inputs, so the exact columns below are the whole
 * product's) whose top k a step may
 * take from the screen (topk.h). A row's candidates past cap, or the rows'
 * union past cap_u, and the step computes every logit instead. */
_Static_assert(FWD_TOPK_ROWS <= MV_MAX_ROWS, "top-k rows read fp32 inputs");

struct screen {
    pmat q;             /* the head (C, V) in int8 */
    float *err, *amax;  /* (V): pk_i8_bounds */
    pk_act act;         /* (2 FWD_TOPK_ROWS): the rows quantized, x1 then x2 (topk.h) */
    float *res;         /* (FWD_TOPK_ROWS, C): x - x1 */
    float *s;           /* (2 FWD_TOPK_ROWS, V): the screen of x1, then of x2 */
    float *lo;          /* (FWD_TOPK_ROWS, V): scratch */
    int *cand, cap;     /* (FWD_TOPK_ROWS, cap): each row's candidates */
    int ncand[FWD_TOPK_ROWS];
    float P[FWD_TOPK_ROWS], Q[FWD_TOPK_ROWS];
    unsigned char *mark; /* (V) */
    int *uid, cap_u;     /* (cap_u): the rows' candidates together, ascending */
    const float **rowp;  /* (cap_u): their rows of the head */
    float *exact;        /* (FWD_TOPK_ROWS, cap_u): their exact logits */
    unsigned char *tile; /* (threads, tile): a tile of them per thread */
    float *gather;       /* (threads, PK_TILE, C): pk_pack_rows' scratch */
    size_t tile_bytes;
    int fmt, k, n, nu;
    int misses, skip; /* fallbacks in a row; calls to pass over before trying again */
};

static void screen_free(screen *s)
{
    if (!s) return;
    pk_free(&s->q);
    pk_act_free(&s->act);
    free(s->err);
    free(s->amax);
    free(s->res);
    free(s->s);
    free(s->lo);
    free(s->cand);
    free(s->mark);
    free(s->uid);
    free(s->rowp);
    free(s->exact);
    free(s->tile);
    free(s->gather);
    free(s);
}

typedef struct {
    fwd *f;
    screen *s;
} screen_job;

/* pk_i8_bounds of a tile's columns */
static void bounds_task(void *arg, int t, int thread)
{
    screen_job *j = arg;
    int n0 = t * PK_TILE, n1 = n0 + PK_TILE < j->s->q.N ? n0 + PK_TILE : j->s->q.N;
    pk_i8_bounds(&j->s->q, j->f->m->lm_head, j->s->fmt, n0, n1, j->s->err, j->s->amax);
}

/* f->scr for fp32 and bf16 heads that are the tied embedding (its fp32 rows
 * stay in memory: the exact columns are packed from them). 0 (f->scr NULL
 * where there is none), or -1 when out of memory. */
static int screen_new(fwd *f)
{
    const model_cfg *c = &f->m->cfg;
    int C = c->n_embd, V = c->n_vocab, fmt = f->fmt == FWD_BF16 ? PK_BF16 : PK_F32;
    if (f->fmt == FWD_INT8 || f->fmt == FWD_INT4 || !c->tied || V <= FWD_TOPK_MAX) return 0;
    screen *s = xcalloc(1, sizeof *s);
    if (!s) return -1;
    char why[ERR_MAX];
    if (pk_pack_begin(&s->q, NULL, f->m->lm_head, C, V, PK_I8, why) < 0) {
        free(s); /* a weight that is not finite, or no memory for it: no screen, every logit */
        return 0;
    }
    pack_item it = {&s->q, f->m->lm_head, 1};
    int first[2] = {0, (s->q.tiles + PACK_TILES - 1) / PACK_TILES};
    pool_run(f->pool, pack_task, &(pack_job){&it, 1, first}, first[1]);
    s->fmt = fmt;
    s->cap = V / 8 + FWD_TOPK_MAX;
    s->cap_u = V / 4 > s->cap ? V / 4 : s->cap;
    s->tile_bytes = pk_size(C, PK_TILE, fmt);
    s->err = xmallocarray(V, sizeof(float));
    s->amax = xmallocarray(V, sizeof(float));
    s->res = xmallocarray((size_t)FWD_TOPK_ROWS * C, sizeof(float));
    s->s = xmallocarray((size_t)2 * FWD_TOPK_ROWS * V, sizeof(float));
    s->lo = xmallocarray((size_t)FWD_TOPK_ROWS * V, sizeof(float));
    s->cand = xmallocarray((size_t)FWD_TOPK_ROWS * s->cap, sizeof(int));
    s->mark = xcalloc(V, 1);
    s->uid = xmallocarray(s->cap_u, sizeof(int));
    s->rowp = xmallocarray(s->cap_u, sizeof(float *));
    s->exact = xmallocarray((size_t)FWD_TOPK_ROWS * s->cap_u, sizeof(float));
    s->tile = xbig_alloc((size_t)pool_size(f->pool), s->tile_bytes);
    s->gather = xmallocarray((size_t)pool_size(f->pool) * PK_TILE * C, sizeof(float));
    if (!s->err || !s->amax || !s->res || !s->s || !s->lo || !s->cand || !s->mark || !s->uid ||
        !s->rowp || !s->exact || !s->tile || !s->gather ||
        pk_act_reserve(&s->act, PK_I8, 2 * FWD_TOPK_ROWS, C) < 0) {
        screen_free(s);
        return -1;
    }
    screen_job job = {f, s};
    pool_run(f->pool, bounds_task, &job, s->q.tiles);
    f->scr = s;
    return 0;
}

static void candidates_task(void *arg, int r, int thread)
{
    screen_job *j = arg;
    screen *s = j->s;
    size_t V = j->f->m->cfg.n_vocab;
    s->ncand[r] = tk_candidates(s->s + r * V, s->s + (s->n + r) * V, s->err, s->amax, (int)V,
                                s->P[r], s->Q[r], s->k, s->lo + r * V, s->cand + (size_t)r * s->cap,
                                s->cap);
}

/* Tile t of the candidates' columns: packed from their rows, then the same
 * product (pk_matmul, fp32 inputs) the whole head takes for these rows. */
static void exact_task(void *arg, int t, int thread)
{
    screen_job *j = arg;
    screen *s = j->s;
    int C = j->f->m->cfg.n_embd, c0 = t * PK_TILE, n = s->nu - c0 < PK_TILE ? s->nu - c0 : PK_TILE;
    pmat p;
    pk_pack_rows(&p, s->tile + (size_t)thread * s->tile_bytes, s->rowp + c0, n, C, s->fmt,
                 s->gather + (size_t)thread * PK_TILE * C);
    pk_matmul(&p, s->exact + c0, s->cap_u, j->f->h, C, NULL, s->n, 0, 1, 0, NULL);
}

/* The k best logits of the n rows (1..FWD_TOPK_ROWS, k in 1..FWD_TOPK_MAX)
 * in f->h into vals/ids (n x k, best first), through the screen f->scr: 1,
 * or 0 when a row is not finite or too many columns stay in doubt. */
static int screen_topk(fwd *f, int n, int k, float *vals, int *ids)
{
    screen *s = f->scr;
    const model_cfg *c = &f->m->cfg;
    int C = c->n_embd, V = c->n_vocab;
    if (tk_quantize(&s->act, f->h, n, C, s->res, s->P, s->Q) < 0) return 0;
    gemm(f, &(gemm_job){.out = s->s, .x = f->h, .w = &s->q, .q = &s->act, .R = 2 * n, .I = C,
                        .O = V});
    s->k = k;
    s->n = n;
    screen_job job = {f, s};
    pool_run(f->pool, candidates_task, &job, n);
    for (int r = 0; r < n; r++)
        if (s->ncand[r] < 0) return 0;
    for (int r = 0; r < n; r++)
        for (int i = 0; i < s->ncand[r]; i++) s->mark[s->cand[(size_t)r * s->cap + i]] = 1;
    s->nu = 0;
    for (int v = 0; v < V; v++) {
        if (!s->mark[v]) continue;
        s->mark[v] = 0;
        if (s->nu < s->cap_u) {
            s->uid[s->nu] = v;
            s->rowp[s->nu] = f->m->lm_head + (size_t)v * C;
        }
        s->nu++;
    }
    if (s->nu > s->cap_u || s->nu < k) return 0;
    pool_run(f->pool, exact_task, &job, (s->nu + PK_TILE - 1) / PK_TILE);
    for (int r = 0; r < n; r++)
        tk_best(s->exact + (size_t)r * s->cap_u, s->uid, s->nu, k, vals + (size_t)r * k,
                ids + (size_t)r * k);
    return 1;
}

/* ==== Layer norms ==== */

typedef struct {
    fwd *f;
    const float *g, *b;
    int R, rows, fmt; /* rows per task; fmt: the next product's input form, or -1 */
} norm_job;

static void norm_task(void *arg, int task, int thread)
{
    norm_job *j = arg;
    const model_cfg *c = &j->f->m->cfg;
    int C = c->n_embd, r0 = task * j->rows, r1 = r0 + j->rows < j->R ? r0 + j->rows : j->R;
    for (int r = r0; r < r1; r++)
        mv_layernorm(j->f->h + (size_t)r * C, j->f->x + (size_t)r * C, j->g, j->b, C, c->eps);
    if (j->fmt >= 0) pk_act_quantize(&j->f->act, j->fmt, j->f->h, r0, r1, C, C);
}

/* h = layernorm(x) over R rows (split among the threads for a prompt), put
 * in the form products with `next` read; that form, or NULL for floats. */
static const pk_act *norm(fwd *f, int R, const float *g, const float *b, const pmat *next)
{
    norm_job j = {f, g, b, R, R <= MV_MAX_ROWS ? R : rows_per_task(f, R), act_fmt(f, next, R)};
    if (R <= MV_MAX_ROWS) norm_task(&j, 0, 0); /* a few rows: no sync */
    else pool_run(f->pool, norm_task, &j, (R + j.rows - 1) / j.rows);
    return j.fmt >= 0 ? &f->act : NULL;
}

/* ==== Attention ==== */

typedef struct {
    fwd *f;
    const fwd_row *rows;
    int R, layer;
    float scale;
    const gemm_job *qkv;             /* the head's q, k, v columns to compute first, or NULL */
    int groups;                      /* decode: runs of rows sharing a context */
    int start[FWD_ROWS_MAX], len[FWD_ROWS_MAX];
} attn_job;

/* The keys and values of R rows (from f->qkv) into their caches, heads h0..h1. */
static void store_kv(fwd *f, const fwd_row *rows, int R, int l, int h0, int h1)
{
    int C = f->m->cfg.n_embd, hd = C / f->m->cfg.n_head;
    for (int r = 0; r < R; r++) {
        const fwd_row *row = &rows[r];
        const float *k = f->qkv + (size_t)r * 3 * C + C, *v = k + C;
        size_t at = (size_t)row->own_at * hd * kv_elt(row->own);
        for (int h = h0; h < h1; h++) {
            char *kd = (char *)kv_head(row->own->k, row->own, l, h) + at;
            char *vd = (char *)kv_head(row->own->v, row->own, l, h) + at;
            if (row->own->elt == MV_I8) {
                mv_to_i8((int8_t *)kd, kv_scales(row->own->ks, row->own, l, h) + row->own_at, k + h * hd, hd);
                mv_to_i8((int8_t *)vd, kv_scales(row->own->vs, row->own, l, h) + row->own_at, v + h * hd, hd);
            } else if (row->own->elt == MV_F16) {
                mv_to_half((uint16_t *)kd, k + h * hd, hd);
                mv_to_half((uint16_t *)vd, v + h * hd, hd);
            } else {
                memcpy(kd, k + h * hd, hd * sizeof(float));
                memcpy(vd, v + h * hd, hd * sizeof(float));
            }
        }
    }
}

/* Head h's queries, keys and values of every row (its columns of the qkv
 * product, whole tiles where hd is a multiple of PK_TILE), into f->qkv and,
 * keys and values, the caches. */
static void head_qkv(const attn_job *j, int h, int thread)
{
    int C = j->f->m->cfg.n_embd, hd = C / j->f->m->cfg.n_head;
    if (j->qkv)
        for (int part = 0; part < 3; part++) {
            int t = (part * C + h * hd) / PK_TILE;
            gemm_tiles(j->qkv, t, t + hd / PK_TILE, thread);
        }
    store_kv(j->f, j->rows, j->R, j->layer, h, h + 1);
}

/* One (group of decode rows sharing a context, head): the shared keys and
 * values are read once for the whole group. */
static void attn_rows(const attn_job *j, int g, int h, int thread)
{
    const model_cfg *c = &j->f->m->cfg;
    int C = c->n_embd, hd = C / c->n_head;
    const fwd_row *r0 = &j->rows[j->start[g]];
    mv_attn a = {.R = j->len[g], .hd = hd, .ld = hd, .elt = j->f->kv_elt, .n0 = r0->len0,
                 .scale = j->scale, .s = j->f->scores + (size_t)thread * j->f->score_cap,
                 .w = j->f->wkv ? j->f->wkv + (size_t)thread * j->f->wkv_cap : NULL};
    /* Rows of one cache after no shared context (the last few rows of a
     * prompt): the positions they all see are read once, as if shared. */
    int common = 0;
    if (!r0->len0) {
        common = r0->own_at + 1;
        for (int i = 1; i < a.R && common; i++) {
            const fwd_row *row = &j->rows[j->start[g] + i];
            common = row->own != r0->own ? 0 : row->own_at + 1 < common ? row->own_at + 1 : common;
        }
    }
    if (r0->len0) {
        a.k0 = kv_head(r0->ctx0->k, r0->ctx0, j->layer, h);
        a.v0 = kv_head(r0->ctx0->v, r0->ctx0, j->layer, h);
        a.ks0 = kv_scales(r0->ctx0->ks, r0->ctx0, j->layer, h);
        a.vs0 = kv_scales(r0->ctx0->vs, r0->ctx0, j->layer, h);
    } else if (common) {
        a.k0 = kv_head(r0->own->k, r0->own, j->layer, h);
        a.v0 = kv_head(r0->own->v, r0->own, j->layer, h);
        a.ks0 = kv_scales(r0->own->ks, r0->own, j->layer, h);
        a.vs0 = kv_scales(r0->own->vs, r0->own, j->layer, h);
        a.n0 = common;
    }
    for (int i = 0; i < a.R; i++) {
        int r = j->start[g] + i;
        const fwd_row *row = &j->rows[r];
        size_t skip = (size_t)common * hd * kv_elt(row->own);
        a.q[i] = j->f->qkv + (size_t)r * 3 * C + h * hd;
        a.out[i] = j->f->att + (size_t)r * C + h * hd;
        a.k1[i] = (char *)kv_head(row->own->k, row->own, j->layer, h) + skip;
        a.v1[i] = (char *)kv_head(row->own->v, row->own, j->layer, h) + skip;
        if (row->own->ks) {
            a.ks1[i] = kv_scales(row->own->ks, row->own, j->layer, h) + common;
            a.vs1[i] = kv_scales(row->own->vs, row->own, j->layer, h) + common;
        }
        a.n1[i] = row->own_at + 1 - common;
    }
    mv_attend(&a);
}

static void attn_rows_task(void *arg, int task, int thread)
{
    attn_job *j = arg;
    int H = j->f->m->cfg.n_head;
    attn_rows(j, task / H, task % H, thread);
}

/* Cut decode rows into runs of at most MV_ATTN_ROWS that share a context. */
static void group_rows(attn_job *j)
{
    j->groups = 0;
    for (int r = 0; r < j->R; r++) {
        const fwd_row *a = &j->rows[r];
        int g = j->groups - 1;
        if (g >= 0 && j->len[g] < MV_ATTN_ROWS) {
            const fwd_row *b = &j->rows[j->start[g]];
            if (a->len0 == b->len0 && (a->ctx0 == b->ctx0 || !a->len0)) {
                j->len[g]++;
                continue;
            }
        }
        j->start[j->groups] = r;
        j->len[j->groups++] = 1;
    }
}

/* One head over all rows of a prompt chunk (rows at consecutive positions of
 * one cache): scores and outputs as GEMMs, in blocks of ATT_BLOCK rows, each
 * over the positions its last row sees (causal: what lies above the diagonal
 * is computed only within a block). With bf16 and int8 weights where
 * vdpbf16ps outruns fp32 fmas (att_bf16), the weighted sum of values is a
 * vdpbf16ps product of probabilities and values rounded to bf16. Scores
 * stay fp32: in bf16 they tripled the logits' error where attention is
 * peaked (measured). fp32 products are pk_f32_product's (keys transposed
 * once per head) on AVX-512 and AVX2, whose sums do not depend on the
 * block's size, so a short prompt's rows get a long one's bits; sgemm
 * elsewhere. */
static void attn_block_task(void *arg, int h, int thread)
{
    attn_job *j = arg;
    const model_cfg *c = &j->f->m->cfg;
    const kv_cache *own = j->rows[0].own;
    int C = c->n_embd, hd = C / c->n_head, R = j->R, l = j->layer;
    int N = j->rows[0].own_at + R; /* context length of the last row */
    head_qkv(j, h, thread);
    float *S = j->f->scores + (size_t)thread * j->f->score_cap; /* (ATT_BLOCK, N) */
    /* half and int8 caches: keys, then values, of positions 0..N widened here */
    float *wk = j->f->wkv ? j->f->wkv + (size_t)thread * j->f->wkv_cap : NULL;
    const float *v = NULL;
    uint32_t *vt = NULL, *pb = NULL;
    int pairs = (N + 1) / 2;
    if (j->f->att_bf16) { /* values as one bf16 tile (packed.h), probabilities as bf16 pairs */
        vt = j->f->abf + (size_t)thread * j->f->abf_cap;
        pb = vt + (size_t)pairs * PK_TILE;
        pk_bf16_values(vt, kv_floats(own->v, own->vs, own, l, h, N, wk), N);
    } else {
        v = kv_floats(own->v, own->vs, own, l, h, N, wk ? wk + (size_t)c->n_ctx * hd : NULL);
    }
    /* pk_f32_product (AVX-512, AVX2): keys transposed once, (hd, kt_ld),
     * straight from the cache (mv_keys_t widens as it goes) */
    float *kt = j->f->kt ? j->f->kt + (size_t)thread * hd * j->f->kt_ld : NULL;
    const float *k = NULL;
    if (kt) mv_keys_t(kt, j->f->kt_ld, kv_head(own->k, own, l, h), kv_scales(own->ks, own, l, h), own->elt, N, hd);
    else k = kv_floats(own->k, own->ks, own, l, h, N, wk);
    for (int b0 = 0; b0 < R; b0 += ATT_BLOCK) {
        int m = R - b0 < ATT_BLOCK ? R - b0 : ATT_BLOCK, nb = N - R + b0 + m;
        const float *q = j->f->qkv + (size_t)b0 * 3 * C + h * hd;
        float *Sb = S, *out = j->f->att + (size_t)b0 * C + h * hd; /* a block's scores, reused */
        if (kt)
            pk_f32_product(kt, j->f->kt_ld, hd, q, 3 * C, m, j->scale, Sb, N, nb, 0, NULL);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nb, hd, j->scale, q, 3 * C, k, hd,
                        0, Sb, N);
        for (int r = 0; r < m; r++) { /* row b0 + r sees N - R + b0 + r + 1 positions */
            int n = nb - m + r + 1;
            mv_softmax(Sb + (size_t)r * N, n);
            memset(Sb + (size_t)r * N + n, 0, (size_t)(nb - n) * sizeof *S);
            if (pb) pk_bf16_pairs(pb + (size_t)r * pairs, Sb + (size_t)r * N, nb);
        }
        if (pb) pk_bf16_product(vt, (nb + 1) / 2, pb, pairs, m, out, C, hd, 0);
        else if (kt && hd % PK_TILE == 0) pk_f32_product(v, hd, nb, Sb, N, m, 1.0f, out, C, hd, 0, NULL);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, nb, 1.0f, Sb, N, v, hd, 0, out, C);
    }
}

/* Rows form one prompt chunk: one cache of their own, consecutive positions. */
static int is_block(const fwd_row *rows, int R)
{
    if (R <= MV_MAX_ROWS || rows[0].len0) return 0;
    for (int r = 1; r < R; r++)
        if (rows[r].own != rows[0].own || rows[r].ctx0 != rows[0].ctx0 ||
            rows[r].len0 != rows[0].len0 || rows[r].own_at != rows[0].own_at + r)
            return 0;
    return 1;
}

/* ==== Layers ==== */

static float attn_scale(const model_cfg *c, int l)
{
    float scale = c->scale_attn ? 1.0f / sqrtf((float)(c->n_embd / c->n_head)) : 1.0f;
    return c->scale_inv_layer ? scale / (float)(l + 1) : scale;
}

static void store_task(void *arg, int h, int thread) { head_qkv(arg, h, thread); }

/* Layer l's first norm and its qkv product for R rows (block: they form a
 * prompt chunk, is_block), made ready in *qkv. A prompt whose heads'
 * columns are whole packed tiles: each head's task computes them itself
 * (head_qkv, in the caller's pass over the heads), one pass over the pool
 * instead of two (a 512-token int8 prefill measured about 4% faster;
 * decode rows were not, their product streams best in two halves), and
 * this returns 1. Else the product runs here. The same tiles either way,
 * so the same bits. */
static int qkv_pass(fwd *f, int block, int R, int l, gemm_job *qkv)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd;
    const pk_act *q = norm(f, R, w->ln1_w, w->ln1_b, &f->wp[l].qkv);
    *qkv = (gemm_job){.out = f->qkv, .x = f->h, .w = &f->wp[l].qkv, .q = q, .bias = w->qkv_b,
                      .R = R, .I = C, .O = 3 * C};
    gemm_prepare(f, qkv);
    int fused = block && f->fuse_qkv && (C / c->n_head) % PK_TILE == 0 &&
                (qkv->q || panels() || pk_float_prompts(qkv->w));
    if (!fused) pool_run(f->pool, gemm_task, qkv, (qkv->w->tiles + qkv->tiles - 1) / qkv->tiles);
    return fused;
}

static void attention_block(fwd *f, const fwd_row *rows, int R, int l)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd;
    const layerp *wp = &f->wp[l];
    gemm_job qkv;
    int block = is_block(rows, R), fused = qkv_pass(f, block, R, l, &qkv);
    attn_job job = {.f = f, .rows = rows, .R = R, .layer = l, .scale = attn_scale(c, l),
                    .qkv = fused ? &qkv : NULL};
    if (block) { /* each head's task stores its keys and values */
        pool_run(f->pool, attn_block_task, &job, c->n_head);
    } else { /* decode rows */
        store_kv(f, rows, R, l, 0, c->n_head);
        group_rows(&job);
        pool_run_then(f->pool, attn_rows_task, &job, job.groups * c->n_head,
                      next_spans(f, &wp->attn, R));
    }
    gemm(f, &(gemm_job){.out = f->x, .x = f->att, .w = &wp->attn, .bias = w->attn_b, .R = R,
                        .I = C, .O = C, .accumulate = 1, .next = &wp->fc});
}

static void mlp_block(fwd *f, int R, int l)
{
    const model_cfg *c = &f->m->cfg;
    const layer_weights *w = &f->m->layers[l];
    int C = c->n_embd, I = c->n_inner;
    const layerp *wp = &f->wp[l];
    const pk_act *q = norm(f, R, w->ln2_w, w->ln2_b, &wp->fc);
    gemm(f, &(gemm_job){.out = f->fc, .x = f->h, .w = &wp->fc, .q = q, .bias = w->fc_b, .R = R,
                        .I = C, .O = I, .act = 1, .kind = c->act, .next = &wp->proj});
    gemm(f, &(gemm_job){.out = f->x, .x = f->fc, .w = &wp->proj, .bias = w->proj_b, .R = R,
                        .I = I, .O = C, .accumulate = 1,
                        .next = l + 1 < c->n_layer ? &f->wp[l + 1].qkv : f->scr ? &f->scr->q : &f->wte});
}

/* The last layer where only n_out of the R rows give logits (a prompt's
 * last row; none in the chunks before it): every row's keys and values go
 * to its cache, but attention, its projection and the MLP, which nothing
 * else reads, run on the wanted rows alone, gathered first (out_rows
 * ascending) as decode rows. A 512-token prefill skips 1/12 of its
 * attention and 3/4 of a layer's products. */
static void last_layer(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out)
{
    const model_cfg *c = &f->m->cfg;
    int l = c->n_layer - 1, C = c->n_embd;
    const layer_weights *w = &f->m->layers[l];
    const layerp *wp = &f->wp[l];
    gemm_job qkv;
    int fused = qkv_pass(f, is_block(rows, R), R, l, &qkv);
    attn_job *store = &(attn_job){.f = f, .rows = rows, .R = R, .layer = l, .qkv = fused ? &qkv : NULL};
    pool_run(f->pool, store_task, store, c->n_head);
    if (!n_out) return;
    fwd_row *sel = f->sel;
    for (int i = 0; i < n_out; i++) { /* out_rows[i] >= i: each row moves up, or stays */
        int r = out_rows[i];
        sel[i] = rows[r];
        if (r == i) continue;
        memcpy(f->qkv + (size_t)i * 3 * C, f->qkv + (size_t)r * 3 * C, 3 * C * sizeof(float));
        memcpy(f->x + (size_t)i * C, f->x + (size_t)r * C, C * sizeof(float));
    }
    attn_job job = {.f = f, .rows = sel, .R = n_out, .layer = l, .scale = attn_scale(c, l)};
    group_rows(&job);
    pool_run(f->pool, attn_rows_task, &job, job.groups * c->n_head);
    gemm(f, &(gemm_job){.out = f->x, .x = f->att, .w = &wp->attn, .bias = w->attn_b, .R = n_out,
                        .I = C, .O = C, .accumulate = 1, .next = &wp->fc});
    mlp_block(f, n_out, l);
}

/* Whether the last layer can run on the output rows alone: fewer than all,
 * in ascending order. */
static int prune_last(int R, const int *out_rows, int n_out)
{
    if (n_out >= R) return 0;
    for (int i = 1; i < n_out; i++)
        if (out_rows[i] <= out_rows[i - 1]) return 0;
    return 1;
}

static int check_rows(const model_cfg *c, int elt, const fwd_row *rows, int R, char *err)
{
    for (int r = 0; r < R; r++) {
        const fwd_row *w = &rows[r];
        if (w->token < 0 || w->token >= c->n_vocab)
            return errf(err, "token id %d is outside the vocabulary (0..%d)", w->token,
                        c->n_vocab - 1);
        if (w->len0 < 0 || (w->len0 && (!w->ctx0 || w->len0 > w->ctx0->cap)) ||
            !w->own || w->own_at < 0 || w->own_at >= w->own->cap)
            return errf(err, "internal error: row %d does not fit its cache", r);
        if (w->own->elt != elt || (w->len0 && w->ctx0->elt != elt))
            return errf(err, "internal error: row %d's cache is of another element type", r);
        if (w->len0 + w->own_at >= c->n_ctx)
            return errf(err, "position %d is past the model's window of %d tokens",
                        w->len0 + w->own_at, c->n_ctx);
    }
    return 0;
}

/* The passes over rows[0..R), then ln_f of the output rows into f->h. */
static int run_rows(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out, char *err)
{
    const model *m = f->m;
    const model_cfg *c = &m->cfg;
    int C = c->n_embd;
    if (R < 1 || R > FWD_ROWS_MAX) return errf(err, "internal error: %d rows in one pass", R);
    if (check_rows(c, f->kv_elt, rows, R, err) < 0) return -1;
    for (int i = 0; i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= R) return errf(err, "internal error: logit row");
    if (reserve(f, R) < 0) return errf(err, "out of memory for %d rows of activations", R);
    for (int r = 0; r < R; r++) {
        const float *te = m->wte + (size_t)rows[r].token * C;
        const float *pe = m->wpe + (size_t)(rows[r].len0 + rows[r].own_at) * C;
        for (int i = 0; i < C; i++) f->x[(size_t)r * C + i] = te[i] + pe[i];
    }
    int prune = prune_last(R, out_rows, n_out);
    for (int l = 0; l < c->n_layer - prune; l++) {
        attention_block(f, rows, R, l);
        mlp_block(f, R, l);
    }
    if (prune) last_layer(f, rows, R, out_rows, n_out); /* output row i now at row i */
    for (int i = 0; i < n_out; i++)
        mv_layernorm(f->h + (size_t)i * C, f->x + (size_t)(prune ? i : out_rows[i]) * C, m->lnf_w,
                     m->lnf_b, C, c->eps);
    return 0;
}

/* Every logit of the n output rows. */
static void head(fwd *f, int n, float *logits)
{
    const model_cfg *c = &f->m->cfg;
    if (n) gemm(f, &(gemm_job){.out = logits, .x = f->h, .w = &f->wte, .R = n, .I = c->n_embd,
                               .O = c->n_vocab});
}

int fwd_run(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out,
            float *logits, char *err)
{
    if (run_rows(f, rows, R, out_rows, n_out, err) < 0) return -1;
    head(f, n_out, logits);
    return 0;
}

int fwd_run_topk(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out, int k,
                 float *logits, float *vals, int *ids, char *err)
{
    if (run_rows(f, rows, R, out_rows, n_out, err) < 0) return -1;
    screen *s = f->scr;
    if (n_out && s && n_out <= FWD_TOPK_ROWS && k >= 1 && k <= FWD_TOPK_MAX) {
        /* a screen that keeps failing (its bounds too wide for these
         * weights) costs its 38.6 MB pass for nothing: after m failures in
         * a row it rests for 2^m - 1 calls (at most 63) */
        if (s->skip) {
            s->skip--;
        } else if (screen_topk(f, n_out, k, vals, ids)) {
            s->misses = 0;
            atomic_fetch_add_explicit(&f->screened, (unsigned long)n_out, memory_order_relaxed);
            return k;
        } else {
            s->misses += s->misses < 6;
            s->skip = (1 << s->misses) - 1;
        }
        atomic_fetch_add_explicit(&f->fallback, (unsigned long)n_out, memory_order_relaxed);
    }
    head(f, n_out, logits);
    return 0;
}

void fwd_topk_stats(const fwd *f, unsigned long *screened, unsigned long *fallback)
{
    *screened = atomic_load_explicit(&f->screened, memory_order_relaxed);
    *fallback = atomic_load_explicit(&f->fallback, memory_order_relaxed);
}

static const char *const fmt_names[] = {"fp32", "bf16", "int8", "int4"};

const char *fwd_fmt_name(int fmt)
{
    return fmt >= 0 && fmt < (int)(sizeof fmt_names / sizeof *fmt_names) ? fmt_names[fmt] : "?";
}

int fwd_fmt_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof fmt_names / sizeof *fmt_names); i++)
        if (!strcmp(name, fmt_names[i])) return i;
    return -1;
}

const char *fwd_kv_name(const fwd *f)
{
    return f->kv_elt == MV_I8 ? "int8" : f->kv_elt == MV_F16 ? "fp16" : "fp32";
}

const char *fwd_kernels(const fwd *f)
{
    if (f->fmt == FWD_BF16 && !f->bf16_dp && !pk_force_generic && pk_f32_prompts())
        return "avx512"; /* bf16 prompts on fp32 panels: vdpbf16ps is the slower here */
    return pk_kernels(f->fmt); /* FWD_* are the PK_* formats */
}

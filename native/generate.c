/* generate.c - prefill + batched decode of n continuations (see generate.h). */
#include "generate.h"

#include <stdlib.h>
#include <string.h>

engine *engine_new(model *m, int threads, char *err)
{
    engine *e = xcalloc(1, sizeof *e);
    if (!e) {
        errf(err, "out of memory");
        return NULL;
    }
    e->m = m;
    e->pool = pool_new(threads > 0 ? threads : pool_cpu_count());
    e->sampler = sampler_new(m->cfg.n_vocab);
    if (!e->pool || !e->sampler) {
        errf(err, "out of memory");
        goto fail;
    }
    if (!(e->fwd = fwd_new(m, e->pool, err))) goto fail;
    return e;
fail:
    engine_free(e);
    return NULL;
}

void engine_free(engine *e)
{
    if (!e) return;
    fwd_free(e->fwd);
    sampler_free(e->sampler);
    pool_free(e->pool);
    free(e);
}

const char *gen_finish_name(gen_finish f)
{
    return f == FINISH_EOS ? "eos" : f == FINISH_STOP ? "stop" : "length";
}

/* Prefill tokens[0..T) into kv and put the last position's logits in out. */
static int prefill(engine *e, kv_cache *kv, const int *tokens, int T, float *out, char *err)
{
    fwd_row *rows = xcalloc(T, sizeof *rows);
    if (!rows) return errf(err, "out of memory");
    for (int t = 0; t < T; t++) rows[t] = (fwd_row){.token = tokens[t], .own = kv, .own_at = t};
    int last = T - 1, rc = fwd_run(e->fwd, rows, T, &last, 1, out, err);
    free(rows);
    return rc;
}

int gen_logits(engine *e, const int *tokens, int T, float *out, char *err)
{
    if (T < 1) return errf(err, "no tokens");
    if (T > e->m->cfg.n_ctx)
        return errf(err, "%d tokens exceed the model's window of %d", T, e->m->cfg.n_ctx);
    kv_cache *kv = kv_new(&e->m->cfg, T);
    if (!kv) return errf(err, "out of memory for the KV cache of %d tokens", T);
    int rc = prefill(e, kv, tokens, T, out, err);
    kv_free(kv);
    return rc;
}

/* Per-continuation decoding state. */
typedef struct {
    rng_t rng;
    kv_cache *kv;
    int active;
    buf_t text;
} seq_state;

/* Take token `tok` for sequence i; update its text and finish state. */
static int accept_token(engine *e, const gen_params *p, gen_result *res, seq_state *s, int i,
                        int tok)
{
    if (tok == e->m->cfg.eos) {
        res->finish[i] = FINISH_EOS;
        s->active = 0;
        return 0;
    }
    res->ids[i][res->n_ids[i]++] = tok;
    s->text.len = 0;
    if (tok_decode(e->m->tok, res->ids[i], res->n_ids[i], 0, &s->text) < 0) return -1;
    long cut = stop_cut(s->text.p ? s->text.p : "", s->text.len, p->stop);
    if (cut >= 0) {
        s->text.len = (size_t)cut;
        res->finish[i] = FINISH_STOP;
        s->active = 0;
    } else if (res->n_ids[i] == p->max_tokens) {
        res->finish[i] = FINISH_LENGTH;
        s->active = 0;
    }
    return 0;
}

/* One batched step over the active sequences. */
static int decode_step(engine *e, const gen_params *p, gen_result *res, seq_state *seq,
                       kv_cache *prefix, int T, float *logits, char *err)
{
    fwd_row rows[GEN_MAX_N];
    int which[GEN_MAX_N], out[GEN_MAX_N], B = 0;
    for (int i = 0; i < p->n; i++) {
        if (!seq[i].active) continue;
        rows[B] = (fwd_row){.token = res->ids[i][res->n_ids[i] - 1], .ctx0 = prefix,
                            .len0 = T, .own = seq[i].kv, .own_at = res->n_ids[i] - 1};
        out[B] = B;
        which[B++] = i;
    }
    if (fwd_run(e->fwd, rows, B, out, B, logits, err) < 0) return -1;
    res->steps++;
    size_t V = e->m->cfg.n_vocab;
    for (int b = 0; b < B; b++) {
        int i = which[b], tok = sample_token(e->sampler, logits + b * V, &p->sp, &seq[i].rng);
        if (accept_token(e, p, res, &seq[i], i, tok) < 0) return errf(err, "out of memory");
    }
    return 0;
}

static int finish_texts(gen_result *res, seq_state *seq, const model *m)
{
    for (int i = 0; i < res->n; i++) {
        buf_t out = {0};
        if (res->finish[i] == FINISH_STOP) { /* already cut, complete characters */
            if (utf8_sanitize(&out, seq[i].text.p ? seq[i].text.p : "", seq[i].text.len) < 0)
                return -1;
        } else if (tok_decode(m->tok, res->ids[i], res->n_ids[i], 1, &out) < 0) {
            return -1;
        }
        if (buf_append(&out, "", 1) < 0) return -1;
        res->text[i] = out.p;
    }
    return 0;
}

int gen_complete(engine *e, const int *prompt, int T, const gen_params *p, gen_result *res,
                 char *err)
{
    const model_cfg *c = &e->m->cfg;
    memset(res, 0, sizeof *res);
    if (p->n < 1 || p->n > GEN_MAX_N) return errf(err, "n must be in 1..%d", GEN_MAX_N);
    if (p->max_tokens < 1 || p->max_tokens > GEN_MAX_TOKENS)
        return errf(err, "max_tokens must be in 1..%d", GEN_MAX_TOKENS);
    if (T < 1 || T + p->max_tokens > c->n_ctx)
        return errf(err, "%d prompt tokens + %d new tokens do not fit the window of %d", T,
                    p->max_tokens, c->n_ctx);
    res->n = p->n;
    res->prompt_tokens = T;
    seq_state seq[GEN_MAX_N] = {0};
    float *logits = xmallocarray((size_t)p->n * c->n_vocab, sizeof(float));
    kv_cache *prefix = kv_new(c, T);
    int rc = -1;
    if (!logits || !prefix) {
        errf(err, "out of memory");
        goto out;
    }
    for (int i = 0; i < p->n; i++) {
        rng_seed(&seq[i].rng, p->seed, (uint64_t)i);
        seq[i].active = 1;
        seq[i].kv = kv_new(c, p->max_tokens);
        res->ids[i] = xmallocarray(p->max_tokens, sizeof(int));
        if (!seq[i].kv || !res->ids[i]) {
            errf(err, "out of memory");
            goto out;
        }
    }
    double t0 = now_ms();
    if (prefill(e, prefix, prompt, T, logits, err) < 0) goto out;
    for (int i = 0; i < p->n; i++) /* the first token of each comes from the prompt */
        if (accept_token(e, p, res, &seq[i], i, sample_token(e->sampler, logits, &p->sp,
                                                            &seq[i].rng)) < 0) {
            errf(err, "out of memory");
            goto out;
        }
    double t1 = now_ms();
    res->prefill_ms = t1 - t0;
    for (;;) {
        int any = 0;
        for (int i = 0; i < p->n; i++) any |= seq[i].active;
        if (!any) break;
        if (decode_step(e, p, res, seq, prefix, T, logits, err) < 0) goto out;
    }
    res->decode_ms = now_ms() - t1;
    if (finish_texts(res, seq, e->m) < 0) {
        errf(err, "out of memory");
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < p->n; i++) {
        kv_free(seq[i].kv);
        buf_free(&seq[i].text);
    }
    kv_free(prefix);
    free(logits);
    if (rc < 0) gen_result_free(res);
    return rc;
}

void gen_result_free(gen_result *res)
{
    for (int i = 0; i < GEN_MAX_N; i++) {
        free(res->text[i]);
        free(res->ids[i]);
        res->text[i] = NULL;
        res->ids[i] = NULL;
    }
}

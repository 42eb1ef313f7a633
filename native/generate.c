/* generate.c - prefill + batched decode of n continuations (see generate.h). */
#include "generate.h"

#include <stdlib.h>
#include <string.h>

engine *engine_new(model *m, int threads, const device_opts *o, char *err)
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
    device_opts cpu = {.choice = DEVICE_CPU};
    if (!(e->dev = device_new(m, e->pool, o ? o : &cpu, err))) goto fail;
    model_release_matrices(m); /* the device holds its own copies now */
    return e;
fail:
    engine_free(e);
    return NULL;
}

void engine_free(engine *e)
{
    if (!e) return;
    device_free(e->dev);
    sampler_free(e->sampler);
    pool_free(e->pool);
    free(e->logits);
    free(e);
}

/* Room for `rows` rows of logits. */
static float *logits_for(engine *e, int rows)
{
    if (rows > e->rows_cap) {
        float *p = xmallocarray((size_t)rows * e->m->cfg.n_vocab, sizeof(float));
        if (!p) return NULL;
        free(e->logits);
        e->logits = p;
        e->rows_cap = rows;
    }
    return e->logits;
}

static int topk_hint(gen_task *const *tasks, int n);

const char *gen_finish_name(gen_finish f)
{
    return f == FINISH_EOS ? "eos" : f == FINISH_STOP ? "stop" : "length";
}

int gen_check(const model *m, const gen_params *p, int T, char *err)
{
    if (p->n < 1 || p->n > GEN_MAX_N) return errf(err, "n must be in 1..%d", GEN_MAX_N);
    if (p->max_tokens < 1 || p->max_tokens > GEN_MAX_TOKENS)
        return errf(err, "max_tokens must be in 1..%d", GEN_MAX_TOKENS);
    if (T < 1 || T + p->max_tokens > m->cfg.n_ctx)
        return errf(err, "%d prompt tokens + %d new tokens do not fit the window of %d", T,
                    p->max_tokens, m->cfg.n_ctx);
    return 0;
}

/* Prefill tokens[from..T) into kv (positions before `from` already there);
 * the last position's logits go to out (unless out is NULL). */
static int prefill(engine *e, kv_cache *kv, const int *tokens, int from, int T, float *out,
                   int topk, char *err)
{
    int R = T - from;
    fwd_row *rows = xcalloc(R, sizeof *rows);
    if (!rows) return errf(err, "out of memory");
    for (int t = 0; t < R; t++)
        rows[t] = (fwd_row){.token = tokens[from + t], .own = kv, .own_at = from + t};
    int last = R - 1, rc = device_run(e->dev, rows, R, &last, out ? 1 : 0, out, topk, err);
    free(rows);
    return rc;
}

int gen_logits(engine *e, const int *tokens, int T, int all, float *out, char *err)
{
    if (T < 1) return errf(err, "no tokens");
    if (T > e->m->cfg.n_ctx)
        return errf(err, "%d tokens exceed the model's window of %d", T, e->m->cfg.n_ctx);
    kv_cache *kv = device_kv_new(e->dev, T, err);
    if (!kv) return -1;
    fwd_row rows[GEN_PREFILL_CHUNK];
    int idx[GEN_PREFILL_CHUNK], rc = 0;
    size_t V = e->m->cfg.n_vocab;
    for (int from = 0; rc == 0 && from < T; from += GEN_PREFILL_CHUNK) {
        int R = T - from > GEN_PREFILL_CHUNK ? GEN_PREFILL_CHUNK : T - from;
        for (int t = 0; t < R; t++) {
            rows[t] = (fwd_row){.token = tokens[from + t], .own = kv, .own_at = from + t};
            idx[t] = t;
        }
        int last = from + R == T;
        if (all) rc = device_run(e->dev, rows, R, idx, R, out + (size_t)from * V, 0, err);
        else rc = device_run(e->dev, rows, R, &idx[R - 1], last, out, 0, err);
    }
    device_kv_free(e->dev, kv);
    return rc;
}

/* Take token `tok` for sequence i; update its text and finish state. */
static int accept_token(engine *e, gen_task *t, int i, int tok)
{
    gen_seq *s = &t->seq[i];
    gen_result *res = &t->res;
    if (tok == e->m->cfg.eos) {
        res->finish[i] = FINISH_EOS;
        s->active = 0;
        return 0;
    }
    res->ids[i][res->n_ids[i]++] = tok;
    s->text.len = 0;
    if (tok_decode(e->m->tok, res->ids[i], res->n_ids[i], 0, &s->text) < 0) return -1;
    long cut = stop_cut(s->text.p ? s->text.p : "", s->text.len, t->p.stop);
    if (cut >= 0) {
        s->text.len = (size_t)cut;
        res->finish[i] = FINISH_STOP;
        s->active = 0;
    } else if (res->n_ids[i] == t->p.max_tokens) {
        res->finish[i] = FINISH_LENGTH;
        s->active = 0;
    }
    return 0;
}

int gen_task_start(engine *e, gen_task *t, char *err)
{
    gen_result *res = &t->res;
    memset(res, 0, sizeof *res);
    memset(t->seq, 0, sizeof t->seq);
    if (gen_check(e->m, &t->p, t->T, err) < 0) return -1;
    if (t->cached < 0 || t->cached >= t->T || t->prefix->cap < t->T)
        return errf(err, "internal error: prefix cache does not fit the prompt");
    res->n = t->p.n;
    res->prompt_tokens = t->T;
    res->cached_tokens = t->cached;
    for (int i = 0; i < t->p.n; i++) {
        rng_seed(&t->seq[i].rng, t->p.seed, (uint64_t)i);
        t->seq[i].active = 1;
        if (!(t->seq[i].kv = device_kv_new(e->dev, t->p.max_tokens, err))) return -1;
        t->seq[i].dev = e->dev;
        if (!(res->ids[i] = xmallocarray(t->p.max_tokens, sizeof(int))))
            return errf(err, "out of memory");
    }
    float *logits = logits_for(e, 1);
    if (!logits) return errf(err, "out of memory");
    double t0 = now_ms();
    while (t->T - t->cached > GEN_PREFILL_CHUNK) { /* no logits needed before the end */
        int to = t->cached + GEN_PREFILL_CHUNK;
        if (prefill(e, t->prefix, t->prompt, t->cached, to, NULL, 0, err) < 0) return -1;
        t->cached = to;
        if (t->stop_fn && t->stop_fn(t->stop_ud)) return 1;
    }
    if (prefill(e, t->prefix, t->prompt, t->cached, t->T, logits, topk_hint(&t, 1), err) < 0)
        return -1;
    for (int i = 0; i < t->p.n; i++) /* each one's first token comes from the prompt */
        if (accept_token(e, t, i, sample_token(e->sampler, logits, &t->p.sp, &t->seq[i].rng)))
            return errf(err, "out of memory");
    res->prefill_ms = now_ms() - t0;
    return 0;
}

int gen_task_active(const gen_task *t)
{
    int n = 0;
    for (int i = 0; i < t->p.n; i++) n += t->seq[i].active;
    return n;
}

/* How many of the best logits the sampling of these tasks can look at:
 * top_k (1 when greedy), or 0 when it may need them all. */
static int topk_hint(gen_task *const *tasks, int n)
{
    int k = 1;
    for (int i = 0; i < n; i++) {
        const sample_params *sp = &tasks[i]->p.sp;
        int want = sp->temperature <= 0 || sp->top_k == 1 ? 1 : sp->top_k;
        if (want <= 0) return 0;
        if (want > k) k = want;
    }
    return k;
}

/* One forward pass for the active sequences of tasks[0..n), R rows. */
static int step_group(engine *e, gen_task **tasks, int n, int R, char *err)
{
    fwd_row *rows = xcalloc(R, sizeof *rows);
    int *out = xcalloc(R, sizeof *out);
    float *logits = logits_for(e, R);
    int rc = -1, r = 0;
    if (!rows || !out || !logits) {
        errf(err, "out of memory for a batch of %d", R);
        goto done;
    }
    for (int k = 0; k < n; k++)
        for (int i = 0; i < tasks[k]->p.n; i++) {
            gen_task *t = tasks[k];
            if (!t->seq[i].active) continue;
            int g = t->res.n_ids[i]; /* tokens generated; the last is not fed yet */
            rows[r] = (fwd_row){.token = t->res.ids[i][g - 1], .ctx0 = t->prefix, .len0 = t->T,
                                .own = t->seq[i].kv, .own_at = g - 1};
            out[r] = r;
            r++;
        }
    double t0 = now_ms();
    const float *cand_val = NULL;
    const int *cand_id = NULL;
    int nc = device_run_topk(e->dev, rows, R, out, R, topk_hint(tasks, n), logits, &cand_val,
                             &cand_id, err);
    if (nc < 0) goto done;
    size_t V = e->m->cfg.n_vocab;
    r = 0;
    for (int k = 0; k < n; k++) {
        gen_task *t = tasks[k];
        int took = 0;
        for (int i = 0; i < t->p.n; i++) {
            if (!t->seq[i].active) continue;
            int tok = nc ? sample_candidates(e->sampler, cand_val + r * nc, cand_id + r * nc, nc,
                                             &t->p.sp, &t->seq[i].rng)
                        : sample_token(e->sampler, logits + r * V, &t->p.sp, &t->seq[i].rng);
            r++;
            if (accept_token(e, t, i, tok) < 0) {
                errf(err, "out of memory");
                goto done;
            }
            took = 1;
        }
        t->res.steps += took;
    }
    double dt = now_ms() - t0;
    for (int k = 0; k < n; k++) tasks[k]->res.decode_ms += dt;
    rc = 0;
done:
    free(rows);
    free(out);
    return rc;
}

int gen_step(engine *e, gen_task **tasks, int n, char *err)
{
    /* tasks in order, in groups of at most GEN_ROWS_MAX rows per pass */
    for (int k0 = 0; k0 < n;) {
        int R = 0, k = k0;
        while (k < n && R + gen_task_active(tasks[k]) <= GEN_ROWS_MAX) R += gen_task_active(tasks[k++]);
        if (k == k0) return errf(err, "internal error: a task wider than a batch");
        if (R && step_group(e, tasks + k0, k - k0, R, err) < 0) return -1;
        k0 = k;
    }
    return 0;
}

const char *gen_task_text(const gen_task *t, int i, size_t *len)
{
    *len = t->seq[i].text.len;
    return t->seq[i].text.p ? t->seq[i].text.p : "";
}

int gen_task_finish(engine *e, gen_task *t)
{
    gen_result *res = &t->res;
    for (int i = 0; i < res->n; i++) {
        buf_t out = {0};
        if (res->finish[i] == FINISH_STOP) { /* already cut at complete characters */
            size_t len;
            const char *s = gen_task_text(t, i, &len);
            if (buf_append(&out, s, len) < 0) return -1;
        } else if (tok_decode(e->m->tok, res->ids[i], res->n_ids[i], 1, &out) < 0) {
            return -1;
        }
        if (buf_append(&out, "", 1) < 0) {
            buf_free(&out);
            return -1;
        }
        free(res->text[i]);
        res->text[i] = out.p;
    }
    return 0;
}

void gen_task_free(gen_task *t, int free_result)
{
    for (int i = 0; i < GEN_MAX_N; i++) {
        if (t->seq[i].kv) device_kv_free(t->seq[i].dev, t->seq[i].kv);
        buf_free(&t->seq[i].text);
        t->seq[i].kv = NULL;
    }
    if (free_result) gen_result_free(&t->res);
}

int gen_complete(engine *e, const int *prompt, int T, const gen_params *p, gen_result *res,
                 char *err)
{
    memset(res, 0, sizeof *res);
    if (gen_check(e->m, p, T, err) < 0) return -1;
    kv_cache *prefix = device_kv_new(e->dev, T, err);
    if (!prefix) return -1;
    gen_task t = {.p = *p, .prompt = prompt, .T = T, .prefix = prefix};
    gen_task *one = &t;
    int rc = gen_task_start(e, &t, err);
    while (rc == 0 && gen_task_active(&t)) rc = gen_step(e, &one, 1, err);
    if (rc == 0 && gen_task_finish(e, &t) < 0) rc = errf(err, "out of memory");
    gen_task_free(&t, rc < 0);
    device_kv_free(e->dev, prefix);
    if (rc == 0) *res = t.res;
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

/* sched.c - the inference thread (see sched.h).
 *
 * Locking: `mu` guards the pending queue, the registry of live requests
 * (pending or active, so the loop thread can cancel them), the counters, the
 * LRU and the model table's public fields. Everything else (engines, prefix
 * caches, active tasks) belongs to the scheduler thread alone. Cancellation
 * is an atomic flag on the request, checked before every step.
 */
#define _GNU_SOURCE
#include "sched.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIVE 4096
#define ACTIVE_MAX 8 /* requests decoding at once: bounds their KV memory */

typedef struct {
    char *dir, *name;
    model *m;
    engine *e;
    double load_ms;
    char error[ERR_MAX];
    int threads_seen;  /* its pool's threads at the last step (logged when that changes) */
} model_slot;

/* The keys/values of one client's last context. */
typedef struct {
    int used, busy, model;
    int has_key;
    int64_t key;
    int *tokens, n_tokens;
    kv_cache *kv;            /* n_ctx positions */
    uint64_t last_use;
} cache_slot;

typedef struct {
    char *key;
    size_t key_len;
    completion c;
    uint64_t last_use;
} lru_entry;

typedef struct active {
    request *r;
    gen_task task;
    int *tokens;             /* the whole tokenized text */
    int truncated;           /* tokens dropped from the left */
    cache_slot *slot;        /* NULL: private cache */
    kv_cache *private_kv;
    double t_start;
    int since_partial;
    struct active *next;
} active;

typedef struct {
    uint64_t requests, completed, cancelled, superseded, errors, busy, lru_hits;
    uint64_t prompt_tokens, cached_tokens, generated_tokens;
    double decode_ms;
} counters;

struct sched {
    sched_opts o;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    request *pending, *pending_tail;
    int n_pending;
    request *live[MAX_LIVE];
    int n_live;
    counters cnt;
    lru_entry *lru;
    uint64_t tick;
    model_slot *models;
    double t0;
    /* scheduler thread only */
    active *act;
    cache_slot *caches;
    size_t kv_bytes;
};

/* ==== Helpers ==== */

void request_free(request *r)
{
    if (!r) return;
    free(r->text);
    free(r);
}

static void emit(sched *s, char *data, size_t len)
{
    if (data) s->o.emit(s->o.emit_ud, data, len);
}

static void unregister(sched *s, request *r)
{
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_live; i++)
        if (s->live[i] == r) {
            s->live[i] = s->live[--s->n_live];
            break;
        }
    pthread_mutex_unlock(&s->mu);
}

/* Reply an error to r and count it (scheduler thread). */
static void answer_error(sched *s, request *r, const char *msg)
{
    size_t len;
    int why = atomic_load(&r->cancel);
    char *out = reply_error(&r->to, msg, &len);
    /* counters first: a `status` sent after the reply must see them */
    pthread_mutex_lock(&s->mu);
    if (why == CANCEL_SUPERSEDED) s->cnt.superseded++;
    else if (why != CANCEL_NONE) s->cnt.cancelled++;
    else s->cnt.errors++;
    pthread_mutex_unlock(&s->mu);
    unregister(s, r);
    emit(s, out, len);
}

/* A request that never became active: answer and drop it. */
static void reject(sched *s, request *r, const char *msg)
{
    answer_error(s, r, msg);
    unregister(s, r);
    request_free(r);
}

static const char *cancel_message(const request *r)
{
    switch (atomic_load(&r->cancel)) {
    case CANCEL_SUPERSEDED: return "cancelled: superseded by a newer request from the same buffer";
    case CANCEL_SHUTDOWN: return "cancelled: the helper is shutting down";
    default: return "cancelled: by the client";
    }
}

/* ==== Models ==== */

static model_slot *get_model(sched *s, int i, char *err)
{
    model_slot *ms = &s->models[i];
    if (ms->e) return ms;
    double t0 = now_ms();
    log_info("loading model %s from %s", ms->name, ms->dir);
    model *m = model_load(ms->dir, err);
    engine *e = m ? engine_new(m, s->o.threads, &s->o.device, err) : NULL;
    pthread_mutex_lock(&s->mu);
    if (e) {
        ms->m = m;
        ms->e = e;
        ms->load_ms = now_ms() - t0;
        ms->error[0] = 0;
    } else {
        snprintf(ms->error, sizeof ms->error, "%s", err);
    }
    pthread_mutex_unlock(&s->mu);
    if (!e) {
        model_free(m);
        log_error("%s", err);
        return NULL;
    }
    log_info("model %s ready in %.0f ms", ms->name, ms->load_ms);
    return ms;
}

/* ==== Prefix caches ==== */


/* The cache for r's key and model, or NULL (then the request uses a private
 * one): busy slots are never shared, the least recently used idle slot is
 * recycled. */
static cache_slot *get_cache(sched *s, const request *r, engine *e)
{
    const model *m = e->m;
    char err[ERR_MAX];
    cache_slot *best = NULL;
    for (int i = 0; i < s->o.cache_slots; i++) {
        cache_slot *c = &s->caches[i];
        if (c->used && c->model == r->model && c->has_key == r->has_buffer &&
            (!c->has_key || c->key == r->buffer))
            return c->busy ? NULL : c;
        if (!c->busy && (!best || !c->used || (best->used && c->last_use < best->last_use)))
            best = c;
    }
    if (!best) return NULL;
    if (!best->kv || best->model != r->model) {
        size_t freed = best->kv ? device_kv_bytes(best->kv) : 0;
        if (best->kv) device_kv_free(s->models[best->model].e->dev, best->kv);
        best->kv = device_kv_new(e->dev, m->cfg.n_ctx, err);
        pthread_mutex_lock(&s->mu); /* status reads kv_bytes */
        s->kv_bytes += (best->kv ? device_kv_bytes(best->kv) : 0) - freed;
        pthread_mutex_unlock(&s->mu);
        if (!best->kv) {
            log_warn("no prefix cache: %s", err);
            best->used = 0;
            return NULL;
        }
    }
    best->used = 1;
    best->model = r->model;
    best->has_key = r->has_buffer;
    best->key = r->buffer;
    best->n_tokens = 0;
    return best;
}

static int common_prefix(const int *a, int na, const int *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Tokens to drop from the left so that T - D <= window. D moves in steps of
 * half a window and then forward to the start of a line, so it stays put
 * while the user types and the prefix cache stays valid. */
static int window_cut(const model *m, const int *tok, int T, int window)
{
    if (T <= window) return 0;
    int step = window / 2 > 0 ? window / 2 : 1;
    int D = (T - window + step - 1) / step * step;
    for (int j = D; j < T - 1 && j < D + step / 2; j++) {
        int len;
        const char *p = tok_piece(m->tok, tok[j - 1], &len);
        if (p && len && p[len - 1] == '\n') return j;
    }
    return D;
}

/* ==== The LRU of identical requests ==== */

/* Key: model, every sampling parameter, then the text. */
static char *lru_key(const request *r, size_t *len)
{
    char head[160];
    int n = snprintf(head, sizeof head, "%d|%d|%d|%.9g|%d|%.9g|%llu|%d|", r->model, r->p.n,
                     r->p.max_tokens, r->p.sp.temperature, r->p.sp.top_k, r->p.sp.top_p,
                     (unsigned long long)r->p.seed, (int)r->p.stop);
    char *k = malloc(n + r->text_len);
    if (!k) return NULL;
    memcpy(k, head, n);
    memcpy(k + n, r->text, r->text_len);
    *len = n + r->text_len;
    return k;
}

static void lru_clear(lru_entry *e)
{
    free(e->key);
    for (int i = 0; i < e->c.n; i++) free(e->c.text[i]);
    memset(e, 0, sizeof *e);
}

/* Remember c for r (scheduler thread). */
static void lru_put(sched *s, const request *r, const completion *c)
{
    if (s->o.lru_size <= 0) return;
    lru_entry n = {0};
    n.key = lru_key(r, &n.key_len);
    n.c = *c;
    int ok = n.key != NULL;
    for (int i = 0; i < c->n; i++) ok &= (n.c.text[i] = strdup(c->text[i])) != NULL;
    if (!ok) {
        n.c.n = 0; /* free only what was copied */
        for (int i = 0; i < c->n; i++) free(n.c.text[i]);
        free(n.key);
        return;
    }
    pthread_mutex_lock(&s->mu);
    lru_entry *victim = &s->lru[0];
    for (int i = 0; i < s->o.lru_size; i++)
        if (!s->lru[i].key || s->lru[i].last_use < victim->last_use) victim = &s->lru[i];
    lru_clear(victim);
    *victim = n;
    victim->last_use = ++s->tick;
    pthread_mutex_unlock(&s->mu);
}

/* Answer r from the LRU if it can (loop thread). 1 = answered. */
static int lru_answer(sched *s, const request *r)
{
    if (!r->seed_given || s->o.lru_size <= 0) return 0;
    size_t klen;
    char *key = lru_key(r, &klen);
    if (!key) return 0;
    char *msg = NULL;
    size_t len = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->o.lru_size; i++) {
        lru_entry *e = &s->lru[i];
        if (e->key && e->key_len == klen && !memcmp(e->key, key, klen)) {
            e->last_use = ++s->tick;
            completion c = e->c;
            c.from_lru = 1;
            c.queue_ms = c.prefill_ms = c.decode_ms = 0;
            c.cached_tokens = c.prompt_tokens;
            c.total_ms = now_ms() - r->t_arrive;
            msg = reply_completion(&r->to, &c, &len);
            s->cnt.lru_hits++;
            s->cnt.requests++;
            s->cnt.completed++;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    free(key);
    if (msg) emit(s, msg, len);
    return msg != NULL;
}

/* ==== Starting and finishing ==== */

/* Drop an active request's state and the request itself. */
static void retire(sched *s, active *a)
{
    if (a->slot) a->slot->busy = 0;
    gen_task_free(&a->task, 1);
    if (a->private_kv) device_kv_free(s->models[a->r->model].e->dev, a->private_kv);
    free(a->tokens);
    unregister(s, a->r);
    request_free(a->r);
    free(a);
}

static void finish(sched *s, active *a)
{
    engine *e = s->models[a->r->model].e;
    gen_task *t = &a->task;
    if (gen_task_finish(e, t) < 0) {
        answer_error(s, a->r, "out of memory");
        return retire(s, a);
    }
    completion c = {.n = t->res.n, .model = s->models[a->r->model].name,
                    .device = device_name(e->dev),
                    .queue_ms = a->t_start - a->r->t_arrive, .prefill_ms = t->res.prefill_ms,
                    .decode_ms = t->res.decode_ms, .total_ms = now_ms() - a->r->t_arrive,
                    .prompt_tokens = t->T, .cached_tokens = t->res.cached_tokens,
                    .truncated_tokens = a->truncated, .seed = t->p.seed};
    for (int i = 0; i < c.n; i++) {
        c.text[i] = t->res.text[i];
        c.finish[i] = t->res.finish[i];
        c.generated_tokens += t->res.n_ids[i];
    }
    size_t len;
    char *out = reply_completion(&a->r->to, &c, &len);
    if (a->r->seed_given) lru_put(s, a->r, &c);
    pthread_mutex_lock(&s->mu); /* counters first: see answer_error */
    s->cnt.completed++;
    s->cnt.prompt_tokens += t->T;
    s->cnt.cached_tokens += t->res.cached_tokens;
    s->cnt.generated_tokens += c.generated_tokens;
    s->cnt.decode_ms += t->res.decode_ms;
    pthread_mutex_unlock(&s->mu);
    unregister(s, a->r);
    emit(s, out, len);
    retire(s, a);
}

static int is_cancelled(void *r) { return atomic_load(&((request *)r)->cancel) != 0; }

/* The slot's keys/values now hold tokens[0..n). */
static void remember(cache_slot *c, const int *tokens, int n)
{
    int *copy = realloc(c->tokens, (size_t)(n ? n : 1) * sizeof(int));
    if (!copy) return; /* keeps n_tokens = 0: nothing reused, nothing wrong */
    memcpy(copy, tokens, (size_t)n * sizeof(int));
    c->tokens = copy;
    c->n_tokens = n;
}

/* Tokenize, cut the window, find the cache, prefill: r becomes active (or
 * is answered). */
static void start(sched *s, request *r)
{
    char err[ERR_MAX];
    if (atomic_load(&r->cancel)) return reject(s, r, cancel_message(r));
    model_slot *ms = get_model(s, r->model, err);
    if (!ms) return reject(s, r, err);
    const model *m = ms->m;
    if (r->p.max_tokens >= m->cfg.n_ctx) {
        snprintf(err, sizeof err, "max_tokens must be below the model's window of %d",
                 m->cfg.n_ctx);
        return reject(s, r, err);
    }
    active *a = xcalloc(1, sizeof *a);
    int n = 0, cap = 0;
    if (!a || tok_encode(m->tok, r->text, r->text_len, &a->tokens, &n, &cap, err) < 0) {
        free(a ? a->tokens : NULL);
        free(a);
        return reject(s, r, "out of memory");
    }
    a->r = r;
    a->t_start = now_ms();
    if (n == 0) { /* an empty text starts from <|endoftext|> */
        int *one = m->cfg.eos >= 0 ? realloc(a->tokens, sizeof(int)) : NULL;
        if (!one) {
            free(a->tokens);
            free(a);
            return reject(s, r, m->cfg.eos < 0 ? "empty text and the model has no end-of-text token"
                                                : "out of memory");
        }
        a->tokens = one;
        a->tokens[n++] = m->cfg.eos;
    }
    a->truncated = window_cut(m, a->tokens, n, m->cfg.n_ctx - r->p.max_tokens);
    gen_task *t = &a->task;
    *t = (gen_task){.p = r->p, .prompt = a->tokens + a->truncated, .T = n - a->truncated};
    a->slot = get_cache(s, r, ms->e);
    if (a->slot) {
        t->prefix = a->slot->kv;
        t->cached = common_prefix(a->slot->tokens, a->slot->n_tokens, t->prompt, t->T);
        if (t->cached >= t->T) t->cached = t->T - 1; /* the last one gives the logits */
        a->slot->busy = 1;
        a->slot->last_use = ++s->tick;
        a->slot->n_tokens = 0; /* rewritten below once the prefill is done */
    } else if (!(a->private_kv = device_kv_new(ms->e->dev, t->T, err))) {
        answer_error(s, r, err);
        return retire(s, a);
    } else {
        t->prefix = a->private_kv;
    }
    t->stop_fn = is_cancelled;
    t->stop_ud = r;
    int rc = gen_task_start(ms->e, t, err);
    if (a->slot && rc >= 0) /* what was prefilled stays useful, even if cancelled */
        remember(a->slot, t->prompt, rc == 0 ? t->T : t->cached);
    if (rc != 0) {
        answer_error(s, r, rc > 0 ? cancel_message(r) : err);
        return retire(s, a);
    }
    if (!gen_task_active(t)) return finish(s, a);
    a->next = s->act;
    s->act = a;
}

/* ==== The step loop ==== */

/* Answer and drop active requests whose cancel flag is set. */
static void reap(sched *s)
{
    for (active **pa = &s->act; *pa;) {
        active *a = *pa;
        if (!atomic_load(&a->r->cancel)) {
            pa = &a->next;
            continue;
        }
        *pa = a->next;
        answer_error(s, a->r, cancel_message(a->r));
        retire(s, a);
    }
}

static void send_partial(sched *s, active *a)
{
    const char *text[GEN_MAX_N];
    size_t lens[GEN_MAX_N], len;
    for (int i = 0; i < a->task.p.n; i++) text[i] = gen_task_text(&a->task, i, &lens[i]);
    char *out = reply_partial(&a->r->to, text, lens, a->task.p.n, &len);
    emit(s, out, len);
}

/* After a step of model mi (rc < 0: it failed with err): finish what is
 * done, stream what goes on. */
static void after_step(sched *s, int mi, int rc, const char *err)
{
    for (active **pa = &s->act; *pa;) {
        active *a = *pa;
        if (a->r->model != mi) {
            pa = &a->next;
            continue;
        }
        if (rc == 0 && gen_task_active(&a->task)) {
            if (a->r->to.notify && a->r->stream && ++a->since_partial >= a->r->partial_every) {
                a->since_partial = 0;
                send_partial(s, a);
            }
            pa = &a->next;
            continue;
        }
        *pa = a->next;
        if (rc < 0) {
            answer_error(s, a->r, err);
            retire(s, a);
        } else {
            finish(s, a);
        }
    }
}

/* One batched decode step per model with active requests. */
static void step(sched *s)
{
    for (int mi = 0; mi < s->o.n_models; mi++) {
        gen_task *tasks[MAX_LIVE];
        int n = 0;
        for (active *a = s->act; a && n < MAX_LIVE; a = a->next)
            if (a->r->model == mi) tasks[n++] = &a->task;
        if (!n) continue;
        char err[ERR_MAX];
        int rc = gen_step(s->models[mi].e, tasks, n, err);
        after_step(s, mi, rc, err);
        model_slot *m = &s->models[mi];
        int now = pool_threads_now(m->e->pool), all = pool_size(m->e->pool);
        if (m->threads_seen && now != m->threads_seen)
            log_info("model %s: %d of %d CPU threads%s", m->name, now, all,
                     now < all ? " (the CPUs are busy with other work)" : "");
        m->threads_seen = now;
    }
}

static void *thread_main(void *arg)
{
    sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->pending && !s->act) pthread_cond_wait(&s->cv, &s->mu);
        int stop = s->stop;
        /* take as many new requests as may be active at once; the rest wait
         * (and count against the queue) */
        int room = ACTIVE_MAX, n_act = 0;
        for (active *a = s->act; a; a = a->next) n_act++;
        room -= n_act;
        request *fresh = NULL, **tail = &fresh;
        while (s->pending && (room > 0 || stop || atomic_load(&s->pending->cancel))) {
            request *r = s->pending;
            s->pending = r->next;
            s->n_pending--;
            room -= !atomic_load(&r->cancel);
            r->next = NULL;
            *tail = r;
            tail = &r->next;
        }
        if (!s->pending) s->pending_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (stop) {
            for (active *a = s->act; a; a = a->next) atomic_store(&a->r->cancel, CANCEL_SHUTDOWN);
            for (request *r = fresh; r; r = r->next) atomic_store(&r->cancel, CANCEL_SHUTDOWN);
        }
        reap(s);
        while (fresh) {
            request *r = fresh;
            fresh = r->next;
            start(s, r);
        }
        if (stop) break;
        step(s);
    }
    return NULL;
}

/* ==== Loop-thread API ==== */

int sched_submit(sched *s, request *r, char *err)
{
    r->t_arrive = now_ms();
    pthread_mutex_lock(&s->mu);
    if (r->has_buffer) /* a newer request from the same buffer wins, even from the LRU */
        for (int i = 0; i < s->n_live; i++)
            if (s->live[i]->has_buffer && s->live[i]->buffer == r->buffer)
                atomic_store(&s->live[i]->cancel, CANCEL_SUPERSEDED);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (lru_answer(s, r)) {
        request_free(r);
        return 1;
    }
    pthread_mutex_lock(&s->mu);
    int waiting = 0; /* superseded or cancelled requests do not count: they are dead */
    for (request *q = s->pending; q; q = q->next) waiting += !atomic_load(&q->cancel);
    if (waiting >= s->o.queue_cap || s->n_live >= MAX_LIVE) {
        s->cnt.busy++;
        pthread_mutex_unlock(&s->mu);
        return errf(err, "busy: %d requests already queued; try again", s->o.queue_cap);
    }
    s->cnt.requests++;
    s->live[s->n_live++] = r;
    r->next = NULL;
    if (s->pending_tail) s->pending_tail->next = r;
    else s->pending = r;
    s->pending_tail = r;
    s->n_pending++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int sched_cancel(sched *s, int64_t id)
{
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_live; i++) {
        request *r = s->live[i];
        int match = r->to.notify ? r->to.has_id && r->to.id == id
                                 : id >= 0 && r->to.msgid == (uint64_t)id;
        if (match && !atomic_load(&r->cancel)) {
            atomic_store(&r->cancel, CANCEL_CLIENT);
            n++;
        }
    }
    if (n) pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return n;
}

int sched_model_index(sched *s, const char *name, size_t len)
{
    for (int i = 0; i < s->o.n_models; i++) {
        const model_slot *m = &s->models[i];
        if ((strlen(m->name) == len && !memcmp(m->name, name, len)) ||
            (strlen(m->dir) == len && !memcmp(m->dir, name, len)))
            return i;
    }
    return -1;
}

static size_t rss_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

static void status_models(sched *s, msgpack_packer *pk)
{
    pack_key(pk, "models");
    msgpack_pack_array(pk, s->o.n_models);
    for (int i = 0; i < s->o.n_models; i++) {
        model_slot *m = &s->models[i];
        int loaded = m->e != NULL;
        msgpack_pack_map(pk, loaded ? 18 : 4);
        pack_kv_str(pk, "name", m->name);
        pack_kv_str(pk, "dir", m->dir);
        pack_kv_bool(pk, "loaded", loaded);
        pack_kv_str(pk, "error", m->error);
        if (!loaded) continue;
        pack_kv_int(pk, "n_layer", m->m->cfg.n_layer);
        pack_kv_int(pk, "n_embd", m->m->cfg.n_embd);
        pack_kv_int(pk, "n_ctx", m->m->cfg.n_ctx);
        pack_kv_int(pk, "vocab_size", m->m->cfg.n_vocab);
        pack_kv_int(pk, "weight_bytes", (int64_t)m->m->weight_bytes);
        pack_kv_double(pk, "load_ms", m->load_ms);
        pack_kv_str(pk, "device", device_name(m->e->dev));
        pack_kv_str(pk, "device_note", device_note(m->e->dev));
        pack_kv_str(pk, "cpu_kernels", device_cpu_kernels(m->e->dev));
        pack_kv_str(pk, "cpu_kv", device_cpu_kv(m->e->dev));
        unsigned long screened, fallback;
        device_topk_stats(m->e->dev, &screened, &fallback);
        pack_kv_int(pk, "head_screened_rows", (int64_t)screened);
        pack_kv_int(pk, "head_fallback_rows", (int64_t)fallback);
        /* the CPU threads its runs use now (fewer while other programs keep
         * the CPUs busy), and how often it went below --threads */
        pack_kv_int(pk, "cpu_threads_now", pool_threads_now(m->e->pool));
        pack_kv_int(pk, "cpu_thread_cuts", (int64_t)pool_cuts(m->e->pool));
    }
}

static void status_counters(const counters *c, msgpack_packer *pk)
{
    pack_key(pk, "counters");
    msgpack_pack_map(pk, 12);
    pack_kv_int(pk, "requests", (int64_t)c->requests);
    pack_kv_int(pk, "completed", (int64_t)c->completed);
    pack_kv_int(pk, "cancelled", (int64_t)c->cancelled);
    pack_kv_int(pk, "superseded", (int64_t)c->superseded);
    pack_kv_int(pk, "errors", (int64_t)c->errors);
    pack_kv_int(pk, "busy", (int64_t)c->busy);
    pack_kv_int(pk, "lru_hits", (int64_t)c->lru_hits);
    pack_kv_int(pk, "prompt_tokens", (int64_t)c->prompt_tokens);
    pack_kv_int(pk, "cached_tokens", (int64_t)c->cached_tokens);
    pack_kv_int(pk, "generated_tokens", (int64_t)c->generated_tokens);
    pack_kv_double(pk, "decode_ms", c->decode_ms);
    pack_kv_double(pk, "tokens_per_s",
                   c->decode_ms > 0 ? c->generated_tokens * 1000.0 / c->decode_ms : 0);
}

void sched_status(sched *s, msgpack_packer *pk)
{
    pthread_mutex_lock(&s->mu);
    msgpack_pack_map(pk, 8);
    pack_kv_str(pk, "version", GPT2_VERSION);
    pack_kv_double(pk, "uptime_s", (now_ms() - s->t0) / 1000);
    const char *dev = s->o.device.choice == DEVICE_CPU ? "cpu"
                      : s->o.device.choice == DEVICE_CUDA ? "cuda" : "auto";
    for (int i = 0; i < s->o.n_models; i++)
        if (s->models[i].e) {
            dev = device_name(s->models[i].e->dev);
            break;
        }
    pack_kv_str(pk, "device", dev);
    status_models(s, pk);
    pack_key(pk, "params");
    msgpack_pack_map(pk, 4);
    pack_kv_int(pk, "threads", s->o.threads > 0 ? s->o.threads : pool_cpu_count());
    pack_kv_int(pk, "queue_cap", s->o.queue_cap);
    pack_kv_int(pk, "cache_slots", s->o.cache_slots);
    pack_kv_int(pk, "lru_size", s->o.lru_size);
    size_t gpu_used = 0, gpu_free = 0, u, f;
    unsigned long ooms = 0, o;
    for (int i = 0; i < s->o.n_models; i++)
        if (s->models[i].e) {
            device_memory(s->models[i].e->dev, &u, &f, &o);
            gpu_used += u;
            gpu_free = f;
            ooms += o;
        }
    pack_key(pk, "memory");
    msgpack_pack_map(pk, 5);
    pack_kv_int(pk, "rss_bytes", (int64_t)rss_bytes());
    pack_kv_int(pk, "kv_cache_bytes", (int64_t)s->kv_bytes);
    pack_kv_int(pk, "gpu_used_bytes", (int64_t)gpu_used);
    pack_kv_int(pk, "gpu_free_bytes", (int64_t)gpu_free);
    pack_kv_int(pk, "gpu_out_of_memory", (int64_t)ooms);
    pack_key(pk, "queue");
    msgpack_pack_map(pk, 2);
    pack_kv_int(pk, "depth", s->n_pending);
    pack_kv_int(pk, "live", s->n_live);
    status_counters(&s->cnt, pk);
    pthread_mutex_unlock(&s->mu);
}

/* ==== Life cycle ==== */

sched *sched_new(const sched_opts *o, char *err)
{
    sched *s = xcalloc(1, sizeof *s);
    if (!s) {
        errf(err, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->t0 = now_ms();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->models = xcalloc(o->n_models, sizeof *s->models);
    s->caches = xcalloc(o->cache_slots > 0 ? o->cache_slots : 1, sizeof *s->caches);
    s->lru = xcalloc(o->lru_size > 0 ? o->lru_size : 1, sizeof *s->lru);
    if (!s->models || !s->caches || !s->lru) goto oom;
    for (int i = 0; i < o->n_models; i++) {
        const char *d = o->model_dirs[i];
        size_t n = strlen(d);
        while (n > 1 && d[n - 1] == '/') n--;
        const char *b = d + n;
        while (b > d && b[-1] != '/') b--;
        s->models[i].dir = strndup(d, n);
        s->models[i].name = strndup(b, d + n - b);
        if (!s->models[i].dir || !s->models[i].name) goto oom;
    }
    if (pthread_create(&s->thread, NULL, thread_main, s)) {
        errf(err, "cannot start the inference thread");
        sched_free(s);
        return NULL;
    }
    s->started = 1;
    return s;
oom:
    errf(err, "out of memory");
    sched_free(s);
    return NULL;
}

void sched_free(sched *s)
{
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; s->caches && i < s->o.cache_slots; i++) {
        if (s->caches[i].kv) device_kv_free(s->models[s->caches[i].model].e->dev, s->caches[i].kv);
        free(s->caches[i].tokens);
    }
    for (int i = 0; s->lru && i < s->o.lru_size; i++) lru_clear(&s->lru[i]);
    for (int i = 0; s->models && i < s->o.n_models; i++) {
        engine_free(s->models[i].e);
        model_free(s->models[i].m);
        free(s->models[i].dir);
        free(s->models[i].name);
    }
    free(s->caches);
    free(s->lru);
    free(s->models);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* server.c - the loop thread of `gpt2 serve` (see server.h).
 *
 * The libuv loop owns stdin and stdout. Messages are checked here: shape,
 * method, parameter types and ranges; a bad one gets an error reply naming
 * the problem and the helper keeps serving. Valid `complete` requests go to
 * the scheduler thread (sched.c); everything else is answered right here,
 * so `ping` and `status` stay instant while a completion runs.
 */
#define _GNU_SOURCE
#include "server.h"
#include "common.h"
#include "log.h"
#include "reply.h"
#include "rpc.h"
#include "sched.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

typedef struct {
    const server_opts *o;
    uv_loop_t *loop;
    rpc *rpc;
    sched *sched;
    int exit_code, ending;
    uint64_t seq;
} server;

static void emit_post(void *ud, char *data, size_t len) { rpc_post(ud, data, len); }

/* ==== Parameters ==== */

/* At most max bytes of p[0..len), not splitting a UTF-8 character. */
static int utf8_cut(const char *p, size_t len, size_t max)
{
    size_t n = len;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80) n--;
    }
    return (int)n;
}

static int key_is(const msgpack_object_kv *kv, const char *k)
{
    return kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(k) &&
           !memcmp(kv->key.via.str.ptr, k, kv->key.via.str.size);
}

/* An integer in [lo, hi] (a float with an integral value is accepted). */
static int get_int(const msgpack_object *v, const char *name, int64_t lo, int64_t hi,
                   int64_t *out, char *err)
{
    double d;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        d = v->via.u64 > (uint64_t)INT64_MAX ? 1e19 : (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) d = (double)v->via.i64;
    else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64) d = v->via.f64;
    else return errf(err, "%s must be an integer", name);
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
        return errf(err, "%s must be an integer in %lld..%lld", name, (long long)lo, (long long)hi);
    *out = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)v->via.u64
           : v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? v->via.i64 : (int64_t)d;
    return 0;
}

static int get_num(const msgpack_object *v, const char *name, double lo, double hi, int lo_open,
                   double *out, char *err)
{
    double d;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) d = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) d = (double)v->via.i64;
    else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64) d = v->via.f64;
    else return errf(err, "%s must be a number", name);
    if (!(d >= lo && d <= hi) || (lo_open && d == lo))
        return errf(err, "%s must be in %s%g, %g]", name, lo_open ? "(" : "[", lo, hi);
    *out = d;
    return 0;
}

static int get_bool(const msgpack_object *v, const char *name, int *out, char *err)
{
    if (v->type != MSGPACK_OBJECT_BOOLEAN) return errf(err, "%s must be true or false", name);
    *out = v->via.boolean;
    return 0;
}

/* One key of the complete params into r. */
static int complete_field(server *sv, const msgpack_object_kv *kv, request *r, char *err)
{
    const msgpack_object *v = &kv->val;
    int64_t i;
    double d;
    if (key_is(kv, "text")) {
        if (v->type != MSGPACK_OBJECT_STR) return errf(err, "text must be a string");
        free(r->text);
        if (!(r->text = malloc(v->via.str.size + 1))) return errf(err, "out of memory");
        memcpy(r->text, v->via.str.ptr, v->via.str.size);
        r->text[r->text_len = v->via.str.size] = 0;
    } else if (key_is(kv, "n")) {
        if (get_int(v, "n", 1, GEN_MAX_N, &i, err)) return -1;
        r->p.n = (int)i;
    } else if (key_is(kv, "max_tokens")) {
        if (get_int(v, "max_tokens", 1, GEN_MAX_TOKENS, &i, err)) return -1;
        r->p.max_tokens = (int)i;
    } else if (key_is(kv, "temperature")) {
        if (get_num(v, "temperature", 0, 10, 0, &d, err)) return -1;
        r->p.sp.temperature = (float)d;
    } else if (key_is(kv, "top_k")) {
        if (get_int(v, "top_k", 0, 1 << 24, &i, err)) return -1;
        r->p.sp.top_k = (int)i;
    } else if (key_is(kv, "top_p")) {
        if (get_num(v, "top_p", 0, 1, 1, &d, err)) return -1;
        r->p.sp.top_p = (float)d;
    } else if (key_is(kv, "seed")) {
        if (get_int(v, "seed", 0, (1LL << 53) - 1, &i, err)) return -1;
        r->p.seed = (uint64_t)i;
        r->seed_given = 1;
    } else if (key_is(kv, "stop")) {
        char s[16] = "";
        if (v->type == MSGPACK_OBJECT_STR && v->via.str.size < sizeof s)
            memcpy(s, v->via.str.ptr, v->via.str.size);
        int m = stop_parse(s);
        if (m < 0) return errf(err, "stop must be \"line\", \"sentence\" or \"none\"");
        r->p.stop = (stop_mode)m;
    } else if (key_is(kv, "model")) {
        if (v->type != MSGPACK_OBJECT_STR) return errf(err, "model must be a string");
        r->model = sched_model_index(sv->sched, v->via.str.ptr, v->via.str.size);
        if (r->model < 0)
            return errf(err, "unknown model '%.*s' (see status)", utf8_cut(v->via.str.ptr, v->via.str.size, 200),
                        v->via.str.ptr);
    } else if (key_is(kv, "id")) {
        if (get_int(v, "id", INT64_MIN / 2, INT64_MAX / 2, &r->to.id, err)) return -1;
        r->to.has_id = 1;
    } else if (key_is(kv, "buffer")) {
        if (get_int(v, "buffer", INT64_MIN / 2, INT64_MAX / 2, &r->buffer, err)) return -1;
        r->has_buffer = 1;
    } else if (key_is(kv, "stream")) {
        if (get_bool(v, "stream", &r->stream, err)) return -1;
    } else if (key_is(kv, "partial_every")) {
        if (get_int(v, "partial_every", 1, GEN_MAX_TOKENS, &i, err)) return -1;
        r->partial_every = (int)i;
    } /* other keys (e.g. the editor's changedtick) are ignored */
    return 0;
}

/* The params map of a `complete`: [ {..} ] (or the map itself). */
static const msgpack_object *params_map(const msgpack_object *params)
{
    if (params->type == MSGPACK_OBJECT_MAP) return params;
    if (params->type == MSGPACK_OBJECT_ARRAY && params->via.array.size == 1 &&
        params->via.array.ptr[0].type == MSGPACK_OBJECT_MAP)
        return &params->via.array.ptr[0];
    return NULL;
}

static request *parse_complete(server *sv, const msgpack_object *params, char *err)
{
    const msgpack_object *m = params_map(params);
    if (!m) {
        errf(err, "complete takes one map of parameters");
        return NULL;
    }
    request *r = xcalloc(1, sizeof *r);
    if (!r) {
        errf(err, "out of memory");
        return NULL;
    }
    r->p = (gen_params){.n = 3, .max_tokens = 24, .sp = {0.8f, 40, 0.95f}, .stop = STOP_LINE};
    r->stream = 1;
    r->partial_every = 4;
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (complete_field(sv, &m->via.map.ptr[i], r, err) < 0) {
            request_free(r);
            return NULL;
        }
    if (!r->text) {
        errf(err, "complete needs a text");
        request_free(r);
        return NULL;
    }
    if (!r->seed_given) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, 0) != sizeof s) s = (uint64_t)(now_ms() * 1000);
        r->p.seed = s & ((1ULL << 53) - 1);
    }
    r->seq = ++sv->seq;
    return r;
}

/* ==== Replies from the loop thread ==== */

static void send_error(server *sv, const reply_to *to, const char *msg)
{
    size_t len;
    char *out = reply_error(to, msg, &len);
    if (out) rpc_send(sv->rpc, out, len);
}

static void send_result(server *sv, uint64_t msgid, void (*pack)(server *, msgpack_packer *))
{
    packbuf b;
    reply_begin(&b, &(reply_to){.msgid = msgid}, NULL, 0);
    pack(sv, &b.pk);
    size_t len;
    char *out = pb_take(&b, &len);
    if (out) rpc_send(sv->rpc, out, len);
}

static void pack_pong(server *sv, msgpack_packer *pk) { (void)sv, pack_str(pk, "pong"); }
static void pack_true(server *sv, msgpack_packer *pk) { (void)sv, msgpack_pack_true(pk); }
static void pack_status(server *sv, msgpack_packer *pk) { sched_status(sv->sched, pk); }

static void end_serving(server *sv, int code)
{
    if (sv->ending) return;
    sv->ending = 1;
    sv->exit_code = code;
    rpc_stop_reading(sv->rpc);
    sched_free(sv->sched); /* cancels the rest; their replies are queued */
    sv->sched = NULL;
    rpc_close(sv->rpc, NULL);
}

/* ==== Methods ==== */

static void do_complete(server *sv, const reply_to *base, const msgpack_object *params)
{
    char err[ERR_MAX];
    reply_to to = *base;
    const msgpack_object *m = params_map(params);
    for (uint32_t i = 0; m && i < m->via.map.size; i++) /* the id first, for errors */
        if (key_is(&m->via.map.ptr[i], "id") &&
            !get_int(&m->via.map.ptr[i].val, "id", INT64_MIN / 2, INT64_MAX / 2, &to.id, err))
            to.has_id = 1;
    request *r = parse_complete(sv, params, err);
    if (!r) return send_error(sv, &to, err);
    r->to.notify = to.notify;
    r->to.msgid = to.msgid;
    r->to.handler = to.handler;
    if (sched_submit(sv->sched, r, err) < 0) {
        send_error(sv, &r->to, err);
        request_free(r);
    }
}

static void do_cancel(server *sv, const reply_to *to, const msgpack_object *params)
{
    char err[ERR_MAX];
    const msgpack_object *m = params_map(params), *id = NULL;
    for (uint32_t i = 0; m && i < m->via.map.size; i++)
        if (key_is(&m->via.map.ptr[i], "id")) id = &m->via.map.ptr[i].val;
    if (!id && params->type == MSGPACK_OBJECT_ARRAY && params->via.array.size == 1)
        id = &params->via.array.ptr[0];
    int64_t v;
    if (!id) return send_error(sv, to, "cancel needs {id = ...}");
    if (get_int(id, "id", INT64_MIN / 2, INT64_MAX / 2, &v, err)) return send_error(sv, to, err);
    int n = sched_cancel(sv->sched, v);
    if (to->notify) return;
    packbuf b;
    reply_begin(&b, to, NULL, 0);
    msgpack_pack_map(&b.pk, 1);
    pack_kv_int(&b.pk, "cancelled", n);
    size_t len;
    char *out = pb_take(&b, &len);
    if (out) rpc_send(sv->rpc, out, len);
}

static int str_is(const msgpack_object *o, const char *s)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           !memcmp(o->via.str.ptr, s, o->via.str.size);
}

static void dispatch(server *sv, const reply_to *to, const msgpack_object *method,
                     const msgpack_object *params)
{
    if (str_is(method, "complete")) return do_complete(sv, to, params);
    if (str_is(method, "cancel")) return do_cancel(sv, to, params);
    if (!to->notify) {
        if (str_is(method, "ping")) return send_result(sv, to->msgid, pack_pong);
        if (str_is(method, "status")) return send_result(sv, to->msgid, pack_status);
    }
    if (str_is(method, "shutdown")) {
        if (!to->notify) send_result(sv, to->msgid, pack_true);
        log_info("shutdown requested");
        return end_serving(sv, 0);
    }
    char err[ERR_MAX];
    int n = method->type == MSGPACK_OBJECT_STR ? utf8_cut(method->via.str.ptr, method->via.str.size, 64) : 0;
    snprintf(err, sizeof err, "unknown method '%.*s'", n, n ? method->via.str.ptr : "");
    if (!to->notify) return send_error(sv, to, err);
    if (str_is(method, "nvim_error_event")) log_warn("Neovim reported an error for a notification");
    else log_warn("ignoring notification: %s", err);
}

static void on_msg(rpc *r, const msgpack_object *msg, void *ud)
{
    server *sv = ud;
    (void)r;
    if (sv->ending) return;
    const msgpack_object *a = msg->via.array.ptr;
    uint32_t n = msg->type == MSGPACK_OBJECT_ARRAY ? msg->via.array.size : 0;
    int64_t kind = -1;
    if (n >= 3 && a[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER) kind = (int64_t)a[0].via.u64;
    reply_to to = {.handler = sv->o->lua_handler};
    if (kind == 0 && n == 4) {
        if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > UINT32_MAX) {
            log_warn("ignoring a request whose msgid is not a 32-bit unsigned integer");
            return;
        }
        to.msgid = a[1].via.u64;
        if (a[2].type != MSGPACK_OBJECT_STR) return send_error(sv, &to, "method must be a string");
        if (a[3].type != MSGPACK_OBJECT_ARRAY) return send_error(sv, &to, "params must be an array");
        return dispatch(sv, &to, &a[2], &a[3]);
    }
    if (kind == 2 && n == 3 && a[1].type == MSGPACK_OBJECT_STR) {
        to.notify = 1;
        return dispatch(sv, &to, &a[1], &a[2]);
    }
    if (kind == 1) return log_warn("ignoring a response: this helper sends no requests");
    log_warn("ignoring a message that is not a msgpack-RPC request or notification");
}

static void on_end(rpc *r, const char *error, void *ud)
{
    server *sv = ud;
    (void)r;
    if (error) log_error("input stream unusable, exiting: %s", error);
    else log_info("stdin closed, exiting");
    end_serving(sv, error ? 1 : 0);
}

/* ==== Run ==== */

int server_run(const server_opts *o)
{
    char err[ERR_MAX];
    signal(SIGPIPE, SIG_IGN);
    /* stdout is the rpc channel: keep a private descriptor for it and point
     * fd 1 at stderr, so a stray print from any library cannot corrupt it */
    int out_fd = dup(1);
    if (out_fd < 0 || dup2(2, 1) < 0) {
        log_error("cannot set up stdout: %m");
        return 1;
    }
    server sv = {.o = o, .loop = uv_default_loop()};
    sv.rpc = rpc_new(sv.loop, 0, out_fd, o->max_message, o->max_depth,
                     (rpc_handlers){on_msg, on_end, &sv}, err);
    if (!sv.rpc) {
        log_error("%s", err);
        return 1;
    }
    sched_opts so = {.model_dirs = o->model_dirs, .n_models = o->n_models,
                     .threads = o->threads, .queue_cap = o->queue_cap,
                     .cache_slots = o->cache_slots, .lru_size = o->lru_size,
                     .device = o->device,
                     .emit = emit_post, .emit_ud = sv.rpc};
    if (!(sv.sched = sched_new(&so, err))) {
        log_error("%s", err);
        return 1;
    }
    log_info("serving %d model(s) on stdin/stdout, first: %s", o->n_models, o->model_dirs[0]);
    uv_run(sv.loop, UV_RUN_DEFAULT);
    sched_free(sv.sched); /* when the loop ended some other way */
    rpc_free(sv.rpc);
    uv_loop_close(sv.loop);
    return sv.exit_code;
}

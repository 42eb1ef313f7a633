/* rpc.c - see rpc.h. */
#define _GNU_SOURCE
#include "rpc.h"
#include "common.h"
#include "log.h"
#include "msgguard.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK 65536

typedef struct post {
    char *data;
    size_t len;
    struct post *next;
} post;

struct rpc {
    uv_loop_t *loop;
    uv_pipe_t in, out;
    uv_async_t async;
    msgpack_unpacker unp;
    msgguard guard;
    rpc_handlers h;
    int reading, ended, broken, closing, open_handles;
    size_t writes_pending;
    void (*done)(void *ud);
    pthread_mutex_t mu; /* guards the post queue */
    post *head, *tail;
};

typedef struct {
    uv_write_t req;
    char *data;
    rpc *r;
} write_req;

/* ==== Input ==== */

static void end_input(rpc *r, const char *error)
{
    if (r->ended) return;
    r->ended = 1;
    rpc_stop_reading(r);
    r->h.on_end(r, error, r->h.ud);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    rpc *r = h->data;
    (void)suggested;
    if (!msgpack_unpacker_reserve_buffer(&r->unp, READ_CHUNK)) {
        *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
        return;
    }
    *buf = uv_buf_init(msgpack_unpacker_buffer(&r->unp), READ_CHUNK);
}

/* The guard saw a whole message end: parse exactly that one. */
static void parse_one(rpc *r)
{
    msgpack_unpacked msg;
    msgpack_unpacked_init(&msg);
    int rc = msgpack_unpacker_next(&r->unp, &msg);
    if (rc == MSGPACK_UNPACK_SUCCESS) r->h.on_msg(r, &msg.data, r->h.ud);
    msgpack_unpacked_destroy(&msg);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR) end_input(r, "out of memory parsing a message");
    else if (rc != MSGPACK_UNPACK_SUCCESS) end_input(r, "msgpack parse error");
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    rpc *r = s->data;
    char err[ERR_MAX];
    if (nread == UV_EOF) {
        if (r->guard.bytes)
            log_warn("input ended inside a message: its %zu bytes are dropped", r->guard.bytes);
        return end_input(r, NULL);
    }
    if (nread == UV_ENOBUFS) return end_input(r, "out of memory for input");
    if (nread < 0) {
        snprintf(err, sizeof err, "read error: %s", uv_strerror((int)nread));
        return end_input(r, err);
    }
    msgpack_unpacker_buffer_consumed(&r->unp, (size_t)nread);
    for (ssize_t off = 0; off < nread && !r->ended;) {
        int done;
        long k = mg_feed(&r->guard, buf->base + off, (size_t)(nread - off), &done, err);
        if (k < 0) return end_input(r, err);
        off += k;
        if (done) parse_one(r);
    }
}

void rpc_stop_reading(rpc *r)
{
    if (r->reading) uv_read_stop((uv_stream_t *)&r->in);
    r->reading = 0;
}

/* ==== Output ==== */

static void close_cb(uv_handle_t *h)
{
    rpc *r = h->data;
    if (--r->open_handles == 0 && r->done) r->done(r->h.ud);
}

static void close_all(rpc *r)
{
    uv_handle_t *hs[3] = {(uv_handle_t *)&r->in, (uv_handle_t *)&r->out,
                          (uv_handle_t *)&r->async};
    for (int i = 0; i < 3; i++)
        if (!uv_is_closing(hs[i])) uv_close(hs[i], close_cb);
}

static void write_cb(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    rpc *r = w->r;
    free(w->data);
    free(w);
    r->writes_pending--;
    if (status < 0 && !r->broken) {
        r->broken = 1;
        log_error("cannot write to the rpc channel: %s", uv_strerror(status));
    }
    if (r->closing && r->writes_pending == 0) close_all(r);
}

int rpc_send(rpc *r, char *data, size_t len)
{
    if (r->broken || r->closing) {
        free(data);
        return -1;
    }
    write_req *w = malloc(sizeof *w);
    if (!w) {
        free(data);
        return -1;
    }
    w->data = data;
    w->r = r;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&r->out, &b, 1, write_cb);
    if (rc < 0) {
        log_error("cannot write to the rpc channel: %s", uv_strerror(rc));
        r->broken = 1;
        free(data);
        free(w);
        return -1;
    }
    r->writes_pending++;
    return 0;
}

static void async_cb(uv_async_t *a)
{
    rpc *r = a->data;
    pthread_mutex_lock(&r->mu);
    post *p = r->head;
    r->head = r->tail = NULL;
    pthread_mutex_unlock(&r->mu);
    while (p) { /* several posts may arrive with one wake-up */
        post *next = p->next;
        rpc_send(r, p->data, p->len);
        free(p);
        p = next;
    }
}

int rpc_post(rpc *r, char *data, size_t len)
{
    post *p = malloc(sizeof *p);
    if (!p) {
        free(data);
        return -1;
    }
    *p = (post){data, len, NULL};
    pthread_mutex_lock(&r->mu);
    if (r->tail) r->tail->next = p;
    else r->head = p;
    r->tail = p;
    pthread_mutex_unlock(&r->mu);
    uv_async_send(&r->async);
    return 0;
}

int rpc_broken(const rpc *r) { return r->broken; }

/* ==== Life cycle ==== */

/* fd's kind was checked by rpc_new before anything was allocated. */
static int open_pipe(uv_loop_t *loop, uv_pipe_t *p, int fd, const char *what, char *err)
{
    int rc = uv_pipe_init(loop, p, 0);
    if (rc == 0) rc = uv_pipe_open(p, fd);
    if (rc < 0) return errf(err, "%s: %s", what, uv_strerror(rc));
    return 0;
}

rpc *rpc_new(uv_loop_t *loop, int in_fd, int out_fd, size_t max_msg, int max_depth,
             rpc_handlers h, char *err)
{
    static const char *const what[2] = {"stdin", "stdout"};
    int fds[2] = {in_fd, out_fd};
    for (int i = 0; i < 2; i++) {
        uv_handle_type t = uv_guess_handle(fds[i]);
        if (t != UV_NAMED_PIPE && t != UV_TCP && t != UV_TTY) {
            errf(err, "%s must be a pipe or socket", what[i]);
            return NULL;
        }
    }
    rpc *r = xcalloc(1, sizeof *r);
    if (!r || !msgpack_unpacker_init(&r->unp, READ_CHUNK)) {
        free(r);
        errf(err, "out of memory");
        return NULL;
    }
    r->loop = loop;
    r->h = h;
    mg_init(&r->guard, max_msg, max_depth);
    pthread_mutex_init(&r->mu, NULL);
    if (open_pipe(loop, &r->in, in_fd, "stdin", err) < 0 ||
        open_pipe(loop, &r->out, out_fd, "stdout", err) < 0 ||
        uv_async_init(loop, &r->async, async_cb) < 0) {
        /* handles that were initialised still need closing: not worth it at
         * start-up, where the caller exits */
        return NULL;
    }
    r->in.data = r->out.data = r->async.data = r;
    r->open_handles = 3;
    int rc = uv_read_start((uv_stream_t *)&r->in, alloc_cb, read_cb);
    if (rc < 0) {
        errf(err, "stdin: %s", uv_strerror(rc));
        return NULL;
    }
    r->reading = 1;
    return r;
}

void rpc_close(rpc *r, void (*done)(void *ud))
{
    rpc_stop_reading(r);
    r->done = done;
    async_cb(&r->async); /* last posts */
    r->closing = 1;
    if (r->writes_pending == 0) close_all(r);
}

void rpc_free(rpc *r)
{
    if (!r) return;
    msgpack_unpacker_destroy(&r->unp);
    for (post *p = r->head, *n; p; p = n) {
        n = p->next;
        free(p->data);
        free(p);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* sched.h - the inference thread of `gpt2 serve`.
 *
 * The loop thread submits requests; the scheduler thread owns the models
 * (loaded lazily), their engines and the per-client prefix caches. Between
 * decode steps it reaps cancelled work, starts new requests (tokenize, cut
 * the window, reuse the longest cached token prefix, prefill the rest), then
 * runs one batched decode step over every live continuation of every active
 * request of a model (dynamic batching), pushing partial text in Neovim mode.
 * Replies leave through the `emit` callback (rpc_post), already packed.
 */
#ifndef GPT2_SCHED_H
#define GPT2_SCHED_H

#include <stdatomic.h>
#include <stdint.h>

#include "generate.h"
#include "reply.h"

enum { CANCEL_NONE, CANCEL_CLIENT, CANCEL_SUPERSEDED, CANCEL_SHUTDOWN };

typedef struct request {
    uint64_t seq;           /* arrival order, unique */
    reply_to to;
    int has_buffer;
    int64_t buffer;         /* client/buffer key: supersession + prefix cache */
    char *text;
    size_t text_len;
    int model;              /* index into the model list */
    gen_params p;
    int seed_given;
    int stream, partial_every;
    atomic_int cancel;      /* CANCEL_* */
    double t_arrive;
    struct request *next;
} request;

typedef struct {
    const char *const *model_dirs;
    int n_models;
    int threads;            /* compute threads (0 = all CPUs) */
    int queue_cap;          /* pending requests before 'busy' */
    int cache_slots;        /* per-client prefix caches kept */
    int lru_size;           /* identical-request answers kept */
    device_opts device;     /* where models run */
    void (*emit)(void *ud, char *data, size_t len); /* any thread */
    void *emit_ud;
} sched_opts;

typedef struct sched sched;

sched *sched_new(const sched_opts *o, char *err);

/* Loop thread: queue r (ownership passes). A request from the same buffer
 * key supersedes older ones first. When the queue is full, returns -1 with
 * err ("busy: ...") and r is not taken. An identical earlier request
 * (same model, text and parameters with an explicit seed) is answered at
 * once from the LRU: returns 1 and r is freed. */
int sched_submit(sched *s, request *r, char *err);

/* Loop thread: cancel the live request whose msgid (request mode) or client
 * id (Neovim mode) is id. Returns the number of requests marked. */
int sched_cancel(sched *s, int64_t id);

/* Loop thread: pack the `status` result map into pk. */
void sched_status(sched *s, msgpack_packer *pk);

/* Model index for a name (directory basename or path), or -1. */
int sched_model_index(sched *s, const char *name, size_t len);

/* Cancel everything (each gets a 'shutting down' error), stop the thread,
 * free all. */
void sched_free(sched *s);

void request_free(request *r);

#endif

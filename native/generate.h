/* generate.h - n continuations of one prompt: prefill once into a prefix
 * cache (reusing what the cache already holds), then decode the n sequences
 * together, one batched forward step per token, each sequence with its own
 * random stream and stop state.
 *
 * The work is exposed in steps so a scheduler can decode several requests in
 * one batch: gen_task_start (prefill + first tokens), gen_step over any set
 * of tasks of one engine (one forward pass for all their live sequences),
 * gen_task_finish. gen_complete runs the three for one task.
 */
#ifndef GPT2_GENERATE_H
#define GPT2_GENERATE_H

#include "device.h"
#include "model.h"
#include "sampler.h"

#define GEN_MAX_N 16
#define GEN_MAX_TOKENS 1024

typedef struct {
    int n;              /* continuations, 1..GEN_MAX_N */
    int max_tokens;     /* new tokens per continuation, 1..GEN_MAX_TOKENS */
    sample_params sp;
    uint64_t seed;
    stop_mode stop;
} gen_params;

typedef enum { FINISH_LENGTH, FINISH_EOS, FINISH_STOP } gen_finish;

typedef struct {
    int n;
    char *text[GEN_MAX_N];   /* the continuation only, valid UTF-8, NUL-terminated */
    int *ids[GEN_MAX_N];     /* generated ids (end-of-text excluded) */
    int n_ids[GEN_MAX_N];
    gen_finish finish[GEN_MAX_N];
    int prompt_tokens;
    int cached_tokens;       /* prompt tokens whose keys/values were reused */
    double prefill_ms, decode_ms;
    int steps;               /* batched decode steps this task took part in */
} gen_result;

typedef struct {
    model *m;
    pool *pool;
    device *dev;
    sampler *sampler;
    float *logits;           /* (rows_cap, vocab) */
    int rows_cap;
} engine;

/* State of one continuation. */
typedef struct {
    rng_t rng;
    kv_cache *kv;            /* its own keys/values, max_tokens positions */
    device *dev;             /* where kv lives */
    int active;
    buf_t text;              /* decoded so far, cut by the stop rule */
} gen_seq;

#define GEN_PREFILL_CHUNK GEN_ROWS_MAX /* prompt rows per forward pass */

typedef struct {
    gen_params p;
    const int *prompt;       /* borrowed until gen_task_start returns */
    int T;
    kv_cache *prefix;        /* borrowed: holds >= T positions */
    int cached;              /* prefix positions already valid for prompt[0..cached) */
    int (*stop_fn)(void *ud); /* optional: asked between prefill chunks */
    void *stop_ud;
    gen_seq seq[GEN_MAX_N];
    gen_result res;
} gen_task;

/* An engine over model m (borrowed) with `threads` CPU threads (0 = all)
 * on the device o asks for (NULL: the CPU). */
engine *engine_new(model *m, int threads, const device_opts *o, char *err);
void engine_free(engine *e);

/* Check p against the model: ranges, and T + max_tokens within the window. */
int gen_check(const model *m, const gen_params *p, int T, char *err);

/* Prefill prompt[cached..T) into t->prefix, GEN_PREFILL_CHUNK rows at a
 * time, and sample each sequence's first token. t->p, prompt, T, prefix,
 * cached must be set. 0; or 1 when stop_fn said stop between chunks (then
 * t->cached tells how far the prefix is valid); or -1 with err. The task must
 * be freed with gen_task_free in every case. */
int gen_task_start(engine *e, gen_task *t, char *err);

/* Sequences still decoding. */
int gen_task_active(const gen_task *t);

/* One decode step for every active sequence of tasks[0..n), all of engine e,
 * as one batch. 0, or -1 with err. */
int gen_step(engine *e, gen_task **tasks, int n, char *err);

/* Text of sequence i so far: complete characters, stop rule applied. */
const char *gen_task_text(const gen_task *t, int i, size_t *len);

/* Final texts into t->res. 0, or -1 when out of memory. */
int gen_task_finish(engine *e, gen_task *t);

/* Frees the per-sequence state (and the result, when free_result). */
void gen_task_free(gen_task *t, int free_result);

/* gen_task_start + steps + finish for one prompt with a fresh prefix cache.
 * Fills *res (free with gen_result_free). 0, or -1 with err. */
int gen_complete(engine *e, const int *prompt, int T, const gen_params *p, gen_result *res,
                 char *err);
void gen_result_free(gen_result *res);

const char *gen_finish_name(gen_finish f);

/* Logits of the last position of tokens[0..T) into out[0..n_vocab), or with
 * `all` of every position into out (T, n_vocab). */
int gen_logits(engine *e, const int *tokens, int T, int all, float *out, char *err);

#endif

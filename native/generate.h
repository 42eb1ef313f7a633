/* generate.h - n continuations of one prompt: prefill once into a shared
 * prefix cache, then decode the n sequences together, one batched forward
 * step per token, each sequence with its own random stream and stop state.
 */
#ifndef GPT2_GENERATE_H
#define GPT2_GENERATE_H

#include "cpu/forward.h"
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
    double prefill_ms, decode_ms;
    int steps;               /* batched decode steps run */
} gen_result;

typedef struct {
    model *m;
    pool *pool;
    fwd *fwd;
    sampler *sampler;
} engine;

/* An engine over model m (borrowed) with `threads` threads (0 = all CPUs). */
engine *engine_new(model *m, int threads, char *err);
void engine_free(engine *e);

/* Generate for prompt[0..T). Requires 1 <= T and T + max_tokens <= n_ctx.
 * Fills *res (free with gen_result_free). 0, or -1 with err. */
int gen_complete(engine *e, const int *prompt, int T, const gen_params *p, gen_result *res,
                 char *err);
void gen_result_free(gen_result *res);

const char *gen_finish_name(gen_finish f);

/* Logits of the last position of tokens[0..T) into out[0..n_vocab). */
int gen_logits(engine *e, const int *tokens, int T, float *out, char *err);

#endif

/* sampler.h - choosing the next token: temperature, top-k, top-p, a seeded
 * random stream per continuation, and the text-level stop rules.
 */
#ifndef GPT2_SAMPLER_H
#define GPT2_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4]; /* xoshiro256** state */
} rng_t;

/* Stream `stream` of seed `seed`: independent, reproducible sequences. */
void rng_seed(rng_t *r, uint64_t seed, uint64_t stream);
uint64_t rng_next(rng_t *r);
double rng_uniform(rng_t *r); /* [0, 1) with 53 random bits */

typedef struct {
    float temperature; /* <= 0: greedy */
    int top_k;         /* 0: no limit; 1: greedy */
    float top_p;       /* (0, 1]; 1: no limit */
} sample_params;

typedef struct sampler sampler;

/* Scratch for a vocabulary of n_vocab ids. NULL when out of memory. */
sampler *sampler_new(int n_vocab);
void sampler_free(sampler *s);

/* The next token from logits[0..n_vocab). Greedy (first maximum) when the
 * temperature is 0 or top_k is 1; otherwise logits / temperature are cut to
 * the top_k largest, softmaxed, cut to the smallest set whose probability
 * reaches top_p, and sampled with r. */
int sample_token(sampler *s, const float *logits, const sample_params *p, rng_t *r);

/* The same choice from the k best candidates only, best first (larger
 * logit, then smaller id): val[i] is the logit of id[i]. With k >= p's
 * top_k (> 0) this draws exactly what sample_token draws from the whole
 * vocabulary. For a GPU, which hands back candidates, not logits. */
int sample_candidates(sampler *s, const float *val, const int *id, int k, const sample_params *p,
                      rng_t *r);

typedef enum { STOP_NONE, STOP_LINE, STOP_SENTENCE } stop_mode;

/* Where to cut generated text under `mode`: the length of the text to keep,
 * or -1 when generation should go on. line: at the first newline that follows
 * some non-blank text (so a continuation may start on the next line).
 * sentence: after . ! or ? (and closing quotes or brackets) followed by
 * whitespace, or before a blank line, once there is non-blank text. */
long stop_cut(const char *text, size_t len, stop_mode mode);

/* "line" | "sentence" | "none" -> mode; -1 if unknown. */
int stop_parse(const char *s);
const char *stop_name(stop_mode m);

#endif

/* sampler.c - see sampler.h. */
#include "sampler.h"
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== Random numbers: splitmix64 seeding, xoshiro256** ==== */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void rng_seed(rng_t *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ splitmix64(&(uint64_t){stream * 0xD1B54A32D192ED03ULL + 1});
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_next(rng_t *r)
{
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double rng_uniform(rng_t *r) { return (rng_next(r) >> 11) * 0x1.0p-53; }

/* ==== Sampling ==== */

struct sampler {
    int n_vocab;
    int *idx;     /* candidate ids, best first */
    float *val;   /* their logits */
    float *prob;  /* their probabilities */
};

sampler *sampler_new(int n_vocab)
{
    sampler *s = xcalloc(1, sizeof *s);
    if (!s) return NULL;
    s->n_vocab = n_vocab;
    s->idx = xmallocarray(n_vocab, sizeof *s->idx);
    s->val = xmallocarray(n_vocab, sizeof *s->val);
    s->prob = xmallocarray(n_vocab, sizeof *s->prob);
    if (!s->idx || !s->val || !s->prob) {
        sampler_free(s);
        return NULL;
    }
    return s;
}

void sampler_free(sampler *s)
{
    if (!s) return;
    free(s->idx);
    free(s->val);
    free(s->prob);
    free(s);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* "a ranks before b": larger logit, then smaller id (a total order). */
static int before(const float *l, int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

/* Put v at slot i of the heap idx[0..m) (the worst id at the root) and
 * move it down until both children rank before it. */
static void sift_down(const float *l, int *idx, int m, int i, int v)
{
    for (;;) {
        int c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && before(l, idx[c], idx[c + 1])) c++; /* the worse child */
        if (!before(l, v, idx[c])) break;
        idx[i] = idx[c];
        i = c;
    }
    idx[i] = v;
}

#define SCAN 16 /* logits a block of the scan */

typedef float f4 __attribute__((vector_size(16), aligned(4)));
typedef int32_t m4 __attribute__((vector_size(16)));

/* Whether any of the SCAN logits at l is above t (NaN is not). */
static int any_above(const float *l, float t)
{
    m4 any = {0};
    for (int i = 0; i < SCAN; i += 4) any |= *(const f4 *)(l + i) > t;
    return any[0] | any[1] | any[2] | any[3];
}

/* Keep the k best ids of logits in idx[0..k), sorted best first. A heap
 * of size k over the vocabulary, worst at the root: O(V log k). Once the
 * heap is full, id v (past every id in it) enters only where its logit is
 * above the root's, so a block of SCAN logits none of which is (compared
 * in vector registers) is passed over whole: none of its ids would have
 * entered, the root staying the same throughout. For 50257 Gaussian logits
 * and k = 40 on Zen 3, 57 -> 20 us a row (the best of 3000 calls each,
 * interleaved). */
static void top_k(const float *l, int n, int k, int *idx)
{
    int m = 0, v = 0;
    for (; v < n && m < k; v++) { /* sift up */
        int i = m++;
        for (; i > 0 && before(l, idx[(i - 1) / 2], v); i = (i - 1) / 2)
            idx[i] = idx[(i - 1) / 2];
        idx[i] = v;
    }
    while (v < n) {
        int end = n - v < SCAN ? n : v + SCAN;
        if (end - v == SCAN && !any_above(l + v, l[idx[0]])) {
            v = end;
            continue;
        }
        for (; v < end; v++)
            if (before(l, v, idx[0])) sift_down(l, idx, m, 0, v); /* replace the worst */
    }
    /* heap sort: repeatedly move the worst to the end */
    for (int end = m - 1; end > 0; end--) {
        int last = idx[end];
        idx[end] = idx[0];
        sift_down(l, idx, end, 0, last);
    }
}

/* A position i of 0..n drawn with r in proportion to its weight w[i] (or
 * w[at[i]]), which sum to total; -1 where rounding leaves u past the last. */
static int pick(const float *w, const int *at, int n, double total, rng_t *r)
{
    double u = rng_uniform(r) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += w[at ? at[i] : i];
        if (u < acc) return i;
    }
    return -1;
}

/* One of the k candidates (logits val, ids id, best first) with p's
 * temperature and top-p, drawn with r. */
static int draw(const float *val, const int *id, int k, const sample_params *p, rng_t *r,
                float *prob)
{
    float inv_t = 1.0f / p->temperature, max = val[0] * inv_t;
    double sum = 0;
    for (int i = 0; i < k; i++) sum += prob[i] = expf(val[i] * inv_t - max);
    /* nucleus: the smallest prefix whose probability reaches top_p */
    int keep = k;
    if (p->top_p < 1.0f) {
        double cum = 0, target = p->top_p * sum;
        for (keep = 0; keep < k;) {
            cum += prob[keep++];
            if (cum >= target) break;
        }
        sum = cum;
    }
    int i = pick(prob, NULL, keep, sum, r);
    return id[i >= 0 ? i : keep - 1]; /* rounding at the very top of the range */
}

#define NUCLEUS_K0 64 /* the first count of best ids sample_all sorts for top_p */

/* sample_token without top_k (or top_k >= the vocabulary): sorting all
 * 50257 ids took about 10 ms a row on Zen 3. Without top_p the draw runs
 * over the ids in their own order (the same distribution); with it, only
 * the best NUCLEUS_K0, 4 x as many, ... up to all are sorted, until their
 * probability reaches top_p of the whole. */
static int sample_all(sampler *s, const float *l, const sample_params *p, rng_t *r)
{
    int n = s->n_vocab;
    float inv_t = 1.0f / p->temperature, max = l[argmax(l, n)] * inv_t;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += s->prob[i] = expf(l[i] * inv_t - max);
    if (p->top_p >= 1.0f) {
        int i = pick(s->prob, NULL, n, sum, r);
        if (i < 0) /* rounding at the very top of the range: the last id with a weight */
            for (i = n - 1; i > 0 && !(s->prob[i] > 0); i--) {}
        return i;
    }
    double target = p->top_p * sum;
    for (int k = NUCLEUS_K0;; k *= 4) {
        k = k < n ? k : n;
        top_k(l, n, k, s->idx);
        double cum = 0;
        int keep = 0;
        do cum += s->prob[s->idx[keep++]]; /* at least the best (top_p may round to 0) */
        while (keep < k && cum < target);
        if (cum < target && k < n) continue; /* the nucleus is wider */
        int i = pick(s->prob, s->idx, keep, cum, r);
        return s->idx[i >= 0 ? i : keep - 1];
    }
}

int sample_token(sampler *s, const float *logits, const sample_params *p, rng_t *r)
{
    int n = s->n_vocab;
    if (p->temperature <= 0 || p->top_k == 1) return argmax(logits, n);
    int k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    if (k == n) return sample_all(s, logits, p, r);
    top_k(logits, n, k, s->idx);
    for (int i = 0; i < k; i++) s->val[i] = logits[s->idx[i]];
    return draw(s->val, s->idx, k, p, r, s->prob);
}

int sample_candidates(sampler *s, const float *val, const int *id, int k, const sample_params *p,
                      rng_t *r)
{
    if (p->temperature <= 0 || p->top_k == 1) return id[0];
    if (p->top_k > 0 && p->top_k < k) k = p->top_k;
    return draw(val, id, k, p, r, s->prob);
}

/* ==== Stop rules ==== */

static int blank(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

long stop_cut(const char *text, size_t len, stop_mode mode)
{
    int seen = 0; /* non-blank text so far */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (mode == STOP_LINE && c == '\n' && seen) return (long)i;
        if (mode == STOP_SENTENCE && seen) {
            if (c == '\n' && i + 1 < len && text[i + 1] == '\n') return (long)i;
            if (c == '.' || c == '!' || c == '?') {
                size_t j = i + 1;
                while (j < len && text[j] && strchr("\"')]}", text[j])) j++;
                if (j < len && blank((unsigned char)text[j])) return (long)j;
            }
        }
        if (!blank(c)) seen = 1;
    }
    return -1;
}

int stop_parse(const char *s)
{
    if (!strcmp(s, "none")) return STOP_NONE;
    if (!strcmp(s, "line")) return STOP_LINE;
    if (!strcmp(s, "sentence")) return STOP_SENTENCE;
    return -1;
}

const char *stop_name(stop_mode m)
{
    return m == STOP_LINE ? "line" : m == STOP_SENTENCE ? "sentence" : "none";
}

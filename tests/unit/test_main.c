/* test_main.c - C unit tests for the pieces below the CLI: UTF-8 helpers,
 * the tokenizer's decode and streaming guarantees, the sampler, the stop
 * rules and big (huge-page) blocks; test_kernels.c adds the CPU kernels. The oracle comparisons (ids, logits, greedy text against Hugging
 * Face) live in tests/test_oracle.py and run through the real binary.
 *
 * usage: test_unit TOKENIZER_DIR   (prints "N passed, N failed" last)
 */
#define _POSIX_C_SOURCE 200809L
#include "../../native/common.h"
#include "../../native/sampler.h"
#include "../../native/tokenizer.h"
#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int check_passed, check_failed;

/* ==== UTF-8 ==== */

static void test_utf8(void)
{
    CHECK(utf8_valid("h\xC3\xA9", 3), "2-byte");
    CHECK(!utf8_valid("\xC0\xAF", 2), "overlong");
    CHECK(!utf8_valid("\xED\xA0\x80", 3), "surrogate");
    CHECK(!utf8_valid("\xF4\x90\x80\x80", 4), "past U+10FFFF");
    CHECK(utf8_valid("\xF0\x9F\x8E\x89", 4), "emoji");
    CHECK(utf8_incomplete_tail("a\xF0\x9F", 3) == 2, "cut emoji");
    CHECK(utf8_incomplete_tail("a\xE0", 2) == 1, "E0 lead alone");
    CHECK(utf8_incomplete_tail("a\xE0\x80", 3) == 0, "E0 80 can never complete");
    CHECK(utf8_incomplete_tail("a\xC3\xA9", 3) == 0, "complete");
    CHECK(utf8_incomplete_tail("\x80", 1) == 0, "stray continuation is not held back");
    buf_t b = {0};
    utf8_sanitize(&b, "a\xFF" "b\xC3", 4);
    CHECK(b.len == 8 && !memcmp(b.p, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD", 8), "sanitize: %.*s",
          (int)b.len, b.p);
    buf_free(&b);
}

/* ==== Tokenizer ==== */

static int *encode(tokenizer *t, const char *s, int *n)
{
    int *ids = NULL, cap = 0;
    char err[ERR_MAX];
    *n = 0;
    if (tok_encode(t, s, strlen(s), &ids, n, &cap, err) < 0) return NULL;
    return ids;
}

static char *decode(tokenizer *t, const int *ids, int n, int final)
{
    buf_t b = {0};
    tok_decode(t, ids, n, final, &b);
    buf_append(&b, "", 1);
    return b.p;
}

static void test_known_ids(tokenizer *t)
{
    static const struct {
        const char *text;
        int n, ids[4];
    } cases[] = {
        {"Hello world", 2, {15496, 995}},
        {" Hello world", 2, {18435, 995}},
        {"Hello, world!", 4, {15496, 11, 995, 0}},
        {"\n\n", 1, {628}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int n, *ids = encode(t, cases[c].text, &n);
        int same = ids && n == cases[c].n && !memcmp(ids, cases[c].ids, n * sizeof(int));
        CHECK(same, "ids of \"%s\"", cases[c].text);
        free(ids);
    }
    int n, *ids = encode(t, "<|endoftext|>", &n);
    CHECK(ids && n > 1 && ids[0] != 50256, "<|endoftext|> in text is ordinary text (%d ids)", n);
    free(ids);
}

static const char *const CORPUS[] = {
    "def f(x):\n    return x ** 2  # square\n",
    "It's 3.14 o'clock, they're here; we've won!",
    "na\xC3\xAFve caf\xC3\xA9 e\xCC\x81 \xE4\xB8\xAD\xE6\x96\x87 \xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",
    "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD ok",
    "   leading and trailing   \t\n\n  ",
};

static void test_round_trip_and_streaming(tokenizer *t)
{
    for (size_t c = 0; c < sizeof CORPUS / sizeof *CORPUS; c++) {
        const char *s = CORPUS[c];
        int n, *ids = encode(t, s, &n);
        char *full = decode(t, ids, n, 1);
        CHECK(full && !strcmp(full, s), "round trip of case %zu: '%s'", c, full);
        /* every prefix of the ids decodes (non-final) to valid UTF-8 that is
         * a prefix of the full text: no half characters, no U+FFFD */
        for (int k = 0; k <= n; k++) {
            char *p = decode(t, ids, k, 0);
            CHECK(utf8_valid(p, strlen(p)) && !strncmp(p, s, strlen(p)),
                  "case %zu prefix %d/%d: '%s'", c, k, n, p);
            free(p);
        }
        free(full);
        free(ids);
    }
}

static void test_hostile_text(tokenizer *t)
{
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    memset(s, 'a', big);
    s[big] = 0;
    double t0 = now_ms();
    int n, *ids = encode(t, s, &n);
    char *back = ids ? decode(t, ids, n, 1) : NULL;
    CHECK(back && !strcmp(back, s), "1 MiB word round-trips (%d ids, %.0f ms)", n, now_ms() - t0);
    free(back);
    free(ids);
    memset(s, ' ', big); /* a megabyte of spaces */
    ids = encode(t, s, &n);
    back = ids ? decode(t, ids, n, 1) : NULL;
    CHECK(back && !strcmp(back, s), "1 MiB of spaces round-trips");
    free(back);
    free(ids);
    free(s);
    ids = encode(t, "a\xFF" "b", &n);
    back = ids ? decode(t, ids, n, 1) : NULL;
    CHECK(back && !strcmp(back, "a\xEF\xBF\xBD" "b"), "invalid byte becomes U+FFFD: '%s'", back);
    free(back);
    free(ids);
    int bad[] = {-1, 999999, 15496};
    back = decode(t, bad, 3, 1);
    CHECK(!strcmp(back, "Hello"), "unknown ids decode to nothing: '%s'", back);
    free(back);
}

/* ==== Sampler ==== */

static void test_rng(void)
{
    rng_t a, b, c;
    rng_seed(&a, 42, 0);
    rng_seed(&b, 42, 0);
    rng_seed(&c, 42, 1);
    int same = 1, differ = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = rng_next(&a), y = rng_next(&b), z = rng_next(&c);
        same &= x == y;
        differ |= x != z;
    }
    CHECK(same, "same seed and stream repeat");
    CHECK(differ, "streams differ");
    double lo = 1, hi = 0;
    for (int i = 0; i < 10000; i++) {
        double u = rng_uniform(&a);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    CHECK(lo >= 0 && lo < 0.01 && hi < 1 && hi > 0.99, "uniform range [%g, %g]", lo, hi);
}

/* sample_token over logits[0..V) draws what sample_candidates draws from
 * their K best (larger logit, then smaller id, by selection here). */
static void same_draws(sampler *s, const float *logits, int V, const char *what)
{
    enum { K = 64 };
    float val[K];
    int id[K], same = 1, trials = 0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int v = 0; v < V; v++) {
            int taken = 0;
            for (int j = 0; j < k; j++) taken |= id[j] == v;
            if (!taken && (best < 0 || logits[v] > logits[best])) best = v;
        }
        id[k] = best, val[k] = logits[best];
    }
    const sample_params ps[] = {{0, 40, 1}, {0.8f, 40, 0.95f}, {1.5f, 64, 1}, {0.7f, 5, 0.5f},
                                {1, 1, 1}, {1.2f, 17, 0.9f}};
    for (size_t p = 0; p < sizeof ps / sizeof *ps; p++) {
        rng_t a, b;
        rng_seed(&a, 5, p), rng_seed(&b, 5, p);
        for (int i = 0; i < 500; i++, trials++)
            same &= sample_token(s, logits, &ps[p], &a) == sample_candidates(s, val, id, K, &ps[p], &b);
    }
    CHECK(same, "%s: candidates and the whole vocabulary draw the same tokens (%d draws)", what, trials);
}

static void test_sampling(void)
{
    enum { V = 1000 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = -(float)i * 0.01f; /* id 0 best */
    logits[500] = 5; /* a clear winner in the middle */
    sampler *s = sampler_new(V);
    rng_t r;
    rng_seed(&r, 7, 0);
    CHECK(sample_token(s, logits, &(sample_params){0, 40, 1}, &r) == 500, "temperature 0");
    CHECK(sample_token(s, logits, &(sample_params){1, 1, 1}, &r) == 500, "top_k 1");
    /* top-k 3: only ids 500, 0, 1 may appear */
    int ok = 1;
    for (int i = 0; i < 2000; i++) {
        int tok = sample_token(s, logits, &(sample_params){50, 3, 1}, &r);
        ok &= tok == 500 || tok == 0 || tok == 1;
    }
    CHECK(ok, "top_k 3 keeps only the 3 best");
    /* probabilities 0.5 / 0.3 / 0.2 (and the rest ~0): frequencies match */
    float l3[V];
    for (int i = 0; i < V; i++) l3[i] = -1e4f;
    l3[10] = logf(0.5f), l3[20] = logf(0.3f), l3[30] = logf(0.2f);
    int cnt[3] = {0}, N = 30000;
    for (int i = 0; i < N; i++) {
        int tok = sample_token(s, l3, &(sample_params){1, 0, 1}, &r);
        cnt[tok == 10 ? 0 : tok == 20 ? 1 : 2]++;
    }
    CHECK(fabs(cnt[0] / (double)N - 0.5) < 0.015 && fabs(cnt[1] / (double)N - 0.3) < 0.015,
          "frequencies %d %d %d", cnt[0], cnt[1], cnt[2]);
    /* top-p 0.75: 0.5 + 0.3 reach it, 0.2 never drawn */
    int never = 1;
    for (int i = 0; i < 5000; i++) never &= sample_token(s, l3, &(sample_params){1, 0, 0.75f}, &r) != 30;
    CHECK(never, "top_p 0.75 drops the 0.2 tail");
    /* a nucleus wider than the first ids sorted (equal logits: the best are
     * the smallest ids): top_p 0.9 keeps ids 0..899, about evenly */
    for (int i = 0; i < V; i++) l3[i] = 0.5f;
    int inside = 1;
    double mean = 0;
    for (int i = 0; i < N; i++) {
        int tok = sample_token(s, l3, &(sample_params){1, 0, 0.9f}, &r);
        inside &= tok >= 0 && tok < 900;
        mean += tok / (double)N;
    }
    CHECK(inside && fabs(mean - 449.5) < 10, "top_p 0.9 of equal logits: inside %d, mean id %g", inside, mean);
    CHECK(sample_token(s, l3, &(sample_params){1, 0, 1e-30f}, &r) == 0, "top_p near 0 keeps the best");

    /* a GPU's candidates (the k best, best first) draw exactly what the whole
     * vocabulary draws, for k >= top_k: same rng streams, same tokens; ties
     * included (every 7th logit repeats), since both order them by id. Also
     * logits that rise all the way (every block of the sampler's scan has
     * one that enters) or fall (none does) */
    rng_t g;
    rng_seed(&g, 99, 0);
    for (int i = 0; i < V; i++) logits[i] = (float)(rng_uniform(&g) * 8.0) - 4.0f;
    for (int i = 7; i < V; i += 7) logits[i] = logits[i - 7];
    same_draws(s, logits, V, "random logits with ties");
    for (int i = 0; i < V; i++) logits[i] = (float)i * 0.01f;
    same_draws(s, logits, V, "rising logits");
    for (int i = 0; i < V; i++) logits[i] = 5.0f - (float)i * 0.01f;
    same_draws(s, logits, V, "falling logits");
    sampler_free(s);
}

static void test_stop(void)
{
    CHECK(stop_cut("abc\ndef", 7, STOP_LINE) == 3, "line");
    CHECK(stop_cut("\n  x = 1\nmore", 13, STOP_LINE) == 8, "line after a leading newline");
    CHECK(stop_cut("\n\n", 2, STOP_LINE) == -1, "blank only: go on");
    CHECK(stop_cut("abc\ndef", 7, STOP_NONE) == -1, "none");
    CHECK(stop_cut("Hi there. Next", 14, STOP_SENTENCE) == 9, "sentence");
    CHECK(stop_cut("He said \"no.\" Then", 18, STOP_SENTENCE) == 13, "closing quote kept");
    CHECK(stop_cut("3.14 is pi", 10, STOP_SENTENCE) == -1, "decimal point");
    CHECK(stop_cut("one\n\ntwo", 8, STOP_SENTENCE) == 3, "blank line ends a sentence");
    CHECK(stop_parse("sentence") == STOP_SENTENCE && stop_parse("bogus") < 0, "parse");
}

/* ==== Large blocks ==== */

/* xbig_alloc: alignment, overflow, and huge pages where the kernel's
 * transparent huge pages allow madvise (else SKIP). */
static void test_big_alloc(void)
{
    CHECK(xbig_alloc(SIZE_MAX / 2, 4) == NULL, "n * size overflow");
    CHECK(xbig_alloc(SIZE_MAX - 4096, 1) == NULL, "rounding up past SIZE_MAX");
    char *small = xbig_alloc(1000, 3);
    CHECK(small && (uintptr_t)small % 64 == 0, "a small block is 64-byte aligned");
    free(small);
    size_t n = (size_t)9 << 20;
    char *big = xbig_alloc(n, 1);
    CHECK(big && (uintptr_t)big % ((size_t)2 << 20) == 0, "a big block is 2 MiB-aligned");
    if (!big) return;
    memset(big, 1, n);
    char mode[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(mode, sizeof mode, f)) mode[0] = 0;
        fclose(f);
    }
    if (!strstr(mode, "[always]") && !strstr(mode, "[madvise]")) {
        printf("SKIP huge pages: transparent huge pages are '%s' here\n", mode[0] ? strtok(mode, "\n") : "absent");
    } else if ((f = fopen("/proc/self/smaps", "r"))) { /* the mapping that holds big */
        char line[256];
        unsigned long lo, hi, kb = 0;
        int in = 0;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) in = lo <= (uintptr_t)big && (uintptr_t)big < hi;
            else if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) break;
        }
        fclose(f);
        CHECK(kb >= 2048, "9 MiB block: %lu kB on huge pages", kb);
    }
    free(big);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR\n", argv[0]);
        return 2;
    }
    char vocab[4096], merges[4096], err[ERR_MAX];
    snprintf(vocab, sizeof vocab, "%s/vocab.json", argv[1]);
    snprintf(merges, sizeof merges, "%s/merges.txt", argv[1]);
    test_utf8();
    test_rng();
    test_sampling();
    test_stop();
    test_big_alloc();
    kernel_tests();
    topk_tests();
    tokenizer *t = tok_load(vocab, merges, err);
    CHECK(t != NULL, "load: %s", err);
    if (t) {
        CHECK(tok_vocab_size(t) == 50257, "vocab size %d", tok_vocab_size(t));
        test_known_ids(t);
        test_round_trip_and_streaming(t);
        test_hostile_text(t);
        tok_free(t);
    }
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

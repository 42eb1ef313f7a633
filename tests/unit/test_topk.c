/* test_topk.c - the head's int8 screen (native/cpu/topk.h): gathered rows
 * pack to the bytes (and products) of the whole matrix, the int8 bounds
 * against the widened tiles, tk_best's order, and that the candidates hold
 * every one of the k best exact logits on each int8 path, near ties and
 * duplicate columns included, while zero bounds (a screen that trusts the
 * int8 values) do lose some there. Called from test_main.c.
 */
#include "../../native/common.h"
#include "../../native/cpu/packed.h"
#include "../../native/cpu/topk.h"
#include "check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed = 0x243F6A8885A308D3ull;

static uint32_t urand(void)
{
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    return (uint32_t)(seed >> 32);
}

static float frand(void) /* uniform in [-1, 1) */
{
    return (float)((urand() >> 8) / (double)(1u << 24)) * 2.0f - 1.0f;
}

static void *aligned(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

static int same_bits(float a, float b) { return !memcmp(&a, &b, sizeof a); }

/* Rows of a (N, K) matrix gathered in a shuffled order: pk_pack_rows gives
 * pk_pack_into's bytes for them, and the product's columns are the whole
 * matrix's, bit for bit, for 1..8 fp32 rows. */
static void test_pack_rows(int K, int N, int n, int fmt)
{
    char err[ERR_MAX];
    float *w = malloc(sizeof(float) * N * K), *g = malloc(sizeof(float) * n * K);
    float *scratch = malloc(sizeof(float) * PK_TILE * K), *x = malloc(sizeof(float) * 8 * K);
    float *full = malloc(sizeof(float) * 8 * N), *part = malloc(sizeof(float) * 8 * n);
    const float **rows = malloc(sizeof *rows * n);
    int *idx = malloc(sizeof(int) * n);
    for (int i = 0; i < N * K; i++) w[i] = frand() * 0.5f;
    for (int i = 0; i < N * K; i += 7) { /* ties for bf16's rounding (to even) */
        uint32_t u;
        memcpy(&u, &w[i], sizeof u);
        u = (u & 0xFFFF0000u) | 0x8000u;
        memcpy(&w[i], &u, sizeof u);
    }
    for (int i = 0; i < 8 * K; i++) x[i] = frand();
    for (int c = 0; c < n; c++) {
        idx[c] = (int)(urand() % N);
        rows[c] = w + (size_t)idx[c] * K;
        memcpy(g + (size_t)c * K, rows[c], sizeof(float) * K);
    }
    size_t bytes = pk_size(K, n, fmt);
    unsigned char *a = aligned(bytes), *b = aligned(bytes);
    memset(b, 0xA5, bytes); /* pk_pack_rows writes every byte */
    pmat ref, got, whole;
    CHECK(pk_pack_into(&ref, a, g, K, n, 1, fmt, err) == 0, "pack: %s", err);
    pk_pack_rows(&got, b, rows, n, K, fmt, scratch);
    CHECK(got.tiles == ref.tiles && got.tile_bytes == ref.tile_bytes && !memcmp(a, b, bytes),
          "fmt %d K %d n %d: gathered rows pack to other bytes", fmt, K, n);
    CHECK(pk_pack(&whole, w, K, N, 1, fmt, err) == 0, "pack: %s", err);
    for (int R = 1; R <= 8; R++) {
        pk_matmul(&whole, full, N, x, K, NULL, R, 0, whole.tiles, 0, NULL);
        pk_matmul(&got, part, n, x, K, NULL, R, 0, got.tiles, 0, NULL);
        int diff = 0;
        for (int r = 0; r < R; r++)
            for (int c = 0; c < n; c++) diff += !same_bits(part[r * n + c], full[r * N + idx[c]]);
        CHECK(!diff, "fmt %d K %d n %d R %d: %d gathered columns differ from the whole product", fmt,
              K, n, R, diff);
    }
    pk_free(&whole);
    free(a), free(b), free(w), free(g), free(scratch), free(x), free(full), free(part), free(rows);
    free(idx);
}

/* pk_i8_bounds: the largest |w' - q| and |q| per column, rounded up, against
 * the int8 tiles as pk_widen gives them. */
static void test_i8_bounds(int K, int N, int fmt)
{
    char err[ERR_MAX];
    float *w = malloc(sizeof(float) * N * K), *wide = malloc(sizeof(float) * K * PK_TILE);
    float *e = malloc(sizeof(float) * N), *am = malloc(sizeof(float) * N);
    for (int i = 0; i < N * K; i++) w[i] = frand() * (i % 11 == 0 ? 3.0f : 0.2f);
    pmat q;
    CHECK(pk_pack(&q, w, K, N, 1, PK_I8, err) == 0, "pack: %s", err);
    pk_i8_bounds(&q, w, fmt, 0, q.N, e, am);
    float *e1 = malloc(sizeof(float) * N), *am1 = malloc(sizeof(float) * N);
    pk_force_generic = 1; /* the portable loop: the same bounds */
    pk_i8_bounds(&q, w, fmt, 0, q.N, e1, am1);
    pk_force_generic = 0;
    CHECK(!memcmp(e, e1, sizeof(float) * N) && !memcmp(am, am1, sizeof(float) * N),
          "fmt %d K %d N %d: the bounds differ between the AVX2 and the portable loop", fmt, K, N);
    free(e1), free(am1);
    int bad = 0;
    for (int t = 0; t < q.tiles; t++) {
        pk_widen(&q, t, wide, PK_TILE);
        for (int c = 0; c < PK_TILE && t * PK_TILE + c < N; c++) {
            int n = t * PK_TILE + c;
            double de = 0, da = 0;
            for (int k = 0; k < K; k++) {
                float v = w[(size_t)n * K + k];
                if (fmt == PK_BF16) { /* round to nearest even, as the bf16 tiles hold it */
                    uint32_t u;
                    memcpy(&u, &v, sizeof u);
                    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
                    memcpy(&v, &u, sizeof v);
                }
                double qv = wide[(size_t)k * PK_TILE + c];
                de = fmax(de, fabs(v - qv));
                da = fmax(da, fabs(qv));
            }
            /* at least the true maximum, and the next float up at most */
            bad += !(e[n] >= de && e[n] <= nextafterf((float)de, INFINITY));
            bad += !(am[n] >= da && am[n] <= nextafterf((float)da, INFINITY));
        }
    }
    CHECK(!bad, "fmt %d K %d N %d: %d int8 bounds off", fmt, K, N, bad);
    pk_free(&q);
    free(w), free(wide), free(e), free(am);
}

/* The reference order: larger value, then smaller id. */
static const float *cmp_val;
static int cmp_best(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (cmp_val[i] != cmp_val[j]) return cmp_val[i] > cmp_val[j] ? -1 : 1;
    return (i > j) - (i < j);
}

/* The k best of all V columns by sorting (ids are the indices). */
static void sorted_best(const float *val, int V, int k, int *order)
{
    int *all = malloc(sizeof(int) * V);
    for (int i = 0; i < V; i++) all[i] = i;
    cmp_val = val;
    qsort(all, V, sizeof(int), cmp_best);
    memcpy(order, all, sizeof(int) * k);
    free(all);
}

static void test_best(int n, int k, int levels)
{
    float *val = malloc(sizeof(float) * n), *bv = malloc(sizeof(float) * k), *byval = malloc(sizeof(float) * n);
    int *id = malloc(sizeof(int) * n), *bi = malloc(sizeof(int) * k), *want = malloc(sizeof(int) * k);
    for (int i = 0; i < n; i++) id[i] = i;
    for (int i = n - 1; i > 0; i--) { /* ids in no order */
        int j = (int)(urand() % (i + 1)), t = id[i];
        id[i] = id[j], id[j] = t;
    }
    for (int i = 0; i < n; i++) val[i] = (float)(urand() % levels) - levels / 2.0f; /* many ties */
    for (int i = 0; i < n; i++) byval[id[i]] = val[i];
    tk_best(val, id, n, k, bv, bi);
    sorted_best(byval, n, k, want);
    int bad = 0;
    for (int i = 0; i < k; i++) bad += bi[i] != want[i] || !same_bits(bv[i], byval[want[i]]);
    CHECK(!bad, "tk_best n %d k %d levels %d: %d places differ from the sorted order", n, k, levels, bad);
    free(val), free(bv), free(byval), free(id), free(bi), free(want);
}

/* A head of V columns (K inputs, fmt as the exact product reads it) with
 * near ties: pairs of identical columns, and columns one step of a weight
 * apart. R rows of activations. For each int8 path: every row's k best
 * exact logits are among its candidates, and tk_best over the candidates'
 * exact logits gives the k best of the whole row bit for bit. Returns the
 * rows (over the paths) where a screen with zero bounds missed one of
 * them. */
static int test_candidates(int K, int V, int R, int k, int fmt)
{
    char err[ERR_MAX];
    float *w = malloc(sizeof(float) * V * K), *x = malloc(sizeof(float) * R * K);
    float *L = malloc(sizeof(float) * R * V), *S = malloc(sizeof(float) * 2 * R * V);
    float *e = malloc(sizeof(float) * V), *am = malloc(sizeof(float) * V), *zero = calloc(V, sizeof(float));
    float *lo = malloc(sizeof(float) * V), *res = malloc(sizeof(float) * R * K), *cv = malloc(sizeof(float) * V);
    float Pr[8], Qr[8], bv[256];
    int *cand = malloc(sizeof(int) * V), *want = malloc(sizeof(int) * k), bi[256], missed_plain = 0;
    for (int v = 0; v < V; v++) {
        float norm = v % 97 == 0 ? 1.5f : 1.0f; /* a few columns stand out */
        for (int i = 0; i < K; i++) w[(size_t)v * K + i] = frand() * 0.1f * norm;
        if (v % 5 == 1) memcpy(w + (size_t)v * K, w + (size_t)(v - 1) * K, sizeof(float) * K);
        if (v % 5 == 2) {
            memcpy(w + (size_t)v * K, w + (size_t)(v - 2) * K, sizeof(float) * K);
            float *p = w + (size_t)v * K + (v % K);
            *p = fmt == PK_BF16 ? *p * (1 + 0x1p-6f) : nextafterf(*p, INFINITY);
        }
    }
    for (int i = 0; i < R * K; i++) x[i] = frand() * (i % 13 == 0 ? 6.0f : 1.0f);
    pmat q, exact;
    pk_act a = {0};
    CHECK(pk_pack(&q, w, K, V, 1, PK_I8, err) == 0, "pack: %s", err);
    CHECK(pk_pack(&exact, w, K, V, 1, fmt, err) == 0, "pack: %s", err);
    CHECK(pk_act_reserve(&a, PK_I8, 2 * R, K) == 0, "act");
    pk_i8_bounds(&q, w, fmt, 0, q.N, e, am);
    pk_matmul(&exact, L, V, x, K, NULL, R, 0, exact.tiles, 0, NULL);
    for (int path = 0; path <= 2; path++) {
        pk_force_generic = path; /* the fastest int8 product here, the portable one, AVX2 */
        CHECK(tk_quantize(&a, x, R, K, res, Pr, Qr) == 0, "finite rows quantize");
        pk_matmul(&q, S, V, NULL, K, &a, 2 * R, 0, q.tiles, 0, NULL);
        for (int r = 0; r < R; r++) {
            const float *Lr = L + (size_t)r * V, *S1 = S + (size_t)r * V, *S2 = S + (size_t)(R + r) * V;
            int n = tk_candidates(S1, S2, e, am, V, Pr[r], Qr[r], k, lo, cand, V);
            sorted_best(Lr, V, k, want);
            int ok = n >= k, missing = 0, order = 1;
            for (int i = 1; ok && i < n; i++) order &= cand[i] > cand[i - 1];
            for (int i = 0; ok && i < k; i++) {
                int found = 0;
                for (int j = 0; j < n && !found; j++) found = cand[j] == want[i];
                missing += !found;
            }
            CHECK(ok && order && !missing, "K %d V %d k %d fmt %d path %d row %d: %d candidates, "
                  "%d of the %d best missing, ascending %d", K, V, k, fmt, path, r, n, missing, k, order);
            CHECK(n <= V / 4, "K %d V %d k %d: the screen kept %d of %d columns", K, V, k, n, V);
            if (ok) {
                for (int j = 0; j < n; j++) cv[j] = Lr[cand[j]];
                tk_best(cv, cand, n, k, bv, bi);
                int diff = 0;
                for (int i = 0; i < k; i++) diff += bi[i] != want[i] || !same_bits(bv[i], Lr[want[i]]);
                CHECK(!diff, "K %d V %d k %d path %d row %d: %d of the k best differ", K, V, k, path, r, diff);
            }
            /* the same screen trusting the int8 values */
            n = tk_candidates(S1, S2, zero, zero, V, 0, 0, k, lo, cand, V);
            for (int i = 0, gone = 0; i < k && !gone; i++) {
                int found = 0;
                for (int j = 0; j < n && !found; j++) found = cand[j] == want[i];
                if (!found) gone = 1, missed_plain++;
            }
        }
    }
    pk_force_generic = 0;
    /* what the screen cannot vouch for: the caller computes every logit */
    S[7] = NAN;
    CHECK(tk_candidates(S, S + (size_t)R * V, e, am, V, Pr[0], Qr[0], k, lo, cand, V) == -1, "NaN screen");
    S[7] = INFINITY;
    CHECK(tk_candidates(S, S + (size_t)R * V, e, am, V, Pr[0], Qr[0], k, lo, cand, V) == -1, "infinite screen");
    S[7] = 0;
    CHECK(tk_candidates(S, S + (size_t)R * V, e, am, V, Pr[0], Qr[0], k, lo, cand, k - 1 + (k == 1)) == -1 ||
              k == 1,
          "more candidates than room");
    x[3] = NAN;
    CHECK(tk_quantize(&a, x, R, K, res, Pr, Qr) == -1, "a NaN activation");
    pk_free(&q), pk_free(&exact), pk_act_free(&a);
    free(w), free(x), free(L), free(S), free(e), free(am), free(zero), free(lo), free(res), free(cv);
    free(cand), free(want);
    return missed_plain;
}

void topk_tests(void)
{
    int shapes[][2] = {{45, 1}, {64, 17}, {96, 64}, {768, 100}, {63, 130}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int fmt = PK_F32; fmt <= PK_BF16; fmt++) {
            test_pack_rows(shapes[i][0], 300, shapes[i][1], fmt);
            test_i8_bounds(shapes[i][0], 150, fmt);
        }
    int ns[][2] = {{1, 1}, {10, 3}, {500, 1}, {500, 40}, {500, 500}, {3000, 256}};
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
        for (int levels = 3; levels <= 3000; levels *= 10) test_best(ns[i][0], ns[i][1], levels);
    int missed = 0;
    missed += test_candidates(768, 4000, 3, 40, PK_F32);
    missed += test_candidates(768, 4000, 3, 40, PK_BF16);
    missed += test_candidates(96, 2500, 2, 1, PK_F32);
    missed += test_candidates(45, 3001, 8, 256, PK_BF16);
    /* the near ties above are close enough to matter: a screen without
     * bounds loses some of the best (else the checks could not fail) */
    CHECK(missed > 0, "zero bounds lost none of the best: the near ties test nothing");
}

/* topk.c - see topk.h. */
#include "topk.h"

#include <math.h>
#include <stddef.h>

#include "simd.h"

/* P and Q (topk.h) of row x, quantized as rows r and r2 of a. */
static int row_terms(const float *x, const pk_act *a, int r, int r2, int K, float *P, float *Q)
{
    int G = (K + PK_GROUP - 1) / PK_GROUP;
    const int8_t *q = a->q + (size_t)r * G * PK_GROUP, *q2 = a->q + (size_t)r2 * G * PK_GROUP;
    const float *sc = a->scale + (size_t)r * G, *sc2 = a->scale + (size_t)r2 * G;
    double l1 = 0, h1 = 0, d1 = 0; /* |x|_1, |x^|_1 + |x^2|_1, |x - x^ - x^2|_1 */
    for (int i = 0; i < K; i++) {
        double x1 = (double)q[i] * sc[i / PK_GROUP], x2 = (double)q2[i] * sc2[i / PK_GROUP]; /* exact */
        l1 += fabs((double)x[i]);
        h1 += fabs(x1) + fabs(x2);
        d1 += fabs((double)x[i] - x1 - x2);
    }
    if (!isfinite(l1) || !isfinite(d1)) return -1;
    double g = 2.0 * (K + G + 8) * 0x1p-24 * (l1 + h1), widen = 1 + 0x1p-20;
    *P = pk_round_up((l1 + g) * widen);
    *Q = pk_round_up((d1 + g) * widen);
    return isfinite(*P) && isfinite(*Q) ? 0 : -1;
}

int tk_quantize(pk_act *a, const float *x, int n, int K, float *res, float *P, float *Q)
{
    int G = (K + PK_GROUP - 1) / PK_GROUP;
    pk_act_quantize(a, PK_I8, x, 0, n, K, K);
    for (int r = 0; r < n; r++) {
        const int8_t *q = a->q + (size_t)r * G * PK_GROUP;
        const float *sc = a->scale + (size_t)r * G;
        for (int i = 0; i < K; i++)
            res[(size_t)r * K + i] = x[(size_t)r * K + i] - (float)q[i] * sc[i / PK_GROUP];
    }
    pk_act x2 = pk_act_rows(a, K, n);
    pk_act_quantize(&x2, PK_I8, res, 0, n, K, K);
    for (int r = 0; r < n; r++)
        if (row_terms(x + (size_t)r * K, a, r, n + r, K, &P[r], &Q[r]) < 0) return -1;
    return 0;
}

/* How far S may be from the exact logit (topk.h), widened for the rounding
 * of S - d and S + d. b's own rounding (fused or not) is within P and Q's
 * widening. */
static inline float reach(float s, float err, float amax, float P, float Q)
{
    float b = err * P + amax * Q;
    return b + (fabsf(s) + b) * 0x1p-21f + 0x1p-100f;
}

/* The k-th largest of a[0..n) (1 <= k <= n, no NaN); reorders a. */
static float kth_largest(float *a, int n, int k)
{
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi]; /* pivot: median of three */
        float piv = x > y ? (y > z ? y : x > z ? z : x) : (x > z ? x : y > z ? z : y);
        int i = lo, j = hi;
        while (i <= j) { /* larger first: a[lo..j] >= piv >= a[i..hi] */
            while (a[i] > piv) i++;
            while (a[j] < piv) j--;
            if (i <= j) {
                float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return piv; /* between the parts: equal to the pivot */
    }
    return a[want];
}

/* The screen in 8 lanes on every target: in 16, gcc 12 split the
 * comparisons into scalar compares and branches for AVX2 (0.25-0.27 ms a row of
 * 50257 on Zen 3, 3 rows a decode step), and the loop is bound by reading
 * its four arrays (800 KB) more than by its width. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t i8v __attribute__((vector_size(32)));
typedef int32_t i4v __attribute__((vector_size(16)));

/* Whether a lane of m is set. */
AI int any(i8v m)
{
    i4v b = __builtin_shufflevector(m, m, 0, 1, 2, 3) | __builtin_shufflevector(m, m, 4, 5, 6, 7);
    return (b[0] | b[1] | b[2] | b[3]) != 0;
}

/* S + S2 at v, and reach() of it (the vector form of the scalar lines). */
AI v8 screen8(const float *S, const float *S2, const float *err, const float *amax, int v, float P,
              float Q, v8 *reach8)
{
    v8 s = *(const v8u *)(S + v) + *(const v8u *)(S2 + v);
    v8 b = *(const v8u *)(err + v) * P + *(const v8u *)(amax + v) * Q;
    v8 a = (v8)((i8v)s & 0x7fffffff);
    *reach8 = b + (a + b) * 0x1p-21f + 0x1p-100f;
    return s;
}

CLONES
int tk_candidates(const float *S, const float *S2, const float *err, const float *amax, int V,
                  float P, float Q, int k, float *lo, int *cand, int cap)
{
    /* tau, the k-th largest lower bound: lower bounds above the k-th best so
     * far go to lo; when 4k are there, the k best stay. Past the first few
     * hundred columns almost none passes, so a block of 8 mostly costs a
     * few vector operations (a quickselect over the whole row, with its
     * unpredictable branches, took 0.4 ms) */
    float t = -INFINITY;
    int m = 0, v = 0, V8 = V - V % 8;
    i8v bad = {0};
    for (; v < V8; v += 8) {
        v8 r, s = screen8(S, S2, err, amax, v, P, Q, &r), l = s - r;
        bad |= ~((v8)((i8v)s & 0x7fffffff) <= 3.0e38f); /* NaN and infinities */
        if (!any(l > t)) continue;
        for (int i = 0; i < 8; i++) {
            if (!(l[i] > t)) continue;
            lo[m++] = l[i];
            if (m == 4 * k) {
                t = kth_largest(lo, m, k); /* lo[0..k) now holds the k largest */
                m = k;
            }
        }
    }
    int finite = !any(bad);
    for (int u = v; u < V; u++) {
        float s = S[u] + S2[u], l = s - reach(s, err[u], amax[u], P, Q);
        finite &= fabsf(s) <= 3.0e38f;
        if (l > t) {
            lo[m++] = l;
            if (m == 4 * k) {
                t = kth_largest(lo, m, k);
                m = k;
            }
        }
    }
    if (!finite || m < k) return -1;
    float tau = kth_largest(lo, m, k);
    int n = 0;
    for (v = 0; v < V8; v += 8) {
        v8 r, s = screen8(S, S2, err, amax, v, P, Q, &r), h = s + r;
        if (!any(h >= tau)) continue;
        for (int i = 0; i < 8; i++) {
            if (!(h[i] >= tau)) continue;
            if (n == cap) return -1;
            cand[n++] = v + i;
        }
    }
    for (; v < V; v++) {
        float s = S[v] + S2[v];
        if (s + reach(s, err[v], amax[v], P, Q) >= tau) {
            if (n == cap) return -1;
            cand[n++] = v;
        }
    }
    return n;
}

/* Whether (va, ia) comes before (vb, ib): larger value, then smaller id. */
static inline int before(float va, int ia, float vb, int ib) { return va > vb || (va == vb && ia < ib); }

void tk_best(const float *val, const int *id, int n, int k, float *best_val, int *best_id)
{
    /* a heap of the k best so far, the last of them at the root */
    float *hv = best_val;
    int *hi = best_id, m = 0;
    for (int i = 0; i < n; i++) {
        if (m == k && !before(val[i], id[i], hv[0], hi[0])) continue;
        int at;
        if (m < k) { /* sift up from the end */
            at = m++;
            while (at > 0) {
                int p = (at - 1) / 2;
                if (!before(hv[p], hi[p], val[i], id[i])) break;
                hv[at] = hv[p];
                hi[at] = hi[p];
                at = p;
            }
        } else { /* replace the root, sift down */
            at = 0;
            for (;;) {
                int c = 2 * at + 1;
                if (c >= m) break;
                if (c + 1 < m && before(hv[c], hi[c], hv[c + 1], hi[c + 1])) c++; /* the later child */
                if (!before(val[i], id[i], hv[c], hi[c])) break;
                hv[at] = hv[c];
                hi[at] = hi[c];
                at = c;
            }
        }
        hv[at] = val[i];
        hi[at] = id[i];
    }
    for (int i = 1; i < m; i++) { /* best first */
        float v = hv[i];
        int d = hi[i], j = i;
        for (; j > 0 && before(v, d, hv[j - 1], hi[j - 1]); j--) {
            hv[j] = hv[j - 1];
            hi[j] = hi[j - 1];
        }
        hv[j] = v;
        hi[j] = d;
    }
}

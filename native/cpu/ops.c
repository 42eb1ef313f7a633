/* ops.c - see ops.h.
 *
 * Written with GNU vector extensions, so each target_clones variant gets its
 * own width (one zmm, two ymm or four xmm per 16 floats). Multiply-adds are
 * fused (-ffp-contract=fast); no fast-math: the order of every sum is the
 * one written here.
 */
#include "ops.h"


#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

AI float hsum(v16 v)
{
    v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

AI float dot(const float *q, const float *k, int hd)
{
    v16 acc = {0};
    int i = 0;
    for (; i + 16 <= hd; i += 16) acc += *(const v16u *)(q + i) * *(const v16u *)(k + i);
    float t = hsum(acc);
    for (; i < hd; i++) t += q[i] * k[i];
    return t;
}

AI void axpy(float *out, float w, const float *v, int hd)
{
    int i = 0;
    for (; i + 16 <= hd; i += 16) *(v16u *)(out + i) += w * *(const v16u *)(v + i);
    for (; i < hd; i++) out[i] += w * v[i];
}

/* The lanes of a where mask is set, else of b. */
AI v16 blend(i16v mask, v16 a, v16 b) { return (v16)(((i16v)a & mask) | ((i16v)b & ~mask)); }

/* expf for x in [-87, 88] (the callers clamp): 2^n * p(r), r = x - n ln2 in
 * [-ln2/2, ln2/2] (ln2 in two parts, the first exact in few bits), p the
 * degree-7 Taylor polynomial (error within 2 ulp). */
AI v16 vexp(v16 x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    v16 n = (x * 1.44269504088896341f + shifter) - shifter;
    v16 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16 p = (v16){0} + 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    i16v e = (__builtin_convertvector(n, i16v) + 127) << 23;
    return p * (v16)e;
}

CLONES
void mv_softmax(float *s, int n)
{
    float max = -INFINITY, sum = 0;
    for (int p = 0; p < n; p++) max = s[p] > max ? s[p] : max;
    int p = 0;
    v16 acc = {0};
    for (; p + 16 <= n; p += 16) {
        v16 t = *(v16u *)(s + p) - max;
        t = blend(t < -87.0f, (v16){0} - 87.0f, t); /* exp(-87) is 1.6e-38: nothing next to 1 */
        t = vexp(t);
        *(v16u *)(s + p) = t;
        acc += t;
    }
    sum = hsum(acc);
    for (; p < n; p++) {
        float t = s[p] - max;
        sum += s[p] = vexp((v16){t < -87.0f ? -87.0f : t})[0];
    }
    float inv = 1.0f / sum;
    for (p = 0; p < n; p++) s[p] *= inv;
}

/* Any head size, one row at a time: scores into s, softmax, weighted values. */
static inline void attend_row_any(const mv_attn *a, int r, float *s)
{
    int hd = a->hd, n0 = a->n0, n = n0 + a->n1[r];
    const float *q = a->q[r];
    for (int p = 0; p < n; p++)
        s[p] = dot(q, p < n0 ? a->k0 + (size_t)p * a->ld : a->k1[r] + (size_t)(p - n0) * a->ld, hd) *
               a->scale;
    mv_softmax(s, n);
    float *out = a->out[r];
    memset(out, 0, hd * sizeof(float));
    for (int p = 0; p < n; p++)
        axpy(out, s[p], p < n0 ? a->v0 + (size_t)p * a->ld : a->v1[r] + (size_t)(p - n0) * a->ld, hd);
}

/* Scores of row r's query (HDV vectors in registers) against keys k. */
AI float score(const v16 *qv, const float *k, const int HDV)
{
    v16 acc = qv[0] * *(const v16u *)k;
    for (int v = 1; v < HDV; v++) acc += qv[v] * *(const v16u *)(k + 16 * v);
    return hsum(acc);
}

/* R rows whose heads are HDV whole vectors of 16: every shared key and value
 * is loaded once for all rows, the queries and the R x HDV output sums stay
 * in registers. s: R rows of S scores. */
AI void attend_rows(const mv_attn *a, float *s, const int R, const int HDV)
{
    int n0 = a->n0, S = 0;
    for (int r = 0; r < R; r++) S = a->n1[r] > S ? a->n1[r] : S;
    S += n0;
    v16 qv[MV_ATTN_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < HDV; v++) qv[r][v] = *(const v16u *)(a->q[r] + 16 * v);
    for (int p = 0; p < n0; p++) {
        const float *k = a->k0 + (size_t)p * a->ld;
        for (int r = 0; r < R; r++) s[r * S + p] = score(qv[r], k, HDV) * a->scale;
    }
    for (int r = 0; r < R; r++) {
        for (int p = 0; p < a->n1[r]; p++)
            s[r * S + n0 + p] = score(qv[r], a->k1[r] + (size_t)p * a->ld, HDV) * a->scale;
        mv_softmax(s + r * S, n0 + a->n1[r]);
    }
    v16 o[MV_ATTN_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int u = 0; u < HDV; u++) o[r][u] = (v16){0};
    for (int p = 0; p < n0; p++) {
        const float *v = a->v0 + (size_t)p * a->ld;
        for (int r = 0; r < R; r++)
            for (int u = 0; u < HDV; u++) o[r][u] += s[r * S + p] * *(const v16u *)(v + 16 * u);
    }
    for (int r = 0; r < R; r++) {
        for (int p = 0; p < a->n1[r]; p++) {
            const float *v = a->v1[r] + (size_t)p * a->ld;
            for (int u = 0; u < HDV; u++) o[r][u] += s[r * S + n0 + p] * *(const v16u *)(v + 16 * u);
        }
        for (int u = 0; u < HDV; u++) *(v16u *)(a->out[r] + 16 * u) = o[r][u];
    }
}

AI void attend_hdv(const mv_attn *a, const int HDV)
{
    switch (a->R) {
    case 1: attend_rows(a, a->s, 1, HDV); break;
    case 2: attend_rows(a, a->s, 2, HDV); break;
    case 3: attend_rows(a, a->s, 3, HDV); break;
    default: attend_rows(a, a->s, 4, HDV); break;
    }
}

CLONES
void mv_attend(const mv_attn *a)
{
    switch (a->hd) { /* GPT-2's sizes all have 64-float heads */
    case 16: attend_hdv(a, 1); break;
    case 32: attend_hdv(a, 2); break;
    case 48: attend_hdv(a, 3); break;
    case 64: attend_hdv(a, 4); break;
    default:
        for (int r = 0; r < a->R; r++) attend_row_any(a, r, a->s);
    }
}

CLONES
void mv_gelu_tanh(float *x, int n)
{
    const float c = 0.7978845608028654f;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 v = *(v16u *)(x + i);
        v16 t = -2.0f * c * (v + 0.044715f * v * v * v);
        t = blend(t < -87.0f, (v16){0} - 87.0f, t);
        t = blend(t > 88.0f, (v16){0} + 88.0f, t);
        *(v16u *)(x + i) = v / (1.0f + vexp(t));
    }
    for (; i < n; i++) {
        float t = -2.0f * c * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
        t = t < -87.0f ? -87.0f : t > 88.0f ? 88.0f : t;
        x[i] = x[i] / (1.0f + mv_exp(t));
    }
}

float mv_exp(float x)
{
    v16 v = {x};
    return vexp(v)[0];
}

/* matvec.c - see matvec.h.
 *
 * The [in, out] product streams the weight rows in order (what the hardware
 * prefetcher and the TLB like best) and keeps blocks of results in vector
 * registers (GNU vector extensions, so each target_clones variant gets its
 * own width: one zmm, two ymm or four xmm per 16 floats). Every weight is
 * loaded once per call. Each output sums its terms in input order; no
 * fast-math.
 */
#include "matvec.h"

#pragma GCC diagnostic ignored "-Wpsabi" /* vectors in always_inline helpers only */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4))); /* unaligned access */

#define COLS 32 /* output columns per register block: 2 vectors of 16 */
#define DEPTH 4 /* weight rows per pass over the output block */

typedef uint16_t v16h __attribute__((vector_size(32), aligned(2)));
typedef uint32_t v16w __attribute__((vector_size(64)));
typedef int8_t v16b __attribute__((vector_size(16)));
typedef int16_t v16s __attribute__((vector_size(32)));
typedef int32_t v16i __attribute__((vector_size(64)));

/* Weight formats: fp32; bf16 (the top half of an fp32: widening is exact);
 * int8 with one fp32 scale per output column ([in, out] matrices) or per row
 * (the embedding), applied by the caller of load16/load1. */
enum { F32 = 0, BF16 = 1, I8 = 2 };

/* 16 weights at w[i..], widened to fp32 (int8: not yet scaled). */
static inline __attribute__((always_inline)) v16 load16(const void *w, size_t i, const int fmt)
{
    if (fmt == F32) return *(const v16u *)((const float *)w + i);
    if (fmt == I8) { /* through memcpy and int32: otherwise gcc converts byte by byte */
        v16b b;
        memcpy(&b, (const int8_t *)w + i, sizeof b);
        return __builtin_convertvector(__builtin_convertvector(__builtin_convertvector(b, v16s), v16i), v16);
    }
    v16w u = __builtin_convertvector(*(const v16h *)((const uint16_t *)w + i), v16w) << 16;
    return (v16)u; /* a vector cast reinterprets the bits */
}

static inline __attribute__((always_inline)) float load1(const void *w, size_t i, const int fmt)
{
    if (fmt == F32) return ((const float *)w)[i];
    if (fmt == I8) return (float)((const int8_t *)w)[i];
    uint32_t u = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* out[r][c0..c0+32) += sum over the DEPTH weight rows starting at i;
 * sc: int8 column scales. */
static inline __attribute__((always_inline)) void
block(float *out, int ldo, const float *x, int I, const void *w, const float *sc, int ldw, int i,
      int c0, const int R, const int fmt)
{
    v16 w0[DEPTH], w1[DEPTH];
    for (int d = 0; d < DEPTH; d++) {
        w0[d] = load16(w, (size_t)(i + d) * ldw + c0, fmt);
        w1[d] = load16(w, (size_t)(i + d) * ldw + c0 + 16, fmt);
    }
    if (fmt == I8) {
        v16 s0 = *(const v16u *)(sc + c0), s1 = *(const v16u *)(sc + c0 + 16);
        for (int d = 0; d < DEPTH; d++) {
            w0[d] *= s0;
            w1[d] *= s1;
        }
    }
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * ldo + c0;
        const float *xr = x + (size_t)r * I + i;
        v16 a0 = *(v16u *)o, a1 = *(v16u *)(o + 16);
        for (int d = 0; d < DEPTH; d++) {
            a0 += xr[d] * w0[d];
            a1 += xr[d] * w1[d];
        }
        *(v16u *)o = a0;
        *(v16u *)(o + 16) = a1;
    }
}

/* The same for one weight row and any column range (tails). */
static inline __attribute__((always_inline)) void
row_tail(float *out, int ldo, const float *x, int R, int I, const void *w, const float *sc,
         int ldw, int i, int c0, int c1, const int fmt)
{
    for (int r = 0; r < R; r++) {
        float xv = x[(size_t)r * I + i], *o = out + (size_t)r * ldo;
        for (int c = c0; c < c1; c++)
            o[c] += xv * load1(w, (size_t)i * ldw + c, fmt) * (fmt == I8 ? sc[c] : 1.0f);
    }
}

/* Walk the weights row-block by row-block: each pass streams DEPTH
 * contiguous row segments once, the R x 32 results stay in registers for a
 * block and in L1 between blocks. */
static inline __attribute__((always_inline)) void
sweep(float *out, int ldo, const float *x, int I, const void *w, const float *sc, int ldw,
      int o0, int o1, const int R, const int fmt)
{
    int cend = o0 + (o1 - o0) / COLS * COLS, i = 0;
    for (; i + DEPTH <= I; i += DEPTH) {
        for (int c = o0; c < cend; c += COLS) block(out, ldo, x, I, w, sc, ldw, i, c, R, fmt);
        for (int d = 0; d < DEPTH && cend < o1; d++)
            row_tail(out, ldo, x, R, I, w, sc, ldw, i + d, cend, o1, fmt);
    }
    for (; i < I; i++) row_tail(out, ldo, x, R, I, w, sc, ldw, i, o0, o1, fmt);
}

static inline __attribute__((always_inline)) void
in_out(float *out, int ldo, const float *x, int R, int I, const void *w, const float *sc,
       int ldw, int o0, int o1, int accumulate, const int fmt)
{
    if (!accumulate)
        for (int r = 0; r < R; r++) memset(out + (size_t)r * ldo + o0, 0, (o1 - o0) * sizeof(float));
    for (int r = 0; r < R; r += 4) { /* a constant R lets the block live in registers */
        const float *xr = x + (size_t)r * I;
        float *orow = out + (size_t)r * ldo;
        switch (R - r < 4 ? R - r : 4) {
        case 1: sweep(orow, ldo, xr, I, w, sc, ldw, o0, o1, 1, fmt); break;
        case 2: sweep(orow, ldo, xr, I, w, sc, ldw, o0, o1, 2, fmt); break;
        case 3: sweep(orow, ldo, xr, I, w, sc, ldw, o0, o1, 3, fmt); break;
        default: sweep(orow, ldo, xr, I, w, sc, ldw, o0, o1, 4, fmt); break;
        }
    }
}

CLONES
void mv_in_out(float *out, int ldo, const float *x, int R, int I, const float *w, int ldw,
               int o0, int o1, int accumulate)
{
    in_out(out, ldo, x, R, I, w, NULL, ldw, o0, o1, accumulate, F32);
}

CLONES
void mv_in_out_bf16(float *out, int ldo, const float *x, int R, int I, const uint16_t *w,
                    int ldw, int o0, int o1, int accumulate)
{
    in_out(out, ldo, x, R, I, w, NULL, ldw, o0, o1, accumulate, BF16);
}

CLONES
void mv_in_out_i8(float *out, int ldo, const float *x, int R, int I, const int8_t *w,
                  const float *scale, int ldw, int o0, int o1, int accumulate)
{
    in_out(out, ldo, x, R, I, w, scale, ldw, o0, o1, accumulate, I8);
}

static inline __attribute__((always_inline)) float dot(const float *a, const void *b, int n,
                                                       const int fmt)
{
    v16 acc = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16) acc += *(const v16u *)(a + i) * load16(b, i, fmt);
    float s = 0;
    for (; i < n; i++) s += a[i] * load1(b, i, fmt);
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

CLONES
float mv_dot(const float *a, const float *b, int n) { return dot(a, b, n, F32); }

CLONES
void mv_axpy(float *out, float s, const float *x, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16) *(v16u *)(out + i) += s * *(const v16u *)(x + i);
    for (; i < n; i++) out[i] += s * x[i];
}

CLONES
void mv_out_in(float *out, int ldo, const float *x, int R, int I, const float *w, int o0,
               int o1)
{
    for (int o = o0; o < o1; o++)
        for (int r = 0; r < R; r++)
            out[(size_t)r * ldo + o] = dot(x + (size_t)r * I, w + (size_t)o * I, I, F32);
}

CLONES
void mv_out_in_bf16(float *out, int ldo, const float *x, int R, int I, const uint16_t *w,
                    int o0, int o1)
{
    for (int o = o0; o < o1; o++)
        for (int r = 0; r < R; r++)
            out[(size_t)r * ldo + o] = dot(x + (size_t)r * I, w + (size_t)o * I, I, BF16);
}

void mv_to_bf16(uint16_t *out, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        out[i] = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); /* nearest, ties even */
    }
}

void mv_from_bf16(float *out, const uint16_t *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)w[i] << 16;
        memcpy(&out[i], &u, sizeof u);
    }
}

CLONES
void mv_out_in_i8(float *out, int ldo, const float *x, int R, int I, const int8_t *w,
                  const float *scale, int o0, int o1)
{
    for (int o = o0; o < o1; o++)
        for (int r = 0; r < R; r++)
            out[(size_t)r * ldo + o] = scale[o] * dot(x + (size_t)r * I, w + (size_t)o * I, I, I8);
}

/* Symmetric int8 of one group of n values strided by `step`: the scale
 * maps the largest |value| to 127. */
static float quantize(int8_t *q, const float *w, size_t n, size_t step)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fabsf(w[i * step]) > m ? fabsf(w[i * step]) : m;
    float s = m > 0 ? m / 127.0f : 1.0f, inv = 1.0f / s;
    for (size_t i = 0; i < n; i++) q[i * step] = (int8_t)lrintf(w[i * step] * inv);
    return s;
}

void mv_quantize_cols(int8_t *q, float *scale, const float *w, int I, int O)
{
    for (int o = 0; o < O; o++) scale[o] = quantize(q + o, w + o, (size_t)I, (size_t)O);
}

void mv_quantize_rows(int8_t *q, float *scale, const float *w, int rows, int cols)
{
    for (int r = 0; r < rows; r++)
        scale[r] = quantize(q + (size_t)r * cols, w + (size_t)r * cols, (size_t)cols, 1);
}

void mv_from_i8(float *out, const int8_t *q, const float *scale, size_t n, int per_element)
{
    for (size_t i = 0; i < n; i++) out[i] = (float)q[i] * scale[per_element ? i : 0];
}

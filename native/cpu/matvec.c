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

#include <stdint.h>
#include <string.h>

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4))); /* unaligned access */

#define COLS 32 /* output columns per register block: 2 vectors of 16 */
#define DEPTH 4 /* weight rows per pass over the output block */

typedef uint16_t v16h __attribute__((vector_size(32), aligned(2)));
typedef uint32_t v16w __attribute__((vector_size(64)));

/* 16 weights at w[i..]: fp32, or bf16 widened (bf16 is the top half of an
 * fp32, so widening is exact). */
static inline __attribute__((always_inline)) v16 load16(const void *w, size_t i, const int bf)
{
    if (!bf) return *(const v16u *)((const float *)w + i);
    v16w u = __builtin_convertvector(*(const v16h *)((const uint16_t *)w + i), v16w) << 16;
    return (v16)u; /* a vector cast reinterprets the bits */
}

static inline __attribute__((always_inline)) float load1(const void *w, size_t i, const int bf)
{
    if (!bf) return ((const float *)w)[i];
    uint32_t u = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* out[r][c0..c0+32) += sum over the DEPTH weight rows starting at i. */
static inline __attribute__((always_inline)) void
block(float *out, int ldo, const float *x, int I, const void *w, int ldw, int i, int c0,
      const int R, const int bf)
{
    v16 w0[DEPTH], w1[DEPTH];
    for (int d = 0; d < DEPTH; d++) {
        w0[d] = load16(w, (size_t)(i + d) * ldw + c0, bf);
        w1[d] = load16(w, (size_t)(i + d) * ldw + c0 + 16, bf);
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
row_tail(float *out, int ldo, const float *x, int R, int I, const void *w, int ldw, int i,
         int c0, int c1, const int bf)
{
    for (int r = 0; r < R; r++) {
        float xv = x[(size_t)r * I + i], *o = out + (size_t)r * ldo;
        for (int c = c0; c < c1; c++) o[c] += xv * load1(w, (size_t)i * ldw + c, bf);
    }
}

/* Walk the weights row-block by row-block: each pass streams DEPTH
 * contiguous row segments once, the R x 32 results stay in registers for a
 * block and in L1 between blocks. */
static inline __attribute__((always_inline)) void
sweep(float *out, int ldo, const float *x, int I, const void *w, int ldw, int o0, int o1,
      const int R, const int bf)
{
    int cend = o0 + (o1 - o0) / COLS * COLS, i = 0;
    for (; i + DEPTH <= I; i += DEPTH) {
        for (int c = o0; c < cend; c += COLS) block(out, ldo, x, I, w, ldw, i, c, R, bf);
        for (int d = 0; d < DEPTH && cend < o1; d++)
            row_tail(out, ldo, x, R, I, w, ldw, i + d, cend, o1, bf);
    }
    for (; i < I; i++) row_tail(out, ldo, x, R, I, w, ldw, i, o0, o1, bf);
}

static inline __attribute__((always_inline)) void
in_out(float *out, int ldo, const float *x, int R, int I, const void *w, int ldw, int o0,
       int o1, int accumulate, const int bf)
{
    if (!accumulate)
        for (int r = 0; r < R; r++) memset(out + (size_t)r * ldo + o0, 0, (o1 - o0) * sizeof(float));
    for (int r = 0; r < R; r += 4) { /* a constant R lets the block live in registers */
        const float *xr = x + (size_t)r * I;
        float *orow = out + (size_t)r * ldo;
        switch (R - r < 4 ? R - r : 4) {
        case 1: sweep(orow, ldo, xr, I, w, ldw, o0, o1, 1, bf); break;
        case 2: sweep(orow, ldo, xr, I, w, ldw, o0, o1, 2, bf); break;
        case 3: sweep(orow, ldo, xr, I, w, ldw, o0, o1, 3, bf); break;
        default: sweep(orow, ldo, xr, I, w, ldw, o0, o1, 4, bf); break;
        }
    }
}

CLONES
void mv_in_out(float *out, int ldo, const float *x, int R, int I, const float *w, int ldw,
               int o0, int o1, int accumulate)
{
    in_out(out, ldo, x, R, I, w, ldw, o0, o1, accumulate, 0);
}

CLONES
void mv_in_out_bf16(float *out, int ldo, const float *x, int R, int I, const uint16_t *w,
                    int ldw, int o0, int o1, int accumulate)
{
    in_out(out, ldo, x, R, I, w, ldw, o0, o1, accumulate, 1);
}

static inline __attribute__((always_inline)) float dot(const float *a, const void *b, int n,
                                                       const int bf)
{
    v16 acc = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16) acc += *(const v16u *)(a + i) * load16(b, i, bf);
    float s = 0;
    for (; i < n; i++) s += a[i] * load1(b, i, bf);
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

CLONES
float mv_dot(const float *a, const float *b, int n) { return dot(a, b, n, 0); }

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
            out[(size_t)r * ldo + o] = dot(x + (size_t)r * I, w + (size_t)o * I, I, 0);
}

CLONES
void mv_out_in_bf16(float *out, int ldo, const float *x, int R, int I, const uint16_t *w,
                    int o0, int o1)
{
    for (int o = o0; o < o1; o++)
        for (int r = 0; r < R; r++)
            out[(size_t)r * ldo + o] = dot(x + (size_t)r * I, w + (size_t)o * I, I, 1);
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

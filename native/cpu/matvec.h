/* matvec.h - products of a few rows (decode: one row per continuation) with
 * a weight matrix, streaming the weights once. BLAS sgemm packs its B operand
 * on every call, which for 1-8 rows costs more than the product itself;
 * these loops read each weight exactly once and run near memory bandwidth.
 * The best SIMD variant for the CPU is picked at load (gcc target_clones).
 */
#ifndef GPT2_MATVEC_H
#define GPT2_MATVEC_H

#define MV_MAX_ROWS 8

/* out (R, ldo)[:, o0:o1] (+)= x (R, I) @ w (I, ldw)[:, o0:o1]   (HF [in, out]) */
void mv_in_out(float *out, int ldo, const float *x, int R, int I, const float *w, int ldw,
               int o0, int o1, int accumulate);

/* out (R, ldo)[:, o0:o1] = x (R, I) @ w[o0:o1, :]^T, w (O, I)   (embedding rows) */
void mv_out_in(float *out, int ldo, const float *x, int R, int I, const float *w, int o0,
               int o1);

/* Dot product of a[0..n) and b[0..n) with 16 independent partial sums. */
float mv_dot(const float *a, const float *b, int n);

/* out[0..n) += s * x[0..n) */
void mv_axpy(float *out, float s, const float *x, int n);

#endif

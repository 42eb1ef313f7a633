/* matvec.h - products of a few rows (decode: one row per continuation) with
 * a weight matrix, streaming the weights once. BLAS sgemm packs its B operand
 * on every call, which for 1-8 rows costs more than the product itself;
 * these loops read each weight exactly once and run near memory bandwidth.
 * The best SIMD variant for the CPU is picked at load (gcc target_clones).
 */
#ifndef GPT2_MATVEC_H
#define GPT2_MATVEC_H

#include <stddef.h>
#include <stdint.h>

#define MV_MAX_ROWS 8

/* out (R, ldo)[:, o0:o1] (+)= x (R, I) @ w (I, ldw)[:, o0:o1]   (HF [in, out]) */
void mv_in_out(float *out, int ldo, const float *x, int R, int I, const float *w, int ldw,
               int o0, int o1, int accumulate);

/* out (R, ldo)[:, o0:o1] = x (R, I) @ w[o0:o1, :]^T, w (O, I)   (embedding rows) */
void mv_out_in(float *out, int ldo, const float *x, int R, int I, const float *w, int o0,
               int o1);

/* The same with bf16 weights (the top halves of fp32 values). */
void mv_in_out_bf16(float *out, int ldo, const float *x, int R, int I, const uint16_t *w,
                    int ldw, int o0, int o1, int accumulate);
void mv_out_in_bf16(float *out, int ldo, const float *x, int R, int I, const uint16_t *w,
                    int o0, int o1);

/* The same with int8 weights: w[i][o] = q[i][o] * scale[o] (in_out), or
 * w[o][i] = q[o][i] * scale[o] (out_in). */
void mv_in_out_i8(float *out, int ldo, const float *x, int R, int I, const int8_t *w,
                  const float *scale, int ldw, int o0, int o1, int accumulate);
void mv_out_in_i8(float *out, int ldo, const float *x, int R, int I, const int8_t *w,
                  const float *scale, int o0, int o1);

/* Symmetric int8 with one scale per column of w (I, O), or per row of w
 * (rows, cols): the largest |w| of the group maps to 127. */
void mv_quantize_cols(int8_t *q, float *scale, const float *w, int I, int O);
void mv_quantize_rows(int8_t *q, float *scale, const float *w, int rows, int cols);

/* out[i] = q[i] * scale[per_element ? i : 0] for i < n. */
void mv_from_i8(float *out, const int8_t *q, const float *scale, size_t n, int per_element);

/* out[0..n) = w widened from bf16 to fp32 (exact). */
void mv_from_bf16(float *out, const uint16_t *w, size_t n);

/* out[0..n) = x rounded to bf16 (nearest, ties to even; finite inputs). */
void mv_to_bf16(uint16_t *out, const float *x, size_t n);

/* Dot product of a[0..n) and b[0..n) with 16 independent partial sums. */
float mv_dot(const float *a, const float *b, int n);

/* out[0..n) += s * x[0..n) */
void mv_axpy(float *out, float s, const float *x, int n);

#endif

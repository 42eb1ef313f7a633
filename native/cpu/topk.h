/* topk.h - the k best logits of a decode row without the whole head.
 *
 * Sampling looks only at the top_k best logits (40 by default), yet the
 * head (the tied embedding, C x vocab) is the largest matrix a decode step
 * streams: 154 MB of 495 in fp32, 77 of 247 in bf16. So forward.c screens
 * with an int8 copy of it (38.6 MB) and computes exactly, with the same
 * kernel as the whole product, only the columns the screen cannot rule out.
 *
 * The screen is exact, not a guess. The row x is quantized to int8 twice:
 * x1 (per group of 64, as every int8 product does), then what it left,
 * x2 = int8(x - x1), so the screen S = q (x1 + x2), as two rows of one
 * int8 product, is off by the weights' rounding but hardly by x's. For a
 * column v with exact logit L (the product's fp32 result), |L - S| <= B:
 *   B = err_v * P + amax_v * Q
 *   err_v   >= max |w - q| over v's inputs (w as the head holds them, q
 *              the dequantized int8 weight; pk_i8_bounds),
 *   amax_v  >= max |q|,
 *   P = |x|_1 + g, Q = |x - x1 - x2|_1 + g, g = gamma (|x|_1 + |x1|_1 +
 *              |x2|_1), gamma = 2 (K + groups + 8) 2^-24 bounding the
 *              rounding of the fp32 sums on both sides,
 * because L - S = sum (w - q) x + sum q (x - x1 - x2) + rounding. Let tau
 * be the k-th largest S - B: k columns have L >= tau, so a column with
 * S + B < tau has L < tau, below all k of them, and is not among the k
 * best. The rest (candidates) get exact logits; their k best (larger
 * logit, then smaller id) are the whole row's, bit for bit. Each bound is
 * rounded up, and S - B, S + B widened by 2^-21 (|S| + B) + 2^-100 for
 * their own rounding (and that of subnormal scales).
 *
 * On the bench's gpt2-shaped random checkpoint (40 best) a row keeps
 * about 250-350 candidates of 50257. With one quantization of x alone,
 * |x - x1|_1 made B about 2.5 times as wide and (in a numpy model of the
 * screen) left about ten times as many. Real weights, with their outlier
 * columns, may keep more; forward.c rests the screen when it keeps
 * missing.
 */
#ifndef GPT2_TOPK_H
#define GPT2_TOPK_H

#include "packed.h"

/* n rows x (K floats each) in the form the screen reads: x1 in rows 0..n
 * of a (reserved for 2n rows of K, PK_I8), x2 = int8(x - x1) in rows
 * n..2n (res: scratch for n K floats), and each row's P and Q above,
 * rounded up. -1 when a row is not finite (the caller computes every
 * logit then). The screen is then pk_matmul of the int8 head with a's 2n
 * rows: S (row r) and S2 (row n + r). */
int tk_quantize(pk_act *a, const float *x, int n, int K, float *res, float *P, float *Q);

/* The columns of one row that may be among its k best: ascending ids into
 * cand (at most cap), from its screen S + S2 (the products with x1 and x2,
 * V columns each) and the per column bounds err, amax. lo: scratch for V
 * floats. The count, or -1 when there are more than cap or S + S2 is not
 * finite somewhere. */
int tk_candidates(const float *S, const float *S2, const float *err, const float *amax, int V,
                  float P, float Q, int k, float *lo, int *cand, int cap);

/* The k best of n (val[i], id[i]) pairs (k <= n), best first: larger value,
 * then smaller id (the GPU's and sample_candidates' order). */
void tk_best(const float *val, const int *id, int n, int k, float *best_val, int *best_id);

#endif

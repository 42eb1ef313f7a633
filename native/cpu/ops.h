/* ops.h - the CPU pass's vector loops besides the matrix products
 * (packed.h): attention of a few query rows over their caches, and the
 * activations, with the SIMD width picked at load (gcc target_clones).
 */
#ifndef GPT2_OPS_H
#define GPT2_OPS_H

/* Rows up to this count take the matrix-vector path (decode). */
#define MV_MAX_ROWS 8

/* Query rows one attention call serves (rows sharing a context go together). */
#define MV_ATTN_ROWS 4

/* Attention for one head of R query rows that share a context of n0
 * positions (keys k0, values v0) and each have n1[r] positions of their own
 * (k1[r], v1[r]) after it. Rows of keys/values are ld floats apart; each
 * vector is hd floats. Scores are q.k * scale, softmaxed over the n0 + n1[r]
 * positions; out[r] = their weighted sum of values. s: scratch of
 * R * (n0 + max n1) floats. */
typedef struct {
    int R, hd, ld;
    const float *q[MV_ATTN_ROWS];
    float *out[MV_ATTN_ROWS];
    const float *k0, *v0;
    int n0;
    const float *k1[MV_ATTN_ROWS], *v1[MV_ATTN_ROWS];
    int n1[MV_ATTN_ROWS];
    float scale;
    float *s;
} mv_attn;

void mv_attend(const mv_attn *a);

/* s[0..n) = softmax(s), the exponentials vectorised (within 2 ulp of expf). */
void mv_softmax(float *s, int n);

/* x[0..n) = gelu_tanh(x) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3):
 * the tanh form of GELU rewritten with one exponential (a polynomial within
 * 2 ulp of expf). */
void mv_gelu_tanh(float *x, int n);

/* The exponential used by mv_gelu_tanh, one value (for the unit test). */
float mv_exp(float x);

#endif

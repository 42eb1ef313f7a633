/* ops.h - the CPU pass's vector loops besides the matrix products
 * (packed.h): attention of a few query rows over their caches, and the
 * activations, with the SIMD width picked at load (gcc target_clones).
 */
#ifndef GPT2_OPS_H
#define GPT2_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Rows up to this count take the matrix-vector path (decode). */
#define MV_MAX_ROWS 8

/* Query rows one attention call serves (rows sharing a context go together). */
#define MV_ATTN_ROWS 4

/* Element types of cached keys and values: floats, IEEE half floats
 * (uint16_t), or int8 with one scale per position (hd elements): element
 * = scale * q, q in -127..127 (mv_to_i8). */
enum { MV_F32, MV_F16, MV_I8 };

/* Attention for one head of R query rows that share a context of n0
 * positions (keys k0, values v0) and each have n1[r] positions of their own
 * (k1[r], v1[r]) after it (n0 + n1[r] > 0). Rows of keys/values are ld elements apart; each
 * vector is hd elements of type elt; int8 ones have their scales in ks0,
 * vs0, ks1[r], vs1[r] (one per position, 1 apart). Scores are q.k * scale,
 * softmaxed over the n0 + n1[r] positions; out[r] = their weighted sum of
 * values. s: scratch of R * (n0 + max n1) floats. */
typedef struct {
    int R, hd, ld, elt;
    const float *q[MV_ATTN_ROWS];
    float *out[MV_ATTN_ROWS];
    const void *k0, *v0;
    const float *ks0, *vs0;
    int n0;
    const void *k1[MV_ATTN_ROWS], *v1[MV_ATTN_ROWS];
    const float *ks1[MV_ATTN_ROWS], *vs1[MV_ATTN_ROWS];
    int n1[MV_ATTN_ROWS];
    float scale;
    float *s;
    float *w; /* half and int8: scratch of mv_attn_wide(hd) floats */
} mv_attn;

/* Half and int8 keys and values are widened MV_KV_CHUNK floats at a time
 * (at least one position): the floats of scratch that takes. 64-float heads
 * on AVX-512 (GPT-2's) read them in place, widened in registers (the scores
 * then fold 8 keys at a time, so their sums differ in order), and so do
 * 64-float heads of floats or half floats on AVX2 without AVX-512. */
#define MV_KV_CHUNK 2048
#define mv_attn_wide(hd) ((hd) > MV_KV_CHUNK ? (size_t)(hd) : (size_t)MV_KV_CHUNK)

void mv_attend(const mv_attn *a);

/* Half floats (IEEE binary16) for keys and values: half the bytes that
 * attention streams per step, converted exactly back to fp32 in registers.
 * mv_half_fast: whether this CPU converts in hardware (x86 F16C, or any
 * AArch64); the portable loops elsewhere are correct but slow.
 * mv_to_half rounds to nearest even and clamps finite values to +-65504
 * (no overflow to infinity); NaN stays NaN. */
int mv_half_fast(void);
void mv_to_half(uint16_t *dst, const float *src, size_t n);
void mv_from_half(float *dst, const uint16_t *src, size_t n);

/* One position's n elements as int8 and their scale: amax / 127 of the
 * finite ones (0 when all are 0), each q = x * (127 / amax) rounded to
 * nearest even and clamped to +-127 (infinities clamp, NaN becomes 0; all
 * 0 when nothing is finite).
 * Within about half a step (amax / 254) of x. mv_from_i8: n positions of
 * hd elements back, scales[p] * q, exactly. */
void mv_to_i8(int8_t *dst, float *scale, const float *src, int n);
void mv_from_i8(float *dst, const int8_t *src, const float *scales, int n, int hd);

/* Whether decode attention reads int8 keys and values of hd-element heads
 * in place here (AVX-512 or AVX2 with FMA and F16C, 64-element heads);
 * elsewhere they are widened through scratch, correct but slower than half
 * floats. */
int mv_i8_fast(int hd);

/* Keys k (n positions of hd elements of type elt; int8 ones times their
 * scales ks, a position apart) transposed: t[d * ld + p] = k[p][d] for positions up to n rounded up to
 * 16, zeros past n (ld at least that). In 16 x 16 blocks in registers on
 * AVX-512 (hd a multiple of 16), 8 x 8 on AVX2 (of 8), widened as read. */
void mv_keys_t(float *t, size_t ld, const void *k, const float *ks, int elt, int n, int hd);

/* For the unit test (and GPT2_CPU_ISA): 0 the fastest kernels here, 1 no
 * wider than AVX2 and F16C, 2 the portable loops. */
extern int mv_half_path;

/* out[0..C) = (x - mean) / sqrt(var + eps) * w + b over x[0..C): sums in
 * fp32, 16 lanes then across them, the variance from a second pass. */
void mv_layernorm(float *out, const float *x, const float *w, const float *b, int C, float eps);

/* o[0..n) += b[0..n). */
void mv_add(float *o, const float *b, int n);

/* s[0..n) = softmax(s), the exponentials vectorised (within 2 ulp of expf). */
void mv_softmax(float *s, int n);

/* x[0..n) = gelu_tanh(x) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3):
 * the tanh form of GELU rewritten with one exponential (a polynomial within
 * 2 ulp of expf). */
void mv_gelu_tanh(float *x, int n);

/* The exponential used by mv_gelu_tanh, one value (for the unit test). */
float mv_exp(float x);

#endif

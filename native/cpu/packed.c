/* packed.c - see packed.h.
 *
 * Tile layouts (PK_TILE = 64 columns, c below):
 *   fp32: [K][64] values.
 *   bf16: [K/2][64 c][2 k] (K rounded up to even): each 32-bit word holds
 *         inputs 2i and 2i+1 of one column, so a word widens to two fp32
 *         weights with one shift and one mask, no conversion; and 16 words
 *         are what one vdpbf16ps takes against a broadcast pair of bf16
 *         activations (prompts on AVX-512 BF16).
 *   int8: per group g of 64 inputs, 16 quads of inputs [16][64 c][4 k]
 *         bytes (what one vpdpbusd consumes: 4 consecutive inputs of 16
 *         columns per 64-byte load), then [64] scales as fp16, 4224 bytes a
 *         group. 64 rather than 32 inputs: the rescale that ends a group
 *         (a multiply and a multiply-add per 16 sums, on the pipes vpdpbusd
 *         uses) comes half as often in a prompt, and 3% fewer bytes a
 *         decode step; the error is a little larger (measured in README).
 *         The scales are stored times 2^e, one e per matrix putting its
 *         largest in [2^14, 2^15): fp16's 11 bits then hold every scale
 *         within a few hundred times smaller than that to 2^-11 (the int8
 *         steps are 2^-7); the products multiply e back out (pmat.unscale)
 *         with the activations' scale.
 *
 * The float kernels keep R x 64 sums in registers (GNU vectors, one
 * target_clones variant per SIMD width); the int8 kernel sums each group in
 * int32 and adds it, scaled, to fp32 sums in the same order on every path,
 * so the VNNI and portable loops agree exactly.
 */
#include "packed.h"

#include "../common.h"
#include "amx.h"
#include "ops.h"


#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "simd.h"

typedef uint32_t v16w __attribute__((vector_size(64)));

#define QUADS (PK_GROUP / 4)
#define GROUP_W PK_GROUP_W         /* weight bytes of a group: 4096 */
#define GROUP_BYTES PK_GROUP_BYTES /* + the fp16 scales: 4224 */
#define RB_F 4 /* rows per pass, float kernels: 16 sums + 4 weights in registers */
#define RB_Q 3 /* int8: 12 fp32 sums + 12 int32 sums + 4 weights */
#define RB_D 6 /* bf16 activations: 24 sums + 4 weights + 1 input pair */

int pk_force_generic;
int pk_amx_off;

/* Decode streams every tile from memory, with R rows of work per line, and
 * the hardware prefetchers alone did not keep enough misses in flight. So
 * each kernel, as it loads a line, fetches the line PF_NEAR bytes on into
 * L1 (prefetcht0) and the one PF_FAR bytes on into L2 (prefetcht2). On a
 * 2-core Xeon (KVM, alternating binaries):
 *   near only (2 KB):  int8 3 rows 8.2-8.6 -> 7.2 ms a step, bf16 22.7-23.3
 *                      -> 15.5 (a noisier day);
 *   near + far (16 KB): bf16 1.38 / 1.52 x the floor at 1 / 3 rows -> 1.10 /
 *                      1.22-1.30, int8 1.20 / 1.53 -> 0.94-1.08 / 1.08-1.15
 *                      (below 1: some weights still in the 260 MB L3).
 * 8-32 KB far measured alike; 4 KB less; prefetchnta much worse. */
/* On a 2-core Zen 4 (KVM, 2026-12-06) the same prefetches held decode
 * back instead: its prefetchers alone streamed one core's weights at 27-30
 * GB/s (a plain read's rate) where the kernels with them took 19-21, and
 * on two cores an int8 step at 627 tokens went from 4.7-5.2 to 4.2-4.4 ms,
 * bf16 from 8.5-8.8 to 7.5-8.1 (alternating binaries, the second
 * fetching only the next line, 4 runs each; this switch measured alike).
 * So they are issued where pk_prefetch says (packed.h): on Intel's CPUs,
 * where they were measured to pay, not on others. The AVX2 kernels fetch
 * their near lines their own way and only the far ones here (prefetch_far):
 * on the Xeon with AMX, as GPT2_CPU_ISA=avx2, decode at 1 / 3 rows went
 * from 1.23-1.28 / 1.69-1.70x the floor to 1.11-1.13 / 1.31-1.34x (fp32),
 * 1.25-1.31 / 1.94-1.96x to 1.15-1.18 / 1.51-1.55x (bf16) and 1.94-1.98 /
 * 2.14-2.17x to 1.33-1.34 / 1.74-1.77x (int8), the bf16 typing session's
 * p50 414-417 -> 350-352 ms (2026-12-06, alternating binaries). */
#ifndef PF_NEAR
#define PF_NEAR 2048
#endif
#ifndef PF_FAR
#define PF_FAR 16384
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define prefetch_ahead(p)                                                                          \
    (pk_prefetch ? (__builtin_prefetch((const char *)(p) + PF_NEAR, 0, 3),                         \
                    __builtin_prefetch((const char *)(p) + PF_FAR, 0, 1))                          \
                 : (void)0)
/* The L2 half alone, for kernels that fetch their near lines their own way. */
#define prefetch_far(p) (pk_prefetch ? __builtin_prefetch((const char *)(p) + PF_FAR, 0, 1) : (void)0)
/* The same for the 4 lines at %[w] in the assembly kernels, skipped (label
 * 3) where %[pf] is 0. */
#define PF_LINE(at) "prefetcht0 " STR(PF_NEAR) "+" #at "(%[w])\n\tprefetcht2 " STR(PF_FAR) "+" #at "(%[w])\n\t"
#define PF_QUAD "cmpl $0, %[pf]\n\tje 3f\n\t" PF_LINE(0) PF_LINE(64) PF_LINE(128) PF_LINE(192) "3:\n\t"

int pk_prefetch = -1;
/* On AMD's CPUs without AVX-512 (the AVX2 kernels) the far prefetches paid
 * in bf16's passes of 2 to 3 rows (half_avx2) alone: on a 2-core Zen 3 (KVM,
 * 12-16 GB/s, 2026-12-07, alternating runs) a bf16 step of 3 rows after 640
 * tokens took 18.4-20.5 ms with them there and 23.7-25.3 without (4 runs
 * each; 7 runs of all the prefetches alike), keeping the top 40 (the int8
 * screen of the head, then its bf16 rows) 18.4-22.5 against 21.5-23.3; 1 row
 * alike. All the prefetches made fp32's steps 5-13% slower; int8's alike.
 * Whether those passes fetch ahead: where everything does, or there. */
static int pk_prefetch_bf16;

void pk_prefetch_init(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    const char *env = getenv("GPT2_CPU_PREFETCH");
    int set = env && (!strcmp(env, "0") || !strcmp(env, "1"));
    pk_prefetch = set ? env[0] == '1' : __builtin_cpu_is("intel");
    pk_prefetch_bf16 = pk_prefetch || (!set && __builtin_cpu_is("amd") && !__builtin_cpu_supports("avx512f"));
#else
    pk_prefetch = 0;
#endif
}

const char *pk_prefetch_what(void)
{
    return pk_prefetch ? "yes" : pk_prefetch_bf16 ? "bf16's 3-row passes only" : "no";
}

/* ==== Packing ==== */

/* Where weight (k, c) of a bf16 tile is: its pair of inputs, then which. */
static size_t bf16_at(int k, int c) { return ((size_t)(k / 2) * PK_TILE + c) * 2 + (k & 1); }

static float weight(const float *w, int K, int N, int out_in, int k, int n)
{
    return out_in ? w[(size_t)n * K + k] : w[(size_t)k * N + n];
}

static uint16_t to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); /* nearest, ties to even */
}

/* One group of int8 weights of tile column c (the reference packer): the
 * group's largest |w| maps to 127, v * (127 / m) rounded in double to the
 * nearest integer (ties to even), stored + 128; the scale as fp16. */
static void pack_group(const pmat *p, const float *w, int out_in, int t, int c, int g)
{
    unsigned char *gp = p->data + (size_t)t * p->tile_bytes + (size_t)g * GROUP_BYTES;
    int K = p->K, N = p->N, n = t * PK_TILE + c;
    float m = 0, v[PK_GROUP];
    for (int i = 0; i < PK_GROUP; i++) {
        int k = g * PK_GROUP + i;
        v[i] = n < N && k < K ? weight(w, K, N, out_in, k, n) : 0.0f;
        m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
    }
    double inv = m > 0 ? 127.0 / m : 0.0; /* in float, 127 / m overflows below 3.7e-37 */
    for (int i = 0; i < PK_GROUP; i++) {
        long q = lrint(v[i] * inv);
        gp[(i / 4) * PK_TILE * 4 + c * 4 + i % 4] = (unsigned char)((q > 127 ? 127 : q < -127 ? -127 : q) + 128);
    }
    float s = m / 127.0f / p->unscale; /* exact: a power of two, below 2^15 */
    mv_to_half((uint16_t *)(gp + GROUP_W) + c, &s, 1);
}

/* Where input i (of the group) of tile column c is in an int4 group, and
 * in which nibble (packed.h). */
static size_t i4_at(int i, int c, int *high)
{
    *high = c % 16 >= 8;
    return (size_t)(i / 4) * PK_TILE * 2 + (size_t)(c / 16) * 32 + (size_t)(c % 8) * 4 + i % 4;
}

/* The stored value of input i of tile column c in a group: int8's byte
 * (w + 128) or int4's nibble (code + 8). */
static inline int32_t stored(const unsigned char *gp, int i4, int i, int c)
{
    if (!i4) return gp[(i / 4) * PK_TILE * 4 + c * 4 + i % 4];
    int high;
    unsigned char b = gp[i4_at(i, c, &high)];
    return high ? b >> 4 : b & 0x0F;
}

/* int4 scales tried per group (quantize4). */
#define I4_TRIES 12

/* Group g's weights of tile columns c..c+8 of tile t, input by input (8
 * floats each), zero past K and N. */
static void group_values8(const pmat *p, const float *w, int out_in, int t, int c, int g, float (*v)[8])
{
    for (int i = 0; i < PK_GROUP; i++)
        for (int j = 0; j < 8; j++) {
            int k = g * PK_GROUP + i, n = t * PK_TILE + c + j;
            v[i][j] = n < p->N && k < p->K ? weight(w, p->K, p->N, out_in, k, n) : 0.0f;
        }
}

/* The nibble of code q (-8..7) for input i of tile column c. */
static void put4(unsigned char *gp, int i, int c, int q)
{
    int high;
    unsigned char *b = gp + i4_at(i, c, &high);
    unsigned u = (unsigned)(q + 8);
    *b = high ? (unsigned char)((*b & 0x0F) | u << 4) : (unsigned char)((*b & 0xF0) | u);
}

/* Column j of v (64 weights): its fp16 scale h (stored; the weights are
 * q * h * unscale) and codes q. Of I4_TRIES scales d = -big / 8 * (1 -
 * f / 40) (big the first weight of largest magnitude), each rounded to its
 * fp16, the one whose codes leave the least sum of squared errors, the
 * first of equals. In units of |big| (u = w / |big|, dn = d / |big|), so
 * that no square overflows or underflows: codes round(u * (1 / dn)) (ties
 * to even, clamped to -8..7; 0 where d is 0), errors summed by fmas in
 * float, inputs in order. On Gaussian weights the largest at
 * -8 d alone (f = 0) left 10% more squared error; on the bench's
 * checkpoint mean KL against fp32 1.44e-2 against 1.15e-2. The AVX2
 * packer below computes each column the same way. */
static uint16_t quantize4(float (*v)[8], int j, float unscale, int8_t *q)
{
    float big = 0, best = INFINITY, ibest = 0, u[PK_GROUP];
    uint16_t hbest = 0;
    for (int i = 0; i < PK_GROUP; i++) big = fabsf(v[i][j]) > fabsf(big) ? v[i][j] : big;
    float ab = fabsf(big);
    for (int i = 0; i < PK_GROUP; i++) u[i] = ab > 0 ? v[i][j] / ab : 0.0f;
    for (int f = 0; f < I4_TRIES; f++) {
        float s = -big * 0.125f * (1.0f - (float)f / 40.0f) / unscale, d, e = 0;
        uint16_t h;
        mv_to_half(&h, &s, 1);
        mv_from_half(&d, &h, 1);
        d *= unscale;
        float dn = d != 0 ? d / ab : 0.0f, inv = dn != 0 ? 1.0f / dn : 0.0f;
        for (int i = 0; i < PK_GROUP; i++) {
            float c = fminf(fmaxf(nearbyintf(u[i] * inv), -8.0f), 7.0f);
            float r = fmaf(-c, dn, u[i]); /* fmas, as the AVX2 packer's */
            e = fmaf(r, r, e);
        }
        if (e < best) best = e, hbest = h, ibest = inv;
    }
    for (int i = 0; i < PK_GROUP; i++) q[i] = (int8_t)fminf(fmaxf(nearbyintf(u[i] * ibest), -8.0f), 7.0f);
    return hbest;
}

/* Group g of columns c..c+8 of tile t in int4 (the reference packer). */
static void pack_group4(const pmat *p, const float *w, int out_in, int t, int c, int g)
{
    unsigned char *gp = p->data + (size_t)t * p->tile_bytes + (size_t)g * PK_I4_GROUP_BYTES;
    float v[PK_GROUP][8];
    int8_t q[PK_GROUP];
    group_values8(p, w, out_in, t, c, g, v);
    for (int j = 0; j < 8; j++) {
        uint16_t h = quantize4(v, j, p->unscale, q);
        memcpy(gp + PK_I4_GROUP_W + 2 * (c + j), &h, 2);
        for (int i = 0; i < PK_GROUP; i++) put4(gp, i, c + j, q[i]);
    }
}

#if defined(__x86_64__)
#define PACK_AVX2 __attribute__((target("avx2,fma,f16c")))

/* 8 weights times their columns' 127 / m in double, rounded to the nearest
 * integer (cvtpd2dq: ties to even, as lrint), clamped, + 128. */
PACK_AVX2 AI __m256i quantize8(__m256 v, __m256d inv_lo, __m256d inv_hi)
{
    __m128i lo = _mm256_cvtpd_epi32(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), inv_lo));
    __m128i hi = _mm256_cvtpd_epi32(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), inv_hi));
    __m256i q = _mm256_setr_m128i(lo, hi);
    q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(-127)), _mm256_set1_epi32(127));
    return _mm256_add_epi32(q, _mm256_set1_epi32(128));
}

PACK_AVX2 AI __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* The largest of v's 8 lanes (none of them NaN). */
PACK_AVX2 AI float hmax8(__m256 v)
{
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
}

/* fp32 bits rounded to bf16 in the high half (to_bf16's rounding, lane by lane). */
PACK_AVX2 AI __m256i round_bf16(__m256 v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
}

/* r[j] = lane j of the 8 vectors r: an 8 x 8 transpose of 32-bit lanes. */
PACK_AVX2 AI void transpose8(__m256 *r)
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* A column's 16 consecutive inputs (a the first 8, b the next) rounded to
 * bf16 and paired as a tile keeps them: pair i's low half input 2i, its
 * high half input 2i + 1. */
PACK_AVX2 AI __m256i pairs_bf16(__m256 a, __m256 b)
{
    const __m256i pick = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6,
                                          7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i x = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(round_bf16(a), pick), 0x08); /* a's 4 pairs low */
    __m256i y = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(round_bf16(b), pick), 0x08);
    return _mm256_permute2x128_si256(x, y, 0x20);
}

/* A whole fp32 or bf16 tile (t + 1 <= N / PK_TILE), the bytes pack_tile's
 * loops write, 8 columns at a time: (K, N) weights give each input's 64
 * columns contiguous (bf16: two inputs' 8 columns rounded, then one's in the
 * low halves, the other's in the high); (N, K) weights give each column's
 * inputs contiguous, turned by 8 x 8 transposes (bf16: of the 8 pairs of 16
 * inputs). Inputs past the last whole 8 (16) as pack_tile takes them. The
 * scalar loops took 45% of a bf16 load. */
PACK_AVX2 static void pack_float_avx2(const pmat *p, const float *w, int out_in, int t)
{
    unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
    int K = p->K, N = p->N, n0 = t * PK_TILE, bf = p->fmt == PK_BF16, k = 0;
    if (!out_in) {
        for (; k + bf < K; k += 1 + bf)
            for (int c = 0; c < PK_TILE; c += 8) {
                __m256 a = _mm256_loadu_ps(w + (size_t)k * N + n0 + c);
                if (!bf) {
                    _mm256_storeu_ps((float *)tp + (size_t)k * PK_TILE + c, a);
                    continue;
                }
                __m256i lo = _mm256_srli_epi32(round_bf16(a), 16);
                __m256i hi = _mm256_and_si256(round_bf16(_mm256_loadu_ps(w + (size_t)(k + 1) * N + n0 + c)),
                                              _mm256_set1_epi32((int)0xFFFF0000u));
                _mm256_storeu_si256((__m256i *)(tp + ((size_t)k / 2 * PK_TILE + c) * 4), _mm256_or_si256(lo, hi));
            }
    } else {
        int step = bf ? 16 : 8;
        for (; k + step <= K; k += step)
            for (int c = 0; c < PK_TILE; c += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) {
                    const float *src = w + (size_t)(n0 + c + i) * K + k;
                    r[i] = bf ? _mm256_castsi256_ps(pairs_bf16(_mm256_loadu_ps(src), _mm256_loadu_ps(src + 8)))
                              : _mm256_loadu_ps(src);
                }
                transpose8(r);
                for (int i = 0; i < 8; i++) /* input k + i (bf16: pair k / 2 + i) */
                    _mm256_storeu_ps((float *)tp + ((size_t)(bf ? k / 2 : k) + i) * PK_TILE + c, r[i]);
            }
    }
    for (; k < K; k++) /* the rest */
        for (int c = 0; c < PK_TILE; c++) {
            float v = weight(w, K, N, out_in, k, n0 + c);
            if (bf) ((uint16_t *)tp)[bf16_at(k, c)] = to_bf16(v);
            else ((float *)tp)[(size_t)k * PK_TILE + c] = v;
        }
}

/* A whole group of a whole tile, the same bytes as pack_group's, from
 * (K, N) weights: the group's 64 input rows are 64 contiguous columns each,
 * so the maxima, scales and 4-input words go 8 columns at a time. */
PACK_AVX2 static void pack_group_rows(const pmat *p, const float *w, int t, int g)
{
    unsigned char *gp = p->data + (size_t)t * p->tile_bytes + (size_t)g * GROUP_BYTES;
    const float *src = w + (size_t)g * PK_GROUP * p->N + (size_t)t * PK_TILE;
    float mf[PK_TILE], s[PK_TILE];
    double inv[PK_TILE];
    for (int h = 0; h < 8; h++) {
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < PK_GROUP; i++) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(src + (size_t)i * p->N + 8 * h)));
        _mm256_storeu_ps(mf + 8 * h, m);
    }
    for (int c = 0; c < PK_TILE; c++) inv[c] = mf[c] > 0 ? 127.0 / mf[c] : 0.0;
    for (int q = 0; q < QUADS; q++)
        for (int h = 0; h < 8; h++) { /* columns 8h..8h+7: one 32-bit word each of 4 inputs */
            __m256d il = _mm256_loadu_pd(inv + 8 * h), ih = _mm256_loadu_pd(inv + 8 * h + 4);
            __m256i word = _mm256_setzero_si256();
            for (int b = 0; b < 4; b++) {
                __m256 v = _mm256_loadu_ps(src + (size_t)(4 * q + b) * p->N + 8 * h);
                word = _mm256_or_si256(word, _mm256_slli_epi32(quantize8(v, il, ih), 8 * b));
            }
            _mm256_storeu_si256((__m256i *)(gp + (size_t)q * PK_TILE * 4 + 32 * h), word);
        }
    for (int c = 0; c < PK_TILE; c++) s[c] = mf[c] / 127.0f / p->unscale;
    mv_to_half((uint16_t *)(gp + GROUP_W), s, PK_TILE);
}

/* The same from (N, K) weights (out_in): a column's 64 inputs are
 * contiguous, 4 of them one word. */
PACK_AVX2 static void pack_group_cols(const pmat *p, const float *w, int t, int g)
{
    unsigned char *gp = p->data + (size_t)t * p->tile_bytes + (size_t)g * GROUP_BYTES;
    const __m256i bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                           0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    float s[PK_TILE];
    for (int c = 0; c < PK_TILE; c++) {
        const float *src = w + (size_t)(t * PK_TILE + c) * p->K + (size_t)g * PK_GROUP;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 8; j++) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(src + 8 * j)));
        float mc = hmax8(m);
        __m256d inv = _mm256_set1_pd(mc > 0 ? 127.0 / mc : 0.0);
        for (int j = 0; j < 8; j++) { /* inputs 8j..8j+7: quads 2j, 2j + 1 */
            __m256i q = _mm256_shuffle_epi8(quantize8(_mm256_loadu_ps(src + 8 * j), inv, inv), bytes);
            uint32_t lo = (uint32_t)_mm256_extract_epi32(q, 0), hi = (uint32_t)_mm256_extract_epi32(q, 4);
            memcpy(gp + (size_t)(2 * j) * PK_TILE * 4 + c * 4, &lo, 4);
            memcpy(gp + (size_t)(2 * j + 1) * PK_TILE * 4 + c * 4, &hi, 4);
        }
        s[c] = mc / 127.0f / p->unscale;
    }
    mv_to_half((uint16_t *)(gp + GROUP_W), s, PK_TILE);
}

/* pack_group4 on 8 columns at once, one per lane: quantize4's operations
 * in the same order (vdivps, vmulps and vroundps round as the scalar
 * operations and nearbyintf do; min/max as fminf/fmaxf on these finite values), so the
 * same bytes. */
PACK_AVX2 static void pack_group4_avx2(const pmat *p, const float *w, int out_in, int t, int c, int g)
{
    unsigned char *gp = p->data + (size_t)t * p->tile_bytes + (size_t)g * PK_I4_GROUP_BYTES;
    float v[PK_GROUP][8] __attribute__((aligned(32)));
    group_values8(p, w, out_in, t, c, g, v);
    const __m256 sign = _mm256_set1_ps(-0.0f), lo = _mm256_set1_ps(-8.0f), hi = _mm256_set1_ps(7.0f);
    const __m256 zero = _mm256_setzero_ps(), uns = _mm256_set1_ps(p->unscale);
    __m256 big = zero, u[PK_GROUP];
    for (int i = 0; i < PK_GROUP; i++) {
        __m256 x = _mm256_load_ps(v[i]);
        __m256 more = _mm256_cmp_ps(_mm256_andnot_ps(sign, x), _mm256_andnot_ps(sign, big), _CMP_GT_OQ);
        big = _mm256_blendv_ps(big, x, more);
    }
    __m256 ab = _mm256_andnot_ps(sign, big), some = _mm256_cmp_ps(ab, zero, _CMP_GT_OQ);
    for (int i = 0; i < PK_GROUP; i++) u[i] = _mm256_and_ps(_mm256_div_ps(_mm256_load_ps(v[i]), ab), some);
    __m256 best = _mm256_set1_ps(INFINITY), ibest = zero;
    __m128i hbest = _mm_setzero_si128();
    for (int f = 0; f < I4_TRIES; f++) {
        __m256 s = _mm256_div_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_xor_ps(big, sign), _mm256_set1_ps(0.125f)),
                                               _mm256_set1_ps(1.0f - (float)f / 40.0f)),
                                 uns);
        __m128i h = _mm256_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT);
        __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(h), uns), e = zero;
        __m256 dn = _mm256_and_ps(_mm256_div_ps(d, ab), _mm256_cmp_ps(d, zero, _CMP_NEQ_UQ));
        __m256 inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), dn), _mm256_cmp_ps(dn, zero, _CMP_NEQ_UQ));
        for (int i = 0; i < PK_GROUP; i++) {
            __m256 q = _mm256_round_ps(_mm256_mul_ps(u[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
            __m256 r = _mm256_fnmadd_ps(q, dn, u[i]);
            e = _mm256_fmadd_ps(r, r, e);
        }
        __m256 better = _mm256_cmp_ps(e, best, _CMP_LT_OQ);
        best = _mm256_blendv_ps(best, e, better);
        ibest = _mm256_blendv_ps(ibest, inv, better);
        __m256i b32 = _mm256_castps_si256(better); /* lanes of 0 or -1, packed to 16 bits */
        hbest = _mm_blendv_epi8(hbest, h, _mm_packs_epi32(_mm256_castsi256_si128(b32), _mm256_extracti128_si256(b32, 1)));
    }
    _mm_storeu_si128((__m128i *)(gp + PK_I4_GROUP_W + 2 * c), hbest);
    /* a quad's 8 columns are 32 bytes, column j's 4 inputs the word j: each
     * input's codes + 8 shifted to its byte, to the low nibbles (columns
     * c % 16 < 8) or the high ones */
    int shift = c % 16 >= 8 ? 4 : 0;
    for (int qd = 0; qd < QUADS; qd++) {
        __m256i word = _mm256_setzero_si256();
        for (int b = 0; b < 4; b++) {
            __m256 q = _mm256_round_ps(_mm256_mul_ps(u[4 * qd + b], ibest), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256i code = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi)), _mm256_set1_epi32(8));
            word = _mm256_or_si256(word, _mm256_slli_epi32(code, 8 * b + shift));
        }
        __m256i *at = (__m256i *)(gp + (size_t)qd * PK_TILE * 2 + (size_t)(c / 16) * 32);
        _mm256_storeu_si256(at, _mm256_or_si256(_mm256_loadu_si256(at), word));
    }
}

/* AVX2 with FMA and F16C here, and the portable loops not forced
 * (pk_force_generic 1): the packers above, activation quantization and the
 * AVX2 kernels below. */
static int avx2(void)
{
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    return has && pk_force_generic != 1;
}

/* AVX-VNNI (256-bit vpdpbusd) for int8 products where AVX-512 VNNI is not
 * used: on a CPU without AVX-512 (Intel's since Alder Lake), or forced
 * (pk_force_generic 4, GPT2_CPU_ISA=avxvnni). pk_force_generic 2 keeps the
 * AVX2 kernel, as on a CPU without it. */
static int avx_vnni(void)
{
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("avxvnni");
    return has && avx2() && (!pk_force_generic || pk_force_generic == 4);
}
#endif

int pk_forced_avx2(void) { return pk_force_generic == 2 || pk_force_generic == 4; }

static void pack_tile(const pmat *p, const float *w, int out_in, int t)
{
    unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
    int K = p->K, N = p->N;
    if (p->fmt == PK_I4) {
        for (int g = 0; g < p->groups; g++)
            for (int c = 0; c < PK_TILE; c += 8) {
#if defined(__x86_64__)
                if (avx2()) {
                    pack_group4_avx2(p, w, out_in, t, c, g);
                    continue;
                }
#endif
                pack_group4(p, w, out_in, t, c, g);
            }
        return;
    }
    if (p->fmt == PK_I8) {
        for (int g = 0; g < p->groups; g++) {
#if defined(__x86_64__)
            if (avx2() && (t + 1) * PK_TILE <= N && (g + 1) * PK_GROUP <= K) { /* whole */
                if (out_in) pack_group_cols(p, w, t, g);
                else pack_group_rows(p, w, t, g);
                continue;
            }
#endif
            for (int c = 0; c < PK_TILE; c++) pack_group(p, w, out_in, t, c, g);
        }
        return;
    }
#if defined(__x86_64__)
    if (avx2() && (t + 1) * PK_TILE <= N) {
        pack_float_avx2(p, w, out_in, t);
        return;
    }
#endif
    for (int k0 = 0; k0 < K; k0 += PK_TILE) /* 64 x 64 blocks: source and tile stay in L1 */
        for (int c = 0; c < PK_TILE; c++) {
            int n = t * PK_TILE + c;
            for (int k = k0; k < K && k < k0 + PK_TILE; k++) {
                float v = n < N ? weight(w, K, N, out_in, k, n) : 0.0f;
                if (p->fmt == PK_F32) ((float *)tp)[(size_t)k * PK_TILE + c] = v;
                else ((uint16_t *)tp)[bf16_at(k, c)] = to_bf16(v);
            }
        }
}

static size_t tile_bytes(int K, int fmt)
{
    return fmt == PK_I8   ? (size_t)((K + PK_GROUP - 1) / PK_GROUP) * GROUP_BYTES
           : fmt == PK_I4 ? (size_t)((K + PK_GROUP - 1) / PK_GROUP) * PK_I4_GROUP_BYTES
           : fmt == PK_F32 ? (size_t)K * PK_TILE * 4
                           : (size_t)(K + 1) / 2 * 2 * PK_TILE * 2;
}

size_t pk_size(int K, int N, int fmt)
{
    return (tile_bytes(K, fmt) * ((N + PK_TILE - 1) / PK_TILE) + 63) & ~(size_t)63;
}

int pk_pack(pmat *p, const float *w, int K, int N, int out_in, int fmt, char *err)
{
    return pk_pack_into(p, NULL, w, K, N, out_in, fmt, err);
}

/* p's shape for (K, N) in format fmt, everything else zero. */
static void shape(pmat *p, int K, int N, int fmt)
{
    memset(p, 0, sizeof *p);
    p->fmt = fmt;
    p->K = K;
    p->N = N;
    p->tiles = (N + PK_TILE - 1) / PK_TILE;
    p->groups = (K + PK_GROUP - 1) / PK_GROUP;
    p->tile_bytes = tile_bytes(K, fmt);
}

int pk_pack_into(pmat *p, void *mem, const float *w, int K, int N, int out_in, int fmt, char *err)
{
    if (pk_pack_begin(p, mem, w, K, N, fmt, err)) return -1;
    pk_pack_tiles(p, w, out_in, 0, p->tiles);
    return 0;
}

void pk_pack_tiles(const pmat *p, const float *w, int out_in, int t0, int t1)
{
    for (int t = t0; t < t1; t++) pack_tile(p, w, out_in, t);
}

#if defined(__x86_64__)
/* largest's loop on AVX2: gcc 12 kept the portable one scalar (a fifth of
 * an int4 load). */
PACK_AVX2 static float largest_avx2(const float *w, size_t n, int *finite)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), top = _mm256_set1_ps(FLT_MAX);
    __m256 big = _mm256_setzero_ps(), bad = big;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(w + i));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, top, _CMP_NLE_UQ)); /* NaN or infinite */
        big = _mm256_max_ps(big, a);
    }
    float m = hmax8(big);
    *finite = _mm256_movemask_ps(bad) == 0;
    for (; i < n; i++) {
        float a = fabsf(w[i]);
        *finite &= a <= FLT_MAX;
        m = a > m ? a : m;
    }
    return m;
}
#endif

/* The largest |w| of n weights, or -1 when one is not finite (NaN has no
 * int8 scale; bad: the first such). */
static float largest(const float *w, size_t n, size_t *bad)
{
    float big = 0;
    int finite = 1;
#if defined(__x86_64__)
    if (avx2()) big = largest_avx2(w, n, &finite), n = 0;
#endif
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(w[i]);
        finite &= a <= FLT_MAX;
        big = a > big ? a : big;
    }
    if (finite) return big;
    for (*bad = 0; isfinite(w[*bad]); ++*bad) continue;
    return -1;
}

int pk_pack_begin(pmat *p, void *mem, const float *w, int K, int N, int fmt, char *err)
{
    shape(p, K, N, fmt);
    float big = 0;
    size_t bad = 0;
    if ((fmt == PK_I8 || fmt == PK_I4) && (big = largest(w, (size_t)K * N, &bad)) < 0)
        return errf(err, "a weight is not finite (index %zu)", bad);
    int e = 0;
    if (big > 0) frexpf(big / (fmt == PK_I4 ? 8.0f : 127.0f), &e); /* largest scale = f 2^e, f in [0.5, 1) */
    e = e < -100 ? -100 : e;            /* unscale stays a normal float */
    p->unscale = ldexpf(1.0f, e - 15);  /* stored: scale 2^(15 - e), below 2^15 */
    size_t bytes = p->tile_bytes * p->tiles;
    p->borrowed = mem != NULL;
    if (!(p->data = mem ? mem : xbig_alloc(pk_size(K, N, fmt), 1)))
        return errf(err, "out of memory (%zu MB of packed weights)", bytes >> 20);
    memset(p->data, 0, bytes); /* padding (bf16's odd last input, tile tails) is zero */
    return 0;
}

typedef uint16_t v16h __attribute__((vector_size(32)));

/* K weights as bf16 (to_bf16, 16 at a time), then a zero when K is odd:
 * the bf16 pairs of pack_group's tiles, in memory order. */
CLONES
static void weights_bf16(const float *w, int K, uint16_t *d)
{
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        v16w u;
        memcpy(&u, w + k, sizeof u);
        v16h h = __builtin_convertvector((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16, v16h);
        memcpy(d + k, &h, sizeof h);
    }
    for (; k < K; k++) d[k] = to_bf16(w[k]);
    if (K & 1) d[K] = 0;
}

/* pk_pack_rows' rows are scattered (a screen's candidates over the head),
 * each a new stream to the prefetchers: a row is fetched into L2 whole
 * PACK_AHEAD rows before it is read. 64 rows of 768 floats, alone on one
 * core of a 2-core Xeon: 44 -> 31 us (1 to 8 rows ahead alike; into L1,
 * 33-34). */
#define PACK_AHEAD 4

static void fetch_row(const float *r, int K)
{
    for (size_t o = 0; o < (size_t)K * sizeof *r; o += 64) __builtin_prefetch((const char *)r + o, 0, 1);
}

void pk_pack_rows(pmat *p, void *mem, const float *const *rows, int n, int K, int fmt, float *scratch)
{
    shape(p, K, n, fmt);
    p->unscale = 1.0f;
    p->borrowed = 1;
    p->data = mem;
    /* a tile is its columns' words transposed: fp32 values, or bf16 pairs
     * (inputs 2i low, 2i + 1 high, zero past an odd K) as 32-bit words */
    int W = fmt == PK_F32 ? K : (K + 1) / 2;
    for (int t = 0; t < p->tiles; t++) {
        unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int cols = n - t * PK_TILE < PK_TILE ? n - t * PK_TILE : PK_TILE;
        if (cols < PK_TILE) memset(tp, 0, p->tile_bytes); /* the missing columns are zero */
        for (int c = 0; c < cols; c++) {
            const float *r = rows[(size_t)t * PK_TILE + c];
            if (t * PK_TILE + c + PACK_AHEAD < n) fetch_row(rows[t * PK_TILE + c + PACK_AHEAD], K);
            if (fmt == PK_F32) {
                memcpy(scratch + (size_t)c * W, r, (size_t)K * sizeof(float));
                continue;
            }
            weights_bf16(r, K, (uint16_t *)(scratch + (size_t)c * W));
        }
        mv_keys_t((float *)tp, PK_TILE, scratch, NULL, MV_F32, cols, W); /* moves bits: no value is NaN */
    }
}

float pk_round_up(double x)
{
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

/* Input i of column c of an int8 group (gp, its scale times unscale) for
 * pk_i8_bounds: *e, *a raised to |v - q| and |q|, v the weight as the
 * format keeps it (bf16: rounded), q the dequantized int8 one. */
static void bound_input(const unsigned char *gp, int c, int i, double scale, float v, int fmt, double *e,
                        double *a)
{
    double q = (double)((int)gp[(i / 4) * PK_TILE * 4 + c * 4 + i % 4] - 128) * scale;
    if (fmt == PK_BF16) { /* the value the bf16 tiles hold */
        uint32_t u = (uint32_t)to_bf16(v) << 16;
        memcpy(&v, &u, sizeof v);
    }
    double d = fabs((double)v - q); /* finite: no NaN to pass over */
    *e = d > *e ? d : *e;
    *a = fabs(q) > *a ? fabs(q) : *a;
}

#if defined(__x86_64__)
/* pk_i8_bounds on AVX2: a quad's 4 inputs at a time, in double as there,
 * the same differences, and maxima (exact in any order), so the same
 * bounds (the scalar loop took a seventh of a bf16 load). */
PACK_AVX2 static void i8_bounds_avx2(const pmat *p, const float *w, int fmt, int n0, int n1, float *err,
                                     float *amax)
{
    int K = p->K;
    const __m256d sign = _mm256_set1_pd(-0.0);
    for (int n = n0; n < n1; n++) {
        const unsigned char *tp = p->data + (size_t)(n / PK_TILE) * p->tile_bytes;
        int c = n % PK_TILE;
        __m256d e4 = _mm256_setzero_pd(), a4 = _mm256_setzero_pd();
        double e = 0, a = 0;
        for (int g = 0; g < p->groups; g++) {
            const unsigned char *gp = tp + (size_t)g * GROUP_BYTES;
            const float *wg = w + (size_t)n * K + g * PK_GROUP;
            float s;
            mv_from_half(&s, (const uint16_t *)(gp + GROUP_W) + c, 1);
            double scale = (double)s * p->unscale;
            int i = 0;
            for (; i < PK_GROUP && g * PK_GROUP + i + 4 <= K; i += 4) {
                int32_t b;
                memcpy(&b, gp + (i / 4) * PK_TILE * 4 + c * 4, sizeof b);
                __m128i q4 = _mm_sub_epi32(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(b)), _mm_set1_epi32(128));
                __m256d q = _mm256_mul_pd(_mm256_cvtepi32_pd(q4), _mm256_set1_pd(scale));
                __m128 v = _mm_loadu_ps(wg + i);
                if (fmt == PK_BF16) { /* the values the bf16 tiles hold */
                    __m128i u = _mm_castps_si128(v);
                    __m128i odd = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
                    u = _mm_add_epi32(u, _mm_add_epi32(_mm_set1_epi32(0x7FFF), odd));
                    v = _mm_castsi128_ps(_mm_and_si128(u, _mm_set1_epi32((int)0xFFFF0000u)));
                }
                e4 = _mm256_max_pd(e4, _mm256_andnot_pd(sign, _mm256_sub_pd(_mm256_cvtps_pd(v), q)));
                a4 = _mm256_max_pd(a4, _mm256_andnot_pd(sign, q));
            }
            for (; i < PK_GROUP && g * PK_GROUP + i < K; i++) /* the last inputs, short of a quad */
                bound_input(gp, c, i, scale, wg[i], fmt, &e, &a);
        }
        double el[4], al[4];
        _mm256_storeu_pd(el, e4);
        _mm256_storeu_pd(al, a4);
        for (int l = 0; l < 4; l++) e = fmax(e, el[l]), a = fmax(a, al[l]);
        err[n] = pk_round_up(e);
        amax[n] = pk_round_up(a);
    }
}
#endif

void pk_i8_bounds(const pmat *p, const float *w, int fmt, int n0, int n1, float *err, float *amax)
{
    int K = p->K;
#if defined(__x86_64__)
    if (avx2()) {
        i8_bounds_avx2(p, w, fmt, n0, n1, err, amax);
        return;
    }
#endif
    for (int n = n0; n < n1; n++) {
        const unsigned char *tp = p->data + (size_t)(n / PK_TILE) * p->tile_bytes;
        int c = n % PK_TILE;
        double e = 0, a = 0;
        for (int g = 0; g < p->groups; g++) {
            const unsigned char *gp = tp + (size_t)g * GROUP_BYTES;
            float s;
            mv_from_half(&s, (const uint16_t *)(gp + GROUP_W) + c, 1);
            double scale = (double)s * p->unscale; /* exact: a half times a power of two */
            for (int i = 0; i < PK_GROUP && g * PK_GROUP + i < K; i++)
                bound_input(gp, c, i, scale, w[(size_t)n * K + g * PK_GROUP + i], fmt, &e, &a);
        }
        err[n] = pk_round_up(e);
        amax[n] = pk_round_up(a);
    }
}

void pk_free(pmat *p)
{
    if (!p->borrowed) free(p->data);
    p->data = NULL;
}

size_t pk_bytes(const pmat *p) { return p->tile_bytes * p->tiles; }

/* A bf16 tile's K inputs as fp32 rows, ldd apart: each word's low half is
 * input 2i, its high half input 2i + 1 (written so it vectorises). */
CLONES
static void widen_bf16(const uint32_t *tp, int K, float *dst, int ldd)
{
    for (int k = 0; k < K; k += 2) {
        const uint32_t *u = tp + (size_t)(k / 2) * PK_TILE;
        uint32_t *e = (uint32_t *)(dst + (size_t)k * ldd), *o = (uint32_t *)(e + ldd);
        for (int c = 0; c < PK_TILE; c++) e[c] = u[c] << 16;
        if (k + 1 < K)
            for (int c = 0; c < PK_TILE; c++) o[c] = u[c] & 0xFFFF0000u;
    }
}

void pk_widen(const pmat *p, int t, float *dst, int ldd)
{
    const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
    float s[PK_TILE]; /* int8: the current group's scales */
    if (p->fmt == PK_BF16) {
        widen_bf16((const uint32_t *)tp, p->K, dst, ldd);
        return;
    }
    for (int k = 0; k < p->K; k++) {
        float *d = dst + (size_t)k * ldd;
        if (p->fmt == PK_F32) {
            memcpy(d, tp + (size_t)k * PK_TILE * 4, PK_TILE * sizeof(float));
        } else if (p->fmt == PK_I4) {
            const unsigned char *gp = tp + (size_t)(k / PK_GROUP) * PK_I4_GROUP_BYTES;
            if (k % PK_GROUP == 0) mv_from_half(s, (const uint16_t *)(gp + PK_I4_GROUP_W), PK_TILE);
            for (int c = 0; c < PK_TILE; c++)
                d[c] = (float)(stored(gp, 1, k % PK_GROUP, c) - 8) * (s[c] * p->unscale);
        } else {
            const unsigned char *gp = tp + (size_t)(k / PK_GROUP) * GROUP_BYTES;
            const unsigned char *q = gp + (k % PK_GROUP / 4) * PK_TILE * 4 + k % 4;
            if (k % PK_GROUP == 0) mv_from_half(s, (const uint16_t *)(gp + GROUP_W), PK_TILE);
            for (int c = 0; c < PK_TILE; c++) d[c] = (float)((int)q[c * 4] - 128) * (s[c] * p->unscale);
        }
    }
}

const float *pk_f32_tile(const pmat *p, int t, float *scratch)
{
    if (p->fmt == PK_F32) return (const float *)(p->data + (size_t)t * p->tile_bytes);
    pk_widen(p, t, scratch, PK_TILE);
    return scratch;
}

/* ==== Activations for int8 and bf16 products ==== */

int pk_act_reserve(pk_act *a, int fmt, int R, int K)
{
    int G = (K + PK_GROUP - 1) / PK_GROUP, P = (K + 1) / 2;
    if (fmt == PK_BF16) {
        if (R <= a->cap_rows && P <= a->cap_pairs) return 0;
        pk_act_free(a);
        if (!(a->bf = xmallocarray((size_t)R * P * 2, sizeof(uint16_t)))) return -1;
        a->cap_rows = R;
        a->cap_pairs = P;
        return 0;
    }
    if (R <= a->cap_rows && G <= a->cap_groups) return 0;
    pk_act_free(a);
    a->q = xmallocarray((size_t)R * G * PK_GROUP, 1);
    a->scale = xmallocarray((size_t)R * G, sizeof(float));
    a->sum = xmallocarray((size_t)R * G, sizeof(int32_t));
    if (!a->q || !a->scale || !a->sum) {
        pk_act_free(a);
        return -1;
    }
    a->cap_rows = R;
    a->cap_groups = G;
    return 0;
}

/* Groups of activations whose largest |x| is at most this quantize to zeros
 * (127 / m would overflow a float below 3.7e-37). */
#define ACT_TINY 1e-30f

/* One group of n <= PK_GROUP inputs: q (PK_GROUP, zero padded), its scale
 * and sum. Rounding is to nearest even, as rintf and cvtps2dq both do; NaN
 * becomes -127 on both paths. Written so the compiler vectorises it
 * (target clones) for CPUs without the AVX2 path below. */
CLONES
static void quantize_group(const float *x, int n, int8_t *q, float *scale, int32_t *sum)
{
    float v[PK_GROUP], m = 0;
    for (int i = 0; i < PK_GROUP; i++) v[i] = i < n ? x[i] : 0.0f;
    for (int i = 0; i < PK_GROUP; i++) m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
    float inv = m > ACT_TINY ? 127.0f / m : 0.0f;
    int32_t s = 0;
    for (int i = 0; i < PK_GROUP; i++) {
        float r = rintf(v[i] * inv);
        r = r > 127.0f ? 127.0f : r >= -127.0f ? r : -127.0f;
        q[i] = (int8_t)r;
        s += q[i];
    }
    *scale = m / 127.0f;
    *sum = s;
}

#if defined(__x86_64__)
PACK_AVX2 static void quantize_row_avx2(const float *x, int K, int8_t *q, float *scale, int32_t *sum)
{
    int G = K / PK_GROUP; /* whole groups; the caller does a partial last one */
    enum { V = PK_GROUP / 8 };
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int g = 0; g < G; g++) {
        const float *xg = x + (size_t)g * PK_GROUP;
        __m256 v[V], mx = _mm256_setzero_ps();
        for (int i = 0; i < V; i++) { /* maxps returns its second operand for a NaN: NaN never wins */
            v[i] = _mm256_loadu_ps(xg + 8 * i);
            mx = _mm256_max_ps(abs8(v[i]), mx);
        }
        float m = hmax8(mx);
        __m256 vi = _mm256_set1_ps(m > ACT_TINY ? 127.0f / m : 0.0f);
        __m256i qi[V], s = _mm256_setzero_si256();
        for (int i = 0; i < V; i++) { /* NaN converts to INT_MIN: -127, as rintf's NaN */
            qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vi));
            qi[i] = _mm256_min_epi32(_mm256_max_epi32(qi[i], lo), hi);
            s = _mm256_add_epi32(s, qi[i]);
        }
        for (int i = 0; i < V; i += 4) { /* packs work per 128-bit lane: 4 dwords out of order */
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(qi[i], qi[i + 1]), _mm256_packs_epi32(qi[i + 2], qi[i + 3]));
            _mm256_storeu_si256((__m256i *)(q + (size_t)g * PK_GROUP + 8 * i), _mm256_permutevar8x32_epi32(b, order));
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        scale[g] = m / 127.0f;
        sum[g] = _mm_cvtsi128_si32(s4);
    }
}
#endif

#if defined(__x86_64__)
/* quantize_row_avx2 in 512-bit vectors: the same operations lane for lane
 * (so the same bytes), and the bytes come out in order by vpmovsdb (values
 * already within +-127). About half the instructions of the AVX2 loop,
 * which took 3% of a 512-token int8 prefill on the Xeon. */
__attribute__((target("avx512f"))) static void quantize_row_avx512(const float *x, int K, int8_t *q,
                                                                   float *scale, int32_t *sum)
{
    int G = K / PK_GROUP; /* whole groups; the caller does a partial last one */
    enum { V = PK_GROUP / 16 };
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int g = 0; g < G; g++) {
        const float *xg = x + (size_t)g * PK_GROUP;
        __m512 v[V], mx = _mm512_setzero_ps();
        for (int i = 0; i < V; i++) { /* maxps returns its second operand for a NaN: NaN never wins */
            v[i] = _mm512_loadu_ps(xg + 16 * i);
            mx = _mm512_max_ps(_mm512_abs_ps(v[i]), mx);
        }
        float m = _mm512_reduce_max_ps(mx);
        __m512 vi = _mm512_set1_ps(m > ACT_TINY ? 127.0f / m : 0.0f);
        __m512i s = _mm512_setzero_si512();
        for (int i = 0; i < V; i++) { /* NaN converts to INT_MIN: -127, as rintf's NaN */
            __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], vi));
            qi = _mm512_min_epi32(_mm512_max_epi32(qi, lo), hi);
            s = _mm512_add_epi32(s, qi);
            _mm_storeu_si128((__m128i *)(q + (size_t)g * PK_GROUP + 16 * i), _mm512_cvtsepi32_epi8(qi));
        }
        scale[g] = m / 127.0f;
        sum[g] = _mm512_reduce_add_epi32(s);
    }
}

/* AVX-512F here, and no other path forced (pk_force_generic). */
static int avx512_quant(void)
{
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("avx512f");
    return has && !pk_force_generic;
}
#endif

/* As vcvtneps2bf16: nearest even, NaN quiet, subnormals to signed zero. */
static uint16_t act_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);
    if (!(u & 0x7F800000u)) return (uint16_t)((u >> 16) & 0x8000);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__x86_64__)
#define BF16DP __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

BF16DP static int bf16_row_dp(const float *x, int K, uint16_t *d)
{
    int k = 0;
    for (; k + 16 <= K; k += 16)
        _mm256_storeu_si256((__m256i *)(d + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
    return k;
}
#endif

/* A row of K activations as bf16, then a zero when K is odd (the odd last
 * pair's weight is zero too). */
static void bf16_row(const float *x, int K, uint16_t *d)
{
    int k = 0;
#if defined(__x86_64__)
    if (pk_bf16_dp()) k = bf16_row_dp(x, K, d);
#endif
    for (; k < K; k++) d[k] = act_bf16(x[k]);
    if (K & 1) d[K] = 0;
}

void pk_bf16_pairs(uint32_t *d, const float *x, int n) { bf16_row(x, n, (uint16_t *)d); }

void pk_act_quantize(pk_act *a, int fmt, const float *x, int r0, int r1, int K, int ldx)
{
    int G = (K + PK_GROUP - 1) / PK_GROUP;
    if (fmt == PK_BF16) {
        for (int r = r0; r < r1; r++) bf16_row(x + (size_t)r * ldx, K, a->bf + (size_t)r * 2 * ((K + 1) / 2));
        return;
    }
    for (int r = r0; r < r1; r++) {
        const float *xr = x + (size_t)r * ldx;
        int8_t *q = a->q + (size_t)r * G * PK_GROUP;
        float *sc = a->scale + (size_t)r * G;
        int32_t *sm = a->sum + (size_t)r * G;
        int g = 0;
#if defined(__x86_64__)
        if (avx512_quant()) {
            quantize_row_avx512(xr, K, q, sc, sm);
            g = K / PK_GROUP;
        } else if (avx2()) {
            quantize_row_avx2(xr, K, q, sc, sm);
            g = K / PK_GROUP;
        }
#endif
        for (; g < G; g++) {
            int k0 = g * PK_GROUP;
            quantize_group(xr + k0, K - k0 < PK_GROUP ? K - k0 : PK_GROUP, q + (size_t)g * PK_GROUP,
                           &sc[g], &sm[g]);
        }
    }
}

pk_act pk_act_rows(const pk_act *a, int K, int r0)
{
    pk_act v = *a;
    size_t G = (size_t)(K + PK_GROUP - 1) / PK_GROUP;
    if (v.q) {
        v.q += r0 * G * PK_GROUP;
        v.scale += r0 * G;
        v.sum += r0 * G;
    }
    if (v.bf) v.bf += (size_t)r0 * 2 * ((K + 1) / 2);
    v.cap_rows -= r0;
    return v;
}

void pk_act_free(pk_act *a)
{
    free(a->q);
    free(a->scale);
    free(a->sum);
    free(a->bf);
    memset(a, 0, sizeof *a);
}

/* ==== Stores ==== */

/* out[r][0..n) (+)= acc[r] for the R rows of one tile. */
AI void store_tile(float *out, int ldo, v16 acc[][4], const int R, int n, int accumulate)
{
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * ldo;
        if (n == PK_TILE) {
            for (int j = 0; j < 4; j++) {
                v16 v = acc[r][j];
                if (accumulate) v += *(v16u *)(o + 16 * j);
                *(v16u *)(o + 16 * j) = v;
            }
        } else {
            for (int c = 0; c < n; c++) o[c] = (accumulate ? o[c] : 0.0f) + acc[r][c / 16][c % 16];
        }
    }
}

/* out[r][0..n) (+)= acc[r][0..n) for R rows, ldo apart. */
AI void add_rows(float *out, int ldo, float (*acc)[PK_TILE], int R, int n, int accumulate)
{
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * ldo;
        for (int c = 0; c < n; c++) o[c] = (accumulate ? o[c] : 0.0f) + acc[r][c];
    }
}

/* ==== fp32 / bf16 ==== */

/* out[r][0..64) (+)= x[r] @ tile for R rows, sums in registers. fp32: one
 * input per pass; bf16: a pair of inputs per 32-bit word (even: the low
 * half shifted up, odd: the high half masked), summed in input order. */
AI void float_tile(const unsigned char *tp, int K, float *out, int ldo, const float *x, int ldx,
                   const int R, int n, int accumulate, const int fmt)
{
    v16 acc[RB_F][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = (v16){0};
    if (fmt == PK_F32) {
        for (int k = 0; k < K; k++) {
            v16 w[4];
            for (int j = 0; j < 4; j++) {
                prefetch_ahead((const float *)tp + (size_t)k * PK_TILE + 16 * j);
                w[j] = *(const v16 *)((const float *)tp + (size_t)k * PK_TILE + 16 * j);
            }
            for (int r = 0; r < R; r++) {
                float xv = x[(size_t)r * ldx + k];
                for (int j = 0; j < 4; j++) acc[r][j] += xv * w[j];
            }
        }
    } else {
        for (int k = 0; k < K; k += 2) {
            v16 we[4], wo[4];
            for (int j = 0; j < 4; j++) {
                prefetch_ahead((const uint32_t *)tp + (size_t)(k / 2) * PK_TILE + 16 * j);
                v16w u = *(const v16w *)((const uint32_t *)tp + (size_t)(k / 2) * PK_TILE + 16 * j);
                we[j] = (v16)(u << 16);
                wo[j] = (v16)(u & 0xFFFF0000u);
            }
            /* an odd K's last pair has a zero weight in its high half: any
             * x taken for it adds exactly 0, so read x[k] again (in bounds) */
            int ko = k + 1 < K ? k + 1 : k;
            for (int r = 0; r < R; r++) {
                float xe = x[(size_t)r * ldx + k], xo = x[(size_t)r * ldx + ko];
                for (int j = 0; j < 4; j++) {
                    acc[r][j] += xe * we[j];
                    acc[r][j] += xo * wo[j];
                }
            }
        }
    }
    store_tile(out, ldo, acc, R, n, accumulate);
}

AI void float_tiles(const pmat *p, float *out, int ldo, const float *x, int ldx, int R, int t0,
                    int t1, int accumulate, const int fmt)
{
    for (int t = t0; t < t1; t++) {
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;
        for (int r = 0; r < R; r += RB_F) {
            const float *xr = x + (size_t)r * ldx;
            float *o = out + (size_t)r * ldo + c0;
            switch (R - r < RB_F ? R - r : RB_F) { /* constant row counts: sums in registers */
            case 1: float_tile(tp, p->K, o, ldo, xr, ldx, 1, n, accumulate, fmt); break;
            case 2: float_tile(tp, p->K, o, ldo, xr, ldx, 2, n, accumulate, fmt); break;
            case 3: float_tile(tp, p->K, o, ldo, xr, ldx, 3, n, accumulate, fmt); break;
            default: float_tile(tp, p->K, o, ldo, xr, ldx, 4, n, accumulate, fmt); break;
            }
        }
    }
}

CLONES
static void f32_tiles(const pmat *p, float *out, int ldo, const float *x, int ldx, int R, int t0,
                      int t1, int accumulate)
{
    float_tiles(p, out, ldo, x, ldx, R, t0, t1, accumulate, PK_F32);
}

CLONES
static void bf16_tiles(const pmat *p, float *out, int ldo, const float *x, int ldx, int R,
                       int t0, int t1, int accumulate)
{
    float_tiles(p, out, ldo, x, ldx, R, t0, t1, accumulate, PK_BF16);
}

/* ==== int8 ==== */

/* Portable int8 and int4: each group's sum of stored value times input in
 * int32, less the offset (128, 8) times the inputs' sum, scaled once: the
 * sums, in the same order, of the VNNI and AVX2 kernels. */
CLONES
static void quant_tiles_generic(const pmat *p, float *out, int ldo, const pk_act *a, int R, int t0,
                                int t1, int accumulate)
{
    int G = p->groups, i4 = p->fmt == PK_I4, off = i4 ? 8 : 128;
    size_t group = i4 ? PK_I4_GROUP_BYTES : GROUP_BYTES, scales = i4 ? PK_I4_GROUP_W : GROUP_W;
    for (int t = t0; t < t1; t++) {
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;
        for (int r = 0; r < R; r++) {
            float acc[PK_TILE] = {0};
            for (int g = 0; g < G; g++) {
                const unsigned char *gp = tp + (size_t)g * group;
                const int8_t *xq = a->q + ((size_t)r * G + g) * PK_GROUP;
                float ws[PK_TILE], xs = a->scale[(size_t)r * G + g] * p->unscale;
                mv_from_half(ws, (const uint16_t *)(gp + scales), PK_TILE);
                int32_t base = -off * a->sum[(size_t)r * G + g];
                for (int c = 0; c < PK_TILE; c++) {
                    int32_t s = base;
                    for (int i = 0; i < PK_GROUP; i++) s += stored(gp, i4, i, c) * xq[i];
                    acc[c] = fmaf((float)s, ws[c] * xs, acc[c]);
                }
            }
            add_rows(out + (size_t)r * ldo + c0, ldo, &acc, 1, n, accumulate);
        }
    }
}

#if defined(__x86_64__)
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define AVX512 __attribute__((target("avx512f")))

/* out[r][0..n) (+)= acc[r] for R rows of one tile, ldo apart, then + bias[0..n)
 * where given. */
AVX512 AI void store_acc(float *out, int ldo, __m512 (*acc)[4], const int R, int n, int accumulate,
                         const float *bias)
{
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * ldo;
        if (n == PK_TILE) {
            for (int j = 0; j < 4; j++) {
                __m512 v = acc[r][j];
                if (accumulate) v = _mm512_add_ps(_mm512_loadu_ps(o + 16 * j), v);
                if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + 16 * j));
                _mm512_storeu_ps(o + 16 * j, v);
            }
        } else {
            float tmp[PK_TILE];
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(tmp + 16 * j, acc[r][j]);
            for (int c = 0; c < n; c++) o[c] = (accumulate ? o[c] : 0.0f) + tmp[c];
            if (bias)
                for (int c = 0; c < n; c++) o[c] += bias[c];
        }
    }
}

VNNI AI void i8_tile_vnni(const unsigned char *tp, int G, float unscale, const pk_act *a, int r0,
                         const int R, float *out, int ldo, int n, int accumulate, const float *bias)
{
    __m512 acc[RB_Q][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        const unsigned char *gp = tp + (size_t)g * GROUP_BYTES;
        __m512i is[RB_Q][4];
        for (int r = 0; r < R; r++) {
            __m512i base = _mm512_set1_epi32(-128 * a->sum[(size_t)(r0 + r) * G + g]);
            for (int j = 0; j < 4; j++) is[r][j] = base;
        }
        for (int q = 0; q < QUADS; q++) {
            __m512i w[4];
            for (int j = 0; j < 4; j++) {
                prefetch_ahead(gp + q * PK_TILE * 4 + 64 * j);
                w[j] = _mm512_load_si512(gp + q * PK_TILE * 4 + 64 * j);
            }
            for (int r = 0; r < R; r++) {
                int32_t x4;
                memcpy(&x4, a->q + ((size_t)(r0 + r) * G + g) * PK_GROUP + 4 * q, sizeof x4);
                __m512i xb = _mm512_set1_epi32(x4);
                for (int j = 0; j < 4; j++) is[r][j] = _mm512_dpbusd_epi32(is[r][j], w[j], xb);
            }
        }
        __m512 ws[4];
        for (int j = 0; j < 4; j++) ws[j] = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(gp + GROUP_W + 32 * j)));
        for (int r = 0; r < R; r++) {
            __m512 xs = _mm512_set1_ps(a->scale[(size_t)(r0 + r) * G + g] * unscale);
            for (int j = 0; j < 4; j++)
                acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[r][j]), _mm512_mul_ps(ws[j], xs), acc[r][j]);
        }
    }
    store_acc(out + (size_t)r0 * ldo, ldo, acc, R, n, accumulate, bias);
}

/* Three rows by one tile over every group, in assembly: the body of
 * i8_tile_vnni for R = 3 with the same operations in the same order (so the
 * same bits), but with the 12 int32 group sums in zmm0-11 and the 12 fp32
 * sums in zmm12-23 throughout. gcc, given that loop in intrinsics, shuffles
 * the sums between registers (about 20 moves a quad): 69-83% of the
 * vpdpbusd peak in isolation against 78-87% here; the rescale alone leaves
 * 89% (measured). Decode's 3 rows take it too (with the prefetch, 3 rows
 * measured 7.2 ms a step against 8.2-8.6 in intrinsics on the Xeon). A
 * row's 4 inputs of the quad are each vpdpbusd's broadcast memory operand
 * ({1to16}) rather than a vpbroadcastd of their own: the 6-row prompt
 * kernel alone 160-168 -> 166-171 G multiply-adds a second (K 768) and
 * 174-185 -> 185-190 (K 3072) on a Zen 4 core, decode steps unchanged.
 *   zmm24-27  the quad's weights, then the group's weight scales
 *   zmm28     a row's scale
 *   zmm29     unscale; zmm30 a scale product */
#define Q_ROW(x, a, b, c, d)                                                                       \
    "vpdpbusd " x "%{1to16%}, %%zmm24, %%zmm" #a "\n\t"                                            \
    "vpdpbusd " x "%{1to16%}, %%zmm25, %%zmm" #b "\n\t"                                            \
    "vpdpbusd " x "%{1to16%}, %%zmm26, %%zmm" #c "\n\t"                                            \
    "vpdpbusd " x "%{1to16%}, %%zmm27, %%zmm" #d "\n\t"
#define BASE(src, a, b, c, d)                                                                      \
    "movl " src ", %%eax\n\t"                                                                      \
    "imull $-128, %%eax\n\t"                                                                       \
    "vpbroadcastd %%eax, %%zmm" #a "\n\t"                                                          \
    "vmovdqa64 %%zmm" #a ", %%zmm" #b "\n\t"                                                       \
    "vmovdqa64 %%zmm" #a ", %%zmm" #c "\n\t"                                                       \
    "vmovdqa64 %%zmm" #a ", %%zmm" #d "\n\t"
#define RESCALE(ws, i, f)                                                                          \
    "vmulps %%zmm28, %%zmm" #ws ", %%zmm30\n\t"                                                    \
    "vcvtdq2ps %%zmm" #i ", %%zmm" #i "\n\t"                                                       \
    "vfmadd231ps %%zmm30, %%zmm" #i ", %%zmm" #f "\n\t"
#define RESCALE_ROW(src, a, b, c, d, e, f, g, h)                                                   \
    "vbroadcastss " src ", %%zmm28\n\t"                                                            \
    "vmulps %%zmm29, %%zmm28, %%zmm28\n\t"                                                         \
    RESCALE(24, a, e) RESCALE(25, b, f) RESCALE(26, c, g) RESCALE(27, d, h)
#define ZERO(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n\t"
#define SAVE(i, at) "vmovups %%zmm" #i ", " #at "*64(%[acc])\n\t"

VNNI static void i8_tile3_asm(const unsigned char *tp, int G, float unscale, const pk_act *a, int r0,
                              float *out, int ldo, int n, int accumulate, const float *bias)
{
    float acc[RB_Q][PK_TILE];
    const unsigned char *w = tp;
    const int8_t *x = a->q + (size_t)r0 * G * PK_GROUP;
    const int32_t *sp = a->sum + (size_t)r0 * G;
    const float *sc = a->scale + (size_t)r0 * G;
    size_t xrow = (size_t)G * PK_GROUP, grow = (size_t)G * sizeof(float); /* row to row */
    long groups = G;
    __asm__ volatile(
        "vbroadcastss %[uns], %%zmm29\n\t"
        ZERO(12) ZERO(13) ZERO(14) ZERO(15) ZERO(16) ZERO(17)
        ZERO(18) ZERO(19) ZERO(20) ZERO(21) ZERO(22) ZERO(23)
        "1:\n\t"
        BASE("(%[sp])", 0, 1, 2, 3) BASE("(%[sp],%[grow])", 4, 5, 6, 7)
        BASE("(%[sp],%[grow],2)", 8, 9, 10, 11)
        "movl %[quads], %%ecx\n\t"
        "2:\n\t"
        PF_QUAD
        "vmovdqa64 (%[w]), %%zmm24\n\t"
        "vmovdqa64 64(%[w]), %%zmm25\n\t"
        "vmovdqa64 128(%[w]), %%zmm26\n\t"
        "vmovdqa64 192(%[w]), %%zmm27\n\t"
        Q_ROW("(%[x])", 0, 1, 2, 3) Q_ROW("(%[x],%[xrow])", 4, 5, 6, 7)
        Q_ROW("(%[x],%[xrow],2)", 8, 9, 10, 11)
        "addq $256, %[w]\n\t"
        "addq $4, %[x]\n\t"
        "decl %%ecx\n\t"
        "jnz 2b\n\t"
        "vcvtph2ps (%[w]), %%zmm24\n\t"
        "vcvtph2ps 32(%[w]), %%zmm25\n\t"
        "vcvtph2ps 64(%[w]), %%zmm26\n\t"
        "vcvtph2ps 96(%[w]), %%zmm27\n\t"
        RESCALE_ROW("(%[sc])", 0, 1, 2, 3, 12, 13, 14, 15)
        RESCALE_ROW("(%[sc],%[grow])", 4, 5, 6, 7, 16, 17, 18, 19)
        RESCALE_ROW("(%[sc],%[grow],2)", 8, 9, 10, 11, 20, 21, 22, 23)
        "addq %[scales], %[w]\n\t"
        "addq $4, %[sp]\n\t"
        "addq $4, %[sc]\n\t"
        "decq %[g]\n\t"
        "jnz 1b\n\t"
        SAVE(12, 0) SAVE(13, 1) SAVE(14, 2) SAVE(15, 3) SAVE(16, 4) SAVE(17, 5)
        SAVE(18, 6) SAVE(19, 7) SAVE(20, 8) SAVE(21, 9) SAVE(22, 10) SAVE(23, 11)
        : [w] "+r"(w), [x] "+r"(x), [sp] "+r"(sp), [sc] "+r"(sc), [g] "+r"(groups)
        : [xrow] "r"(xrow), [grow] "r"(grow), [acc] "r"(acc), [uns] "m"(unscale),
          [quads] "i"(QUADS), [scales] "i"(GROUP_BYTES - GROUP_W), [pf] "m"(pk_prefetch)
        : "rax", "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19",
          "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29",
          "xmm30", "cc", "memory");
    __m512 sums[RB_Q][4];
    for (int r = 0; r < RB_Q; r++)
        for (int j = 0; j < 4; j++) sums[r][j] = _mm512_loadu_ps(acc[r] + 16 * j);
    store_acc(out + (size_t)r0 * ldo, ldo, sums, RB_Q, n, accumulate, bias);
}

/* Six rows by one tile, for prompts: 24 int32 group sums in zmm0-23 (the
 * same operations in the same order as i8_tile_vnni, so the same bits), the
 * fp32 sums in memory (acc, in L1), read and written once a group. Each
 * quad's 256 weight bytes then serve 24 vpdpbusd rather than 12 (with 3
 * rows, 43 bytes a cycle from L2 at 2 vpdpbusd a cycle). One core of the
 * Xeon, 512 rows, best of 40: K 768 x N 3072 285 -> 308 G multiply-adds a
 * second, K 3072 x N 768 302 -> 328 (the peak is about 420).
 *   zmm24-27  the quad's weights, then the group's weight scales
 *   zmm28     a row's scale
 *   zmm29     unscale; zmm30 a scale product; zmm31 fp32 sums */
#define RESCALE_M(ws, i) /* sums zmm i: row i / 4, columns 16 (i % 4).., at acc + 64 i bytes */   \
    "vmulps %%zmm28, %%zmm" #ws ", %%zmm30\n\t"                                                    \
    "vcvtdq2ps %%zmm" #i ", %%zmm" #i "\n\t"                                                       \
    "vmovaps " #i "*64(%[acc]), %%zmm31\n\t"                                                       \
    "vfmadd231ps %%zmm30, %%zmm" #i ", %%zmm31\n\t"                                                \
    "vmovaps %%zmm31, " #i "*64(%[acc])\n\t"
#define RESCALE_ROW_M(src, a, b, c, d)                                                             \
    "vbroadcastss " src ", %%zmm28\n\t"                                                            \
    "vmulps %%zmm29, %%zmm28, %%zmm28\n\t"                                                         \
    RESCALE_M(24, a) RESCALE_M(25, b) RESCALE_M(26, c) RESCALE_M(27, d)

VNNI static void i8_tile6_asm(const unsigned char *tp, int G, float unscale, const pk_act *a, int r0,
                              float *out, int ldo, int n, int accumulate, const float *bias)
{
    enum { R6 = 6 };
    float acc[R6][PK_TILE] __attribute__((aligned(64))) = {{0}};
    const unsigned char *w = tp;
    size_t xrow = (size_t)G * PK_GROUP, grow = (size_t)G * sizeof(float); /* row to row */
    const int8_t *x = a->q + (size_t)r0 * xrow, *x3 = x + 3 * xrow;
    const int32_t *sp = a->sum + (size_t)r0 * G, *sp3 = sp + 3 * G;
    const float *sc = a->scale + (size_t)r0 * G, *sc3 = sc + 3 * G;
    long groups = G;
    __asm__ volatile(
        "vbroadcastss %[uns], %%zmm29\n\t"
        "1:\n\t"
        BASE("(%[sp])", 0, 1, 2, 3) BASE("(%[sp],%[grow])", 4, 5, 6, 7)
        BASE("(%[sp],%[grow],2)", 8, 9, 10, 11) BASE("(%[sp3])", 12, 13, 14, 15)
        BASE("(%[sp3],%[grow])", 16, 17, 18, 19) BASE("(%[sp3],%[grow],2)", 20, 21, 22, 23)
        "movl %[quads], %%ecx\n\t"
        "2:\n\t"
        PF_QUAD
        "vmovdqa64 (%[w]), %%zmm24\n\t"
        "vmovdqa64 64(%[w]), %%zmm25\n\t"
        "vmovdqa64 128(%[w]), %%zmm26\n\t"
        "vmovdqa64 192(%[w]), %%zmm27\n\t"
        Q_ROW("(%[x])", 0, 1, 2, 3) Q_ROW("(%[x],%[xrow])", 4, 5, 6, 7)
        Q_ROW("(%[x],%[xrow],2)", 8, 9, 10, 11) Q_ROW("(%[x3])", 12, 13, 14, 15)
        Q_ROW("(%[x3],%[xrow])", 16, 17, 18, 19) Q_ROW("(%[x3],%[xrow],2)", 20, 21, 22, 23)
        "addq $256, %[w]\n\t"
        "addq $4, %[x]\n\t"
        "addq $4, %[x3]\n\t"
        "decl %%ecx\n\t"
        "jnz 2b\n\t"
        "vcvtph2ps (%[w]), %%zmm24\n\t"
        "vcvtph2ps 32(%[w]), %%zmm25\n\t"
        "vcvtph2ps 64(%[w]), %%zmm26\n\t"
        "vcvtph2ps 96(%[w]), %%zmm27\n\t"
        RESCALE_ROW_M("(%[sc])", 0, 1, 2, 3)
        RESCALE_ROW_M("(%[sc],%[grow])", 4, 5, 6, 7)
        RESCALE_ROW_M("(%[sc],%[grow],2)", 8, 9, 10, 11)
        RESCALE_ROW_M("(%[sc3])", 12, 13, 14, 15)
        RESCALE_ROW_M("(%[sc3],%[grow])", 16, 17, 18, 19)
        RESCALE_ROW_M("(%[sc3],%[grow],2)", 20, 21, 22, 23)
        "addq %[scales], %[w]\n\t"
        "addq $4, %[sp]\n\t"
        "addq $4, %[sp3]\n\t"
        "addq $4, %[sc]\n\t"
        "addq $4, %[sc3]\n\t"
        "decq %[g]\n\t"
        "jnz 1b\n\t"
        : [w] "+r"(w), [x] "+r"(x), [x3] "+r"(x3), [sp] "+r"(sp), [sp3] "+r"(sp3), [sc] "+r"(sc),
          [sc3] "+r"(sc3), [g] "+r"(groups)
        : [xrow] "r"(xrow), [grow] "r"(grow), [acc] "r"(acc), [uns] "m"(unscale),
          [quads] "i"(QUADS), [scales] "i"(GROUP_BYTES - GROUP_W), [pf] "m"(pk_prefetch)
        : "rax", "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19",
          "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29",
          "xmm30", "xmm31", "cc", "memory");
    __m512 sums[R6][4];
    for (int r = 0; r < R6; r++)
        for (int j = 0; j < 4; j++) sums[r][j] = _mm512_load_ps(acc[r] + 16 * j);
    store_acc(out + (size_t)r0 * ldo, ldo, sums, R6, n, accumulate, bias);
}
#undef RESCALE_M
#undef RESCALE_ROW_M
#undef Q_ROW
#undef BASE
#undef RESCALE
#undef RESCALE_ROW
#undef ZERO
#undef SAVE

/* Rows r..R of a by one tile (out: the tile's first column). */
VNNI static void i8_rows_vnni(const pmat *p, const unsigned char *tp, const pk_act *a, int r, int R,
                              float *out, int ldo, int n, int accumulate, const float *bias)
{
    for (; R - r >= 6; r += 6) /* prompts (and 6-8 decode rows) */
        i8_tile6_asm(tp, p->groups, p->unscale, a, r, out, ldo, n, accumulate, bias);
    for (; R - r >= RB_Q; r += RB_Q) /* 3 decode rows, a prompt's last rows */
        i8_tile3_asm(tp, p->groups, p->unscale, a, r, out, ldo, n, accumulate, bias);
    for (; r < R; r += RB_Q) {
        switch (R - r < RB_Q ? R - r : RB_Q) {
        case 1: i8_tile_vnni(tp, p->groups, p->unscale, a, r, 1, out, ldo, n, accumulate, bias); break;
        case 2: i8_tile_vnni(tp, p->groups, p->unscale, a, r, 2, out, ldo, n, accumulate, bias); break;
        default: i8_tile_vnni(tp, p->groups, p->unscale, a, r, 3, out, ldo, n, accumulate, bias); break;
        }
    }
}

/* Rows the next AMX call takes of the R left (amx.h): up to 32, or 16
 * without amx_pair_rows. A 20-row bf16 prompt after 627 cached tokens went
 * from 20.5-21.5 to 16.0 ms when its last 4 rows left vdpbf16ps for a call
 * of 20 (with its weights fetched ahead, amx.c). */
static int amx_rows(int R)
{
    int most = amx_pair_rows ? 2 * AMX_ROWS : AMX_ROWS;
    return R < most ? R : most;
}

/* The flags of an AMX call of m of R rows (amx.h) for rows a (or none):
 * streaming where the call has the tile to itself and it is not warm. */
static int amx_flags(const pk_act *a, int R, int m)
{
    int warm = a && a->warm, hold = a && a->hold;
    return (R <= m && !warm ? AMX_STREAM : 0) | (hold ? AMX_HOLD : 0);
}

/* amx: 0, or AMX_HW / AMX_EMU for the rows amx_rows gives it (amx.h). */
VNNI static void i8_tiles_vnni(const pmat *p, float *out, int ldo, const pk_act *a, int R, int t0,
                               int t1, int accumulate, const float *bias, int amx)
{
    size_t G = p->groups;
    for (int t = t0; t < t1; t++) {
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE, r = 0;
        const float *b = bias ? bias + c0 : NULL;
        for (int m; amx && (m = amx_rows(R - r)); r += m)
            amx_i8_rows(amx, m, tp, p->groups, p->unscale, a->q + r * G * PK_GROUP, G * PK_GROUP,
                        a->sum + r * G, a->scale + r * G, G, out + (size_t)r * ldo + c0, ldo, n, accumulate,
                        b, amx_flags(a, R, m));
        i8_rows_vnni(p, tp, a, r, R, out + c0, ldo, n, accumulate, b);
    }
}

/* R rows of bf16 activations (pairs of inputs per 32-bit word, ldx words
 * apart) by one bf16 tile: one vdpbf16ps per pair of inputs, 16 columns and
 * row; R x 64 sums in registers. */
BF16DP AI void bf16_tile_dp(const unsigned char *tp, int P, const uint32_t *x, size_t ldx, const int R,
                            float *out, int ldo, int n, int accumulate, const float *bias)
{
    __m512 acc[RB_D][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    for (int i = 0; i < P; i++) {
        __m512bh w[4];
        for (int j = 0; j < 4; j++) w[j] = (__m512bh)_mm512_loadu_si512(tp + ((size_t)i * PK_TILE + 16 * j) * 4);
        for (int r = 0; r < R; r++) {
            __m512bh xb = (__m512bh)_mm512_set1_epi32((int)x[(size_t)r * ldx + i]);
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], w[j], xb);
        }
    }
    store_acc(out, ldo, acc, R, n, accumulate, bias);
}

/* R rows of bf16 pairs by one bf16 tile, RB_D rows at a time. */
BF16DP static void bf16_rows_dp(const unsigned char *tp, int P, const uint32_t *x, size_t ldx, int R,
                                float *out, int ldo, int n, int accumulate, const float *bias)
{
    for (int r = 0; r < R; r += RB_D) {
        const uint32_t *xr = x + (size_t)r * ldx;
        float *o = out + (size_t)r * ldo;
        switch (R - r < RB_D ? R - r : RB_D) {
        case 1: bf16_tile_dp(tp, P, xr, ldx, 1, o, ldo, n, accumulate, bias); break;
        case 2: bf16_tile_dp(tp, P, xr, ldx, 2, o, ldo, n, accumulate, bias); break;
        case 3: bf16_tile_dp(tp, P, xr, ldx, 3, o, ldo, n, accumulate, bias); break;
        case 4: bf16_tile_dp(tp, P, xr, ldx, 4, o, ldo, n, accumulate, bias); break;
        case 5: bf16_tile_dp(tp, P, xr, ldx, 5, o, ldo, n, accumulate, bias); break;
        default: bf16_tile_dp(tp, P, xr, ldx, 6, o, ldo, n, accumulate, bias); break;
        }
    }
}

/* R rows of bf16 pairs by one bf16 tile: on AMX tiles where amx (AMX_HW /
 * AMX_EMU) as amx_rows gives them, the rest by vdpbf16ps. */
BF16DP static void bf16_rows(const unsigned char *tp, int P, const uint32_t *x, size_t ldx, int R,
                             float *out, int ldo, int n, int accumulate, const float *bias, int amx,
                             const pk_act *a)
{
    int r = 0;
    for (int m; amx && (m = amx_rows(R - r)); r += m)
        amx_bf16_rows(amx, m, tp, P, x + (size_t)r * ldx, ldx, out + (size_t)r * ldo, ldo, n, accumulate, bias,
                      amx_flags(a, R, m));
    if (r < R)
        bf16_rows_dp(tp, P, x + (size_t)r * ldx, ldx, R - r, out + (size_t)r * ldo, ldo, n, accumulate, bias);
}

BF16DP static void bf16_tiles_dp(const pmat *p, float *out, int ldo, const pk_act *a, int R, int t0,
                                 int t1, int accumulate, const float *bias)
{
    int amx = pk_amx();
    for (int t = t0; t < t1; t++) {
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;
        bf16_rows(p->data + (size_t)t * p->tile_bytes, (p->K + 1) / 2, (const uint32_t *)a->bf,
                  (p->K + 1) / 2, R, out + c0, ldo, n, accumulate, bias ? bias + c0 : NULL, amx, a);
    }
}

void pk_bf16_product(const uint32_t *tile, int P, const uint32_t *x, size_t ldx, int R, float *out,
                     int ldo, int n, int accumulate)
{
    bf16_rows((const unsigned char *)tile, P, x, ldx, R, out, ldo, n, accumulate, NULL, pk_amx(), NULL);
}

/* ==== fp32 prompts (AVX-512) ====
 *
 * A prompt's products with fp32 weights (or bf16 ones widened once per
 * tile) and its attention: RB_P rows by a panel of up to 64 columns, the
 * 24 sums in registers, one fma per weight vector and row. OpenBLAS was
 * the prompt path here, but the Debian build (0.3.21) does not know every
 * CPU: on this session's Xeon (family 6 model 207) it picked its SSE3
 * "Prescott" kernel, 16 G multiply-adds a second on a core against 52 for
 * its AVX-512 one and about 84 at the fma peak. */
#define RB_P 6

AVX512 AI void f32_panel(const float *w, size_t ldw, int K, const float *x, size_t ldx, const int R,
                         float alpha, float *out, int ldo, int n, int accumulate, const float *bias,
                         const int full)
{
    __m512 acc[RB_P][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    /* columns n..64 are not read: a caller's w may end there, or hold
     * anything (denormals there once cost more than the panel itself) */
    __mmask16 m[4];
    for (int j = 0; j < 4; j++) {
        int lanes = n - 16 * j;
        m[j] = lanes >= 16 ? 0xFFFF : lanes > 0 ? (__mmask16)((1u << lanes) - 1) : 0;
    }
    for (int k = 0; k < K; k++) {
        __m512 wv[4];
        /* full panels load without masks: gcc 12 kept the 4 masks on the
         * stack and reloaded them every step of k, and a full panel ran at
         * 68-72 G multiply-adds a second a core on the Xeon with AMX
         * against 84-89 without (fp32 prefill 512 384-397 -> 328-339 ms) */
        for (int j = 0; j < 4; j++)
            wv[j] = full ? _mm512_loadu_ps(w + (size_t)k * ldw + 16 * j)
                         : _mm512_maskz_loadu_ps(m[j], w + (size_t)k * ldw + 16 * j);
        for (int r = 0; r < R; r++) {
            __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + k]);
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(xb, wv[j], acc[r][j]);
        }
    }
    /* the sums leave through a copy: with acc itself passed to store_acc,
     * gcc 12 stored all 24 to the stack in every step of k (fp32 prefill
     * 512 took 740 ms against 460 with the copy) */
    __m512 fin[RB_P][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) fin[r][j] = alpha != 1.0f ? _mm512_mul_ps(acc[r][j], _mm512_set1_ps(alpha)) : acc[r][j];
    store_acc(out, ldo, fin, R, n, accumulate, bias);
}

AVX512 static void f32_panel_rows(const float *w, size_t ldw, int K, const float *x, size_t ldx, int R,
                                  float alpha, float *out, int ldo, int n, int accumulate,
                                  const float *bias)
{
    for (int r = 0; r < R; r += RB_P) {
        const float *xr = x + (size_t)r * ldx;
        float *o = out + (size_t)r * ldo;
#define PANEL(rows, full) f32_panel(w, ldw, K, xr, ldx, rows, alpha, o, ldo, n, accumulate, bias, full)
        int full = n == PK_TILE;
        switch (R - r < RB_P ? R - r : RB_P) {
        case 1: full ? PANEL(1, 1) : PANEL(1, 0); break;
        case 2: full ? PANEL(2, 1) : PANEL(2, 0); break;
        case 3: full ? PANEL(3, 1) : PANEL(3, 0); break;
        case 4: full ? PANEL(4, 1) : PANEL(4, 0); break;
        case 5: full ? PANEL(5, 1) : PANEL(5, 0); break;
        default: full ? PANEL(6, 1) : PANEL(6, 0); break;
        }
#undef PANEL
    }
}

static void f32_product_avx512(const float *w, size_t ldw, int K, const float *x, size_t ldx, int R,
                               float alpha, float *out, int ldo, int n, int accumulate, const float *bias)
{
    for (int c = 0; c < n; c += PK_TILE)
        f32_panel_rows(w + c, ldw, K, x, ldx, R, alpha, out + c, ldo,
                       n - c < PK_TILE ? n - c : PK_TILE, accumulate, bias ? bias + c : NULL);
}

/* Seconds for 12 x reps independent vdpbf16ps (dp) or vfmadd231ps. */
#define RATE_LOOP(op)                                                                              \
    "1:\n\t" op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)           \
    "decl %%ecx\n\tjnz 1b\n\t"
#define OP_DP(i) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #i "\n\t"
#define OP_FMA(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n\t"
BF16DP static double rate_time(int dp, int reps)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (dp)
        __asm__ volatile("movl %0, %%ecx\n\t" RATE_LOOP(OP_DP) ::"r"(reps)
                         : "ecx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                           "xmm8", "xmm9", "xmm10", "xmm11", "cc");
    else
        __asm__ volatile("movl %0, %%ecx\n\t" RATE_LOOP(OP_FMA) ::"r"(reps)
                         : "ecx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                           "xmm8", "xmm9", "xmm10", "xmm11", "cc");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
}
#undef RATE_LOOP
#undef OP_DP
#undef OP_FMA

/* vdpbf16ps does 32 multiply-adds, vfmadd231ps 16: whether the first
 * does more a second here. Zen 4 runs one of either a cycle (bf16 twice
 * as fast); this session's Xeon two fmas a cycle but a vdpbf16ps about
 * every 2.3 cycles (bf16 half as fast). Timed once, best of 5 of each,
 * interleaved, about 0.3 ms in all. */
int pk_bf16_dp_faster(void)
{
    static int faster = -1;
    if (faster >= 0) return faster;
    if (!pk_bf16_dp()) return faster = 0;
    double dp = 1e9, fma = 1e9;
    for (int i = 0; i < 5; i++) {
        double a = rate_time(1, 2000), b = rate_time(0, 2000);
        dp = a < dp ? a : dp;
        fma = b < fma ? b : fma;
    }
    return faster = 32.0 / dp > 16.0 / fma;
}

/* Two bf16 halves, lo and hi, of one 32-bit word per lane. */
BF16DP AI __m512i bf16_words(__m512 lo, __m512 hi)
{
    __m512i a = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}

BF16DP void pk_bf16_values(uint32_t *dst, const float *v, int n)
{
    for (int i = 0; 2 * i < n; i++) {
        const float *a = v + (size_t)2 * i * PK_TILE, *b = a + PK_TILE;
        for (int j = 0; j < PK_TILE; j += 16) {
            __m512 hi = 2 * i + 1 < n ? _mm512_loadu_ps(b + j) : _mm512_setzero_ps();
            _mm512_storeu_si512(dst + (size_t)i * PK_TILE + j, bf16_words(_mm512_loadu_ps(a + j), hi));
        }
    }
}

/* AVX-512 F, BW and VL plus one more feature (a string literal). */
#define AVX512_WITH(feature)                                                                     \
    (__builtin_cpu_init(), __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && \
                               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports(feature))

int pk_bf16_dp(void)
{
    static int has = -1;
    if (has < 0) has = AVX512_WITH("avx512bf16");
    return has;
}

int pk_vnni(void)
{
    static int has = -1;
    if (has < 0) has = AVX512_WITH("avx512vnni");
    return has && !pk_force_generic;
}

const char *pk_kernels(int fmt)
{
    if (pk_force_generic == 1) return "portable";
    if (fmt == PK_I4) return avx2() ? "avx2" : "portable";
    if (pk_forced_avx2()) return fmt == PK_I8 && avx_vnni() ? "avx-vnni" : avx2() ? "avx2" : "portable";
    if (fmt != PK_F32 && pk_amx()) return fmt == PK_I8 ? "amx-int8" : "amx-bf16";
    if (fmt == PK_I8 && pk_vnni()) return "avx512-vnni";
    if (fmt == PK_BF16 && pk_bf16_dp()) return "avx512-bf16";
    if (pk_f32_prompts()) return "avx512";
    return fmt == PK_I8 && avx_vnni() ? "avx-vnni" : avx2() ? "avx2" : "portable";
}

int pk_amx(void)
{
    if (pk_force_generic == 3) return AVX512_WITH("avx512vnni") && pk_bf16_dp() ? AMX_EMU : 0;
    return !pk_force_generic && !pk_amx_off && amx_usable() ? AMX_HW : 0;
}

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* int8 without VNNI: vpmaddwd, 16 exact products of int16 at a time. The
 * stored bytes (w + 128) are zero-extended to int16 (vpmovzxbw: 4 inputs of
 * 4 columns per ymm) and multiplied with the row's 4 inputs of the quad,
 * widened once per group and broadcast; each column gets two int32 sums,
 * which vphaddd folds at the group's end before the -128 * sum(x) that
 * undoes the offset. The group sums are the VNNI kernel's exactly, and so
 * is their fp32 epilogue. 6 rows (prompts) or fewer (decode) by 8 columns
 * at a time, the weights read once for all of them; the fp32 sums of the
 * tile's 64 columns wait in an L1 buffer. Without VNNI the multiply and the
 * add are two instructions, and Zen 3 (measured, a KVM guest) issues about
 * two vector-integer instructions a cycle of any kind, so 16 products take
 * about as long as 16 fp32 fmas: 6 rows run at 55-58 GMAC/s per core, where
 * sgemm on widened tiles ran at 37-45 (the vpmaddubsw kernel this replaced
 * needed a vpsignb per weight and row, and read the tile once per row). */
#define RB_A 6
#define PF_A 2 /* groups ahead */

/* 6 rows by 8 columns over a group's 16 quads in assembly: gcc's code for
 * the same intrinsics spilled sums (12 of them, two weights, an input and
 * a product fill all 16 ymm). sums: the rows' lo, hi int32 pairs. */
#define A2_ROW(r, lo, hi)                                                                          \
    "vpbroadcastq " #r "*128(%[x]), %%ymm14\n\t"                                                \
    "vpmaddwd %%ymm14, %%ymm12, %%ymm15\n\t"                                                    \
    "vpaddd %%ymm15, %%ymm" #lo ", %%ymm" #lo "\n\t"                                              \
    "vpmaddwd %%ymm14, %%ymm13, %%ymm15\n\t"                                                    \
    "vpaddd %%ymm15, %%ymm" #hi ", %%ymm" #hi "\n\t"

AVX2 static inline void i8_quads6_asm(const unsigned char *w, const int16_t *x, __m256i *sums)
{
    __asm__ volatile(
        "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
        "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
        "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
        "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
        "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"
        "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
        "vpxor %%xmm6, %%xmm6, %%xmm6\n\t"
        "vpxor %%xmm7, %%xmm7, %%xmm7\n\t"
        "vpxor %%xmm8, %%xmm8, %%xmm8\n\t"
        "vpxor %%xmm9, %%xmm9, %%xmm9\n\t"
        "vpxor %%xmm10, %%xmm10, %%xmm10\n\t"
        "vpxor %%xmm11, %%xmm11, %%xmm11\n\t"
        "mov $16, %%ecx\n"
        "1:\n\t"
        "vpmovzxbw (%[w]), %%ymm12\n\t"
        "vpmovzxbw 16(%[w]), %%ymm13\n\t"
        A2_ROW(0, 0, 1) A2_ROW(1, 2, 3) A2_ROW(2, 4, 5) A2_ROW(3, 6, 7) A2_ROW(4, 8, 9) A2_ROW(5, 10, 11)
        "add $256, %[w]\n\t"
        "add $8, %[x]\n\t"
        "dec %%ecx\n\t"
        "jnz 1b\n\t"
        "vmovdqu %%ymm0, 0(%[s])\n\t"
        "vmovdqu %%ymm1, 32(%[s])\n\t"
        "vmovdqu %%ymm2, 64(%[s])\n\t"
        "vmovdqu %%ymm3, 96(%[s])\n\t"
        "vmovdqu %%ymm4, 128(%[s])\n\t"
        "vmovdqu %%ymm5, 160(%[s])\n\t"
        "vmovdqu %%ymm6, 192(%[s])\n\t"
        "vmovdqu %%ymm7, 224(%[s])\n\t"
        "vmovdqu %%ymm8, 256(%[s])\n\t"
        "vmovdqu %%ymm9, 288(%[s])\n\t"
        "vmovdqu %%ymm10, 320(%[s])\n\t"
        "vmovdqu %%ymm11, 352(%[s])\n\t"
        : [w] "+r"(w), [x] "+r"(x)
        : [s] "r"(sums)
        : "ecx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
}

/* i8_quads6_asm's sums for fewer rows (decode, a prompt's last rows). */
AVX2 AI void i8_quads_avx2(const unsigned char *w, int16_t (*xw)[PK_GROUP], const int R, __m256i *lo,
                          __m256i *hi)
{
    for (int r = 0; r < R; r++) lo[r] = hi[r] = _mm256_setzero_si256();
    for (int q = 0; q < QUADS; q++) {
        const unsigned char *wq = w + (size_t)q * PK_TILE * 4;
        __m256i wl = _mm256_cvtepu8_epi16(_mm_load_si128((const __m128i *)wq));
        __m256i wh = _mm256_cvtepu8_epi16(_mm_load_si128((const __m128i *)(wq + 16)));
        for (int r = 0; r < R; r++) {
            int64_t x4;
            memcpy(&x4, xw[r] + 4 * q, sizeof x4);
            __m256i xb = _mm256_set1_epi64x(x4);
            lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(wl, xb));
            hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(wh, xb));
        }
    }
}

/* Group g's factors for rows r0..r0+R: each row's scale times unscale (xs)
 * and the -off * sum(x) that undoes the weights' offset (base: int8's 128,
 * int4's 8). */
AVX2 AI void group_factors(const pk_act *a, int r0, const int R, int G, int g, float unscale,
                           int off, __m256 *xs, __m256i *base)
{
    for (int r = 0; r < R; r++) {
        size_t at = (size_t)(r0 + r) * G + g;
        xs[r] = _mm256_set1_ps(a->scale[at] * unscale);
        base[r] = _mm256_set1_epi32(-off * a->sum[at]);
    }
}

AVX2 AI void i8_block_avx2(const unsigned char *tp, int G, float unscale, const pk_act *a, int r0,
                          const int R, float *out, int ldo, int n, int accumulate)
{
    float acc[RB_A][PK_TILE] __attribute__((aligned(32)));
    memset(acc, 0, sizeof acc);
    for (int g = 0; g < G; g++) {
        const unsigned char *gp = tp + (size_t)g * GROUP_BYTES;
        int16_t xw[RB_A][PK_GROUP] __attribute__((aligned(32)));
        __m256 xs[RB_A];
        __m256i base[RB_A];
        group_factors(a, r0, R, G, g, unscale, 128, xs, base);
        for (int r = 0; r < R; r++) {
            const int8_t *xq = a->q + ((size_t)(r0 + r) * G + g) * PK_GROUP;
            for (int i = 0; i < PK_GROUP; i += 16)
                _mm256_store_si256((__m256i *)(xw[r] + i), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(xq + i))));
        }
        const uint16_t *scales = (const uint16_t *)(gp + GROUP_W);
        for (int c = 0; c < PK_TILE; c += 8) {
            /* 8 columns read 32 bytes of every 256: the hardware prefetcher
             * misses the rest (decode measured 1.7x slower without these
             * prefetches), so fetch the group PF_A ahead, a ninth per pass.
             * Past the tile is the next tile, or nothing (no fault). */
            for (int l = c / 8 * 9; l < c / 8 * 9 + 9; l++) {
                _mm_prefetch((const char *)gp + PF_A * GROUP_BYTES + 64 * l, _MM_HINT_T0);
                prefetch_far(gp + 64 * l);
            }
            __m256i lo[RB_A], hi[RB_A]; /* columns c..c+3, c+4..c+7: two sums each */
            if (R == RB_A) {
                __m256i sums[2 * RB_A];
                i8_quads6_asm(gp + c * 4, xw[0], sums);
                for (int r = 0; r < R; r++) lo[r] = sums[2 * r], hi[r] = sums[2 * r + 1];
            } else {
                i8_quads_avx2(gp + c * 4, xw, R, lo, hi);
            }
            __m256 ws = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(scales + c)));
            for (int r = 0; r < R; r++) {
                /* hadd: c, c+1, c+4, c+5 | c+2, c+3, c+6, c+7; then in order */
                __m256i sum = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo[r], hi[r]), 0xD8);
                __m256 *o = (__m256 *)(acc[r] + c);
                *o = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sum, base[r])),
                                     _mm256_mul_ps(ws, xs[r]), *o);
            }
        }
    }
    add_rows(out + (size_t)r0 * ldo, ldo, acc, R, n, accumulate);
}

/* A tile's rows in blocks of up to RB_A through block (i8_block_avx2 or
 * i8_block_avxvnni), row counts constant in each call. */
#define I8_TILES(block)                                                                            \
    for (int t = t0; t < t1; t++) {                                                                \
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;                             \
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;                       \
        for (int r = 0; r < R; r += RB_A) {                                                        \
            float *o = out + c0;                                                                   \
            switch (R - r < RB_A ? R - r : RB_A) {                                                 \
            case 1: block(tp, p->groups, p->unscale, a, r, 1, o, ldo, n, accumulate); break;       \
            case 2: block(tp, p->groups, p->unscale, a, r, 2, o, ldo, n, accumulate); break;       \
            case 3: block(tp, p->groups, p->unscale, a, r, 3, o, ldo, n, accumulate); break;       \
            case 4: block(tp, p->groups, p->unscale, a, r, 4, o, ldo, n, accumulate); break;       \
            case 5: block(tp, p->groups, p->unscale, a, r, 5, o, ldo, n, accumulate); break;       \
            default: block(tp, p->groups, p->unscale, a, r, 6, o, ldo, n, accumulate); break;      \
            }                                                                                      \
        }                                                                                          \
    }

AVX2 static void i8_tiles_avx2(const pmat *p, float *out, int ldo, const pk_act *a, int R, int t0,
                               int t1, int accumulate)
{
    I8_TILES(i8_block_avx2)
}

/* int4 on AVX2: a block's 32 bytes of a quad split into two of int8's
 * quad rows (vpand, vpsrlw + vpand: 8 columns by 4 inputs each, the
 * stored nibbles as unsigned bytes); vpmaddubsw multiplies them with the
 * row's 4 inputs, broadcast, into pairs of int16 (at most 2 * 15 * 127, no
 * saturation), vpmaddwd by ones folds each column's pair into int32. A
 * pass: up to RB_4 rows by 16 columns over the group's 16 quads, the sums
 * starting at -8 * sum(x); then int8's epilogue, so the generic kernel's
 * bits. Half int8's bytes, and about half its vector instructions per
 * weight (the widening and the two vpmaddwd of 8 columns are one vpmaddubsw
 * and one vpmaddwd of 8 here). */
#define RB_4 4 /* 8 sums, 2 weights, an input, a product and 2 constants */

/* 3 or 4 rows' 16 columns (block b's bytes at w) over a group's 16 quads
 * in assembly, the products summed in int16 over 8 quads (at most 8 *
 * 3810) and folded into the int32 sums in memory (sums: each row's two, in
 * and out) by vpmaddwd with ones: 4 vector instructions a row and quad
 * where the intrinsics' per quad fold took 6; gcc, given those with int16
 * sums, spilled them (3 rows: 8.1 ms a step against 7.6 per quad). x: row
 * 0's group inputs, rows xrow bytes apart. */
#define I4_ROW(src, a, b)                                                                          \
    "vpbroadcastd " src ", %%ymm14\n\t"                                                             \
    "vpmaddubsw %%ymm14, %%ymm12, %%ymm15\n\t"                                                     \
    "vpaddw %%ymm15, %%ymm" #a ", %%ymm" #a "\n\t"                                                 \
    "vpmaddubsw %%ymm14, %%ymm13, %%ymm15\n\t"                                                     \
    "vpaddw %%ymm15, %%ymm" #b ", %%ymm" #b "\n\t"
#define I4_ZERO(i) "vpxor %%xmm" #i ", %%xmm" #i ", %%xmm" #i "\n\t"
#define I4_FOLD(i)                                                                                 \
    "vpmaddwd %[ones], %%ymm" #i ", %%ymm" #i "\n\t"                                                \
    "vpaddd " #i "*32(%[s]), %%ymm" #i ", %%ymm" #i "\n\t"                                          \
    "vmovdqu %%ymm" #i ", " #i "*32(%[s])\n\t"
#define I4_LOOP(zero, rows, fold)                                                                  \
    "mov $2, %%edx\n"                                                                              \
    "4:\n\t" zero                                                                                  \
    "mov $8, %%ecx\n"                                                                              \
    "1:\n\t"                                                                                       \
    "vmovdqa (%[w]), %%ymm13\n\t"                                                                  \
    "vpand %[low], %%ymm13, %%ymm12\n\t"                                                           \
    "vpsrlw $4, %%ymm13, %%ymm13\n\t"                                                              \
    "vpand %[low], %%ymm13, %%ymm13\n\t"                                                           \
    rows                                                                                           \
    "add $128, %[w]\n\t"                                                                           \
    "add $4, %[x]\n\t"                                                                             \
    "add $4, %[x3]\n\t"                                                                            \
    "dec %%ecx\n\t"                                                                                \
    "jnz 1b\n\t" fold                                                                              \
    "dec %%edx\n\t"                                                                                \
    "jnz 4b\n\t"

AVX2 static inline void i4_quads_asm(const unsigned char *w, const int8_t *x, size_t xrow, const int R,
                                     __m256i *sums)
{
    const int8_t *x3 = x + 3 * xrow;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    if (R == 3)
        __asm__ volatile(I4_LOOP(I4_ZERO(0) I4_ZERO(1) I4_ZERO(2) I4_ZERO(3) I4_ZERO(4) I4_ZERO(5),
                                 I4_ROW("(%[x])", 0, 1) I4_ROW("(%[x],%[xrow])", 2, 3)
                                 I4_ROW("(%[x],%[xrow],2)", 4, 5),
                                 I4_FOLD(0) I4_FOLD(1) I4_FOLD(2) I4_FOLD(3) I4_FOLD(4) I4_FOLD(5))
                         : [w] "+r"(w), [x] "+r"(x), [x3] "+r"(x3)
                         : [s] "r"(sums), [xrow] "r"(xrow), [low] "m"(low), [ones] "m"(ones)
                         : "ecx", "edx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm12",
                           "xmm13", "xmm14", "xmm15", "memory", "cc");
    else
        __asm__ volatile(I4_LOOP(I4_ZERO(0) I4_ZERO(1) I4_ZERO(2) I4_ZERO(3) I4_ZERO(4) I4_ZERO(5)
                                 I4_ZERO(6) I4_ZERO(7),
                                 I4_ROW("(%[x])", 0, 1) I4_ROW("(%[x],%[xrow])", 2, 3)
                                 I4_ROW("(%[x],%[xrow],2)", 4, 5) I4_ROW("(%[x3])", 6, 7),
                                 I4_FOLD(0) I4_FOLD(1) I4_FOLD(2) I4_FOLD(3) I4_FOLD(4) I4_FOLD(5)
                                 I4_FOLD(6) I4_FOLD(7))
                         : [w] "+r"(w), [x] "+r"(x), [x3] "+r"(x3)
                         : [s] "r"(sums), [xrow] "r"(xrow), [low] "m"(low), [ones] "m"(ones)
                         : "ecx", "edx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                           "xmm7", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
}
#undef I4_ROW
#undef I4_ZERO
#undef I4_FOLD
#undef I4_LOOP

AVX2 AI void i4_block_avx2(const unsigned char *tp, int G, float unscale, const pk_act *a, int r0,
                          const int R, float *out, int ldo, int n, int accumulate)
{
    float acc[RB_4][PK_TILE] __attribute__((aligned(32)));
    memset(acc, 0, sizeof acc);
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int g = 0; g < G; g++) {
        const unsigned char *gp = tp + (size_t)g * PK_I4_GROUP_BYTES;
        const int8_t *xq[RB_4];
        __m256 xs[RB_4];
        __m256i base[RB_4];
        group_factors(a, r0, R, G, g, unscale, 8, xs, base);
        for (int r = 0; r < R; r++) xq[r] = a->q + ((size_t)(r0 + r) * G + g) * PK_GROUP;
        const uint16_t *scales = (const uint16_t *)(gp + PK_I4_GROUP_W);
        for (int b = 0; b < 4; b++) {
            /* a pass reads 32 bytes of every 128: fetch the group PF_A
             * ahead, a quarter of its 34 lines a pass */
            for (int l = b * 9; l < b * 9 + 9 && l < 34; l++) {
                _mm_prefetch((const char *)gp + PF_A * PK_I4_GROUP_BYTES + 64 * l, _MM_HINT_T0);
                prefetch_far(gp + 64 * l);
            }
            __m256i sum[RB_4][2];
            for (int r = 0; r < R; r++) sum[r][0] = sum[r][1] = base[r];
            if (R >= 3) i4_quads_asm(gp + 32 * b, xq[0], (size_t)G * PK_GROUP, R, sum[0]);
            else for (int q0 = 0; q0 < QUADS; q0 += 8) {
                __m256i h[RB_4][2]; /* 8 quads in int16: at most 8 * 3810 */
                for (int r = 0; r < R; r++) h[r][0] = h[r][1] = _mm256_setzero_si256();
                for (int q = q0; q < q0 + 8; q++) {
                    __m256i pk = _mm256_load_si256((const __m256i *)(gp + (size_t)q * PK_TILE * 2 + 32 * b));
                    __m256i w0 = _mm256_and_si256(pk, low), w1 = _mm256_and_si256(_mm256_srli_epi16(pk, 4), low);
                    for (int r = 0; r < R; r++) {
                        int32_t x4;
                        memcpy(&x4, xq[r] + 4 * q, sizeof x4);
                        __m256i xb = _mm256_set1_epi32(x4);
                        h[r][0] = _mm256_add_epi16(h[r][0], _mm256_maddubs_epi16(w0, xb));
                        h[r][1] = _mm256_add_epi16(h[r][1], _mm256_maddubs_epi16(w1, xb));
                    }
                }
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < 2; j++) sum[r][j] = _mm256_add_epi32(sum[r][j], _mm256_madd_epi16(h[r][j], ones));
            }
            __m256 ws0 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(scales + 16 * b)));
            __m256 ws1 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(scales + 16 * b + 8)));
            for (int r = 0; r < R; r++) {
                __m256 *o = (__m256 *)(acc[r] + 16 * b);
                o[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r][0]), _mm256_mul_ps(ws0, xs[r]), o[0]);
                o[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r][1]), _mm256_mul_ps(ws1, xs[r]), o[1]);
            }
        }
    }
    add_rows(out + (size_t)r0 * ldo, ldo, acc, R, n, accumulate);
}

AVX2 static void i4_tiles_avx2(const pmat *p, float *out, int ldo, const pk_act *a, int R, int t0,
                               int t1, int accumulate)
{
    for (int t = t0; t < t1; t++) {
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;
        for (int r = 0; r < R; r += RB_4) {
            float *o = out + c0;
            switch (R - r < RB_4 ? R - r : RB_4) {
            case 1: i4_block_avx2(tp, p->groups, p->unscale, a, r, 1, o, ldo, n, accumulate); break;
            case 2: i4_block_avx2(tp, p->groups, p->unscale, a, r, 2, o, ldo, n, accumulate); break;
            case 3: i4_block_avx2(tp, p->groups, p->unscale, a, r, 3, o, ldo, n, accumulate); break;
            default: i4_block_avx2(tp, p->groups, p->unscale, a, r, 4, o, ldo, n, accumulate); break;
            }
        }
    }
}

/* AVX-VNNI: the VEX form of vpdpbusd on 256-bit vectors, which Intel's
 * cores without AVX-512 have had since Alder Lake. The VNNI kernel's
 * operations in ymm: each column's 4 stored bytes (w + 128) times the row's
 * 4 inputs of the quad, broadcast, added to int32 sums that start at
 * -128 * sum(x); then the same fp32 epilogue, so the same bits. One
 * instruction where the AVX2 kernel takes a widening, a vpmaddwd and a
 * vpaddd per 8 columns, and no pairs to fold. 16 columns of up to 6 rows a
 * pass: 12 sums, 2 weights and an input fill 15 of the 16 registers. A pass
 * reads 64 bytes of every 256, so each fetches its quarter of the group
 * PF_A ahead, as i8_block_avx2 does its ninth. */
#define AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))

/* 3 or 6 rows' 16 columns over a group's 16 quads in assembly: gcc 12
 * copies the sums between registers around every vpdpbusd of the
 * intrinsic (11 moves a quad at 3 rows) and at 6 rows stores 10 of them to
 * the stack each quad. sums: each row's two, in and out; x: row 0's group
 * inputs, rows xrow bytes apart. */
#define VQ_ROW(src, a, b)                                                                          \
    "vpbroadcastd " src ", %%ymm14\n\t"                                                            \
    "%{vex%} vpdpbusd %%ymm14, %%ymm12, %%ymm" #a "\n\t"                                             \
    "%{vex%} vpdpbusd %%ymm14, %%ymm13, %%ymm" #b "\n\t"
#define VQ_LOAD(i) "vmovdqu " #i "*32(%[s]), %%ymm" #i "\n\t"
#define VQ_SAVE(i) "vmovdqu %%ymm" #i ", " #i "*32(%[s])\n\t"
#define VQ_LOOP(rows)                                                                              \
    "mov $16, %%ecx\n"                                                                             \
    "1:\n\t"                                                                                      \
    "vmovdqa (%[w]), %%ymm12\n\t"                                                                  \
    "vmovdqa 32(%[w]), %%ymm13\n\t"                                                                \
    rows                                                                                           \
    "add $256, %[w]\n\t"                                                                           \
    "add $4, %[x]\n\t"                                                                             \
    "dec %%ecx\n\t"                                                                                \
    "jnz 1b\n\t"

AVXVNNI static inline void vnni_quads3_asm(const unsigned char *w, const int8_t *x, size_t xrow,
                                           __m256i *sums)
{
    __asm__ volatile(VQ_LOAD(0) VQ_LOAD(1) VQ_LOAD(2) VQ_LOAD(3) VQ_LOAD(4) VQ_LOAD(5)
                     VQ_LOOP(VQ_ROW("(%[x])", 0, 1) VQ_ROW("(%[x],%[xrow])", 2, 3)
                             VQ_ROW("(%[x],%[xrow],2)", 4, 5))
                     VQ_SAVE(0) VQ_SAVE(1) VQ_SAVE(2) VQ_SAVE(3) VQ_SAVE(4) VQ_SAVE(5)
                     : [w] "+r"(w), [x] "+r"(x)
                     : [s] "r"(sums), [xrow] "r"(xrow)
                     : "ecx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm12", "xmm13",
                       "xmm14", "memory", "cc");
}

AVXVNNI static inline void vnni_quads6_asm(const unsigned char *w, const int8_t *x, size_t xrow,
                                           __m256i *sums)
{
    const int8_t *x3 = x + 3 * xrow;
    __asm__ volatile(VQ_LOAD(0) VQ_LOAD(1) VQ_LOAD(2) VQ_LOAD(3) VQ_LOAD(4) VQ_LOAD(5)
                     VQ_LOAD(6) VQ_LOAD(7) VQ_LOAD(8) VQ_LOAD(9) VQ_LOAD(10) VQ_LOAD(11)
                     VQ_LOOP(VQ_ROW("(%[x])", 0, 1) VQ_ROW("(%[x],%[xrow])", 2, 3)
                             VQ_ROW("(%[x],%[xrow],2)", 4, 5) VQ_ROW("(%[x3])", 6, 7)
                             VQ_ROW("(%[x3],%[xrow])", 8, 9) VQ_ROW("(%[x3],%[xrow],2)", 10, 11)
                             "add $4, %[x3]\n\t")
                     VQ_SAVE(0) VQ_SAVE(1) VQ_SAVE(2) VQ_SAVE(3) VQ_SAVE(4) VQ_SAVE(5)
                     VQ_SAVE(6) VQ_SAVE(7) VQ_SAVE(8) VQ_SAVE(9) VQ_SAVE(10) VQ_SAVE(11)
                     : [w] "+r"(w), [x] "+r"(x), [x3] "+r"(x3)
                     : [s] "r"(sums), [xrow] "r"(xrow)
                     : "ecx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "memory", "cc");
}
#undef VQ_ROW
#undef VQ_LOAD
#undef VQ_SAVE
#undef VQ_LOOP

AVXVNNI AI void i8_block_avxvnni(const unsigned char *tp, int G, float unscale, const pk_act *a,
                                 int r0, const int R, float *out, int ldo, int n, int accumulate)
{
    float acc[RB_A][PK_TILE] __attribute__((aligned(32)));
    memset(acc, 0, sizeof acc);
    for (int g = 0; g < G; g++) {
        const unsigned char *gp = tp + (size_t)g * GROUP_BYTES;
        const int8_t *xq[RB_A];
        size_t xrow = (size_t)G * PK_GROUP; /* row to row */
        __m256 xs[RB_A];
        __m256i base[RB_A];
        group_factors(a, r0, R, G, g, unscale, 128, xs, base);
        for (int r = 0; r < R; r++) xq[r] = a->q + ((size_t)(r0 + r) * G + g) * PK_GROUP;
        const uint16_t *scales = (const uint16_t *)(gp + GROUP_W);
        for (int c = 0; c < PK_TILE; c += 16) {
            for (int l = c / 16 * 17; l < c / 16 * 17 + 17; l++) {
                _mm_prefetch((const char *)gp + PF_A * GROUP_BYTES + 64 * l, _MM_HINT_T0);
                prefetch_far(gp + 64 * l);
            }
            __m256i sum[RB_A][2];
            for (int r = 0; r < R; r++) sum[r][0] = sum[r][1] = base[r];
            if (R == 3) vnni_quads3_asm(gp + c * 4, xq[0], xrow, sum[0]);
            else if (R == 6) vnni_quads6_asm(gp + c * 4, xq[0], xrow, sum[0]);
            else for (int q = 0; q < QUADS; q++) {
                const unsigned char *wq = gp + (size_t)q * PK_TILE * 4 + c * 4;
                __m256i w0 = _mm256_load_si256((const __m256i *)wq);
                __m256i w1 = _mm256_load_si256((const __m256i *)(wq + 32));
                for (int r = 0; r < R; r++) {
                    int32_t x4;
                    memcpy(&x4, xq[r] + 4 * q, sizeof x4);
                    __m256i xb = _mm256_set1_epi32(x4);
                    sum[r][0] = _mm256_dpbusd_avx_epi32(sum[r][0], w0, xb);
                    sum[r][1] = _mm256_dpbusd_avx_epi32(sum[r][1], w1, xb);
                }
            }
            __m256 ws0 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(scales + c)));
            __m256 ws1 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(scales + c + 8)));
            for (int r = 0; r < R; r++) {
                __m256 *o = (__m256 *)(acc[r] + c);
                o[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r][0]), _mm256_mul_ps(ws0, xs[r]), o[0]);
                o[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r][1]), _mm256_mul_ps(ws1, xs[r]), o[1]);
            }
        }
    }
    add_rows(out + (size_t)r0 * ldo, ldo, acc, R, n, accumulate);
}

AVXVNNI static void i8_tiles_avxvnni(const pmat *p, float *out, int ldo, const pk_act *a, int R,
                                     int t0, int t1, int accumulate)
{
    I8_TILES(i8_block_avxvnni)
}
#undef I8_TILES

/* ==== AVX2 ==== */

/* fp32 and bf16 tiles with fp32 activations. A tile's 64 sums of a row are
 * 8 ymm, so AVX2's 16 registers hold one row's at most: the generic kernel,
 * compiled for them, spilled its sums on every input (3 rows measured 3x
 * slower than 1 on Zen 3). Here the sums of up to MV_MAX_ROWS rows wait in
 * an L1 buffer while blocks of KB_A inputs go by in two halves of 32
 * columns, 3 rows at a time: 12 sums, a weight and the rows' inputs in
 * registers. The first half fetches the second half's lines (prefetcht0),
 * so the matrix still streams once. Each sum is the fma chain of the
 * generic kernel, inputs in order, so the results are its bits. */
typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8w __attribute__((vector_size(32)));
#define KB_A 64 /* inputs per block: 16 KB of fp32 tile */

AVX2 AI void half_avx2(const unsigned char *tp, int K, int k0, int k1, int h, const float *x,
                       int ldx, float (*acc)[PK_TILE], const int R, const int fmt)
{
    v8f s[3][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) s[r][j] = *(v8f *)(acc[r] + h * 32 + 8 * j);
    if (fmt == PK_F32) {
        for (int k = k0; k < k1; k++) {
            const float *w = (const float *)tp + (size_t)k * PK_TILE + h * 32;
            if (!h) {
                _mm_prefetch((const char *)(w + 32), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + 48), _MM_HINT_T0);
                for (int l = 0; l < 4; l++) prefetch_far(w + 16 * l);
            }
            for (int j = 0; j < 4; j++) {
                v8f wj = *(const v8f *)(w + 8 * j);
                for (int r = 0; r < R; r++) s[r][j] += x[(size_t)r * ldx + k] * wj;
            }
        }
    } else {
        for (int k = k0; k < k1; k += 2) {
            const uint32_t *w = (const uint32_t *)tp + (size_t)(k / 2) * PK_TILE + h * 32;
            if (!h) {
                _mm_prefetch((const char *)(w + 32), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + 48), _MM_HINT_T0);
                if (pk_prefetch_bf16)
                    for (int l = 0; l < 4; l++) __builtin_prefetch((const char *)(w + 16 * l) + PF_FAR, 0, 1);
            }
            int ko = k + 1 < K ? k + 1 : k; /* as float_tile: an odd K's zero weight */
            for (int j = 0; j < 4; j++) {
                v8w u = *(const v8w *)(w + 8 * j);
                v8f we = (v8f)(u << 16), wo = (v8f)(u & 0xFFFF0000u);
                for (int r = 0; r < R; r++) {
                    s[r][j] += x[(size_t)r * ldx + k] * we;
                    s[r][j] += x[(size_t)r * ldx + ko] * wo;
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++) *(v8f *)(acc[r] + h * 32 + 8 * j) = s[r][j];
}

/* One row (decode at batch 1): its 64 sums fit the registers, so the tile
 * streams in one pass, each line read where it lies, as the hardware
 * prefetchers expect (half_avx2's two passes read every other pair of lines
 * and prefetch the rest: an fp32 step on 2 Zen 4 cores took 20-24 ms,
 * 1.4-2.3x its floor; this, 9-16 ms, 1.0-1.1x). The same fma chains. */
AVX2 AI void row_avx2(const unsigned char *tp, int K, const float *x, float *acc, const int fmt)
{
    v8f s[8] = {0};
    if (fmt == PK_F32) {
        for (int k = 0; k < K; k++) {
            const float *w = (const float *)tp + (size_t)k * PK_TILE;
            for (int l = 0; l < 4; l++) prefetch_ahead(w + 16 * l);
            for (int j = 0; j < 8; j++) s[j] += x[k] * *(const v8f *)(w + 8 * j);
        }
    } else {
        for (int k = 0; k < K; k += 2) {
            const uint32_t *w = (const uint32_t *)tp + (size_t)(k / 2) * PK_TILE;
            int ko = k + 1 < K ? k + 1 : k;
            for (int l = 0; l < 4; l++) prefetch_ahead(w + 16 * l);
            for (int j = 0; j < 8; j++) {
                v8w u = *(const v8w *)(w + 8 * j);
                s[j] += x[k] * (v8f)(u << 16);
                s[j] += x[ko] * (v8f)(u & 0xFFFF0000u);
            }
        }
    }
    for (int j = 0; j < 8; j++) *(v8f *)(acc + 8 * j) = s[j];
}

/* Prompts in fp32 or bf16 tiles: 6 rows by 16 columns of sums in 12 ymm
 * over a block of inputs, the row's input broadcast and the 16 columns'
 * weights loaded once for the 6 rows (bf16 ones widened in registers), 12
 * fmas per input; the tile read where it lies, no copy. The same fma chain
 * per output as row_avx2 and half_avx2 (inputs in order, a bf16 pair's even
 * then odd), so a prompt's rows get the bits decode would. OpenBLAS's sgemm
 * on tiles widened for it spent a fifth of an fp32 prefill copying
 * (widening, then its own packing of both operands). */
#define PR_ROWS 6
#define PR_COLS 16
#define PR_KB 128   /* inputs per block (bf16; fp32 half as many): 4 KB of weights a slice */
#define PR_CHUNK 24 /* rows whose sums wait in an L1 buffer */

#define PR_LOAD(r, lo, hi)                                                                         \
    "vmovups " #r "*256(%[a]), %%ymm" #lo "\n\tvmovups " #r "*256+32(%[a]), %%ymm" #hi "\n\t"
#define PR_STORE(r, lo, hi)                                                                        \
    "vmovups %%ymm" #lo ", " #r "*256(%[a])\n\tvmovups %%ymm" #hi ", " #r "*256+32(%[a])\n\t"
#define PR_LOADS PR_LOAD(0, 0, 1) PR_LOAD(1, 2, 3) PR_LOAD(2, 4, 5) PR_LOAD(3, 6, 7) PR_LOAD(4, 8, 9) PR_LOAD(5, 10, 11)
#define PR_STORES PR_STORE(0, 0, 1) PR_STORE(1, 2, 3) PR_STORE(2, 4, 5) PR_STORE(3, 6, 7) PR_STORE(4, 8, 9) PR_STORE(5, 10, 11)
#define PR_FMA(at, lo, hi)                                                                         \
    "vbroadcastss " at ", %%ymm14\n\t"                                                            \
    "vfmadd231ps %%ymm14, %%ymm12, %%ymm" #lo "\n\t"                                              \
    "vfmadd231ps %%ymm14, %%ymm13, %%ymm" #hi "\n\t"
/* rows 0-2 at %[xa] + 0, 1, 2 strides, rows 3-5 at %[xb] + 0, 1, 2 */
#define PR_FMAS(off)                                                                               \
    PR_FMA(#off "(%[xa])", 0, 1) PR_FMA(#off "(%[xa],%[ld],1)", 2, 3) PR_FMA(#off "(%[xa],%[ld],2)", 4, 5) \
    PR_FMA(#off "(%[xb])", 6, 7) PR_FMA(#off "(%[xb],%[ld],1)", 8, 9) PR_FMA(#off "(%[xb],%[ld],2)", 10, 11)

/* The loop's end: the next input (or pair, xbytes of each row), then the
 * sums back to acc; and the operands both kernels change. */
#define PR_NEXT(xbytes)                                                                            \
    "add $256, %[w]\n\tadd $256, %[pf]\n\t"                                                      \
    "add $" #xbytes ", %[xa]\n\tadd $" #xbytes ", %[xb]\n\t"                                      \
    "dec %[n]\n\tjnz 1b\n\t" PR_STORES
#define PR_OUTS [w] "+r"(w), [xa] "+r"(x), [xb] "+r"(xb), [n] "+r"(n), [pf] "+r"(pf)

/* acc[6][PK_TILE] at a (16 columns there) += rows x (stride ld floats) by
 * w's 16 columns (a tile's, 256 bytes an input or bf16 pair) over n inputs. */
AVX2 static inline void pr_f32_asm(const unsigned char *w, const float *x, size_t ld, int n, float *a,
                                   const unsigned char *pf)
{
    const float *xb = x + 3 * ld;
    size_t ldb = ld * sizeof(float);
    __asm__ volatile(PR_LOADS
                     "1:\n\t"
                     "vmovups (%[w]), %%ymm12\n\t"
                     "vmovups 32(%[w]), %%ymm13\n\t"
                     "prefetcht0 (%[pf])\n\t"
                     PR_FMAS(0)
                     PR_NEXT(4)
                     : PR_OUTS
                     : [a] "r"(a), [ld] "r"(ldb)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                       "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "memory", "cc");
}

/* The same over n pairs of bf16 inputs (an even count of inputs). */
AVX2 static inline void pr_bf16_asm(const unsigned char *w, const float *x, size_t ld, int n, float *a,
                                    const unsigned char *pf)
{
    static const uint32_t odd = 0xFFFF0000u;
    const float *xb = x + 3 * ld;
    size_t ldb = ld * sizeof(float);
    __asm__ volatile(PR_LOADS
                     "vpbroadcastd %[odd], %%ymm15\n"
                     "1:\n\t"
                     "vmovdqu (%[w]), %%ymm12\n\t"
                     "vpslld $16, %%ymm12, %%ymm12\n\t"
                     "vmovdqu 32(%[w]), %%ymm13\n\t"
                     "vpslld $16, %%ymm13, %%ymm13\n\t"
                     PR_FMAS(0)
                     "vpand (%[w]), %%ymm15, %%ymm12\n\t"
                     "vpand 32(%[w]), %%ymm15, %%ymm13\n\t"
                     "prefetcht0 (%[pf])\n\t"
                     PR_FMAS(4)
                     PR_NEXT(8)
                     : PR_OUTS
                     : [a] "r"(a), [ld] "r"(ldb), [odd] "m"(odd)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                       "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
}

/* Whether float_prompt_avx2 takes p (bf16 pairs whole: an even K). */
static int pr_fits(const pmat *p) { return p->fmt == PK_F32 || (p->fmt == PK_BF16 && p->K % 2 == 0); }

/* Rows 0..R (a multiple of PR_ROWS) of tiles t0..t1. */
AVX2 static void float_prompt_avx2(const pmat *p, float *out, int ldo, const float *x, int ldx, int R,
                                   int t0, int t1, int accumulate)
{
    float acc[PR_CHUNK][PK_TILE] __attribute__((aligned(32)));
    int bf = p->fmt == PK_BF16;
    size_t kstep = bf ? 128 : 256; /* a tile's bytes an input */
    int kb = bf ? PR_KB : PR_KB / 2;
    for (int t = t0; t < t1; t++) {
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;
        for (int r0 = 0; r0 < R; r0 += PR_CHUNK) {
            int m = R - r0 < PR_CHUNK ? R - r0 : PR_CHUNK;
            memset(acc, 0, sizeof(float) * PK_TILE * m);
            for (int k0 = 0; k0 < p->K; k0 += kb) {
                int kn = p->K - k0 < kb ? p->K - k0 : kb;
                for (int c = 0; c < PK_TILE; c += PR_COLS) {
                    const unsigned char *w = tp + k0 * kstep + c * 4;
                    /* the first rows' pass fetches the next slice's lines
                     * into L1 (the next 16 columns, or the next block's
                     * first; past the tile is the next tile, or nothing: no
                     * fault), the others read their own, already there */
                    const unsigned char *next = c + PR_COLS < PK_TILE ? w + PR_COLS * 4 : tp + (k0 + kn) * kstep;
                    for (int r = 0; r < m; r += PR_ROWS) {
                        const float *xr = x + (size_t)(r0 + r) * ldx + k0;
                        if (bf) pr_bf16_asm(w, xr, ldx, kn / 2, acc[r] + c, r ? w : next);
                        else pr_f32_asm(w, xr, ldx, kn, acc[r] + c, r ? w : next);
                    }
                }
            }
            add_rows(out + (size_t)r0 * ldo + c0, ldo, acc, m, n, accumulate);
        }
    }
}

AVX2 static void float_tiles_avx2(const pmat *p, float *out, int ldo, const float *x, int ldx, int R,
                                  int t0, int t1, int accumulate)
{
    /* A prompt; not a decode batch of up to MV_MAX_ROWS, which streams its
     * tiles from memory: the half passes fetch ahead for that, and 7 or 8
     * rows would stream them twice (6 here, the rest below). fp32 steps of
     * 6 / 8 rows after 640 tokens on 2 Zen 3 cores: 38-45 / 55-60 ms here,
     * 33-39 / 44-48 in half passes (bf16 alike both ways; 3 runs each). */
    if (R > MV_MAX_ROWS && pr_fits(p)) {
        int R6 = R - R % PR_ROWS;
        float_prompt_avx2(p, out, ldo, x, ldx, R6, t0, t1, accumulate);
        if (R6 == R) return;
        out += (size_t)R6 * ldo, x += (size_t)R6 * ldx, R -= R6;
    }
    float acc[MV_MAX_ROWS][PK_TILE] __attribute__((aligned(32)));
    for (int t = t0; t < t1; t++) {
        const unsigned char *tp = p->data + (size_t)t * p->tile_bytes;
        int c0 = t * PK_TILE, n = p->N - c0 < PK_TILE ? p->N - c0 : PK_TILE;
        for (int r0 = 0; r0 < R; r0 += MV_MAX_ROWS) {
            int m = R - r0 < MV_MAX_ROWS ? R - r0 : MV_MAX_ROWS;
            if (m == 1) {
                if (p->fmt == PK_F32) row_avx2(tp, p->K, x + (size_t)r0 * ldx, acc[0], PK_F32);
                else row_avx2(tp, p->K, x + (size_t)r0 * ldx, acc[0], PK_BF16);
                add_rows(out + (size_t)r0 * ldo + c0, ldo, acc, 1, n, accumulate);
                continue;
            }
            memset(acc, 0, sizeof(float) * PK_TILE * m);
            for (int k0 = 0; k0 < p->K; k0 += KB_A) {
                int k1 = p->K - k0 < KB_A ? p->K - k0 : KB_A;
                k1 += k0;
                for (int h = 0; h < 2; h++)
                    for (int r = 0; r < m; r += 3) {
                        const float *xr = x + (size_t)(r0 + r) * ldx;
                        switch ((m - r < 3 ? m - r : 3) + (p->fmt == PK_F32 ? 0 : 3)) {
                        case 1: half_avx2(tp, p->K, k0, k1, h, xr, ldx, acc + r, 1, PK_F32); break;
                        case 2: half_avx2(tp, p->K, k0, k1, h, xr, ldx, acc + r, 2, PK_F32); break;
                        case 3: half_avx2(tp, p->K, k0, k1, h, xr, ldx, acc + r, 3, PK_F32); break;
                        case 4: half_avx2(tp, p->K, k0, k1, h, xr, ldx, acc + r, 1, PK_BF16); break;
                        case 5: half_avx2(tp, p->K, k0, k1, h, xr, ldx, acc + r, 2, PK_BF16); break;
                        default: half_avx2(tp, p->K, k0, k1, h, xr, ldx, acc + r, 3, PK_BF16); break;
                        }
                    }
            }
            add_rows(out + (size_t)r0 * ldo + c0, ldo, acc, m, n, accumulate);
        }
    }
}

/* pk_f32_product on AVX2: blocks of up to 6 rows by 16 columns (12 ymm of
 * sums), the row's input broadcast, w's 16 columns loaded once for the rows
 * (the last block's under a mask: no column past n is read). Each sum in
 * input order with one fma per input, times alpha at the end: the AVX-512
 * panels' chain, so the two give the same bits. For a prompt's attention
 * (scores against the transposed keys, the weighted values), which went to
 * sgemm here, whose order of summing changed with the prompt's length. */
AVX2 AI void f32_block_avx2(const float *w, size_t ldw, int K, const float *x, size_t ldx, const int R,
                            float alpha, float *out, int ldo, int n, int accumulate, const float *bias,
                            const int full)
{
    __m256 acc[PR_ROWS][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    __m256i m0 = first_lanes(n < 8 ? n : 8), m1 = first_lanes(n > 8 ? n - 8 : 0);
    for (int k = 0; k < K; k++) {
        const float *wk = w + (size_t)k * ldw;
        __m256 w0 = full ? _mm256_loadu_ps(wk) : _mm256_maskload_ps(wk, m0);
        __m256 w1 = full ? _mm256_loadu_ps(wk + 8) : _mm256_maskload_ps(wk + 8, m1);
        for (int r = 0; r < R; r++) {
            __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
            acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
        }
    }
    /* out through a copy, as f32_panel's (else gcc 12 keeps acc on the stack) */
    __m256 fin[PR_ROWS][2];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 2; j++)
            fin[r][j] = alpha != 1.0f ? _mm256_mul_ps(acc[r][j], _mm256_set1_ps(alpha)) : acc[r][j];
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * ldo, v[PR_COLS];
        if (full) {
            for (int j = 0; j < 2; j++) {
                __m256 s = fin[r][j];
                if (accumulate) s = _mm256_add_ps(_mm256_loadu_ps(o + 8 * j), s);
                if (bias) s = _mm256_add_ps(s, _mm256_loadu_ps(bias + 8 * j));
                _mm256_storeu_ps(o + 8 * j, s);
            }
            continue;
        }
        _mm256_storeu_ps(v, fin[r][0]);
        _mm256_storeu_ps(v + 8, fin[r][1]);
        for (int c = 0; c < n; c++) o[c] = (accumulate ? o[c] : 0.0f) + v[c];
        if (bias)
            for (int c = 0; c < n; c++) o[c] += bias[c];
    }
}

AVX2 static void f32_product_avx2(const float *w, size_t ldw, int K, const float *x, size_t ldx, int R,
                                  float alpha, float *out, int ldo, int n, int accumulate, const float *bias)
{
    for (int c = 0; c < n; c += PR_COLS) {
        int nc = n - c < PR_COLS ? n - c : PR_COLS, full = nc == PR_COLS;
        for (int r = 0; r < R; r += PR_ROWS) {
            const float *xr = x + (size_t)r * ldx;
            float *o = out + (size_t)r * ldo + c;
            const float *b = bias ? bias + c : NULL;
#define BLOCK(rows, f) f32_block_avx2(w + c, ldw, K, xr, ldx, rows, alpha, o, ldo, nc, accumulate, b, f)
            switch (R - r < PR_ROWS ? R - r : PR_ROWS) {
            case 1: full ? BLOCK(1, 1) : BLOCK(1, 0); break;
            case 2: full ? BLOCK(2, 1) : BLOCK(2, 0); break;
            case 3: full ? BLOCK(3, 1) : BLOCK(3, 0); break;
            case 4: full ? BLOCK(4, 1) : BLOCK(4, 0); break;
            case 5: full ? BLOCK(5, 1) : BLOCK(5, 0); break;
            default: full ? BLOCK(6, 1) : BLOCK(6, 0); break;
            }
#undef BLOCK
        }
    }
}

int pk_i8_prompts(void) { return pk_vnni() || avx2(); }

static int float_avx2(void);

int pk_f32_products(void) { return float_avx2() || (pk_f32_prompts() && !pk_force_generic); }

void pk_f32_product(const float *w, size_t ldw, int K, const float *x, size_t ldx, int R, float alpha,
                    float *out, int ldo, int n, int accumulate, const float *bias)
{
    if (float_avx2()) f32_product_avx2(w, ldw, K, x, ldx, R, alpha, out, ldo, n, accumulate, bias);
    else f32_product_avx512(w, ldw, K, x, ldx, R, alpha, out, ldo, n, accumulate, bias);
}

int pk_float_prompts(const pmat *p)
{
    return float_avx2() && pr_fits(p);
}

int pk_f32_prompts(void)
{
    static int has = -1;
    if (has < 0) has = AVX512_WITH("avx512f");
    return has;
}

/* The float kernels above: on AVX2 CPUs without AVX-512 (whose 32
 * registers suit the generic kernel), or forced (pk_force_generic 2, 4). */
static int float_avx2(void)
{
    static int fit = -1;
    if (fit < 0) fit = !__builtin_cpu_supports("avx512f");
    return avx2() && (fit || pk_forced_avx2());
}
#else
int pk_i8_prompts(void) { return 0; }
int pk_float_prompts(const pmat *p) { return 0; }
int pk_f32_prompts(void) { return 0; }
int pk_f32_products(void) { return 0; }
int pk_bf16_dp_faster(void) { return 0; }
void pk_f32_product(const float *w, size_t ldw, int K, const float *x, size_t ldx, int R, float alpha,
                    float *out, int ldo, int n, int accumulate, const float *bias) { abort(); }
int pk_vnni(void) { return 0; }
int pk_amx(void) { return 0; }
const char *pk_kernels(int fmt) { return "portable"; }
int pk_bf16_dp(void) { return 0; }
/* Only called where pk_bf16_dp() holds. */
void pk_bf16_product(const uint32_t *tile, int P, const uint32_t *x, size_t ldx, int R, float *out,
                     int ldo, int n, int accumulate) { abort(); }
void pk_bf16_values(uint32_t *dst, const float *v, int n) { abort(); }
#endif

void pk_matmul(const pmat *p, float *out, int ldo, const float *x, int ldx, const pk_act *a,
               int R, int t0, int t1, int accumulate, const float *bias)
{
    int fused = 0; /* whether the kernel added the bias as it stored the sums */
    switch (p->fmt) {
    case PK_F32:
#if defined(__x86_64__)
        if (float_avx2()) {
            float_tiles_avx2(p, out, ldo, x, ldx, R, t0, t1, accumulate);
            break;
        }
#endif
        f32_tiles(p, out, ldo, x, ldx, R, t0, t1, accumulate);
        break;
    case PK_BF16:
#if defined(__x86_64__)
        if (a && a->bf && pk_bf16_dp()) {
            bf16_tiles_dp(p, out, ldo, a, R, t0, t1, accumulate, bias);
            fused = 1;
            break;
        }
        if (float_avx2()) {
            float_tiles_avx2(p, out, ldo, x, ldx, R, t0, t1, accumulate);
            break;
        }
#endif
        bf16_tiles(p, out, ldo, x, ldx, R, t0, t1, accumulate);
        break;
    case PK_I4:
#if defined(__x86_64__)
        if (avx2()) {
            i4_tiles_avx2(p, out, ldo, a, R, t0, t1, accumulate);
            break;
        }
#endif
        quant_tiles_generic(p, out, ldo, a, R, t0, t1, accumulate);
        break;
    default: {
#if defined(__x86_64__)
        int amx = R > MV_MAX_ROWS ? pk_amx() : 0; /* prompts */
        if (pk_vnni() || amx) {
            i8_tiles_vnni(p, out, ldo, a, R, t0, t1, accumulate, bias, amx);
            fused = 1;
            break;
        }
        if (avx_vnni()) {
            i8_tiles_avxvnni(p, out, ldo, a, R, t0, t1, accumulate);
            break;
        }
        if (avx2()) {
            i8_tiles_avx2(p, out, ldo, a, R, t0, t1, accumulate);
            break;
        }
#endif
        quant_tiles_generic(p, out, ldo, a, R, t0, t1, accumulate);
    }
    }
    if (bias && !fused) { /* the same sum, a pass of its own */
        int c0 = t0 * PK_TILE, c1 = t1 * PK_TILE < p->N ? t1 * PK_TILE : p->N;
        for (int r = 0; r < R; r++) mv_add(out + (size_t)r * ldo + c0, bias + c0, c1 - c0);
    }
}

/* ops.c - see ops.h.
 *
 * Written with GNU vector extensions, so each target_clones variant gets its
 * own width (one zmm, two ymm or four xmm per 16 floats). Multiply-adds are
 * fused (-ffp-contract=fast); no fast-math: the order of every sum is the
 * one written here.
 */
#include "ops.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

#if defined(__x86_64__)
#define AVX2F __attribute__((target("avx2,fma,f16c")))

AVX2F AI float hmax8(__m256 m)
{
    m = _mm256_max_ps(m, _mm256_permute2f128_ps(m, m, 1));
    m = _mm256_max_ps(m, _mm256_permute_ps(m, 0x4e));
    return _mm256_cvtss_f32(_mm256_max_ps(m, _mm256_permute_ps(m, 0xb1)));
}
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16)));

AI float hsum8(v8 a)
{
    v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* The halves added, then hsum8: the AVX2 kernels below get the same sum
 * from two 8-lane accumulators of a 16-lane one's halves, lo + hi. */
AI float hsum(v16 v)
{
    return hsum8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
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
 * degree-7 Taylor polynomial (error within 2 ulp). For 16 lanes (vexp) and
 * for 8 (vexp8, the AVX2 kernels'), the same steps lane for lane. */
#define VEXP(name, V, IV)                                                                          \
    AI V name(V x)                                                                                 \
    {                                                                                              \
        const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */       \
        V n = (x * 1.44269504088896341f + shifter) - shifter;                                      \
        V r = x - n * 0.693359375f;                                                                \
        r = r - n * -2.12194440e-4f;                                                               \
        V p = (V){0} + 1.0f / 5040;                                                                \
        p = p * r + 1.0f / 720;                                                                    \
        p = p * r + 1.0f / 120;                                                                    \
        p = p * r + 1.0f / 24;                                                                     \
        p = p * r + 1.0f / 6;                                                                      \
        p = p * r + 0.5f;                                                                          \
        p = p * r + 1.0f;                                                                          \
        p = p * r + 1.0f;                                                                          \
        IV e = (__builtin_convertvector(n, IV) + 127) << 23;                                       \
        return p * (V)e;                                                                           \
    }
typedef int32_t i8v __attribute__((vector_size(32)));
VEXP(vexp, v16, i16v)
VEXP(vexp8, v8, i8v)
#undef VEXP

/* mv_layernorm and mv_add in 16-lane vectors (AVX-512, CPUs before AVX2;
 * the AVX2 kernels below give their bits). */
CLONES
static void layernorm16(float *out, const float *x, const float *w, const float *b, int C, float eps)
{
    v16 acc = {0};
    int i = 0;
    for (; i + 16 <= C; i += 16) acc += *(const v16u *)(x + i);
    float sum = hsum(acc);
    for (; i < C; i++) sum += x[i];
    float mean = sum / C, var;
    acc = (v16){0};
    for (i = 0; i + 16 <= C; i += 16) {
        v16 d = *(const v16u *)(x + i) - mean;
        acc += d * d;
    }
    var = hsum(acc);
    for (; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    float rstd = 1.0f / sqrtf(var / C + eps);
    for (i = 0; i + 16 <= C; i += 16)
        *(v16u *)(out + i) = (*(const v16u *)(x + i) - mean) * rstd * *(const v16u *)(w + i) +
                             *(const v16u *)(b + i);
    for (; i < C; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

CLONES
static void add16(float *o, const float *b, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16) *(v16u *)(o + i) += *(const v16u *)(b + i);
    for (; i < n; i++) o[i] += b[i];
}

/* mv_softmax in 16-lane vectors (AVX-512, CPUs before AVX2). The last
 * n % 16 go through one vexp, the lanes past them at the clamp, and are
 * summed one by one after the vectors, as they were one vexp each. */
CLONES
static void softmax16(float *s, int n)
{
    float max = -INFINITY, sum = 0;
    int p = 0;
    v16 m = (v16){0} - INFINITY;
    for (; p + 16 <= n; p += 16) {
        v16 v = *(v16u *)(s + p);
        m = blend(v > m, v, m); /* NaN never wins, as below */
    }
    for (int i = 0; i < 16; i++) max = m[i] > max ? m[i] : max;
    for (int i = p; i < n; i++) max = s[i] > max ? s[i] : max;
    v16 acc = {0};
    for (p = 0; p + 16 <= n; p += 16) {
        v16 t = *(v16u *)(s + p) - max;
        t = blend(t < -87.0f, (v16){0} - 87.0f, t); /* exp(-87) is 1.6e-38: nothing next to 1 */
        t = vexp(t);
        *(v16u *)(s + p) = t;
        acc += t;
    }
    sum = hsum(acc);
    if (p < n) {
        v16 t = (v16){0} - 87.0f;
        for (int i = 0; i < n - p; i++) t[i] = s[p + i] - max < -87.0f ? -87.0f : s[p + i] - max;
        t = vexp(t);
        for (int i = 0; i < n - p; i++) sum += s[p + i] = t[i];
    }
    float inv = 1.0f / sum;
    for (p = 0; p < n; p++) s[p] *= inv;
}

/* ==== Half floats ==== */

#define HALF_MAX 65504.0f

static uint16_t half_bits(float x)
{
    _Float16 h = (_Float16)(x > HALF_MAX ? HALF_MAX : x < -HALF_MAX ? -HALF_MAX : x);
    uint16_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}

static float half_value(uint16_t u)
{
    _Float16 h;
    memcpy(&h, &u, sizeof h);
    return (float)h;
}

#if defined(__x86_64__)
#define F16C __attribute__((target("avx2,f16c")))

/* max(lo, x) and min(hi, x) return x when x is NaN: the clamp keeps NaN */
F16C static void to_half_f16c(uint16_t *dst, const float *src, size_t n)
{
    const __m256 hi = _mm256_set1_ps(HALF_MAX), lo = _mm256_set1_ps(-HALF_MAX);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(src + i)));
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) dst[i] = half_bits(src[i]);
}

__attribute__((target("avx512f"))) static void from_half_avx512(float *dst, const uint16_t *src, size_t n)
{
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
        _mm512_storeu_ps(dst + i + 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i + 16))));
    }
    for (; i < n; i++) dst[i] = half_value(src[i]);
}

F16C static void from_half_f16c(float *dst, const uint16_t *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
        _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i + 8))));
    }
    for (; i < n; i++) dst[i] = half_value(src[i]);
}
#endif

int mv_half_fast(void)
{
#if defined(__x86_64__)
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return has;
#elif defined(__aarch64__)
    return 1;
#else
    return 0;
#endif
}

int mv_half_path;

#if defined(__x86_64__)
/* Whether the AVX2 kernels (decode attention over 64-float heads, keys
 * transposed, int8 keys and values, layernorm, the residual add, softmax,
 * GELU) run: on AVX2 CPUs without AVX-512, or forced (mv_half_path 1: the
 * unit test, GPT2_CPU_ISA=avx2); never with the portable loops forced (2). */
static int avx2_kernels(void)
{
    static int avx512 = -1, avx2 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f");
    if (avx2 < 0)
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    return avx2 && mv_half_path != 2 && (!avx512 || mv_half_path == 1);
}
#endif

/* The kernel mv_attend takes for caches of elt and hd-element heads:
 * ATT_AVX512 or ATT_AVX2 (both read half and int8 elements in place, 64
 * only), else ATT_LOOPS (widened through scratch). mv_half_path 1 (the
 * unit test, GPT2_CPU_ISA=avx2) takes the AVX2 kernel on AVX-512 CPUs too. */
enum { ATT_LOOPS, ATT_AVX2, ATT_AVX512 };
static int attend_path(int elt, int hd)
{
#if defined(__x86_64__)
    static int avx512 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f");
    if (hd != 64 || mv_half_path == 2) return ATT_LOOPS;
    if (elt != MV_F32 && avx512 && !mv_half_path) return ATT_AVX512;
    if (avx2_kernels()) return ATT_AVX2;
#else
    (void)elt, (void)hd;
#endif
    return ATT_LOOPS;
}

int mv_i8_fast(int hd) { return attend_path(MV_I8, hd) != ATT_LOOPS; }

void mv_to_half(uint16_t *dst, const float *src, size_t n)
{
#if defined(__x86_64__)
    if (mv_half_fast() && mv_half_path != 2) {
        to_half_f16c(dst, src, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = half_bits(src[i]);
}

void mv_from_half(float *dst, const uint16_t *src, size_t n)
{
#if defined(__x86_64__)
    static int avx512 = -1;
    if (avx512 < 0) avx512 = mv_half_fast() && __builtin_cpu_supports("avx512f");
    if (avx512 && !mv_half_path) {
        from_half_avx512(dst, src, n);
        return;
    }
    if (mv_half_fast() && mv_half_path != 2) {
        from_half_f16c(dst, src, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = half_value(src[i]);
}

/* ==== int8 keys and values ==== */

/* x rounded to the nearest integer, ties to even (|x| <= 127: 1.5 * 2^23
 * added and taken away leaves no fraction). */
#define ROUND_SHIFT 12582912.0f

/* amax of the finite |x| of src[i..n), at least m. */
static float finite_amax(const float *src, int i, int n, float m)
{
    for (; i < n; i++) {
        float a = fabsf(src[i]);
        m = a > m && a <= FLT_MAX ? a : m; /* NaN and infinities left out */
    }
    return m;
}

/* q = x * inv of src[i..n) into dst, NaN as 0, clamped, rounded. */
static void i8_tail(int8_t *dst, const float *src, int i, int n, float inv)
{
    for (; i < n; i++) {
        float y = src[i] * inv;
        y = y != y ? 0.0f : y < -127.0f ? -127.0f : y > 127.0f ? 127.0f : y;
        dst[i] = (int8_t)((y + ROUND_SHIFT) - ROUND_SHIFT);
    }
}

#if defined(__x86_64__)
/* mv_to_i8 16 lanes at a time: vcvtps2dq rounds to nearest even (the
 * default MXCSR mode), vpmovdb narrows the clamped values. */
__attribute__((target("avx512f"))) static void to_i8_avx512(int8_t *dst, float *scale, const float *src, int n)
{
    __m512 vmax = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 m = _mm512_abs_ps(_mm512_loadu_ps(src + i));
        vmax = _mm512_mask_max_ps(vmax, _mm512_cmp_ps_mask(m, _mm512_set1_ps(FLT_MAX), _CMP_LE_OQ), vmax, m);
    }
    float amax = finite_amax(src, i, n, _mm512_reduce_max_ps(vmax));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(src + i), vinv);
        y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, y, _CMP_ORD_Q), y); /* NaN */
        y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
        _mm_storeu_si128((__m128i *)(dst + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(y)));
    }
    i8_tail(dst, src, i, n, inv);
    *scale = amax / 127.0f;
}

/* The same 8 lanes at a time (a prompt's int8 keys and values on AVX2 were
 * the loops below: 3% of a 512-token int8 prefill on Zen 3); the same bytes
 * and scale: amax is a max of the same values, vcvtps2dq rounds as the
 * loops do, vpackssdw/vpacksswb narrow values already clamped. */
AVX2F static void to_i8_avx2(int8_t *dst, float *scale, const float *src, int n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    __m256 vmax = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(src + i));
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(m, _mm256_cmp_ps(m, big, _CMP_LE_OQ))); /* NaN, inf: 0 */
    }
    float amax = finite_amax(src, i, n, hmax8(vmax));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(src + i), vinv);
        y = _mm256_and_ps(y, _mm256_cmp_ps(y, y, _CMP_ORD_Q)); /* NaN */
        __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi));
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(dst + i), _mm_packs_epi16(w, w));
    }
    i8_tail(dst, src, i, n, inv);
    *scale = amax / 127.0f;
}
#endif

void mv_to_i8(int8_t *dst, float *scale, const float *src, int n)
{
#if defined(__x86_64__)
    static int avx512 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f");
    if (avx512 && !mv_half_path) {
        to_i8_avx512(dst, scale, src, n);
        return;
    }
    if (avx2_kernels()) {
        to_i8_avx2(dst, scale, src, n);
        return;
    }
#endif
    float amax = finite_amax(src, 0, n, 0.0f);
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    i8_tail(dst, src, 0, n, inv);
    *scale = amax / 127.0f;
}

CLONES
void mv_from_i8(float *dst, const int8_t *src, const float *scales, int n, int hd)
{
    for (int p = 0; p < n; p++)
        for (int i = 0; i < hd; i++) dst[(size_t)p * hd + i] = scales[p] * (float)src[(size_t)p * hd + i];
}

/* ==== Keys transposed ==== */

#if defined(__x86_64__)
/* r[0..16) (16 rows of 16 floats) transposed in registers: unpack pairs of
 * rows, then quads within 128-bit lanes, then the lanes across 4 rows. */
__attribute__((target("avx512f"))) AI void transpose16(__m512 *r)
{
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + j], lane L: column 4L + j of rows 4i..4i+3 */
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; j++) { /* column 4L + j: lane L of u[j], u[4 + j], u[8 + j], u[12 + j] */
        __m512 x0 = _mm512_shuffle_f32x4(u[j], u[4 + j], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 x1 = _mm512_shuffle_f32x4(u[j], u[4 + j], _MM_SHUFFLE(3, 2, 3, 2));
        __m512 y0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 y1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(3, 2, 3, 2));
        r[j] = _mm512_shuffle_f32x4(x0, y0, _MM_SHUFFLE(2, 0, 2, 0));
        r[4 + j] = _mm512_shuffle_f32x4(x0, y0, _MM_SHUFFLE(3, 1, 3, 1));
        r[8 + j] = _mm512_shuffle_f32x4(x1, y1, _MM_SHUFFLE(2, 0, 2, 0));
        r[12 + j] = _mm512_shuffle_f32x4(x1, y1, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* mv_keys_t in blocks of 16 positions by 16 elements, widened as read;
 * positions past n are zeros. */
__attribute__((target("avx512f"))) static void keys_t_avx512(float *t, size_t ld, const void *k, const float *ks,
                                                             int elt, int n, int hd)
{
    for (int p0 = 0; p0 < n; p0 += 16) {
        int pn = n - p0 < 16 ? n - p0 : 16;
        for (int d0 = 0; d0 < hd; d0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                size_t at = (size_t)(p0 + i) * hd + d0;
                r[i] = i >= pn          ? _mm512_setzero_ps()
                       : elt == MV_I8  ? _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                          _mm_loadu_si128((const __m128i *)((const int8_t *)k + at)))),
                                                      _mm512_set1_ps(ks[p0 + i]))
                       : elt == MV_F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)k + at)))
                                       : _mm512_loadu_ps((const float *)k + at);
            }
            transpose16(r);
            for (int j = 0; j < 16; j++) _mm512_storeu_ps(t + (size_t)(d0 + j) * ld + p0, r[j]);
        }
    }
}

/* r[0..8) (8 rows of 8 floats) transposed in registers, as transpose16:
 * pairs of rows, then quads within 128-bit lanes, then the lanes. */
AVX2F AI void transpose8(__m256 *r)
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* u[4i + j]: columns j and 4 + j of rows 4i..4i+3 */
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

/* mv_keys_t in blocks of 8 positions by 8 elements, widened as read;
 * positions from n to the next 16 are zeros. */
AVX2F static void keys_t_avx2(float *t, size_t ld, const void *k, const float *ks, int elt, int n, int hd)
{
    for (int p0 = 0; p0 < (n + 15) / 16 * 16; p0 += 8) {
        int pn = n - p0 < 8 ? n - p0 : 8;
        for (int d0 = 0; d0 < hd; d0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) {
                size_t at = (size_t)(p0 + i) * hd + d0;
                r[i] = i >= pn          ? _mm256_setzero_ps()
                       : elt == MV_I8  ? _mm256_mul_ps(_mm256_set1_ps(ks[p0 + i]),
                                                      _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                          _mm_loadl_epi64((const __m128i *)((const int8_t *)k + at)))))
                       : elt == MV_F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)k + at)))
                                       : _mm256_loadu_ps((const float *)k + at);
            }
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(t + (size_t)(d0 + j) * ld + p0, r[j]);
        }
    }
}
#endif

void mv_keys_t(float *t, size_t ld, const void *k, const float *ks, int elt, int n, int hd)
{
#if defined(__x86_64__)
    static int avx512 = -1;
    if (avx512 < 0) avx512 = mv_half_fast() && __builtin_cpu_supports("avx512f");
    if (avx512 && !mv_half_path && hd % 16 == 0) {
        keys_t_avx512(t, ld, k, ks, elt, n, hd);
        return;
    }
    if (avx2_kernels() && hd % 8 == 0) {
        keys_t_avx2(t, ld, k, ks, elt, n, hd);
        return;
    }
#endif
    for (int p0 = 0; p0 < n; p0 += 16) {
        for (int d = 0; d < hd; d++)
            for (int p = p0; p < p0 + 16; p++) {
                size_t at = (size_t)p * hd + d;
                t[(size_t)d * ld + p] = p >= n            ? 0.0f
                                        : elt == MV_I8  ? ks[p] * (float)((const int8_t *)k)[at]
                                        : elt == MV_F16 ? half_value(((const uint16_t *)k)[at])
                                                        : ((const float *)k)[at];
            }
    }
}

/* ==== Attention ==== */

/* Positions widened per chunk (half, int8), or all of them at once (floats). */
static int chunk_rows(const mv_attn *a)
{
    return a->elt == MV_F32 ? INT_MAX : a->hd >= MV_KV_CHUNK ? 1 : MV_KV_CHUNK / a->hd;
}

/* Rows p..p+n of keys or values (ld apart; int8 ones with scales sc) as
 * floats, *ld apart: the cache itself when it holds floats, else widened
 * into a->w. */
static inline const float *kv_rows(const mv_attn *a, const void *base, const float *sc, int p, int n,
                                   int *ld)
{
    *ld = a->hd;
    if (a->elt == MV_F32) {
        *ld = a->ld;
        return (const float *)base + (size_t)p * a->ld;
    }
    if (a->elt == MV_I8) {
        const int8_t *q = (const int8_t *)base + (size_t)p * a->ld;
        if (a->ld == a->hd) mv_from_i8(a->w, q, sc + p, n, a->hd);
        else
            for (int i = 0; i < n; i++)
                mv_from_i8(a->w + (size_t)i * a->hd, q + (size_t)i * a->ld, sc + p + i, 1, a->hd);
        return a->w;
    }
    const uint16_t *h = (const uint16_t *)base + (size_t)p * a->ld;
    if (a->ld == a->hd) mv_from_half(a->w, h, (size_t)n * a->hd);
    else
        for (int i = 0; i < n; i++) mv_from_half(a->w + (size_t)i * a->hd, h + (size_t)i * a->ld, a->hd);
    return a->w;
}

/* Any head size, one row at a time: scores into s, softmax, weighted values.
 * Its context is two runs: the shared one, then the row's own. */
static inline void attend_row_any(const mv_attn *a, int r, float *s)
{
    int hd = a->hd, step = chunk_rows(a), ld;
    const void *kb[2] = {a->k0, a->k1[r]}, *vb[2] = {a->v0, a->v1[r]};
    const float *ks[2] = {a->ks0, a->ks1[r]}, *vs[2] = {a->vs0, a->vs1[r]};
    int len[2] = {a->n0, a->n1[r]}, n = a->n0 + a->n1[r];
    const float *q = a->q[r];
    for (int g = 0, at = 0; g < 2; at += len[g++])
        for (int p0 = 0; p0 < len[g]; p0 += step) {
            int m = len[g] - p0 < step ? len[g] - p0 : step;
            const float *k = kv_rows(a, kb[g], ks[g], p0, m, &ld);
            for (int p = 0; p < m; p++) s[at + p0 + p] = dot(q, k + (size_t)p * ld, hd) * a->scale;
        }
    mv_softmax(s, n);
    float *out = a->out[r];
    memset(out, 0, hd * sizeof(float));
    for (int g = 0, at = 0; g < 2; at += len[g++])
        for (int p0 = 0; p0 < len[g]; p0 += step) {
            int m = len[g] - p0 < step ? len[g] - p0 : step;
            const float *v = kv_rows(a, vb[g], vs[g], p0, m, &ld);
            for (int p = 0; p < m; p++) axpy(out, s[at + p0 + p], v + (size_t)p * ld, hd);
        }
}

/* Scores of row r's query (HDV vectors in registers) against keys k. */
AI float score(const v16 *qv, const float *k, const int HDV)
{
    v16 acc = qv[0] * *(const v16u *)k;
    for (int v = 1; v < HDV; v++) acc += qv[v] * *(const v16u *)(k + 16 * v);
    return hsum(acc);
}

/* Lanes a[i..i+n) of each of a, b side by side, for the fold below. */
#define HALVES(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)

/* Keys in bit-reversed order within a block of 16, for fold16. */
static const int rev16[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

/* The product vectors t[0..8) of a query with 8 keys, folded pairwise, each
 * level halving the lanes a key owns (a transpose tree), with no
 * horizontal sum per key: 2 lanes per key are left (fold8, fold16). */
AI v16 fold_to_pairs(const v16 *t)
{
    v16 u[4], x[2];
    for (int i = 0; i < 4; i++) /* 8 lanes per key */
        u[i] = HALVES(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               HALVES(t[2 * i], t[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++) /* 4 */
        x[i] = HALVES(u[2 * i], u[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
               HALVES(u[2 * i], u[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    return HALVES(x[0], x[1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) + /* 2 */
           HALVES(x[0], x[1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
}

/* The product vectors t[j] of a query with the 16 keys rev16[j] of a block,
 * folded to one lane per key: taking the keys in bit-reversed order leaves
 * lane i with key i's score. */
AI v16 fold16(const v16 *t)
{
    v16 y0 = fold_to_pairs(t), y1 = fold_to_pairs(t + 8);
    return HALVES(y0, y1, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
           HALVES(y0, y1, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}

/* The scores of a query (HDV vectors in registers) against 16 keys k + j ld,
 * j = 0..15 (fold16). */
AI v16 score16(const v16 *qv, const float *k, size_t ld, const int HDV)
{
    v16 t[16];
    for (int j = 0; j < 16; j++) {
        const float *kj = k + rev16[j] * ld;
        t[j] = qv[0] * *(const v16u *)kj;
        for (int v = 1; v < HDV; v++) t[j] += qv[v] * *(const v16u *)(kj + 16 * v);
    }
    return fold16(t);
}

/* s[p] = scale * q.k_p for keys k_0..k_{n-1}, ld apart. */
AI void scores(const v16 *qv, const float *k, size_t ld, int n, float scale, float *s, const int HDV)
{
    int p = 0;
    for (; p + 16 <= n; p += 16) *(v16u *)(s + p) = score16(qv, k + p * ld, ld, HDV) * scale;
    for (; p < n; p++) s[p] = score(qv, k + p * ld, HDV) * scale;
}

/* fold16 for 8 keys: with t[j] from key rev8[j], lane i of the result is
 * key i's score. */
static const int rev8[8] = {0, 4, 2, 6, 1, 5, 3, 7};
AI v8 fold8(const v16 *t)
{
    v16 y = fold_to_pairs(t);
    return HALVES(y, y, 0, 2, 4, 6, 8, 10, 12, 14) + HALVES(y, y, 1, 3, 5, 7, 9, 11, 13, 15);
}

#if defined(__x86_64__)
#define AVX512F __attribute__((target("avx512f")))

/* Decode attention streams a head's keys (then its values) from memory,
 * 80 KB each at 640 positions in half floats (40 in int8), too short for
 * the hardware prefetchers to ramp up: the scores fetch the keys 2 KB on
 * into L1 and 16 KB on into L2, and each position's values into L2 as its
 * key is read. Measured on a 2-core Xeon (int8 weights, half keys and
 * values, 640 positions, 3 rows): attention 1.76-1.88 -> 1.18-1.50 ms a step. */
#define ATT_NEAR 2048
#define ATT_FAR 16384

/* A position's 64 elements (half floats or int8, unscaled) as 4 vectors of
 * fp32, exactly. */
AVX512F AI void widen64(v16 *x, const void *p, const int elt)
{
    for (int u = 0; u < 4; u++)
        x[u] = elt == MV_I8 ? (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p + u)))
                            : (v16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p + u));
}

/* Prefetches for position p of keys k and values v (pv may be NULL), es
 * bytes an element, one or two lines a position. */
AVX512F AI void fetch_ahead(const char *kp, const char *vp, const int es)
{
    __builtin_prefetch(kp + ATT_NEAR, 0, 3);
    __builtin_prefetch(kp + ATT_FAR, 0, 1);
    if (vp) __builtin_prefetch(vp, 0, 1);
    if (es == 2) {
        __builtin_prefetch(kp + ATT_NEAR + 64, 0, 3);
        __builtin_prefetch(kp + ATT_FAR + 64, 0, 1);
        if (vp) __builtin_prefetch(vp + 64, 0, 1);
    }
}

/* Half or int8 keys and values of 64-element heads, read in place: each
 * vector is widened in registers where it is used, once for all R rows,
 * so nothing goes through scratch. Scores of R rows (queries qv) against n
 * keys, ld apart (int8: times their scales ks), into s (rows S apart), 8
 * keys at a time (fold8: R x 8 sums fit the registers where R x 16 would
 * not). */
AVX512F AI void scores64(const v16 (*qv)[4], const void *k, const float *ks, const void *pv, size_t ld,
                         int n, float scale, float *s, int S, const int R, const int elt)
{
    const int es = elt == MV_I8 ? 1 : 2;
    const char *kb = k, *vb = pv;
    int p = 0;
    for (; p + 8 <= n; p += 8) { /* each key widened once for all R rows */
        v16 t[MV_ATTN_ROWS][8];
        for (int j = 0; j < 8; j++) {
            size_t at = (size_t)(p + j) * ld * es;
            fetch_ahead(kb + at, vb ? vb + at : NULL, es);
            v16 x[4];
            widen64(x, kb + (size_t)(p + rev8[j]) * ld * es, elt);
            for (int r = 0; r < R; r++) {
                t[r][j] = qv[r][0] * x[0];
                for (int v = 1; v < 4; v++) t[r][j] += qv[r][v] * x[v];
            }
        }
        v8 f = elt == MV_I8 ? *(const v8u *)(ks + p) * scale : (v8){0} + scale;
        for (int r = 0; r < R; r++) *(v8u *)(s + (size_t)r * S + p) = fold8(t[r]) * f;
    }
    for (; p < n; p++) {
        v16 x[4];
        widen64(x, kb + (size_t)p * ld * es, elt);
        float f = elt == MV_I8 ? ks[p] * scale : scale;
        for (int r = 0; r < R; r++) {
            v16 acc = qv[r][0] * x[0];
            for (int v = 1; v < 4; v++) acc += qv[r][v] * x[v];
            s[(size_t)r * S + p] = hsum(acc) * f;
        }
    }
}

/* o[r] += s[r * S + p] * v_p over n values ld apart (int8: times their
 * scales vs), for R rows. */
AVX512F AI void values64(v16 (*o)[4], const float *s, int S, const void *v, const float *vs, size_t ld,
                         int n, const int R, const int elt)
{
    const int es = elt == MV_I8 ? 1 : 2;
    for (int p = 0; p < n; p++) {
        v16 x[4];
        widen64(x, (const char *)v + (size_t)p * ld * es, elt);
        float f = elt == MV_I8 ? vs[p] : 1.0f;
        for (int r = 0; r < R; r++) {
            float w = s[(size_t)r * S + p] * f;
            for (int u = 0; u < 4; u++) o[r][u] += w * x[u];
        }
    }
}

/* attend_rows for half or int8 caches and 64-element heads, in place. */
AVX512F AI void attend64_rows(const mv_attn *a, float *s, const int R, const int elt)
{
    int n0 = a->n0, S = 0;
    for (int r = 0; r < R; r++) S = a->n1[r] > S ? a->n1[r] : S;
    S += n0;
    v16 qv[MV_ATTN_ROWS][4], o[MV_ATTN_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < 4; v++) qv[r][v] = *(const v16u *)(a->q[r] + 16 * v), o[r][v] = (v16){0};
    scores64(qv, a->k0, a->ks0, a->v0, a->ld, n0, a->scale, s, S, R, elt);
    for (int r = 0; r < R; r++) {
        scores64(qv + r, a->k1[r], a->ks1[r], a->v1[r], a->ld, a->n1[r], a->scale, s + r * S + n0, S, 1, elt);
        mv_softmax(s + r * S, n0 + a->n1[r]);
    }
    values64(o, s, S, a->v0, a->vs0, a->ld, n0, R, elt);
    for (int r = 0; r < R; r++) {
        values64(o + r, s + r * S + n0, S, a->v1[r], a->vs1[r], a->ld, a->n1[r], 1, elt);
        for (int u = 0; u < 4; u++) *(v16u *)(a->out[r] + 16 * u) = o[r][u];
    }
}

AVX512F AI void attend64_elt(const mv_attn *a, const int elt)
{
    switch (a->R) {
    case 1: attend64_rows(a, a->s, 1, elt); break;
    case 2: attend64_rows(a, a->s, 2, elt); break;
    case 3: attend64_rows(a, a->s, 3, elt); break;
    default: attend64_rows(a, a->s, 4, elt); break;
    }
}

AVX512F static void attend64_avx512(const mv_attn *a)
{
    if (a->elt == MV_I8) attend64_elt(a, MV_I8);
    else attend64_elt(a, MV_F16);
}
#endif

#if defined(__x86_64__)
/* 8 elements of a key or value as floats: widened from half floats (F16C)
 * or int8 (unscaled), or loaded. */
AVX2F AI __m256 load8(const void *base, size_t i, const int elt)
{
    if (elt == MV_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    if (elt == MV_I8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)base + i))));
    return _mm256_loadu_ps((const float *)base + i);
}

/* Lane j: the sum of t[j]'s 8 lanes. */
AVX2F AI __m256 hsum8x8(const __m256 *t)
{
    __m256 b0 = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
    __m256 b1 = _mm256_hadd_ps(_mm256_hadd_ps(t[4], t[5]), _mm256_hadd_ps(t[6], t[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

/* One query row of a 64-float head against n keys ld elements apart:
 * scale * q.k (int8: times the keys' scales ks) into s, 8 keys at a time (8
 * sums and a slice of the query in registers; the keys stay where they
 * are, widened as read). Where fetch, keys and values (pv, or NULL) are
 * fetched ahead as the AVX-512 kernel's are (fetch_ahead). As
 * GPT2_CPU_ISA=avx2 on the Xeon with AMX, steps after 627 tokens at 1 / 3
 * rows: bf16 10.4-10.7 / 13.9-14.3 -> 10.0-10.3 / 13.1-13.9 ms, int8 at 1
 * row 6.2-6.3 -> 5.7-5.9 (alternating binaries, 3 runs each). */
AVX2F AI void scores64_avx2(const float *q, const void *k, const float *ks, const void *pv, size_t ld,
                            int n, float scale, float *s, const int elt, int fetch)
{
    const int es = elt == MV_I8 ? 1 : elt == MV_F16 ? 2 : 4; /* 64-byte lines a position's 64 take */
    int p = 0;
    for (; p + 8 <= n; p += 8) {
        __m256 t[8];
        for (int j = 0; j < 8 && fetch; j++) {
            size_t at = (size_t)(p + j) * ld * es;
            const char *kp = (const char *)k + at, *vp = pv ? (const char *)pv + at : NULL;
            for (int l = 0; l < es; l++) {
                __builtin_prefetch(kp + ATT_NEAR + 64 * l, 0, 3);
                __builtin_prefetch(kp + ATT_FAR + 64 * l, 0, 1);
                if (vp) __builtin_prefetch(vp + 64 * l, 0, 1);
            }
        }
        for (int j = 0; j < 8; j++) t[j] = _mm256_setzero_ps();
        for (int u = 0; u < 8; u++) {
            __m256 qv = _mm256_loadu_ps(q + 8 * u);
            for (int j = 0; j < 8; j++) t[j] = _mm256_fmadd_ps(load8(k, (size_t)(p + j) * ld + 8 * u, elt), qv, t[j]);
        }
        __m256 f = _mm256_set1_ps(scale);
        if (elt == MV_I8) f = _mm256_mul_ps(_mm256_loadu_ps(ks + p), f);
        _mm256_storeu_ps(s + p, _mm256_mul_ps(hsum8x8(t), f));
    }
    for (; p < n; p++) {
        __m256 t = _mm256_setzero_ps();
        for (int u = 0; u < 8; u++)
            t = _mm256_fmadd_ps(load8(k, (size_t)p * ld + 8 * u, elt), _mm256_loadu_ps(q + 8 * u), t);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        s[p] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h))) * (elt == MV_I8 ? ks[p] * scale : scale);
    }
}

/* o += s[p] * v_p (int8: times the values' scales vs) over n values ld
 * elements apart (o: 8 vectors). */
AVX2F AI void values64_avx2(__m256 *o, const float *s, const void *v, const float *vs, size_t ld, int n,
                            const int elt)
{
    for (int p = 0; p < n; p++) {
        __m256 w = _mm256_set1_ps(elt == MV_I8 ? s[p] * vs[p] : s[p]);
        for (int u = 0; u < 8; u++) o[u] = _mm256_fmadd_ps(w, load8(v, (size_t)p * ld + 8 * u, elt), o[u]);
    }
}

/* scores64_avx2 for R (2 or 3) rows q[0..R) against n shared keys, into
 * s (rows S apart), with fetch: each slice of a key widened once for all
 * the rows. 4 keys at a time (12 sums and a key slice in registers, the
 * queries fma operands from L1); per key the fmas and the fold of
 * scores64_avx2's 8 keys (its first or second half), and its tail, so the
 * same bits. */
AVX2F AI void scores64_avx2_shared(const float *const *q, const void *k, const float *ks, const void *pv,
                                   size_t ld, int n, float scale, float *s, int S, const int R, const int elt)
{
    const int es = elt == MV_I8 ? 1 : elt == MV_F16 ? 2 : 4;
    int p = 0;
    for (; p + 8 <= n; p += 8)
        for (int p4 = p; p4 < p + 8; p4 += 4) {
            for (int j = 0; j < 4; j++) {
                size_t at = (size_t)(p4 + j) * ld * es;
                const char *kp = (const char *)k + at, *vp = (const char *)pv + at;
                for (int l = 0; l < es; l++) {
                    __builtin_prefetch(kp + ATT_NEAR + 64 * l, 0, 3);
                    __builtin_prefetch(kp + ATT_FAR + 64 * l, 0, 1);
                    __builtin_prefetch(vp + 64 * l, 0, 1);
                }
            }
            __m256 t[3][4];
            for (int r = 0; r < R; r++)
                for (int j = 0; j < 4; j++) t[r][j] = _mm256_setzero_ps();
            for (int u = 0; u < 8; u++)
                for (int j = 0; j < 4; j++) {
                    __m256 x = load8(k, (size_t)(p4 + j) * ld + 8 * u, elt);
                    for (int r = 0; r < R; r++) t[r][j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q[r] + 8 * u), t[r][j]);
                }
            __m128 f = _mm_set1_ps(scale);
            if (elt == MV_I8) f = _mm_mul_ps(_mm_loadu_ps(ks + p4), f);
            for (int r = 0; r < R; r++) { /* hsum8x8's lanes 0-3 */
                __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(t[r][0], t[r][1]), _mm256_hadd_ps(t[r][2], t[r][3]));
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
                _mm_storeu_ps(s + (size_t)r * S + p4, _mm_mul_ps(h, f));
            }
        }
    for (int r = 0; r < R && p < n; r++) /* the last n % 8, as scores64_avx2 takes them */
        scores64_avx2(q[r], (const char *)k + (size_t)p * ld * es, elt == MV_I8 ? ks + p : ks, NULL, ld, n - p,
                      scale, s + (size_t)r * S + p, elt, 0);
}

/* 64-float heads without AVX-512: 8 scores or the 64 output sums and a
 * key or value slice in registers, which AVX2's 16 hold (attend_rows keeps
 * R x 64 floats of queries and sums there, which spilled on every key: 15%
 * of an int8 decode step at 3 rows, measured on Zen 3). Rows that share a
 * context of half or int8 keys score it together, 3 rows or pairs
 * (scores64_avx2_shared: 4.4 us a head of 627 int8 keys at 3 rows against
 * 6.3 a row at a time, on Zen 3); the rest is a row at a time, the shared
 * values from L1 or L2 after the first row (their sums for 2 or 3 rows
 * together, 16 of the 64 elements a pass to fit the registers, took 2x as
 * long: a row's 8 sums run at the fmas' latency). Each row gets the bits
 * it gets alone. */
AVX2F AI void attend64_avx2_rows(const mv_attn *a, const int elt)
{
    int shared = a->R > 1 && a->n0 >= 8 && elt != MV_F32, n0 = a->n0;
    for (int r0 = 0, m; r0 < a->R; r0 += m) {
        m = !shared ? 1 : a->R == 3 ? 3 : 2; /* MV_ATTN_ROWS is 4 */
        int S = 0;
        for (int r = r0; r < r0 + m; r++) S = a->n1[r] > S ? a->n1[r] : S;
        S += n0;
        if (m == 3) scores64_avx2_shared(a->q + r0, a->k0, a->ks0, a->v0, a->ld, n0, a->scale, a->s, S, 3, elt);
        if (m == 2) scores64_avx2_shared(a->q + r0, a->k0, a->ks0, a->v0, a->ld, n0, a->scale, a->s, S, 2, elt);
        for (int r = r0; r < r0 + m; r++) {
            float *s = a->s + (size_t)(r - r0) * S;
            /* alone, the shared context's first row fetches it; the others find it in L1 or L2 */
            if (m == 1) scores64_avx2(a->q[r], a->k0, a->ks0, a->v0, a->ld, n0, a->scale, s, elt, r == 0);
            scores64_avx2(a->q[r], a->k1[r], a->ks1[r], a->v1[r], a->ld, a->n1[r], a->scale, s + n0, elt, 1);
            mv_softmax(s, n0 + a->n1[r]);
            __m256 o[8];
            for (int u = 0; u < 8; u++) o[u] = _mm256_setzero_ps();
            values64_avx2(o, s, a->v0, a->vs0, a->ld, n0, elt);
            values64_avx2(o, s + n0, a->v1[r], a->vs1[r], a->ld, a->n1[r], elt);
            for (int u = 0; u < 8; u++) _mm256_storeu_ps(a->out[r] + 8 * u, o[u]);
        }
    }
}
_Static_assert(MV_ATTN_ROWS == 4, "attend64_avx2_rows takes 3 rows together, or pairs");

AVX2F static void attend64_avx2(const mv_attn *a)
{
    if (a->elt == MV_F16) attend64_avx2_rows(a, MV_F16);
    else if (a->elt == MV_I8) attend64_avx2_rows(a, MV_I8);
    else attend64_avx2_rows(a, MV_F32);
}

/* mv_softmax and mv_gelu_tanh in 8 lanes with vmaxps/vminps for the clamps
 * and masked loads for the tails: gcc 12 turns the 16-lane versions'
 * comparisons into scalar compares and branches when it splits them for
 * AVX2 (softmax ran 4.6 ns an element on Zen 3, GELU 3.2; now 0.9 and 1.1).
 * They give the 16-lane versions' bits: lane for lane the same arithmetic,
 * and softmax's sum in the same order (two accumulators for a 16-lane one's
 * halves, the last n % 16 added one by one). vmaxps(lo, t) returns t where
 * t is NaN, so NaN is kept as there; in the largest score, as there, NaN
 * never wins. */
AVX2F static void softmax_avx2(float *s, int n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int p = 0;
    for (; p + 8 <= n; p += 8) m = _mm256_max_ps(_mm256_loadu_ps(s + p), m);
    if (p < n) {
        __m256i lanes = first_lanes(n - p);
        m = _mm256_max_ps(_mm256_blendv_ps(m, _mm256_maskload_ps(s + p, lanes), _mm256_castsi256_ps(lanes)), m);
    }
    v8 max = _mm256_set1_ps(hmax8(m)), lo = _mm256_set1_ps(-87.0f), acc0 = {0}, acc1 = {0};
    for (p = 0; p + 16 <= n; p += 16) {
        v8 t0 = vexp8(_mm256_max_ps(lo, _mm256_loadu_ps(s + p) - max));
        v8 t1 = vexp8(_mm256_max_ps(lo, _mm256_loadu_ps(s + p + 8) - max));
        _mm256_storeu_ps(s + p, t0);
        _mm256_storeu_ps(s + p + 8, t1);
        acc0 += t0;
        acc1 += t1;
    }
    float sum = hsum8(acc0 + acc1);
    for (; p < n; p += 8) {
        int k = n - p < 8 ? n - p : 8;
        __m256i lanes = first_lanes(k);
        v8 t = vexp8(_mm256_max_ps(lo, _mm256_maskload_ps(s + p, lanes) - max));
        _mm256_maskstore_ps(s + p, lanes, t);
        for (int i = 0; i < k; i++) sum += t[i];
    }
    v8 inv = _mm256_set1_ps(1.0f / sum);
    for (p = 0; p + 8 <= n; p += 8) _mm256_storeu_ps(s + p, _mm256_loadu_ps(s + p) * inv);
    if (p < n) {
        __m256i lanes = first_lanes(n - p);
        _mm256_maskstore_ps(s + p, lanes, _mm256_maskload_ps(s + p, lanes) * inv);
    }
}

AVX2F static void gelu_avx2(float *x, int n)
{
    const float c = 0.7978845608028654f;
    v8 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    for (int i = 0; i < n; i += 8) {
        __m256i lanes = first_lanes(n - i < 8 ? n - i : 8);
        v8 v = n - i < 8 ? _mm256_maskload_ps(x + i, lanes) : _mm256_loadu_ps(x + i);
        v8 t = -2.0f * c * (v + 0.044715f * v * v * v);
        t = _mm256_min_ps(hi, _mm256_max_ps(lo, t));
        t = v / (1.0f + vexp8(t));
        if (n - i < 8) _mm256_maskstore_ps(x + i, lanes, t);
        else _mm256_storeu_ps(x + i, t);
    }
}
/* mv_layernorm and mv_add in 8 lanes, with layernorm16's sums in its order
 * (two accumulators for its halves): for 16-lane accumulators on AVX2 gcc
 * 12 goes through the stack every step. */
AVX2F static void layernorm_avx2(float *out, const float *x, const float *w, const float *b, int C, float eps)
{
    v8 a0 = {0}, a1 = {0};
    int i = 0;
    for (; i + 16 <= C; i += 16) {
        a0 += *(const v8u *)(x + i);
        a1 += *(const v8u *)(x + i + 8);
    }
    float sum = hsum8(a0 + a1);
    for (; i < C; i++) sum += x[i];
    float mean = sum / C, var;
    a0 = a1 = (v8){0};
    for (i = 0; i + 16 <= C; i += 16) {
        v8 d0 = *(const v8u *)(x + i) - mean, d1 = *(const v8u *)(x + i + 8) - mean;
        a0 += d0 * d0;
        a1 += d1 * d1;
    }
    var = hsum8(a0 + a1);
    for (; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    float rstd = 1.0f / sqrtf(var / C + eps);
    for (i = 0; i + 8 <= C; i += 8)
        *(v8u *)(out + i) = (*(const v8u *)(x + i) - mean) * rstd * *(const v8u *)(w + i) + *(const v8u *)(b + i);
    for (; i < C; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

AVX2F static void add_avx2(float *o, const float *b, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) *(v8u *)(o + i) += *(const v8u *)(b + i);
    for (; i < n; i++) o[i] += b[i];
}
#endif

/* R rows whose heads are HDV whole vectors of 16: every shared key and value
 * is loaded (or widened) once for all rows, the queries and the R x HDV
 * output sums stay in registers. s: R rows of S scores. */
AI void attend_rows(const mv_attn *a, float *s, const int R, const int HDV)
{
    int n0 = a->n0, S = 0, step = chunk_rows(a), ld;
    for (int r = 0; r < R; r++) S = a->n1[r] > S ? a->n1[r] : S;
    S += n0;
    v16 qv[MV_ATTN_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < HDV; v++) qv[r][v] = *(const v16u *)(a->q[r] + 16 * v);
    for (int p0 = 0; p0 < n0; p0 += step) {
        int m = n0 - p0 < step ? n0 - p0 : step;
        const float *k = kv_rows(a, a->k0, a->ks0, p0, m, &ld);
        for (int r = 0; r < R; r++) scores(qv[r], k, ld, m, a->scale, s + r * S + p0, HDV);
    }
    for (int r = 0; r < R; r++) {
        for (int p0 = 0; p0 < a->n1[r]; p0 += step) {
            int m = a->n1[r] - p0 < step ? a->n1[r] - p0 : step;
            const float *k = kv_rows(a, a->k1[r], a->ks1[r], p0, m, &ld);
            scores(qv[r], k, ld, m, a->scale, s + r * S + n0 + p0, HDV);
        }
        mv_softmax(s + r * S, n0 + a->n1[r]);
    }
    v16 o[MV_ATTN_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int u = 0; u < HDV; u++) o[r][u] = (v16){0};
    for (int p0 = 0; p0 < n0; p0 += step) {
        int m = n0 - p0 < step ? n0 - p0 : step;
        const float *v = kv_rows(a, a->v0, a->vs0, p0, m, &ld);
        for (int p = 0; p < m; p++)
            for (int r = 0; r < R; r++)
                for (int u = 0; u < HDV; u++)
                    o[r][u] += s[r * S + p0 + p] * *(const v16u *)(v + (size_t)p * ld + 16 * u);
    }
    for (int r = 0; r < R; r++) {
        for (int p0 = 0; p0 < a->n1[r]; p0 += step) {
            int m = a->n1[r] - p0 < step ? a->n1[r] - p0 : step;
            const float *v = kv_rows(a, a->v1[r], a->vs1[r], p0, m, &ld);
            for (int p = 0; p < m; p++)
                for (int u = 0; u < HDV; u++)
                    o[r][u] += s[r * S + n0 + p0 + p] * *(const v16u *)(v + (size_t)p * ld + 16 * u);
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
#if defined(__x86_64__)
    switch (attend_path(a->elt, a->hd)) {
    case ATT_AVX512: attend64_avx512(a); return;
    case ATT_AVX2: attend64_avx2(a); return;
    }
#endif
    switch (a->hd) { /* GPT-2's sizes all have 64-float heads */
    case 16: attend_hdv(a, 1); break;
    case 32: attend_hdv(a, 2); break;
    case 48: attend_hdv(a, 3); break;
    case 64: attend_hdv(a, 4); break;
    default:
        for (int r = 0; r < a->R; r++) attend_row_any(a, r, a->s);
    }
}

/* mv_gelu_tanh in 16-lane vectors: x / (1 + exp(-2 tanh's argument)). */
CLONES
static void gelu16(float *x, int n)
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

/* The AVX2 kernel where avx2_kernels() says, else the 16-lane one. */
#if defined(__x86_64__)
#define PICK(avx2_call, call) (avx2_kernels() ? avx2_call : call)
#else
#define PICK(avx2_call, call) (call)
#endif

void mv_layernorm(float *out, const float *x, const float *w, const float *b, int C, float eps)
{
    PICK(layernorm_avx2(out, x, w, b, C, eps), layernorm16(out, x, w, b, C, eps));
}

void mv_add(float *o, const float *b, int n) { PICK(add_avx2(o, b, n), add16(o, b, n)); }

void mv_softmax(float *s, int n) { PICK(softmax_avx2(s, n), softmax16(s, n)); }

void mv_gelu_tanh(float *x, int n) { PICK(gelu_avx2(x, n), gelu16(x, n)); }
#undef PICK

float mv_exp(float x)
{
    v16 v = {x};
    return vexp(v)[0];
}

/* amx.c - see amx.h.
 *
 * Every call configures the eight tiles (64 bytes a row; 16 rows, but for
 * the activations and sums of a last block of fewer rows), unless an
 * AMX_HOLD call left them so, and gives them back at its end (tilerelease)
 * unless it is an AMX_HOLD call itself, whose caller gives them back with
 * amx_release: no thread keeps AMX state between products. A step is one
 * int8 group or 16 bf16 pairs.
 *   16 rows (1 x 4):  tmm0, tmm1 the activations, alternating from one step
 *                     to the next; tmm2, tmm3 the weights of 16 columns,
 *                     alternating; tmm4-7 the sums of columns 0-15, 16-31,
 *                     32-47 and 48-63. A step loads its activations once for
 *                     four multiplies.
 *   32 rows (2 x 2):  per half of the columns, tmm0 and tmm1 rows 0-15 and
 *                     16-31, tmm2 and tmm3 two sets of 16 columns, tmm4-7
 *                     their four products: each loaded tile serves two.
 * bf16 pairs beyond the last whole step are copied, zero padded, into
 * buffers of whole tiles. Measured on one AMX Xeon (README): the 32-row
 * calls were faster with K = 768 and slower with K = 3072, by 5-25%.
 */
#define _DEFAULT_SOURCE /* syscall */
#include "amx.h"

#include "packed.h"

#include <stdlib.h>
#include <string.h>

int amx_pair_rows = 1;

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_ask(void)
{
    unsigned a, b, c, d, a1, b1, c1, d1;
    amx_ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) &&
             (d >> 22 & 1) && (d >> 24 & 1) && (d >> 25 & 1) /* AMX-BF16, -TILE, -INT8 */
             && (b >> 16 & 1) && (b >> 30 & 1) && (c >> 11 & 1) && (a1 >> 5 & 1) /* AVX-512 F, BW, VNNI, BF16 */
             && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

int amx_usable(void)
{
    pthread_once(&amx_once, amx_ask); /* any thread may ask first */
    return amx_ok;
}

#define AMX_T __attribute__((target("amx-tile,amx-int8,amx-bf16,avx512f,avx512bw,avx512vl,f16c")))
#define AI static inline __attribute__((always_inline))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tile_cfg;

/* ==== The tile instructions in C (AMX_EMU) ==== */

static __thread uint8_t emu[8][16][64];
static __thread int emu_rows[8]; /* each tile's rows, as configured */

static void emu_zero(int t) { memset(emu[t], 0, sizeof emu[t]); }

/* rows past a tile's configured ones read as zero and are not loaded or stored */
static void emu_load(int t, const void *p, size_t stride)
{
    emu_zero(t);
    for (int r = 0; r < emu_rows[t]; r++) memcpy(emu[t][r], (const char *)p + r * stride, 64);
}

static void emu_store(int t, void *p, size_t stride)
{
    for (int r = 0; r < emu_rows[t]; r++) memcpy((char *)p + r * stride, emu[t][r], 64);
}

/* tdpbsud: C (int32) += A (int8, 4 a dword) . B (uint8, row k: 4 of column n) */
static void emu_dpbsud(int c, int a, int b)
{
    for (int m = 0; m < emu_rows[c]; m++)
        for (int n = 0; n < 16; n++) {
            int32_t s;
            memcpy(&s, &emu[c][m][4 * n], 4);
            for (int k = 0; k < 16; k++)
                for (int i = 0; i < 4; i++) s += (int8_t)emu[a][m][4 * k + i] * (int32_t)emu[b][k][4 * n + i];
            memcpy(&emu[c][m][4 * n], &s, 4);
        }
}

/* bf16 as fp32, subnormals to zero (tdpbf16ps reads them so) */
static float emu_bf(const uint8_t *p)
{
    uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
    if (!(u & 0x7F800000u)) u &= 0x80000000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* tdpbf16ps as Intel writes it: per pair, the even product then the odd one
 * added (each product exact in fp32), subnormal results to zero */
static void emu_dpbf16ps(int c, int a, int b)
{
    for (int m = 0; m < emu_rows[c]; m++)
        for (int n = 0; n < 16; n++) {
            float s;
            memcpy(&s, &emu[c][m][4 * n], 4);
            for (int k = 0; k < 16; k++)
                for (int i = 0; i < 2; i++) {
                    s += emu_bf(&emu[a][m][4 * k + 2 * i]) * emu_bf(&emu[b][k][4 * n + 2 * i]);
                    if (s != 0 && s > -1.17549435e-38f && s < 1.17549435e-38f) s = s < 0 ? -0.0f : 0.0f;
                }
            memcpy(&emu[c][m][4 * n], &s, 4);
        }
}

/* Tile numbers are immediates: each macro takes literal ones. */
#define EITHER(real, emulated)                                                                     \
    do {                                                                                           \
        if (hw) real;                                                                              \
        else emulated;                                                                             \
    } while (0)
#define T_ZERO(t) EITHER(_tile_zero(t), emu_zero(t))
#define T_LOAD(t, p, s) EITHER(_tile_loadd(t, p, s), emu_load(t, p, s))
#define T_STORE(t, p, s) EITHER(_tile_stored(t, p, s), emu_store(t, p, s))
#define T_DPBSUD(c, a, b) EITHER(_tile_dpbsud(c, a, b), emu_dpbsud(c, a, b))
#define T_DPBF16(c, a, b) EITHER(_tile_dpbf16ps(c, a, b), emu_dpbf16ps(c, a, b))
#define T_ZERO_SUMS() do { T_ZERO(4); T_ZERO(5); T_ZERO(6); T_ZERO(7); } while (0)

/* A call that streams its tile from memory (AMX_STREAM: no other call reads
 * it) fetches each step's weights (n bytes at w) PF_AHEAD bytes before it
 * needs them, toward L2, as the decode kernels do. A 20-row bf16 prompt
 * after 627 cached tokens: 17.5-18.2 -> 15.6-16.0 ms (4 KB ahead measured
 * alike). Prompts of many rows, whose calls read each tile again from L2,
 * measured no better with it. */
#define PF_AHEAD 16384
#define PF_STEP(stream, w, n)                                                                      \
    do {                                                                                           \
        if (stream)                                                                                \
            for (size_t o_ = 0; o_ < (n); o_ += 64) __builtin_prefetch((const char *)(w) + PF_AHEAD + o_, 0, 1); \
    } while (0)

/* One step: activations at x (16 rows, sx bytes apart) into tile A, times
 * 64 columns of weights at w (16 rows of 256 bytes) onto tmm4-7. */
#define STEP(DP, A, x, sx, w)                                                                      \
    do {                                                                                           \
        T_LOAD(A, x, sx);                                                                          \
        T_LOAD(2, (w), 256);                                                                       \
        DP(4, A, 2);                                                                               \
        T_LOAD(3, (w) + 64, 256);                                                                  \
        DP(5, A, 3);                                                                               \
        T_LOAD(2, (w) + 128, 256);                                                                 \
        DP(6, A, 2);                                                                               \
        T_LOAD(3, (w) + 192, 256);                                                                 \
        DP(7, A, 3);                                                                               \
    } while (0)

#define STEP_ALT(DP, i, x, sx, w)                                                                  \
    do {                                                                                           \
        if ((i) & 1) STEP(DP, 1, x, sx, w);                                                        \
        else STEP(DP, 0, x, sx, w);                                                                \
    } while (0)

/* The configuration this thread's tiles hold (M << 8 | the last block's
 * rows), 0 when released. */
static __thread unsigned held;

/* m of M rows (M - 16 < m <= M): the activations' and sums' tiles of the
 * last block of 16 rows get the rows it has (m - M + 16), so that a call
 * reads and writes no row past m, and multiplies no more. Tiles already so
 * configured (held since an AMX_HOLD call) are not configured again. */
AMX_T AI void begin(int hw, const int M, int m)
{
    int last = m - (M - 16);
    if (hw && held == ((unsigned)M << 8 | (unsigned)last)) return;
    tile_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    if (M == 16) cfg.rows[0] = cfg.rows[1] = cfg.rows[4] = cfg.rows[5] = cfg.rows[6] = cfg.rows[7] = last;
    else cfg.rows[1] = cfg.rows[6] = cfg.rows[7] = last;
    if (hw) {
        _tile_loadconfig(&cfg);
        held = (unsigned)M << 8 | (unsigned)last;
    } else
        for (int t = 0; t < 8; t++) emu_rows[t] = cfg.rows[t];
}

AMX_T AI void end(int hw, int flags)
{
    if (hw && !(flags & AMX_HOLD)) {
        _tile_release();
        held = 0;
    }
}

AMX_T void amx_release(void)
{
    if (held) _tile_release();
    held = 0;
}

/* The sums of M = 16 rows (tmm4-7: 16 columns each) or of M = 32 rows by
 * half h of the columns (tmm4, 5: rows 0-15; tmm6, 7: rows 16-31) into c
 * (M rows of PK_TILE values of 4 bytes). */
#define STORE_SUMS(M, h, c)                                                                        \
    do {                                                                                           \
        char *p_ = (char *)(c);                                                                    \
        if ((M) == 16) {                                                                           \
            T_STORE(4, p_, 256);                                                                   \
            T_STORE(5, p_ + 64, 256);                                                              \
            T_STORE(6, p_ + 128, 256);                                                             \
            T_STORE(7, p_ + 192, 256);                                                             \
        } else {                                                                                   \
            p_ += 128 * (h);                                                                       \
            T_STORE(4, p_, 256);                                                                   \
            T_STORE(5, p_ + 64, 256);                                                              \
            T_STORE(6, p_ + 16 * 256, 256);                                                        \
            T_STORE(7, p_ + 16 * 256 + 64, 256);                                                   \
        }                                                                                          \
    } while (0)

/* M = 32: rows 0-15 (tmm0) and 16-31 (tmm1) of activations by columns
 * 32h.. (tmm2) and 32h + 16.. (tmm3) of weights at w onto tmm4-7. */
#define QUAD(DP, w, h)                                                                             \
    do {                                                                                           \
        T_LOAD(2, (w) + 128 * (h), 256);                                                           \
        T_LOAD(3, (w) + 128 * (h) + 64, 256);                                                      \
        DP(4, 0, 2);                                                                               \
        DP(5, 0, 3);                                                                               \
        DP(6, 1, 2);                                                                               \
        DP(7, 1, 3);                                                                               \
    } while (0)

/* out (M rows)[0..n) (+)= acc, then + bias where given (the order
 * packed.c's kernels store theirs in, so the same bits) */
AMX_T AI void put(const int M, const float (*acc)[PK_TILE], float *out, int ldo, int n, int accumulate,
                  const float *bias)
{
    for (int r = 0; r < M; r++) {
        float *o = out + (size_t)r * ldo;
        if (n == PK_TILE) {
            for (int j = 0; j < PK_TILE; j += 16) {
                __m512 v = _mm512_load_ps(acc[r] + j);
                if (accumulate) v = _mm512_add_ps(_mm512_loadu_ps(o + j), v);
                if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));
                _mm512_storeu_ps(o + j, v);
            }
        } else {
            for (int c = 0; c < n; c++) o[c] = (accumulate ? o[c] : 0.0f) + acc[r][c];
            if (bias)
                for (int c = 0; c < n; c++) o[c] += bias[c];
        }
    }
}

/* M = 16: each group's activations loaded once for 4 multiplies (1 x 4
 * tiles of sums); M = 32: 2 x 2, each loaded tile serving 2 multiplies. */
AMX_T AI void i8_body(int hw, const int M, int m, const unsigned char *tp, int G, float unscale, const int8_t *q,
                      size_t ldq, const int32_t *sum, const float *scale, size_t lds, float *out, int ldo,
                      int n, int accumulate, const float *bias, int flags)
{
    float acc[2 * AMX_ROWS][PK_TILE] __attribute__((aligned(64)));
    int32_t cs[2 * AMX_ROWS][PK_TILE] __attribute__((aligned(64)));
    memset(acc, 0, sizeof(float) * m * PK_TILE);
    begin(hw, M, m);
    for (int g = 0; g < G; g++) {
        const unsigned char *gp = tp + (size_t)g * PK_GROUP_BYTES;
        const int8_t *qg = q + (size_t)g * PK_GROUP;
        PF_STEP(flags & AMX_STREAM, gp, PK_GROUP_BYTES);
        if (M == 16) {
            T_ZERO_SUMS();
            STEP_ALT(T_DPBSUD, g, qg, ldq, gp);
            STORE_SUMS(16, 0, cs);
        } else {
            T_LOAD(0, qg, ldq);
            T_LOAD(1, qg + 16 * ldq, ldq);
            T_ZERO_SUMS();
            QUAD(T_DPBSUD, gp, 0);
            STORE_SUMS(32, 0, cs);
            T_ZERO_SUMS();
            QUAD(T_DPBSUD, gp, 1);
            STORE_SUMS(32, 1, cs);
        }
        /* the VNNI kernel's epilogue: (sums - 128 * sum(x)) as fp32, times
         * weight scale x (activation scale x unscale), added to the fp32 sums */
        __m512 ws[4];
        for (int j = 0; j < 4; j++)
            ws[j] = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(gp + PK_GROUP_W + 32 * j)));
        for (int r = 0; r < m; r++) {
            __m512i base = _mm512_set1_epi32(-128 * sum[(size_t)r * lds + g]);
            __m512 xs = _mm512_set1_ps(scale[(size_t)r * lds + g] * unscale);
            for (int j = 0; j < 4; j++) {
                __m512i is = _mm512_add_epi32(base, _mm512_load_si512(cs[r] + 16 * j));
                __m512 a = _mm512_load_ps(acc[r] + 16 * j);
                _mm512_store_ps(acc[r] + 16 * j, _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(ws[j], xs), a));
            }
        }
    }
    end(hw, flags);
    put(m, acc, out, ldo, n, accumulate, bias);
}

AMX_T void amx_i8_rows(int mode, int M, const unsigned char *tp, int G, float unscale, const int8_t *q,
                       size_t ldq, const int32_t *sum, const float *scale, size_t lds, float *out, int ldo,
                       int n, int accumulate, const float *bias, int flags)
{
    if (mode == AMX_HW && M > 16)
        i8_body(1, 32, M, tp, G, unscale, q, ldq, sum, scale, lds, out, ldo, n, accumulate, bias, flags);
    else if (mode == AMX_HW) i8_body(1, 16, M, tp, G, unscale, q, ldq, sum, scale, lds, out, ldo, n, accumulate, bias, flags);
    else if (M > 16) i8_body(0, 32, M, tp, G, unscale, q, ldq, sum, scale, lds, out, ldo, n, accumulate, bias, flags);
    else i8_body(0, 16, M, tp, G, unscale, q, ldq, sum, scale, lds, out, ldo, n, accumulate, bias, flags);
}

AMX_T AI void bf16_body(int hw, const int M, int m, const unsigned char *tp, int P, const uint32_t *x, size_t ldx,
                        float *out, int ldo, int n, int accumulate, const float *bias, int flags)
{
    enum { SP = 16 };                             /* pairs a step */
    const size_t step_w = (size_t)SP * PK_TILE * 4; /* weight bytes a step */
    float acc[2 * AMX_ROWS][PK_TILE] __attribute__((aligned(64)));
    uint32_t xa[2 * AMX_ROWS][SP] __attribute__((aligned(64)));
    unsigned char wb[SP * PK_TILE * 4] __attribute__((aligned(64)));
    int S = P / SP, rest = P % SP;
    if (rest) { /* the last pairs, zero padded to a whole step */
        memset(xa, 0, sizeof(uint32_t) * M * SP);
        memset(wb + (size_t)rest * PK_TILE * 4, 0, sizeof wb - (size_t)rest * PK_TILE * 4);
        for (int r = 0; r < m; r++) memcpy(xa[r], x + r * ldx + (size_t)S * SP, rest * 4);
        memcpy(wb, tp + S * step_w, (size_t)rest * PK_TILE * 4);
    }
    begin(hw, M, m);
    if (M == 16) {
        T_ZERO_SUMS();
        for (int s = 0; s < S; s++) {
            PF_STEP(flags & AMX_STREAM, tp + s * step_w, step_w);
            STEP_ALT(T_DPBF16, s, x + (size_t)s * SP, ldx * 4, tp + s * step_w);
        }
        if (rest) STEP_ALT(T_DPBF16, S, xa, sizeof xa[0], wb);
        STORE_SUMS(16, 0, acc);
    } else {
        for (int h = 0; h < 2; h++) {
            T_ZERO_SUMS();
            for (int s = 0; s <= S; s++) {
                if (s == S && !rest) break;
                const uint32_t *xs = s < S ? x + (size_t)s * SP : xa[0];
                size_t sx = s < S ? ldx * 4 : sizeof xa[0];
                const unsigned char *w = s < S ? tp + s * step_w : wb;
                if (!h && s < S) PF_STEP(flags & AMX_STREAM, w, step_w);
                T_LOAD(0, xs, sx);
                T_LOAD(1, (const char *)xs + 16 * sx, sx);
                if (h) QUAD(T_DPBF16, w, 1);
                else QUAD(T_DPBF16, w, 0);
            }
            if (h) STORE_SUMS(32, 1, acc);
            else STORE_SUMS(32, 0, acc);
        }
    }
    end(hw, flags);
    put(m, acc, out, ldo, n, accumulate, bias);
}

AMX_T void amx_bf16_rows(int mode, int M, const unsigned char *tp, int P, const uint32_t *x, size_t ldx,
                         float *out, int ldo, int n, int accumulate, const float *bias, int flags)
{
    if (mode == AMX_HW && M > 16) bf16_body(1, 32, M, tp, P, x, ldx, out, ldo, n, accumulate, bias, flags);
    else if (mode == AMX_HW) bf16_body(1, 16, M, tp, P, x, ldx, out, ldo, n, accumulate, bias, flags);
    else if (M > 16) bf16_body(0, 32, M, tp, P, x, ldx, out, ldo, n, accumulate, bias, flags);
    else bf16_body(0, 16, M, tp, P, x, ldx, out, ldo, n, accumulate, bias, flags);
}

#else
int amx_usable(void) { return 0; }
void amx_i8_rows(int mode, int M, const unsigned char *tp, int G, float unscale, const int8_t *q,
                 size_t ldq, const int32_t *sum, const float *scale, size_t lds, float *out, int ldo,
                 int n, int accumulate, const float *bias, int flags) { abort(); }
void amx_bf16_rows(int mode, int M, const unsigned char *tp, int P, const uint32_t *x, size_t ldx,
                   float *out, int ldo, int n, int accumulate, const float *bias, int flags) { abort(); }
void amx_release(void) {}
#endif

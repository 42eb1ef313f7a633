/* test_kernels.c - the CPU kernels against plain reference loops: packed
 * products in every format and shape class (tails of tiles and of int8
 * groups, 1..MV_MAX_ROWS rows), the VNNI int8 path against the portable one
 * (bit for bit), decode attention for every head-size path over float,
 * half-float and int8 caches, half-float and int8 conversion, the
 * vectorised GELU / exponential, softmax and layer norm, a prompt's bf16 weighted
 * values, and the worker pool. Called from test_main.c.
 */
#define _DEFAULT_SOURCE /* mmap MAP_ANONYMOUS, nanosleep */
#include "../../native/common.h"
#include "../../native/cpu/amx.h"
#include "../../native/cpu/forward.h"
#include "../../native/cpu/ops.h"
#include "../../native/cpu/packed.h"
#include "../../native/cpu/pool.h"
#include "check.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t seed = 0x9E3779B97F4A7C15ull;

static float frand(void) /* uniform in [-1, 1) */
{
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    return (float)((seed >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Max |got - want| over max |want|, both (R, N); infinite where got is not
 * a number (fmax alone would pass over it). */
static double rel_err(const float *got, const double *want, size_t n)
{
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        d = fmax(d, fabs(got[i] - want[i]));
        m = fmax(m, fabs(want[i]));
    }
    return d / m;
}

/* want (R, N) = 1 + x (R, K) @ w with both rounded to bf16, in double: the
 * reference for products of bf16 activations (w (K, N), or (N, K) when out_in). */
static void bf16_reference(const float *w, const float *x, int K, int N, int out_in, int R, double *want)
{
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)bf16_round(out_in ? w[(size_t)n * K + k] : w[(size_t)k * N + n]) *
                     bf16_round(x[(size_t)r * K + k]);
            want[(size_t)r * N + n] = s + 1.0;
        }
}

/* pk_matmul with a bias gives the same call's sums without one, then +
 * bias, bit for bit, accumulating (onto 1) or not, on the path that
 * pk_force_generic picks now. */
static int bias_matches(const pmat *p, const float *x, int K, const pk_act *a, int R)
{
    int N = p->N, ok = 1;
    float *bias = malloc(sizeof(float) * N), *plain = malloc(sizeof(float) * R * N);
    float *with = malloc(sizeof(float) * R * N);
    for (int c = 0; c < N; c++) bias[c] = frand() * 2.0f;
    for (int accumulate = 0; accumulate < 2; accumulate++) {
        for (int i = 0; i < R * N; i++) plain[i] = with[i] = accumulate ? 1.0f : 7.0f;
        pk_matmul(p, plain, N, x, K, a, R, 0, p->tiles, accumulate, NULL);
        pk_matmul(p, with, N, x, K, a, R, 0, p->tiles, accumulate, bias);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < N; c++) {
                float want = plain[(size_t)r * N + c] + bias[c];
                ok &= !memcmp(&want, &with[(size_t)r * N + c], sizeof want);
            }
    }
    free(bias), free(plain), free(with);
    return ok;
}

static void test_products(int K, int N, int out_in)
{
    char err[ERR_MAX];
    int RD = 31; /* rows: 3-row blocks, 6-row bf16 blocks, 8-row AVX2 chunks and tails; the
                  * AVX2 float prompts' 6-row blocks in 24-row chunks, and past one */
    float *w = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * RD * K);
    float *got = malloc(sizeof(float) * RD * N), *gen = malloc(sizeof(float) * RD * N);
    double *want = malloc(sizeof(double) * RD * N);
    float *wide = malloc(sizeof(float) * K * PK_TILE), *kept = malloc(sizeof(float) * K * N);
    for (int i = 0; i < K * N; i++) w[i] = frand() * (i % 7 == 0 ? 4.0f : 0.3f); /* uneven groups */
    for (int i = 0; i < RD * K; i++) x[i] = frand();
    for (int fmt = PK_F32; fmt <= PK_I4; fmt++) {
        pmat p;
        pk_act a = {0};
        CHECK(pk_pack(&p, w, K, N, out_in, fmt, err) == 0, "pack: %s", err);
        { /* the AVX2 packer writes the reference packer's bytes */
            pmat ref;
            pk_force_generic = 1;
            CHECK(pk_pack(&ref, w, K, N, out_in, fmt, err) == 0, "pack: %s", err);
            pk_force_generic = 0;
            CHECK(ref.unscale == p.unscale && !memcmp(ref.data, p.data, pk_bytes(&p)),
                  "%s K %d N %d out_in %d: packed bytes differ between packers",
                  fwd_fmt_name(fmt), K, N, out_in);
            pk_free(&ref);
        }
        /* widened tiles are the weights the format keeps */
        double werr = 0;
        for (int t = 0; t < p.tiles; t++) {
            pk_widen(&p, t, wide, PK_TILE);
            for (int k = 0; k < K; k++)
                for (int c = 0; c < PK_TILE && t * PK_TILE + c < N; c++) {
                    int n = t * PK_TILE + c;
                    float ref = out_in ? w[(size_t)n * K + k] : w[(size_t)k * N + n];
                    werr = fmax(werr, fabs(wide[(size_t)k * PK_TILE + c] - ref));
                }
        }
        for (int t = 0; t < p.tiles; t++) { /* the int8 / int4 weights as kept, (K, N) */
            pk_widen(&p, t, wide, PK_TILE);
            for (int k = 0; k < K; k++)
                for (int c = 0; c < PK_TILE && t * PK_TILE + c < N; c++)
                    kept[(size_t)k * N + t * PK_TILE + c] = wide[(size_t)k * PK_TILE + c];
        }
        /* int8: half a step of the largest |w| (4), plus its fp16 scale's rounding (2^-11);
         * int4: the scale search may clamp the largest weights, |w - q d| <= big (1 - 7 * 0.725 / 8)
         * < 0.37 big, plus 8 scales' rounding */
        double wtol = fmt == PK_F32    ? 0
                      : fmt == PK_BF16 ? 4.0 / 256
                      : fmt == PK_I8   ? 4.0 / 254 + 4.0 / 2048 + 1e-6
                                       : 4.0 * 0.37 + 4.0 / 2048 + 1e-6;
        CHECK(werr <= wtol, "fmt %d K %d N %d: widened weights off by %g", fmt, K, N, werr);
        for (int rows = 1; rows <= RD; rows += rows < 13 ? 1 : 6) { /* 1-13, 19, 25, 31 */
            if (fmt >= PK_I8) { /* int8 and int4 read int8 activations */
                CHECK(pk_act_reserve(&a, PK_I8, rows, K) == 0, "act");
                pk_force_generic = 1; /* the portable quantization gives the same bytes */
                pk_act_quantize(&a, PK_I8, x, 0, rows, K, K);
                size_t nq = (size_t)rows * p.groups;
                int8_t *q = malloc(nq * PK_GROUP);
                float *sc = malloc(nq * sizeof *sc);
                memcpy(q, a.q, nq * PK_GROUP), memcpy(sc, a.scale, nq * sizeof *sc);
                for (int path = 2; path >= 0; path -= 2) { /* AVX2, then the fastest (AVX-512) */
                    pk_force_generic = path;
                    pk_act_quantize(&a, PK_I8, x, 0, rows, K, K);
                    CHECK(!memcmp(q, a.q, nq * PK_GROUP) && !memcmp(sc, a.scale, nq * sizeof *sc),
                          "int8 K %d rows %d: quantized activations differ from the portable ones (path %d)",
                          K, rows, path);
                }
                free(q), free(sc);
            }
            /* reference: the kept weights (and int8 activations) in double */
            for (int r = 0; r < rows; r++)
                for (int n = 0; n < N; n++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) {
                        float wv = out_in ? w[(size_t)n * K + k] : w[(size_t)k * N + n];
                        double xv = x[(size_t)r * K + k];
                        if (fmt == PK_BF16) wv = bf16_round(wv);
                        if (fmt >= PK_I8) {
                            int g = k / PK_GROUP;
                            wv = kept[(size_t)k * N + n];
                            xv = a.q[((size_t)r * p.groups + g) * PK_GROUP + k % PK_GROUP] *
                                 (double)a.scale[(size_t)r * p.groups + g];
                        }
                        s += wv * xv;
                    }
                    want[(size_t)r * N + n] = s + 1.0; /* accumulate onto 1 */
                }
            for (int i = 0; i < rows * N; i++) got[i] = 1.0f;
            pk_matmul(&p, got, N, x, K, &a, rows, 0, p.tiles, 1, NULL);
            double e = rel_err(got, want, (size_t)rows * N);
            CHECK(e < 1e-5, "fmt %d K %d N %d rows %d out_in %d: rel err %g", fmt, K, N, rows,
                  out_in, e);
            for (int force = 1; force <= 4; force++) {
                /* the portable loops and the AVX2 kernels, int8 with AVX-VNNI's
                 * kernel too (4, where the CPU has it), give the same bits (float
                 * formats: the generic kernel, compiled with fma where the CPU has it) */
                if (force == 3) continue; /* AMX emulation: below */
                for (int i = 0; i < rows * N; i++) gen[i] = 1.0f;
                pk_force_generic = force;
                pk_matmul(&p, gen, N, x, K, &a, rows, 0, p.tiles, 1, NULL);
                pk_force_generic = 0;
                CHECK(!memcmp(gen, got, sizeof(float) * rows * N), "fmt %d K %d N %d rows %d: %s differ from %s",
                      fmt, K, N, rows,
                      force == 1 ? "the portable loops" : force == 2 ? "the AVX2 kernel's sums" : "AVX-VNNI's sums",
                      pk_vnni() ? "VNNI's" : "the default path's");
            }
            for (int force = 0; force <= 4; force++) {
                if (force == 3) continue;
                pk_force_generic = force;
                CHECK(bias_matches(&p, x, K, &a, rows), "fmt %d K %d N %d rows %d path %d: the bias changed the sums",
                      fmt, K, N, rows, force);
                pk_force_generic = 0;
            }
        }
        for (int rows = 1; fmt == PK_BF16 && pk_bf16_dp() && rows <= RD; rows++) {
            /* bf16 activations (vdpbf16ps): the reference rounds them too */
            CHECK(pk_act_reserve(&a, PK_BF16, rows, K) == 0, "act");
            pk_act_quantize(&a, PK_BF16, x, 0, rows, K, K);
            bf16_reference(w, x, K, N, out_in, rows, want);
            for (int i = 0; i < rows * N; i++) got[i] = 1.0f;
            pk_matmul(&p, got, N, x, K, &a, rows, 0, p.tiles, 1, NULL);
            double e = rel_err(got, want, (size_t)rows * N);
            CHECK(e < 1e-5, "bf16 activations K %d N %d rows %d out_in %d: rel err %g", K, N, rows,
                  out_in, e);
            CHECK(bias_matches(&p, x, K, &a, rows), "bf16 activations K %d N %d rows %d: the bias changed the sums",
                  K, N, rows);
        }
        for (int rows = 1; fmt < PK_I8 && pk_f32_products() && rows <= RD; rows += 4) {
            /* a prompt's fp32 panels over the tiles as fp32 (bf16 ones widened) */
            for (int t = 0; t < p.tiles; t++) {
                int c0 = t * PK_TILE, n = N - c0 < PK_TILE ? N - c0 : PK_TILE;
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < n; c++) got[(size_t)r * N + c0 + c] = 1.0f;
                pk_f32_product(pk_f32_tile(&p, t, wide), PK_TILE, K, x, K, rows, 1.0f, got + c0, N, n, 1, NULL);
            }
            for (int r = 0; r < rows; r++)
                for (int n = 0; n < N; n++) {
                    double s = 1.0;
                    for (int k = 0; k < K; k++) {
                        float wv = out_in ? w[(size_t)n * K + k] : w[(size_t)k * N + n];
                        s += (double)(fmt == PK_BF16 ? bf16_round(wv) : wv) * x[(size_t)r * K + k];
                    }
                    want[(size_t)r * N + n] = s;
                }
            double e = rel_err(got, want, (size_t)rows * N);
            CHECK(e < 1e-5, "fp32 panels fmt %d K %d N %d rows %d out_in %d: rel err %g", fmt, K, N, rows,
                  out_in, e);
        }
        if (fmt == PK_BF16) { /* what follows reads x itself */
            pk_act_free(&a);
        }
        /* a split over tile ranges writes the same as one call */
        for (int i = 0; i < N; i++) gen[i] = got[i] = 0;
        pk_matmul(&p, got, N, x, K, &a, 1, 0, p.tiles, 0, NULL);
        pk_matmul(&p, gen, N, x, K, &a, 1, 0, p.tiles / 2, 0, NULL);
        pk_matmul(&p, gen, N, x, K, &a, 1, p.tiles / 2, p.tiles, 0, NULL);
        CHECK(!memcmp(gen, got, sizeof(float) * N), "fmt %d: tile ranges", fmt);
        pk_free(&p);
        pk_act_free(&a);
    }
    free(w), free(x), free(got), free(gen), free(want), free(wide), free(kept);
}

/* pk_f32_product over any n (panels of 64 and a tail), rows ldw and ldx
 * apart, alpha, R rows in 6-row blocks and tails: against doubles, and the
 * columns past n untouched; on each kernel there is (pk_force_generic 0:
 * AVX-512 panels or AVX2, 2: AVX2), the same bits on both. */
static void test_f32_product(int K, int n, int R, float alpha, int accumulate)
{
    int ldw = (n + PK_TILE - 1) / PK_TILE * PK_TILE + 16, ldx = K + 3, ldo = n + 5;
    float *w = malloc(sizeof(float) * K * ldw), *x = malloc(sizeof(float) * R * ldx);
    float *got = malloc(sizeof(float) * R * ldo), *first = malloc(sizeof(float) * R * ldo);
    double *want = malloc(sizeof(double) * R * n);
    for (int i = 0; i < K * ldw; i++) w[i] = frand();
    for (int i = 0; i < R * ldx; i++) x[i] = frand();
    for (int r = 0; r < R; r++)
        for (int c = 0; c < n; c++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)x[(size_t)r * ldx + k] * w[(size_t)k * ldw + c];
            want[(size_t)r * n + c] = alpha * s + (accumulate ? 0.5 : 0.0);
        }
    for (int force = 0, runs = 0; force <= 2; force += 2) {
        pk_force_generic = force;
        if (!pk_f32_products()) continue;
        for (int i = 0; i < R * ldo; i++) got[i] = 0.5f;
        pk_f32_product(w, ldw, K, x, ldx, R, alpha, got, ldo, n, accumulate, NULL);
        /* with a bias: the same sums, then + bias */
        float *bias = malloc(sizeof(float) * n), *with = malloc(sizeof(float) * R * ldo);
        for (int c = 0; c < n; c++) bias[c] = frand();
        for (int i = 0; i < R * ldo; i++) with[i] = 0.5f;
        pk_f32_product(w, ldw, K, x, ldx, R, alpha, with, ldo, n, accumulate, bias);
        int biased = 1;
        for (int r = 0; r < R; r++)
            for (int c = 0; c < ldo; c++) {
                float expect = c < n ? got[(size_t)r * ldo + c] + bias[c] : 0.5f;
                biased &= !memcmp(&expect, &with[(size_t)r * ldo + c], sizeof expect);
            }
        CHECK(biased, "fp32 product (%s) K %d n %d R %d: the bias changed the sums (or a column past n)",
              pk_kernels(PK_F32), K, n, R);
        free(bias), free(with);
        double d = 0, m = 1e-30;
        int untouched = 1;
        for (int r = 0; r < R; r++) {
            for (int c = 0; c < n; c++) {
                d = fmax(d, fabs(got[(size_t)r * ldo + c] - want[(size_t)r * n + c]));
                m = fmax(m, fabs(want[(size_t)r * n + c]));
            }
            for (int c = n; c < ldo; c++) untouched &= got[(size_t)r * ldo + c] == 0.5f;
        }
        CHECK(d / m < 1e-5, "fp32 product (%s) K %d n %d R %d alpha %g: rel err %g", pk_kernels(PK_F32), K, n, R,
              alpha, d / m);
        CHECK(untouched, "fp32 product (%s) K %d n %d R %d: wrote past column n", pk_kernels(PK_F32), K, n, R);
        if (runs++) CHECK(!memcmp(got, first, sizeof(float) * R * ldo), "fp32 product K %d n %d R %d: the AVX2 "
                          "kernel's bits differ from the fastest one's", K, n, R);
        else memcpy(first, got, sizeof(float) * R * ldo);
    }
    pk_force_generic = 0;
    free(w), free(x), free(got), free(first), free(want);
}

/* fp32 panels read no column past n: w's last row ends at a page that
 * faults when touched (before, a panel's full-width loads read up to 63
 * floats past it, and whatever the scratch there held, denormals too). */
static void test_f32_product_reads_to_n(int K, int n)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t bytes = (size_t)K * n * sizeof(float), span = (bytes + page - 1) / page * page;
    unsigned char *map = mmap(NULL, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED || mprotect(map + span, page, PROT_NONE)) {
        CHECK(0, "mmap for the guard page");
        return;
    }
    float *w = (float *)(map + span - bytes), x[3 * 8], out[3 * 64], want = 0;
    for (int i = 0; i < K * n; i++) w[i] = 1.0f;
    for (int i = 0; i < 3 * K; i++) x[i] = 0.5f;
    for (int k = 0; k < K; k++) want += 0.5f;
    pk_f32_product(w, n, K, x, K, 3, 1.0f, out, 64, n, 0, NULL);
    int wrong = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < n; c++) wrong += out[r * 64 + c] != want;
    CHECK(wrong == 0, "fp32 product (%s) up to a guard page, K %d n %d: %d sums wrong", pk_kernels(PK_F32), K, n, wrong);
    munmap(map, span + page);
}

/* Activations with a NaN or an infinity quantize to the same bytes and scales on
 * every path: a NaN never becomes a group's largest |x| and turns into -127. */
static void test_quantize_specials(void)
{
    int K = 3 * PK_GROUP + 5;
    float *x = malloc(sizeof(float) * K);
    pk_act a = {0}, b = {0};
    CHECK(pk_act_reserve(&a, PK_I8, 1, K) == 0 && pk_act_reserve(&b, PK_I8, 1, K) == 0, "act");
    int G = (K + PK_GROUP - 1) / PK_GROUP;
    for (int at = 0; at < K; at += 7) {
        for (int k = 0; k < K; k++) x[k] = frand();
        x[at] = NAN;
        if (at + 3 < K) x[at + 3] = at % 2 ? INFINITY : -INFINITY;
        pk_force_generic = 1;
        pk_act_quantize(&a, PK_I8, x, 0, 1, K, K);
        for (int path = 2; path >= 0; path -= 2) { /* AVX2, then the fastest (AVX-512) */
            pk_force_generic = path;
            pk_act_quantize(&b, PK_I8, x, 0, 1, K, K);
            CHECK(!memcmp(a.q, b.q, (size_t)G * PK_GROUP) && !memcmp(a.scale, b.scale, G * sizeof *a.scale) &&
                      !memcmp(a.sum, b.sum, G * sizeof *a.sum),
                  "NaN at %d: quantized activations differ from the portable ones (path %d)", at, path);
        }
        CHECK(a.q[at] == -127 && !isnan(a.scale[at / PK_GROUP]), "NaN at %d: q %d scale %g", at, a.q[at],
              a.scale[at / PK_GROUP]);
    }
    pk_act_free(&a), pk_act_free(&b);
    free(x);
}

static void test_pack_rejects_nan(void)
{
    char err[ERR_MAX] = "";
    float w[64 * 3];
    for (int i = 0; i < 64 * 3; i++) w[i] = 0.5f;
    w[77] = NAN;
    pmat p;
    CHECK(pk_pack(&p, w, 64, 3, 0, PK_I8, err) == -1 && strstr(err, "not finite"), "%s", err);
    CHECK(pk_pack(&p, w, 64, 3, 0, PK_BF16, err) == 0, "bf16 keeps NaN as NaN: %s", err);
    pk_free(&p);
    /* int8 scales (fp16 times a power of two per matrix) at the ends of the
     * float range: widened weights stay finite and near the originals */
    float far[] = {1e-38f, 3e-30f, 1e30f, 3e38f};
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 64 * 3; j++) w[j] = far[i] * ((j % 5 - 2) * 0.5f);
        CHECK(pk_pack(&p, w, 64, 3, 0, PK_I8, err) == 0, "%s", err);
        float wide[64 * PK_TILE];
        pk_widen(&p, 0, wide, PK_TILE);
        double worst = 0;
        for (int k = 0; k < 64; k++)
            for (int c = 0; c < 3; c++) worst = fmax(worst, fabs(wide[k * PK_TILE + c] - w[k * 3 + c]) / far[i]);
        CHECK(isfinite(worst) && worst < 0.01, "int8 weights of %g: off by %g of that", far[i], worst);
        pk_free(&p);
        CHECK(pk_pack(&p, w, 64, 3, 0, PK_I4, err) == 0, "%s", err);
        pk_widen(&p, 0, wide, PK_TILE);
        worst = 0; /* the weights here are 0, +-0.5 and +-1 of far, the largest -1: +1 is clamped to 7 d = 7/8 */
        for (int k = 0; k < 64; k++)
            for (int c = 0; c < 3; c++) worst = fmax(worst, fabs(wide[k * PK_TILE + c] - w[k * 3 + c]) / far[i]);
        CHECK(isfinite(worst) && worst < 0.126, "int4 weights of %g: off by %g of that", far[i], worst);
        pk_free(&p);
    }
}

/* int4 sums at their extremes: every code 7 (stored 15) but one -8 per
 * column and group, inputs all +1 or all -1 (quantized to +-127), so each
 * int16 lane of the AVX2 kernel's 8 quads reaches 16 * 15 * 127 = 30480
 * in magnitude; rows 1-8 (its assembly takes 3 and 4 at a time): the
 * exact sums, on every path. And int4 refuses NaN as int8 does. */
static void test_i4_extremes(void)
{
    enum { K = 128, N = 64, R = 8 };
    char err[ERR_MAX];
    float *w = malloc(sizeof(float) * K * N), x[R * K], got[R * N], gen[R * N];
    double want[R * N];
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++) w[k * N + n] = (k % 64 == n ? 1.0f : -0.875f) * (n % 2 ? -1.0f : 1.0f);
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) x[r * K + k] = r % 2 ? -1.0f : 1.0f;
    pmat p;
    pk_act a = {0};
    CHECK(pk_pack(&p, w, K, N, 0, PK_I4, err) == 0, "pack: %s", err);
    CHECK(pk_act_reserve(&a, PK_I8, R, K) == 0, "act");
    pk_act_quantize(&a, PK_I8, x, 0, R, K, K);
    CHECK(a.q[0] == 127 && a.q[K] == -127, "inputs quantized to %d, %d", a.q[0], a.q[K]);
    float wide[K * PK_TILE];
    pk_widen(&p, 0, wide, PK_TILE);
    for (int k = 0; k < K; k++) /* the codes: -8 d for the largest, 7 d (exactly) for the rest */
        CHECK(wide[k * PK_TILE + k % 64] == w[k * N + k % 64] && wide[k * PK_TILE + (k + 1) % 64] == w[k * N + (k + 1) % 64],
              "int4 extremes: input %d kept as %g, %g", k, wide[k * PK_TILE + k % 64], wide[k * PK_TILE + (k + 1) % 64]);
    for (int rows = 1; rows <= R; rows++) {
        for (int r = 0; r < rows; r++)
            for (int n = 0; n < N; n++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += (double)w[k * N + n] * x[r * K + k];
                want[r * N + n] = s;
            }
        pk_matmul(&p, got, N, x, K, &a, rows, 0, 1, 0, NULL);
        CHECK(rel_err(got, want, (size_t)rows * N) < 1e-6, "int4 extremes, %d rows: rel err %g", rows,
              rel_err(got, want, (size_t)rows * N));
        for (int force = 1; force <= 2; force++) {
            pk_force_generic = force;
            pk_matmul(&p, gen, N, x, K, &a, rows, 0, 1, 0, NULL);
            pk_force_generic = 0;
            CHECK(!memcmp(gen, got, sizeof(float) * rows * N), "int4 extremes, %d rows: path %d differs", rows, force);
        }
    }
    pk_free(&p);
    pk_act_free(&a);
    w[77] = NAN;
    CHECK(pk_pack(&p, w, K, N, 0, PK_I4, err) == -1 && strstr(err, "not finite"), "int4 NaN: %s", err);
    free(w);
}

/* Keys or values of n rows (ld apart, hd used) for a test: random floats,
 * stored as the kernel reads them (elt: floats, half floats, or int8 with a
 * scale per row in *sc), and the values the kernel sees (widened back) in f. */
#define KV_RANGE 7 /* the largest row's range: an int8 row's scale used for another shows */
static void *kv_data(int n, int ld, int hd, int elt, float **f, float **sc)
{
    size_t len = (size_t)(n + 1) * ld; /* never empty */
    *f = malloc(sizeof(float) * len);
    *sc = NULL;
    for (size_t i = 0; i < len; i++) (*f)[i] = frand() * (1 + (int)(i / ld % KV_RANGE)); /* rows of unlike ranges */
    if (elt == MV_F32) return *f;
    if (elt == MV_I8) {
        int8_t *q = calloc(len, 1);
        *sc = malloc(sizeof(float) * (n + 1));
        for (int p = 0; p <= n; p++) {
            mv_to_i8(q + (size_t)p * ld, *sc + p, *f + (size_t)p * ld, hd);
            mv_from_i8(*f + (size_t)p * ld, q + (size_t)p * ld, *sc + p, 1, hd);
        }
        return q;
    }
    uint16_t *h = malloc(sizeof(uint16_t) * len);
    mv_to_half(h, *f, len);
    mv_from_half(*f, h, len);
    return h;
}

static void test_attention(int hd, int R, int n0, int elt, int ld)
{
    int n1[MV_ATTN_ROWS], maxn = 0;
    float *k0f, *v0f, *k1f[MV_ATTN_ROWS], *v1f[MV_ATTN_ROWS], *q[MV_ATTN_ROWS], *out[MV_ATTN_ROWS];
    float *ks0, *vs0, *ks1[MV_ATTN_ROWS], *vs1[MV_ATTN_ROWS];
    void *k0 = kv_data(n0, ld, hd, elt, &k0f, &ks0), *v0 = kv_data(n0, ld, hd, elt, &v0f, &vs0);
    void *k1[MV_ATTN_ROWS], *v1[MV_ATTN_ROWS];
    float *w = malloc(sizeof(float) * mv_attn_wide(hd));
    mv_attn a = {.R = R, .hd = hd, .ld = ld, .elt = elt, .k0 = k0, .v0 = v0, .ks0 = ks0, .vs0 = vs0,
                 .n0 = n0, .scale = 0.37f, .w = w};
    for (int r = 0; r < R; r++) {
        n1[r] = (n0 ? 0 : 1) + r * 3 + (n0 > 100 ? 17 * r : 0); /* none of its own; past a 16-key block */
        maxn = n1[r] > maxn ? n1[r] : maxn;
        q[r] = malloc(sizeof(float) * hd);
        out[r] = malloc(sizeof(float) * hd);
        k1[r] = kv_data(n1[r], ld, hd, elt, &k1f[r], &ks1[r]);
        v1[r] = kv_data(n1[r], ld, hd, elt, &v1f[r], &vs1[r]);
        for (int i = 0; i < hd; i++) q[r][i] = frand();
        a.q[r] = q[r], a.out[r] = out[r], a.k1[r] = k1[r], a.v1[r] = v1[r], a.n1[r] = n1[r];
        a.ks1[r] = ks1[r], a.vs1[r] = vs1[r];
    }
    float *s = malloc(sizeof(float) * R * (n0 + maxn));
    a.s = s;
    mv_attend(&a);
    if (R > 1 && hd == 64 && mv_half_path == 1) { /* AVX2's 64-float heads: each row's bits as alone */
        float alone[64];
        for (int r = 0; r < R; r++) {
            mv_attn b = a;
            b.R = 1, b.q[0] = q[r], b.out[0] = alone, b.k1[0] = k1[r], b.v1[0] = v1[r];
            b.ks1[0] = ks1[r], b.vs1[0] = vs1[r], b.n1[0] = n1[r];
            mv_attend(&b);
            CHECK(!memcmp(alone, out[r], sizeof alone), "attention R %d n0 %d elt %d ld %d: row %d's bits differ alone",
                  R, n0, elt, ld, r);
        }
    }
    double worst = 0;
    for (int r = 0; r < R; r++) {
        int n = n0 + n1[r];
        double *sc = malloc(sizeof(double) * n), max = -INFINITY, sum = 0;
        for (int p = 0; p < n; p++) {
            const float *k = p < n0 ? k0f + (size_t)p * ld : k1f[r] + (size_t)(p - n0) * ld;
            double d = 0;
            for (int i = 0; i < hd; i++) d += (double)q[r][i] * k[i];
            sc[p] = d * 0.37f;
            max = fmax(max, sc[p]);
        }
        for (int p = 0; p < n; p++) sum += sc[p] = exp(sc[p] - max);
        for (int i = 0; i < hd; i++) {
            double o = 0;
            for (int p = 0; p < n; p++)
                o += sc[p] / sum * (p < n0 ? v0f[(size_t)p * ld + i] : v1f[r][(size_t)(p - n0) * ld + i]);
            worst = fmax(worst, fabs(o - out[r][i]));
        }
        free(sc);
        if (elt != MV_F32) free(k1[r]), free(v1[r]);
        free(q[r]), free(out[r]), free(k1f[r]), free(v1f[r]), free(ks1[r]), free(vs1[r]);
    }
    CHECK(worst < 2e-6 * KV_RANGE, "attention hd %d R %d n0 %d elt %d ld %d path %d: off by %g", hd, R, n0, elt, ld,
          mv_half_path, worst);
    if (elt != MV_F32) free(k0), free(v0);
    free(s), free(k0f), free(v0f), free(w), free(ks0), free(vs0);
}

/* Half floats: the hardware path against the compiler's _Float16 for every
 * value a half holds (both ways), rounding ties, clamping, NaN. */
static void test_half(void)
{
    enum { N = 1 << 16 };
    uint16_t *h = malloc(sizeof(uint16_t) * N), *back = malloc(sizeof(uint16_t) * N);
    float *f = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) h[i] = (uint16_t)i;
    mv_from_half(f, h, N);
    int wrong = 0, nan_ok = 1;
    for (int i = 0; i < N; i++) {
        _Float16 x;
        memcpy(&x, &h[i], sizeof x);
        float want = (float)x;
        if (isnan(want)) nan_ok &= isnan(f[i]) != 0;
        else if (memcmp(&want, &f[i], sizeof want)) wrong++;
    }
    CHECK(wrong == 0 && nan_ok, "widening (path %d): %d values differ, NaN kept %d", mv_half_path, wrong,
          nan_ok);
    mv_to_half(back, f, N); /* every half round-trips, infinities clamp */
    wrong = 0;
    for (int i = 0; i < N; i++) {
        int exp_all = (h[i] & 0x7C00) == 0x7C00, is_nan = exp_all && (h[i] & 0x3FF);
        uint16_t want = exp_all && !is_nan ? (uint16_t)((h[i] & 0x8000) | 0x7BFF) : h[i];
        if (is_nan ? (back[i] & 0x7C00) != 0x7C00 || !(back[i] & 0x3FF) : back[i] != want) wrong++;
    }
    CHECK(wrong == 0, "narrowing (path %d): %d halves do not round-trip", mv_half_path, wrong);
    float odd[] = {1e6f, -1e6f, 65519.0f, 65520.0f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 1e-8f,
                   -2.98e-8f, 5.96e-8f, 0.1f, -123.456f, 0.0f, -0.0f};
    int n = sizeof odd / sizeof *odd; /* 1 + 1/2048 and 1 + 3/2048: ties to even */
    mv_to_half(back, odd, n);
    wrong = 0;
    for (int i = 0; i < n; i++) {
        float c = odd[i] > 65504.0f ? 65504.0f : odd[i] < -65504.0f ? -65504.0f : odd[i];
        _Float16 x = (_Float16)c;
        uint16_t want;
        memcpy(&want, &x, sizeof want);
        if (back[i] != want) wrong++, fprintf(stderr, "  %g -> %04x, want %04x\n", odd[i], back[i], want);
    }
    CHECK(wrong == 0, "narrowing (path %d): %d of %d chosen values rounded wrong", mv_half_path, wrong, n);
    free(h), free(back), free(f);
}

/* int8 keys and values (mv_to_i8) against the definition, exactly: the
 * scale from the largest finite |x|, each q = x * (127 / amax) rounded to
 * nearest even, clamped; infinities clamp (0 where nothing is finite), NaN
 * is 0, all zeros stay 0. */
static void test_to_i8(int n)
{
    float *x = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
    int8_t *q = malloc(n);
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < n; i++) x[i] = round == 3 ? 0.0f : frand() * (round + 1) * 3;
        if (round == 1 && n > 2) x[n / 2] = 1.0f / 0.0f, x[n - 1] = -1.0f / 0.0f, x[0] = NAN;
        if (round == 2) /* exact ties of q: x = amax * (k + 0.5) / 127 */
            for (int i = 0; i < n; i++) x[i] = i == 0 ? 127.0f : (float)((i % 50) - 25) + 0.5f;
        float amax = 0, scale;
        for (int i = 0; i < n; i++)
            if (isfinite(x[i])) amax = fmaxf(amax, fabsf(x[i]));
        mv_to_i8(q, &scale, x, n);
        mv_from_i8(back, q, &scale, 1, n);
        float inv = amax > 0 ? 127.0f / amax : 0.0f;
        int wrong = memcmp(&scale, &(float){amax / 127.0f}, sizeof scale) != 0, far = 0;
        for (int i = 0; i < n; i++) {
            float y = isnan(x[i] * inv) ? 0.0f : fminf(fmaxf(x[i] * inv, -127.0f), 127.0f); /* inf * 0 too */
            wrong += q[i] != (int8_t)nearbyintf(y);
            far += isfinite(x[i]) && fabsf(back[i] - x[i]) > amax / 254.0f * 1.0001f;
            wrong += back[i] != scale * (float)q[i];
        }
        CHECK(wrong == 0 && far == 0, "int8 keys n %d round %d path %d: %d wrong, %d further than half a step",
              n, round, mv_half_path, wrong, far);
    }
    free(x), free(back), free(q);
}

/* Keys transposed (mv_keys_t) against the definition: every element exact,
 * zeros from n to the next 16, nothing written past that or beyond ld. */
static void test_keys_t(int n, int hd, int elt)
{
    int ld = (n + 15) / 16 * 16 + 5, wrong = 0;
    float *k = malloc(sizeof(float) * n * hd), *t = malloc(sizeof(float) * hd * ld), *ks = malloc(sizeof(float) * n);
    uint16_t *kh = malloc(sizeof(uint16_t) * n * hd);
    int8_t *kq = malloc((size_t)n * hd);
    for (int i = 0; i < n * hd; i++) k[i] = frand() * (1 + i / hd % 5);
    mv_to_half(kh, k, (size_t)n * hd);
    for (int p = 0; p < n; p++) mv_to_i8(kq + (size_t)p * hd, ks + p, k + (size_t)p * hd, hd);
    if (elt == MV_F16) mv_from_half(k, kh, (size_t)n * hd); /* the values the halves hold */
    if (elt == MV_I8) mv_from_i8(k, kq, ks, n, hd);
    for (int i = 0; i < hd * ld; i++) t[i] = 7.0f;
    mv_keys_t(t, ld, elt == MV_I8 ? (const void *)kq : elt == MV_F16 ? (const void *)kh : k, ks, elt, n, hd);
    for (int d = 0; d < hd; d++)
        for (int p = 0; p < ld; p++) {
            float want = p < n ? k[(size_t)p * hd + d] : p < (n + 15) / 16 * 16 ? 0.0f : 7.0f;
            wrong += memcmp(&t[(size_t)d * ld + p], &want, sizeof want) != 0;
        }
    CHECK(wrong == 0, "keys transposed n %d hd %d elt %d path %d: %d elements wrong", n, hd, elt,
          mv_half_path, wrong);
    free(k), free(t), free(kh), free(kq), free(ks);
}

/* A prompt's weighted values on AVX-512 BF16: m rows of n probabilities
 * (pk_bf16_pairs) by n positions of values (pk_bf16_values), against the
 * same bf16-rounded numbers summed in double. */
static void test_bf16_values(int m, int n)
{
    int pairs = (n + 1) / 2;
    float *v = malloc(sizeof(float) * (n + 1) * PK_TILE), *p = malloc(sizeof(float) * m * n);
    uint32_t *vt = malloc(sizeof(uint32_t) * pairs * PK_TILE), *pb = malloc(sizeof(uint32_t) * m * pairs);
    float *got = malloc(sizeof(float) * m * PK_TILE);
    double *want = malloc(sizeof(double) * m * PK_TILE);
    for (int i = 0; i < n * PK_TILE; i++) v[i] = frand() * 3;
    for (int i = 0; i < PK_TILE; i++) v[n * PK_TILE + i] = NAN; /* past the last position: never read */
    for (int i = 0; i < m * n; i++) p[i] = (frand() + 1) / n;
    memset(vt, 0xFF, sizeof(uint32_t) * pairs * PK_TILE); /* NaN: what the pad must overwrite */
    pk_bf16_values(vt, v, n);
    for (int r = 0; r < m; r++) {
        pk_bf16_pairs(pb + (size_t)r * pairs, p + (size_t)r * n, n);
        for (int c = 0; c < PK_TILE; c++) {
            double s = 0;
            for (int i = 0; i < n; i++)
                s += (double)bf16_round(p[(size_t)r * n + i]) * bf16_round(v[(size_t)i * PK_TILE + c]);
            want[r * PK_TILE + c] = s;
        }
    }
    pk_bf16_product(vt, pairs, pb, pairs, m, got, PK_TILE, PK_TILE, 0);
    double e = rel_err(got, want, (size_t)m * PK_TILE);
    CHECK(e < 1e-5, "bf16 weighted values, %d rows of %d positions: rel err %g", m, n, e);
    /* a partial tile of columns, added to what is there */
    for (int i = 0; i < m * PK_TILE; i++) got[i] = 1.0f, want[i] += 1.0;
    pk_bf16_product(vt, pairs, pb, pairs, m, got, PK_TILE, 37, 1);
    int kept = 1;
    for (int r = 0; r < m; r++)
        for (int c = 37; c < PK_TILE; c++) kept &= got[r * PK_TILE + c] == 1.0f, got[r * PK_TILE + c] = (float)want[r * PK_TILE + c];
    e = rel_err(got, want, (size_t)m * PK_TILE);
    CHECK(kept && e < 1e-5, "bf16 product of 37 columns, accumulating: rel err %g, rest kept %d", e, kept);
    free(v), free(p), free(vt), free(pb), free(got), free(want);
}

/* Prompts' products on AMX tiles (16-row blocks, the rest on AVX-512):
 * int8 bit for bit the portable loops' sums, bf16 within the reference's
 * bounds; emulated tiles everywhere (pk_force_generic 3), the hardware's
 * where the CPU has AMX (and then the two against each other). */

/* out (R rows) += rows of a by p in blocks of 7, 32, 20, 32, ... rows, the
 * tiles held configured from one call to the next (hold, as gemm_tiles
 * does), warm after the first block, given back at the end: a held
 * configuration of fewer rows must not serve a call of more (skipping
 * that check fails 56 of these). */
static void held_blocks(const pmat *p, const float *x, int K, const pk_act *a, int R, float *out, int N)
{
    static const int sizes[] = {7, 32, 20, 32};
    for (int r0 = 0, i = 0; r0 < R; i++) {
        int m = sizes[i % 4] < R - r0 ? sizes[i % 4] : R - r0;
        pk_act v = pk_act_rows(a, K, r0);
        v.warm = r0 > 0;
        v.hold = 1;
        pk_matmul(p, out + (size_t)r0 * N, N, x + (size_t)r0 * K, K, &v, m, 0, p->tiles, 1, NULL);
        r0 += m;
    }
    amx_release();
}
static void test_amx_products(int K, int N, int out_in)
{
    char err[ERR_MAX];
    enum { RM = 51 };
    int rows_list[] = {16, 9, 13, 19, 20, 32, 35, 48, RM}; /* 16- and 32-row calls, and partial ones */
    float *w = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * RM * K);
    float *ref = malloc(sizeof(float) * RM * N), *got = malloc(sizeof(float) * RM * N);
    float *emu = malloc(sizeof(float) * RM * N);
    double *want = malloc(sizeof(double) * RM * N);
    for (int i = 0; i < K * N; i++) w[i] = frand() * (i % 5 == 0 ? 3.0f : 0.2f);
    for (int i = 0; i < RM * K; i++) x[i] = frand() * (i % 11 == 0 ? 6.0f : 1.0f);
    int hw = pk_amx() == 1;
    for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++) {
        int R = rows_list[ri];
        pmat p;
        pk_act a = {0};
        /* int8 */
        CHECK(pk_pack(&p, w, K, N, out_in, PK_I8, err) == 0, "pack: %s", err);
        CHECK(pk_act_reserve(&a, PK_I8, R, K) == 0, "act");
        pk_act_quantize(&a, PK_I8, x, 0, R, K, K);
        for (int i = 0; i < R * N; i++) ref[i] = got[i] = emu[i] = 1.0f;
        pk_force_generic = 1;
        pk_matmul(&p, ref, N, x, K, &a, R, 0, p.tiles, 1, NULL);
        for (amx_pair_rows = 0; amx_pair_rows < 2; amx_pair_rows++) {
            for (int i = 0; i < R * N; i++) emu[i] = 1.0f;
            pk_force_generic = 3;
            pk_matmul(&p, emu, N, x, K, &a, R, 0, p.tiles, 1, NULL);
            pk_force_generic = 0;
            CHECK(!memcmp(ref, emu, sizeof(float) * R * N),
                  "int8 K %d N %d rows %d out_in %d pairs %d: emulated AMX tiles differ from the portable loops",
                  K, N, R, out_in, amx_pair_rows);
            pk_force_generic = 3;
            CHECK(bias_matches(&p, x, K, &a, R), "int8 K %d N %d rows %d pairs %d: the bias changed emulated AMX sums",
                  K, N, R, amx_pair_rows);
            pk_force_generic = 0;
        }
        amx_pair_rows = 1;
        if (hw) {
            pk_matmul(&p, got, N, x, K, &a, R, 0, p.tiles, 1, NULL);
            CHECK(!memcmp(ref, got, sizeof(float) * R * N),
                  "int8 K %d N %d rows %d out_in %d: AMX tiles differ from the portable loops", K, N, R, out_in);
            CHECK(bias_matches(&p, x, K, &a, R), "int8 K %d N %d rows %d: the bias changed AMX sums", K, N, R);
            for (int i = 0; i < R * N; i++) emu[i] = 1.0f;
            held_blocks(&p, x, K, &a, R, emu, N);
            CHECK(!memcmp(got, emu, sizeof(float) * R * N),
                  "int8 K %d N %d rows %d: blocks on held tiles differ from one call", K, N, R);
        }
        pk_free(&p);
        pk_act_free(&a);
        /* bf16 activations */
        CHECK(pk_pack(&p, w, K, N, out_in, PK_BF16, err) == 0, "pack: %s", err);
        CHECK(pk_act_reserve(&a, PK_BF16, R, K) == 0, "act");
        pk_act_quantize(&a, PK_BF16, x, 0, R, K, K);
        bf16_reference(w, x, K, N, out_in, R, want);
        for (amx_pair_rows = 0; amx_pair_rows < 2; amx_pair_rows++) {
            for (int i = 0; i < R * N; i++) got[i] = emu[i] = 1.0f;
            pk_force_generic = 3;
            pk_matmul(&p, emu, N, x, K, &a, R, 0, p.tiles, 1, NULL);
            pk_force_generic = 0;
            double e = rel_err(emu, want, (size_t)R * N);
            CHECK(e < 1e-5, "bf16 K %d N %d rows %d out_in %d pairs %d: emulated AMX tiles off by %g", K, N, R,
                  out_in, amx_pair_rows, e);
            pk_force_generic = 3;
            CHECK(bias_matches(&p, x, K, &a, R), "bf16 K %d N %d rows %d pairs %d: the bias changed emulated AMX sums",
                  K, N, R, amx_pair_rows);
            pk_force_generic = 0;
        }
        if (hw) {
            pk_matmul(&p, got, N, x, K, &a, R, 0, p.tiles, 1, NULL);
            double d = 0, eh = rel_err(got, want, (size_t)R * N);
            for (int i = 0; i < R * N; i++) d = fmax(d, fabs(got[i] - emu[i]));
            CHECK(eh < 1e-5, "bf16 K %d N %d rows %d out_in %d: AMX tiles off by %g", K, N, R, out_in, eh);
            CHECK(bias_matches(&p, x, K, &a, R), "bf16 K %d N %d rows %d: the bias changed AMX sums", K, N, R);
            if (d > 0 && ri == 0 && K >= 768) printf("note: bf16 AMX tiles against their emulation: max |diff| %g (K %d)\n", d, K);
            for (int i = 0; i < R * N; i++) emu[i] = 1.0f;
            held_blocks(&p, x, K, &a, R, emu, N);
            CHECK(!memcmp(got, emu, sizeof(float) * R * N),
                  "bf16 K %d N %d rows %d: blocks on held tiles differ from one call", K, N, R);
        }
        pk_free(&p);
        pk_act_free(&a);
    }
    free(w), free(x), free(ref), free(got), free(emu), free(want);
}

#define LN_MAX 1600

static void test_layernorm(int C, float offset)
{
    float x[LN_MAX], w[LN_MAX], b[LN_MAX], out[3][LN_MAX], sum[3][LN_MAX];
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) /* and an outlier, as GPT-2's residual stream has */
        x[i] = offset + frand() * 2 + (i == C / 2 ? 50 : 0), w[i] = frand(), b[i] = frand();
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    double rstd = 1 / sqrt(var / C + 1e-5);
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++) { /* each path, the same bits */
        double worst = 0;
        float *o = out[mv_half_path], *s = sum[mv_half_path];
        mv_layernorm(o, x, w, b, C, 1e-5f);
        for (int i = 0; i < C; i++) worst = fmax(worst, fabs(o[i] - ((x[i] - mean) * rstd * w[i] + b[i])));
        CHECK(worst < 2e-5 * (1 + fabs(offset) * rstd), "layernorm (path %d) C %d offset %g: off by %g",
              mv_half_path, C, offset, worst);
        CHECK(!memcmp(o, out[0], C * sizeof *o), "layernorm C %d: path %d's bits differ from path 0's", C,
              mv_half_path);
        memcpy(s, x, C * sizeof *s);
        mv_add(s, w, C);
        int wrong = 0;
        for (int i = 0; i < C; i++) wrong += s[i] != x[i] + w[i];
        CHECK(wrong == 0, "mv_add (path %d) C %d: %d sums wrong", mv_half_path, C, wrong);
    }
    mv_half_path = 0;
}

/* GELU against double over 203 values (a tail of 3 past whole vectors of
 * 8 and 11 past 16), NaN kept, the element past them untouched; the same
 * bits on every path (mv_half_path 0-2: 16 lanes on AVX-512, the AVX2
 * kernel there too and on AVX2 CPUs, the 16-lane loops). */
static void test_gelu(void)
{
    enum { N = 203 };
    double worst = 0, worst_exp = 0;
    float xs[N], y[3][N + 1];
    for (int i = 0; i < N; i++) xs[i] = i < 180 ? (i - 90) * 0.11f + frand() * 0.01f : frand() * 1e4f;
    xs[0] = 0, xs[1] = -0.0f, xs[2] = 1e-30f, xs[3] = -200, xs[4] = 200, xs[N - 1] = NAN;
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++) {
        float *yp = y[mv_half_path];
        memcpy(yp, xs, sizeof xs);
        yp[N] = 7;
        mv_gelu_tanh(yp, N);
        for (int i = 0; i < N - 1; i++) {
            double x = xs[i], want = 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
            worst = fmax(worst, fabs(yp[i] - want) / fmax(1.0, fabs(want)));
        }
        CHECK(worst < 1e-6 && isnan(yp[N - 1]) && yp[N] == 7, "gelu (path %d) off by %g, NaN kept %d, past n %g",
              mv_half_path, worst, isnan(yp[N - 1]), yp[N]);
        CHECK(!memcmp(yp, y[0], sizeof xs), "gelu: path %d's bits differ from path 0's", mv_half_path);
    }
    mv_half_path = 0;
    for (float x = -87; x < 88; x += 0.37f)
        worst_exp = fmax(worst_exp, fabs(mv_exp(x) - exp(x)) / exp(x));
    CHECK(worst_exp < 3e-7, "exp off by %g (relative)", worst_exp);
}

/* mv_softmax against double for lengths around whole vectors (its last n % 16
 * take one vexp of their own, or two of 8 lanes), over scores spread wide
 * enough that some fall past its clamp at 87 below the largest; the same
 * bits on every path, as GELU's. */
static void test_softmax(int n, float spread)
{
    float s0[301], s[3][302];
    double x[301], max = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) x[i] = s0[i] = frand() * spread, max = fmax(max, x[i]);
    for (int i = 0; i < n; i++) x[i] = (float)(x[i] - max); /* the difference as floats hold it */
    for (int i = 0; i < n; i++) sum += exp(x[i]);
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++) {
        float *sp = s[mv_half_path];
        double worst = 0, total = 0;
        memcpy(sp, s0, n * sizeof *s0);
        sp[n] = 7; /* past n: untouched */
        mv_softmax(sp, n);
        for (int i = 0; i < n; i++) {
            double want = exp(x[i]) / sum;
            total += sp[i];
            if (want > 1e-30) worst = fmax(worst, fabs(sp[i] - want) / want);
            else worst = fmax(worst, sp[i] > 1e-30 ? 1 : 0); /* past the clamp: next to nothing */
        }
        CHECK(worst < 2e-6 && fabs(total - 1) < 1e-5 && sp[n] == 7,
              "softmax (path %d) n %d spread %g: rel err %g, sum %.9g, past n %g", mv_half_path, n, spread, worst,
              total, sp[n]);
        CHECK(!memcmp(sp, s[0], n * sizeof *sp), "softmax n %d: path %d's bits differ from path 0's", n,
              mv_half_path);
    }
    mv_half_path = 0;
}

static void count_task(void *arg, int task, int thread)
{
    atomic_fetch_add((atomic_int *)arg + task, 1);
}

/* pool_run_then: every task once, whatever the spans (none, empty, past
 * what a wait can pull), over runs back to back and after the workers sleep. */
static void test_pool(void)
{
    enum { THREADS = 3, MAXT = 100, BIG = 4 << 20 };
    pool *p = pool_new(THREADS);
    unsigned char *buf = calloc(BIG, 1);
    atomic_int count[MAXT];
    int ns[] = {0, 1, 2, 3, 7, MAXT}, wrong = 0;
    for (int rep = 0; rep < 200; rep++)
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
            pool_span spans[THREADS] = {{buf, BIG}, {buf + 64, 0}, {buf + 4096, 1000}};
            for (int t = 0; t < MAXT; t++) atomic_init(&count[t], 0);
            pool_run_then(p, count_task, count, ns[i], rep % 3 ? spans : NULL);
            for (int t = 0; t < MAXT; t++) wrong += atomic_load(&count[t]) != (t < ns[i]);
            if (rep == 100 && i == 0) {
                struct timespec nap = {0, 5000000}; /* past the workers' spin: they sleep */
                nanosleep(&nap, NULL);
            }
        }
    CHECK(wrong == 0 && pool_size(p) == THREADS, "pool_run_then: %d task counts wrong", wrong);
    pool_free(p);
    free(buf);
}

typedef struct {
    atomic_int count[64];
    int thread[64];
} seen_tasks;

static void seen_task(void *arg, int task, int thread)
{
    seen_tasks *s = arg;
    atomic_fetch_add(&s->count[task], 1);
    s->thread[task] = thread;
}

/* The runs with fewer threads than the pool has (what it does while other
 * programs keep the CPUs busy): every task once, only threads below the
 * count taking part, across changes of the count between runs, back to
 * back and after the workers sleep or park. And the share -> threads rule. */
static void test_pool_threads_now(void)
{
    enum { THREADS = 4 };
    const char *was = getenv("GPT2_CPU_ADAPT");
    setenv("GPT2_CPU_ADAPT", "0", 1); /* the counts set here, not measured */
    pool *p = pool_new(THREADS);
    if (was) setenv("GPT2_CPU_ADAPT", was, 1);
    else unsetenv("GPT2_CPU_ADAPT");
    seen_tasks s;
    uint64_t r = 88172645463325252ull;
    int wrong = 0, outside = 0, used[THREADS + 1] = {0};
    for (int run = 0; run < 4000; run++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int want = 1 + (int)(r % THREADS), n = (int)(r >> 8) % 65;
        if (run % 7) pool_set_threads_now(p, want); /* else the last count again */
        int now = pool_threads_now(p);
        used[now]++;
        for (int t = 0; t < 64; t++) atomic_init(&s.count[t], 0), s.thread[t] = -1;
        pool_run(p, seen_task, &s, n);
        for (int t = 0; t < 64; t++) {
            wrong += atomic_load(&s.count[t]) != (t < n);
            outside += t < n && (s.thread[t] < 0 || s.thread[t] >= now);
        }
        if (run % 997 == 0) {
            struct timespec nap = {0, 5000000}; /* past the workers' spin: they sleep */
            nanosleep(&nap, NULL);
        }
    }
    CHECK(wrong == 0 && outside == 0 && used[1] && used[2] && used[3] && used[4],
          "pool with fewer threads: %d task counts wrong, %d tasks on a thread outside the count", wrong,
          outside);
    pool_set_threads_now(p, 0);
    CHECK(pool_threads_now(p) == 1, "count 0 clamps to 1: %d", pool_threads_now(p));
    pool_set_threads_now(p, 99);
    CHECK(pool_threads_now(p) == THREADS && pool_cuts(p) > 0, "count 99 clamps to %d: %d, cuts %lu", THREADS,
          pool_threads_now(p), pool_cuts(p));
    pool_free(p);
    /* n threads on a CPU for a share r of the time they wanted one: round(n r), 1..n */
    static const struct {
        int n;
        double share;
        int want;
    } rule[] = {{2, 1.0, 2}, {2, 0.9, 2}, {2, 0.76, 2}, {2, 0.67, 1}, {2, 0.5, 1}, {2, 0.0, 1},
                {16, 0.8, 13}, {16, 0.5, 8}, {1, 0.2, 1}, {4, 1.3, 4}};
    for (size_t i = 0; i < sizeof rule / sizeof *rule; i++)
        CHECK(pool_share_threads(rule[i].n, rule[i].share) == rule[i].want, "%d threads at share %.2f: %d, not %d",
              rule[i].n, rule[i].share, pool_share_threads(rule[i].n, rule[i].share), rule[i].want);
}

void kernel_tests(void)
{
    test_pool();
    test_pool_threads_now();
    test_i4_extremes();
    if (!pk_vnni()) printf("SKIP int8 VNNI kernel: this CPU has no AVX-512 VNNI (AVX2 and portable compared)\n");
    if (!pk_bf16_dp()) printf("SKIP bf16 products of bf16 activations: this CPU has no AVX-512 BF16\n");
    pk_force_generic = 4;
    if (strcmp(pk_kernels(PK_I8), "avx-vnni"))
        printf("SKIP int8 AVX-VNNI kernel: this CPU has no AVX-VNNI (its comparisons run the AVX2 kernel)\n");
    pk_force_generic = 0;
    int shapes[][2] = {{32, 64}, {45, 70}, {96, 200}, {768, 130}, {200, 17}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int out_in = 0; out_in < 2; out_in++) test_products(shapes[i][0], shapes[i][1], out_in);
    if (!pk_f32_prompts()) printf("SKIP fp32 prompt panels: this CPU has no AVX-512 (its AVX2 kernel is tested)\n");
    if (!pk_f32_products()) printf("SKIP pk_f32_product: this CPU has neither AVX-512 nor AVX2 (sgemm serves)\n");
    for (int R = 1; pk_f32_products() && R <= 13; R += 3) {
        int ns[] = {1, 17, 64, 100, 301};
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
            test_f32_product(64, ns[i], R, 0.125f, 0);
            test_f32_product(45, ns[i], R, 1.0f, 1);
        }
    }
    int tails[] = {1, 17, 50, 64, 65};
    for (int force = 0; force <= 2; force += 2) { /* the fastest kernel, then AVX2 */
        pk_force_generic = force;
        for (size_t i = 0; pk_f32_products() && i < sizeof tails / sizeof *tails; i++) {
            test_f32_product_reads_to_n(5, tails[i]);
            test_f32_product_reads_to_n(8, tails[i]);
        }
    }
    pk_force_generic = 0;
    test_pack_rejects_nan();
    test_quantize_specials();
    if (!mv_half_fast()) printf("SKIP half floats in hardware (no F16C here): their portable loops are tested\n");
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++) test_half();
    mv_half_path = 0;
    int i8n[] = {1, 3, 8, 9, 12, 16, 17, 64, 80, 301};
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++) /* AVX-512 or AVX2, AVX2, the portable loops */
        for (size_t i = 0; i < sizeof i8n / sizeof *i8n; i++) test_to_i8(i8n[i]);
    mv_half_path = 0;
    int hds[] = {8, 12, 16, 32, 48, 64, 80};
    /* mv_half_path 1: 64-float heads take the AVX2 kernel on AVX-512 CPUs too */
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++)
        for (size_t i = 0; i < sizeof hds / sizeof *hds; i++)
            for (int R = 1; R <= MV_ATTN_ROWS; R++)
                for (int elt = MV_F32; elt <= MV_I8; elt++) {
                    test_attention(hds[i], R, 0, elt, hds[i]);
                    test_attention(hds[i], R, 37, elt, hds[i]);
                    test_attention(hds[i], R, 300, elt, hds[i]); /* chunks, 16-key blocks, tails */
                    test_attention(hds[i], R, 45, elt, hds[i] + 3); /* rows apart from their heads */
                }
    mv_half_path = 0;
    for (mv_half_path = 0; mv_half_path < 3; mv_half_path++) /* AVX-512 or AVX2 blocks, AVX2, the portable loop */
        for (int elt = MV_F32; elt <= MV_I8; elt++) {
            int ns[] = {1, 7, 8, 9, 15, 16, 17, 100, 301};
            for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
                test_keys_t(ns[i], 64, elt);
                test_keys_t(ns[i], 48, elt);
                test_keys_t(ns[i], 12, elt); /* not whole blocks: the portable loop on every path */
            }
        }
    mv_half_path = 0;
    test_gelu();
    int sm[] = {1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 33, 100, 301};
    for (size_t i = 0; i < sizeof sm / sizeof *sm; i++) {
        test_softmax(sm[i], 3);
        test_softmax(sm[i], 100);
    }
    if (pk_bf16_dp()) {
        int ns[] = {1, 2, 63, 64, 65, 301, 512};
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
            for (int m = 1; m <= 13; m += 6) test_bf16_values(m, ns[i]);
        test_bf16_values(64, 301);
    }
    if (!pk_vnni() || !pk_bf16_dp()) {
        printf("SKIP AMX kernels: this CPU has no AVX-512 VNNI and BF16, which their emulation needs\n");
    } else {
        pk_force_generic = 3;
        int amx_emu = pk_amx() == 2;
        pk_force_generic = 0;
        CHECK(amx_emu, "the AMX emulation is not chosen by pk_force_generic 3");
        if (pk_amx() != 1) printf("SKIP AMX tiles in hardware: this CPU has no AMX (or the kernel refused it); their emulation is tested\n");
        int amx_shapes[][2] = {{45, 70}, {96, 64}, {200, 130}, {768, 100}};
        for (size_t i = 0; i < sizeof amx_shapes / sizeof *amx_shapes; i++)
            for (int out_in = 0; out_in < 2; out_in++) test_amx_products(amx_shapes[i][0], amx_shapes[i][1], out_in);
        int ns[] = {1, 31, 32, 33, 301};
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
            for (int m = 16; m <= 54; m += 19) { /* a prompt's weighted values */
                pk_force_generic = 3;
                test_bf16_values(m, ns[i]);
                pk_force_generic = 0;
                if (pk_amx() == 1) test_bf16_values(m, ns[i]);
            }
    }
    int cs[] = {7, 16, 45, 768, LN_MAX};
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        test_layernorm(cs[i], 0);
        test_layernorm(cs[i], 300);
    }
}

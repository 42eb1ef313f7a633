/* bench_cpu.c - the engine's figures for `make bench` (CPU formats) and
 * `make bench-gpu` (gpu-fp16, gpu-bf16), measured directly on the forward
 * pass (no process start, no sampling):
 *
 *   bandwidth  streaming reads of buffers far larger than the caches (on
 *              huge pages where the kernel gives them, as the weights are), by all
 *              threads of the pool at once (the same pool the engine uses):
 *              the median of 1 GiB reads between the decode steps (every
 *              4th step), so floor and step meet the same neighbours on a
 *              shared machine, and the best of reads before and after them
 *              (bandwidth_best_gbs); on a GPU a device-to-device copy (bytes
 *              read plus written), best of runs;
 *   floor      bytes the decode step must stream (every matrix once, in the
 *              format given, plus the tied embedding for the logits) divided
 *              by the bandwidth during the steps;
 *   decode     one batched step at batch 1 and 3 after a shared context (on
 *              a GPU with the top-40 candidates, as generation asks);
 *   prefill    a cold prompt of 128 and 512 tokens, and 1000 on a GPU
 *              (logits of the last one);
 *   extend     a keystroke's prompt: the context's last 20 tokens again,
 *              after its cached prefix (the 40 best logits of the last).
 *
 * Prints one JSON object; tests/bench/bench.py formats it.
 * usage: bench_cpu MODEL_DIR FORMAT(fp32|bf16|int8|gpu-fp16|gpu-bf16) [--context N]
 *                  [--steps N] [--threads N] [--kv fp32|fp16|int8]
 *                  [--prefill 0]   (0: decode only, for a profiler)
 *
 * bench_cpu --kernels: a prompt's products alone on one thread (512 rows,
 * gpt2's two MLP shapes, rows by 32 (AMX) or 24 per tile as the engine
 * takes them),
 * int8 and bf16 activations, on AMX tiles where the CPU has them (32 and
 * 16 rows a call) and on AVX-512 without: multiply-adds a second, one JSON
 * object per line; then the peak of each multiply-add instruction the
 * prompts' products use here (vfmadd231ps on zmm, or on ymm without
 * AVX-512; vdpbf16ps; vpdpbusd): 12 independent sums in registers, on one
 * thread and on every thread of a pool at once (the engine's default), so
 * bench.py can give each product its share of the peak and a prompt its
 * floor.
 */
#define _GNU_SOURCE
#include "../../native/device.h"
#include "../../native/cpu/amx.h"
#include "../../native/cpu/packed.h"
#include "../../native/cpu/pool.h"
#include "../../native/generate.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v16 __attribute__((vector_size(64)));

typedef struct {
    const v16 *buf;
    size_t n, chunk;
    v16 *sums;
} read_job;

/* The widest vectors the CPU has, as the engine's kernels use them. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static void read_task(void *arg, int task, int thread)
{
    read_job *j = arg;
    size_t a = (size_t)task * j->chunk, b = a + j->chunk < j->n ? a + j->chunk : j->n;
    v16 s[8] = {{0}};
    for (size_t i = a; i + 8 <= b; i += 8)
        for (int u = 0; u < 8; u++) s[u] += j->buf[i + u];
    j->sums[task] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

/* One streaming read of buf (n vectors) by every thread of the pool, in GB/s. */
static double read_once(pool *p, const v16 *buf, size_t n)
{
    int tasks = pool_size(p);
    v16 sums[256];
    read_job j = {buf, n, (n + tasks - 1) / tasks, sums};
    double t0 = now_ms();
    pool_run(p, read_task, &j, tasks);
    double gbs = n * sizeof(v16) / ((now_ms() - t0) * 1e6);
    volatile float sink = sums[0][0];
    (void)sink;
    return gbs;
}

/* Best of several streaming reads of buf (n vectors), in GB/s. */
static double bandwidth(pool *p, const v16 *buf, size_t n)
{
    double best = 0;
    for (int rep = 0; rep < 7; rep++) {
        double gbs = read_once(p, buf, n);
        if (gbs > best) best = gbs;
    }
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Bytes of a packed (K, N) matrix (packed.h's pk_size): whole tiles, int8
 * with its per-group scales. */
static double packed_bytes(int K, int N, int fmt)
{
    return (double)pk_size(K, N, fmt); /* FWD_* are PK_* */
}

/* Bytes one decode step streams: every layer matrix and the embedding for
 * the logits, as packed (fmt < 0: 16-bit on a GPU). */
static double step_bytes(const model_cfg *c, int fmt)
{
    if (fmt < 0) {
        double C = c->n_embd, I = c->n_inner;
        return 2 * (c->n_layer * (4 * C * C + 2 * C * I) + C * c->n_vocab);
    }
    int C = c->n_embd, I = c->n_inner;
    double layer = packed_bytes(C, 3 * C, fmt) + packed_bytes(C, C, fmt) +
                   packed_bytes(C, I, fmt) + packed_bytes(I, C, fmt);
    return c->n_layer * layer + packed_bytes(C, c->n_vocab, fmt);
}

static int fail(const char *err)
{
    fprintf(stderr, "bench_cpu: %s\n", err);
    return 1;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int kernel_rates(void)
{
    enum { R = 512 };
    int shapes[][2] = {{768, 3072}, {3072, 768}};
    pk_prefetch_init(); /* the kernels' prefetch instructions as the engine sets them */
    char err[ERR_MAX];
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int K = shapes[si][0], N = shapes[si][1];
        float *w = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * R * K);
        float *out = malloc(sizeof(float) * R * N);
        if (!w || !x || !out) return fail("out of memory");
        uint64_t r = 0x2545F4914F6CDD1Dull;
        for (size_t i = 0; i < (size_t)K * N; i++) r ^= r << 13, r ^= r >> 7, r ^= r << 17, w[i] = (float)(r >> 40) / (1 << 24) - 0.5f;
        for (size_t i = 0; i < (size_t)R * K; i++) r ^= r << 13, r ^= r >> 7, r ^= r << 17, x[i] = (float)(r >> 40) / (1 << 24) - 0.5f;
        for (int fmt = PK_BF16; fmt <= PK_I8; fmt++) {
            if (fmt == PK_BF16 && !pk_bf16_dp()) continue;
            pmat p;
            pk_act a = {0};
            if (pk_pack(&p, w, K, N, 0, fmt, err) < 0 || pk_act_reserve(&a, fmt, R, K) < 0) return fail("pack");
            pk_act_quantize(&a, fmt, x, 0, R, K, K);
            int has_amx = pk_amx();
            for (int pass = 0; pass < 1 + 2 * has_amx; pass++) { /* AMX 32 and 16 rows a call, then without */
                pk_amx_off = pass == 2 || !has_amx;
                amx_pair_rows = pass == 0;
                int chunk = fwd_prompt_rows(); /* rows a call, as gemm_tiles takes them */
                double best = 1e9;
                for (int rep = 0; rep < 5; rep++) {
                    double t0 = now_s();
                    for (int t = 0; t < p.tiles; t++)
                        for (int r0 = 0; r0 < R; r0 += chunk) {
                            int m = R - r0 < chunk ? R - r0 : chunk;
                            pk_act rows = pk_act_rows(&a, K, r0);
                            rows.warm = r0 > 0; /* as gemm_tiles */
                            rows.hold = 1;
                            pk_matmul(&p, out + (size_t)r0 * N, N, NULL, K, &rows, m, t, t + 1, 0, NULL);
                        }
                    amx_release();
                    double dt = now_s() - t0;
                    best = dt < best ? dt : best;
                }
                printf("{\"kernel\": \"%s\", \"amx\": %d, \"amx_rows\": %d, \"K\": %d, \"N\": %d, \"rows\": %d, \"rows_a_call\": %d, \"ms\": %.3f, \"gmacs\": %.1f}\n",
                       fmt == PK_I8 ? "int8" : "bf16", pk_amx(), pk_amx() ? 16 << amx_pair_rows : 0, K, N, R, chunk, best * 1e3, (double)R * K * N / best / 1e9);
            }
            pk_amx_off = 0;
            amx_pair_rows = 1;
            pk_free(&p);
            pk_act_free(&a);
        }
        free(w), free(x), free(out);
    }
    return 0;
}

/* ==== The multiply-add instructions' peaks ====
 *
 * Twelve sums, each its own chain (the instructions' latencies are 4-6
 * cycles; 12 chains cover two pipes), distinct to the compiler (the empty
 * asm), operands in registers: the rate the instruction retires at, which
 * no product with loads can pass. */
#if defined(__x86_64__)
#define PEAK_ITERS 5000000L
#define PEAK_LOOP(T, zero, op, sink)                                                                 \
    do {                                                                                             \
        T a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero,    \
          a8 = zero, a9 = zero, a10 = zero, a11 = zero;                                              \
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),  \
                         "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));                        \
        for (long n_ = 0; n_ < PEAK_ITERS; n_++) {                                                   \
            a0 = op(a0), a1 = op(a1), a2 = op(a2), a3 = op(a3), a4 = op(a4), a5 = op(a5);            \
            a6 = op(a6), a7 = op(a7), a8 = op(a8), a9 = op(a9), a10 = op(a10), a11 = op(a11);        \
            __asm__ volatile("" : "+v"(a0));                                                         \
        }                                                                                            \
        T s_ = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;                          \
        memcpy(sink, &s_, sizeof(float));                                                            \
    } while (0)

enum { PEAK_FMA512, PEAK_FMA256, PEAK_BF16, PEAK_VNNI, PEAKS };
static const struct {
    const char *name;
    int macs; /* multiply-adds per instruction */
} peak_op[PEAKS] = {{"vfmadd231ps zmm", 16}, {"vfmadd231ps ymm", 8}, {"vdpbf16ps", 32}, {"vpdpbusd", 64}};

__attribute__((target("avx512f"))) static void peak_fma512(float *sink)
{
    __m512 x = _mm512_set1_ps(0.5f);
#define OP(a) _mm512_fmadd_ps(a, x, x)
    PEAK_LOOP(__m512, _mm512_setzero_ps(), OP, sink);
#undef OP
}

__attribute__((target("avx2,fma"))) static void peak_fma256(float *sink)
{
    __m256 x = _mm256_set1_ps(0.5f);
#define OP(a) _mm256_fmadd_ps(a, x, x)
    PEAK_LOOP(__m256, _mm256_setzero_ps(), OP, sink);
#undef OP
}

__attribute__((target("avx512f,avx512bf16"))) static void peak_bf16(float *sink)
{
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f003f00); /* 0.5, 0.5 */
#define OP(a) _mm512_dpbf16_ps(a, x, x)
    PEAK_LOOP(__m512, _mm512_setzero_ps(), OP, sink);
#undef OP
}

__attribute__((target("avx512f,avx512vnni"))) static void peak_vnni(float *sink)
{
    __m512i x = _mm512_set1_epi32(0x01010101);
#define OP(a) _mm512_dpbusd_epi32(a, x, x)
    PEAK_LOOP(__m512i, _mm512_setzero_si512(), OP, sink);
#undef OP
}

static void peak_task(void *arg, int task, int thread)
{
    int op = *(const int *)arg;
    float sink;
    if (op == PEAK_FMA512) peak_fma512(&sink);
    else if (op == PEAK_FMA256) peak_fma256(&sink);
    else if (op == PEAK_BF16) peak_bf16(&sink);
    else peak_vnni(&sink);
    volatile float keep = sink;
    (void)keep;
}

/* G multiply-adds a second of instruction op on one thread and on every
 * thread of p at once (one task each), best of 3. */
static void peak_rate(pool *p, int op, double *one, double *all)
{
    double macs = (double)PEAK_ITERS * 12 * peak_op[op].macs;
    *one = *all = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        peak_task(&op, 0, 0);
        double r1 = macs / (now_s() - t0) / 1e9;
        t0 = now_s();
        pool_run(p, peak_task, &op, pool_size(p));
        double rn = macs * pool_size(p) / (now_s() - t0) / 1e9;
        *one = r1 > *one ? r1 : *one;
        *all = rn > *all ? rn : *all;
    }
}

static int peak_rates(void)
{
    __builtin_cpu_init();
    int has[PEAKS] = {pk_f32_prompts(), !pk_f32_prompts() && __builtin_cpu_supports("avx2") &&
                                             __builtin_cpu_supports("fma"),
                      pk_bf16_dp(), pk_vnni()};
    pool *p = pool_new(pool_cpu_count());
    if (!p) return fail("out of memory");
    for (int op = 0; op < PEAKS; op++) {
        if (!has[op]) continue;
        double one, all;
        peak_rate(p, op, &one, &all);
        printf("{\"peak\": \"%s\", \"threads\": %d, \"gmacs\": %.1f, \"gmacs_all\": %.1f}\n", peak_op[op].name,
               pool_size(p), one, all);
    }
    pool_free(p);
    return 0;
}
#else
static int peak_rates(void) { return 0; } /* bench.py then prints no floor */
#endif

#define EXTEND 20 /* tokens of a keystroke's prompt past its cached prefix */

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--kernels")) return kernel_rates() || peak_rates();
    if (argc < 3) {
        fprintf(stderr, "usage: bench_cpu MODEL_DIR fp32|bf16|int8|int4|gpu-fp16|gpu-bf16 [--context N] "
                "[--steps N] [--threads N] [--kv fp32|fp16|int8] [--prefill 0]\n");
        return 2;
    }
    int gpu = !strncmp(argv[2], "gpu-", 4);
    int fmt = gpu ? -1 : fwd_fmt_parse(argv[2]);
    if (!gpu && fmt < 0) {
        fprintf(stderr, "bench_cpu: unknown format '%s'\n", argv[2]);
        return 2;
    }
    int context = 256, steps = 40, threads = 0, skip_prefill = 0, kv_type = FWD_KV_AUTO;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--context")) context = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefill")) skip_prefill = !atoi(argv[i + 1]); /* 0: decode only, to profile */
        else if (!strcmp(argv[i], "--kv"))
            kv_type = !strcmp(argv[i + 1], "int8")   ? FWD_KV_INT8
                      : !strcmp(argv[i + 1], "fp16") ? FWD_KV_FP16
                                                     : FWD_KV_FP32;
    }
    char err[ERR_MAX];
    model *m = model_load(argv[1], err);
    if (!m) return fail(err);
    device_opts o = {.choice = gpu ? DEVICE_CUDA : DEVICE_CPU, .cpu_fmt = gpu ? FWD_FP32 : fmt, .cpu_kv = kv_type,
                     .half = gpu && !strcmp(argv[2], "gpu-fp16")};
    engine *e = engine_new(m, threads, &o, err);
    if (!e) return fail(err);
    const model_cfg *c = &m->cfg;
    if (context < 1 || context + steps + 1 > c->n_ctx || steps < 1) return fail("bad --context/--steps");

    /* 1 GiB for every CPU bandwidth read below, on huge pages where the
     * kernel gives them, as the weights get */
    size_t sample_n = ((size_t)1 << 30) / sizeof(v16);
    v16 *sample_buf = gpu ? NULL : xbig_alloc(sample_n, sizeof(v16));
    if (!gpu && !sample_buf) return fail("out of memory");
    if (sample_buf) memset(sample_buf, 1, sample_n * sizeof(v16));
    /* other tenants of a shared machine move the bandwidth: take the best of
     * a measurement before and one after the timed steps */
    double bw = gpu ? device_copy_bandwidth(e->dev) : bandwidth(e->pool, sample_buf, sample_n);
    double bytes = step_bytes(c, fmt);
    float *logits = malloc((size_t)3 * c->n_vocab * sizeof(float));
    int *toks = malloc(512 * sizeof(int));
    if (!logits || !toks) return fail("out of memory");
    uint64_t r = 88172645463325252ull;
    for (int i = 0; i < 512; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        toks[i] = (int)(r % (uint64_t)(c->n_vocab - 1));
    }

    /* prefill: cold prompts, chunked as generation chunks them */
    int lens[3] = {128, 512, 1000};
    double prefill_ms[3] = {0};
    int *toks1000 = malloc(1000 * sizeof(int));
    fwd_row *rows = calloc(GEN_PREFILL_CHUNK, sizeof *rows);
    if (!toks1000 || !rows) return fail("out of memory");
    for (int i = 0; i < 1000; i++) toks1000[i] = toks[(i * 7) % 512];
    for (int k = 0; k < (gpu ? 3 : 2); k++) {
        if (skip_prefill) continue;
        int T = lens[k] < c->n_ctx ? lens[k] : c->n_ctx;
        double t[5];
        for (int rep = 0; rep < 5; rep++) {
            kv_cache *kv = device_kv_new(e->dev, T, err);
            if (!kv) return fail(err);
            double t0 = now_ms();
            for (int from = 0; from < T; from += GEN_PREFILL_CHUNK) {
                int R = T - from < GEN_PREFILL_CHUNK ? T - from : GEN_PREFILL_CHUNK, last = R - 1;
                for (int i = 0; i < R; i++)
                    rows[i] = (fwd_row){.token = toks1000[from + i], .own = kv, .own_at = from + i};
                if (device_run(e->dev, rows, R, &last, from + R == T, logits, 0, err) < 0) return fail(err);
            }
            t[rep] = now_ms() - t0;
            device_kv_free(e->dev, kv);
        }
        prefill_ms[k] = median(t, 5);
    }

    /* decode: a shared context, then batch 1 and 3 with their own caches */
    kv_cache *prefix = device_kv_new(e->dev, c->n_ctx, err); /* as the helper's cache slots */
    if (!prefix) return fail(err);
    for (int from = 0; from < context; from += GEN_PREFILL_CHUNK) {
        int R = context - from < GEN_PREFILL_CHUNK ? context - from : GEN_PREFILL_CHUNK;
        for (int i = 0; i < R; i++)
            rows[i] = (fwd_row){.token = toks[(from + i) % 512], .own = prefix, .own_at = from + i};
        if (device_run(e->dev, rows, R, NULL, 0, NULL, 0, err) < 0) return fail(err);
    }
    /* a keystroke's prompt: EXTEND tokens after the last EXTEND of the
     * context, over again (a typing session's prefill with prefix reuse) */
    double ext[9];
    int from = context - EXTEND, last = EXTEND - 1;
    for (int rep = 0; rep < 9 && from >= 0; rep++) {
        for (int i = 0; i < EXTEND; i++)
            rows[i] = (fwd_row){.token = toks[(from + i + rep) % 512], .own = prefix, .own_at = from + i};
        double t0 = now_ms();
        if (device_run(e->dev, rows, EXTEND, &last, 1, logits, 40, err) < 0) return fail(err);
        ext[rep] = now_ms() - t0;
    }
    double extend_ms = from >= 0 ? median(ext, 9) : 0;
    /* batch 1 and 3 with every logit (the floor's workload), then, on the
     * CPU, with only the 40 best (sampling's default top_k: the head's
     * int8 screen, fwd_run_topk) as generation runs them */
    double step_ms[4] = {0};
    int batch[4] = {1, 3, 1, 3}, runs = gpu ? 2 : 4;
    double *t = malloc(steps * sizeof *t);
    /* the CPU's bandwidth sampled between steps (a 1 GiB read every 4th
     * step, untimed): the floor under the conditions the steps met. Every
     * run samples, so that none keeps more of the weights in L3 than the
     * others (int8's 127 MB half fits in a 260 MB one). */
    double *bw_at = malloc((steps / 4 + 1) * 4 * sizeof *bw_at);
    int n_bw = 0;
    if (!t || !bw_at) return fail("out of memory");
    for (int k = 0; k < runs; k++) {
        int B = batch[k], out[3] = {0, 1, 2}, topk = gpu || k >= 2 ? 40 : 0;
        kv_cache *own[3];
        for (int b = 0; b < B; b++)
            if (!(own[b] = device_kv_new(e->dev, steps + 1, err))) return fail(err);
        for (int s = -1; s < steps; s++) { /* one warm-up step */
            int at = s < 0 ? 0 : s;
            for (int b = 0; b < B; b++)
                rows[b] = (fwd_row){.token = toks[(at * 3 + b) % 512], .ctx0 = prefix,
                                    .len0 = context, .own = own[b], .own_at = at};
            if (sample_buf && s >= 0 && s % 4 == 0)
                bw_at[n_bw++] = read_once(e->pool, sample_buf, sample_n);
            double t0 = now_ms();
            if (device_run(e->dev, rows, B, out, B, logits, topk, err) < 0) return fail(err);
            if (s >= 0) t[s] = now_ms() - t0;
        }
        step_ms[k] = median(t, steps);
        for (int b = 0; b < B; b++) device_kv_free(e->dev, own[b]);
    }
    device_kv_free(e->dev, prefix);
    double bw2 = gpu ? device_copy_bandwidth(e->dev) : bandwidth(e->pool, sample_buf, sample_n);
    double best = bw2 > bw ? bw2 : bw, during = n_bw ? median(bw_at, n_bw) : best;
    double floor_ms = bytes / (during * 1e6);
    printf("{\"format\": \"%s\", \"device\": \"%s\", \"cpu_kernels\": \"%s\", \"cpu_kv\": \"%s\", \"threads\": %d, "
           "\"bandwidth_gbs\": %.2f, \"bandwidth_best_gbs\": %.2f, \"step_bytes\": %.0f, \"floor_ms\": %.4f, "
           "\"context\": %d, \"steps\": %d, \"step1_ms\": %.4f, \"step3_ms\": %.4f, "
           "\"prefill128_ms\": %.3f, \"prefill512_ms\": %.3f",
           argv[2], device_name(e->dev), device_cpu_kernels(e->dev), device_cpu_kv(e->dev), pool_size(e->pool),
           during, best, bytes,
           floor_ms, context, steps, step_ms[0], step_ms[1], prefill_ms[0], prefill_ms[1]);
    if (gpu) printf(", \"prefill1000_ms\": %.3f", prefill_ms[2]);
    else printf(", \"step1_top40_ms\": %.4f, \"step3_top40_ms\": %.4f, \"cpu_prefetch\": \"%s\"", step_ms[2],
                step_ms[3], pk_prefetch_what());
    printf(", \"extend%d_ms\": %.3f", EXTEND, extend_ms);
    printf("}\n");
    free(toks1000);
    free(t);
    free(bw_at);
    free(sample_buf);
    free(rows);
    free(toks);
    free(logits);
    engine_free(e);
    model_free(m);
    return 0;
}

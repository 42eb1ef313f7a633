/* device.c - CPU or CUDA behind one interface (see device.h). */
#define _GNU_SOURCE
#include "device.h"
#include "gpu.h"
#include "log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct device {
    const model *m;
    fwd *cpu;
    const gpu_api *api;
    gpu_ctx *gpu;
    char name[160], note[ERR_MAX];
    gpu_row *rows;
    int rows_cap;
    float *vals;
    int *ids;
    size_t cand_cap;
};

int device_parse(const char *s)
{
    if (!strcmp(s, "auto")) return DEVICE_AUTO;
    if (!strcmp(s, "cpu")) return DEVICE_CPU;
    if (!strcmp(s, "cuda") || !strcmp(s, "gpu")) return DEVICE_CUDA;
    return -1;
}

static int open_gpu(device *d, const device_opts *o, char *err)
{
    const gpu_api *api = gpu_load(err);
    if (!api) return -1;
    gpu_opts go = {.half = o->half, .device = o->gpu_index, .mem_cap = o->gpu_mem_cap,
                   .max_rows = GEN_ROWS_MAX};
    gpu_ctx *g = api->init(d->m, &go, err);
    if (!g) return -1;
    d->api = api;
    d->gpu = g;
    gpu_info info;
    api->info(g, &info);
    snprintf(d->name, sizeof d->name, "cuda:%d %s", o->gpu_index, info.name);
    return 0;
}

device *device_new(const model *m, pool *p, const device_opts *o, char *err)
{
    device *d = xcalloc(1, sizeof *d);
    if (!d) {
        errf(err, "out of memory");
        return NULL;
    }
    d->m = m;
    if (o->choice != DEVICE_CPU) {
        char why[ERR_MAX];
        if (open_gpu(d, o, why) == 0) return d;
        if (o->choice == DEVICE_CUDA) {
            errf(err, "GPU not usable: %s", why);
            free(d);
            return NULL;
        }
        snprintf(d->note, sizeof d->note, "no usable GPU (%.400s): running on the CPU", why);
        log_info("%s", d->note);
    }
    if (o->cpu_fmt == FWD_FP32) snprintf(d->name, sizeof d->name, "cpu");
    else snprintf(d->name, sizeof d->name, "cpu (%s)", fwd_fmt_name(o->cpu_fmt));
    if (!(d->cpu = fwd_new(m, p, o->cpu_fmt, o->cpu_kv, err))) {
        free(d);
        return NULL;
    }
    return d;
}

void device_free(device *d)
{
    if (!d) return;
    fwd_free(d->cpu);
    if (d->gpu) d->api->destroy(d->gpu);
    free(d->rows);
    free(d->vals);
    free(d->ids);
    free(d);
}

const char *device_name(const device *d) { return d->name; }
const char *device_note(const device *d) { return d->note; }
const char *device_cpu_kernels(const device *d) { return d->cpu ? fwd_kernels(d->cpu) : ""; }
const char *device_cpu_kv(const device *d) { return d->cpu ? fwd_kv_name(d->cpu) : ""; }
int device_is_gpu(const device *d) { return d->gpu != NULL; }

void device_topk_stats(const device *d, unsigned long *screened, unsigned long *fallback)
{
    *screened = *fallback = 0;
    if (!d->gpu) fwd_topk_stats(d->cpu, screened, fallback);
}

kv_cache *device_kv_new(device *d, int cap, char *err)
{
    if (!d->gpu) {
        kv_cache *kv = kv_new(d->cpu, cap);
        if (!kv) errf(err, "out of memory for a KV cache of %d positions", cap);
        return kv;
    }
    kv_cache *kv = xcalloc(1, sizeof *kv);
    if (!kv) {
        errf(err, "out of memory");
        return NULL;
    }
    kv->cap = cap;
    kv->n_layer = d->m->cfg.n_layer;
    kv->n_embd = d->m->cfg.n_embd;
    kv->n_head = d->m->cfg.n_head;
    if (!(kv->gpu = d->api->kv_new(d->gpu, cap, err))) {
        free(kv);
        return NULL;
    }
    return kv;
}

void device_kv_free(device *d, kv_cache *kv)
{
    if (!kv) return;
    if (kv->gpu) {
        d->api->kv_free(d->gpu, kv->gpu);
        free(kv);
    } else {
        kv_free(d->cpu, kv);
    }
}

size_t device_kv_bytes(const kv_cache *kv) { return kv_bytes(kv); /* fp32 on a GPU: half unset */ }

/* Room for R rows and n_out x k candidates. */
static int reserve(device *d, int R, size_t cands)
{
    if (R > d->rows_cap) {
        gpu_row *r = realloc(d->rows, (size_t)R * sizeof *r);
        if (!r) return -1;
        d->rows = r;
        d->rows_cap = R;
    }
    if (cands > d->cand_cap) {
        float *v = xmallocarray(cands, sizeof *v);
        int *i = xmallocarray(cands, sizeof *i);
        if (!v || !i) {
            free(v);
            free(i);
            return -1;
        }
        free(d->vals);
        free(d->ids);
        d->vals = v;
        d->ids = i;
        d->cand_cap = cands;
    }
    return 0;
}

/* Whether the GPU can hand back the k best candidates of a row. */
static int topk_usable(const device *d, int k)
{
    size_t V = d->m->cfg.n_vocab;
    return d->gpu && k > 0 && k <= GPU_MAX_TOPK && (size_t)k < V && V <= GPU_TOPK_MAX_VOCAB;
}

/* The candidates of n_out rows as logits: theirs, and -inf elsewhere. */
static void spread(const device *d, int n_out, int k, float *logits)
{
    size_t V = d->m->cfg.n_vocab;
    for (int i = 0; i < n_out; i++) {
        float *row = logits + i * V;
        for (size_t v = 0; v < V; v++) row[v] = -INFINITY;
        for (int j = 0; j < k; j++) row[d->ids[i * k + j]] = d->vals[i * k + j];
    }
}

static int gpu_run(device *d, const fwd_row *rows, int R, const int *out_rows, int n_out,
                   float *logits, int topk, char *err)
{
    if (!topk_usable(d, topk)) topk = 0;
    if (reserve(d, R, (size_t)n_out * (topk ? topk : 1)) < 0) return errf(err, "out of memory");
    for (int r = 0; r < R; r++)
        d->rows[r] = (gpu_row){.token = rows[r].token, .len0 = rows[r].len0,
                               .own_at = rows[r].own_at,
                               .ctx0 = rows[r].ctx0 ? rows[r].ctx0->gpu : NULL,
                               .own = rows[r].own->gpu};
    if (!topk) return d->api->run(d->gpu, d->rows, R, out_rows, n_out, 0, logits, NULL, err);
    if (d->api->run(d->gpu, d->rows, R, out_rows, n_out, topk, d->vals, d->ids, err) < 0)
        return -1;
    if (!logits) return topk; /* device_run_topk: the candidates are the answer */
    spread(d, n_out, topk, logits);
    return 0;
}

/* The CPU's pass: with k > 0, through fwd_run_topk (the k best of each
 * output row into d->vals / d->ids, returning k, where its screen serves;
 * else 0 with every logit). */
static int cpu_run(device *d, const fwd_row *rows, int R, const int *out_rows, int n_out,
                   float *logits, int k, char *err)
{
    if (k <= 0 || k > FWD_TOPK_MAX || n_out > FWD_TOPK_ROWS)
        return fwd_run(d->cpu, rows, R, out_rows, n_out, logits, err);
    if (reserve(d, 0, (size_t)n_out * k) < 0) return errf(err, "out of memory");
    return fwd_run_topk(d->cpu, rows, R, out_rows, n_out, k, logits, d->vals, d->ids, err);
}

int device_run_topk(device *d, const fwd_row *rows, int R, const int *out_rows, int n_out, int k,
                    float *logits, const float **vals, const int **ids, char *err)
{
    int nc;
    if (d->gpu) {
        if (!topk_usable(d, k))
            return device_run(d, rows, R, out_rows, n_out, logits, 0, err) < 0 ? -1 : 0;
        if (gpu_run(d, rows, R, out_rows, n_out, NULL, k, err) < 0) return -1;
        nc = k;
    } else if ((nc = cpu_run(d, rows, R, out_rows, n_out, logits, k, err)) <= 0) {
        return nc;
    }
    *vals = d->vals;
    *ids = d->ids;
    return nc;
}

int device_run(device *d, const fwd_row *rows, int R, const int *out_rows, int n_out,
               float *logits, int topk_hint, char *err)
{
    if (d->gpu) return gpu_run(d, rows, R, out_rows, n_out, logits, topk_hint, err);
    int nc = cpu_run(d, rows, R, out_rows, n_out, logits, topk_hint, err);
    if (nc > 0) spread(d, n_out, nc, logits);
    return nc < 0 ? -1 : 0;
}

void device_memory(device *d, size_t *used, size_t *free_bytes, unsigned long *ooms)
{
    *used = *free_bytes = 0;
    *ooms = 0;
    if (!d->gpu) return;
    gpu_info info;
    d->api->info(d->gpu, &info);
    *used = info.used_by_us;
    *free_bytes = info.free_bytes;
    *ooms = info.oom_count;
}

double device_copy_bandwidth(device *d)
{
    return d->gpu ? d->api->copy_bandwidth(d->gpu) : 0;
}

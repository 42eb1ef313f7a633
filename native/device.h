/* device.h - where the forward pass runs: the CPU path (cpu/forward.c) or
 * the CUDA backend (gpu.h), behind one interface, so generation, the CLI and
 * the helper do not care. `auto` takes the GPU when one is usable and falls
 * back to the CPU with the reason recorded, never failing for lack of one.
 */
#ifndef GPT2_DEVICE_H
#define GPT2_DEVICE_H

#include "cpu/forward.h"
#include "model.h"

/* The most rows one forward pass takes (a prefill chunk, a decode batch):
 * the GPU preallocates its activations for this many. */
#define GEN_ROWS_MAX FWD_ROWS_MAX

typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } device_choice;

typedef struct {
    device_choice choice;
    int half;            /* GPU weights fp16 instead of bf16 */
    int cpu_fmt;         /* FWD_FP32 | FWD_BF16 | FWD_INT8 | FWD_INT4: what the CPU path streams */
    int cpu_kv;          /* FWD_KV_AUTO | FWD_KV_FP32 | FWD_KV_FP16: its caches */
    int gpu_index;
    size_t gpu_mem_cap;  /* bytes; 0 = no cap */
} device_opts;

typedef struct device device;

/* "auto" | "cpu" | "cuda" -> choice; -1 if unknown. */
int device_parse(const char *s);

/* A device for model m (borrowed) using pool p for the CPU path. With
 * DEVICE_CUDA a GPU that cannot be used is an error; with DEVICE_AUTO it
 * means the CPU (device_note says why). NULL with err. */
device *device_new(const model *m, pool *p, const device_opts *o, char *err);
void device_free(device *d);

const char *device_name(const device *d); /* "cpu" or "cuda:N <name>" */
const char *device_note(const device *d); /* why not the GPU ("" if none) */
const char *device_cpu_kernels(const device *d); /* the CPU's kernels (pk_kernels), "" on a GPU */
const char *device_cpu_kv(const device *d);      /* its keys and values (fwd_kv_name), "" on a GPU */
/* The CPU head's top-k rows: from the int8 screen, and past it (fwd_topk_stats); 0 on a GPU. */
void device_topk_stats(const device *d, unsigned long *screened, unsigned long *fallback);
int device_is_gpu(const device *d);

/* Keys/values for `cap` positions on the device. NULL with err. */
kv_cache *device_kv_new(device *d, int cap, char *err);
void device_kv_free(device *d, kv_cache *kv);
size_t device_kv_bytes(const kv_cache *kv);

/* As fwd_run. topk_hint > 0: only the topk_hint largest logits of each
 * output row matter (the rest may come back as -inf: the GPU then copies
 * candidates, not the whole vocabulary); 0: all logits exact. */
int device_run(device *d, const fwd_row *rows, int R, const int *out_rows, int n_out,
               float *logits, int topk_hint, char *err);

/* A decode pass that needs only the k best candidates of each output row:
 * on a GPU that can select them, k and, in *vals / *ids (n_out * k, best
 * first: larger logit, then smaller id; valid until the next pass), the
 * candidates, so the vocabulary is never copied or scanned on the host;
 * elsewhere 0 and every logit in `logits`, as device_run. -1 with err. */
int device_run_topk(device *d, const fwd_row *rows, int R, const int *out_rows, int n_out, int k,
                    float *logits, const float **vals, const int **ids, char *err);

/* Memory: bytes used by this process on the device, free on the device. */
void device_memory(device *d, size_t *used, size_t *free_bytes, unsigned long *ooms);

/* A GPU's device-to-device copy bandwidth in GB/s (read plus written); 0 on
 * the CPU. For `make bench-gpu`. */
double device_copy_bandwidth(device *d);

#endif

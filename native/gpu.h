/* gpu.h - the interface between the helper and its optional CUDA backend.
 *
 * The backend is a shared object (build/gpt2-cuda.so: native/cuda.c and the
 * kernels in native/kernels/) that gpu.c loads with dlopen at run time, so the
 * gpt2 binary itself never links the CUDA libraries and runs on machines
 * without them. Both sides are compiled from this tree, so they share the
 * model structures; GPU_API_VERSION guards against a stale .so.
 *
 * Layouts on the device: weights fp16 (or bf16), HF's [in, out] kept as is
 * (column-major [out, in] for cuBLAS, no transpose copy); the residual
 * stream, attention and the KV cache in fp32.
 */
#ifndef GPT2_GPU_H
#define GPT2_GPU_H

#include <stddef.h>

#include "model.h"

#define GPU_API_VERSION 2
#define GPU_MAX_TOPK 64 /* candidates copied back per row instead of logits */
#define GPU_TOPK_MAX_VOCAB 262144 /* larger vocabularies copy every logit back */

typedef struct gpu_ctx gpu_ctx;
typedef struct gpu_kv gpu_kv;

typedef struct {
    int half;              /* 1: fp16 weights (the CLI's default), 0: bf16 */
    int device;            /* CUDA device index */
    size_t mem_cap;        /* refuse allocations past this many bytes (0: none) */
    int max_rows;          /* rows of one forward pass (prefill chunk, batch) */
} gpu_opts;

/* One input row (see fwd_row in cpu/forward.h). */
typedef struct {
    int token, len0, own_at;
    const gpu_kv *ctx0;
    gpu_kv *own;
} gpu_row;

typedef struct {
    char name[128];
    size_t total, free_bytes, used_by_us, cap;
    unsigned long oom_count;
} gpu_info;

typedef struct {
    int version;
    /* Upload m's weights; NULL with err (no device, driver, memory...). */
    gpu_ctx *(*init)(const model *m, const gpu_opts *o, char *err);
    void (*destroy)(gpu_ctx *g);
    gpu_kv *(*kv_new)(gpu_ctx *g, int cap, char *err);
    void (*kv_free)(gpu_ctx *g, gpu_kv *kv);
    /* Forward rows[0..R). For each i < n_out, row out_rows[i]: when topk > 0
     * the topk largest logits go to vals[i*topk..] (descending) and their
     * ids to ids[i*topk..]; when topk == 0 all logits go to vals[i*vocab..].
     * 0, or -1 with err. */
    int (*run)(gpu_ctx *g, const gpu_row *rows, int R, const int *out_rows, int n_out, int topk,
               float *vals, int *ids, char *err);
    void (*info)(gpu_ctx *g, gpu_info *out);
    /* Device-to-device copy bandwidth in GB/s (bytes read plus written),
     * best of a few copies of 256 MiB; 0 if it cannot be measured. */
    double (*copy_bandwidth)(gpu_ctx *g);
} gpu_api;

/* The symbol the backend exports. */
typedef const gpu_api *(*gpu_api_fn)(void);
#define GPU_API_SYMBOL "gpt2_cuda_api"

/* Load the backend (next to the executable, or $GPT2_CUDA_LIB). NULL with a
 * reason in err when it is not there or does not load. */
const gpu_api *gpu_load(char *err);

#endif

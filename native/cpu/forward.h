/* forward.h - GPT-2 forward pass on the CPU, over rows that each carry their
 * own position and attention context, so one call serves both prefill (the
 * rows of one prompt) and batched decode (one row per continuation, each with
 * a shared prefix cache plus its own cache).
 *
 * Logits are computed only for the rows asked for.
 */
#ifndef GPT2_FORWARD_H
#define GPT2_FORWARD_H

#include "../model.h"
#include "pool.h"

/* Keys and values of `cap` positions for every layer and head:
 * k, v (n_layer, n_head, cap, C / n_head). */
typedef struct {
    float *k, *v;          /* host memory (CPU path); NULL on a GPU */
    int cap, n_layer, n_embd, n_head;
    void *gpu;             /* the backend's handle (gpu_kv) when on a GPU */
} kv_cache;

kv_cache *kv_new(const model_cfg *cfg, int cap); /* NULL when out of memory */
void kv_free(kv_cache *kv);

/* One row of input. Its position is len0 + own_at. It attends to ctx0's first
 * len0 positions (a shared prefix; may be NULL with len0 = 0) and to own's
 * positions 0..own_at, after writing its own key/value at own_at. Rows of a
 * call may write into the same cache (prefill): all are written first. */
typedef struct {
    int token;
    const kv_cache *ctx0;
    int len0;
    kv_cache *own;
    int own_at;
} fwd_row;

typedef struct fwd fwd;

/* The most rows one fwd_run takes. */
#define FWD_ROWS_MAX 256

/* Weight formats the CPU path can stream. */
enum { FWD_FP32, FWD_BF16, FWD_INT8 };

/* A forward context for model m using the threads of p (both borrowed).
 * Its matrices are packed copies in format fmt (packed.h): fp32; bf16 (half
 * the memory traffic, widened exactly); int8 (a bit over a quarter: one
 * scale per 32 inputs of each output, activations quantized the same way,
 * exact int32 group sums). Products accumulate in fp32. */
fwd *fwd_new(const model *m, pool *p, int fmt, char *err);
void fwd_free(fwd *f);

/* Run rows[0..R). For each i < n_out, logits row out_rows[i] goes to
 * logits + i * vocab. 0, or -1 with err (bad token/position, out of memory). */
int fwd_run(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out,
            float *logits, char *err);

#endif

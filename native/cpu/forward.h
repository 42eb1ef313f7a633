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
#include "ops.h"
#include "pool.h"

typedef struct fwd fwd;

/* Keys and values of `cap` positions for every layer and head:
 * k, v (n_layer, n_head, cap, C / n_head), as floats, IEEE half floats
 * (uint16_t) or int8 with a scale per position and head (ops.h). */
typedef struct {
    void *k, *v;           /* host memory (CPU path); NULL on a GPU */
    float *ks, *vs;        /* int8: their scales (n_layer, n_head, cap) */
    int elt;               /* MV_F32, MV_F16 or MV_I8 (ops.h) */
    int cap, n_layer, n_embd, n_head;
    void *gpu;             /* the backend's handle (gpu_kv) when on a GPU */
} kv_cache;

/* A cache of the element type f's passes use, of at least cap positions
 * (kv->cap may be up to twice that: a spare reused), NULL when out of
 * memory. Its contents are undefined until written. kv_free keeps a few
 * large caches as spares for kv_new (KV_SPARES in forward.c): a fresh
 * cache's pages are zeroed by the kernel and faulted in by whichever
 * thread writes them first. Either may be called from any thread. */
kv_cache *kv_new(fwd *f, int cap);
void kv_free(fwd *f, kv_cache *kv);
size_t kv_bytes(const kv_cache *kv); /* host bytes of keys and values */

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


/* The most rows one fwd_run takes. */
#define FWD_ROWS_MAX 256
/* Rows a prompt's product takes per call of a packed tile (gemm_tiles):
 * two AMX blocks where prompts run on AMX tiles, else 24 (4 x 6 rows in the
 * int8 and bf16 kernels). */
int fwd_prompt_rows(void);

/* Weight formats the CPU path can stream, and what its caches hold. */
enum { FWD_FP32, FWD_BF16, FWD_INT8, FWD_INT4 }; /* the PK_* formats (packed.h) */
enum { FWD_KV_AUTO, FWD_KV_FP32, FWD_KV_FP16, FWD_KV_INT8 };

/* A weight format's name ("fp32", "bf16", "int8", "int4"), and the format
 * a name gives (-1 for none of them). */
const char *fwd_fmt_name(int fmt);
int fwd_fmt_parse(const char *name);

/* A forward context for model m using the threads of p (both borrowed).
 * Its matrices are packed copies in format fmt (packed.h): fp32; bf16 (half
 * the memory traffic, widened exactly; prompts on AVX-512 BF16 round their
 * activations to bf16 for vdpbf16ps); int8 (a bit over a quarter: one
 * scale per 64 inputs of each output, activations quantized the same way,
 * exact int32 group sums); int4 (a bit over an eighth: the same with
 * 4-bit weights). Products accumulate in fp32. Keys and values
 * (kv): fp32, fp16 (half the bytes a decode step at a long context streams
 * from its cache), or auto: fp16 for bf16 and int8 where the CPU converts
 * half floats in hardware (ops.h), else fp32. */
fwd *fwd_new(const model *m, pool *p, int fmt, int kv, char *err);
void fwd_free(fwd *f);

/* Run rows[0..R). For each i < n_out, logits row out_rows[i] goes to
 * logits + i * vocab. 0, or -1 with err (bad token/position, out of memory). */
int fwd_run(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out,
            float *logits, char *err);

/* The largest k, and the most output rows, fwd_run_topk screens for. */
#define FWD_TOPK_MAX 256
#define FWD_TOPK_ROWS 8

/* As fwd_run, when only the k best logits of each output row matter (the
 * sampler's top_k). With fp32 or bf16 weights whose head is the tied
 * embedding, up to FWD_TOPK_ROWS output rows and k <= FWD_TOPK_MAX, an int8
 * copy of the head screens the vocabulary and only the columns it cannot
 * rule out are computed (topk.h): returns k, with vals/ids (n_out x k)
 * holding each row's k best, best first (larger logit, then smaller id),
 * the very values fwd_run computes. Otherwise (or when too many columns
 * stay in doubt) 0 with every logit in logits, as fwd_run. -1 with err. */
int fwd_run_topk(fwd *f, const fwd_row *rows, int R, const int *out_rows, int n_out, int k,
                 float *logits, float *vals, int *ids, char *err);

/* Output rows fwd_run_topk took from the screen, and rows it could have but
 * the screen left too many columns in doubt (every logit then); both 0
 * where there is no screen. Any thread may read them. */
void fwd_topk_stats(const fwd *f, unsigned long *screened, unsigned long *fallback);

/* The CPU kernels f's products take (pk_kernels). */
const char *fwd_kernels(const fwd *f);
/* What its caches hold: "fp32", "fp16" or "int8". */
const char *fwd_kv_name(const fwd *f);

#endif

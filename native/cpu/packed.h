/* packed.h - weight matrices repacked at load for the CPU's products.
 *
 * A matrix W (K inputs, N outputs) is cut into tiles of PK_TILE output
 * columns; each tile is stored contiguously, input by input, so a product
 * with a few rows (decode) streams the matrix once, front to back, while
 * the tile's results stay in vector registers for its whole length. The
 * tied embedding (stored [vocab, C]) is repacked the same way, so the
 * logits take the same path as every other product.
 *
 * Formats, chosen at load:
 *   fp32  the weights as they are;
 *   bf16  the fp32 values rounded to bf16, widened exactly in registers; with
 *         many rows (prefill) on AVX-512 BF16, the activations are rounded
 *         to bf16 too (pk_act) and each pair of inputs is one vdpbf16ps;
 *   int8  per group of PK_GROUP inputs and output column one scale (the
 *         group's largest |w| maps to 127; kept as fp16, see packed.c),
 *         weights stored offset by +128 as unsigned bytes. Activations are quantized per row and group the
 *         same way (pk_act), so each group's dot product is exact in int32
 *         (AVX-512 VNNI vpdpbusd where present, a prompt's rows on AMX
 *         tiles where those are: amx.h) and is scaled once;
 *   int4  per group of PK_GROUP inputs and output column one signed scale d
 *         (fp16, as int8's), the one of 12 near -(the weight of largest
 *         magnitude) / 8 that leaves the least squared error, and codes
 *         round(w / d) clamped to -8..7, stored + 8 as nibbles: half
 *         int8's bytes. The activations are int8's, each group's sum exact
 *         in int32 (vpmaddubsw: a nibble times an int8 input cannot
 *         saturate) and scaled once, as int8's.
 * Padding (inputs to a whole group, outputs to a whole tile) is zero.
 */
#ifndef GPT2_PACKED_H
#define GPT2_PACKED_H

#include <stddef.h>
#include <stdint.h>

#define PK_TILE 64
#define PK_GROUP 64
/* an int8 group in a tile: its weights, then PK_TILE fp16 scales */
#define PK_GROUP_W (PK_GROUP * PK_TILE)
#define PK_GROUP_BYTES (PK_GROUP_W + PK_TILE * 2)
/* int4: a group's 16 quads of inputs; in each, the tile's 4 blocks of 16
 * columns take 32 bytes: byte 4 j + i holds input i of column j of the
 * block in its low nibble and of column 8 + j in its high one. So a block's
 * bytes, split into nibbles, are two of int8's 32-byte quad rows (8
 * columns by 4 inputs). Then the PK_TILE fp16 scales. */
#define PK_I4_GROUP_W (PK_GROUP * PK_TILE / 2)
#define PK_I4_GROUP_BYTES (PK_I4_GROUP_W + PK_TILE * 2)

enum { PK_F32, PK_BF16, PK_I8, PK_I4 };

typedef struct {
    int fmt, K, N, tiles, groups; /* groups: int8 scale groups per column */
    float unscale;                /* int8, int4: what the stored scales are multiplied by */
    size_t tile_bytes;
    unsigned char *data;          /* tiles back to back, 64-byte aligned */
    int borrowed;                 /* data is the caller's (pk_pack_into) */
} pmat;

/* Columns given as n separate rows of K floats (an (N, K) matrix gathered,
 * e.g. some vocabulary rows of the tied head), packed fp32 or bf16 into
 * mem (pk_size(K, n, fmt) bytes, 64-byte aligned, the caller's): the bytes
 * pk_pack_into gives that matrix, so a product with them gives the bits the
 * whole matrix's product gives those columns. scratch: room for PK_TILE * K
 * floats. Finite weights only. */
void pk_pack_rows(pmat *p, void *mem, const float *const *rows, int n, int K, int fmt, float *scratch);

/* For an int8 matrix p packed from (N, K) weights w (out_in): per column n,
 * err[n] >= the largest |w' - q| and amax[n] >= the largest |q| over its
 * inputs, q the dequantized int8 weights, w' the weights as format fmt
 * holds them (PK_F32: w; PK_BF16: w rounded to bf16). Rounded up to floats;
 * columns n0..n1 (ranges may be done at once). */
void pk_i8_bounds(const pmat *p, const float *w, int fmt, int n0, int n1, float *err, float *amax);

/* The smallest float at least x (x >= 0, finite): bounds rounded up. */
float pk_round_up(double x);

/* Rows of activations in the form a product reads them: quantized for
 * int8 matrices, rounded to bf16 for bf16 ones (many rows, AVX-512 BF16). */
typedef struct {
    int cap_rows, cap_groups, cap_pairs;
    int warm;        /* a view of rows after the first block of a prompt, whose
                      * tiles the first block's products just read into L2: the
                      * kernels do not fetch them ahead again */
    int hold;        /* the caller gives AMX tiles back itself (amx_release)
                      * after its products: they stay configured between them */
    int8_t *q;       /* int8: (rows, groups * PK_GROUP) */
    float *scale;    /* (rows, groups) */
    int32_t *sum;    /* (rows, groups): sum of q over the group */
    uint16_t *bf;    /* bf16: (rows, 2 * pairs of this K), inputs in order, a zero after an
                      * odd K: rows as long as the product's K, not the capacity's
                      * (the capacity's 6 KB stride put 32 rows on 2 sets of L1: a bf16
                      * prefill of 512 took 163 ms median, 145 with rows of K) */
} pk_act;

/* Pack w: (K, N) row-major, or (N, K) when out_in. 0, or -1 when out of
 * memory or, for int8 and int4, when a weight is not finite (err says which). */
int pk_pack(pmat *p, const float *w, int K, int N, int out_in, int fmt, char *err);
void pk_free(pmat *p);

/* The bytes a packed (K, N) matrix of format fmt takes (a multiple of 64),
 * and pk_pack into mem, 64-byte aligned memory of that size that stays the
 * caller's (pk_free leaves it): one block, of huge pages, holds every
 * matrix of a model (forward.c). */
size_t pk_size(int K, int N, int fmt);
int pk_pack_into(pmat *p, void *mem, const float *w, int K, int N, int out_in, int fmt, char *err);
/* pk_pack_into in two steps, so that threads can share the second: the
 * shape, the check of the weights and the int8 / int4 unscale, the memory
 * zeroed (0 or -1 as pk_pack_into); then tiles t0..t1 packed (ranges of
 * tiles may be packed at once). */
int pk_pack_begin(pmat *p, void *mem, const float *w, int K, int N, int fmt, char *err);
void pk_pack_tiles(const pmat *p, const float *w, int out_in, int t0, int t1);
size_t pk_bytes(const pmat *p);

/* Room for R rows of K inputs for matrices of format fmt (PK_I8 for int8
 * and int4 matrices, or PK_BF16
 * where pk_bf16_dp()); 0, or -1 when out of memory. Then pk_act_quantize
 * puts rows r0..r1 of x (leading dimension ldx) in that form (rows may be
 * split among threads). */
int pk_act_reserve(pk_act *a, int fmt, int R, int K);
void pk_act_quantize(pk_act *a, int fmt, const float *x, int r0, int r1, int K, int ldx);
void pk_act_free(pk_act *a);

/* Rows r0.. of a (put in form for K inputs) as activations of their own, a
 * view into a's memory: a product over some of a prompt's rows. */
pk_act pk_act_rows(const pk_act *a, int K, int r0);

/* out (R, ldo)[:, columns of tiles t0..t1) (+)= x (R, ldx) @ W, then
 * + bias (indexed by column, as out; NULL for none): out = ((out +) sum) +
 * bias. int8 and int4 matrices read a (quantized from x by pk_act_quantize) instead
 * of x; bf16 ones read a's bf16 rows when a is given (and pk_bf16_dp()),
 * else x. The AVX-512 kernels add the bias as they store the sums. */
void pk_matmul(const pmat *p, float *out, int ldo, const float *x, int ldx, const pk_act *a,
               int R, int t0, int t1, int accumulate, const float *bias);

/* Tile t as fp32 (K, PK_TILE) into dst with leading dimension ldd. */
void pk_widen(const pmat *p, int t, float *dst, int ldd);

/* Tile t as fp32 (K, PK_TILE), rows PK_TILE floats apart: the tile itself
 * (fp32), or widened into scratch (room for K * PK_TILE floats). */
const float *pk_f32_tile(const pmat *p, int t, float *scratch);

/* Whether prompts' fp32 products (fp32 or widened bf16 tiles, a prompt's
 * attention) run on pk_f32_product's AVX-512 panels here, rather than
 * OpenBLAS sgemm (pk_force_generic sends the tiles' products to the AVX2
 * kernels, pk_float_prompts, or with the portable loops to sgemm). And
 * whether pk_f32_product runs here at all: the AVX-512 panels, or its
 * AVX2 kernel where the tiles take theirs (pk_f32_products; a prompt's
 * attention takes it, else sgemm). Either computes
 *   out (R, ldo)[:, 0..n) (+)= alpha * x (R, K; ldx apart) @ w (K, n; ldw apart),
 * each sum in input order with one fma per input, then + bias[0..n) where
 * bias is given: the same bits on both; any n (no column past n is read). */
int pk_f32_prompts(void);
int pk_f32_products(void);
void pk_f32_product(const float *w, size_t ldw, int K, const float *x, size_t ldx, int R, float alpha,
                    float *out, int ldo, int n, int accumulate, const float *bias);

/* Whether vdpbf16ps does more multiply-adds a second than fp32 fmas here
 * (timed once): then bf16 prompts take bf16 activations, else fp32 ones
 * against widened tiles. 0 without AVX-512 BF16. */
int pk_bf16_dp_faster(void);

/* Whether the int8 product runs on AVX-512 VNNI here (else AVX-VNNI, else
 * AVX2 where present, else portable loops). For the unit test, which
 * compares them: pk_force_generic 1 makes pk_matmul use the portable
 * loops, 2 the AVX2 kernels, 4 those with AVX-VNNI's int8 kernel where the
 * CPU has it (GPT2_CPU_ISA=portable|avx2|avxvnni). pk_forced_avx2: 2 or 4,
 * the kernels of a CPU with AVX2 and no AVX-512. */
int pk_vnni(void);
extern int pk_force_generic;
int pk_forced_avx2(void);

/* Whether prompts' int8 and bf16 products (whole blocks of 16 rows) run on AMX
 * tiles here (amx.h): AMX_HW where the CPU has AMX and the kernel grants
 * it, unless pk_amx_off (GPT2_CPU_AMX=0) or a path is forced; AMX_EMU, the
 * same kernels with the tile instructions done in C, when pk_force_generic
 * is 3 (the unit test, on a CPU with AVX-512 VNNI and BF16); else 0. */
int pk_amx(void);
extern int pk_amx_off;
/* Whether the products that stream packed tiles (decode, short prompts)
 * fetch their weights ahead with prefetch instructions (packed.c says when
 * that paid and when it cost): set by pk_prefetch_init from the CPU's
 * vendor (Intel: yes; AMD without AVX-512: bf16's 3-row passes only), or
 * GPT2_CPU_PREFETCH=0|1 (all or none); nonzero before it. */
extern int pk_prefetch;
void pk_prefetch_init(void);
/* Which streaming kernels fetch ahead, in words: "yes", "no" or which. */
const char *pk_prefetch_what(void);

/* The kernels products of format fmt take here, as status reports them:
 * "amx-int8" or "amx-bf16" (prompts; decode on AVX-512), "avx512-vnni",
 * "avx512-bf16", "avx512", "avx-vnni" (int8), "avx2" (int4 everywhere
 * AVX2 is) or "portable". */
const char *pk_kernels(int fmt);

/* Whether int8 prompts should read the packed tiles (VNNI or AVX2 here),
 * rather than widening them for sgemm (the portable loops). */
int pk_i8_prompts(void);

/* Whether pk_matmul reads p's fp32 or bf16 tiles as they lie for a prompt's
 * rows at near the fmas' peak (the AVX2 kernels, where there are no
 * AVX-512 panels); else a prompt's float products go to sgemm. */
int pk_float_prompts(const pmat *p);

/* Whether bf16 products can take bf16 activations (AVX-512 BF16) here. */
int pk_bf16_dp(void);

/* bf16 tiles built at run time (a prompt's attention), only where
 * pk_bf16_dp(). A tile is P pairs of inputs by PK_TILE columns in the bf16
 * layout: word (i, c) holds column c's inputs 2i and 2i+1.
 *   pk_bf16_values  n positions of PK_TILE floats each as one tile of
 *                   ceil(n / 2) pairs (positions are inputs, a zero one
 *                   after an odd n);
 *   pk_bf16_pairs   a row of n floats as ceil(n / 2) pairs (a zero after an
 *                   odd n), nearest-even as vcvtneps2bf16;
 *   pk_bf16_product out (R, ldo)[:, 0..n) (+)= x (R rows of P pairs, ldx
 *                   words apart) @ tile, summed in fp32. */
void pk_bf16_values(uint32_t *dst, const float *v, int n);
void pk_bf16_pairs(uint32_t *d, const float *x, int n);
void pk_bf16_product(const uint32_t *tile, int P, const uint32_t *x, size_t ldx, int R, float *out,
                     int ldo, int n, int accumulate);

#endif

/* amx.h - prompts' int8 and bf16 products on AMX tiles (Intel Xeons from
 * Sapphire Rapids on), reading the tiles packed.c lays out as they are.
 *
 * A tile multiply takes 16 rows of activations (the A tile: 64 bytes a
 * row), 16 quads or pairs of inputs for 16 columns (the B tile: our packed
 * layout's 256-byte stride, 64 bytes at a time) and adds into 16 x 16 int32
 * or fp32 sums (the C tile), in one instruction of 16 x 16 x 64 int8 or
 * 16 x 16 x 32 bf16 multiply-adds.
 *   int8: tdpbsud (signed activations, unsigned stored weights), one group
 *         of PK_GROUP inputs per multiply: the group's int32 sums go through
 *         memory to the same rescale the VNNI kernel does (-128 * sum(x),
 *         then an fma by weight scale x activation scale onto fp32 sums), in
 *         the same order, so the results are VNNI's bit for bit.
 *   bf16: tdpbf16ps over every pair of inputs into fp32 tiles.
 *
 * Each call does 1 to 32 rows by one packed tile (PK_TILE columns): up to
 * 16 as one block of tiles, 17 to 32 as two, the last block's tiles
 * configured with the rows it has. mode AMX_HW runs the
 * instructions (amx_usable() must hold); AMX_EMU runs the same code with
 * each tile instruction done in C on a per-thread array of tiles, so that
 * machines without AMX test the layout, the blocking and the rescale. */
#ifndef GPT2_AMX_H
#define GPT2_AMX_H

#include <stddef.h>
#include <stdint.h>

enum { AMX_HW = 1, AMX_EMU = 2 };

#define AMX_ROWS 16

/* AMX-TILE, -INT8 and -BF16 in CPUID, and the tile state granted by the
 * kernel (arch_prctl ARCH_REQ_XCOMP_PERM, Linux 5.16+); asked once. */
int amx_usable(void);

/* M = 1..32 rows a call (amx_pair_rows below). flags:
 *   AMX_STREAM  no other call reads tile tp (the caller's rows fit one
 *               call): the call fetches its weights ahead from memory;
 *   AMX_HOLD    the tiles stay configured after the call, for the caller's
 *               next ones, until amx_release(): configuring and releasing
 *               them around each 32-row call of a 512-row prompt took 11% of
 *               the products' time (one thread, K = 768). */
enum { AMX_STREAM = 1, AMX_HOLD = 2 };

/* out (M rows, ldo)[0..n) (+)= the M rows' int8 activations (q: row r's
 * group g at q + r * ldq + g * PK_GROUP; sum and scale: row r's group g at
 * [r * lds + g]) times the int8 tile tp of G groups, then + bias[0..n)
 * where bias is given. */
void amx_i8_rows(int mode, int M, const unsigned char *tp, int G, float unscale, const int8_t *q,
                 size_t ldq, const int32_t *sum, const float *scale, size_t lds, float *out, int ldo,
                 int n, int accumulate, const float *bias, int flags);

/* out (M rows, ldo)[0..n) (+)= M rows of P bf16 pairs (ldx words apart)
 * times the bf16 tile tp (P pairs of inputs), then + bias as above. */
void amx_bf16_rows(int mode, int M, const unsigned char *tp, int P, const uint32_t *x, size_t ldx,
                   float *out, int ldo, int n, int accumulate, const float *bias, int flags);

/* Whether callers give up to 32 rows a call where they have more than 16
 * (2 x 2 tiles of sums), else up to 16 (1 x 4); 1 by default, 0 for the
 * bench's comparison. */
extern int amx_pair_rows;

/* Gives back this thread's tiles if an AMX_HOLD call left them configured
 * (else nothing), so that the thread holds no AMX state between products. */
void amx_release(void);

#endif

/* tokenizer.h - GPT-2 byte-level BPE (vocab.json + merges.txt), exactly as
 * OpenAI's encoder and Hugging Face's GPT2Tokenizer compute it.
 *
 * Text is split by GPT-2's pre-tokenizer regex (PCRE2, UTF + UCP, JIT), each
 * piece's bytes start as single-byte tokens and are merged by merge rank.
 * "<|endoftext|>" inside text is ordinary text. Invalid UTF-8 in the input is
 * replaced by U+FFFD first (as Python's errors="replace" does).
 *
 * A tokenizer is not thread-safe (it owns a match buffer and a word cache):
 * one thread uses it at a time.
 */
#ifndef GPT2_TOKENIZER_H
#define GPT2_TOKENIZER_H

#include "common.h"

typedef struct tokenizer tokenizer;

/* Load from the two files. NULL with err naming the file and line on error. */
tokenizer *tok_load(const char *vocab_path, const char *merges_path, char *err);
void tok_free(tokenizer *t);

/* Number of ids the vocabulary defines (max id + 1). */
int tok_vocab_size(const tokenizer *t);

/* Id of an exact vocabulary entry given as raw bytes, or -1. */
int tok_lookup(const tokenizer *t, const char *bytes, size_t n);

/* Append the ids of text[0..len) to *ids (grown with realloc; *n, *cap
 * updated). Returns 0, or -1 with err set (out of memory only). */
int tok_encode(tokenizer *t, const char *text, size_t len, int **ids, int *n, int *cap,
               char *err);

/* Append the text of ids[0..n) to out as valid UTF-8. Unless `final`, an
 * incomplete UTF-8 sequence at the very end is held back (not emitted), so a
 * streamed prefix never shows half a character; other invalid bytes become
 * U+FFFD. Ids outside the vocabulary decode to nothing. 0, or -1 on OOM. */
int tok_decode(const tokenizer *t, const int *ids, int n, int final, buf_t *out);

/* Raw bytes of one token (may be partial UTF-8); *len set; NULL if unknown. */
const char *tok_piece(const tokenizer *t, int id, int *len);

#endif

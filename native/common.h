/* common.h - small helpers shared by every module of the gpt2 helper.
 *
 * Error convention: functions that can fail take `char *err` (at least
 * ERR_MAX bytes), return -1 (or NULL) on failure and leave one line of
 * human-readable text in err, naming the file and the object involved.
 * Nothing here ever writes to stdout: stdout is the data channel.
 */
#ifndef GPT2_COMMON_H
#define GPT2_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define ERR_MAX 512
#define GPT2_VERSION "0.1.0"

/* Format into err and return -1, so error paths read `return errf(err, ...)`. */
int errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Milliseconds from a monotonic clock. */
double now_ms(void);

/* malloc/calloc that return NULL on overflow of n*size instead of wrapping. */
void *xcalloc(size_t n, size_t size);
void *xmallocarray(size_t n, size_t size);

/* n * size bytes, 64-byte aligned, released with free(). From 4 MiB up the
 * block is 2 MiB-aligned and asked to be backed by transparent huge pages
 * (MADV_HUGEPAGE; this kernel may say no): a stream through weights or a
 * cache then crosses a 4 KiB page, a TLB miss and a stop of the hardware
 * prefetcher, 512 times less often. */
void *xbig_alloc(size_t n, size_t size);

/* Read a whole file (at most max_bytes) into a NUL-terminated buffer owned by
 * the caller. On error returns NULL with err = "PATH: cannot open: reason". */
char *read_file(const char *path, size_t max_bytes, size_t *len, char *err);

/* Growable byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

int buf_append(buf_t *b, const void *data, size_t n); /* 0 ok, -1 no memory */
void buf_free(buf_t *b);

/* ==== UTF-8 ==== */

/* Length of the valid UTF-8 sequence starting at s (at most n bytes), or 0
 * when the bytes there are not a complete, valid sequence. */
int utf8_seq_len(const unsigned char *s, size_t n);

/* 1 when s[0..n) is entirely valid UTF-8 (no overlongs, no surrogates). */
int utf8_valid(const char *s, size_t n);

/* Length of the trailing bytes of s[0..n) that form an incomplete but so far
 * valid UTF-8 sequence (0..3): what a streaming decoder must hold back. */
size_t utf8_incomplete_tail(const char *s, size_t n);

/* Append s[0..n) to out with every invalid sequence replaced by U+FFFD.
 * Returns 0, or -1 when out of memory. */
int utf8_sanitize(buf_t *out, const char *s, size_t n);

#endif

/* common.c - errors, clocks, checked allocation, file reading, UTF-8. */
#define _DEFAULT_SOURCE /* madvise */
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int errf(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err) vsnprintf(err, ERR_MAX, fmt, ap);
    va_end(ap);
    return -1;
}

double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void *xcalloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}

void *xmallocarray(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    size_t total = n * size;
    return malloc(total ? total : 1);
}

void *xbig_alloc(size_t n, size_t size)
{
    const size_t huge = (size_t)2 << 20;
    if (size && n > SIZE_MAX / size) return NULL;
    size_t total = n * size;
    if (total < 2 * huge) return aligned_alloc(64, total ? (total + 63) & ~(size_t)63 : 64);
    if (total > SIZE_MAX - huge) return NULL;
    total = (total + huge - 1) & ~(huge - 1);
    void *p = aligned_alloc(huge, total);
#ifdef MADV_HUGEPAGE
    if (p) madvise(p, total, MADV_HUGEPAGE); /* advice only: a refusal changes nothing */
#endif
    return p;
}

char *read_file(const char *path, size_t max_bytes, size_t *len, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    buf_t b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.len + got > max_bytes) {
            errf(err, "%s: larger than the %zu-byte limit", path, max_bytes);
            goto fail;
        }
        if (buf_append(&b, chunk, got) < 0) {
            errf(err, "%s: out of memory", path);
            goto fail;
        }
    }
    if (ferror(f)) {
        errf(err, "%s: read error: %s", path, strerror(errno));
        goto fail;
    }
    if (buf_append(&b, "", 1) < 0) { /* NUL terminator */
        errf(err, "%s: out of memory", path);
        goto fail;
    }
    fclose(f);
    if (len) *len = b.len - 1;
    return b.p;
fail:
    fclose(f);
    buf_free(&b);
    return NULL;
}

int buf_append(buf_t *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n) {
            if (cap > SIZE_MAX / 2) return -1;
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

void buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ==== UTF-8 ==== */

int utf8_seq_len(const unsigned char *s, size_t n)
{
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c == 0xED) { len = 3; hi = 0x9F; } /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 0;
    if (n < (size_t)len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

int utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int l = utf8_seq_len(u + i, n - i);
        if (!l) return 0;
        i += l;
    }
    return 1;
}

size_t utf8_incomplete_tail(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    /* Look back at most 3 bytes for the lead byte of a cut sequence. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned c = u[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: keep looking */
        int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (need <= (int)back) return 0; /* complete, or ASCII */
        /* A valid prefix is one that some continuation completes. Try the
         * second-byte values that every lead byte accepts at least one of
         * (E0 needs A0.., F0 needs 90.., the rest take 80..). */
        static const unsigned char second[] = {0x80, 0x90, 0xA0};
        for (int k = 0; k < 3; k++) {
            unsigned char tmp[4];
            memcpy(tmp, u + n - back, back);
            for (int i = (int)back; i < need; i++) tmp[i] = i == 1 ? second[k] : 0x80;
            if (utf8_seq_len(tmp, need)) return back;
        }
        return 0;
    }
    return 0;
}

int utf8_sanitize(buf_t *out, const char *s, size_t n)
{
    static const char repl[] = "\xEF\xBF\xBD";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid span */
    while (i < n) {
        int l = utf8_seq_len(u + i, n - i);
        if (l) {
            i += l;
            continue;
        }
        if (buf_append(out, s + run, i - run) < 0) return -1;
        if (buf_append(out, repl, 3) < 0) return -1;
        i++;
        run = i;
    }
    return buf_append(out, s + run, n - run);
}

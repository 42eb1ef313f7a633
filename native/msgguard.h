/* msgguard.h - bounds a msgpack stream before msgpack-c sees it.
 *
 * msgpack-c's unpacker allocates from headers alone (an array header of 2^32
 * elements asks for 2^32 x 24 bytes), so each message is scanned first, as
 * its bytes arrive, by this small resumable state machine. It enforces:
 *   - the whole message is at most max_bytes;
 *   - nesting is at most max_depth containers deep;
 *   - every array/map count and str/bin/ext length fits in the bytes the
 *     message may still have (each element takes at least one byte);
 *   - at most max_bytes / 4 + 64 objects in all (bounds msgpack-c's zone);
 *   - no reserved byte 0xc1.
 * Only a message the guard has seen end is handed to msgpack-c, so what the
 * unpacker allocates is bounded by a small multiple of max_bytes.
 */
#ifndef GPT2_MSGGUARD_H
#define GPT2_MSGGUARD_H

#include <stddef.h>
#include <stdint.h>

#define MG_MAX_DEPTH_LIMIT 32 /* msgpack-c: MSGPACK_EMBED_STACK_SIZE */

typedef struct {
    size_t max_bytes, max_objects;
    int max_depth;
    size_t bytes, objects;   /* of the current message so far */
    uint64_t skip;           /* payload bytes still to pass over */
    unsigned char hdr[9];    /* header bytes gathered so far */
    int hdr_len, hdr_need;
    int depth;
    uint64_t left[MG_MAX_DEPTH_LIMIT + 1]; /* objects still expected per level */
} msgguard;

void mg_init(msgguard *g, size_t max_bytes, int max_depth);

/* Scan p[0..n). Returns the number of bytes consumed: n when the message is
 * still incomplete (*done = 0), or the count up to and including the last
 * byte of a complete message (*done = 1; the guard is then ready for the
 * next one). Returns -1 with a one-line reason in err (ERR_MAX bytes) when
 * the stream breaks a bound or is not msgpack: it cannot be resynchronised. */
long mg_feed(msgguard *g, const char *p, size_t n, int *done, char *err);

#endif

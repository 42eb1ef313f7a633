/* fuzz_msg.c - libFuzzer target for the helper's message decoder: the
 * msgguard pre-scan plus msgpack-c's streaming unpacker, fed the way rpc.c
 * feeds them (bytes in arbitrary chunks). Properties checked:
 *   - nothing crashes, leaks or reads out of bounds (ASan/UBSan);
 *   - every message the guard passes, msgpack-c parses (the guard never
 *     lets through what the parser would reject or over-allocate on).
 * The first input byte picks the chunk size, so the fuzzer also explores
 * how messages straddle reads.
 */
#include "../../native/common.h"
#include "../../native/msgguard.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSG (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t chunk = (size_t)data[0] % 64 + 1;
    data++, size--;
    msgguard g;
    mg_init(&g, MAX_MSG, 16);
    msgpack_unpacker unp;
    if (!msgpack_unpacker_init(&unp, 1024)) return 0;
    char err[ERR_MAX];
    for (size_t off = 0; off < size;) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (!msgpack_unpacker_reserve_buffer(&unp, n)) abort();
        memcpy(msgpack_unpacker_buffer(&unp), data + off, n);
        msgpack_unpacker_buffer_consumed(&unp, n);
        size_t done_at = 0;
        while (done_at < n) {
            int done;
            long k = mg_feed(&g, (const char *)data + off + done_at, n - done_at, &done, err);
            if (k < 0) goto out; /* the helper exits here: stream unusable */
            done_at += (size_t)k;
            if (!done) break;
            msgpack_unpacked msg;
            msgpack_unpacked_init(&msg);
            int rc = msgpack_unpacker_next(&unp, &msg);
            if (rc != MSGPACK_UNPACK_SUCCESS) {
                fprintf(stderr, "guard passed a message msgpack-c rejects (%d)\n", rc);
                abort();
            }
            msgpack_unpacked_destroy(&msg);
        }
        off += n;
    }
out:
    msgpack_unpacker_destroy(&unp);
    return 0;
}

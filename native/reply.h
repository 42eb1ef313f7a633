/* reply.h - packing the helper's outgoing messages (msgpack-c packer into a
 * malloc'd buffer that rpc_send/rpc_post then own).
 *
 * A reply goes to a msgpack-RPC request as [1, msgid, error, result], or, in
 * Neovim mode (the request came as a notification), as the notification
 * [2, "nvim_exec_lua", [handler, [event]]] whose event map carries the
 * client's id and kind = "partial" | "final" | "error".
 */
#ifndef GPT2_REPLY_H
#define GPT2_REPLY_H

#include <msgpack.h>
#include <stdint.h>

#include "generate.h"

typedef struct {
    int notify;          /* Neovim mode */
    uint64_t msgid;      /* request mode */
    int has_id;
    int64_t id;          /* the client's id (notification mode) */
    const char *handler; /* Lua run by nvim_exec_lua with the event as `...` */
} reply_to;

/* What a finished completion reports. */
typedef struct {
    int n;
    char *text[GEN_MAX_N];
    gen_finish finish[GEN_MAX_N];
    const char *model, *device;
    double queue_ms, prefill_ms, decode_ms, total_ms;
    int prompt_tokens, cached_tokens, truncated_tokens, generated_tokens;
    uint64_t seed;
    int from_lru;
} completion;

/* A buffer under construction. */
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} packbuf;

void pb_init(packbuf *b);
/* Hand the bytes over: returns the buffer (caller frees) and its length. */
char *pb_take(packbuf *b, size_t *len);

void pack_str(msgpack_packer *pk, const char *s);
void pack_kv_str(msgpack_packer *pk, const char *k, const char *v);
void pack_kv_int(msgpack_packer *pk, const char *k, int64_t v);
void pack_kv_double(msgpack_packer *pk, const char *k, double v);
void pack_kv_bool(msgpack_packer *pk, const char *k, int v);
void pack_key(msgpack_packer *pk, const char *k);

/* Start a success reply: after this, pack exactly the result object (request
 * mode) or the event's remaining `extra` key/value pairs (Neovim mode: the
 * map already holds id and kind). */
void reply_begin(packbuf *b, const reply_to *to, const char *kind, int extra);

/* Whole messages, ready for rpc_send/rpc_post. */
char *reply_error(const reply_to *to, const char *msg, size_t *len);
char *reply_completion(const reply_to *to, const completion *c, size_t *len);
/* Neovim mode only: the suggestions so far. */
char *reply_partial(const reply_to *to, const char *const *text, const size_t *lens, int n,
                    size_t *len);

#endif

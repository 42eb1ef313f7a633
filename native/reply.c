/* reply.c - see reply.h. */
#include "reply.h"

#include <stdlib.h>
#include <string.h>

void pb_init(packbuf *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

char *pb_take(packbuf *b, size_t *len)
{
    *len = b->sb.size;
    char *p = msgpack_sbuffer_release(&b->sb);
    return p;
}

void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void pack_key(msgpack_packer *pk, const char *k) { pack_str(pk, k); }

void pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    pack_str(pk, k);
    pack_str(pk, v);
}

void pack_kv_int(msgpack_packer *pk, const char *k, int64_t v)
{
    pack_str(pk, k);
    msgpack_pack_int64(pk, v);
}

void pack_kv_double(msgpack_packer *pk, const char *k, double v)
{
    pack_str(pk, k);
    msgpack_pack_double(pk, v);
}

void pack_kv_bool(msgpack_packer *pk, const char *k, int v)
{
    pack_str(pk, k);
    if (v) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

void reply_begin(packbuf *b, const reply_to *to, const char *kind, int extra)
{
    pb_init(b);
    msgpack_packer *pk = &b->pk;
    if (!to->notify) {
        msgpack_pack_array(pk, 4);
        msgpack_pack_int(pk, 1);
        msgpack_pack_uint64(pk, to->msgid);
        msgpack_pack_nil(pk);
        return; /* the caller packs the result */
    }
    msgpack_pack_array(pk, 3);
    msgpack_pack_int(pk, 2);
    pack_str(pk, "nvim_exec_lua");
    msgpack_pack_array(pk, 2);
    pack_str(pk, to->handler);
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 2 + extra);
    pack_key(pk, "id");
    if (to->has_id) msgpack_pack_int64(pk, to->id);
    else msgpack_pack_nil(pk);
    pack_kv_str(pk, "kind", kind);
}

char *reply_error(const reply_to *to, const char *msg, size_t *len)
{
    packbuf b;
    if (to->notify) {
        reply_begin(&b, to, "error", 1);
        pack_kv_str(&b.pk, "error", msg);
    } else {
        pb_init(&b);
        msgpack_pack_array(&b.pk, 4);
        msgpack_pack_int(&b.pk, 1);
        msgpack_pack_uint64(&b.pk, to->msgid);
        pack_str(&b.pk, msg);
        msgpack_pack_nil(&b.pk);
    }
    return pb_take(&b, len);
}

/* The fields of a completion as n key/value pairs (RESULT_FIELDS of them). */
#define RESULT_FIELDS 11
static void pack_fields(msgpack_packer *pk, const completion *c)
{
    pack_key(pk, "suggestions");
    msgpack_pack_array(pk, c->n);
    for (int i = 0; i < c->n; i++) pack_str(pk, c->text[i]);
    pack_key(pk, "finish");
    msgpack_pack_array(pk, c->n);
    for (int i = 0; i < c->n; i++) pack_str(pk, gen_finish_name(c->finish[i]));
    pack_kv_str(pk, "model", c->model);
    pack_kv_str(pk, "device", c->device);
    pack_key(pk, "timings");
    msgpack_pack_map(pk, 4);
    pack_kv_double(pk, "queue_ms", c->queue_ms);
    pack_kv_double(pk, "prefill_ms", c->prefill_ms);
    pack_kv_double(pk, "decode_ms", c->decode_ms);
    pack_kv_double(pk, "total_ms", c->total_ms);
    pack_kv_int(pk, "prompt_tokens", c->prompt_tokens);
    pack_kv_int(pk, "cached_tokens", c->cached_tokens);
    pack_kv_int(pk, "truncated_tokens", c->truncated_tokens);
    pack_kv_int(pk, "generated_tokens", c->generated_tokens);
    pack_kv_int(pk, "seed", (int64_t)c->seed);
    pack_kv_bool(pk, "lru", c->from_lru);
}

char *reply_completion(const reply_to *to, const completion *c, size_t *len)
{
    packbuf b;
    reply_begin(&b, to, "final", RESULT_FIELDS);
    if (!to->notify) msgpack_pack_map(&b.pk, RESULT_FIELDS);
    pack_fields(&b.pk, c);
    return pb_take(&b, len);
}

char *reply_partial(const reply_to *to, const char *const *text, const size_t *lens, int n,
                    size_t *len)
{
    packbuf b;
    reply_begin(&b, to, "partial", 1);
    pack_key(&b.pk, "suggestions");
    msgpack_pack_array(&b.pk, n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_str(&b.pk, lens[i]);
        msgpack_pack_str_body(&b.pk, text[i], lens[i]);
    }
    return pb_take(&b, len);
}

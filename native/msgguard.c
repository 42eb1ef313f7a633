/* msgguard.c - see msgguard.h. */
#include "msgguard.h"
#include "common.h"

#include <string.h>

void mg_init(msgguard *g, size_t max_bytes, int max_depth)
{
    memset(g, 0, sizeof *g);
    g->max_bytes = max_bytes;
    g->max_objects = max_bytes / 4 + 64;
    g->max_depth = max_depth > MG_MAX_DEPTH_LIMIT ? MG_MAX_DEPTH_LIMIT : max_depth;
}

/* Total header length (first byte included) for the first byte c; 0 = bad. */
static int header_len(unsigned char c)
{
    if (c <= 0xbf || c >= 0xe0) return 1; /* fix types */
    static const unsigned char len[0x20] = {
        /* c0 nil */ 1, /* c1 */ 0, 1, 1,       /* c4-c6 bin */ 2, 3, 5,
        /* c7-c9 ext */ 3, 4, 6,                 /* ca, cb float */ 5, 9,
        /* cc-cf uint */ 2, 3, 5, 9,             /* d0-d3 int */ 2, 3, 5, 9,
        /* d4-d8 fixext (type byte) */ 2, 2, 2, 2, 2,
        /* d9-db str */ 2, 3, 5,                 /* dc, dd array */ 3, 5,
        /* de, df map */ 3, 5};
    return len[c - 0xc0];
}

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* A whole header is in g->hdr: account for the object. */
static int object(msgguard *g, char *err)
{
    const unsigned char *h = g->hdr;
    unsigned char c = h[0];
    uint64_t children = 0, payload = 0;
    if (c >= 0x80 && c <= 0x8f) children = 2u * (c & 0x0f);
    else if (c >= 0x90 && c <= 0x9f) children = c & 0x0f;
    else if (c >= 0xa0 && c <= 0xbf) payload = c & 0x1f;
    else if (c >= 0xc4 && c <= 0xc6) payload = be(h + 1, g->hdr_need - 1);
    else if (c >= 0xc7 && c <= 0xc9) payload = be(h + 1, g->hdr_need - 2);
    else if (c >= 0xd4 && c <= 0xd8) payload = 1u << (c - 0xd4);
    else if (c >= 0xd9 && c <= 0xdb) payload = be(h + 1, g->hdr_need - 1);
    else if (c == 0xdc || c == 0xdd) children = be(h + 1, g->hdr_need - 1);
    else if (c == 0xde || c == 0xdf) children = 2 * be(h + 1, g->hdr_need - 1);
    uint64_t room = g->max_bytes - g->bytes; /* bytes the message may still have */
    if (payload > room)
        return errf(err, "msgpack: a %llu-byte string/bin/ext cannot fit in the %zu-byte "
                    "message limit", (unsigned long long)payload, g->max_bytes);
    if (children > room)
        return errf(err, "msgpack: a container of %llu elements cannot fit in the %zu-byte "
                    "message limit", (unsigned long long)children, g->max_bytes);
    if (++g->objects > g->max_objects)
        return errf(err, "msgpack: more than %zu objects in one message", g->max_objects);
    g->skip = payload;
    if (g->depth > 0) g->left[g->depth]--;
    if (children) {
        if (g->depth >= g->max_depth)
            return errf(err, "msgpack: nested deeper than %d levels", g->max_depth);
        g->left[++g->depth] = children;
    }
    return 0;
}

/* After an object and its payload: close finished containers. 1 = message done. */
static int settle(msgguard *g)
{
    while (g->depth > 0 && g->left[g->depth] == 0) g->depth--;
    return g->depth == 0;
}

long mg_feed(msgguard *g, const char *p, size_t n, int *done, char *err)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;
    *done = 0;
    while (i < n) {
        if (g->skip) { /* payload bytes */
            size_t k = n - i < g->skip ? n - i : (size_t)g->skip;
            i += k;
            g->bytes += k;
            g->skip -= k;
        } else {
            if (g->bytes >= g->max_bytes)
                return errf(err, "msgpack: message longer than %zu bytes", g->max_bytes);
            if (g->hdr_len == 0 && !(g->hdr_need = header_len(u[i])))
                return errf(err, "msgpack: reserved byte 0x%02x", u[i]);
            g->hdr[g->hdr_len++] = u[i++];
            g->bytes++;
            if (g->hdr_len < g->hdr_need) continue;
            g->hdr_len = 0;
            if (object(g, err) < 0) return -1;
        }
        if (!g->skip && g->hdr_len == 0 && settle(g)) {
            size_t max_bytes = g->max_bytes;
            int max_depth = g->max_depth;
            mg_init(g, max_bytes, max_depth);
            *done = 1;
            return (long)i;
        }
    }
    return (long)i;
}

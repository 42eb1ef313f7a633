/* tokenizer.c - GPT-2 byte-level BPE; see tokenizer.h for the contract.
 *
 * Internally every token is its raw byte string (vocab.json's keys are
 * mapped back through GPT-2's bytes_to_unicode table at load), and merges are
 * a hash from (left id, right id) to (rank, merged id), so encoding never
 * touches the unicode-escaped form. A word is merged with a min-heap of
 * candidate pairs ordered by (rank, position): O(L log L) even for a hostile
 * megabyte-long "word", and equal to the reference's "merge the lowest-ranked
 * pair everywhere, repeat" because a merge's result only ever takes part in
 * merges of higher rank.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's pre-tokenizer pattern, verbatim. */
static const char PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define CACHE_MAX_WORD 256   /* longer pieces are not cached */
#define CACHE_SLOTS (1 << 16)
#define CACHE_LIMIT (CACHE_SLOTS / 2)

typedef struct {
    uint64_t key; /* left << 32 | right, 0 = empty (id pair (0,0) is stored +1) */
    int rank, merged;
} merge_slot;

typedef struct {
    char *word; /* NULL = empty */
    int len, n_ids;
    int *ids;
} cache_slot;

struct tokenizer {
    int n_vocab;
    char **piece;   /* id -> raw bytes (NULL if the id is unused) */
    int *piece_len;
    int byte_id[256];
    /* bytes -> id, open addressing over ids */
    int *vmap;
    size_t vmap_mask;
    merge_slot *merges;
    size_t merge_mask;
    cache_slot *cache;
    int cache_count;
    pcre2_code *re;
    pcre2_match_data *md;
};

/* ==== Hashing ==== */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int tok_lookup(const tokenizer *t, const char *bytes, size_t n)
{
    for (size_t i = hash_bytes(bytes, n) & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        int id = t->vmap[i];
        if (id < 0) return -1;
        if ((size_t)t->piece_len[id] == n && !memcmp(t->piece[id], bytes, n)) return id;
    }
}

static const merge_slot *merge_find(const tokenizer *t, int a, int b)
{
    uint64_t key = ((uint64_t)a << 32 | (uint32_t)b) + 1;
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        if (t->merges[i].key == key) return &t->merges[i];
        if (!t->merges[i].key) return NULL;
    }
}

/* ==== Loading ==== */

/* GPT-2's bytes_to_unicode, inverted: code point -> byte, -1 if none. */
static void unicode_to_byte(int inv[512])
{
    for (int i = 0; i < 512; i++) inv[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        inv[printable ? b : 256 + n++] = b;
    }
}

/* Decode one vocab key into raw bytes (out must hold strlen(key) bytes). */
static int key_to_bytes(const char *key, const int inv[512], char *out)
{
    const unsigned char *u = (const unsigned char *)key;
    size_t n = strlen(key);
    int o = 0;
    for (size_t i = 0; i < n;) {
        int l = utf8_seq_len(u + i, n - i);
        if (!l) return -1;
        unsigned cp = l == 1 ? u[i] : l == 2 ? (u[i] & 0x1F) << 6 | (u[i + 1] & 0x3F)
                      : 0x10000; /* 3-4 byte code points are outside the table */
        if (cp >= 512 || inv[cp] < 0) return -1;
        out[o++] = (char)inv[cp];
        i += l;
    }
    return o;
}

static int load_vocab(tokenizer *t, const char *path, char *err)
{
    size_t len;
    char *text = read_file(path, 64u << 20, &len, err);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int rc = -1, inv[512];
    unicode_to_byte(inv);
    if (!cJSON_IsObject(root) || !root->child) {
        errf(err, "%s: not valid JSON (expected an object of token -> id)", path);
        goto out;
    }
    int max_id = -1;
    for (cJSON *e = root->child; e; e = e->next) {
        double d = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(d >= 0 && d < (1 << 24)) || d != (int)d) {
            errf(err, "%s: token '%.40s' has an invalid id", path, e->string);
            goto out;
        }
        if ((int)d > max_id) max_id = (int)d;
    }
    t->n_vocab = max_id + 1;
    t->piece = xcalloc(t->n_vocab, sizeof *t->piece);
    t->piece_len = xcalloc(t->n_vocab, sizeof *t->piece_len);
    t->vmap_mask = pow2_at_least(2 * (size_t)t->n_vocab) - 1;
    t->vmap = xmallocarray(t->vmap_mask + 1, sizeof *t->vmap);
    if (!t->piece || !t->piece_len || !t->vmap) {
        errf(err, "%s: out of memory", path);
        goto out;
    }
    memset(t->vmap, -1, (t->vmap_mask + 1) * sizeof *t->vmap);
    for (cJSON *e = root->child; e; e = e->next) {
        int id = (int)e->valuedouble;
        char *bytes = malloc(strlen(e->string) + 1);
        int n = bytes ? key_to_bytes(e->string, inv, bytes) : -1;
        if (n <= 0 || t->piece[id] || tok_lookup(t, bytes, n) >= 0) {
            errf(err, "%s: token '%.40s' (id %d) is %s", path, e->string, id,
                 n <= 0 ? "not in GPT-2's byte alphabet" : "a duplicate");
            free(bytes);
            goto out;
        }
        t->piece[id] = bytes;
        t->piece_len[id] = n;
        size_t i = hash_bytes(bytes, n) & t->vmap_mask;
        while (t->vmap[i] >= 0) i = (i + 1) & t->vmap_mask;
        t->vmap[i] = id;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if ((t->byte_id[b] = tok_lookup(t, &c, 1)) < 0) {
            errf(err, "%s: no token for byte 0x%02x", path, b);
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static int add_merge(tokenizer *t, const int inv[512], const char *line, size_t n, int rank,
                     const char *path, int lineno, char *err)
{
    const char *sp = memchr(line, ' ', n);
    if (!sp || memchr(sp + 1, ' ', line + n - sp - 1))
        return errf(err, "%s: line %d: expected two tokens separated by one space", path, lineno);
    char a[256], b[256], ab[512];
    size_t la = sp - line, lb = line + n - sp - 1;
    if (la == 0 || lb == 0 || la >= sizeof a || lb >= sizeof b)
        return errf(err, "%s: line %d: bad token length", path, lineno);
    memcpy(a, line, la);
    a[la] = 0;
    memcpy(b, sp + 1, lb);
    b[lb] = 0;
    char ra[256], rb[256];
    int na = key_to_bytes(a, inv, ra), nb = key_to_bytes(b, inv, rb);
    int ia = na > 0 ? tok_lookup(t, ra, na) : -1, ib = nb > 0 ? tok_lookup(t, rb, nb) : -1;
    int im = -1;
    if (ia >= 0 && ib >= 0) {
        memcpy(ab, ra, na);
        memcpy(ab + na, rb, nb);
        im = tok_lookup(t, ab, na + nb);
    }
    if (im < 0)
        return errf(err, "%s: line %d: merge '%s %s' is not in the vocabulary", path, lineno,
                    a, b);
    uint64_t key = ((uint64_t)ia << 32 | (uint32_t)ib) + 1;
    size_t i = hash_u64(key) & t->merge_mask;
    while (t->merges[i].key && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
    if (!t->merges[i].key) /* the first (lowest) rank of a repeated pair wins */
        t->merges[i] = (merge_slot){key, rank, im};
    return 0;
}

static int load_merges(tokenizer *t, const char *path, char *err)
{
    size_t len;
    char *text = read_file(path, 64u << 20, &len, err);
    if (!text) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    t->merge_mask = pow2_at_least(2 * lines) - 1;
    t->merges = xcalloc(t->merge_mask + 1, sizeof *t->merges);
    int rc = t->merges ? 0 : errf(err, "%s: out of memory", path);
    int rank = 0, lineno = 0, inv[512];
    unicode_to_byte(inv);
    for (char *p = text; rc == 0 && p < text + len;) {
        char *nl = memchr(p, '\n', text + len - p);
        size_t line_len = nl ? (size_t)(nl - p) : (size_t)(text + len - p), n = line_len;
        lineno++;
        if (n && p[n - 1] == '\r') n--;
        if (n && !(lineno == 1 && !strncmp(p, "#version", 8)))
            rc = add_merge(t, inv, p, n, rank++, path, lineno, err);
        p += line_len + 1;
    }
    free(text);
    return rc;
}

tokenizer *tok_load(const char *vocab_path, const char *merges_path, char *err)
{
    tokenizer *t = xcalloc(1, sizeof *t);
    if (!t) {
        errf(err, "out of memory loading the tokenizer");
        return NULL;
    }
    if (load_vocab(t, vocab_path, err) < 0 || load_merges(t, merges_path, err) < 0) goto fail;
    t->cache = xcalloc(CACHE_SLOTS, sizeof *t->cache);
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP |
                          PCRE2_NO_UTF_CHECK, &ec, &eo, NULL);
    if (!t->cache || !t->re) {
        errf(err, "tokenizer: cannot compile the pre-tokenizer pattern (pcre2 error %d)", ec);
        goto fail;
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!t->md) {
        errf(err, "tokenizer: out of memory");
        goto fail;
    }
    return t;
fail:
    tok_free(t);
    return NULL;
}

static void cache_clear(tokenizer *t)
{
    for (int i = 0; i < CACHE_SLOTS; i++) {
        free(t->cache[i].word);
        free(t->cache[i].ids);
        t->cache[i] = (cache_slot){0};
    }
    t->cache_count = 0;
}

void tok_free(tokenizer *t)
{
    if (!t) return;
    if (t->cache) cache_clear(t);
    free(t->cache);
    for (int i = 0; t->piece && i < t->n_vocab; i++) free(t->piece[i]);
    free(t->piece);
    free(t->piece_len);
    free(t->vmap);
    free(t->merges);
    pcre2_match_data_free(t->md);
    pcre2_code_free(t->re);
    free(t);
}

int tok_vocab_size(const tokenizer *t) { return t->n_vocab; }

const char *tok_piece(const tokenizer *t, int id, int *len)
{
    if (id < 0 || id >= t->n_vocab || !t->piece[id]) return NULL;
    *len = t->piece_len[id];
    return t->piece[id];
}

/* ==== Encoding ==== */

typedef struct {
    int rank, pos, left, right;
} cand;

static int cand_less(const cand *a, const cand *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(cand *h, int *n, cand c)
{
    int i = (*n)++;
    while (i > 0 && cand_less(&c, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, int *n)
{
    cand top = h[0], last = h[--*n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void push_pair(const tokenizer *t, cand *h, int *nh, const int *id, int i, int j)
{
    if (i < 0 || j < 0) return;
    const merge_slot *m = merge_find(t, id[i], id[j]);
    if (m) heap_push(h, nh, (cand){m->rank, i, id[i], id[j]});
}

/* BPE over one pre-tokenized piece; appends ids to out[0..). Returns the
 * number of ids written (<= n), or -1 when out of memory. */
static int bpe_word(const tokenizer *t, const char *w, int n, int *out)
{
    int *id = xmallocarray(n, 3 * sizeof(int));
    cand *h = xmallocarray(n, sizeof *h * 2);
    if (!id || !h) {
        free(id);
        free(h);
        return -1;
    }
    int *prev = id + n, *next = id + 2 * n, nh = 0;
    for (int i = 0; i < n; i++) {
        id[i] = t->byte_id[(unsigned char)w[i]];
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    for (int i = 0; i + 1 < n; i++) push_pair(t, h, &nh, id, i, i + 1);
    while (nh) {
        cand c = heap_pop(h, &nh);
        int j = next[c.pos];
        /* stale: the left symbol was merged away or either side changed */
        if (id[c.pos] != c.left || j < 0 || id[j] != c.right || prev[c.pos] == -2) continue;
        id[c.pos] = merge_find(t, c.left, c.right)->merged;
        prev[j] = -2; /* dead */
        next[c.pos] = next[j];
        if (next[j] >= 0) prev[next[j]] = c.pos;
        push_pair(t, h, &nh, id, prev[c.pos], c.pos);
        push_pair(t, h, &nh, id, c.pos, next[c.pos]);
    }
    int k = 0;
    for (int i = 0; i >= 0; i = next[i]) out[k++] = id[i];
    free(id);
    free(h);
    return k;
}

static cache_slot *cache_find(tokenizer *t, const char *w, int n, int *create)
{
    size_t i = hash_bytes(w, n) & (CACHE_SLOTS - 1);
    for (;; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *s = &t->cache[i];
        if (!s->word) {
            if (!*create) return NULL;
            *create = 1;
            return s;
        }
        if (s->len == n && !memcmp(s->word, w, n)) {
            *create = 0;
            return s;
        }
    }
}

/* Ids of one piece appended to *ids (capacity grown as needed). */
static int encode_piece(tokenizer *t, const char *w, int n, int **ids, int *nid, int *cap)
{
    if (*nid > INT32_MAX - n) return -1;
    if (*nid + n > *cap) {
        int c = *cap ? *cap : 256;
        while (c < *nid + n) c = c > INT32_MAX / 2 ? INT32_MAX : c * 2;
        int *p = realloc(*ids, (size_t)c * sizeof *p);
        if (!p) return -1;
        *ids = p;
        *cap = c;
    }
    int want = n <= CACHE_MAX_WORD;
    cache_slot *s = want ? cache_find(t, w, n, &want) : NULL;
    if (s && !want) { /* hit */
        memcpy(*ids + *nid, s->ids, s->n_ids * sizeof(int));
        *nid += s->n_ids;
        return 0;
    }
    int k = bpe_word(t, w, n, *ids + *nid);
    if (k < 0) return -1;
    if (s) { /* remember it; the cache is simply emptied when half full */
        if (t->cache_count >= CACHE_LIMIT) {
            cache_clear(t);
            int create = 1;
            s = cache_find(t, w, n, &create);
        }
        s->word = malloc(n);
        s->ids = xmallocarray(k, sizeof(int));
        if (s->word && s->ids) {
            memcpy(s->word, w, n);
            memcpy(s->ids, *ids + *nid, k * sizeof(int));
            s->len = n;
            s->n_ids = k;
            t->cache_count++;
        } else {
            free(s->word);
            free(s->ids);
            *s = (cache_slot){0};
        }
    }
    *nid += k;
    return 0;
}

int tok_encode(tokenizer *t, const char *text, size_t len, int **ids, int *n, int *cap,
               char *err)
{
    buf_t clean = {0};
    if (!utf8_valid(text, len)) {
        if (utf8_sanitize(&clean, text, len) < 0) goto oom;
        text = clean.p;
        len = clean.len;
    }
    size_t off = 0;
    while (off < len) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)text, len, off, PCRE2_NO_UTF_CHECK, t->md, NULL);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        /* The pattern's alternatives cover every character, so a match
         * always starts at off; be safe anyway and never lose text. */
        size_t b = rc > 0 ? ov[0] : len, e = rc > 0 ? ov[1] : len;
        if (b > off) e = b, b = off;
        if (e <= b) e = b + 1;
        if (e - b > INT32_MAX / 4) goto oom;
        if (encode_piece(t, text + b, (int)(e - b), ids, n, cap) < 0) goto oom;
        off = e;
    }
    buf_free(&clean);
    return 0;
oom:
    buf_free(&clean);
    return errf(err, "tokenizer: out of memory");
}

/* ==== Decoding ==== */

int tok_decode(const tokenizer *t, const int *ids, int n, int final, buf_t *out)
{
    buf_t raw = {0};
    for (int i = 0; i < n; i++) {
        int len;
        const char *p = tok_piece(t, ids[i], &len);
        if (p && buf_append(&raw, p, len) < 0) {
            buf_free(&raw);
            return -1;
        }
    }
    size_t keep = raw.len - (final ? 0 : utf8_incomplete_tail(raw.p, raw.len));
    int rc = utf8_sanitize(out, raw.p ? raw.p : "", keep);
    buf_free(&raw);
    return rc;
}

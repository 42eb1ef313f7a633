/* model.c - config.json + model.safetensors -> model (see model.h). */
#define _DEFAULT_SOURCE /* madvise */
#include "model.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Drop the whole pages inside [p, p + bytes) of the read-only file mapping
 * from memory; touching them again would read them back from the file. */
static void drop_pages(const void *p, size_t bytes)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p, b = a + bytes;
    a = (a + page - 1) & ~(page - 1);
    b &= ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* ==== config.json ==== */

/* An integer field in [lo, hi]; `def` when absent or null and def >= lo. */
static int cfg_int(const cJSON *root, const char *key, const char *alt, long def, long lo,
                   long hi, int *out, const char *path, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if ((!v || cJSON_IsNull(v)) && alt) v = cJSON_GetObjectItemCaseSensitive(root, alt);
    if (!v || cJSON_IsNull(v)) {
        if (def < lo) return errf(err, "%s: missing '%s'", path, key);
        *out = (int)def;
        return 0;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return errf(err, "%s: '%s' must be a whole number in [%ld, %ld]", path, key, lo, hi);
    *out = (int)d;
    return 0;
}

static int cfg_bool(const cJSON *root, const char *key, int def, int *out, const char *path,
                    char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return errf(err, "%s: '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int cfg_act(const cJSON *root, act_kind *out, const char *path, char *err)
{
    static const struct {
        const char *name;
        act_kind kind;
    } acts[] = {
        {"gelu_new", ACT_GELU_TANH}, {"gelu_fast", ACT_GELU_TANH},
        {"gelu_pytorch_tanh", ACT_GELU_TANH}, {"gelu", ACT_GELU_ERF}, {"relu", ACT_RELU},
        {"quick_gelu", ACT_QUICK_GELU}, {"silu", ACT_SILU}, {"swish", ACT_SILU},
    };
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    *out = ACT_GELU_TANH;
    if (!v || cJSON_IsNull(v)) return 0;
    for (size_t i = 0; cJSON_IsString(v) && i < sizeof acts / sizeof *acts; i++)
        if (!strcmp(v->valuestring, acts[i].name)) {
            *out = acts[i].kind;
            return 0;
        }
    return errf(err, "%s: unsupported activation_function (want gelu_new, gelu, relu, ...)",
                path);
}

int model_read_config(const char *path, model_cfg *c, char *err)
{
    size_t len;
    char *text = read_file(path, 1u << 20, &len, err);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int rc = -1, tie = 1;
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(root)) {
        errf(err, "%s: not valid JSON (expected an object)", path);
        goto out;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && !(cJSON_IsString(mt) && !strcmp(mt->valuestring, "gpt2"))) {
        errf(err, "%s: model_type is not \"gpt2\"", path);
        goto out;
    }
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    c->eps = 1e-5f;
    if (eps && !cJSON_IsNull(eps)) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0 && eps->valuedouble < 1)) {
            errf(err, "%s: 'layer_norm_epsilon' must be a number in (0, 1)", path);
            goto out;
        }
        c->eps = (float)eps->valuedouble;
    }
    if (cfg_int(root, "n_layer", NULL, -1, 1, 1024, &c->n_layer, path, err) ||
        cfg_int(root, "n_embd", NULL, -1, 1, 65536, &c->n_embd, path, err) ||
        cfg_int(root, "n_head", NULL, -1, 1, 4096, &c->n_head, path, err) ||
        cfg_int(root, "n_positions", "n_ctx", -1, 1, 1 << 20, &c->n_ctx, path, err) ||
        cfg_int(root, "vocab_size", NULL, -1, 1, 1 << 24, &c->n_vocab, path, err) ||
        cfg_int(root, "n_inner", NULL, 4L * c->n_embd, 1, 1 << 20, &c->n_inner, path, err) ||
        cfg_int(root, "eos_token_id", NULL, 50256, 0, INT_MAX, &c->eos, path, err) ||
        cfg_bool(root, "scale_attn_weights", 1, &c->scale_attn, path, err) ||
        cfg_bool(root, "scale_attn_by_inverse_layer_idx", 0, &c->scale_inv_layer, path, err) ||
        cfg_bool(root, "tie_word_embeddings", 1, &tie, path, err) ||
        cfg_act(root, &c->act, path, err))
        goto out;
    if (c->n_embd % c->n_head) {
        errf(err, "%s: n_embd (%d) is not divisible by n_head (%d)", path, c->n_embd, c->n_head);
        goto out;
    }
    c->tied = tie;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ==== Weights ==== */

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, u;
    if (exp == 0x1F) {
        u = sign | 0x7F800000 | man << 13; /* inf / nan */
    } else if (exp) {
        u = sign | (exp + 112) << 23 | man << 13;
    } else if (man) { /* subnormal: renormalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        u = sign | (uint32_t)(112 - e) << 23 | (man & 0x3FF) << 13;
    } else {
        u = sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The tensor `name` (with or without the "transformer." prefix) as fp32 of
 * exactly the given shape. */
static const float *weight(model *m, const char *name, int ndim, const int64_t *shape,
                           char *err)
{
    char full[256];
    snprintf(full, sizeof full, "transformer.%s", name);
    const st_tensor *t = st_find(&m->st, full);
    if (!t) t = st_find(&m->st, name);
    if (!t) { /* name it the way this file names its tensors */
        errf(err, "%s: missing tensor '%s'", m->st.path, m->unprefixed ? name : full);
        return NULL;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        errf(err, "%s: tensor '%s': unsupported dtype %s (want F32, F16 or BF16)", m->st.path,
             t->name, st_dtype_name(t->dtype));
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[128], want[128];
        st_shape_str(t->shape, t->ndim, got, sizeof got);
        st_shape_str(shape, ndim, want, sizeof want);
        errf(err, "%s: tensor '%s' has shape %s, expected %s", m->st.path, t->name, got, want);
        return NULL;
    }
    size_t n = (t->end - t->begin) / st_dtype_size(t->dtype);
    m->weight_bytes += n * sizeof(float);
    if (t->dtype == ST_F32 && (uintptr_t)t->data % sizeof(float) == 0) return t->data;
    float *out = xmallocarray(n, sizeof *out);
    void **owned = realloc(m->owned, (m->n_owned + 1) * sizeof *owned);
    if (!out || !owned) {
        free(out);
        if (owned) m->owned = owned;
        errf(err, "%s: out of memory converting '%s'", m->st.path, t->name);
        return NULL;
    }
    m->owned = owned;
    m->owned[m->n_owned++] = out;
    const unsigned char *src = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == ST_F32) {
            memcpy(&out[i], src + 4 * i, 4);
        } else {
            uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
            out[i] = t->dtype == ST_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
    }
    drop_pages(t->data, t->end - t->begin); /* the copy is what is read from now on */
    return out;
}

#define W1(dst, nm, a) \
    if (!((dst) = weight(m, nm, 1, (int64_t[]){a}, err))) return -1
#define W2(dst, nm, a, b) \
    if (!((dst) = weight(m, nm, 2, (int64_t[]){a, b}, err))) return -1

static int load_layer(model *m, int l, char *err)
{
    const model_cfg *c = &m->cfg;
    int64_t C = c->n_embd, I = c->n_inner;
    layer_weights *w = &m->layers[l];
    char n[12][64];
    static const char *const suffix[12] = {
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
        "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
        "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"};
    for (int i = 0; i < 12; i++) snprintf(n[i], sizeof n[i], "h.%d.%s", l, suffix[i]);
    W1(w->ln1_w, n[0], C);
    W1(w->ln1_b, n[1], C);
    W2(w->qkv_w, n[2], C, 3 * C);
    W1(w->qkv_b, n[3], 3 * C);
    W2(w->attn_w, n[4], C, C);
    W1(w->attn_b, n[5], C);
    W1(w->ln2_w, n[6], C);
    W1(w->ln2_b, n[7], C);
    W2(w->fc_w, n[8], C, I);
    W1(w->fc_b, n[9], I);
    W2(w->proj_w, n[10], I, C);
    W1(w->proj_b, n[11], C);
    return 0;
}

static int load_weights(model *m, char *err)
{
    const model_cfg *c = &m->cfg;
    /* OpenAI-converted checkpoints (the hub's gpt2) have no "transformer." */
    m->unprefixed = !st_find(&m->st, "transformer.wte.weight") && st_find(&m->st, "wte.weight");
    W2(m->wte, "wte.weight", c->n_vocab, c->n_embd);
    W2(m->wpe, "wpe.weight", c->n_ctx, c->n_embd);
    W1(m->lnf_w, "ln_f.weight", c->n_embd);
    W1(m->lnf_b, "ln_f.bias", c->n_embd);
    m->lm_head = m->wte; /* tied: a stored lm_head.weight is a copy of wte */
    if (!c->tied) W2(m->lm_head, "lm_head.weight", c->n_vocab, c->n_embd);
    m->layers = xcalloc(c->n_layer, sizeof *m->layers);
    if (!m->layers) return errf(err, "%s: out of memory", m->st.path);
    for (int l = 0; l < c->n_layer; l++)
        if (load_layer(m, l, err) < 0) return -1;
    return 0;
}

/* ==== Model ==== */

static char *path_join(const char *dir, const char *file)
{
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, file);
    return p;
}

model *model_load(const char *dir, char *err)
{
    model *m = xcalloc(1, sizeof *m);
    char *cfg = path_join(dir, "config.json"), *st = path_join(dir, "model.safetensors");
    char *voc = path_join(dir, "vocab.json"), *mer = path_join(dir, "merges.txt");
    if (!m || !cfg || !st || !voc || !mer || !(m->dir = strdup(dir))) {
        errf(err, "out of memory");
        goto fail;
    }
    size_t dl = strlen(m->dir);
    while (dl > 1 && m->dir[dl - 1] == '/') m->dir[--dl] = 0;
    const char *base = strrchr(m->dir, '/');
    if (!(m->name = strdup(base ? base + 1 : m->dir))) goto fail;
    if (model_read_config(cfg, &m->cfg, err) < 0) goto fail;
    if (st_open(&m->st, st, err) < 0) goto fail;
    if (load_weights(m, err) < 0) goto fail;
    if (!(m->tok = tok_load(voc, mer, err))) goto fail;
    if (m->cfg.eos >= m->cfg.n_vocab) m->cfg.eos = -1; /* no end-of-text token */
    free(cfg);
    free(st);
    free(voc);
    free(mer);
    return m;
fail:
    free(cfg);
    free(st);
    free(voc);
    free(mer);
    model_free(m);
    return NULL;
}

/* Give back the memory behind weight *w (n floats) and forget it: a
 * converted copy is freed; a tensor read in place from the mapping has its
 * pages dropped. */
static void release(model *m, const float **w, size_t n)
{
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == *w) {
            free(m->owned[i]);
            m->owned[i] = m->owned[--m->n_owned];
            *w = NULL;
            return;
        }
    drop_pages(*w, n * sizeof(float));
    *w = NULL;
}

void model_release_matrices(model *m)
{
    const model_cfg *c = &m->cfg;
    size_t C = c->n_embd, I = c->n_inner;
    for (int l = 0; l < c->n_layer; l++) {
        layer_weights *w = &m->layers[l];
        release(m, &w->qkv_w, C * 3 * C);
        release(m, &w->attn_w, C * C);
        release(m, &w->fc_w, C * I);
        release(m, &w->proj_w, I * C);
    }
    if (!c->tied) release(m, &m->lm_head, (size_t)c->n_vocab * C);
}

void model_free(model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    st_close(&m->st);
    tok_free(m->tok);
    free(m->dir);
    free(m->name);
    free(m);
}

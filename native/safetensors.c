/* safetensors.c - parse and validate a safetensors file (see safetensors.h).
 *
 * Layout: u64 little-endian N, then N bytes of UTF-8 JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
 * then the data section. Offsets are relative to the data section.
 */
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1}, [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_I16] = {"I16", 2}, [ST_U16] = {"U16", 2}, [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4}, [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4}, [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8}, [ST_C64] = {"C64", 8},
};

const char *st_dtype_name(st_dtype t) { return dtypes[t].name; }
size_t st_dtype_size(st_dtype t) { return dtypes[t].size; }

void st_shape_str(const int64_t *shape, int ndim, char *out, size_t n)
{
    size_t o = 0;
    o += snprintf(out + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += snprintf(out + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n) snprintf(out + o, n - o, "]");
}

/* A JSON number that is a whole number in [0, 2^53]; -1 otherwise. */
static int64_t json_uint(const cJSON *v)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d)) return -1;
    return (int64_t)d;
}

static int parse_entry(st_tensor *t, const cJSON *e, const char *path, char *err)
{
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) ||
        !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return errf(err, "%s: tensor '%s': malformed entry (needs dtype, shape, data_offsets)",
                    path, t->name);
    int k;
    for (k = 0; k < ST_NDTYPES; k++)
        if (!strcmp(dt->valuestring, dtypes[k].name)) break;
    if (k == ST_NDTYPES)
        return errf(err, "%s: tensor '%s': unknown dtype '%.32s'", path, t->name, dt->valuestring);
    t->dtype = (st_dtype)k;
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return errf(err, "%s: tensor '%s': malformed shape (%d dimensions)", path, t->name, nd);
    t->ndim = nd;
    uint64_t elems = 1;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        int64_t d = json_uint(cJSON_GetArrayItem(sh, i));
        if (d < 0) return errf(err, "%s: tensor '%s': malformed shape", path, t->name);
        t->shape[i] = d;
        if (d && elems > UINT64_MAX / (uint64_t)d) overflow = 1;
        elems *= (uint64_t)d;
    }
    int64_t b = json_uint(cJSON_GetArrayItem(off, 0));
    int64_t e2 = json_uint(cJSON_GetArrayItem(off, 1));
    if (b < 0 || e2 < 0)
        return errf(err, "%s: tensor '%s': malformed data_offsets", path, t->name);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e2;
    if (t->begin > t->end)
        return errf(err, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", path,
                    t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
    size_t es = dtypes[k].size;
    if (overflow || elems > UINT64_MAX / es || elems * es != t->end - t->begin) {
        char s[128];
        st_shape_str(t->shape, nd, s, sizeof s);
        return errf(err, "%s: tensor '%s': shape %s x %s (%zu bytes each) does not match its "
                    "byte span of %llu", path, t->name, s, dtypes[k].name, es,
                    (unsigned long long)(t->end - t->begin));
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int by_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Tensors sorted by offset must tile [0, data_len) exactly. */
static int check_layout(st_file *f, uint64_t data_len, char *err)
{
    const st_tensor **ord = xcalloc(f->n, sizeof *ord);
    if (!ord) return errf(err, "%s: out of memory", f->path);
    for (int i = 0; i < f->n; i++) ord[i] = &f->tensors[i];
    qsort(ord, f->n, sizeof *ord, by_offset);
    uint64_t pos = 0;
    int rc = -1;
    for (int i = 0; i < f->n; i++) {
        const st_tensor *t = ord[i];
        if (t->begin != pos && t->end > data_len) {
            errf(err, "%s: tensor '%s': data_offsets [%llu, %llu] out of range (data section "
                 "is %llu bytes)", f->path, t->name, (unsigned long long)t->begin,
                 (unsigned long long)t->end, (unsigned long long)data_len);
            goto out;
        }
        if (t->begin < pos) {
            errf(err, "%s: tensor '%s': data_offsets [%llu, %llu] overlaps tensor '%s'",
                 f->path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                 ord[i - 1]->name);
            goto out;
        }
        if (t->begin > pos) {
            errf(err, "%s: tensor '%s': gap of %llu bytes before its data", f->path, t->name,
                 (unsigned long long)(t->begin - pos));
            goto out;
        }
        pos = t->end;
    }
    if (pos > data_len)
        errf(err, "%s: file truncated: tensors need %llu bytes of data, only %llu present",
             f->path, (unsigned long long)pos, (unsigned long long)data_len);
    else if (pos < data_len)
        errf(err, "%s: %llu trailing bytes after the last tensor", f->path,
             (unsigned long long)(data_len - pos));
    else
        rc = 0;
out:
    free(ord);
    return rc;
}

/* JSON forbids raw control characters inside strings; cJSON lets them by. */
static int raw_control_in_string(const char *s, size_t n)
{
    int in = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (in && c < 0x20) return 1;
        if (in && c == '\\') i++; /* skip the escaped character */
        else if (c == '"') in = !in;
    }
    return 0;
}

static int parse_header(st_file *f, const char *hdr, size_t n, char *err)
{
    if (!utf8_valid(hdr, n)) return errf(err, "%s: header is not valid UTF-8", f->path);
    if (raw_control_in_string(hdr, n))
        return errf(err, "%s: header is not valid JSON (raw control character in a string)",
                    f->path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    int rc = -1;
    if (!root) return errf(err, "%s: header is not valid JSON", f->path);
    for (const char *p = end; p < hdr + n; p++)
        if (!strchr(" \t\r\n", *p)) {
            errf(err, "%s: header is not valid JSON (text after the object)", f->path);
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        errf(err, "%s: header is malformed (not a JSON object)", f->path);
        goto out;
    }
    int cap = cJSON_GetArraySize(root);
    f->tensors = xcalloc(cap, sizeof *f->tensors);
    if (!f->tensors) {
        errf(err, "%s: out of memory", f->path);
        goto out;
    }
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        st_tensor *t = &f->tensors[f->n++];
        t->name = strdup(e->string);
        if (!t->name) {
            errf(err, "%s: out of memory", f->path);
            goto out;
        }
        if (parse_entry(t, e, f->path, err) < 0) goto out;
    }
    /* Sorted by name: duplicates become neighbours and st_find can bsearch. */
    qsort(f->tensors, f->n, sizeof *f->tensors, by_name);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name)) {
            errf(err, "%s: tensor '%s': duplicate name in header", f->path, f->tensors[i].name);
            goto out;
        }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int st_open(st_file *f, const char *path, char *err)
{
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return errf(err, "%s: out of memory", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return errf(err, "%s: cannot open: not a regular file", path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        close(fd);
        return errf(err, "%s: file too short for a safetensors header (%zu bytes)", path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return errf(err, "%s: cannot map: %s", path, strerror(errno));
    }
    const unsigned char *u = f->map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | u[i];
    if (n > ST_MAX_HEADER)
        return errf(err, "%s: header length %llu exceeds the 100 MB limit", path,
                    (unsigned long long)n);
    if (n > f->size - 8)
        return errf(err, "%s: header length %llu runs past the end of the file (%zu bytes)",
                    path, (unsigned long long)n, f->size);
    if (parse_header(f, (const char *)u + 8, n, err) < 0) return -1;
    if (check_layout(f, f->size - 8 - n, err) < 0) return -1;
    for (int i = 0; i < f->n; i++) f->tensors[i].data = u + 8 + n + f->tensors[i].begin;
    return 0;
}

void st_close(st_file *f)
{
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->map) munmap(f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    st_tensor key = {.name = (char *)name};
    return f->n ? bsearch(&key, f->tensors, f->n, sizeof key, by_name) : NULL;
}

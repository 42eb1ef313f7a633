/* safetensors.h - validated, memory-mapped reader for .safetensors files.
 *
 * The file is checked the way the reference implementation checks it before
 * any tensor is handed out: header length bounded and inside the file, header
 * valid UTF-8 JSON, every dtype known, shape x dtype size equal to the byte
 * span, offsets in range, contiguous and non-overlapping, and the data section
 * exactly as long as the tensors need. Tensor data stays in the mapping.
 */
#ifndef GPT2_SAFETENSORS_H
#define GPT2_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER 100000000ULL /* 100 MB, as the reference implementation */

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16,
    ST_BF16, ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64, ST_C64,
    ST_NDTYPES
} st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;   /* byte offsets inside the data section */
    const void *data;      /* points into the mapping */
} st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t size;
    st_tensor *tensors;
    int n;
} st_file;

/* Map and validate `path`. Returns 0, or -1 with one line in err naming the
 * file and (where one is involved) the tensor. st_close frees either way. */
int st_open(st_file *f, const char *path, char *err);
void st_close(st_file *f);

/* The tensor called `name`, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);

const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

/* "[a, b, c]" into out (size n). */
void st_shape_str(const int64_t *shape, int ndim, char *out, size_t n);

#endif

/* gpu.c - find and load the CUDA backend (see gpu.h). */
#define _GNU_SOURCE
#include "gpu.h"
#include "common.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIB_NAME "gpt2-cuda.so"

const gpu_api *gpu_load(char *err)
{
    static const gpu_api *api;
    static char why[ERR_MAX];
    if (api) return api;
    if (why[0]) {
        errf(err, "%s", why);
        return NULL;
    }
    char path[PATH_MAX];
    const char *env = getenv("GPT2_CUDA_LIB");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else { /* beside the executable */
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - sizeof LIB_NAME - 1);
        if (n <= 0) {
            errf(why, "cannot locate the executable to find %s", LIB_NAME);
            return errf(err, "%s", why), NULL;
        }
        path[n] = 0;
        char *slash = strrchr(path, '/');
        snprintf(slash ? slash + 1 : path, sizeof path - (slash ? (size_t)(slash + 1 - path) : 0),
                 "%s", LIB_NAME);
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, sizeof why, "cannot load the CUDA backend: %s", dlerror());
        return errf(err, "%s", why), NULL;
    }
    gpu_api_fn fn = (gpu_api_fn)dlsym(h, GPU_API_SYMBOL);
    const gpu_api *a = fn ? fn() : NULL;
    if (!a || a->version != GPU_API_VERSION) {
        snprintf(why, sizeof why, "%.300s: not a matching gpt2 CUDA backend (rebuild with make)", path);
        dlclose(h);
        return errf(err, "%s", why), NULL;
    }
    return api = a;
}

/* server.h - `gpt2 serve`: msgpack-RPC on stdin/stdout for the editor.
 *
 * Methods (each usable as a request [0, msgid, method, [params]]):
 *   complete {text, n, max_tokens, temperature, top_k, top_p, seed, stop,
 *             model, id, buffer, stream, partial_every}
 *   cancel {id}   status   ping   shutdown
 * `complete` sent as a notification runs in Neovim mode: partial and final
 * results come back as nvim_exec_lua notifications (see reply.h).
 */
#ifndef GPT2_SERVER_H
#define GPT2_SERVER_H

#include <stddef.h>

#include "device.h"

typedef struct {
    const char *const *model_dirs;
    int n_models;
    int threads, queue_cap, cache_slots, lru_size, max_depth;
    size_t max_message;
    const char *lua_handler;
    device_opts device;
} server_opts;

/* Run until stdin ends or `shutdown`. Returns the process exit status: 0 on
 * a clean end, 1 when the input stream broke (its reason on stderr). */
int server_run(const server_opts *o);

#endif

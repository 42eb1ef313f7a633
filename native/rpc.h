/* rpc.h - msgpack-RPC framing over a pair of file descriptors with libuv.
 *
 * The loop thread owns all I/O. Incoming bytes go straight into msgpack-c's
 * streaming unpacker buffer; each message is first bounded by msgguard and
 * only then parsed, and handed to on_msg. Outgoing messages are whole
 * msgpack buffers, each written with one uv_write; other threads queue them
 * with rpc_post (a locked queue plus uv_async_send, whose wake-ups may merge).
 */
#ifndef GPT2_RPC_H
#define GPT2_RPC_H

#include <msgpack.h>
#include <stddef.h>
#include <uv.h>

typedef struct rpc rpc;

typedef struct {
    /* A complete message; valid only during the call. Loop thread. */
    void (*on_msg)(rpc *r, const msgpack_object *msg, void *ud);
    /* Input ended: error is NULL on EOF, else why the stream is unusable
     * (it cannot be resynchronised). Called once. Loop thread. */
    void (*on_end)(rpc *r, const char *error, void *ud);
    void *ud;
} rpc_handlers;

/* Reads in_fd, writes out_fd (pipes or sockets). NULL with err on failure. */
rpc *rpc_new(uv_loop_t *loop, int in_fd, int out_fd, size_t max_msg, int max_depth,
             rpc_handlers h, char *err);

/* Send one message (loop thread). Takes ownership of data (malloc'd). 0, or
 * -1 when the output is closed or broken (data is freed). */
int rpc_send(rpc *r, char *data, size_t len);

/* The same from any thread. */
int rpc_post(rpc *r, char *data, size_t len);

/* Stop reading input (loop thread). */
void rpc_stop_reading(rpc *r);

/* Flush queued output, then close every handle and call done (loop thread).
 * rpc_free after done has run. */
void rpc_close(rpc *r, void (*done)(void *ud));
void rpc_free(rpc *r);

/* Output failed (EPIPE etc.): nothing more can be sent. */
int rpc_broken(const rpc *r);

#endif

/* pool.h - a fixed set of worker threads that stay alive between calls.
 *
 * pool_run hands out task indices 0..ntasks-1 to the workers and the calling
 * thread alike and returns when all are done; no thread is created per call.
 * One caller at a time. When other programs keep the CPUs busy, the runs
 * use fewer threads for a while (pool_threads_now): tasks must not count on
 * every thread taking part.
 */
#ifndef GPT2_POOL_H
#define GPT2_POOL_H

#include <stddef.h>

typedef struct pool pool;
typedef void (*pool_fn)(void *arg, int task, int thread);

/* nthreads counts the caller: 1 means no extra threads. NULL on failure. */
pool *pool_new(int nthreads);
void pool_free(pool *p);
int pool_size(const pool *p);
void pool_run(pool *p, pool_fn fn, void *arg, int ntasks);

/* Bytes a thread will read first in the next run: while thread t waits for
 * the others at the end of this run, it pulls next[t] into its L2 (a decode
 * step's products are bandwidth-bound, so a thread that ends early keeps the
 * memory bus busy instead of spinning). next holds pool_size spans. */
typedef struct {
    const void *at;
    size_t bytes;
} pool_span;
void pool_run_then(pool *p, pool_fn fn, void *arg, int ntasks, const pool_span *next);

/* Threads the runs use now: pool_size, or fewer while other programs keep
 * the CPUs busy (pool.c reads how long its threads waited for a CPU; the
 * caller always counts). GPT2_CPU_ADAPT=0 in the environment keeps every
 * thread. */
int pool_threads_now(const pool *p);
/* Times the pool went below pool_size threads. Any thread may read both. */
unsigned long pool_cuts(const pool *p);
/* For tests: the runs use n threads (1..pool_size) from now on, until the
 * pool's own measurement (if on) changes that. */
void pool_set_threads_now(pool *p, int n);
/* The threads worth running where `active` threads were on a CPU for
 * `share` (0..1) of the time they wanted one: round(active * share),
 * 1..active. */
int pool_share_threads(int active, double share);

/* The CPUs the process may run on (its affinity; online CPUs where that
 * cannot be read), at least 1: the default number of threads. */
int pool_cpu_count(void);

#endif

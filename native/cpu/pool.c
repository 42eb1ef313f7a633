/* pool.c - persistent worker threads (see pool.h).
 *
 * A decode step calls pool_run ~60 times, a few hundred microseconds apart,
 * so waking sleeping threads through a condition variable each time would
 * cost more than the work. Workers therefore spin on an atomic generation
 * counter for a while after each run (SPIN_NS) and only then sleep on the
 * condition variable; the caller spins until every worker has checked in.
 * Tasks are claimed with an atomic counter so uneven tasks balance.
 */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 2000000L /* 2 ms: spans the gaps inside a step, not idle time */
#define PULL_BYTES 512    /* pulled toward L2 per turn of a wait (pool_run_then) */

struct pool {
    int n;                    /* threads including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_ulong gen;         /* bumped per pool_run (release) */
    atomic_int busy;          /* workers still inside the current run */
    atomic_int sleepers;      /* workers blocked on `wake` */
    atomic_int stop;
    pool_fn fn;
    void *arg;
    const pool_span *then;    /* pool_run_then's spans, or NULL */
    int ntasks;
    atomic_int next;
};

typedef struct {
    pool *p;
    int id;
} worker_arg;

static long elapsed_ns(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* One turn of a wait: the next PULL_BYTES of s toward L2 (prefetcht1), or a
 * pause when s is done. */
static inline void wait_turn(pool_span *s)
{
    if (!s->bytes) {
        cpu_relax();
        return;
    }
    size_t n = s->bytes < PULL_BYTES ? s->bytes : PULL_BYTES;
    for (size_t o = 0; o < n; o += 64) __builtin_prefetch((const char *)s->at + o, 0, 2);
    s->at = (const char *)s->at + n;
    s->bytes -= n;
}

static void drain(pool *p, int thread)
{
    for (int t; (t = atomic_fetch_add(&p->next, 1)) < p->ntasks;) p->fn(p->arg, t, thread);
}

/* Wait until gen moves past `seen` (or stop): spin first (pulling s), then sleep. */
static unsigned long wait_gen(pool *p, unsigned long seen, pool_span s)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0;; i++) {
        unsigned long g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop)) return g;
        wait_turn(&s);
        if ((i & 1023) == 1023 && elapsed_ns(&t0) > SPIN_NS) break;
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    unsigned long g;
    while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker(void *a)
{
    worker_arg wa = *(worker_arg *)a;
    free(a);
    pool *p = wa.p;
    unsigned long seen = 0;
    pool_span next = {0};
    for (;;) {
        seen = wait_gen(p, seen, next);
        if (atomic_load(&p->stop)) break;
        drain(p, wa.id);
        next = p->then ? p->then[wa.id] : (pool_span){0}; /* read before the run may end */
        atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release);
    }
    return NULL;
}

pool *pool_new(int nthreads)
{
    pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = nthreads < 1 ? 1 : nthreads;
    p->threads = calloc(p->n, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (worker_arg){p, i};
        if (!wa || pthread_create(&p->threads[i], NULL, worker, wa)) {
            free(wa);
            p->n = i; /* run with the threads we have */
            break;
        }
    }
    return p;
}

void pool_free(pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}

int pool_size(const pool *p) { return p->n; }

void pool_run(pool *p, pool_fn fn, void *arg, int ntasks) { pool_run_then(p, fn, arg, ntasks, NULL); }

void pool_run_then(pool *p, pool_fn fn, void *arg, int ntasks, const pool_span *next)
{
    if (p->n == 1 || ntasks <= 1) {
        for (int t = 0; t < ntasks; t++) fn(arg, t, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->then = next;
    p->ntasks = ntasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->busy, p->n - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, 0);
    pool_span s = next ? next[0] : (pool_span){0};
    for (int i = 0; atomic_load_explicit(&p->busy, memory_order_acquire); i++) {
        wait_turn(&s);
        if ((i & 4095) == 4095) sched_yield(); /* a worker may have been descheduled */
    }
}

/* The CPUs this process may run on (taskset, a container's cpuset): more
 * workers than that would spin against each other. */
int pool_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

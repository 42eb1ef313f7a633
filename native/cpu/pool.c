/* pool.c - persistent worker threads (see pool.h).
 *
 * A decode step calls pool_run ~60 times, a few hundred microseconds apart,
 * so waking sleeping threads through a condition variable each time would
 * cost more than the work. Workers therefore spin on an atomic generation
 * counter for a while after each run (SPIN_NS) and only then sleep on the
 * condition variable; the caller spins until every worker has checked in.
 * Tasks are claimed with an atomic counter so uneven tasks balance.
 *
 * That design assumes each thread has a CPU to itself. When other programs
 * keep CPUs busy (a build, a language server), the scheduler shares them
 * out in slices of milliseconds, and every run then waits for whichever of
 * its threads is off a CPU: on a 2-core Zen 3 with one core busy elsewhere,
 * an int8 typing request took 1.46 s on 2 threads and 0.50 s on 1. So the
 * caller reads what the kernel counts per thread (/proc's schedstat: time
 * on a CPU, and time runnable but waiting for one) over windows of
 * WINDOW_NS of the caller's own: where n threads were on a CPU for a share
 * r of the time they wanted one (a spinning thread wants one; a sleeping
 * one does not, so idle time between requests does not count), other work
 * holds the rest, and the runs go on with round(n * r) threads (the others
 * sleep, `parked`). It probes the full count again after PROBE_MIN,
 * doubling the wait up to PROBE_MAX while the CPUs stay busy. Where
 * schedstat cannot be read, or GPT2_CPU_ADAPT=0, every thread runs. (CPU
 * time against the wall clock alone cannot tell a thread taken off its CPU
 * from one that sleeps.) */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 2000000L /* 2 ms: spans the gaps inside a step, not idle time */
#define PULL_BYTES 512    /* pulled toward L2 per turn of a wait (pool_run_then) */
#define WINDOW_NS 40000000LL   /* the caller's time on or waiting for a CPU a share is measured over */
#define PROBE_MIN 500000000LL  /* after a cut, try every thread again this much later, */
#define PROBE_MAX 8000000000LL /* doubling while the CPUs stay busy, up to this */

/* The run word: the run's number times RUN_ONE plus the threads it uses, so
 * a worker reads both at once. */
#define RUN_ONE 65536UL

struct pool {
    int n;                    /* threads including the caller */
    pthread_t *threads;
    atomic_int *stat_fd;      /* the workers' /proc schedstat, opened by each ([0] unused; -1: none) */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t unpark;    /* parked workers wait for `want` to reach them */
    atomic_ulong gen;         /* the run word, bumped per pool_run (release) */
    atomic_int busy;          /* workers still inside the current run */
    atomic_int sleepers;      /* workers blocked on `wake` */
    atomic_int stop;
    atomic_int want;          /* threads the next runs use, 1..n */
    atomic_ulong cuts;        /* times want went below n */
    pool_fn fn;
    void *arg;
    const pool_span *then;    /* pool_run_then's spans, or NULL */
    int ntasks;
    atomic_int next;
    /* the caller's measurement (its thread alone touches these) */
    int adapt;
    int open, active;         /* a window is open over `active` threads */
    int caller_fd;            /* the calling thread's schedstat, */
    pid_t caller_tid;         /* which thread that is */
    long long decided, probe_wait;
    long long check_at;       /* the wall clock before which the window cannot be over */
    long long (*at0)[2];      /* (n) each thread's time on and waiting for a CPU when the window opened */
    int probing;
};

typedef struct {
    pool *p;
    int id;
} worker_arg;

static long long now_ns(clockid_t c)
{
    struct timespec t;
    if (clock_gettime(c, &t)) return -1;
    return t.tv_sec * 1000000000LL + t.tv_nsec;
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

/* Wait until the run word moves past `seen` (or stop): spin first (pulling
 * s), then sleep. */
static unsigned long wait_gen(pool *p, unsigned long seen, pool_span s)
{
    long long t0 = now_ns(CLOCK_MONOTONIC);
    for (int i = 0;; i++) {
        unsigned long g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop)) return g;
        wait_turn(&s);
        if ((i & 1023) == 1023 && now_ns(CLOCK_MONOTONIC) - t0 > SPIN_NS) break;
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

/* A worker the runs do not use sleeps until `want` takes it in again. */
static void park(pool *p, int id)
{
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->want) <= id && !atomic_load(&p->stop)) pthread_cond_wait(&p->unpark, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void *worker(void *a)
{
    worker_arg wa = *(worker_arg *)a;
    free(a);
    pool *p = wa.p;
    atomic_store(&p->stat_fd[wa.id], open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC));
    unsigned long seen = 0;
    pool_span next = {0};
    for (;;) {
        seen = wait_gen(p, seen, next);
        if (atomic_load(&p->stop)) break;
        next = (pool_span){0};
        if (wa.id >= (int)(seen % RUN_ONE)) { /* this run goes without us: the caller does not wait */
            park(p, wa.id);
            continue;
        }
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
    p->n = nthreads < 1 ? 1 : nthreads > (int)RUN_ONE - 1 ? (int)RUN_ONE - 1 : nthreads;
    p->threads = calloc(p->n, sizeof *p->threads);
    p->stat_fd = calloc(p->n, sizeof *p->stat_fd);
    p->at0 = calloc(p->n, sizeof *p->at0);
    if (!p->threads || !p->stat_fd || !p->at0) {
        free(p->threads), free(p->stat_fd), free(p->at0), free(p);
        return NULL;
    }
    for (int i = 0; i < p->n; i++) atomic_init(&p->stat_fd[i], -2); /* -2: not opened yet */
    p->caller_fd = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->unpark, NULL);
    const char *env = getenv("GPT2_CPU_ADAPT");
    p->adapt = !(env && !strcmp(env, "0"));
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (worker_arg){p, i};
        if (!wa || pthread_create(&p->threads[i], NULL, worker, wa)) {
            free(wa);
            p->n = i; /* run with the threads we have */
            break;
        }
    }
    atomic_store(&p->want, p->n);
    return p;
}

void pool_free(pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_cond_broadcast(&p->unpark);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) {
        pthread_join(p->threads[i], NULL);
        if (atomic_load(&p->stat_fd[i]) >= 0) close(atomic_load(&p->stat_fd[i]));
    }
    if (p->caller_fd >= 0) close(p->caller_fd);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->unpark);
    free(p->threads);
    free(p->stat_fd);
    free(p->at0);
    free(p);
}

int pool_size(const pool *p) { return p->n; }

int pool_threads_now(const pool *p) { return atomic_load(&((pool *)p)->want); }

unsigned long pool_cuts(const pool *p) { return atomic_load(&((pool *)p)->cuts); }

int pool_share_threads(int active, double share)
{
    int t = (int)(active * share + 0.5);
    return t < 1 ? 1 : t > active ? active : t;
}

/* A thread's time on a CPU and runnable but waiting for one, in ns, from
 * its schedstat (fd); -1 if unreadable. */
static int sched_times(int fd, long long t[2])
{
    char buf[96];
    ssize_t n = fd < 0 ? -1 : pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    return sscanf(buf, "%lld %lld", &t[0], &t[1]) == 2 ? 0 : -1;
}

/* Whether the calling thread's schedstat is open (the caller may change
 * between windows: one at a time, not always the same thread). */
static int caller_fd(pool *p)
{
    pid_t tid = gettid();
    if (p->caller_fd >= 0 && tid == p->caller_tid) return 1;
    if (p->caller_fd >= 0) close(p->caller_fd);
    p->caller_tid = tid;
    p->caller_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (p->caller_fd < 0) p->adapt = 0; /* no schedstat here: every thread, always */
    return p->caller_fd >= 0;
}

/* Thread i's schedstat (0: the window's caller). */
static int thread_fd(pool *p, int i) { return i ? atomic_load(&p->stat_fd[i]) : p->caller_fd; }

static void set_want(pool *p, int want)
{
    int was = atomic_load(&p->want);
    if (want == was) return;
    if (want < p->n && was == p->n) atomic_fetch_add(&p->cuts, 1);
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->want, want);
    if (want > was) pthread_cond_broadcast(&p->unpark);
    pthread_mutex_unlock(&p->mu);
}

void pool_set_threads_now(pool *p, int n) { set_want(p, n < 1 ? 1 : n > p->n ? p->n : n); }

/* Before a run: a probe when it is due; a window opens where none is (or
 * the threads taking part changed). */
static void adapt_begin(pool *p)
{
    int want = atomic_load(&p->want);
    if (want < p->n && !p->probing && now_ns(CLOCK_MONOTONIC) - p->decided >= p->probe_wait) {
        p->probing = 1; /* the whole count again for a window */
        set_want(p, want = p->n);
        p->open = 0;
    }
    if (p->open && p->active == want) return;
    p->open = 0;
    if (!caller_fd(p)) return;
    p->active = want;
    for (int i = 0; i < want; i++)
        if (sched_times(thread_fd(p, i), p->at0[i]) < 0) {
            if (i && atomic_load(&p->stat_fd[i]) == -1) p->adapt = 0; /* no schedstat here */
            return; /* (-2: that worker has not opened its own yet) */
        }
    p->open = 1;
    p->check_at = now_ns(CLOCK_MONOTONIC) + WINDOW_NS;
}

/* After a run: at a window's end, the share of the time the active threads
 * wanted a CPU that they were on one, and how many threads that is worth. */
static void adapt_end(pool *p)
{
    long long t[2], now = now_ns(CLOCK_MONOTONIC);
    if (!p->open || now < p->check_at) return; /* a clock read, not a read of schedstat, per run */
    if (sched_times(p->caller_fd, t) < 0) return;
    long long mine = t[0] + t[1] - p->at0[0][0] - p->at0[0][1];
    if (mine < WINDOW_NS) { /* it slept in between: not before it could have wanted the rest */
        p->check_at = now + WINDOW_NS - mine;
        return;
    }
    p->open = 0;
    if (gettid() != p->caller_tid) return; /* another thread calls now: its window is next */
    long long on = t[0] - p->at0[0][0], wanted = mine;
    for (int i = 1; i < p->active; i++) {
        if (sched_times(thread_fd(p, i), t) < 0) return;
        on += t[0] - p->at0[i][0];
        wanted += t[0] + t[1] - p->at0[i][0] - p->at0[i][1];
    }
    int fit = pool_share_threads(p->active, (double)on / (double)wanted);
    if (p->probing) { /* every thread had a window: keep them, or cut again and wait longer */
        p->probing = 0;
        p->decided = now;
        if (fit == p->n) {
            p->probe_wait = PROBE_MIN;
        } else {
            p->probe_wait = p->probe_wait * 2 > PROBE_MAX ? PROBE_MAX : p->probe_wait * 2;
            set_want(p, fit);
        }
    } else if (fit < p->active) {
        if (p->active == p->n) p->probe_wait = PROBE_MIN;
        p->decided = now;
        set_want(p, fit);
    }
}

void pool_run(pool *p, pool_fn fn, void *arg, int ntasks) { pool_run_then(p, fn, arg, ntasks, NULL); }

void pool_run_then(pool *p, pool_fn fn, void *arg, int ntasks, const pool_span *next)
{
    if (p->n == 1 || ntasks <= 1) {
        for (int t = 0; t < ntasks; t++) fn(arg, t, 0);
        return;
    }
    if (p->adapt) adapt_begin(p);
    int act = atomic_load(&p->want);
    if (act == 1) {
        for (int t = 0; t < ntasks; t++) fn(arg, t, 0);
    } else {
        p->fn = fn;
        p->arg = arg;
        p->then = next;
        p->ntasks = ntasks;
        atomic_store(&p->next, 0);
        atomic_store(&p->busy, act - 1);
        unsigned long run = atomic_load(&p->gen) / RUN_ONE + 1;
        atomic_store_explicit(&p->gen, run * RUN_ONE + (unsigned long)act, memory_order_release);
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
    if (p->adapt) adapt_end(p);
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

/* Benchmark of the core's acquire+release cycle against a bare mutex lock/unlock pair (the
 * floor), the same pair with the two clock reads that timing a borrow exactly takes (the
 * floor with exact timing on), and APR's apr_reslist (a peer C pool), in one run, reported
 * as ratios.
 *
 *   bench-core [seconds-per-measurement]      all scenarios (default 0.3 s each, best of 5 rounds)
 *   bench-core --cycles leash|apr|mutex N     N uncontended cycles only, for callgrind
 *                                             (tests/bench/callgrind-core.sh) */
#include <leash/leash.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#ifdef HAVE_APR
#include <apr_pools.h>
#include <apr_reslist.h>
#endif

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A pool of nothing: the cheapest adapter, so only the pool is measured. */
static void *b_connect(void *ctx, const char *t, char *err, size_t n)
{
    (void)ctx, (void)t, (void)err, (void)n;
    return malloc(16);
}
static void b_destroy(void *ctx, void *c)
{
    (void)ctx;
    free(c);
}
static const leash_adapter bench_adapter = {
    .kind = "bench", .connect = b_connect, .destroy = b_destroy};
/* The same with a reset that finds nothing to clean, as every real adapter has one: what a
 * release pays for calling it. */
static int b_reset(void *ctx, void *c)
{
    (void)ctx, (void)c;
    return LEASH_RESET_CLEAN;
}
static const leash_adapter bench_adapter_reset = {
    .kind = "bench", .connect = b_connect, .destroy = b_destroy, .reset = b_reset};

#ifdef HAVE_APR
static apr_status_t r_make(void **res, void *params, apr_pool_t *pool)
{
    (void)params, (void)pool;
    *res = malloc(16);
    return APR_SUCCESS;
}
static apr_status_t r_free(void *res, void *params, apr_pool_t *pool)
{
    (void)params, (void)pool;
    free(res);
    return APR_SUCCESS;
}
#endif

/* The clock leash times borrows with: the time-stamp counter on x86 (unless
 * LEASH_CLOCK=monotonic), else CLOCK_MONOTONIC. */
static int use_tsc;
static inline uint64_t exact_clock(void)
{
#if defined(__x86_64__) || defined(__i386__)
    if (use_tsc)
        return __rdtsc();
#endif
    return now_ns();
}

enum impl { MUTEX, TIMED, LEASH, LEASH_RESET, APR, NIMPL };
static const char *impl_name[] = {"mutex pair", "mutex pair + 2 clock reads", "leash",
                                  "leash, adapter with a reset", "apr_reslist"};

struct run {
    enum impl impl;
    int threads;
    double seconds;
    leash_pool *pool;
    pthread_mutex_t *mutex;
#ifdef HAVE_APR
    apr_reslist_t *rl;
#endif
    _Atomic int go, stop;
    _Atomic uint64_t cycles;
};

/* Kept out of line so callgrind can count exactly these. */
__attribute__((noinline)) void cycles_leash(leash_pool *p, long n);
__attribute__((noinline)) void cycles_mutex(pthread_mutex_t *m, long n);
__attribute__((noinline)) void cycles_timed(pthread_mutex_t *m, long n);
__attribute__((noinline)) void cycles_leash(leash_pool *p, long n)
{
    for (long i = 0; i < n; i++) {
        leash_handle *h = leash_acquire(p);
        leash_release(&h);
    }
}
void cycles_mutex(pthread_mutex_t *m, long n)
{
    for (long i = 0; i < n; i++) {
        pthread_mutex_lock(m);
        __asm__ volatile("" ::: "memory");
        pthread_mutex_unlock(m);
    }
}
/* What any pool that times each borrow exactly pays at least: a lock/unlock pair, the clock
 * read when the borrow starts (stored, as a borrow record would), and the one when it ends
 * (the hold added to a total). */
void cycles_timed(pthread_mutex_t *m, long n)
{
    static _Thread_local volatile uint64_t since, hold_total;
    for (long i = 0; i < n; i++) {
        pthread_mutex_lock(m);
        since = exact_clock();
        pthread_mutex_unlock(m);
        hold_total += exact_clock() - since;
    }
}
#ifdef HAVE_APR
__attribute__((noinline)) void cycles_apr(apr_reslist_t *rl, long n);
void cycles_apr(apr_reslist_t *rl, long n)
{
    for (long i = 0; i < n; i++) {
        void *r;
        apr_reslist_acquire(rl, &r);
        apr_reslist_release(rl, r);
    }
}
#endif

static void *worker(void *v)
{
    struct run *r = v;
    while (!atomic_load(&r->go))
        ;
    uint64_t n = 0;
    while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
        switch (r->impl) {
        case MUTEX:
            cycles_mutex(r->mutex, 256);
            break;
        case TIMED:
            cycles_timed(r->mutex, 256);
            break;
        case LEASH:
        case LEASH_RESET:
            cycles_leash(r->pool, 256);
            break;
        case APR:
#ifdef HAVE_APR
            cycles_apr(r->rl, 256);
#endif
            break;
        case NIMPL:
            break;
        }
        n += 256;
    }
    atomic_fetch_add(&r->cycles, n);
    return NULL;
}

/* ns per cycle per thread... reported as wall ns per cycle across all threads. */
static double measure(enum impl impl, int threads, int pool_size, double seconds)
{
    struct run r = {.impl = impl, .threads = threads, .seconds = seconds};
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    r.mutex = &m;
    char name[64];
    static int seq;
    snprintf(name, sizeof name, "bench-%d", seq++);
    if (impl == LEASH || impl == LEASH_RESET) {
        leash_pool_options o = {.max_size = pool_size, .acquire_timeout_ms = 10000};
        r.pool =
            leash_pool_open(name, impl == LEASH ? &bench_adapter : &bench_adapter_reset, "", &o);
        if (!r.pool) {
            fprintf(stderr, "bench: %s\n", leash_last_error());
            exit(1);
        }
    }
#ifdef HAVE_APR
    apr_pool_t *ap = NULL;
    if (impl == APR) {
        apr_pool_create(&ap, NULL);
        apr_reslist_create(&r.rl, 0, pool_size, pool_size, 0, r_make, r_free, NULL, ap);
    }
#endif
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, &r);
    uint64_t t0 = now_ns();
    atomic_store(&r.go, 1);
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&r.stop, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    uint64_t el = now_ns() - t0;
    if (impl == LEASH || impl == LEASH_RESET)
        leash_pool_close(r.pool);
#ifdef HAVE_APR
    if (impl == APR) {
        apr_reslist_destroy(r.rl);
        apr_pool_destroy(ap);
    }
#endif
    return (double)el / (double)atomic_load(&r.cycles);
}

/* The best (lowest) of ROUNDS measurements of each implementation, taken in turns: each round
 * measures every implementation once, so a slow phase of the machine hits them all alike
 * instead of all the runs of one. */
#define ROUNDS 5
static void best_of(int threads, int pool_size, double seconds, double best[NIMPL])
{
    for (int k = 0; k < NIMPL; k++)
        best[k] = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < NIMPL; k++) {
#ifndef HAVE_APR
            if (k == APR)
                continue;
#endif
            if ((k == TIMED || k == LEASH_RESET) && threads > 1)
                continue; /* uncontended questions */
            double v = measure((enum impl)k, threads, pool_size, seconds);
            if (best[k] == 0 || v < best[k])
                best[k] = v;
        }
    }
}

int main(int argc, char **argv)
{
#ifdef HAVE_APR
    apr_initialize();
#endif
    leash_init(&(leash_config){.strict = 0, .stats_signal = 0, .stats_fd = -1});
    const char *lc = getenv("LEASH_CLOCK");
    use_tsc = !(lc && strcmp(lc, "monotonic") == 0);
    if (argc == 4 && strcmp(argv[1], "--cycles") == 0) {
        long n = atol(argv[3]);
        if (strcmp(argv[2], "leash") == 0) {
            leash_pool *p = leash_pool_open("cg", &bench_adapter, "", NULL);
            cycles_leash(p, 1); /* connect outside the counted loop */
            cycles_leash(p, n);
        } else if (strcmp(argv[2], "mutex") == 0) {
            pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
            cycles_mutex(&m, n);
        } else if (strcmp(argv[2], "timed") == 0) {
            pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
            cycles_timed(&m, n);
#ifdef HAVE_APR
        } else if (strcmp(argv[2], "apr") == 0) {
            apr_pool_t *ap;
            apr_reslist_t *rl;
            apr_pool_create(&ap, NULL);
            apr_reslist_create(&rl, 0, 8, 8, 0, r_make, r_free, NULL, ap);
            cycles_apr(rl, 1);
            cycles_apr(rl, n);
#endif
        } else {
            fprintf(stderr, "unknown implementation %s\n", argv[2]);
            return 2;
        }
        leash_shutdown();
        return 0;
    }
    double secs = argc > 1 ? atof(argv[1]) : 0.3;
    if (secs <= 0)
        secs = 0.3;
    static const struct {
        const char *what;
        int threads, pool;
    } sc[] = {
        {"uncontended, 1 thread, pool of 8", 1, 8},
        {"4 threads on a pool of 2", 4, 2},
        {"8 threads on a pool of 8", 8, 8},
    };
    printf("leash core benchmark: acquire+release cycle, wall ns per cycle (best of %d rounds of "
           "%.2fs,\nthe implementations measured in turns within each round)\n",
           ROUNDS, secs);
    int ok = 1;
    for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++) {
        double v[NIMPL];
        best_of(sc[i].threads, sc[i].pool, secs, v);
        printf("\n%s\n", sc[i].what);
        for (int k = 0; k < NIMPL; k++)
            if (v[k] > 0)
                printf("  %-28s %7.1f ns\n", impl_name[k], v[k]);
        printf("  leash / mutex pair          = %.2fx\n", v[LEASH] / v[MUTEX]);
        if (i == 0) {
            /* Uncontended, leash times every borrow exactly: two reads of the clock, which
             * no code around them can make cheaper. The target is 3x the mutex pair where the
             * clock leaves room for it; where two reads alone come near that (a fast mutex, a
             * slow time-stamp counter), it is 1.15x the mutex pair with the two reads: the
             * margin 3x leaves where the target was set (mutex pair 13 ns, clock read
             * 10.6 ns: 39 / 34.2 = 1.14). */
            double floor = v[TIMED], target = 3 * v[MUTEX];
            int by_floor = 1.15 * floor > target;
            if (by_floor)
                target = 1.15 * floor;
            printf("  leash / (mutex pair + 2 clock reads) = %.2fx (with a reset: %.2fx)\n",
                   v[LEASH] / floor, v[LEASH_RESET] / floor);
            printf("  (two clock reads alone take the mutex pair to %.2fx)\n", floor / v[MUTEX]);
            printf("  target: leash (either adapter) within %.1f ns = %s\n", target,
                   by_floor ? "1.15x the mutex pair + 2 clock reads (3x the mutex pair is "
                              "below what two clock reads cost here)"
                            : "3x the mutex pair");
            if (v[LEASH] > target || v[LEASH_RESET] > target)
                ok = 0;
        }
        if (v[APR] > 0) {
            printf("  apr_reslist / leash         = %.2fx   (target: at least 1x)\n",
                   v[APR] / v[LEASH]);
            if (v[APR] / v[LEASH] < 1)
                ok = 0;
        }
    }
    printf("\ntargets %s\n", ok ? "met" : "NOT met");
    leash_shutdown();
#ifdef HAVE_APR
    apr_terminate();
#endif
    return 0;
}

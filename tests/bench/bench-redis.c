/* Benchmark: GET of a small value from redis-server through a leash pool, against one reused
 * hiredis connection per thread (the limit) and a new connection per request, 1 and 4 threads. */
#include <leash/redis.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* tests/servers.sh start redis; LEASH_BENCH_REDIS_PORT overrides the port. */
#define HOST "127.0.0.1"
#define KEY "leash:bench"
#define VALUE "0123456789abcdef"
#define RUN_MS 2500 /* per thread count: each thread alternates leash and reused batches */
#define BATCH 50
#define FRESH_MS 500
#define MAX_PAIRS 100000

enum mode { LEASH, REUSED, FRESH };

static int port = 16379;
static leash_pool *pool;
static _Atomic long failures;
static double pairs[MAX_PAIRS]; /* leash/reused speed of one pair of batches */
static _Atomic int npairs;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static redisContext *connect_one(void)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout(HOST, port, tv);
    if (!rc || rc->err) {
        fprintf(stderr, "bench-redis: connect to %s:%d: %s\n", HOST, port,
                rc ? rc->errstr : "out of memory");
        exit(1);
    }
    redisSetTimeout(rc, (struct timeval){5, 0});
    return rc;
}

/* One GET in mode m (rc: this thread's reused connection). 1 if it returned the value. */
static int get(enum mode m, redisContext *rc)
{
    redisReply *r;
    if (m == LEASH) {
        leash_handle *h = leash_acquire(pool);
        r = h ? leash_redis_command(h, "GET " KEY) : NULL;
        leash_release(&h);
    } else if (m == REUSED) {
        r = redisCommand(rc, "GET " KEY);
    } else {
        redisContext *f = connect_one();
        r = redisCommand(f, "GET " KEY);
        redisFree(f);
    }
    int ok = r && r->type == REDIS_REPLY_STRING && r->len == sizeof VALUE - 1;
    freeReplyObject(r);
    return ok;
}

struct worker {
    double run_s;
    int fresh_only;
    long ops[3];
    double secs[3];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    redisContext *rc = w->fresh_only ? NULL : connect_one();
    double end = now_s() + w->run_s;
    long pair = 0;
    while (now_s() < end) {
        if (w->fresh_only) {
            double t0 = now_s();
            for (int i = 0; i < BATCH; i++)
                if (!get(FRESH, NULL))
                    atomic_fetch_add(&failures, 1);
            w->secs[FRESH] += now_s() - t0;
            w->ops[FRESH] += BATCH;
            continue;
        }
        /* A pair of batches back to back, so both modes see the same load on the machine;
         * which one goes first alternates from pair to pair. */
        double took[2];
        for (long k = pair; k < pair + 2; k++) {
            enum mode m = k % 2 ? REUSED : LEASH;
            double t0 = now_s();
            for (int i = 0; i < BATCH; i++)
                if (!get(m, rc))
                    atomic_fetch_add(&failures, 1);
            took[m] = now_s() - t0;
            w->secs[m] += took[m];
            w->ops[m] += BATCH;
        }
        pair++;
        int k = atomic_fetch_add(&npairs, 1);
        if (k < MAX_PAIRS)
            pairs[k] = took[REUSED] / took[LEASH];
    }
    redisFree(rc);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs nthreads workers; fills ops/s per mode. */
static void run(int nthreads, int fresh_only, double run_s, double rate[3])
{
    pthread_t t[16];
    struct worker w[16];
    memset(w, 0, sizeof w);
    for (int i = 0; i < nthreads; i++) {
        w[i].run_s = run_s;
        w[i].fresh_only = fresh_only;
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    for (int m = 0; m < 3; m++)
        rate[m] = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(t[i], NULL);
        /* each thread's rate in each mode, summed: the throughput of nthreads threads */
        for (int m = 0; m < 3; m++)
            if (w[i].secs[m] > 0)
                rate[m] += (double)w[i].ops[m] / w[i].secs[m];
    }
}

int main(void)
{
    const char *p = getenv("LEASH_BENCH_REDIS_PORT");
    if (p && *p)
        port = atoi(p);
    redisContext *rc = connect_one();
    freeReplyObject(redisCommand(rc, "SET " KEY " " VALUE));
    redisFree(rc);

    char url[128];
    snprintf(url, sizeof url, "redis://%s:%d", HOST, port);
    printf("bench-redis: GET of a %zu-byte value from %s; batches of %d, leash and reused "
           "alternating in each thread\n",
           sizeof VALUE - 1, url, BATCH);
    printf("%-8s %14s %14s %14s %10s %12s\n", "threads", "leash ops/s", "reused ops/s",
           "fresh ops/s", "leash/ru", "median pair");
    for (int n = 1; n <= 4; n *= 4) {
        leash_pool_options o = {.max_size = n, .acquire_timeout_ms = 5000};
        pool = leash_redis_pool("bench", url, &o);
        if (!pool) {
            fprintf(stderr, "bench-redis: %s\n", leash_last_error());
            return 1;
        }
        atomic_store(&npairs, 0);
        double rate[3], fresh[3];
        run(n, 0, RUN_MS / 1000.0, rate);
        run(n, 1, FRESH_MS / 1000.0, fresh);
        int np = atomic_load(&npairs);
        if (np > MAX_PAIRS)
            np = MAX_PAIRS;
        qsort(pairs, (size_t)np, sizeof *pairs, cmp_double);
        printf("%-8d %14.0f %14.0f %14.0f %10.3f %12.3f\n", n, rate[LEASH], rate[REUSED],
               fresh[FRESH], rate[LEASH] / rate[REUSED], np ? pairs[np / 2] : 0.0);
        leash_pool_stats s;
        leash_pool_stats_get(pool, &s);
        if (s.created != (uint64_t)n && s.created > (uint64_t)n)
            printf("  (pool made %llu connections)\n", (unsigned long long)s.created);
        leash_pool_close(pool);
    }
    long f = atomic_load(&failures);
    if (f)
        printf("failures: %ld\n", f);
    int held = leash_check_leaks(2);
    leash_shutdown();
    return f == 0 && held == 0 ? 0 : 1;
}

/* Benchmark of the PostgreSQL adapter: leash against one reused PGconn per thread (the limit)
 * and connect-per-request, for SELECT 1 and a one-row primary-key read, 1 and 4 threads.
 * Needs the test server (tests/servers.sh start pg). Usage: bench-pg [conninfo] [ms per row];
 * LEASH_BENCH_PG_CONTROL=1 runs the reused path on both sides, to show the noise floor.
 *
 * Fairness: on a 2-core machine the client threads share the cores with the server processes,
 * and which backend serves a request (and where the scheduler puts it) moves throughput by
 * more than the few percent we look for. So each thread alternates short batches of the two
 * modes on the SAME connection: the reused batch holds the pool's connection and calls
 * PQexec/PQexecParams on its PGconn directly (borrowed and returned outside the timed part),
 * the leash batch does acquire + leash_pg_exec/leash_pg_params + release for every request.
 * Which mode goes first alternates, and the headline is the median of the per-pair ratios (as
 * in bench-redis). The client CPU per request (CLOCK_THREAD_CPUTIME_ID) is a second measure
 * that time spent waiting for the server does not dilute. */
#include <leash/pg.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH 8 /* requests per batch; the modes alternate every batch */
#define MAX_PAIRS 200000

enum query { SELECT1, PK_READ };
enum mode { LEASH, REUSED };

static const char *conninfo =
    "host=127.0.0.1 port=15432 dbname=leash user=leash password=leash-pg-pw";
static int run_ms = 2000;
static double pair_wall[MAX_PAIRS];  /* reused time / leash time of one pair of batches */
static double pair_cpu[MAX_PAIRS];   /* leash CPU / reused CPU of one pair */
static double pair_extra[MAX_PAIRS]; /* (leash CPU - reused CPU) per request, ns */
static _Atomic int npairs;
static int control; /* LEASH_BENCH_PG_CONTROL=1: both sides reused, to see the noise floor */

struct run {
    int connect_per_request;
    enum query query;
    leash_pool *pool;
    pthread_barrier_t *start;
    long ops[2];
    double secs[2], cpu[2];
    long other_conn; /* pairs whose two batches did not run on the same pooled connection */
    int failed;
};

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int check(PGresult *r)
{
    int ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    return ok;
}

static PGresult *ask(PGconn *c, enum query q, long i, char *key)
{
    if (q == SELECT1)
        return PQexec(c, "SELECT 1");
    snprintf(key, 16, "%ld", i % 1000 + 1);
    const char *v[] = {key};
    return PQexecParams(c, "SELECT v FROM bench_kv WHERE k = $1", 1, NULL, v, NULL, NULL, 0);
}

static PGresult *ask_leash(leash_handle *h, enum query q, long i, char *key)
{
    if (q == SELECT1)
        return leash_pg_exec(h, "SELECT 1");
    snprintf(key, 16, "%ld", i % 1000 + 1);
    const char *v[] = {key};
    return leash_pg_params(h, "SELECT v FROM bench_kv WHERE k = $1", 1, v);
}

/* One batch in mode m; fills took[m] (wall) and cpu[m] (this thread's CPU) and returns the
 * pooled connection it ran on (leash_conn: a handle value names one borrow, so it differs
 * from batch to batch even on the same connection). */
static const void *batch(struct run *r, enum mode m, long *i, double took[2], double cpu[2])
{
    char key[16];
    const void *slot = NULL;
    leash_handle *h = NULL;
    PGconn *raw = NULL;
    int direct = m == REUSED || control;
    if (direct) { /* borrowed for the whole batch, outside the timed part */
        h = leash_acquire(r->pool);
        raw = leash_pg(h);
        slot = leash_conn(h);
        r->failed = !raw;
    }
    double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    for (int k = 0; k < BATCH && !r->failed; k++, (*i)++) {
        if (direct) {
            r->failed = !check(ask(raw, r->query, *i, key));
            continue;
        }
        leash_handle *lh = leash_acquire(r->pool);
        r->failed = !lh || !check(ask_leash(lh, r->query, *i, key));
        slot = leash_conn(lh);
        leash_release(&lh);
    }
    cpu[m] = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    took[m] = clock_s(CLOCK_MONOTONIC) - w0;
    leash_release(&h);
    r->secs[m] += took[m];
    r->cpu[m] += cpu[m];
    r->ops[m] += BATCH;
    return slot;
}

static void *worker(void *arg)
{
    struct run *r = arg;
    char key[16];
    long i = 0;
    if (!r->connect_per_request) {
        /* Not timed: the pool makes this thread's connection (one connect costs as much as
         * a hundred requests), and all threads start measuring together. */
        leash_handle *h = leash_acquire(r->pool);
        r->failed = !h || !check(ask_leash(h, r->query, i++, key));
        leash_release(&h);
    }
    pthread_barrier_wait(r->start);
    double end = clock_s(CLOCK_MONOTONIC) + run_ms / 1000.0;
    if (r->connect_per_request) {
        double t0 = clock_s(CLOCK_MONOTONIC);
        while (clock_s(CLOCK_MONOTONIC) < end && !r->failed) {
            PGconn *once = PQconnectdb(conninfo);
            r->failed = !check(ask(once, r->query, i++, key));
            PQfinish(once);
            r->ops[REUSED]++;
        }
        r->secs[REUSED] = clock_s(CLOCK_MONOTONIC) - t0;
        return NULL;
    }
    for (long pair = 0; clock_s(CLOCK_MONOTONIC) < end && !r->failed; pair++) {
        double took[2], cpu[2];
        enum mode first = pair % 2 ? REUSED : LEASH; /* alternate which mode goes first */
        const void *c1 = batch(r, first, &i, took, cpu);
        const void *c2 = batch(r, first == LEASH ? REUSED : LEASH, &i, took, cpu);
        if (c1 != c2) {
            r->other_conn++;
            continue;
        }
        int k = atomic_fetch_add(&npairs, 1);
        if (k < MAX_PAIRS) {
            pair_wall[k] = took[REUSED] / took[LEASH];
            pair_cpu[k] = cpu[LEASH] / cpu[REUSED];
            pair_extra[k] = (cpu[LEASH] - cpu[REUSED]) / BATCH * 1e9;
        }
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n ? v[n / 2] : 0.0;
}

/* Mean of the middle 80% of v (sorted by median()): keeps a cost that only some requests
 * pay, drops batches a preemption hit. */
static double trimmed_mean(const double *v, int n)
{
    double sum = 0;
    int from = n / 10, to = n - n / 10;
    for (int k = from; k < to; k++)
        sum += v[k];
    return to > from ? sum / (to - from) : 0.0;
}

/* n threads for run_ms; totals over the threads in sum (rates summed, CPU and pairs added). */
static void measure(int connect_per_request, enum query q, int n, leash_pool *pool, struct run *sum)
{
    pthread_t th[8];
    struct run r[8];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n);
    atomic_store(&npairs, 0);
    for (int i = 0; i < n; i++) {
        r[i] = (struct run){
            .connect_per_request = connect_per_request, .query = q, .pool = pool, .start = &start};
        pthread_create(&th[i], NULL, worker, &r[i]);
    }
    memset(sum, 0, sizeof *sum);
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (r[i].failed) {
            fprintf(stderr, "bench-pg: a query failed (%s)\n", leash_last_error());
            exit(1);
        }
        for (int m = 0; m < 2; m++) {
            /* secs[] is reused as requests per second, summed over the threads */
            sum->secs[m] += r[i].secs[m] > 0 ? r[i].ops[m] / r[i].secs[m] : 0;
            sum->cpu[m] += r[i].cpu[m];
            sum->ops[m] += r[i].ops[m];
        }
        sum->other_conn += r[i].other_conn;
    }
    pthread_barrier_destroy(&start);
}

static void setup_table(void)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench-pg: %s(is tests/servers.sh start pg running?)\n", PQerrorMessage(c));
        exit(1);
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    PQclear(PQexec(c, "CREATE TABLE IF NOT EXISTS bench_kv (k int PRIMARY KEY, v text)"));
    PQclear(PQexec(c, "INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) "
                      "g ON CONFLICT DO NOTHING"));
    PQfinish(c);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        conninfo = argv[1];
    if (argc > 2 && atoi(argv[2]) > 0)
        run_ms = atoi(argv[2]);
    setup_table();
    const char *c = getenv("LEASH_BENCH_PG_CONTROL");
    control = c && *c == '1';
    printf("bench-pg: %d ms per row; each thread alternates batches of %d requests through leash "
           "(acquire, query, release\neach) with %d on the same connection's PGconn held "
           "(reused).%s\n"
           "  total: leash/s / reused/s (sensitive to preemption on a busy machine)\n"
           "  pair: median over pairs of batches of leash speed / reused speed (the headline); "
           "tmean: their 10%%-trimmed mean\n"
           "  cpu/req: client CPU per request of reused (this thread, CLOCK_THREAD_CPUTIME_ID)\n"
           "  cpu pair: median over pairs of leash CPU / reused CPU; +ns: median extra leash "
           "CPU per request\n",
           run_ms, BATCH, BATCH,
           control ? "\n  CONTROL RUN: the leash side also runs on the held PGconn, so every "
                     "ratio should read 1.000"
                   : "");
    printf("%-9s %3s %9s %9s %9s %7s %7s %7s %9s %8s %6s\n", "query", "thr", "leash/s", "reused/s",
           "connect/s", "total", "pair", "tmean", "cpu/req", "cpu pair", "+ns");
    const char *names[] = {"SELECT 1", "pk read"};
    int threads[] = {1, 4};
    double worst = 1e9, worst_cpu = 0;
    for (int q = SELECT1; q <= PK_READ; q++) {
        for (int t = 0; t < 2; t++) {
            int n = threads[t];
            leash_pool_options o = {.max_size = n, .acquire_timeout_ms = 5000};
            leash_pool *pool = leash_pg_pool("bench", conninfo, &o);
            if (!pool) {
                fprintf(stderr, "bench-pg: %s\n", leash_last_error());
                return 1;
            }
            struct run both, conn;
            measure(0, (enum query)q, n, pool, &both);
            int np = atomic_load(&npairs);
            np = np < MAX_PAIRS ? np : MAX_PAIRS;
            double pair = median(pair_wall, np), pair_c = median(pair_cpu, np);
            double extra = median(pair_extra, np), tmean = trimmed_mean(pair_wall, np);
            int saved = run_ms;
            run_ms = run_ms / 4;
            measure(1, (enum query)q, n, NULL, &conn);
            run_ms = saved;
            double cpu_us = both.ops[REUSED] ? both.cpu[REUSED] / both.ops[REUSED] * 1e6 : 0;
            printf("%-9s %3d %9.0f %9.0f %9.0f %7.3f %7.3f %7.3f %7.2fus %8.3f %6.0f\n", names[q],
                   n, both.secs[LEASH], both.secs[REUSED], conn.secs[REUSED],
                   both.secs[LEASH] / both.secs[REUSED], pair, tmean, cpu_us, pair_c, extra);
            if (both.other_conn)
                printf("  (%ld of %d pairs left out: their two batches ran on different "
                       "connections)\n",
                       both.other_conn, np + (int)both.other_conn);
            worst = pair < worst ? pair : worst;
            worst_cpu = pair_c > worst_cpu ? pair_c : worst_cpu;
            leash_pool_close(pool);
        }
    }
    printf("worst pair (leash/reused speed): %.3f (target >= 0.97); worst cpu pair: %.3f\n", worst,
           worst_cpu);
    int held = leash_check_leaks(2);
    leash_shutdown();
    return held == 0 ? 0 : 1;
}

/* Benchmark of the PostgreSQL adapter: leash against one reused PGconn per thread (the limit)
 * (held across a batch, no pool call per request) and connect-per-request, for SELECT 1 and a
 * one-row primary-key read, 1 and 4 threads. Needs the test server (tests/servers.sh start pg).
 * Usage: bench-pg [conninfo] [ms per run] */
#include <leash/pg.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH                                                                                      \
    32 /* leash and reused alternate every BATCH requests on the same thread, so                   \
          load from other processes hits both alike */

enum query { SELECT1, PK_READ };

static const char *conninfo =
    "host=127.0.0.1 port=15432 dbname=leash user=leash password=leash-pg-pw";
static int run_ms = 1500;

struct run {
    int connect_per_request;
    enum query query;
    leash_pool *pool;
    pthread_barrier_t *start;
    long ops[2]; /* leash, reused (or connect-per-request in [1]) */
    double secs[2];
    int failed;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

static void *worker(void *arg)
{
    struct run *r = arg;
    char key[16];
    pthread_barrier_wait(r->start);
    double end = now_s() + run_ms / 1000.0;
    long i = 0;
    for (double t = now_s(); t < end && !r->failed;) {
        if (r->connect_per_request) {
            PGconn *once = PQconnectdb(conninfo);
            r->failed = !check(ask(once, r->query, i++, key));
            PQfinish(once);
            r->ops[1]++;
        } else {
            for (int k = 0; k < BATCH && !r->failed; k++, i++) {
                leash_handle *h = leash_acquire(r->pool);
                r->failed = !h || !check(ask_leash(h, r->query, i, key));
                leash_release(&h);
            }
            double mid = now_s();
            r->secs[0] += mid - t;
            r->ops[0] += BATCH;
            /* The baseline runs on a pool connection too, held for the whole batch: the
             * same server backends serve both, so where the scheduler puts them does not
             * favour either side (on 2 cores that alone swings throughput 2x). */
            leash_handle *h = leash_acquire(r->pool);
            PGconn *raw = leash_pg(h);
            for (int k = 0; k < BATCH && !r->failed; k++, i++)
                r->failed = !check(ask(raw, r->query, i, key));
            leash_release(&h);
            t = now_s();
            r->secs[1] += t - mid;
            r->ops[1] += BATCH;
            continue;
        }
        t = now_s();
        r->secs[1] = run_ms / 1000.0;
    }
    return NULL;
}

/* n threads for run_ms: fills rate[0] (leash) and rate[1] (reused, or connect-per-request),
 * in requests per second summed over the threads. */
static void measure(int connect_per_request, enum query q, int n, leash_pool *pool, double rate[2])
{
    pthread_t th[8];
    struct run r[8];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        r[i] = (struct run){
            .connect_per_request = connect_per_request, .query = q, .pool = pool, .start = &start};
        pthread_create(&th[i], NULL, worker, &r[i]);
    }
    rate[0] = rate[1] = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (r[i].failed) {
            fprintf(stderr, "bench-pg: a query failed (%s)\n", leash_last_error());
            exit(1);
        }
        for (int m = 0; m < 2; m++)
            rate[m] += r[i].secs[m] > 0 ? r[i].ops[m] / r[i].secs[m] : 0;
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
    printf("bench-pg: %d ms per row; on each thread, %d requests through leash (acquire, "
           "query, release each) alternate with %d on one held PGconn (reused)\n",
           run_ms, BATCH, BATCH);
    printf("%-10s %7s %12s %12s %12s %13s\n", "query", "threads", "leash/s", "reused/s",
           "connect/s", "leash/reused");
    const char *names[] = {"SELECT 1", "pk read"};
    int threads[] = {1, 4};
    double worst = 1e9;
    for (int q = SELECT1; q <= PK_READ; q++) {
        for (int t = 0; t < 2; t++) {
            int n = threads[t];
            leash_pool_options o = {.max_size = n};
            leash_pool *pool = leash_pg_pool("bench", conninfo, &o);
            if (!pool) {
                fprintf(stderr, "bench-pg: %s\n", leash_last_error());
                return 1;
            }
            double pair[2], conn[2];
            measure(0, (enum query)q, n, pool, pair);
            int saved = run_ms;
            run_ms = run_ms / 4;
            measure(1, (enum query)q, n, NULL, conn);
            run_ms = saved;
            double ratio = pair[0] / pair[1];
            worst = ratio < worst ? ratio : worst;
            printf("%-10s %7d %12.0f %12.0f %12.0f %13.3f\n", names[q], n, pair[0], pair[1],
                   conn[1], ratio);
            leash_pool_close(pool);
        }
    }
    printf("worst leash/reused: %.3f (target >= 0.97)\n", worst);
    leash_shutdown();
    return 0;
}

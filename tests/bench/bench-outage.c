/* Benchmark of leash through a PostgreSQL outage (the test server of tests/servers.sh).
 *
 * 1. Restart storm: 64 threads run SELECT 1 through a pool of 64; the server is stopped
 *    (tests/servers.sh stop pg), left down for a second, and started again. Reported for
 *    max_connecting at its default (2) and unlimited (1000): the most connections the server
 *    was setting up at once while the pool came back; from the server listening again, the
 *    time until the first and until every thread had a request served, and the ramp between
 *    the two (the first depends on where the backoff probe falls: up to connect_backoff_ms);
 *    the connects that failed after it listened (refused while it was still starting up).
 *    "Setting up" is counted on the server's side, every millisecond: connections in its
 *    accept queue (the listening socket's queue in /proc/net/tcp) plus its backends (children
 *    of the postmaster) not yet serving: just forked, or titled initializing, authentication
 *    or startup. The storm's pools use database postgres, so their backends are told apart
 *    from the test suites' (database leash) by title; a backend that has not read its
 *    startup packet yet cannot be told apart and is counted whoever it is for. leash's own
 *    count of connects in flight is shown beside it.
 * 2. Outage: the postmaster paused (SIGSTOP: every new connection waits in its queue, as for
 *    a server that stopped answering) for 5 s; two empty pools side by side, the default
 *    (fail-fast once two connects failed) and connect_backoff_ms = -1 (no fail-fast), 8
 *    threads each, connect_timeout 1 s, default acquire timeout. Reported: p50 and p99 of a
 *    failing acquire that began and ended within the pause, from 1.5 s on (once the first
 *    connects have timed out).
 *
 * Usage: bench-outage   (servers.sh from LEASH_SERVERS_SH, else the source tree's). Takes
 * about 20 s. It stops and pauses the shared test server: other suites using it at that
 * moment see the outage too. */
#include <leash/pg.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef LEASH_SOURCE_ROOT
#define LEASH_SOURCE_ROOT "."
#endif
#define PORT 15432
/* Database postgres (not leash, which the test suites use): the storm's backends are the ones
 * whose process title says "leash postgres". */
#define CONNINFO                                                                                   \
    "host=127.0.0.1 port=15432 dbname=postgres user=leash password=leash-pg-pw connect_timeout=2"
#define STORM_THREADS 64
#define OUTAGE_THREADS 8

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static const char *servers_dir(void)
{
    const char *d = getenv("LEASH_SERVERS_DIR");
    return d && *d ? d : "/tmp/leash-servers";
}

static int servers(const char *action)
{
    const char *sh = getenv("LEASH_SERVERS_SH");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "bash '%s' %s pg",
             sh && *sh ? sh : LEASH_SOURCE_ROOT "/tests/servers.sh", action);
    return system(cmd) == 0 ? 0 : -1;
}

static long postmaster_pid(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/pg/data/postmaster.pid", servers_dir());
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long pid = -1;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = -1;
    fclose(f);
    return pid;
}

/* ---- what the server is doing ---- */

/* The server's listening socket: -1 if there is none, else how many connections wait in its
 * accept queue (the rx_queue of a LISTEN row of /proc/net/tcp). */
static int accept_queue(void)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f)
        return -1;
    char line[512];
    int q = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned lp, st, rxq;
        if (sscanf(line, " %*d: %*x:%x %*x:%*x %x %*x:%x", &lp, &st, &rxq) == 3 && lp == PORT &&
            st == 0x0a) {
            q = (int)rxq;
            break;
        }
    }
    fclose(f);
    return q;
}

/* Backends of the postmaster still setting up a connection: just forked (the postmaster's
 * own command line, before the startup packet names the user), or titled "leash postgres
 * ... initializing / authentication / startup". */
static int setting_up(long pm)
{
    char path[128];
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", pm, pm);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int n = 0;
    long child;
    while (fscanf(f, "%ld", &child) == 1) {
        char cp[64], title[256];
        snprintf(cp, sizeof cp, "/proc/%ld/cmdline", child);
        FILE *c = fopen(cp, "r");
        if (!c)
            continue;
        size_t k = fread(title, 1, sizeof title - 1, c);
        fclose(c);
        title[k] = '\0';
        if (strncmp(title, "postgres: ", 10) != 0) {
            n++; /* not renamed yet */
            continue;
        }
        const char *at = strstr(title, "postgres: leash postgres ");
        if (at &&
            (strstr(at, "initializing") || strstr(at, "authentication") || strstr(at, "startup")))
            n++;
    }
    fclose(f);
    return n;
}

struct sampler {
    leash_pool *pool;
    _Atomic int stop;
    _Atomic uint64_t listen_us; /* first time the server listened again; 0 before */
    int peak_server, peak_client;
    pthread_t thread;
};

static void *sampler_main(void *arg)
{
    struct sampler *s = arg;
    while (!atomic_load(&s->stop)) {
        int queued = accept_queue();
        if (queued >= 0 && !atomic_load(&s->listen_us))
            atomic_store(&s->listen_us, now_us());
        long pm = queued >= 0 ? postmaster_pid() : -1;
        if (pm > 0) {
            int n = queued + setting_up(pm);
            if (n > s->peak_server)
                s->peak_server = n;
        }
        leash_pool_stats st;
        if (leash_pool_stats_get(s->pool, &st) == LEASH_OK && (int)st.connecting > s->peak_client)
            s->peak_client = (int)st.connecting;
        sleep_ms(1);
    }
    return NULL;
}

/* ---- load ---- */

struct worker {
    leash_pool *pool;
    _Atomic int *stop;
    _Atomic uint64_t *from_us; /* first success at or after this counts */
    uint64_t first_ok_us;
    long ok, failed;
    /* failing acquires (us) in a window */
    _Atomic uint64_t *win_from, *win_to;
    uint64_t *fails;
    int nfails, capfails;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load(w->stop)) {
        uint64_t t0 = now_us();
        leash_handle *h = leash_acquire(w->pool);
        uint64_t acq = now_us() - t0;
        int ok = 0;
        if (h) {
            PGresult *r = leash_pg_exec(h, "SELECT 1");
            ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
            PQclear(r);
            leash_release(&h);
        } else if (w->fails && w->nfails < w->capfails && t0 >= atomic_load(w->win_from) &&
                   t0 + acq <= atomic_load(w->win_to)) {
            w->fails[w->nfails++] = acq;
        }
        if (ok) {
            w->ok++;
            uint64_t from = atomic_load(w->from_us);
            if (from && t0 >= from && !w->first_ok_us)
                w->first_ok_us = now_us();
        } else {
            w->failed++;
            sleep_ms(2);
        }
    }
    return NULL;
}

/* ---- 1. restart storm ---- */

struct storm {
    int peak_server, peak_client;
    long failed_connects; /* connects that failed after the server listened again */
    double all_back_s, first_back_s;
    long failed;
    int ok;
};

static struct storm restart_storm(int max_connecting)
{
    struct storm r = {0};
    leash_pool_options o = {
        .max_size = STORM_THREADS, .acquire_timeout_ms = 1000, .max_connecting = max_connecting};
    char name[32];
    snprintf(name, sizeof name, "storm-%d", max_connecting);
    leash_pool *p = leash_pg_pool(name, CONNINFO, &o);
    if (!p) {
        fprintf(stderr, "bench-outage: %s\n", leash_last_error());
        return r;
    }
    leash_handle *warm[STORM_THREADS];
    int warmed = 0;
    for (int i = 0; i < STORM_THREADS; i++)
        warmed += (warm[i] = leash_acquire_for(p, 5000)) != NULL;
    for (int i = 0; i < STORM_THREADS; i++)
        leash_release(&warm[i]);
    if (warmed < STORM_THREADS) {
        fprintf(stderr, "bench-outage: only %d of %d connections: %s\n", warmed, STORM_THREADS,
                leash_last_error());
        leash_pool_close(p);
        return r;
    }
    _Atomic int stop = 0;
    _Atomic uint64_t from = 0, never = UINT64_MAX;
    struct worker w[STORM_THREADS];
    pthread_t t[STORM_THREADS];
    for (int i = 0; i < STORM_THREADS; i++) {
        w[i] = (struct worker){
            .pool = p, .stop = &stop, .from_us = &from, .win_from = &never, .win_to = &never};
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    sleep_ms(300);
    if (servers("stop") != 0)
        fprintf(stderr, "bench-outage: tests/servers.sh stop pg failed\n");
    sleep_ms(1000);
    struct sampler s = {.pool = p};
    pthread_create(&s.thread, NULL, sampler_main, &s);
    if (servers("start") != 0)
        fprintf(stderr, "bench-outage: tests/servers.sh start pg failed\n");
    /* from the moment the server listened (the sampler saw it) */
    uint64_t listen = atomic_load(&s.listen_us);
    atomic_store(&from, listen ? listen : now_us());
    leash_pool_stats at_start;
    leash_pool_stats_get(p, &at_start);
    uint64_t end = now_us() + 10000000u, last = 0, first = UINT64_MAX;
    for (;;) {
        int all = 1;
        for (int i = 0; i < STORM_THREADS; i++)
            all &= w[i].first_ok_us != 0;
        if (all || now_us() > end)
            break;
        sleep_ms(5);
    }
    sleep_ms(50); /* the last setups, if any */
    atomic_store(&s.stop, 1);
    pthread_join(s.thread, NULL);
    atomic_store(&stop, 1);
    r.ok = 1;
    for (int i = 0; i < STORM_THREADS; i++) {
        pthread_join(t[i], NULL);
        r.failed += w[i].failed;
        if (!w[i].first_ok_us)
            r.ok = 0;
        else {
            if (w[i].first_ok_us > last)
                last = w[i].first_ok_us;
            if (w[i].first_ok_us < first)
                first = w[i].first_ok_us;
        }
    }
    uint64_t f = atomic_load(&from);
    r.all_back_s = r.ok ? (double)(last - f) / 1e6 : -1;
    r.first_back_s = first != UINT64_MAX ? (double)(first - f) / 1e6 : -1;
    leash_pool_stats at_end;
    leash_pool_stats_get(p, &at_end);
    r.failed_connects = (long)(at_end.connect_failures - at_start.connect_failures);
    r.peak_server = s.peak_server;
    r.peak_client = s.peak_client;
    leash_pool_close(p);
    return r;
}

/* ---- 2. outage latency ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

struct lat {
    int n;
    double p50_ms, p99_ms;
};

static struct lat percentiles(struct worker *w, int nw)
{
    struct lat l = {0};
    int n = 0;
    for (int i = 0; i < nw; i++)
        n += w[i].nfails;
    if (!n)
        return l;
    uint64_t *v = malloc(sizeof *v * (size_t)n);
    int k = 0;
    for (int i = 0; i < nw; i++)
        for (int j = 0; j < w[i].nfails; j++)
            v[k++] = w[i].fails[j];
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    l.n = n;
    l.p50_ms = (double)v[(size_t)(n - 1) / 2] / 1000.0;
    l.p99_ms = (double)v[(size_t)((double)(n - 1) * 0.99)] / 1000.0;
    free(v);
    return l;
}

static void outage(struct lat *fast, struct lat *slow)
{
    long pm = postmaster_pid();
    if (pm <= 0 || kill((pid_t)pm, SIGSTOP) != 0) {
        fprintf(stderr, "bench-outage: cannot pause the postmaster\n");
        return;
    }
    leash_pool_options of = {.max_size = OUTAGE_THREADS};
    leash_pool_options on = of;
    on.connect_backoff_ms = -1;
    const char *ci =
        "host=127.0.0.1 port=15432 dbname=leash user=leash password=leash-pg-pw connect_timeout=1";
    leash_pool *pf = leash_pg_pool("outage-failfast", ci, &of);
    leash_pool *pn = leash_pg_pool("outage-nobackoff", ci, &on);
    _Atomic int stop = 0;
    _Atomic uint64_t from = 0;
    uint64_t t0 = now_us();
    _Atomic uint64_t win_from = t0 + 1500000u, win_to = t0 + 5000000u;
    struct worker w[2 * OUTAGE_THREADS];
    pthread_t t[2 * OUTAGE_THREADS];
    for (int i = 0; i < 2 * OUTAGE_THREADS; i++) {
        w[i] = (struct worker){.pool = i < OUTAGE_THREADS ? pf : pn,
                               .stop = &stop,
                               .from_us = &from,
                               .win_from = &win_from,
                               .win_to = &win_to,
                               .capfails = 200000};
        w[i].fails = malloc(sizeof *w[i].fails * 200000);
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    sleep_ms(5000);
    kill((pid_t)pm, SIGCONT);
    atomic_store(&stop, 1);
    for (int i = 0; i < 2 * OUTAGE_THREADS; i++)
        pthread_join(t[i], NULL);
    *fast = percentiles(w, OUTAGE_THREADS);
    *slow = percentiles(w + OUTAGE_THREADS, OUTAGE_THREADS);
    for (int i = 0; i < 2 * OUTAGE_THREADS; i++)
        free(w[i].fails);
    leash_pool_close(pf);
    leash_pool_close(pn);
}

static void quiet(int level, const char *msg, void *arg)
{
    (void)level;
    (void)msg;
    (void)arg;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    leash_set_log(quiet, NULL); /* every failed connect of an outage would be a warning */
    if (servers("start") != 0) {
        fprintf(stderr, "bench-outage: tests/servers.sh start pg failed\n");
        return 1;
    }
    double t0 = (double)now_us() / 1e6;
    struct storm def = restart_storm(0);
    struct storm unl = restart_storm(1000);
    struct lat fast = {0}, slow = {0};
    outage(&fast, &slow);
    printf("bench-outage: PostgreSQL, 64 threads on a pool of 64, server stopped 1 s and "
           "started\n");
    printf("%-27s %14s %13s %10s %10s %10s %8s\n", "restart storm", "server setups", "leash in",
           "first", "all 64", "ramp", "failed");
    printf("%-27s %14s %13s %10s %10s %10s %8s\n", "", "at once (peak)", "flight (peak)",
           "served (s)", "served (s)", "(s)", "connects");
    struct {
        const char *name;
        struct storm *s;
    } rows[] = {{"max_connecting 2 (default)", &def}, {"max_connecting 1000", &unl}};
    for (int i = 0; i < 2; i++)
        printf("%-27s %14d %13d %10.3f %10.3f %10.3f %8ld%s\n", rows[i].name,
               rows[i].s->peak_server, rows[i].s->peak_client, rows[i].s->first_back_s,
               rows[i].s->all_back_s, rows[i].s->all_back_s - rows[i].s->first_back_s,
               rows[i].s->failed_connects, rows[i].s->ok ? "" : "  (not all served within 10 s)");
    printf("\noutage: postmaster paused 5 s (failing acquires from 1.5 s on), 8 threads per "
           "pool, connect_timeout 1 s, acquire_timeout_ms 1000 (default)\n");
    printf("%-28s %10s %12s %12s\n", "failing acquire", "samples", "p50 (ms)", "p99 (ms)");
    printf("%-28s %10d %12.3f %12.3f\n", "fail-fast (default)", fast.n, fast.p50_ms, fast.p99_ms);
    printf("%-28s %10d %12.3f %12.3f\n", "connect_backoff_ms -1", slow.n, slow.p50_ms, slow.p99_ms);
    if (fast.p99_ms > 0)
        printf("p99 ratio (no fail-fast / fail-fast): %.0fx\n", slow.p99_ms / fast.p99_ms);
    printf("total %.1f s\n", (double)now_us() / 1e6 - t0);
    leash_shutdown();
    return 0;
}

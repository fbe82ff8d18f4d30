/* Benchmark of PostgreSQL failover: 8 threads writing through a leash write pool
 * (target_session_attrs=read-write over a primary and its hot standby) while
 *   1. the primary crashes (pg_ctl stop -m immediate) and the standby is promoted: the time
 *      from the promotion to the first successful write, the writes that failed, and the
 *      longest operation (acquire + INSERT + release);
 *   2. the primary is demoted (it stays up, read-only: default_transaction_read_only=on and a
 *      reload) and the standby promoted: the writes that failed with leash against 8 threads
 *      that each reuse one plain PGconn (made with the same conninfo, so libpq checked
 *      read-write at connect), writing in the same window. A plain connection never learns
 *      that its server changed role: every one of its writes fails from then on.
 * Needs the replicated pair of tests/servers.d/pgha.sh; each scenario starts from the known
 * topology (tests/servers.sh start pgha) and leaves it changed.
 * Usage, from the source root: bench-pgha [tests/servers.sh] [ms after the event] */
#include <leash/pg.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WRITERS 8
#define POOL_SIZE 4
#define CONNINFO                                                                                   \
    "host=127.0.0.1,127.0.0.1 port=15533,15534 dbname=leash user=leash password=leash-pg-pw "      \
    "target_session_attrs=read-write"

static const char *servers_sh = "tests/servers.sh";
static int after_ms = 3000;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Runs "bash <servers.sh> ARGS" or "bash <servers.d/pgha.sh> ARGS"; exits on failure. */
static void shell(int node_cmd, const char *args)
{
    char cmd[4096], dir[2048];
    snprintf(dir, sizeof dir, "%s", servers_sh);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    if (node_cmd)
        snprintf(cmd, sizeof cmd, "bash '%s/servers.d/pgha.sh' %s", dir, args);
    else
        snprintf(cmd, sizeof cmd, "bash '%s' %s", servers_sh, args);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench-pgha: '%s' failed\n", cmd);
        exit(1);
    }
}

/* The known topology and the table the writers use. */
static void reset_topology(void)
{
    shell(0, "start pgha");
    const char *dir = getenv("LEASH_SERVERS_DIR");
    char ci[512];
    snprintf(ci, sizeof ci, "host=%s/pgha port=15533 dbname=leash user=postgres",
             dir && *dir ? dir : "/tmp/leash-servers");
    PGconn *c = PQconnectdb(ci);
    PQclear(PQexec(c, "SET client_min_messages TO warning"));
    PGresult *r = PQexec(c, "CREATE TABLE IF NOT EXISTS leash_ha_writes (id bigserial PRIMARY "
                            "KEY, thread int); GRANT ALL ON leash_ha_writes, "
                            "leash_ha_writes_id_seq TO leash");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "bench-pgha: setup: %s", PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
    PQfinish(c);
}

struct writer {
    leash_pool *pool; /* NULL: a plain PGconn */
    PGconn *plain;
    int id;
    _Atomic int *stop;
    _Atomic uint64_t *event_ms;
    long ok, failed_after, ok_after;
    uint64_t first_ok_after, longest;
    int last_ok; /* the last write succeeded (for a sum: how many writers' did) */
};

/* One INSERT: 1 written, 0 failed. */
static int write_one(struct writer *w, const char *sql)
{
    if (!w->pool) {
        if (PQstatus(w->plain) != CONNECTION_OK)
            PQreset(w->plain); /* what a plain client does for a dead connection */
        PGresult *r = PQexec(w->plain, sql);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        return ok;
    }
    leash_handle *h = leash_acquire(w->pool);
    if (!h) {
        sleep_ms(10); /* the pool is down: it answers at once, do not spin */
        return 0;
    }
    PGresult *r = leash_pg_exec(h, sql);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    leash_release(&h);
    return ok;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char sql[96];
    snprintf(sql, sizeof sql, "INSERT INTO leash_ha_writes (thread) VALUES (%d)", w->id);
    while (!atomic_load(w->stop)) {
        uint64_t event = atomic_load(w->event_ms);
        uint64_t t0 = now_ms();
        int ok = write_one(w, sql);
        uint64_t t1 = now_ms();
        if (t1 - t0 > w->longest)
            w->longest = t1 - t0;
        w->last_ok = ok;
        if (ok)
            w->ok++;
        if (!event)
            continue;
        if (ok) {
            w->ok_after++;
            if (!w->first_ok_after)
                w->first_ok_after = t1;
        } else {
            w->failed_after++;
        }
    }
    return NULL;
}

struct crew {
    struct writer w[WRITERS];
    pthread_t th[WRITERS];
};

static void crew_start(struct crew *c, leash_pool *pool, _Atomic int *stop, _Atomic uint64_t *event)
{
    for (int i = 0; i < WRITERS; i++) {
        c->w[i] = (struct writer){.pool = pool, .id = i, .stop = stop, .event_ms = event};
        if (!pool) {
            c->w[i].plain = PQconnectdb(CONNINFO);
            if (PQstatus(c->w[i].plain) != CONNECTION_OK) {
                fprintf(stderr, "bench-pgha: %s", PQerrorMessage(c->w[i].plain));
                exit(1);
            }
        }
        pthread_create(&c->th[i], NULL, writer_main, &c->w[i]);
    }
}

/* Joins the crew and sums it up into the fields of *sum. */
static void crew_join(struct crew *c, struct writer *sum)
{
    *sum = (struct writer){0};
    for (int i = 0; i < WRITERS; i++) {
        struct writer *w = &c->w[i];
        pthread_join(c->th[i], NULL);
        if (w->plain)
            PQfinish(w->plain);
        sum->ok += w->ok;
        sum->ok_after += w->ok_after;
        sum->failed_after += w->failed_after;
        sum->last_ok += w->last_ok;
        if (w->longest > sum->longest)
            sum->longest = w->longest;
        if (w->first_ok_after && (!sum->first_ok_after || w->first_ok_after < sum->first_ok_after))
            sum->first_ok_after = w->first_ok_after;
    }
}

static leash_pool *write_pool(const char *name)
{
    leash_pool_options o = {.max_size = POOL_SIZE, .acquire_timeout_ms = 1000};
    leash_pool *p = leash_pg_pool(name, CONNINFO, &o);
    if (!p) {
        fprintf(stderr, "bench-pgha: %s\n", leash_last_error());
        exit(1);
    }
    return p;
}

static void crash_failover(void)
{
    reset_topology();
    leash_pool *p = write_pool("crash");
    _Atomic int stop = 0;
    _Atomic uint64_t event = 0;
    struct crew c;
    crew_start(&c, p, &stop, &event);
    sleep_ms(1000);
    shell(1, "crash a");
    uint64_t crashed = now_ms();
    atomic_store(&event, crashed); /* the crash is done: failures and writes count from here */
    sleep_ms(300);
    shell(1, "promote b");
    uint64_t promoted = now_ms();
    sleep_ms(after_ms);
    atomic_store(&stop, 1);
    struct writer s;
    crew_join(&c, &s);
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    printf("crash failover (%d writers, pool of %d): crash -> promotion %lu ms; first write "
           "%ld ms after the promotion; %ld writes failed after the crash (the pool refused %lu "
           "acquires at once while down); longest operation %lu ms; %ld writes before, %ld "
           "after; %lu connections broken, %lu invalid\n",
           WRITERS, POOL_SIZE, (unsigned long)(promoted - crashed),
           s.first_ok_after ? (long)s.first_ok_after - (long)promoted : -1L, s.failed_after,
           (unsigned long)st.fast_failures, (unsigned long)s.longest, s.ok - s.ok_after, s.ok_after,
           (unsigned long)st.destroyed_broken, (unsigned long)st.destroyed_invalid);
    leash_pool_close(p);
}

static void demoted_primary(void)
{
    reset_topology();
    leash_pool *p = write_pool("demoted");
    _Atomic int stop = 0;
    _Atomic uint64_t event = 0;
    struct crew with, plain;
    crew_start(&with, p, &stop, &event);
    crew_start(&plain, NULL, &stop, &event);
    sleep_ms(1000);
    shell(1, "promote b");
    atomic_store(&event, now_ms());
    shell(1, "readonly a");
    sleep_ms(after_ms);
    atomic_store(&stop, 1);
    struct writer a, b;
    crew_join(&with, &a);
    crew_join(&plain, &b);
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    double secs = after_ms / 1000.0;
    printf("demoted primary (%.1f s from the promotion, %d writers each side): leash %ld writes "
           "failed (pool of %d; %lu connections evicted), %ld written; plain PGconn per thread "
           "%ld failed (%.0f/s; %d of %d writers still failing at the end), %ld written (before "
           "the demotion took effect)\n",
           secs, WRITERS, a.failed_after, POOL_SIZE, (unsigned long)st.destroyed_evicted,
           a.ok_after, b.failed_after, b.failed_after / secs, WRITERS - b.last_ok, WRITERS,
           b.ok_after);
    leash_pool_close(p);
}

/* Failed connects while the primary is down are expected: only errors are shown. */
static void quiet_log(int level, const char *msg, void *arg)
{
    if (level >= LEASH_LOG_ERROR)
        fprintf(stderr, "leash: %s\n", msg);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        servers_sh = argv[1];
    else if (getenv("LEASH_SERVERS_SH"))
        servers_sh = getenv("LEASH_SERVERS_SH");
    if (argc > 2 && atoi(argv[2]) > 0)
        after_ms = atoi(argv[2]);
    if (access(servers_sh, R_OK) != 0) {
        fprintf(stderr, "bench-pgha: no %s (run from the source root, or give its path)\n",
                servers_sh);
        return 1;
    }
    leash_set_log(quiet_log, NULL);
    crash_failover();
    demoted_primary();
    reset_topology();
    leash_shutdown();
    return 0;
}

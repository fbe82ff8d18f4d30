/* Integration: outages and runtime control against real servers (tests/servers.sh).
 *
 * Redis and PostgreSQL each paused (SIGSTOP) for 3 s under 32 threads on a pool of 32, and
 * each really stopped and started again: every thread gets an answer within its deadline (an
 * error while the server is away), the server sees at most max_connecting connection attempts
 * from the pool at once, service resumes within the backoff once the server is back, and no
 * handle is lost. A Redis pool retargeted to a second server, and a PostgreSQL pool retargeted
 * to a rotated password, under load: no request fails because of the switch.
 *
 * How attempts are counted on the server's side: a paused server cannot answer anything, but
 * its kernel completes the TCP handshakes and keeps the sockets (ESTABLISHED, not yet
 * accepted) until the client gives up and closes them (they turn CLOSE_WAIT). A sampler thread
 * reads /proc/net/tcp every few milliseconds and counts the server's ESTABLISHED sockets whose
 * client is one of this process's sockets (matched by inode through /proc/self/fd, so other
 * programs using the same server are not counted) and was not connected when the outage
 * began: the connection attempts the server holds at that moment. Redis's own
 * total_connections_received gives the total. (PostgreSQL's pg_stat_activity lists a backend
 * only once it is authenticated, and the test cluster does not set log_connections.) */
#include "kit.h"
#include "servers.h"

#include <leash/pg.h>
#include <leash/redis.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REDIS_URL "redis://127.0.0.1:16379?connect_timeout_ms=300&command_timeout_ms=300"
#define PG_KV                                                                                      \
    "host=127.0.0.1 port=15432 dbname=leash user=leash connect_timeout=1 "                         \
    "password=" SRV_PG_PASSWORD
#define THREADS 32

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- server-side sockets ---- */

struct tcp_row {
    unsigned lport, rport, state;
    unsigned long inode;
};

/* The rows of /proc/net/tcp into *rows (malloc'd); returns how many. */
static int tcp_rows(struct tcp_row **rows)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    assert_non_null(f);
    int cap = 256, n = 0;
    struct tcp_row *r = malloc(sizeof *r * (size_t)cap);
    char line[512];
    if (!fgets(line, sizeof line, f)) /* the header */
        line[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        unsigned long laddr, raddr, inode;
        unsigned lport, rport, st;
        if (sscanf(line, " %*d: %lx:%x %lx:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &laddr, &lport,
                   &raddr, &rport, &st, &inode) != 6)
            continue;
        if (n == cap)
            r = realloc(r, sizeof *r * (size_t)(cap *= 2));
        r[n++] = (struct tcp_row){lport, rport, st, inode};
    }
    fclose(f);
    *rows = r;
    return n;
}

/* The inodes of this process's sockets (sorted); returns how many. */
static int cmp_ul(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return x < y ? -1 : x > y;
}

static int my_sockets(unsigned long *out, int max)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < max) {
        char path[320], link[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, link, sizeof link - 1);
        if (k <= 0)
            continue;
        link[k] = '\0';
        unsigned long ino;
        if (sscanf(link, "socket:[%lu]", &ino) == 1)
            out[n++] = ino;
    }
    closedir(d);
    qsort(out, (size_t)n, sizeof *out, cmp_ul);
    return n;
}

#define PORTS 65536
struct sampler {
    int port;
    _Atomic int stop;
    pthread_t thread;
    unsigned char before[PORTS]; /* client ports connected when it started */
    unsigned char seen[PORTS];   /* client ports of attempts seen */
    int peak, distinct, samples;
    char peak_detail[512];
};

/* The client ports of this process's sockets to s->port, into mine[port] = 1. */
static void my_client_ports(struct sampler *s, struct tcp_row *r, int n, unsigned char *mine)
{
    static unsigned long inodes[8192];
    int ni = my_sockets(inodes, 8192);
    for (int i = 0; i < n; i++) {
        if (r[i].rport != (unsigned)s->port || !r[i].inode)
            continue;
        if (bsearch(&r[i].inode, inodes, (size_t)ni, sizeof *inodes, cmp_ul))
            mine[r[i].lport] = 1;
    }
}

static void *sampler_main(void *arg)
{
    struct sampler *s = arg;
    unsigned char *mine = calloc(PORTS, 1);
    while (!atomic_load(&s->stop)) {
        struct tcp_row *r;
        int n = tcp_rows(&r);
        memset(mine, 0, PORTS);
        my_client_ports(s, r, n, mine);
        int now = 0;
        for (int i = 0; i < n; i++) {
            /* the server's side: local port = the server's; state 01 ESTABLISHED */
            if (r[i].lport != (unsigned)s->port || r[i].state != 1)
                continue;
            unsigned cp = r[i].rport;
            if (!mine[cp] || s->before[cp])
                continue;
            now++;
            if (!s->seen[cp]) {
                s->seen[cp] = 1;
                s->distinct++;
            }
        }
        if (now > s->peak) {
            /* what the peak was made of: client port / the client side's TCP state */
            size_t k = 0;
            s->peak_detail[0] = '\0';
            for (int i = 0; i < n && k < sizeof s->peak_detail - 16; i++) {
                if (r[i].lport != (unsigned)s->port || r[i].state != 1)
                    continue;
                unsigned cp = r[i].rport;
                if (!mine[cp] || s->before[cp])
                    continue;
                for (int j = 0; j < n; j++)
                    if (r[j].lport == cp && r[j].rport == (unsigned)s->port)
                        k += (size_t)snprintf(s->peak_detail + k, sizeof s->peak_detail - k,
                                              " %u/%02x", cp, r[j].state);
            }
        }
        if (now > s->peak)
            s->peak = now;
        s->samples++;
        free(r);
        sleep_ms(2);
    }
    free(mine);
    return NULL;
}

static struct sampler *sampler_start(int port)
{
    struct sampler *s = calloc(1, sizeof *s);
    s->port = port;
    struct tcp_row *r;
    int n = tcp_rows(&r);
    my_client_ports(s, r, n, s->before);
    free(r);
    assert_int_equal(pthread_create(&s->thread, NULL, sampler_main, s), 0);
    return s;
}

static void sampler_stop(struct sampler *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
}

/* ---- servers ---- */

static long long redis_info_field(const char *field)
{
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, (struct timeval){2, 0});
    assert_non_null(rc);
    if (rc->err)
        fail_msg("redis: %s", rc->errstr);
    redisSetTimeout(rc, (struct timeval){2, 0});
    redisReply *r = redisCommand(rc, "INFO");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char *at = strstr(r->str, field);
    long long v = -1;
    if (at)
        v = atoll(at + strlen(field) + 1);
    freeReplyObject(r);
    redisFree(rc);
    return v;
}

/* Runs sql as the superuser over the cluster's unix socket; fails the test on an error. */
static void pg_su(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void pg_su(const char *fmt, ...)
{
    char sql[1024], ci[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    snprintf(ci, sizeof ci, "host=%s port=%d dbname=postgres user=postgres connect_timeout=5",
             srv_path("pg"), SRV_PG_PORT);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("superuser connection: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

/* A server process's port accepts connections (a plain TCP probe, 200 ms at most). */
static int redis_answers(void)
{
    redisContext *rc =
        redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, (struct timeval){0, 200000});
    int ok = rc && !rc->err;
    if (ok) {
        redisSetTimeout(rc, (struct timeval){0, 200000});
        redisReply *r = redisCommand(rc, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
    }
    redisFree(rc);
    return ok;
}

static int group_setup(void **state)
{
    (void)state;
    /* Start what is missing (no test is skipped for a missing server); resume a server a
     * crashed run left paused. */
    srv_signal(SRV_REDIS_PIDFILE, SIGCONT);
    srv_signal("pg/pg.pid", SIGCONT);
    if (srv_ctl("start", "redis") != 0 || srv_ctl("start", "pg") != 0) {
        fprintf(stderr, "test-outage: tests/servers.sh start redis pg failed\n");
        return -1;
    }
    return 0;
}

/* Whatever failed, the servers are running and unpaused for the next test (and for the other
 * engineers' suites). */
static int teardown(void **state)
{
    srv_signal(SRV_REDIS_PIDFILE, SIGCONT);
    srv_signal("pg/pg.pid", SIGCONT);
    if (!redis_answers())
        srv_ctl("start", "redis");
    srv_ctl("start", "pg");
    return teardown_no_leaks(state);
}

/* ---- load ---- */

enum { K_REDIS, K_PG };

struct loader {
    leash_pool *pool;
    int kind, id;
    _Atomic int *stop;
    _Atomic uint64_t *resume_ms; /* 0 while the server is away */
    _Atomic uint64_t *away_ms;   /* when the outage began; 0 before */
    uint64_t ok, errors, errors_away, bad_status;
    uint64_t max_op_ms, first_ok_ms; /* first success at or after *resume_ms */
    char bad[256];
    /* failing acquires while the server is away, for latency */
    uint64_t fail_acquire_us[4096];
    int nfail_acquire;
};

/* One request: acquire, one command, release. LEASH_OK or the failure's status. */
static leash_status request(struct loader *l, uint64_t *acquire_us)
{
    uint64_t t0 = now_us();
    leash_handle *h = leash_acquire(l->pool);
    *acquire_us = now_us() - t0;
    if (!h)
        return leash_last_status();
    leash_status st = LEASH_OK;
    if (l->kind == K_REDIS) {
        redisReply *r = leash_redis_command(h, "INCR leash:outage:%d", l->id);
        if (!r || r->type != REDIS_REPLY_INTEGER)
            st = r ? LEASH_EIO : leash_last_status();
        freeReplyObject(r);
    } else {
        PGresult *r = leash_pg_exec(h, "SELECT 1");
        if (!r || PQresultStatus(r) != PGRES_TUPLES_OK)
            st = r ? LEASH_EIO : leash_last_status();
        PQclear(r);
    }
    leash_release(&h);
    return st;
}

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    while (!atomic_load(l->stop)) {
        uint64_t t0 = now_ms(), acq_us = 0;
        leash_status st = request(l, &acq_us);
        uint64_t took = now_ms() - t0;
        if (took > l->max_op_ms)
            l->max_op_ms = took;
        if (st == LEASH_OK) {
            l->ok++;
            uint64_t back = atomic_load(l->resume_ms);
            if (back && t0 >= back && !l->first_ok_ms)
                l->first_ok_ms = now_ms();
            continue;
        }
        l->errors++;
        if (atomic_load(l->away_ms) && !atomic_load(l->resume_ms)) {
            l->errors_away++;
            if (acq_us && l->nfail_acquire < 4096 &&
                (st == LEASH_ECONNECT || st == LEASH_ETIMEDOUT))
                l->fail_acquire_us[l->nfail_acquire++] = acq_us;
        }
        if (st != LEASH_ETIMEDOUT && st != LEASH_ECONNECT && st != LEASH_EIO) {
            l->bad_status++;
            snprintf(l->bad, sizeof l->bad, "%s: %s", leash_strerror(st), leash_last_error());
        }
        sleep_ms(2); /* a client pauses after an error */
    }
    return NULL;
}

struct load {
    _Atomic int stop;
    _Atomic uint64_t resume_ms, away_ms;
    int n;
    pthread_t t[THREADS];
    struct loader l[THREADS];
};

static struct load *load_start(leash_pool *p, int kind, int n)
{
    struct load *ld = calloc(1, sizeof *ld);
    ld->n = n;
    for (int i = 0; i < n; i++) {
        ld->l[i] = (struct loader){.pool = p,
                                   .kind = kind,
                                   .id = i,
                                   .stop = &ld->stop,
                                   .resume_ms = &ld->resume_ms,
                                   .away_ms = &ld->away_ms};
        assert_int_equal(pthread_create(&ld->t[i], NULL, loader_main, &ld->l[i]), 0);
    }
    return ld;
}

/* Waits up to ms for every thread to be served after the resume; returns how long the last
 * one took (ms after resume), or -1. */
static long load_wait_all_back(struct load *ld, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    for (;;) {
        int all = 1;
        for (int i = 0; i < ld->n; i++)
            all &= ld->l[i].first_ok_ms != 0;
        if (all)
            break;
        if (now_ms() > end)
            return -1;
        sleep_ms(5);
    }
    uint64_t last = 0;
    for (int i = 0; i < ld->n; i++)
        if (ld->l[i].first_ok_ms > last)
            last = ld->l[i].first_ok_ms;
    return (long)(last - ld->resume_ms);
}

static void load_stop(struct load *ld)
{
    atomic_store(&ld->stop, 1);
    for (int i = 0; i < ld->n; i++)
        pthread_join(ld->t[i], NULL);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The p-th percentile of the failing acquires' times while the server was away (us). */
static uint64_t fail_percentile(struct load *ld, double pct, int *count)
{
    int n = 0;
    for (int i = 0; i < ld->n; i++)
        n += ld->l[i].nfail_acquire;
    *count = n;
    if (!n)
        return 0;
    uint64_t *v = malloc(sizeof *v * (size_t)n);
    int k = 0;
    for (int i = 0; i < ld->n; i++)
        for (int j = 0; j < ld->l[i].nfail_acquire; j++)
            v[k++] = ld->l[i].fail_acquire_us[j];
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    uint64_t r = v[(size_t)((double)(n - 1) * pct / 100.0)];
    free(v);
    return r;
}

/* Common checks once the load stopped: nothing lost, no unexpected status, every thread
 * answered within bound_ms per request and had an error while the server was away. */
static void load_check(struct load *ld, leash_pool *p, uint64_t bound_ms)
{
    for (int i = 0; i < ld->n; i++) {
        struct loader *l = &ld->l[i];
        if (l->bad_status)
            fail_msg("thread %d: %llu unexpected failures, e.g. %s", i,
                     (unsigned long long)l->bad_status, l->bad);
        if (l->max_op_ms > bound_ms)
            fail_msg("thread %d: a request took %llu ms (bound %llu ms)", i,
                     (unsigned long long)l->max_op_ms, (unsigned long long)bound_ms);
        if (!l->errors_away)
            fail_msg("thread %d: no answer at all while the server was away", i);
        assert_true(l->ok > 0);
    }
    assert_int_equal(leash_outstanding(), 0);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.in_use, 0);
    assert_int_equal(s.dirty_returns, 0);
    assert_balanced(p);
    assert_invariant(p);
}

/* ---- paused servers ---- */

/* A server paused under 32 threads on a pool of 32. */
static void paused(int kind)
{
    const char *pidfile = kind == K_REDIS ? SRV_REDIS_PIDFILE : "pg/pg.pid";
    int port = kind == K_REDIS ? SRV_REDIS_PORT : SRV_PG_PORT;
    leash_pool_options o = {.max_size = THREADS, .acquire_timeout_ms = 500};
    leash_pg_options pg = {.command_timeout_ms = 1000};
    leash_pool *p = kind == K_REDIS ? leash_redis_pool("outage-redis-paused", REDIS_URL, &o)
                                    : leash_pg_pool_with("outage-pg-paused", PG_KV, &o, &pg);
    assert_non_null(p);
    /* Full before the outage: no connect of the steady state is mistaken for an attempt. */
    leash_handle *warm[THREADS];
    for (int i = 0; i < THREADS; i++)
        warm[i] = take(p);
    for (int i = 0; i < THREADS; i++)
        leash_release(&warm[i]);
    struct load *ld = load_start(p, kind, THREADS);
    sleep_ms(300);
    assert_int_equal(stats(p).size, THREADS);
    assert_int_equal(stats(p).connecting, 0);
    long long conns0 = kind == K_REDIS ? redis_info_field("total_connections_received") : 0;
    struct sampler *smp = sampler_start(port);
    atomic_store(&ld->away_ms, now_ms());
    assert_int_equal(srv_signal(pidfile, SIGSTOP), 0);
    /* A paused postmaster still has its backends serving the pool's connections: retire
     * them, so every borrower needs a new connection, which the paused server holds. */
    if (kind == K_PG)
        assert_true(leash_pool_evict(p) > 0);
    sleep_ms(1500);
    int health_away = leash_pool_health(p);
    char health_msg[512];
    snprintf(health_msg, sizeof health_msg, "%s", leash_last_error());
    sleep_ms(1500);
    leash_pool_stats away = stats(p);
    /* counted while paused only: after SIGCONT new sockets are the pool's new connections */
    sampler_stop(smp);
    assert_int_equal(srv_signal(pidfile, SIGCONT), 0);
    atomic_store(&ld->resume_ms, now_ms());
    long back = load_wait_all_back(ld, 5000);
    load_stop(ld);
    long long conns =
        kind == K_REDIS ? redis_info_field("total_connections_received") - conns0 : -1;
    int n_fail;
    uint64_t p99 = fail_percentile(ld, 99, &n_fail);
    leash_pool_stats s = stats(p);
    print_message("%s paused 3 s: server-side attempts at once: peak %d (%d samples), %d in all; "
                  "connections the server received in all: %lld; all %d threads served %ld ms "
                  "after SIGCONT; failing acquires while paused: %d, p99 %llu us; fast_failures "
                  "%llu, connect_failures %llu; health while paused: %s\n",
                  kind == K_REDIS ? "redis" : "pg", smp->peak, smp->samples, smp->distinct, conns,
                  THREADS, back, n_fail, (unsigned long long)p99,
                  (unsigned long long)s.fast_failures, (unsigned long long)s.connect_failures,
                  health_away == LEASH_OK ? "OK" : health_msg);
    if (smp->peak > 2)
        fail_msg("the server held %d connection attempts from the pool at once (max_connecting "
                 "2; client port/state:%s)",
                 smp->peak, smp->peak_detail);
    assert_true(smp->samples > 200); /* every few ms over 3 s */
    /* the attempts were seen at all (the counting works): the pool needed connections */
    assert_true(smp->distinct >= 1);
    /* bounded in all: about two per connect timeout before the pool is down, then one probe
     * per backoff step; a storm would be 32 threads' worth per connect timeout */
    int timeout_ms = kind == K_REDIS ? 300 : 1000;
    int bound = 2 * (3000 / timeout_ms) + 4;
    if (smp->distinct > bound)
        fail_msg("%d connection attempts in 3 s (bound %d)", smp->distinct, bound);
    assert_true(away.connect_failures >= 2);
    if (back < 0)
        fail_msg("not every thread was served within 5 s after SIGCONT");
    /* within the backoff (1 s) and one connect */
    if (back > 1000 + timeout_ms + 500)
        fail_msg("the last thread was served %ld ms after SIGCONT", back);
    /* per request: the acquire deadline, then one command; an idle connection may be
     * validated first (one more command timeout) */
    uint64_t cmd_ms = kind == K_REDIS ? 300 : 1000;
    load_check(ld, p, 500 + 2 * cmd_ms + 400);
    free(smp);
    free(ld);
}

static void test_redis_paused(void **state)
{
    /* Bad input tried: the Redis server paused (SIGSTOP) for 3 s under 32 threads: its kernel
     * accepts connections that nobody answers, and commands on open ones hang. */
    (void)state;
    paused(K_REDIS);
}

static void test_pg_paused(void **state)
{
    /* Bad input tried: the PostgreSQL postmaster paused for 3 s under 32 threads, after the
     * pool's connections were evicted: every new connection hangs in the server's queue. */
    (void)state;
    paused(K_PG);
}

static void test_redis_paused_validation_within_deadline(void **state)
{
    /* Bad input tried: an idle connection validated on acquire (idle longer than
     * validate_idle_ms) while the server is paused, under a 300 ms acquire deadline and a
     * 2 s command timeout: the acquire answers within its deadline, not the PING's. */
    (void)state;
    leash_pool_options o = {.max_size = 2, .acquire_timeout_ms = 300, .validate_idle_ms = 100};
    leash_pool *p = leash_redis_pool(
        "outage-validate", "redis://127.0.0.1:16379?connect_timeout_ms=300&command_timeout_ms=2000",
        &o);
    assert_non_null(p);
    leash_handle *h = take(p);
    leash_release(&h);
    sleep_ms(300); /* idle past validate_idle_ms */
    assert_int_equal(srv_signal(SRV_REDIS_PIDFILE, SIGSTOP), 0);
    uint64_t t0 = now_ms();
    h = leash_acquire(p);
    uint64_t took = now_ms() - t0;
    leash_status st = h ? LEASH_OK : leash_last_status();
    assert_int_equal(srv_signal(SRV_REDIS_PIDFILE, SIGCONT), 0);
    leash_release(&h);
    print_message("acquire of an idle connection validated against a paused server: %llu ms "
                  "(%s)\n",
                  (unsigned long long)took, leash_strerror(st));
    if (took > 300 + 200)
        fail_msg("an acquire with a 300 ms deadline took %llu ms (the validation PING waited for "
                 "the command timeout)",
                 (unsigned long long)took);
    assert_int_equal(leash_outstanding(), 0);
    assert_invariant(p);
}

/* ---- stopped servers ---- */

static int redis_port_closed(void)
{
    redisContext *rc =
        redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, (struct timeval){0, 200000});
    int closed = !rc || rc->err;
    redisFree(rc);
    return closed;
}

static void stopped(int kind)
{
    leash_pool_options o = {.max_size = THREADS, .acquire_timeout_ms = 500};
    leash_pg_options pg = {.command_timeout_ms = 1000};
    leash_pool *p = kind == K_REDIS ? leash_redis_pool("outage-redis-stopped", REDIS_URL, &o)
                                    : leash_pg_pool_with("outage-pg-stopped", PG_KV, &o, &pg);
    assert_non_null(p);
    struct load *ld = load_start(p, kind, THREADS);
    sleep_ms(600);
    atomic_store(&ld->away_ms, now_ms());
    if (kind == K_REDIS) {
        /* only the password-less instance: SIGTERM, then wait until its port is closed */
        assert_int_equal(srv_signal(SRV_REDIS_PIDFILE, SIGTERM), 0);
        uint64_t end = now_ms() + 5000;
        while (!redis_port_closed() && now_ms() < end)
            sleep_ms(10);
        assert_true(redis_port_closed());
    } else {
        assert_int_equal(srv_ctl("stop", "pg"), 0);
    }
    sleep_ms(1500);
    leash_status health = leash_pool_health(p);
    char health_msg[512];
    snprintf(health_msg, sizeof health_msg, "%s", leash_last_error());
    /* the measuring window of failing acquires ends here: the start takes a while */
    atomic_store(&ld->resume_ms, UINT64_MAX);
    assert_int_equal(srv_ctl("start", kind == K_REDIS ? "redis" : "pg"), 0);
    atomic_store(&ld->resume_ms, now_ms());
    long back = load_wait_all_back(ld, 5000);
    load_stop(ld);
    int n_fail;
    uint64_t p99 = fail_percentile(ld, 99, &n_fail);
    uint64_t p50 = fail_percentile(ld, 50, &n_fail);
    leash_pool_stats s = stats(p);
    print_message("%s stopped 1.5 s: failing acquires while down: %d, p50 %llu us, p99 %llu us; "
                  "fast_failures %llu; all %d threads served %ld ms after the start returned; "
                  "health while down: %s\n",
                  kind == K_REDIS ? "redis" : "pg", n_fail, (unsigned long long)p50,
                  (unsigned long long)p99, (unsigned long long)s.fast_failures, THREADS, back,
                  health == LEASH_OK ? "OK" : health_msg);
    assert_int_equal(health, LEASH_ECONNECT);
    assert_non_null(strstr(health_msg, "down for"));
    assert_true(s.fast_failures > 0);
    assert_true(n_fail > 100);
    /* fail-fast: a refused connect is known at once, and once the pool is down nobody waits */
    if (p99 > 50000)
        fail_msg("p99 of a failing acquire while the server is down: %llu us",
                 (unsigned long long)p99);
    if (back < 0 || back > 1500)
        fail_msg("the last thread was served %ld ms after the server was back", back);
    load_check(ld, p, 500 + 2 * (kind == K_REDIS ? 300 : 1000) + 400);
    free(ld);
}

static void test_redis_stopped(void **state)
{
    /* Bad input tried: the Redis server killed (SIGTERM) for 1.5 s under 32 threads, then
     * started again: connections refused, open ones reset. */
    (void)state;
    stopped(K_REDIS);
}

static void test_pg_stopped(void **state)
{
    /* Bad input tried: PostgreSQL stopped (fast shutdown: backends terminated) for 1.5 s under
     * 32 threads, then started again. */
    (void)state;
    stopped(K_PG);
}

/* ---- retarget under load ---- */

static void test_redis_retarget_under_load(void **state)
{
    /* Bad input tried: a retarget to another server (with a password, never shown) while 4
     * threads run commands; handles held across it. */
    (void)state;
    leash_pool_options o = {.max_size = 4, .acquire_timeout_ms = 2000};
    leash_pool *p = leash_redis_pool("outage-retarget", REDIS_URL, &o);
    assert_non_null(p);
    struct load *ld = load_start(p, K_REDIS, 4);
    sleep_ms(500);
    leash_pool_stats before = stats(p);
    assert_int_equal(leash_pool_retarget(p, "redis://:" SRV_REDIS_PASSWORD "@127.0.0.1:16380"
                                            "?connect_timeout_ms=300&command_timeout_ms=300"),
                     LEASH_OK);
    assert_null(strstr(leash_pool_target(p), SRV_REDIS_PASSWORD));
    assert_non_null(strstr(leash_pool_target(p), "16380"));
    sleep_ms(800);
    load_stop(ld);
    uint64_t errors = 0, ok = 0;
    for (int i = 0; i < 4; i++) {
        errors += ld->l[i].errors;
        ok += ld->l[i].ok;
    }
    leash_pool_stats s = stats(p);
    print_message("redis retarget under load: %llu requests, %llu failed; %llu connections "
                  "evicted, %llu made after\n",
                  (unsigned long long)ok, (unsigned long long)errors,
                  (unsigned long long)s.destroyed_evicted,
                  (unsigned long long)(s.created - before.created));
    if (errors)
        fail_msg("%llu requests failed across the retarget, e.g. %s", (unsigned long long)errors,
                 leash_last_error());
    assert_true(s.destroyed_evicted >= before.size);
    /* every connection now is on the new server */
    leash_handle *h[4];
    for (int i = 0; i < 4; i++) {
        h[i] = take(p);
        const char *peer = leash_redis_peer(h[i]);
        assert_non_null(peer);
        if (!strstr(peer, "16380"))
            fail_msg("a connection to %s after the retarget", peer);
    }
    for (int i = 0; i < 4; i++)
        leash_release(&h[i]);
    assert_int_equal(leash_outstanding(), 0);
    assert_balanced(p);
    assert_invariant(p);
    free(ld);
}

#define ROT_ROLE "leash_rotate"
#define ROT_OLD "rot-Old-pw-1"
#define ROT_NEW "rot-New-pw-2"
#define ROT_KV(pw)                                                                                 \
    "host=127.0.0.1 port=15432 dbname=leash connect_timeout=2 user=" ROT_ROLE " password=" pw

static int pg_login_works(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    int ok = PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    return ok;
}

static void test_pg_password_rotation_under_load(void **state)
{
    /* Bad input tried: the role's password changed on the server (ALTER ROLE ... PASSWORD)
     * while 4 threads run statements, then the pool retargeted to the new password: no
     * request fails. A role of its own, so the other suites' logins as leash never see a
     * changed password. */
    (void)state;
    pg_su("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '" ROT_ROLE "') "
          "THEN CREATE ROLE " ROT_ROLE " LOGIN; END IF; END $$");
    pg_su("ALTER ROLE " ROT_ROLE " PASSWORD '" ROT_OLD "'");
    leash_pool_options o = {.max_size = 4, .min_idle = 4, .acquire_timeout_ms = 2000};
    leash_pg_options pg = {.command_timeout_ms = 2000};
    leash_pool *p = leash_pg_pool_with("outage-rotate", ROT_KV(ROT_OLD), &o, &pg);
    assert_non_null(p);
    struct load *ld = load_start(p, K_PG, 4);
    sleep_ms(500);
    leash_pool_stats before = stats(p);
    /* the rotation: the server first, then the pool */
    pg_su("ALTER ROLE " ROT_ROLE " PASSWORD '" ROT_NEW "'");
    assert_int_equal(leash_pool_retarget(p, ROT_KV(ROT_NEW)), LEASH_OK);
    assert_null(strstr(leash_pool_target(p), ROT_NEW));
    sleep_ms(1000);
    load_stop(ld);
    uint64_t errors = 0, ok = 0;
    for (int i = 0; i < 4; i++) {
        errors += ld->l[i].errors;
        ok += ld->l[i].ok;
    }
    leash_pool_stats s = stats(p);
    int old_works = pg_login_works(ROT_KV(ROT_OLD)), new_works = pg_login_works(ROT_KV(ROT_NEW));
    pg_su("ALTER ROLE " ROT_ROLE " PASSWORD '" ROT_OLD "'"); /* restored */
    print_message(
        "pg password rotation under load: %llu requests, %llu failed; %llu "
        "connections evicted, %llu made after, %llu connect failures\n",
        (unsigned long long)ok, (unsigned long long)errors, (unsigned long long)s.destroyed_evicted,
        (unsigned long long)(s.created - before.created), (unsigned long long)s.connect_failures);
    if (errors)
        fail_msg("%llu requests failed across the rotation", (unsigned long long)errors);
    assert_false(old_works); /* the switch was real */
    assert_true(new_works);
    assert_true(s.destroyed_evicted >= 4);
    assert_true(s.created >= before.created + 4); /* new logins, with the new password */
    assert_int_equal(s.connect_failures, 0);
    assert_int_equal(leash_outstanding(), 0);
    assert_balanced(p);
    assert_invariant(p);
    free(ld);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_redis_paused, teardown),
        cmocka_unit_test_teardown(test_pg_paused, teardown),
        cmocka_unit_test_teardown(test_redis_paused_validation_within_deadline, teardown),
        cmocka_unit_test_teardown(test_redis_stopped, teardown),
        cmocka_unit_test_teardown(test_pg_stopped, teardown),
        cmocka_unit_test_teardown(test_redis_retarget_under_load, teardown),
        cmocka_unit_test_teardown(test_pg_password_rotation_under_load, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}

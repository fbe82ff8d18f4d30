/* Integration tests of the Redis adapter's Sentinel support against a real topology
 * (tests/servers.d/sentinel.sh: a master, its replica, three sentinels): URLs, connects through
 * the sentinels, failovers under load and with no traffic, a killed master, -READONLY,
 * replica pools, fork and shutdown. Every test that moves the master restores the topology
 * (srv_ctl("start", "sentinel")) in its teardown. */
#include "kit.h"
#include "servers.h"

#include <leash/redis.h>

#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define S1 "127.0.0.1:16393"
#define SENTINELS S1 ",127.0.0.1:16394,127.0.0.1:16395"
#define SPW "?sentinel_password=" SRV_SENTINEL_PASSWORD
/* the master pool every test starts from */
#define SURL                                                                                       \
    "redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" SENTINELS "/0" SPW                         \
    "&connect_timeout_ms=500&command_timeout_ms=1000#" SRV_SENTINEL_NAME

/* ---- helpers ---- */

static redisContext *node(int port, const char *password)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!rc || rc->err)
        fail_msg("connect to %d: %s", port, rc ? rc->errstr : "out of memory");
    redisSetTimeout(rc, tv);
    redisReply *r = redisCommand(rc, "AUTH %s", password);
    if (!r || r->type == REDIS_REPLY_ERROR)
        fail_msg("AUTH on %d: %s", port, r ? r->str : rc->errstr);
    freeReplyObject(r);
    return rc;
}

static redisContext *sentinel(int port)
{
    return node(port, SRV_SENTINEL_PASSWORD);
}

/* The master's port as the sentinel on port says, or -1. */
static int master_port(int port)
{
    redisContext *s = sentinel(port);
    redisReply *r = redisCommand(s, "SENTINEL GET-MASTER-ADDR-BY-NAME %s", SRV_SENTINEL_NAME);
    int p = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? atoi(r->element[1]->str) : -1;
    freeReplyObject(r);
    redisFree(s);
    return p;
}

/* Starts a manual failover through the first sentinel and returns the monotonic time at
 * which that sentinel names the new master (the moment it announces +switch-master). */
static double failover(void)
{
    int before = master_port(SRV_SENTINEL_PORT1);
    redisContext *s = sentinel(SRV_SENTINEL_PORT1);
    redisReply *r = redisCommand(s, "SENTINEL FAILOVER %s", SRV_SENTINEL_NAME);
    if (!r || r->type == REDIS_REPLY_ERROR)
        fail_msg("SENTINEL FAILOVER: %s", r ? r->str : s->errstr);
    freeReplyObject(r);
    for (int i = 0; i < 1000; i++) {
        redisReply *a = redisCommand(s, "SENTINEL GET-MASTER-ADDR-BY-NAME %s", SRV_SENTINEL_NAME);
        int p = a && a->type == REDIS_REPLY_ARRAY ? atoi(a->element[1]->str) : -1;
        freeReplyObject(a);
        if (p > 0 && p != before) {
            redisFree(s);
            return now_s();
        }
        sleep_ms(5);
    }
    fail_msg("no switch within 5 s of SENTINEL FAILOVER");
    return 0;
}

static leash_pool *spool(const char *name, const char *url, int max_size)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 2000};
    leash_pool *p = leash_redis_pool(name, url, &o);
    if (!p)
        fail_msg("pool %s: %s", name, leash_last_error());
    return p;
}

/* The port of the server h's connection is on (CLIENT INFO's laddr), or -1. */
static int server_port(leash_handle *h)
{
    LEASH_REPLY redisReply *r = leash_redis_command(h, "CLIENT INFO");
    if (!r || r->type != REDIS_REPLY_STRING)
        return -1;
    const char *l = strstr(r->str, " laddr=");
    const char *colon = l ? strchr(l, ':') : NULL;
    return colon ? atoi(colon + 1) : -1;
}

static const char *role_of(leash_handle *h, char *buf, size_t len)
{
    LEASH_REPLY redisReply *r = leash_redis_command(h, "ROLE");
    snprintf(buf, len, "%s",
             r && r->type == REDIS_REPLY_ARRAY && r->elements ? r->element[0]->str : "?");
    return buf;
}

static int threads_now(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static int group_setup(void **state)
{
    return srv_ctl("start", "sentinel") == 0 ? 0 : -1;
}

/* The teardown of every test: the topology back to its initial state (whatever the test did
 * to it), then no handle may be held. */
static int teardown(void **state)
{
    srv_signal(SRV_SENTINEL1_PIDFILE, SIGCONT);
    srv_signal(SRV_SENTINEL_MASTER_PIDFILE, SIGCONT);
    int bad = teardown_no_leaks(state);
    return srv_ctl("start", "sentinel") != 0 ? -1 : bad;
}

/* ---- URLs ---- */

/* Bad input: every malformed redis-sentinel:// form. NULL + LEASH_EINVAL, a message naming
 * the bad part, never any part of a password ("Pa55" and "w0rd" are the halves of each). */
static void test_sentinel_bad_urls(void **state)
{
    static const struct {
        const char *url, *names;
    } bad[] = {
        {"redis-sentinel://127.0.0.1", "master name is missing"},
        {"redis-sentinel://127.0.0.1#", "master name after '#' is empty"},
        {"redis-sentinel://127.0.0.1#my master", "space"},
        {"redis-sentinel://127.0.0.1#my@master", "master name"},
        {"redis-sentinel://127.0.0.1#m%zz", "master name"},
        {"redis-sentinel://127.0.0.1#m%20x", "master name"},
        {"redis-sentinel://#m", "sentinel 1 is empty"},
        {"redis-sentinel://:6379#m", "sentinel 1: the host is empty"},
        {"redis-sentinel://h1,,h3#m", "sentinel 2 is empty"},
        {"redis-sentinel://h1,#m", "sentinel 2 is empty"},
        {"redis-sentinel://,h1#m", "sentinel 1 is empty"},
        {"redis-sentinel://h1,h2:0#m", "sentinel 2: the port 0 is out of range"},
        {"redis-sentinel://h1,h2:x#m", "sentinel 2: the port is not a number"},
        {"redis-sentinel://h1,[::1#m", "sentinel 2: the host: '[' without ']'"},
        {"redis-sentinel://h1,h%2#m", "sentinel 2: the host has an invalid character"},
        {"redis-sentinel://h,h,h,h,h,h,h,h,h,h,h,h,h,h,h,h,h#m", "more than 16 sentinels"},
        {"redis-sentinel://h1/x#m", "db"},
        {"redis-sentinel://h1/-1#m", "db"},
        {"redis-sentinel://h1?db=1#m", "unknown option \"db\""},
        {"redis-sentinel://h1?colour=red#m", "unknown option \"colour\""},
        {"redis-sentinel://h1?role=primary#m", "role must be master or replica"},
        {"redis-sentinel://h1?role=replica&role=master#m", "given twice"},
        {"redis-sentinel://h1?sentinel_password#m", "has no value"},
        {"redis-sentinel://h1?sentinel_password=#m", "sentinel_password is empty"},
        {"redis-sentinel://h1?sentinel_user=u#m", "sentinel_user needs sentinel_password"},
        {"redis-sentinel://h1?connect_timeout_ms=0#m", "out of range"},
        {"rediss-sentinel://h1#m", "scheme"},
        /* passwords */
        {"redis-sentinel://:@h1#m", "password is empty"},
        {"redis-sentinel://Pa55w0rd@h1#m", "has no ':'"},
        {"redis-sentinel://:Pa55%w0rd@h1#m", "percent-escape"},
        {"redis-sentinel://:Pa55%00w0rd@h1#m", "NUL"},
        {"redis-sentinel://:Pa55?w0rd@h1#m", "'?' comes before the last '@'"},
        {"redis-sentinel://h1?sentinel_password=Pa55@w0rd#m", "'?' comes before the last '@'"},
        {"redis-sentinel://h1?sentinel_password=Pa55%w0rd#m", "percent-escape"},
        {"redis-sentinel://h1?sentinel_password=Pa55&w0rd#m", "unknown option in the query"},
        {"redis-sentinel://h1?sentinel_password=Pa55&w0rd=1#m", "unknown option in the query"},
        {"redis-sentinel://:Pa55#w0rd@h1", "master name"},
        {"redis-sentinel://:Pa55w0rd@h1:Pa55w0rd#m", "port is not a number"},
        {"redis-sentinel://:Pa55w0rd@Pa55w0rd%@h1#m", "percent-escape"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(leash_redis_pool("bad", bad[i].url, NULL));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].names))
            fail_msg("#%zu %s: \"%s\" does not name \"%s\"", i, bad[i].url, msg, bad[i].names);
        if (strstr(msg, "Pa55") || strstr(msg, "w0rd"))
            fail_msg("#%zu: \"%s\" shows part of the password", i, msg);
        if (!strstr(msg, "redis pool \"bad\""))
            fail_msg("#%zu: \"%s\" does not name the pool", i, msg);
        assert_null(leash_pool_get("bad"));
    }
    /* good forms: each opens, and its description holds no part of any password */
    static const char *const good[] = {
        "redis-sentinel://h1#m",
        "REDIS-SENTINEL://h1:1,h2:65535,[::1],[::1]:26380/15#m",
        "redis-sentinel://:Pa55w0rd@h1#m-1.x_y:z",
        "redis-sentinel://u:Pa55/w0rd@h1#m",
        "redis-sentinel://u:Pa55#w0rd@h1#m",
        "redis-sentinel://u:Pa55@w0rd@h1#m",
        "redis-sentinel://u:Pa55:w0rd@h1#m",
        "redis-sentinel://u:Pa55[]w0rd@h1#m",
        "redis-sentinel://u:Pa55%3Fw0rd@h1#m",
        "redis-sentinel://h1?sentinel_password=Pa55%40w0rd&sentinel_user=s#m",
        "redis-sentinel://h1?sentinel_password=Pa55/w0rd?x=y#m",
        "redis-sentinel://h1?sentinel_password=Pa55:w0rd&role=replica#m",
        "redis-sentinel://h1?sentinel_password=Pa55=w0rd#m",
        "redis-sentinel://h1?sentinel_password=Pa55#w0rd#m%23",
        "redis-sentinel://h1?role=master&connect_timeout_ms=1&command_timeout_ms=2#m",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        leash_pool *p = leash_redis_pool("good", good[i], NULL);
        if (!p)
            fail_msg("#%zu %s: %s", i, good[i], leash_last_error());
        const char *shown = leash_pool_target(p);
        if (strstr(shown, "Pa55") || strstr(shown, "w0rd") || !strstr(shown, "redis-sentinel://"))
            fail_msg("#%zu: the description \"%s\"", i, shown);
        char *d = dump(LEASH_FORMAT_TEXT);
        assert_null(strstr(d, "Pa55"));
        assert_null(strstr(d, "w0rd"));
        free(d);
        leash_pool_close(p);
    }
}

/* ---- connects ---- */

/* Through the three sentinels to the master: writes land there, the connection is checked
 * with ROLE, and the dump shows the sentinel set, the master name and the master's address
 * (the connection's peer), never a password. */
static void test_sentinel_basic(void **state)
{
    capture_start();
    leash_pool *p = spool("ha", SURL, 2);
    leash_handle *h = take(p);
    LEASH_REPLY redisReply *s = leash_redis_command(h, "SET leash:ha %s", "v");
    assert_non_null(s);
    assert_int_equal(s->type, REDIS_REPLY_STATUS);
    assert_int_equal(server_port(h), SRV_SENTINEL_MASTER_PORT);
    char role[16];
    assert_string_equal(role_of(h, role, sizeof role), "master");
    leash_release(&h);
    char *d = dump(LEASH_FORMAT_TEXT);
    if (!strstr(d, "redis-sentinel://:***@" SENTINELS "/0#" SRV_SENTINEL_NAME) ||
        !strstr(d, "127.0.0.1:16391"))
        fail_msg("the dump does not show the sentinels, the name and the master: %s", d);
    assert_null(strstr(d, SRV_SENTINEL_PASSWORD));
    assert_null(strstr(d, SRV_SENTINEL_DATA_PASSWORD));
    free(d);
    /* a user name for the sentinels too (the default user) */
    leash_pool *u = spool("ha-user",
                          "redis-sentinel://default:" SRV_SENTINEL_DATA_PASSWORD "@" S1 SPW
                          "&sentinel_user=default#" SRV_SENTINEL_NAME,
                          1);
    h = take(u);
    assert_int_equal(server_port(h), SRV_SENTINEL_MASTER_PORT);
    leash_release(&h);
    assert_null(strstr(log_text, SRV_SENTINEL_PASSWORD));
    assert_balanced(p);
    assert_balanced(u);
}

/* Bad input: sentinels that do not answer, an unknown master name, wrong passwords. Each is
 * LEASH_ECONNECT saying which, without a password; a dead first sentinel costs nothing, a
 * paused one at most the connect timeout, and only once: the sentinel that answered goes
 * first next time. */
static void test_sentinel_unreachable(void **state)
{
    capture_start();
    static const struct {
        const char *url, *says;
    } bad[] = {
        {"redis-sentinel://127.0.0.1:16398,127.0.0.1:16399" SPW "#" SRV_SENTINEL_NAME,
         "no sentinel answered"},
        {"redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" SENTINELS SPW "#nope",
         "unknown master name \"nope\""},
        {"redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" S1
         "?sentinel_password=Wr0ngPw#" SRV_SENTINEL_NAME,
         "AUTH failed"},
        {"redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" S1 "#" SRV_SENTINEL_NAME, "NOAUTH"},
        {"redis-sentinel://:Wr0ngPw@" S1 SPW "#" SRV_SENTINEL_NAME, "WRONGPASS"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        leash_pool *p = spool("down", bad[i].url, 1);
        double t0 = now_s();
        assert_null(leash_acquire(p));
        double took = now_s() - t0;
        assert_int_equal(leash_last_status(), LEASH_ECONNECT);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].says) || strstr(msg, "Wr0ng") || strstr(msg, "leash-ha-pw") ||
            strstr(msg, SRV_SENTINEL_PASSWORD))
            fail_msg("#%zu: \"%s\" (wanted \"%s\", no password)", i, msg, bad[i].says);
        assert_true(took < 1.5);
        leash_pool_close(p);
    }
    assert_null(strstr(log_text, "Wr0ng"));
    /* the adapter table used directly has no context for the watcher: refused, and says why */
    leash_pool *direct = leash_pool_open("direct", &leash_redis_adapter, SURL, NULL);
    assert_non_null(direct);
    assert_null(leash_acquire(direct));
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_non_null(strstr(leash_last_error(), "needs leash_redis_pool"));
    assert_null(strstr(leash_last_error(), SRV_SENTINEL_PASSWORD));
    assert_null(strstr(leash_pool_target(direct), SRV_SENTINEL_DATA_PASSWORD));
    leash_pool_close(direct);

    /* a dead first sentinel: no cost */
    leash_pool *p = spool("first-dead",
                          "redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD
                          "@127.0.0.1:16399," SENTINELS SPW "#" SRV_SENTINEL_NAME,
                          2);
    leash_handle *h = take(p);
    assert_int_equal(server_port(h), SRV_SENTINEL_MASTER_PORT);
    leash_release(&h);

    /* a paused first sentinel: the first connect waits the connect timeout (300 ms) once */
    leash_pool *q = spool("first-paused",
                          "redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" SENTINELS SPW
                          "&connect_timeout_ms=300#" SRV_SENTINEL_NAME,
                          2);
    assert_int_equal(srv_signal(SRV_SENTINEL1_PIDFILE, SIGSTOP), 0);
    double t0 = now_s();
    leash_handle *a = leash_acquire(q);
    double first = now_s() - t0;
    t0 = now_s();
    leash_handle *b = leash_acquire(q); /* a second connection */
    double second = now_s() - t0;
    assert_int_equal(srv_signal(SRV_SENTINEL1_PIDFILE, SIGCONT), 0);
    if (!a || !b)
        fail_msg("no connection with the first sentinel paused: %s", leash_last_error());
    assert_int_equal(server_port(a), SRV_SENTINEL_MASTER_PORT);
    assert_int_equal(server_port(b), SRV_SENTINEL_MASTER_PORT);
    leash_release(&a);
    leash_release(&b);
    if (first < 0.25 || first > 1.2 || second > 0.2)
        fail_msg("first connect %.3f s, second %.3f s (connect timeout 0.3 s)", first, second);
    assert_balanced(p);
    assert_balanced(q);
}

/* ---- failover ---- */

struct writer {
    leash_pool *pool;
    int id;
    atomic_int *stop;
    _Atomic double *switched; /* when the sentinel named the new master; 0 before */
    int new_port;
    int ok, failed, bad_status, wrong_node;
    double first_ok_after, max_op;
};

/* After the switch, a borrow that starts this long after the sentinel named the new master
 * must reach it (the watcher hears +switch-master at the same moment as the test). */
#define SWITCH_MARGIN 0.5

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    while (!atomic_load(w->stop)) {
        double t0 = now_s();
        int port = -1;
        leash_status st = LEASH_OK;
        leash_handle *h = leash_acquire(w->pool);
        if (h) {
            LEASH_REPLY redisReply *r = leash_redis_command(h, "INCR leash:ha:%d", w->id);
            if (r && r->type == REDIS_REPLY_INTEGER)
                port = server_port(h);
            else if (!r)
                st = leash_last_status();
            leash_release(&h);
        } else {
            st = leash_last_status();
        }
        double t1 = now_s();
        if (t1 - t0 > w->max_op)
            w->max_op = t1 - t0;
        double sw = atomic_load(w->switched);
        if (port > 0) {
            w->ok++;
            if (sw > 0 && t0 > sw && !w->first_ok_after && port == w->new_port)
                w->first_ok_after = t1;
            if (sw > 0 && t0 > sw + SWITCH_MARGIN && port != w->new_port)
                w->wrong_node++;
        } else {
            w->failed++;
            if (st != LEASH_OK && st != LEASH_ECONNECT && st != LEASH_EIO && st != LEASH_ETIMEDOUT)
                w->bad_status++;
            sleep_ms(5);
        }
    }
    return NULL;
}

/* SENTINEL FAILOVER while 8 threads write: no operation hangs, no handle is lost, every
 * thread writes again within a few seconds, and every borrow that starts after the switch
 * reaches the new master (its port, from CLIENT INFO). */
static void test_sentinel_failover_under_load(void **state)
{
    enum { THREADS = 8 };
    leash_pool *p = spool("ha-load", SURL, 4);
    atomic_int stop = 0;
    _Atomic double switched = 0;
    pthread_t t[THREADS];
    struct writer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct writer){.pool = p,
                               .id = i,
                               .stop = &stop,
                               .switched = &switched,
                               .new_port = SRV_SENTINEL_REPLICA_PORT};
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    sleep_ms(300);
    double sw = failover();
    atomic_store(&switched, sw);
    sleep_ms(2500);
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].bad_status, 0);
        if (!w[i].first_ok_after || w[i].first_ok_after - sw > 2.0)
            fail_msg("thread %d: no write on the new master within 2 s of the switch", i);
        if (w[i].wrong_node)
            fail_msg("thread %d: %d borrows after the switch reached the old master", i,
                     w[i].wrong_node);
        if (w[i].max_op > 2.5)
            fail_msg("thread %d: an operation took %.3f s", i, w[i].max_op);
    }
    assert_int_equal(leash_outstanding(), 0);
    leash_pool_stats s = stats(p);
    assert_true(s.destroyed_evicted > 0);
    assert_int_equal(s.dirty_returns, 0);
    assert_balanced(p);
}

/* A failover with an idle pool and no traffic: its idle connections are retired within a
 * second of the switch (nobody borrows), and the first borrow afterwards succeeds at once on
 * the new master. */
static void test_sentinel_failover_idle(void **state)
{
    leash_pool *p = spool("ha-idle", SURL, 3);
    leash_handle *h[3];
    for (int i = 0; i < 3; i++)
        h[i] = take(p);
    for (int i = 0; i < 3; i++)
        leash_release(&h[i]);
    assert_int_equal(stats(p).idle, 3);
    sleep_ms(300); /* the watcher is subscribed */
    double sw = failover();
    while (stats(p).idle > 0 && now_s() - sw < 3.0)
        sleep_ms(10);
    double gone = now_s() - sw;
    leash_pool_stats s = stats(p);
    if (s.idle != 0 || gone > 1.0)
        fail_msg("idle connections to the old master still there %.3f s after the switch", gone);
    assert_int_equal(s.destroyed_evicted, 3);
    leash_handle *n = take(p);
    LEASH_REPLY redisReply *r = leash_redis_command(n, "SET leash:ha:idle %s", "after");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    assert_int_equal(server_port(n), SRV_SENTINEL_REPLICA_PORT);
    leash_release(&n);
    assert_balanced(p);
}

/* The master killed outright (SIGKILL, no manual failover): the sentinels agree it is down
 * and promote the replica; writers fail meanwhile with connection statuses, then every one
 * writes on the new master, with no handle lost and no borrow after the switch on the dead
 * node. */
static void test_sentinel_master_killed(void **state)
{
    enum { THREADS = 4 };
    leash_pool *p = spool("ha-kill", SURL, 3);
    atomic_int stop = 0;
    _Atomic double switched = 0;
    pthread_t t[THREADS];
    struct writer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct writer){.pool = p,
                               .id = i,
                               .stop = &stop,
                               .switched = &switched,
                               .new_port = SRV_SENTINEL_REPLICA_PORT};
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    sleep_ms(300);
    assert_int_equal(srv_signal(SRV_SENTINEL_MASTER_PIDFILE, SIGKILL), 0);
    double sw = 0;
    for (int i = 0; i < 2000 && !sw; i++) {
        if (master_port(SRV_SENTINEL_PORT1) == SRV_SENTINEL_REPLICA_PORT)
            sw = now_s();
        else
            sleep_ms(10);
    }
    if (!sw)
        fail_msg("the sentinels did not promote the replica within 20 s");
    atomic_store(&switched, sw);
    sleep_ms(2000);
    atomic_store(&stop, 1);
    int failed = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        failed += w[i].failed;
        assert_int_equal(w[i].bad_status, 0);
        if (!w[i].first_ok_after || w[i].first_ok_after - sw > 1.5)
            fail_msg("thread %d: no write on the new master within 1.5 s of the switch", i);
        assert_int_equal(w[i].wrong_node, 0);
        if (w[i].max_op > 2.5)
            fail_msg("thread %d: an operation took %.3f s", i, w[i].max_op);
    }
    assert_true(failed > 0); /* the master was down for a while */
    assert_int_equal(leash_outstanding(), 0);
    assert_balanced(p);
}

/* Bad input: a write on a read-only node through a plain redis:// pool (the topology's
 * replica). -READONLY is returned to the caller as a reply, and the connection is retired at
 * release (broken: destroyed, not dirty, no strict-mode report); the next borrow connects
 * anew. On a role=replica pool the same reply is expected and retires nothing. */
static void test_readonly_plain_pool(void **state)
{
    assert_int_equal(leash_strict(), 1);
    capture_start();
    leash_pool *p = spool("ro", "redis://:" SRV_SENTINEL_DATA_PASSWORD "@127.0.0.1:16392", 1);
    leash_handle *h = take(p);
    LEASH_REPLY redisReply *r = leash_redis_command(h, "SET leash:ro %s", "x");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "READONLY"));
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_broken, 1);
    assert_int_equal(s.dirty_returns, 0);
    h = take(p);
    LEASH_REPLY redisReply *g = leash_redis_command(h, "GET leash:ro");
    assert_non_null(g);
    leash_release(&h);
    s = stats(p);
    assert_int_equal(s.created, 2);
    assert_int_equal(s.destroyed, 1);
    assert_non_null(strstr(log_text, "READONLY"));
    assert_non_null(strstr(log_text, "\"ro\""));

    leash_pool *q = spool("ro-replica",
                          "redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" SENTINELS SPW
                          "&role=replica#" SRV_SENTINEL_NAME,
                          1);
    h = take(q);
    LEASH_REPLY redisReply *w = leash_redis_command(h, "SET leash:ro %s", "x");
    assert_non_null(w);
    assert_int_equal(w->type, REDIS_REPLY_ERROR);
    leash_release(&h);
    assert_int_equal(stats(q).destroyed, 0);
    assert_balanced(p);
    assert_balanced(q);
}

/* role=replica: connections go to a healthy replica, ROLE slave; a write there is refused
 * by Redis. When that replica is promoted, its connections leave the pool within a second
 * (they would now write to the master). */
static void test_sentinel_replica_pool(void **state)
{
    leash_pool *p = spool("ha-replica",
                          "redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" SENTINELS SPW
                          "&role=replica#" SRV_SENTINEL_NAME,
                          2);
    leash_handle *a = take(p), *b = take(p);
    char role[16];
    assert_int_equal(server_port(a), SRV_SENTINEL_REPLICA_PORT);
    assert_int_equal(server_port(b), SRV_SENTINEL_REPLICA_PORT);
    assert_string_equal(role_of(a, role, sizeof role), "slave");
    leash_release(&a);
    leash_release(&b);
    sleep_ms(300);
    double sw = failover();
    /* Gone means destroyed (counted), not only off the idle stack: an eviction takes them
     * off first, then closes them. */
    while ((stats(p).idle > 0 || stats(p).destroyed_evicted < 2) && now_s() - sw < 3.0)
        sleep_ms(10);
    if (stats(p).idle > 0)
        fail_msg("the promoted replica's connections are still idle in the pool");
    assert_true(now_s() - sw < 1.0);
    assert_int_equal(stats(p).destroyed_evicted, 2);
    /* the old master becomes a replica only later: until then there is none to lend */
    leash_handle *h = leash_acquire_for(p, 500);
    if (h) {
        assert_int_equal(server_port(h), SRV_SENTINEL_MASTER_PORT);
        assert_string_equal(role_of(h, role, sizeof role), "slave");
        leash_release(&h);
    } else {
        assert_int_equal(leash_last_status(), LEASH_ECONNECT);
        assert_non_null(strstr(leash_last_error(), "replica"));
    }
    assert_balanced(p);
}

/* A master demoted behind the sentinels' back (REPLICAOF on it: no +switch-master, no event
 * for the pool): its idle connections are not lent again, since validation checks ROLE, and
 * a new connection to it is refused by the ROLE check at connect (the sentinels still name
 * it). No borrow ever reaches it as a writable master. */
static void test_sentinel_demoted_without_event(void **state)
{
    leash_pool_options o = {.max_size = 2, .acquire_timeout_ms = 1000, .validate_idle_ms = 50};
    leash_pool *p = leash_redis_pool("ha-demoted", SURL, &o);
    assert_non_null(p);
    leash_handle *a = take(p), *b = take(p);
    leash_release(&a);
    leash_release(&b);
    redisContext *m = node(SRV_SENTINEL_MASTER_PORT, SRV_SENTINEL_DATA_PASSWORD);
    redisReply *r = redisCommand(m, "REPLICAOF 127.0.0.1 %d", SRV_SENTINEL_REPLICA_PORT);
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(m);
    sleep_ms(150);
    for (int i = 0; i < 4; i++) {
        leash_handle *h = leash_acquire(p);
        if (!h) {
            assert_int_equal(leash_last_status(), LEASH_ECONNECT);
            assert_non_null(strstr(leash_last_error(), "role is slave"));
            continue;
        }
        char role[16];
        assert_string_equal(role_of(h, role, sizeof role), "master");
        leash_release(&h);
    }
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_invalid + s.destroyed_evicted, 2);
    assert_true(s.destroyed_invalid >= 1);
    assert_balanced(p);
}

/* -READONLY on a Sentinel pool: a borrower holds a connection to the master while it is
 * demoted behind the sentinels' back; its write gets -READONLY (returned to the caller), its
 * handle is retired at release, and the pool's idle connection to that node is retired at
 * once (the watcher, kicked), long before any validation would look at it. */
static void test_sentinel_readonly_kick(void **state)
{
    capture_start();
    leash_pool_options o = {.max_size = 2, .acquire_timeout_ms = 1000, .validate_idle_ms = 60000};
    leash_pool *p = leash_redis_pool("ha-readonly", SURL, &o);
    assert_non_null(p);
    leash_handle *a = take(p), *h = take(p);
    leash_release(&a); /* idle, to the master */
    redisContext *m = node(SRV_SENTINEL_MASTER_PORT, SRV_SENTINEL_DATA_PASSWORD);
    redisReply *r = redisCommand(m, "REPLICAOF 127.0.0.1 %d", SRV_SENTINEL_REPLICA_PORT);
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(m);
    LEASH_REPLY redisReply *w = leash_redis_command(h, "SET leash:ha:ro %s", "x");
    assert_non_null(w);
    assert_int_equal(w->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(w->str, "READONLY"));
    double t0 = now_s();
    while (stats(p).idle > 0 && now_s() - t0 < 2.0)
        sleep_ms(5);
    if (stats(p).idle > 0)
        fail_msg("the idle connection to the demoted master is still in the pool");
    assert_true(now_s() - t0 < 0.5);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_evicted + s.destroyed_broken, 2);
    assert_int_equal(s.dirty_returns, 0);
    assert_non_null(strstr(log_text, "READONLY"));
    assert_non_null(strstr(log_text, "\"ha-readonly\""));
    assert_balanced(p);
}

/* ---- fork and shutdown ---- */

static leash_pool *fork_pool;

static void child_uses_pool(void *arg)
{
    /* the parent's watcher does not exist here: the child's first connect starts its own
     * and finds the master from scratch (given 10 s: once, under AddressSanitizer on a
     * loaded machine, it was still in flight after the pool's 2 s) */
    leash_handle *h = leash_acquire_for(fork_pool, 10000);
    if (!h) {
        fprintf(stderr, "child: acquire failed: %s\n", leash_last_error());
        _exit(10);
    }
    redisReply *r = leash_redis_command(h, "SET leash:ha:fork %s", "child");
    if (!r || r->type != REDIS_REPLY_STATUS)
        _exit(11);
    freeReplyObject(r);
    if (server_port(h) != SRV_SENTINEL_MASTER_PORT)
        _exit(12);
    leash_release(&h);
    leash_shutdown(); /* joins the child's watcher */
    _exit(threads_now() == 1 ? 0 : 13);
}

/* A forked child uses the Sentinel pool (its own connections and watcher) and shuts down
 * cleanly; the parent's connection and watcher are untouched (the same CLIENT ID, and a
 * failover afterwards still retires the parent's idle connection). */
static void test_sentinel_fork(void **state)
{
    fork_pool = spool("ha-fork", SURL, 2);
    leash_handle *h = take(fork_pool);
    LEASH_REPLY redisReply *id = leash_redis_command(h, "CLIENT ID");
    assert_non_null(id);
    leash_release(&h);
    char *err = NULL;
    int st = run_child(child_uses_pool, NULL, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d, stderr: %s", st, err);
    free(err);
    h = take(fork_pool);
    LEASH_REPLY redisReply *id2 = leash_redis_command(h, "CLIENT ID");
    assert_int_equal(id2->integer, id->integer);
    leash_release(&h);
    double sw = failover();
    while (stats(fork_pool).idle > 0 && now_s() - sw < 3.0)
        sleep_ms(10);
    assert_int_equal(stats(fork_pool).idle, 0);
    assert_balanced(fork_pool);
}

/* leash_shutdown while the watcher is subscribed, and while it waits on a paused sentinel
 * (for up to its 3 s connect timeout): it returns at once and leaves no thread behind. */
static void test_sentinel_shutdown(void **state)
{
    int before = threads_now();
    for (int round = 0; round < 2; round++) {
        leash_pool *p = spool("ha-down",
                              "redis-sentinel://:" SRV_SENTINEL_DATA_PASSWORD "@" SENTINELS SPW
                              "&connect_timeout_ms=3000#" SRV_SENTINEL_NAME,
                              1);
        leash_handle *h = take(p);
        leash_release(&h);
        if (round == 1)
            assert_int_equal(srv_signal(SRV_SENTINEL1_PIDFILE, SIGSTOP), 0);
        sleep_ms(300);
        double t0 = now_s();
        leash_shutdown();
        double took = now_s() - t0;
        if (round == 1)
            assert_int_equal(srv_signal(SRV_SENTINEL1_PIDFILE, SIGCONT), 0);
        if (took > 1.0) /* not the watcher's 3 s connect timeout */
            fail_msg("round %d: leash_shutdown took %.3f s", round, took);
        assert_int_equal(threads_now(), before);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sentinel_bad_urls, teardown),
        cmocka_unit_test_teardown(test_sentinel_basic, teardown),
        cmocka_unit_test_teardown(test_sentinel_unreachable, teardown),
        cmocka_unit_test_teardown(test_readonly_plain_pool, teardown),
        cmocka_unit_test_teardown(test_sentinel_shutdown, teardown),
        cmocka_unit_test_teardown(test_sentinel_failover_idle, teardown),
        cmocka_unit_test_teardown(test_sentinel_failover_under_load, teardown),
        cmocka_unit_test_teardown(test_sentinel_replica_pool, teardown),
        cmocka_unit_test_teardown(test_sentinel_fork, teardown),
        cmocka_unit_test_teardown(test_sentinel_demoted_without_event, teardown),
        cmocka_unit_test_teardown(test_sentinel_readonly_kick, teardown),
        cmocka_unit_test_teardown(test_sentinel_master_killed, teardown),
    };
    return cmocka_run_group_tests_name("sentinel", tests, group_setup, NULL);
}

/* Integration tests of the Redis adapter against real redis-server instances
 * (tests/servers.d/redis.sh). */
#include "servers.h"

#include <leash/redis.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define URL "redis://127.0.0.1:16379"
#define AUTH_URL "redis://:" SRV_REDIS_PASSWORD "@127.0.0.1:16380"

/* ---- helpers ---- */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A plain hiredis connection to the password-less instance, outside leash (for CLIENT KILL,
 * checks and setup). */
static redisContext *admin(void)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, tv);
    if (!rc || rc->err)
        fail_msg("admin connect: %s", rc ? rc->errstr : "out of memory");
    redisSetTimeout(rc, tv);
    return rc;
}

/* Runs a command on the admin connection; fails the test unless a reply came. */
static redisReply *admin_cmd(redisContext *rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("admin %s: %s", fmt, rc->errstr);
    return r;
}

static leash_pool *pool(const char *name, const char *url, int max_size)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 5000};
    leash_pool *p = leash_redis_pool(name, url, &o);
    if (!p)
        fail_msg("pool %s: %s", name, leash_last_error());
    return p;
}

static leash_handle *take(leash_pool *p)
{
    leash_handle *h = leash_acquire(p);
    if (!h)
        fail_msg("acquire: %s", leash_last_error());
    return h;
}

/* Runs a command through h that must answer (not an error reply); returns the reply. */
#define must(h, ...) checked(leash_redis_command((h), __VA_ARGS__), #__VA_ARGS__)
static redisReply *checked(redisReply *r, const char *what)
{
    if (!r)
        fail_msg("%s: %s", what, leash_last_error());
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", what, r->str);
    return r;
}

/* GET key through h, as a malloc'd string ("(nil)" for none). */
static char *get(leash_handle *h, const char *key)
{
    LEASH_REPLY redisReply *r = must(h, "GET %s", key);
    return strdup(r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
}

static void set(leash_handle *h, const char *key, const char *value)
{
    LEASH_REPLY redisReply *r = leash_redis_command(h, "SET %s %s", key, value);
    if (!r || r->type != REDIS_REPLY_STATUS)
        fail_msg("SET %s: %s", key, r ? r->str : leash_last_error());
}

static long long client_id(leash_handle *h)
{
    LEASH_REPLY redisReply *r = must(h, "CLIENT ID");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    return r->integer;
}

/* The value of field (e.g. "db") in this connection's CLIENT INFO line (malloc'd). */
static char *client_info(leash_handle *h, const char *field)
{
    LEASH_REPLY redisReply *r = must(h, "CLIENT INFO");
    char key[64];
    snprintf(key, sizeof key, " %s=", field);
    const char *p = strstr(r->str, key);
    if (!p)
        fail_msg("CLIENT INFO has no %s: %s", field, r->str);
    p += strlen(key);
    return strndup(p, strcspn(p, " \r\n"));
}

static leash_pool_stats stats(leash_pool *p)
{
    leash_pool_stats s;
    assert_int_equal(leash_pool_stats_get(p, &s), LEASH_OK);
    return s;
}

/* The counting invariant of DESIGN.md, for a quiet pool. */
static void assert_balanced(leash_pool *p)
{
    leash_pool_stats s = stats(p);
    assert_int_equal(s.in_use, 0);
    assert_int_equal(s.acquired, s.released + s.discarded + s.leaks_reclaimed + s.leaks_at_close);
    assert_int_equal(s.misuse, 0);
}

/* Release checking off (the production default), for tests of dirty returns being cleaned. */
static void default_mode(void)
{
    leash_shutdown();
    assert_int_equal(leash_init(&(leash_config){.strict = 0, .stats_signal = 0, .stats_fd = -1}),
                     LEASH_OK);
    assert_int_equal(leash_strict(), 0);
}

/* ---- log capture ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[16384];
static size_t log_len;

static void capture(int level, const char *msg, void *arg)
{
    pthread_mutex_lock(&log_lock);
    int n = snprintf(log_text + log_len, sizeof log_text - log_len, "[%d] %s\n", level, msg);
    if (n > 0 && (size_t)n < sizeof log_text - log_len)
        log_len += (size_t)n;
    pthread_mutex_unlock(&log_lock);
}

static void capture_start(void)
{
    pthread_mutex_lock(&log_lock);
    log_len = 0;
    log_text[0] = '\0';
    pthread_mutex_unlock(&log_lock);
    leash_set_log(capture, NULL);
}

/* Reads everything from fd until EOF (malloc'd). */
static char *slurp(int fd)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 1024 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return buf;
}

/* A dump of every pool in fmt, as a string (malloc'd). */
static char *dump(leash_format fmt)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(leash_stats_dump(fileno(f), fmt), 0);
    rewind(f);
    char *text = slurp(fileno(f));
    fclose(f);
    return text;
}

/* Runs fn in a child process with stderr captured: returns its wait status, and its stderr
 * in *err (malloc'd). */
static int run_child(void (*fn)(void), char **err)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        fn();
        _exit(0);
    }
    close(fds[1]);
    *err = slurp(fds[0]);
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    return st;
}

static int teardown(void **state)
{
    srv_signal(SRV_REDIS_PIDFILE, SIGCONT); /* in case a pause test failed half-way */
    leash_set_log(NULL, NULL);
    assert_int_equal(leash_check_leaks(2), 0);
    leash_shutdown();
    return 0;
}

static int group_setup(void **state)
{
    return srv_ctl("start", "redis") == 0 ? 0 : -1;
}

/* ---- basics ---- */

/* SET and GET through the pool; the connection is reused; the socket is close-on-exec with
 * keepalive; dumps show the target without the password. */
static void test_set_get(void **state)
{
    leash_pool *p = pool("basic", URL, 2);
    leash_handle *h = take(p);
    set(h, "leash:basic", "hello");
    char *v = get(h, "leash:basic");
    assert_string_equal(v, "hello");
    free(v);
    long long id = client_id(h);
    redisContext *rc = leash_redis(h);
    assert_non_null(rc);
    assert_true(fcntl(rc->fd, F_GETFD) & FD_CLOEXEC);
    int ka = 0;
    socklen_t kalen = sizeof ka;
    assert_int_equal(getsockopt(rc->fd, SOL_SOCKET, SO_KEEPALIVE, &ka, &kalen), 0);
    assert_int_equal(ka, 1);
    leash_release(&h);
    assert_null(h);

    h = take(p);
    assert_int_equal(client_id(h), id); /* the same connection, raw use was clean */
    {
        LEASH_REPLY redisReply *err = leash_redis_command(h, "INCR %s", "leash:basic");
        assert_non_null(err); /* an error reply is a reply, not a failure */
        assert_int_equal(err->type, REDIS_REPLY_ERROR);
    }
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.created, 1);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.dirty_returns, 0);
    assert_string_equal(s.kind, "redis");
    assert_balanced(p);

    leash_pool *a = pool("basic-auth", AUTH_URL "/2?command_timeout_ms=900", 1);
    h = take(a);
    set(h, "leash:auth", "ok");
    char *db = client_info(h, "db");
    assert_string_equal(db, "2");
    free(db);
    leash_release(&h);
    for (leash_format f = LEASH_FORMAT_TEXT; f <= LEASH_FORMAT_PROMETHEUS; f++) {
        char *d = dump(f);
        assert_null(strstr(d, SRV_REDIS_PASSWORD));
        if (f == LEASH_FORMAT_TEXT && !strstr(d, "redis://:***@127.0.0.1:16380/2"))
            fail_msg("the text dump does not show the target: %s", d);
        free(d);
    }
    assert_balanced(a);
}

/* Pooled connections are verified with PING only after validate_idle_ms of idleness. */
static void test_validate_only_when_idle(void **state)
{
    leash_pool_options o = {.max_size = 1, .validate_idle_ms = 150};
    leash_pool *p = leash_redis_pool("validate", URL, &o);
    assert_non_null(p);
    redisContext *ad = admin();
    leash_handle *h = take(p);
    leash_release(&h); /* connected (its PING is part of the connect) */
    freeReplyObject(admin_cmd(ad, "CONFIG RESETSTAT"));
    for (int i = 0; i < 20; i++) {
        h = take(p);
        set(h, "leash:validate", "x");
        leash_release(&h);
    }
    redisReply *r = admin_cmd(ad, "INFO commandstats");
    assert_null(strstr(r->str, "cmdstat_ping:"));
    freeReplyObject(r);
    sleep_ms(400); /* the pools' clock is coarse (up to 100 ms when quiet) */
    h = take(p);
    leash_release(&h);
    r = admin_cmd(ad, "INFO commandstats");
    if (!strstr(r->str, "cmdstat_ping:calls=1,"))
        fail_msg("expected exactly one PING: %s", r->str);
    freeReplyObject(r);
    redisFree(ad);
    assert_balanced(p);
}

struct worker {
    leash_pool *pool;
    int id, iterations, failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->iterations; i++) {
        leash_handle *h = leash_acquire(w->pool);
        if (!h) {
            w->failures++;
            continue;
        }
        LEASH_REPLY redisReply *r = leash_redis_command(h, "INCR %s", "leash:threads");
        if (!r || r->type != REDIS_REPLY_INTEGER)
            w->failures++;
        LEASH_REPLY redisReply *g = leash_redis_command(h, "GET %s", "leash:threads");
        if (!g || g->type != REDIS_REPLY_STRING)
            w->failures++;
        leash_release(&h);
    }
    return NULL;
}

/* Many threads share a small pool: every INCR lands, counters balance, at most max_size
 * connections are ever made. */
static void test_many_threads(void **state)
{
    enum { THREADS = 8, ITER = 400 };
    leash_pool *p = pool("threads", URL, 3);
    redisContext *ad = admin();
    freeReplyObject(admin_cmd(ad, "DEL leash:threads"));
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.pool = p, .id = i, .iterations = ITER};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    redisReply *r = admin_cmd(ad, "GET leash:threads");
    assert_string_equal(r->str, "3200");
    freeReplyObject(r);
    redisFree(ad);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.acquired, THREADS * ITER);
    assert_int_equal(s.released, THREADS * ITER);
    assert_true(s.created <= 3);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.timeouts, 0);
    assert_balanced(p);
}

/* ---- dirty returns ---- */

/* A borrower that appended commands through the raw context and did not read the replies:
 * the next borrower's GET returns its own value, whether the commands were never sent
 * (destroyed), sent and answered (drained), or still running at release (drained after a
 * wait). */
static void test_stale_reply(void **state)
{
    default_mode();
    capture_start();
    leash_pool *p = pool("stale", URL, 1);
    leash_handle *h = take(p);
    set(h, "leash:stale:1", "first");
    set(h, "leash:stale:2", "second");
    set(h, "leash:stale:mine", "mine");

    /* 1: appended, never sent: hiredis's output buffer holds it. */
    redisAppendCommand(leash_redis(h), "GET leash:stale:1");
    leash_release(&h);
    h = take(p);
    char *v = get(h, "leash:stale:mine");
    assert_string_equal(v, "mine");
    free(v);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 1);
    assert_int_equal(s.destroyed, 1);
    long long id = client_id(h);

    /* 2: two appended, one read: the other reply sits in hiredis's reader or the socket. */
    redisContext *rc = leash_redis(h);
    redisAppendCommand(rc, "GET leash:stale:1");
    redisAppendCommand(rc, "GET leash:stale:2");
    redisReply *first = NULL;
    assert_int_equal(redisGetReply(rc, (void **)&first), REDIS_OK);
    assert_string_equal(first->str, "first");
    freeReplyObject(first);
    leash_release(&h);
    h = take(p);
    v = get(h, "leash:stale:mine");
    assert_string_equal(v, "mine");
    free(v);
    assert_int_equal(client_id(h), id); /* drained, not destroyed */
    s = stats(p);
    assert_int_equal(s.dirty_returns, 2);
    assert_int_equal(s.destroyed, 1);

    /* 3: a reply still on its way at release (BLPOP answers after 300 ms): the socket is
     * empty when released, so only a round trip can tell. */
    rc = leash_redis(h);
    redisAppendCommand(rc, "DEL leash:stale:list");
    redisAppendCommand(rc, "BLPOP leash:stale:list 0.3");
    redisReply *del = NULL;
    assert_int_equal(redisGetReply(rc, (void **)&del), REDIS_OK);
    freeReplyObject(del);
    leash_release(&h);
    h = take(p);
    v = get(h, "leash:stale:mine");
    assert_string_equal(v, "mine");
    free(v);
    assert_int_equal(client_id(h), id);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 3);

    /* 4: raw use that read everything is clean (not counted), and a raw SELECT is undone. */
    rc = leash_redis(h);
    redisReply *sel = redisCommand(rc, "SELECT 4");
    assert_non_null(sel);
    freeReplyObject(sel);
    leash_release(&h);
    h = take(p);
    char *db = client_info(h, "db");
    assert_string_equal(db, "0");
    free(db);
    leash_release(&h);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 3);
    assert_int_equal(s.created, 2);
    assert_non_null(strstr(log_text, "returned dirty"));
    assert_balanced(p);
}

/* State left through leash_redis_command: an open MULTI is discarded, WATCH is undone, a
 * SELECT is reverted (all reused, counted dirty); subscribe mode and a raw MULTI are
 * destroyed. */
static void test_state_left_behind(void **state)
{
    default_mode();
    capture_start();
    leash_pool *p = pool("state", URL "/1", 1);
    leash_handle *h = take(p);
    long long id = client_id(h);
    set(h, "leash:state:k", "before");
    freeReplyObject(must(h, "MULTI"));
    LEASH_REPLY redisReply *q = leash_redis_command(h, "SET leash:state:k %s", "queued");
    assert_string_equal(q->str, "QUEUED");
    leash_release(&h);
    h = take(p);
    char *v = get(h, "leash:state:k"); /* not QUEUED: MULTI was discarded */
    assert_string_equal(v, "before");
    free(v);
    assert_int_equal(client_id(h), id);
    assert_int_equal(stats(p).dirty_returns, 1);
    assert_non_null(strstr(log_text, "returned dirty"));

    freeReplyObject(must(h, "WATCH leash:state:k"));
    leash_release(&h);
    h = take(p);
    freeReplyObject(must(h, "MULTI"));
    freeReplyObject(must(h, "SET leash:state:k %s", "tx"));
    /* Another client changes the key: a WATCH left behind would abort this EXEC. */
    redisContext *ad = admin();
    freeReplyObject(admin_cmd(ad, "SELECT 1"));
    freeReplyObject(admin_cmd(ad, "SET leash:state:k other"));
    LEASH_REPLY redisReply *ex = must(h, "EXEC");
    assert_int_equal(ex->type, REDIS_REPLY_ARRAY);
    assert_int_equal(stats(p).dirty_returns, 2);

    freeReplyObject(must(h, "SELECT %s", "7"));
    leash_release(&h);
    h = take(p);
    char *db = client_info(h, "db");
    assert_string_equal(db, "1");
    free(db);
    /* a SELECT queued in a transaction takes effect at EXEC */
    freeReplyObject(must(h, "MULTI"));
    freeReplyObject(must(h, "SELECT %s", "9"));
    freeReplyObject(must(h, "EXEC"));
    leash_release(&h);
    h = take(p);
    db = client_info(h, "db");
    assert_string_equal(db, "1");
    free(db);
    assert_int_equal(client_id(h), id);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 4);
    assert_int_equal(s.destroyed, 0);

    LEASH_REPLY redisReply *sub = must(h, "SUBSCRIBE %s", "leash:chan");
    leash_release(&h);
    h = take(p);
    assert_true(client_id(h) != id);
    id = client_id(h);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 5);
    assert_int_equal(s.destroyed, 1);

    redisReply *m = redisCommand(leash_redis(h), "MULTI");
    freeReplyObject(m);
    leash_release(&h);
    h = take(p);
    assert_true(client_id(h) != id);
    leash_release(&h);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 6);
    assert_int_equal(s.destroyed, 2);
    redisFree(ad);
    assert_balanced(p);
}

/* A command that outlives command_timeout_ms: LEASH_ETIMEDOUT, the handle is broken (not
 * dirty, so strict mode stays quiet) and its release destroys the connection. */
static void test_command_timeout(void **state)
{
    assert_int_equal(leash_strict(), 1);
    leash_pool *p = pool("timeout", URL "?command_timeout_ms=200", 1);
    leash_handle *h = take(p);
    double t0 = now_s();
    redisReply *r = leash_redis_command(h, "BLPOP %s 2", "leash:timeout:none");
    double took = now_s() - t0;
    assert_null(r);
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    assert_non_null(strstr(leash_last_error(), "200 ms"));
    assert_true(took >= 0.15 && took < 1.0);
    /* the context is errored for good: later commands fail at once */
    assert_null(leash_redis_command(h, "PING"));
    assert_int_equal(leash_last_status(), LEASH_EIO);
    leash_release(&h);
    h = take(p);
    LEASH_REPLY redisReply *pong = must(h, "PING");
    assert_string_equal(pong->str, "PONG");
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed, 1);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.created, 2);
    assert_balanced(p);
}

/* ---- failures of the connection or the server ---- */

/* A connection killed (CLIENT KILL) while idle in the pool is replaced on next use, for
 * leash_redis_command and for raw use alike; one killed while held fails with LEASH_EIO and
 * is destroyed, not reported dirty. */
static void test_client_kill(void **state)
{
    capture_start();
    leash_pool *p = pool("kill", URL, 1);
    redisContext *ad = admin();
    leash_handle *h = take(p);
    long long id = client_id(h);
    leash_release(&h);
    redisReply *r = admin_cmd(ad, "CLIENT KILL ID %lld", id);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    sleep_ms(20);
    h = take(p);
    set(h, "leash:kill", "alive");
    long long id2 = client_id(h);
    assert_true(id2 != id);
    leash_release(&h);
    assert_non_null(strstr(log_text, "reconnected"));

    r = admin_cmd(ad, "CLIENT KILL ID %lld", id2);
    freeReplyObject(r);
    sleep_ms(20);
    h = take(p);
    redisContext *rc = leash_redis(h);
    redisReply *raw = redisCommand(rc, "GET leash:kill");
    assert_non_null(raw);
    assert_string_equal(raw->str, "alive");
    freeReplyObject(raw);
    long long id3 = client_id(h);
    assert_true(id3 != id2);

    /* killed while held: the borrower sees the failure */
    r = admin_cmd(ad, "CLIENT KILL ID %lld", id3);
    freeReplyObject(r);
    sleep_ms(20);
    assert_null(leash_redis_command(h, "GET %s", "leash:kill"));
    assert_int_equal(leash_last_status(), LEASH_EIO);
    assert_non_null(strstr(leash_last_error(), "127.0.0.1:16379"));
    leash_release(&h);
    h = take(p);
    char *v = get(h, "leash:kill");
    assert_string_equal(v, "alive");
    free(v);
    leash_release(&h);
    redisFree(ad);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.destroyed, 1);
    assert_balanced(p);
}

struct loader {
    leash_pool *pool;
    int id;
    atomic_int *stop;
    _Atomic double *up; /* set by the main thread once the server is back (0 until then) */
    int ok, errors, bad_status;
    double first_ok_after_up, max_op;
};

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    while (!atomic_load(l->stop)) {
        double t0 = now_s();
        int fine = 0;
        leash_status st = LEASH_OK;
        leash_handle *h = leash_acquire(l->pool);
        if (h) {
            LEASH_REPLY redisReply *r = leash_redis_command(h, "INCR leash:load:%d", l->id);
            fine = r && r->type == REDIS_REPLY_INTEGER;
            if (!r)
                st = leash_last_status();
            leash_release(&h);
        } else {
            st = leash_last_status();
        }
        double t1 = now_s();
        if (t1 - t0 > l->max_op)
            l->max_op = t1 - t0;
        if (fine) {
            l->ok++;
            double up = atomic_load(l->up);
            if (up > 0 && l->first_ok_after_up == 0 && t0 >= up)
                l->first_ok_after_up = t1;
        } else {
            l->errors++;
            if (st != LEASH_ECONNECT && st != LEASH_EIO && st != LEASH_ETIMEDOUT)
                l->bad_status++;
            sleep_ms(5);
        }
    }
    return NULL;
}

/* The server stops and comes back while 8 threads work: errors during the gap are reported
 * with a connection status, no handle is lost, nobody hangs, and every thread is served again
 * within a second of the restart. */
static void test_restart_under_load(void **state)
{
    enum { THREADS = 8 };
    leash_pool_options o = {.max_size = 4, .acquire_timeout_ms = 1000};
    leash_pool *p =
        leash_redis_pool("restart", URL "?connect_timeout_ms=500&command_timeout_ms=1000", &o);
    assert_non_null(p);
    atomic_int stop = 0;
    _Atomic double up = 0;
    pthread_t t[THREADS];
    struct loader l[THREADS];
    for (int i = 0; i < THREADS; i++) {
        l[i] = (struct loader){.pool = p, .id = i, .stop = &stop, .up = &up};
        assert_int_equal(pthread_create(&t[i], NULL, loader_main, &l[i]), 0);
    }
    sleep_ms(300);
    assert_int_equal(srv_ctl("stop", "redis"), 0);
    sleep_ms(400);
    assert_int_equal(srv_ctl("start", "redis"), 0);
    atomic_store(&up, now_s());
    sleep_ms(1500);
    atomic_store(&stop, 1);
    int errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        errors += l[i].errors;
        assert_int_equal(l[i].bad_status, 0);
        assert_true(l[i].ok > 0);
        if (l[i].first_ok_after_up == 0 || l[i].first_ok_after_up - up > 1.0)
            fail_msg("thread %d: no success within a second of the restart (%.3f s)", i,
                     l[i].first_ok_after_up ? l[i].first_ok_after_up - up : -1.0);
        if (l[i].max_op > 2.5)
            fail_msg("thread %d: an operation took %.3f s", i, l[i].max_op);
    }
    assert_true(errors > 0);
    assert_int_equal(leash_outstanding(), 0);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 0);
    assert_true(s.destroyed > 0);
    assert_true(s.size <= 4);
    assert_balanced(p);
}

struct pauser {
    leash_pool *pool;
    int failures, successes;
    double max_op;
};

static void *pauser_main(void *arg)
{
    struct pauser *w = arg;
    for (int i = 0; i < 3; i++) {
        double t0 = now_s();
        leash_handle *h = leash_acquire(w->pool);
        redisReply *r = h ? leash_redis_command(h, "GET %s", "leash:pause") : NULL;
        if (r)
            w->successes++;
        else
            w->failures++;
        freeReplyObject(r);
        leash_release(&h);
        double took = now_s() - t0;
        if (took > w->max_op)
            w->max_op = took;
    }
    return NULL;
}

/* A server paused with SIGSTOP (it still accepts TCP connections): acquires and commands fail
 * within their timeouts, no thread hangs, and service resumes after SIGCONT. */
static void test_paused_server(void **state)
{
    enum { THREADS = 4 };
    leash_pool_options o = {.max_size = 2, .acquire_timeout_ms = 400};
    leash_pool *p =
        leash_redis_pool("pause", URL "?connect_timeout_ms=300&command_timeout_ms=300", &o);
    assert_non_null(p);
    leash_handle *warm = take(p);
    leash_release(&warm);

    assert_int_equal(srv_signal(SRV_REDIS_PIDFILE, SIGSTOP), 0);
    pthread_t t[THREADS];
    struct pauser w[THREADS];
    double t0 = now_s();
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct pauser){.pool = p};
        assert_int_equal(pthread_create(&t[i], NULL, pauser_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    double took = now_s() - t0;
    assert_int_equal(srv_signal(SRV_REDIS_PIDFILE, SIGCONT), 0);

    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(w[i].successes, 0);
        assert_int_equal(w[i].failures, 3);
        /* worst case: wait for a slot, connect, PING at connect, then GET */
        if (w[i].max_op > 1.6)
            fail_msg("an operation took %.3f s", w[i].max_op);
    }
    assert_true(took < 5.0);
    double back = now_s();
    for (;;) {
        leash_handle *h = leash_acquire(p);
        redisReply *r = h ? leash_redis_command(h, "PING") : NULL;
        int ok = r && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        leash_release(&h);
        if (ok)
            break;
        if (now_s() - back > 1.0)
            fail_msg("not back a second after SIGCONT: %s", leash_last_error());
        sleep_ms(10);
    }
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 0);
    assert_true(s.connect_failures + s.destroyed > 0);
    assert_balanced(p);
}

/* Wrong credentials and a missing password are LEASH_ECONNECT with Redis's own message, at
 * once (not after the acquire timeout), never showing the password; right ones work. */
static void test_wrong_password(void **state)
{
    static const struct {
        const char *url, *says, *secret;
    } bad[] = {
        {"redis://:not-the-Pw@127.0.0.1:16380", "WRONGPASS", "not-the-Pw"},
        {"redis://app:not-the-Pw@127.0.0.1:16380", "WRONGPASS", "not-the-Pw"},
        {"redis://nobody:" SRV_REDIS_PASSWORD "@127.0.0.1:16380", "WRONGPASS", SRV_REDIS_PASSWORD},
        {"redis://127.0.0.1:16380", "NOAUTH", NULL},
        {"redis://:some-Pw@127.0.0.1:16379", "AUTH", "some-Pw"}, /* no password set there */
        {"redis://127.0.0.1:16399", "refused", NULL},            /* nobody listens */
        {"redis://127.0.0.1:16379/99", "SELECT 99", NULL},       /* only 16 databases */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        leash_pool *p = pool("auth", bad[i].url, 2);
        double t0 = now_s();
        assert_null(leash_acquire(p));
        double took = now_s() - t0;
        assert_int_equal(leash_last_status(), LEASH_ECONNECT);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].says))
            fail_msg("#%zu: \"%s\" does not say \"%s\"", i, msg, bad[i].says);
        if (bad[i].secret && strstr(msg, bad[i].secret))
            fail_msg("#%zu: \"%s\" shows the password", i, msg);
        assert_true(took < 0.5);
        leash_pool_stats s = stats(p);
        assert_int_equal(s.connect_failures, 1);
        assert_int_equal(s.size, 0);
        char *d = dump(LEASH_FORMAT_TEXT);
        if (bad[i].secret)
            assert_null(strstr(d, bad[i].secret));
        free(d);
        leash_pool_close(p);
    }
    leash_pool *p = pool("acl", "redis://app:app-pw@127.0.0.1:16380", 1);
    leash_handle *h = take(p);
    LEASH_REPLY redisReply *who = must(h, "ACL WHOAMI");
    assert_string_equal(who->str, "app");
    leash_release(&h);
    /* a percent-escaped password (%2D is '-') */
    leash_pool *e = pool("escaped", "redis://:leash-redis%2Dpw@127.0.0.1:16380/0", 1);
    h = take(e);
    leash_release(&h);
    assert_balanced(p);
    assert_balanced(e);
}

/* The unix socket, with its db in the query string. */
static void test_unix_socket(void **state)
{
    char url[512];
    snprintf(url, sizeof url, "unix://%s?db=2&command_timeout_ms=1000", srv_path(SRV_REDIS_SOCKET));
    leash_pool *p = pool("unix", url, 2);
    leash_handle *h = take(p);
    set(h, "leash:unix", "socket");
    char *v = get(h, "leash:unix");
    assert_string_equal(v, "socket");
    free(v);
    char *db = client_info(h, "db");
    assert_string_equal(db, "2");
    free(db);
    char *addr = client_info(h, "addr");
    assert_non_null(strstr(addr, "redis.sock"));
    free(addr);
    assert_true(fcntl(leash_redis(h)->fd, F_GETFD) & FD_CLOEXEC);
    leash_release(&h);
    char *d = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(d, "unix://"));
    free(d);
    assert_balanced(p);
}

/* ---- fork ---- */

static leash_pool *fork_pool;
static leash_handle *fork_held;

static void child_uses_pool(void)
{
    /* The idle connection and the handle held at fork are the parent's: leash must not speak
     * on them. The child makes its own, uses it, and drops everything. */
    leash_handle *h = leash_acquire(fork_pool);
    if (!h)
        _exit(10);
    redisReply *r = leash_redis_command(h, "SET leash:fork %s", "child");
    if (!r || r->type != REDIS_REPLY_STATUS)
        _exit(11);
    freeReplyObject(r);
    leash_release(&h);
    leash_release(&fork_held);
    leash_pool_close(fork_pool);
    leash_shutdown();
    _exit(0);
}

/* A forked child uses the pool while the parent keeps its connections (same CLIENT IDs
 * after the child is gone). */
static void test_fork(void **state)
{
    fork_pool = pool("fork", URL, 3);
    leash_handle *idle = take(fork_pool);
    long long idle_id = client_id(idle);
    fork_held = take(fork_pool);
    long long held_id = client_id(fork_held);
    leash_release(&idle);

    char *err = NULL;
    int st = run_child(child_uses_pool, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d, stderr: %s", st, err);
    free(err);
    sleep_ms(50);

    assert_int_equal(client_id(fork_held), held_id);
    char *v = get(fork_held, "leash:fork");
    assert_string_equal(v, "child");
    free(v);
    /* both connections are back in the pool, untouched */
    idle = take(fork_pool);
    long long a = client_id(idle), b = client_id(fork_held);
    assert_true((a == idle_id && b == held_id) || (a == held_id && b == idle_id));
    leash_release(&fork_held);
    leash_release(&idle);
    leash_pool_stats s = stats(fork_pool);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.created, 2);
    assert_balanced(fork_pool);
}

/* ---- strict mode and SIGPIPE (child processes) ---- */

static void child_leaves_multi_open(void)
{
    leash_pool *p = leash_redis_pool("strict-multi", AUTH_URL, NULL);
    if (!p)
        _exit(20);
    leash_handle *h = leash_acquire(p);
    if (!h)
        _exit(21);
    freeReplyObject(leash_redis_command(h, "MULTI"));
    leash_release(&h); /* strict mode: reported, then abort() */
    _exit(22);
}

static void child_leaves_reply_unread(void)
{
    leash_pool *p = leash_redis_pool("strict-unread", AUTH_URL, NULL);
    leash_handle *h = p ? leash_acquire(p) : NULL;
    if (!h)
        _exit(21);
    redisContext *rc = leash_redis(h);
    redisAppendCommand(rc, "PING");
    redisAppendCommand(rc, "PING");
    redisReply *r = NULL;
    if (redisGetReply(rc, (void **)&r) != REDIS_OK)
        _exit(23);
    freeReplyObject(r);
    leash_release(&h); /* one reply unread: reported, then abort() */
    _exit(22);
}

static void check_strict_abort(void (*fn)(void), const char *pool_name)
{
    char *err = NULL;
    int st = run_child(fn, &err);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
        fail_msg("child did not abort: status %d, stderr: %s", st, err);
    if (!strstr(err, pool_name) || !strstr(err, "test-redis.c") || !strstr(err, "dirty"))
        fail_msg("the report does not name the pool, the borrow site and the cause: %s", err);
    assert_null(strstr(err, SRV_REDIS_PASSWORD));
    free(err);
}

/* Strict mode (LEASH_STRICT=1 from meson) aborts on a dirty return, naming the pool and the
 * borrow site, without the password. */
static void test_strict_aborts_on_dirty_return(void **state)
{
    assert_int_equal(leash_strict(), 1);
    check_strict_abort(child_leaves_multi_open, "strict-multi");
    check_strict_abort(child_leaves_reply_unread, "strict-unread");
}

/* Kills the server side of h's connection and makes sure the kernel has seen the reset, so
 * the next write on the socket fails with EPIPE (SIGPIPE unless suppressed). */
static int kill_under(leash_handle *h)
{
    redisReply *id = leash_redis_command(h, "CLIENT ID");
    if (!id)
        return -1;
    struct timeval tv = {2, 0};
    redisContext *ad = redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, tv);
    redisReply *k = ad && !ad->err ? redisCommand(ad, "CLIENT KILL ID %lld", id->integer) : NULL;
    freeReplyObject(id);
    freeReplyObject(k);
    redisFree(ad);
    sleep_ms(20);
    int fd = leash_redis(h)->fd;
    send(fd, "PING\r\n", 6, MSG_NOSIGNAL); /* answered with a reset */
    sleep_ms(20);
    send(fd, "PING\r\n", 6, MSG_NOSIGNAL); /* ECONNRESET: from now on EPIPE */
    return 0;
}

static void child_sigpipe(void)
{
    signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill this process */
    leash_pool *p = leash_redis_pool("sigpipe", URL, NULL);
    leash_handle *h = p ? leash_acquire(p) : NULL;
    if (!h || kill_under(h) != 0)
        _exit(30);
    if (leash_redis_command(h, "PING") || leash_last_status() != LEASH_EIO)
        _exit(31);
    leash_release(&h);
    /* the same through output the borrower left in hiredis's buffer */
    h = leash_acquire(p);
    if (!h || kill_under(h) != 0)
        _exit(32);
    redisAppendCommand(leash_redis(h), "PING");
    if (leash_redis_command(h, "PING") || leash_last_status() != LEASH_EIO)
        _exit(33);
    leash_release(&h);
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE))
        _exit(34);
    leash_shutdown();
    _exit(0);
}

/* leash's own calls never raise SIGPIPE, even writing to a socket the server reset; a broken
 * connection is not a strict-mode report. */
static void test_no_sigpipe(void **state)
{
    char *err = NULL;
    int st = run_child(child_sigpipe, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d (signal %d), stderr: %s", st, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
                 err);
    free(err);
}

/* ---- bad input ---- */

/* Every malformed URL: NULL + LEASH_EINVAL, a message naming the bad part, never the
 * password, and no pool left open. */
static void test_bad_urls(void **state)
{
    static const struct {
        const char *url, *names, *secret;
    } bad[] = {
        /* not a Redis URL at all */
        {"", "scheme", NULL},
        {"127.0.0.1:6379", "scheme", NULL},
        {"http://127.0.0.1:6379", "scheme", NULL},
        {"redis:/127.0.0.1", "scheme", NULL},
        {"rediss://127.0.0.1:6380", "TLS", NULL},
        /* host */
        {"redis://", "host is empty", NULL},
        {"redis://:6379", "host is empty", NULL},
        {"redis://:s3cret-Pw@", "host is empty", "s3cret"},
        {"redis://:s3cret-Pw@:6379/0", "host is empty", "s3cret"},
        {"redis://exa mple.com", "space", NULL},
        {"redis://exa%mple.com", "host has an invalid character", NULL},
        {"redis://[::1", "']'", NULL},
        {"redis://[not-v6]:6379", "IPv6", NULL},
        {"redis://[::1]x:6379", "after ']'", NULL},
        {"redis://::1:6379", "host is empty", NULL},
        {"redis://fe80::1", "brackets", NULL},
        /* port */
        {"redis://127.0.0.1:", "port is empty", NULL},
        {"redis://127.0.0.1:0", "port 0 is out of range", NULL},
        {"redis://127.0.0.1:65536", "port 65536 is out of range", NULL},
        {"redis://127.0.0.1:99999999999999999999", "port is out of range", NULL},
        {"redis://127.0.0.1:-1", "port is not a number", NULL},
        {"redis://127.0.0.1:+80", "port is not a number", NULL},
        {"redis://127.0.0.1:63a9", "port is not a number", NULL},
        {"redis://localhost:s3cret-Pw/0", "port is not a number", "s3cret"},
        /* db */
        {"redis://127.0.0.1:6379/abc", "db", NULL},
        {"redis://127.0.0.1:6379/-1", "db", NULL},
        {"redis://127.0.0.1:6379/1.5", "db", NULL},
        {"redis://127.0.0.1:6379/0/1", "db", NULL},
        {"redis://127.0.0.1:6379/99999999999", "db (the path) is out of range", NULL},
        /* user info */
        {"redis://s3cret-Pw@127.0.0.1", "has no ':'", "s3cret"},
        {"redis://:@127.0.0.1", "password is empty", NULL},
        {"redis://app:@127.0.0.1", "password is empty", NULL},
        {"redis://:s3cr%zzet-Pw@127.0.0.1", "percent-escape", "s3cr"},
        {"redis://:s3cret-Pw%@127.0.0.1", "percent-escape", "s3cret"},
        {"redis://:s3cret%00Pw@127.0.0.1", "NUL", "s3cret"},
        {"redis://a%zz:s3cret-Pw@127.0.0.1", "user name", "s3cret"},
        /* options */
        {"redis://127.0.0.1?colour=blue", "unknown option \"colour\"", NULL},
        {"redis://127.0.0.1?password=s3cret-Pw", "unknown option \"password\"", "s3cret"},
        {"redis://127.0.0.1?s3cret-Pw", "unknown option", "s3cret"},
        {"redis://127.0.0.1?db=2", "unknown option \"db\"", NULL},
        {"redis://127.0.0.1?connect_timeout_ms", "has no value", NULL},
        {"redis://127.0.0.1?connect_timeout_ms=", "not a number", NULL},
        {"redis://127.0.0.1?connect_timeout_ms=fast", "not a number", NULL},
        {"redis://127.0.0.1?connect_timeout_ms=0", "out of range", NULL},
        {"redis://127.0.0.1?command_timeout_ms=-5", "not a number", NULL},
        {"redis://127.0.0.1?command_timeout_ms=86400001", "out of range", NULL},
        {"redis://127.0.0.1?command_timeout_ms=1&command_timeout_ms=2", "given twice", NULL},
        {"redis://:s3cret-Pw@127.0.0.1?colour=1", "colour", "s3cret"},
        /* control characters */
        {"redis://127.0.0.1\n:6379", "control character", NULL},
        {"redis://:s3cret\tPw@127.0.0.1", "control character", "s3cret"},
        /* unix sockets */
        {"unix://", "socket path is empty", NULL},
        {"unix://?db=1", "socket path is empty", NULL},
        {"unix://tmp/redis.sock", "must be absolute", NULL},
        {"unix:///tmp/redis.sock?db=x", "option db is not a number", NULL},
        {"unix:///tmp/redis.sock?db=-1", "option db is not a number", NULL},
        {"unix:///tmp/redis.sock?timeout=1", "unknown option \"timeout\"", NULL},
        {"unix:///tmp/"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
         "socket path is longer", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(leash_redis_pool("bad", bad[i].url, NULL));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].names))
            fail_msg("#%zu %s: \"%s\" does not name \"%s\"", i, bad[i].url, msg, bad[i].names);
        if (bad[i].secret && strstr(msg, bad[i].secret))
            fail_msg("#%zu: \"%s\" shows the password", i, msg);
        if (!strstr(msg, "redis pool \"bad\""))
            fail_msg("#%zu: \"%s\" does not name the pool", i, msg);
        assert_null(leash_pool_get("bad"));
    }
    /* an over-long URL */
    char *huge = malloc(5000);
    memset(huge, 'a', 4999);
    memcpy(huge, "redis://", 8);
    huge[4999] = '\0';
    assert_null(leash_redis_pool("bad", huge, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "longer"));
    free(huge);
    /* NULL URL, NULL name, a negative pool option */
    assert_null(leash_redis_pool("bad", NULL, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_pool(NULL, URL, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_pool("bad", URL, &(leash_pool_options){.max_size = -1}));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pool_get("bad"));

    /* the good forms parse */
    static const char *const good[] = {
        "redis://localhost",
        "REDIS://127.0.0.1:6379/",
        "redis://[::1]:6379/3",
        "redis://[::1]",
        "redis://:p%40ss%2Fw:rd@host.example-1_x:1/"
        "0?connect_timeout_ms=1&command_timeout_ms=86400000",
        "redis://us%65r:p@ss@h?&connect_timeout_ms=5&",
        "unix:///tmp/redis.sock",
        "unix:///tmp/redis.sock?db=15&connect_timeout_ms=100",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        leash_pool *p = leash_redis_pool("good", good[i], NULL);
        if (!p)
            fail_msg("#%zu %s: %s", i, good[i], leash_last_error());
        leash_pool_close(p);
    }
}

/* A tiny adapter of something that is not Redis. */
static void *other_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    return malloc(16);
}
static void other_destroy(void *ctx, void *conn)
{
    free(conn);
}
static const leash_adapter other_adapter = {
    .kind = "other", .connect = other_connect, .destroy = other_destroy};

/* NULL and non-Redis handles, a NULL format: LEASH_EINVAL, no crash. */
static void test_bad_handles(void **state)
{
    assert_null(leash_redis(NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_command(NULL, "PING"));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "NULL"));

    leash_pool *o = leash_pool_open("other", &other_adapter, "x", NULL);
    assert_non_null(o);
    leash_handle *h = take(o);
    assert_null(leash_redis(h));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_command(h, "PING"));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "not a held Redis handle"));
    leash_release(&h);

    leash_pool *p = pool("bad-args", URL, 1);
    h = take(p);
    const char *no_format = NULL;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-security"
    assert_null(leash_redis_command(h, no_format)); /* a NULL format */
#pragma GCC diagnostic pop
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    LEASH_REPLY redisReply *r = must(h, "PING"); /* still fine */
    assert_string_equal(r->str, "PONG");
    leash_release(&h);
    leash__reply_free(NULL); /* accepts NULL */
    redisReply *none = NULL;
    leash__reply_free(&none);
    assert_balanced(p);
    assert_balanced(o);
    /* the adapter table is usable directly: leash_pool_open parses the target itself */
    leash_pool *d = leash_pool_open("direct", &leash_redis_adapter, AUTH_URL "/5", NULL);
    assert_non_null(d);
    h = take(d);
    char *db = client_info(h, "db");
    assert_string_equal(db, "5");
    free(db);
    leash_release(&h);
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_null(strstr(text, SRV_REDIS_PASSWORD));
    free(text);
    assert_balanced(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_set_get, teardown),
        cmocka_unit_test_teardown(test_validate_only_when_idle, teardown),
        cmocka_unit_test_teardown(test_many_threads, teardown),
        cmocka_unit_test_teardown(test_stale_reply, teardown),
        cmocka_unit_test_teardown(test_state_left_behind, teardown),
        cmocka_unit_test_teardown(test_command_timeout, teardown),
        cmocka_unit_test_teardown(test_client_kill, teardown),
        cmocka_unit_test_teardown(test_wrong_password, teardown),
        cmocka_unit_test_teardown(test_unix_socket, teardown),
        cmocka_unit_test_teardown(test_fork, teardown),
        cmocka_unit_test_teardown(test_strict_aborts_on_dirty_return, teardown),
        cmocka_unit_test_teardown(test_no_sigpipe, teardown),
        cmocka_unit_test_teardown(test_bad_urls, teardown),
        cmocka_unit_test_teardown(test_bad_handles, teardown),
        cmocka_unit_test_teardown(test_paused_server, teardown),
        cmocka_unit_test_teardown(test_restart_under_load, teardown),
    };
    return cmocka_run_group_tests_name("redis", tests, group_setup, NULL);
}

/* Redis integration tests: a killed, restarted or paused server, credentials, the unix socket,
 * fork, strict mode and SIGPIPE. */
#include "redis-util.h"

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

/* ---- failures of the connection or the server ---- */

/* A connection killed (CLIENT KILL) while idle in the pool is replaced on next use, for
 * leash_redis_command and for raw use alike; one killed while held fails with LEASH_EIO and
 * is destroyed, not reported dirty. */
void test_client_kill(void **state)
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
    assert_non_null(strstr(leash_last_error(), "pool \"kill\""));
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
void test_restart_under_load(void **state)
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
void test_paused_server(void **state)
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
void test_wrong_password(void **state)
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
    capture_start();
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
        if (bad[i].secret && strstr(log_text, bad[i].secret))
            fail_msg("#%zu: the log shows the password: %s", i, log_text);
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
void test_unix_socket(void **state)
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

/* Bad input: a server that accepts the TCP connection but never answers (SIGSTOP), with a
 * short connect_timeout_ms and a long command_timeout_ms. Every handshake step (AUTH,
 * SELECT, PING) is bounded by the connect timeout: before, the handshake waited for the
 * command timeout (5 s here). The acquire's own deadline is long, so only the adapter bounds
 * it; the message says it was the handshake, with the pool's name. */
void test_handshake_bounded(void **state)
{
    static const struct {
        const char *url, *pidfile;
    } cases[] = {
        {URL "/3?connect_timeout_ms=300&command_timeout_ms=5000", SRV_REDIS_PIDFILE},
        {AUTH_URL "/3?connect_timeout_ms=300&command_timeout_ms=5000", SRV_REDIS_AUTH_PIDFILE},
    };
    capture_start();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        leash_pool_options o = {.max_size = 1, .acquire_timeout_ms = 5000};
        leash_pool *p = leash_redis_pool("handshake", cases[i].url, &o);
        assert_non_null(p);
        assert_int_equal(srv_signal(cases[i].pidfile, SIGSTOP), 0);
        double t0 = now_s();
        leash_handle *h = leash_acquire(p);
        double took = now_s() - t0;
        leash_status st = leash_last_status();
        char msg[LEASH_NAME_MAX + 600];
        snprintf(msg, sizeof msg, "%s", leash_last_error());
        assert_int_equal(srv_signal(cases[i].pidfile, SIGCONT), 0);
        assert_null(h);
        if (took < 0.25 || took > 1.0)
            fail_msg("#%zu: the acquire took %.3f s (connect timeout 300 ms): %s", i, took, msg);
        assert_int_equal(st, LEASH_ECONNECT);
        if (!strstr(msg, "connect timeout") || !strstr(msg, "\"handshake\""))
            fail_msg("#%zu: \"%s\" does not say the handshake timed out, or the pool", i, msg);
        assert_null(strstr(msg, SRV_REDIS_PASSWORD));
        leash_pool_close(p);
    }
    assert_null(strstr(log_text, SRV_REDIS_PASSWORD));
}

struct hammer {
    leash_pool *pool;
    atomic_int *stop;
    int ok, failures;
};

static void *hammer_main(void *arg)
{
    struct hammer *w = arg;
    while (!atomic_load(w->stop)) {
        leash_handle *h = leash_acquire(w->pool);
        LEASH_REPLY redisReply *r = h ? leash_redis_command(h, "INCR %s", "leash:retarget") : NULL;
        if (r && r->type == REDIS_REPLY_INTEGER)
            w->ok++;
        else
            w->failures++;
        leash_release(&h);
    }
    return NULL;
}

/* The port of the server h's connection is on (CLIENT INFO's laddr). */
static int server_port(leash_handle *h)
{
    char *laddr = client_info(h, "laddr");
    const char *colon = strrchr(laddr, ':');
    int port = colon ? atoi(colon + 1) : -1;
    free(laddr);
    return port;
}

/* leash_pool_retarget. Bad input: malformed URLs, one with a password, are refused with
 * LEASH_EINVAL, no part of the password shown, and change nothing. A good one moves new
 * connections while 4 threads borrow all along (connects in flight finish with the target
 * they took); the dumps show where each connection goes (the adapter's peer). */
void test_retarget(void **state)
{
    capture_start();
    leash_pool *p = pool("retarget", URL, 3);
    leash_handle *h = take(p);
    assert_int_equal(server_port(h), SRV_REDIS_PORT);
    leash_release(&h);
    static const char *const bad[] = {
        "redis://:s3cr3t-Pw@127.0.0.1:99999",
        "redis://:s3cr3t%zz-Pw@127.0.0.1",
        "http://127.0.0.1:16380",
        "redis-sentinel://:s3cr3t-Pw@127.0.0.1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(leash_pool_retarget(p, bad[i]), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (strstr(msg, "s3cr3t") || strstr(msg, "Pw") || !strstr(msg, "retarget"))
            fail_msg("#%zu: \"%s\"", i, msg);
    }
    h = take(p);
    assert_int_equal(server_port(h), SRV_REDIS_PORT); /* nothing changed */
    leash_release(&h);

    enum { THREADS = 4 };
    atomic_int stop = 0;
    pthread_t t[THREADS];
    struct hammer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct hammer){.pool = p, .stop = &stop};
        assert_int_equal(pthread_create(&t[i], NULL, hammer_main, &w[i]), 0);
    }
    for (int i = 0; i < 10; i++) {
        sleep_ms(40);
        assert_int_equal(leash_pool_retarget(p, i % 2 ? URL : AUTH_URL "/2"), LEASH_OK);
    }
    sleep_ms(40);
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_true(w[i].ok > 0);
    }
    assert_int_equal(leash_pool_retarget(p, AUTH_URL "/2"), LEASH_OK);
    h = take(p);
    assert_int_equal(server_port(h), SRV_REDIS_AUTH_PORT);
    char *db = client_info(h, "db");
    assert_string_equal(db, "2");
    free(db);
    char *d = dump(LEASH_FORMAT_JSON);
    if (!strstr(d, "127.0.0.1:16380"))
        fail_msg("the dump does not show the peer: %s", d);
    assert_null(strstr(d, SRV_REDIS_PASSWORD));
    free(d);
    leash_release(&h);
    assert_null(strstr(leash_pool_target(p), SRV_REDIS_PASSWORD));
    assert_non_null(strstr(leash_pool_target(p), "16380"));
    assert_null(strstr(log_text, SRV_REDIS_PASSWORD));
    assert_balanced(p);
}

/* ---- fork ---- */

static leash_pool *fork_pool;
static leash_handle *fork_held;

static void child_uses_pool(void *arg)
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
void test_fork(void **state)
{
    fork_pool = pool("fork", URL, 3);
    leash_handle *idle = take(fork_pool);
    long long idle_id = client_id(idle);
    fork_held = take(fork_pool);
    long long held_id = client_id(fork_held);
    leash_release(&idle);

    char *err = NULL;
    int st = run_child(child_uses_pool, NULL, &err);
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

static void child_leaves_multi_open(void *arg)
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

static void child_leaves_reply_unread(void *arg)
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

static void check_strict_abort(void (*fn)(void *), const char *pool_name)
{
    char *err = NULL;
    int st = run_child(fn, NULL, &err);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
        fail_msg("child did not abort: status %d, stderr: %s", st, err);
    if (!strstr(err, pool_name) || !strstr(err, "test-redis-failures.c:") || !strstr(err, "dirty"))
        fail_msg("the report does not name the pool, the borrow site and the cause: %s", err);
    assert_null(strstr(err, SRV_REDIS_PASSWORD));
    free(err);
}

/* Strict mode (LEASH_STRICT=1 from meson) aborts on a dirty return, naming the pool and the
 * borrow site, without the password. */
void test_strict_aborts_on_dirty_return(void **state)
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

static void child_sigpipe(void *arg)
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
void test_no_sigpipe(void **state)
{
    char *err = NULL;
    int st = run_child(child_sigpipe, NULL, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d (signal %d), stderr: %s", st, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
                 err);
    free(err);
}

/* Integration tests of the PostgreSQL adapter against a real PostgreSQL 15 and pgbouncer
 * (tests/servers.d/pg.sh, pgbouncer.sh). */
#include "test-pg-util.h"

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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* Which server a test of the basic suite talks to (the group's state). */
struct target {
    const char *conninfo;
    int bouncer;
};
static struct target direct = {PG_KV, 0};
static struct target bouncer = {BOUNCER_KV, 1};

static int group_setup(void **state)
{
    if (srv_ctl("start", "pg") != 0 || srv_ctl("start", "pgbouncer") != 0)
        return -1;
    free(su("ALTER DATABASE leash SET client_min_messages TO notice"));
    return 0;
}

/* ---- the basic suite: direct and through pgbouncer ---- */

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
        char a[32], b[32];
        snprintf(a, sizeof a, "%d", w->id * 100000 + i);
        snprintf(b, sizeof b, "t%d", w->id);
        const char *vals[] = {a, b};
        LEASH_RESULT PGresult *r =
            leash_pg_params(h, "SELECT $1::int + 1, $2::text || '-' || $1", 2, vals);
        char want[64];
        snprintf(want, sizeof want, "t%d-%s", w->id, a);
        if (!r || PQresultStatus(r) != PGRES_TUPLES_OK ||
            atol(PQgetvalue(r, 0, 0)) != w->id * 100000 + i + 1 ||
            strcmp(PQgetvalue(r, 0, 1), want) != 0)
            w->failures++;
        leash_release(&h);
    }
    return NULL;
}

/* 8 threads share 4 connections, each checking that it reads its own answers. */
static void test_many_threads(void **state)
{
    struct target *t = *state;
    leash_pool *p = pool("threads", t->conninfo, 4, NULL);
    struct worker w[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct worker){.pool = p, .id = i + 1, .iterations = 150};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    leash_pool_stats s = stats(p);
    assert_int_equal(s.acquired, 8 * 150);
    assert_int_equal(s.released, 8 * 150);
    assert_true(s.created <= 4);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.destroyed, 0);
    assert_balanced(p);
}

/* SQL errors are results, not connection failures; NULL parameters are SQL NULLs; the
 * unnamed statement leaves nothing behind (pgbouncer has no named ones). */
static void test_sql_error_and_params(void **state)
{
    struct target *t = *state;
    leash_pool *p = pool("params", t->conninfo, 1, NULL);
    leash_handle *h = take(p);
    PGresult *r = leash_pg_exec(h, "SELECT 1/0");
    assert_non_null(r);
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_non_null(strstr(PQresultErrorMessage(r), "division by zero"));
    PQclear(r);
    const char *vals[] = {NULL, "x"};
    for (int i = 0; i < 50; i++) {
        LEASH_RESULT PGresult *q = leash_pg_params(h, "SELECT $1::text IS NULL, $2", 2, vals);
        assert_non_null(q);
        assert_int_equal(PQresultStatus(q), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(q, 0, 0), "t");
        assert_string_equal(PQgetvalue(q, 0, 1), "x");
    }
    assert_int_equal(value_long(h, "SELECT count(*) FROM pg_prepared_statements"), 0);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.destroyed, 0);
    assert_balanced(p);
}

/* A transaction left open (through the helpers, then through the raw PGconn) is rolled
 * back: the next borrower sees none of its rows and an idle connection. */
static void test_open_transaction_rolled_back(void **state)
{
    struct target *t = *state;
    default_mode();
    capture_start(); /* the dirty-return warnings, checked below */
    leash_pool *p = pool("open-tx", t->conninfo, 1, NULL);
    leash_handle *h = take(p);
    exec_ok(h, "CREATE TABLE IF NOT EXISTS leash_tx (id int)");
    exec_ok(h, "TRUNCATE leash_tx");
    leash_release(&h);

    h = take(p);
    exec_ok(h, "BEGIN");
    exec_ok(h, "INSERT INTO leash_tx VALUES (1)");
    leash_release(&h); /* open transaction */
    assert_int_equal(stats(p).dirty_returns, 1);

    h = take(p);
    assert_int_equal(PQtransactionStatus(leash_pg(h)), PQTRANS_IDLE);
    assert_int_equal(value_long(h, "SELECT count(*) FROM leash_tx"), 0);
    PGconn *raw = leash_pg(h);
    PQclear(PQexec(raw, "BEGIN"));
    PQclear(PQexec(raw, "INSERT INTO leash_tx VALUES (2)"));
    assert_int_equal(PQtransactionStatus(raw), PQTRANS_INTRANS);
    leash_release(&h);
    assert_int_equal(stats(p).dirty_returns, 2);

    h = take(p);
    assert_int_equal(value_long(h, "SELECT count(*) FROM leash_tx"), 0);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 2);
    assert_int_equal(s.destroyed, 0); /* cleaned, not destroyed */
    assert_non_null(strstr(log_text, "returned dirty"));
    assert_balanced(p);
}

/* A failed transaction (an error after BEGIN) is rolled back; the next borrower can work. */
static void test_aborted_transaction(void **state)
{
    struct target *t = *state;
    default_mode();
    capture_start(); /* the dirty-return warnings, checked below */
    leash_pool *p = pool("aborted-tx", t->conninfo, 1, NULL);
    leash_handle *h = take(p);
    exec_ok(h, "BEGIN");
    PGresult *r = leash_pg_exec(h, "SELECT 1/0");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    assert_int_equal(PQtransactionStatus(leash_pg(h)), PQTRANS_INERROR);
    leash_release(&h);

    h = take(p);
    assert_int_equal(PQtransactionStatus(leash_pg(h)), PQTRANS_IDLE);
    assert_int_equal(value_long(h, "SELECT 41 + 1"), 42);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 1);
    assert_int_equal(s.destroyed, 0);
    assert_balanced(p);
}

/* Results sent for but never read are drained: the next borrower reads its own answer. */
static void test_unread_results_drained(void **state)
{
    struct target *t = *state;
    default_mode();
    capture_start(); /* the dirty-return warnings, checked below */
    leash_pool *p = pool("unread", t->conninfo, 1, NULL);
    leash_handle *h = take(p);
    assert_int_equal(PQsendQuery(leash_pg(h), "SELECT 1; SELECT 2; SELECT 3"), 1);
    leash_release(&h); /* three results unread */

    h = take(p);
    assert_int_equal(value_long(h, "SELECT 42"), 42);
    leash_release(&h);
    /* A borrower who read everything through the raw connection is not dirty. */
    h = take(p);
    PGconn *raw = leash_pg(h);
    assert_int_equal(PQsendQuery(raw, "SELECT 7"), 1);
    PGresult *res;
    while ((res = PQgetResult(raw)) != NULL)
        PQclear(res);
    leash_release(&h);
    assert_int_equal(stats(p).dirty_returns, 1);

    /* A COPY FROM STDIN started through the helper and never finished is ended. */
    h = take(p);
    exec_ok(h, "CREATE TABLE IF NOT EXISTS leash_copy (id int)");
    PGresult *r = leash_pg_exec(h, "COPY leash_copy FROM STDIN");
    assert_int_equal(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    leash_release(&h);
    h = take(p);
    assert_int_equal(value_long(h, "SELECT 43"), 43);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 2);
    assert_non_null(strstr(log_text, "returned dirty"));
    assert_balanced(p);
}

/* A connection idle longer than validate_idle_ms is checked with an empty query on acquire
 * (through pgbouncer too) and kept when it answers. */
static void test_validate_after_idle(void **state)
{
    struct target *t = *state;
    leash_pool_options o = {.max_size = 1, .validate_idle_ms = 1};
    leash_pool *p = leash_pg_pool("validate", t->conninfo, &o);
    assert_non_null(p);
    for (int i = 0; i < 3; i++) {
        leash_handle *h = take(p);
        assert_int_equal(value_long(h, "SELECT 8"), 8);
        leash_release(&h);
        sleep_ms(20);
    }
    leash_pool_stats s = stats(p);
    assert_int_equal(s.created, 1);
    assert_int_equal(s.validation_failures, 0);
    assert_balanced(p);
}

/* A query still running at release is cancelled: the release takes about a second at most
 * and the server is not left running it. */
static void test_running_query_cancelled(void **state)
{
    struct target *t = *state;
    default_mode();
    capture_start(); /* the dirty-return warnings, checked below */
    leash_pool *p = pool("running", t->conninfo, 1, NULL);
    leash_handle *h = take(p);
    assert_int_equal(PQsendQuery(leash_pg(h), "SELECT pg_sleep(30) /* leash-running */"), 1);
    sleep_ms(100);
    double t0 = now_s();
    leash_release(&h);
    double took = now_s() - t0;
    if (took > 1.5)
        fail_msg("release took %.2f s", took);
    h = take(p);
    assert_int_equal(value_long(h, "SELECT 5"), 5);
    leash_release(&h);
    assert_int_equal(stats(p).dirty_returns, 1);
    sleep_ms(100);
    assert_int_equal(
        su_long("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                "query LIKE '%leash-running%' AND query NOT LIKE '%pg_stat_activity%'"),
        0);
    assert_balanced(p);
}

/* ---- PostgreSQL only ---- */

/* A pooled connection whose backend is terminated while idle is replaced on its next use:
 * in place on first use (helper or raw), or by validate after validate_idle_ms. */
static void test_terminate_idle(void **state)
{
    leash_pool *p = pool("term-idle", PG_KV, 1, NULL);
    leash_handle *h = take(p);
    long pid1 = backend_pid(h);
    leash_release(&h);
    terminate(pid1);

    h = take(p);
    long pid2 = backend_pid(h);
    assert_true(pid2 != pid1);
    leash_release(&h);

    terminate(pid2);
    h = take(p);
    PGconn *raw = leash_pg(h);
    PGresult *r = PQexec(raw, "SELECT pg_backend_pid()");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    long pid3 = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    assert_true(pid3 != pid2);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.discarded, 0);
    assert_int_equal(s.dirty_returns, 0);

    /* Through validate: idle longer than validate_idle_ms, the dead one is replaced. */
    leash_pool_options o = {.max_size = 1, .validate_idle_ms = 1};
    leash_pool *q = leash_pg_pool("term-validate", PG_KV, &o);
    assert_non_null(q);
    h = take(q);
    long pid4 = backend_pid(h);
    leash_release(&h);
    terminate(pid4);
    sleep_ms(20);
    h = take(q);
    assert_true(backend_pid(h) != pid4);
    leash_release(&h);
    assert_int_equal(stats(q).validation_failures, 1);
    assert_balanced(p);
    assert_balanced(q);
}

/* Terminated while held: the query fails with LEASH_EIO, the handle is destroyed at release
 * (strict mode is on: no report, broken is not dirty), and no SIGPIPE kills the process. */
static void test_terminate_held(void **state)
{
    struct sigaction sa;
    assert_int_equal(sigaction(SIGPIPE, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_DFL); /* a SIGPIPE would kill this test */
    assert_int_equal(leash_strict(), 1);
    leash_pool *p = pool("term-held", PG_KV, 1, NULL);
    leash_handle *h = take(p);
    long pid = backend_pid(h);
    terminate(pid);
    /* A large write to the closed session: libpq must not raise SIGPIPE. */
    char *payload = malloc(4 << 20);
    memset(payload, 'x', (4 << 20) - 1);
    payload[(4 << 20) - 1] = '\0';
    const char *big[] = {payload};
    assert_null(leash_pg_params(h, "SELECT length($1)", 1, big));
    free(payload);
    assert_int_equal(leash_last_status(), LEASH_EIO);
    assert_non_null(strstr(leash_last_error(), "connection failed"));
    /* Again on the dead connection. */
    assert_null(leash_pg_exec(h, "SELECT 2"));
    assert_int_equal(leash_last_status(), LEASH_EIO);
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed, 1);
    assert_int_equal(s.dirty_returns, 0);
    h = take(p);
    assert_true(backend_pid(h) != pid);
    leash_release(&h);
    assert_balanced(p);
}

struct loop {
    leash_pool *pool;
    atomic_int *stop;
    atomic_long ok, failed, ok_after;
    atomic_int *restarted;
};

static void *loop_main(void *arg)
{
    struct loop *l = arg;
    while (!atomic_load(l->stop)) {
        leash_handle *h = leash_acquire(l->pool);
        if (!h) {
            atomic_fetch_add(&l->failed, 1);
            sleep_ms(20);
            continue;
        }
        PGresult *r = leash_pg_exec(h, "SELECT 1");
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
            atomic_fetch_add(&l->ok, 1);
            if (atomic_load(l->restarted))
                atomic_fetch_add(&l->ok_after, 1);
        } else {
            atomic_fetch_add(&l->failed, 1);
        }
        PQclear(r);
        leash_release(&h);
    }
    return NULL;
}

/* The server restarts while 8 threads keep working: failures come back as statuses, no
 * handle is lost, no waiter hangs, and every thread works again afterwards. */
static void test_server_restart_under_load(void **state)
{
    leash_pool_options o = {.max_size = 4, .acquire_timeout_ms = 2000};
    leash_pool *p = leash_pg_pool("restart", PG_KV, &o);
    assert_non_null(p);
    atomic_int stop = 0, restarted = 0;
    struct loop l[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        l[i] = (struct loop){.pool = p, .stop = &stop, .restarted = &restarted};
        assert_int_equal(pthread_create(&th[i], NULL, loop_main, &l[i]), 0);
    }
    char *started = su("SELECT pg_postmaster_start_time()");
    sleep_ms(300);
    assert_int_equal(srv_ctl("restart", "pg"), 0);
    char *restarted_at = su("SELECT pg_postmaster_start_time()");
    assert_string_not_equal(started, restarted_at); /* it really restarted */
    free(started);
    free(restarted_at);
    atomic_store(&restarted, 1);
    double until = now_s() + 10;
    for (;;) {
        int all = 1;
        for (int i = 0; i < 8; i++)
            all &= atomic_load(&l[i].ok_after) >= 20;
        if (all || now_s() > until)
            break;
        sleep_ms(50);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        if (atomic_load(&l[i].ok_after) < 20)
            fail_msg("thread %d: only %ld queries after the restart (%ld before, %ld failed)", i,
                     atomic_load(&l[i].ok_after), atomic_load(&l[i].ok), atomic_load(&l[i].failed));
    }
    assert_int_equal(leash_outstanding(), 0);
    leash_pool_stats s = stats(p);
    assert_true(s.size <= 4);
    assert_int_equal(s.dirty_returns, 0);
    /* The sessions the restart killed were destroyed, or made again in place when they
     * were idle (first use after the restart), so no count of either is certain. */
    assert_balanced(p);
    assert_int_equal(srv_ctl("start", "pgbouncer"), 0);
}

/* A wrong password fails the first acquire quickly with LEASH_ECONNECT and libpq's reason;
 * the password shows nowhere (message, log, dumps). */
static void test_wrong_password(void **state)
{
    const char *secret = "Wr0ng-Secret-Pw";
    capture_start();
    leash_pool *p = pool("wrong-pw",
                         "host=127.0.0.1 port=15432 dbname=leash user=leash "
                         "password=Wr0ng-Secret-Pw",
                         2, NULL);
    double t0 = now_s();
    assert_null(leash_acquire(p));
    assert_true(now_s() - t0 < 3.0);
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_non_null(strstr(leash_last_error(), "password authentication failed"));
    assert_null(strstr(leash_last_error(), secret));
    assert_int_equal(stats(p).connect_failures, 1);
    leash_format fmts[] = {LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON, LEASH_FORMAT_PROMETHEUS};
    for (int i = 0; i < 3; i++) {
        char *text = dump(fmts[i]);
        assert_null(strstr(text, secret));
        free(text);
    }
    assert_null(strstr(log_text, secret));

    /* A refused connection: LEASH_ECONNECT at once, with libpq's reason. */
    leash_pool *r = pool("refused",
                         "host=127.0.0.1 port=1 dbname=leash user=leash "
                         "password=Wr0ng-Secret-Pw",
                         1, NULL);
    t0 = now_s();
    assert_null(leash_acquire(r));
    assert_true(now_s() - t0 < 1.0);
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_non_null(strstr(leash_last_error(), "Connection refused"));
    assert_null(strstr(leash_last_error(), secret));

    /* The same through a URI whose password is percent-encoded. */
    leash_pool *u = pool("wrong-pw-uri",
                         "postgresql://leash:Wr0ng%2DSecret%2DPw@127.0.0.1:15432/leash", 1, NULL);
    assert_null(leash_acquire(u));
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_null(strstr(leash_last_error(), secret));
    assert_null(strstr(leash_last_error(), "Wr0ng%2D"));
    assert_balanced(p);
}

/* A multi-host conninfo whose first host is down connects to the second (both forms). */
static void test_multi_host_first_down(void **state)
{
    const char *targets[] = {
        "host=127.0.0.1,127.0.0.1 port=1,15432 dbname=leash user=leash password=leash-pg-pw "
        "target_session_attrs=any",
        "postgresql://leash:leash-pg-pw@127.0.0.1:1,127.0.0.1:15432/leash?sslmode=disable",
    };
    for (int i = 0; i < 2; i++) {
        char name[16];
        snprintf(name, sizeof name, "multi%d", i);
        leash_pool *p = pool(name, targets[i], 1, NULL);
        leash_handle *h = take(p);
        assert_string_equal(PQport(leash_pg(h)), "15432");
        assert_int_equal(value_long(h, "SELECT 3"), 3);
        leash_release(&h);
        assert_balanced(p);
    }
}

static leash_pool *fork_pool;
static leash_handle *fork_held;
static long fork_idle_pid;

static void child_uses_pool(void *arg)
{
    /* The idle connection and the handle held at fork are the parent's: leash must not
     * speak on them. The child makes its own, uses it, and drops everything. */
    leash_handle *h = leash_acquire(fork_pool);
    if (!h)
        _exit(10);
    LEASH_RESULT PGresult *r = leash_pg_exec(h, "SELECT pg_backend_pid()");
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK)
        _exit(11);
    if (atol(PQgetvalue(r, 0, 0)) == fork_idle_pid)
        _exit(12); /* the child was lent the parent's session */
    leash_release(&h);
    leash_release(&fork_held);
    leash_pool_close(fork_pool);
    leash_shutdown();
    _exit(0);
}

/* The parent's sessions survive a child that used and dropped the pool; sockets are
 * close-on-exec. */
static void test_fork_parent_survives(void **state)
{
    fork_pool = pool("fork", PG_KV, 3, NULL);
    leash_handle *idle = take(fork_pool);
    long idle_pid = backend_pid(idle);
    fork_idle_pid = idle_pid;
    int fd = PQsocket(leash_pg(idle));
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    fork_held = take(fork_pool);
    long held_pid = backend_pid(fork_held);
    leash_release(&idle);

    char *err = NULL;
    int st = run_child(child_uses_pool, NULL, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d, stderr: %s", st, err);
    free(err);
    sleep_ms(50);

    assert_int_equal(backend_pid(fork_held), held_pid);
    /* Both sessions, the one idle at fork and the one held across it, still answer. */
    idle = take(fork_pool);
    assert_int_equal(backend_pid(idle), idle_pid);
    leash_release(&idle);
    leash_release(&fork_held);
    leash_pool_stats s = stats(fork_pool);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.created, 2);
    assert_balanced(fork_pool);
}

static void child_leaves_transaction_open(void *arg)
{
    leash_pool *p = leash_pg_pool("strict-child", PG_KV, NULL);
    if (!p)
        _exit(20);
    leash_handle *h = leash_acquire(p);
    if (!h)
        _exit(21);
    PQclear(leash_pg_exec(h, "BEGIN"));
    leash_release(&h); /* strict mode: reported, then abort() */
    _exit(22);
}

/* Strict mode (LEASH_STRICT=1 from meson) aborts on a transaction left open, naming the
 * pool and the borrow site. */
static void test_strict_aborts_on_open_transaction(void **state)
{
    assert_int_equal(leash_strict(), 1);
    char *err = NULL;
    int st = run_child(child_leaves_transaction_open, NULL, &err);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
        fail_msg("child did not abort: status %d, stderr: %s", st, err);
    assert_non_null(strstr(err, "strict-child"));
    assert_non_null(strstr(err, "test-pg.c"));
    assert_non_null(strstr(err, "dirty"));
    assert_null(strstr(err, SRV_PG_PASSWORD));
    free(err);
}

/* application_name, init_sql and reset_sql, as pg_stat_activity and SHOW see them. */
static void test_options_visible(void **state)
{
    leash_pool *s = pool("opt-setup", PG_KV, 1, NULL);
    leash_handle *h = take(s);
    exec_ok(h, "CREATE SCHEMA IF NOT EXISTS leash_app");
    char *app = value(h, "SELECT application_name FROM pg_stat_activity WHERE pid = "
                         "pg_backend_pid()");
    assert_string_equal(app, "leash"); /* the default */
    free(app);
    leash_release(&h);

    leash_pg_options o = {.application_name = "leash-test-app",
                          .init_sql = "SET search_path TO leash_app, public",
                          .reset_sql = "DISCARD ALL"};
    leash_pool *p = pool("opt", PG_KV, 1, &o);
    h = take(p);
    long pid = backend_pid(h);
    char *v = su("SELECT application_name FROM pg_stat_activity WHERE pid = %ld", pid);
    assert_string_equal(v, "leash-test-app");
    free(v);
    v = value(h, "SHOW search_path");
    assert_string_equal(v, "leash_app, public");
    free(v);
    exec_ok(h, "SET work_mem TO '7MB'");
    leash_release(&h); /* reset_sql is routine: not dirty */

    h = take(p);
    assert_int_equal(backend_pid(h), pid);
    v = value(h, "SHOW work_mem");
    assert_string_not_equal(v, "7MB");
    free(v);
    v = value(h, "SHOW search_path");
    assert_string_equal(v, "leash_app, public"); /* init_sql ran again after DISCARD ALL */
    free(v);
    leash_release(&h);
    assert_int_equal(stats(p).dirty_returns, 0);

    /* The conninfo's own application_name wins. */
    leash_pool *c = pool("opt-ci", PG_KV " application_name=from-conninfo", 1, &o);
    h = take(c);
    v = value(h, "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()");
    assert_string_equal(v, "from-conninfo");
    free(v);
    leash_release(&h);

    /* A failing init_sql fails the connect. */
    leash_pg_options bad = {.init_sql = "SET no_such_setting TO 1"};
    leash_pool *b = pool("opt-bad", PG_KV, 1, &bad);
    assert_null(leash_acquire(b));
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_non_null(strstr(leash_last_error(), "init_sql failed"));
    assert_balanced(p);
}

/* Server notices go to the log callback (NOTICE at debug, WARNING at warn), not stderr. */
static void test_notices_to_log(void **state)
{
    capture_start();
    leash_pool *p = pool("notices", PG_KV, 1, NULL);
    leash_handle *h = take(p);
    fflush(stderr);
    int saved = dup(2);
    FILE *f = tmpfile();
    dup2(fileno(f), 2);
    exec_ok(h, "DO $$BEGIN RAISE NOTICE 'leash-notice-1'; RAISE WARNING 'leash-warning-2'; "
               "END$$");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(f);
    char *err = slurp(fileno(f));
    fclose(f);
    leash_release(&h);
    assert_null(strstr(err, "leash-notice-1"));
    assert_null(strstr(err, "leash-warning-2"));
    free(err);
    assert_non_null(strstr(
        log_text, "[0] pg pool \"notices\": server 127.0.0.1:15432 says: NOTICE:  leash-notice-1"));
    assert_non_null(
        strstr(log_text,
               "[2] pg pool \"notices\": server 127.0.0.1:15432 says: WARNING:  leash-warning-2"));
    assert_balanced(p);
}

/* Bad conninfo is refused at open with LEASH_EINVAL naming the bad part, never the
 * password; no pool is left behind. */
static void test_bad_conninfo(void **state)
{
    struct {
        const char *conninfo, *names, *secret;
    } bad[] = {
        /* a keyword without "=" */
        {"host=127.0.0.1 port", "missing \"=\"", NULL},
        /* an unterminated quote */
        {"host='127.0.0.1", "unterminated quoted string", NULL},
        /* an unknown keyword */
        {"host=127.0.0.1 colour=blue", "\"colour\"", NULL},
        /* an unknown URI parameter */
        {"postgresql://127.0.0.1/leash?colour=blue", "\"colour\"", NULL},
        /* a port that is not a number */
        {"host=127.0.0.1 port=fifteen", "port \"fifteen\"", NULL},
        {"host=127.0.0.1 port=99999", "port", NULL},
        /* a bad percent-escape inside a URI password: libpq would quote it, so leash says
         * where the fault is without a word of libpq's */
        {"postgresql://leash:s3cr%zzet-Pw@127.0.0.1:15432/leash", "cannot read the password",
         "s3cr"},
        {"postgresql://leash:pw@127.0.0.1/leash?password=ab%zzcdef",
         "cannot read the part from where a password may begin", "zzcdef"},
        /* an unquoted password with a space: its second word looks like a keyword */
        {"host=127.0.0.1 password=my Secret-Words",
         "cannot read the part from where a password may begin", "Secret-Words"},
        {"host=127.0.0.1 password=my Secret-Words=1",
         "cannot read the part from where a password may begin", "Secret-Words"},
        /* the fault before the password: libpq's own words, read without the password */
        {"host=127.0.0.1 colour=blue password=Secret-Words", "invalid connection option \"colour\"",
         "Secret-Words"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(leash_pg_pool("bad", bad[i].conninfo, NULL));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].names))
            fail_msg("#%zu: \"%s\" does not name \"%s\"", i, msg, bad[i].names);
        if (bad[i].secret && strstr(msg, bad[i].secret))
            fail_msg("#%zu: \"%s\" shows the password", i, msg);
        if (strstr(msg, "%zz") || strstr(msg, "Secret"))
            fail_msg("#%zu: \"%s\" shows a fragment of the password", i, msg);
        assert_null(leash_pool_get("bad"));
    }
    /* NULL conninfo, NULL name, a negative option. */
    assert_null(leash_pg_pool("bad", NULL, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pg_pool(NULL, PG_KV, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(
        leash_pg_pool_with("bad", PG_KV, NULL, &(leash_pg_options){.connect_timeout_s = -1}));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pg_pool("bad", PG_KV, &(leash_pool_options){.max_size = -1}));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pool_get("bad"));
}

/* NULL and non-PostgreSQL handles, NULL sql, bad parameter counts: LEASH_EINVAL, no crash. */
static void test_bad_handles(void **state)
{
    assert_null(leash_pg(NULL));
    assert_null(leash_pg_exec(NULL, "SELECT 1"));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pg_params(NULL, "SELECT 1", 0, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);

    leash_pool *o = leash_pool_open("other", &kit_other_adapter, "x", NULL);
    assert_non_null(o);
    leash_handle *h = take(o);
    assert_null(leash_pg(h));
    assert_null(leash_pg_exec(h, "SELECT 1"));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "not a held PostgreSQL handle"));
    assert_null(leash_pg_params(h, "SELECT 1", 0, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    leash_release(&h);

    leash_pool *p = pool("bad-args", PG_KV, 1, NULL);
    h = take(p);
    assert_null(leash_pg_exec(h, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pg_params(h, NULL, 0, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pg_params(h, "SELECT $1", -1, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pg_params(h, "SELECT $1", 1, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_int_equal(value_long(h, "SELECT 9"), 9); /* still fine */
    leash_release(&h);
    leash__result_clear(NULL); /* accepts NULL */
    PGresult *none = NULL;
    leash__result_clear(&none);
    assert_balanced(p);
    assert_balanced(o);
}

int main(void)
{
    const struct CMUnitTest postgres[] = {
        cmocka_unit_test_prestate_setup_teardown(test_many_threads, NULL, teardown_no_leaks,
                                                 &direct),
        cmocka_unit_test_prestate_setup_teardown(test_sql_error_and_params, NULL, teardown_no_leaks,
                                                 &direct),
        cmocka_unit_test_prestate_setup_teardown(test_open_transaction_rolled_back, NULL,
                                                 teardown_no_leaks, &direct),
        cmocka_unit_test_prestate_setup_teardown(test_aborted_transaction, NULL, teardown_no_leaks,
                                                 &direct),
        cmocka_unit_test_prestate_setup_teardown(test_unread_results_drained, NULL,
                                                 teardown_no_leaks, &direct),
        cmocka_unit_test_prestate_setup_teardown(test_running_query_cancelled, NULL,
                                                 teardown_no_leaks, &direct),
        cmocka_unit_test_prestate_setup_teardown(test_validate_after_idle, NULL, teardown_no_leaks,
                                                 &direct),
        cmocka_unit_test_teardown(test_terminate_idle, teardown_no_leaks),
        cmocka_unit_test_teardown(test_terminate_held, teardown_no_leaks),
        cmocka_unit_test_teardown(test_wrong_password, teardown_no_leaks),
        cmocka_unit_test_teardown(test_multi_host_first_down, teardown_no_leaks),
        cmocka_unit_test_teardown(test_fork_parent_survives, teardown_no_leaks),
        cmocka_unit_test_teardown(test_strict_aborts_on_open_transaction, teardown_no_leaks),
        cmocka_unit_test_teardown(test_options_visible, teardown_no_leaks),
        cmocka_unit_test_teardown(test_notices_to_log, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_conninfo, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_handles, teardown_no_leaks),
        cmocka_unit_test_teardown(test_server_restart_under_load, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_option_values, teardown_no_leaks),
        cmocka_unit_test_teardown(test_password_characters, teardown_no_leaks),
        cmocka_unit_test_teardown(test_password_in_parse_errors, teardown_no_leaks),
        cmocka_unit_test_teardown(test_password_characters_accepted, teardown_no_leaks),
        cmocka_unit_test_teardown(test_messages_name_the_pool, teardown_no_leaks),
        cmocka_unit_test_teardown(test_retarget, teardown_no_leaks),
    };
    /* The basic suite again through pgbouncer (transaction pooling, no reset query). */
    const struct CMUnitTest pgbouncer[] = {
        cmocka_unit_test_prestate_setup_teardown(test_many_threads, NULL, teardown_no_leaks,
                                                 &bouncer),
        cmocka_unit_test_prestate_setup_teardown(test_sql_error_and_params, NULL, teardown_no_leaks,
                                                 &bouncer),
        cmocka_unit_test_prestate_setup_teardown(test_open_transaction_rolled_back, NULL,
                                                 teardown_no_leaks, &bouncer),
        cmocka_unit_test_prestate_setup_teardown(test_aborted_transaction, NULL, teardown_no_leaks,
                                                 &bouncer),
        cmocka_unit_test_prestate_setup_teardown(test_unread_results_drained, NULL,
                                                 teardown_no_leaks, &bouncer),
        cmocka_unit_test_prestate_setup_teardown(test_running_query_cancelled, NULL,
                                                 teardown_no_leaks, &bouncer),
        cmocka_unit_test_prestate_setup_teardown(test_validate_after_idle, NULL, teardown_no_leaks,
                                                 &bouncer),
    };
    int failed = cmocka_run_group_tests_name("postgres", postgres, group_setup, NULL);
    failed += cmocka_run_group_tests_name("pgbouncer", pgbouncer, group_setup, NULL);
    return failed;
}

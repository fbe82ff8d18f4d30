/* Integration tests of the PostgreSQL adapter against replication and outages: a primary and
 * a hot standby (tests/servers.d/pgha.sh) that tests crash, promote, demote and pause. Each
 * failover test starts from the known topology (node a primary, node b its standby). */
#include "test-pg-util.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define HA_WRITE HA_BOTH " target_session_attrs=read-write"
#define WRITERS 8
#define POOL_SIZE 4

static int group_setup(void **state)
{
    if (srv_ctl("start", "pg") != 0 || srv_ctl("start", "pgha") != 0 ||
        srv_ctl("start", "pgbouncer") != 0)
        return -1;
    return 0;
}

/* Back to node a primary, node b its standby, and the table the writers use. */
static int setup_topology(void **state)
{
    srv_signal(SRV_PGHA_A_PIDFILE, SIGCONT);
    srv_signal(SRV_PGHA_B_PIDFILE, SIGCONT);
    if (srv_ctl("start", "pgha") != 0)
        return -1;
    free(su_at(SRV_PGHA_A_PORT, "CREATE TABLE IF NOT EXISTS leash_ha_writes (id bigserial "
                                "PRIMARY KEY, thread int) "));
    free(su_at(SRV_PGHA_A_PORT, "GRANT ALL ON leash_ha_writes, leash_ha_writes_id_seq TO leash"));
    return 0;
}

static leash_pool *ha_pool(const char *name, const char *conninfo, int max_size)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 1000};
    leash_pool *p = leash_pg_pool(name, conninfo, &o);
    if (!p)
        fail_msg("pool %s: %s", name, leash_last_error());
    return p;
}

static char *port_and_recovery(leash_handle *h)
{
    return value(h, "SELECT current_setting('port') || ' ' || pg_is_in_recovery()");
}

/* A write pool over both nodes lands on the primary whatever the order of the hosts, a read
 * pool on the standby; validation asks again and keeps them (they still fit). */
static void test_pools_land_by_role(void **state)
{
    struct {
        const char *name, *conninfo, *want;
    } cases[] = {
        {"rw", HA_BOTH " target_session_attrs=read-write", "15533 false"},
        {"rw-ba",
         "host=127.0.0.1,127.0.0.1 port=15534,15533 dbname=leash user=leash "
         "password=" SRV_PG_PASSWORD " target_session_attrs=read-write",
         "15533 false"},
        {"primary", HA_BOTH " target_session_attrs=primary", "15533 false"},
        {"standby", HA_BOTH " target_session_attrs=standby", "15534 true"},
        {"ro", HA_BOTH " target_session_attrs=read-only", "15534 true"},
        {"prefer", HA_BOTH " target_session_attrs=prefer-standby", "15534 true"},
        {"prefer-a", HA_A " target_session_attrs=prefer-standby", "15533 false"}, /* falls back */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        leash_pool_options o = {.max_size = 1, .validate_idle_ms = 1};
        leash_pool *p = leash_pg_pool(cases[i].name, cases[i].conninfo, &o);
        assert_non_null(p);
        for (int round = 0; round < 2; round++) {
            leash_handle *h = take(p);
            char *v = port_and_recovery(h);
            if (strcmp(v, cases[i].want) != 0)
                fail_msg("%s: on \"%s\", want \"%s\"", cases[i].name, v, cases[i].want);
            free(v);
            leash_release(&h);
            sleep_ms(150); /* validated at the next acquire */
        }
        leash_pool_stats s = stats(p);
        assert_int_equal(s.created, 1);
        assert_int_equal(s.validation_failures, 0);
        assert_balanced(p);
    }
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(text, "127.0.0.1:15534 (1)"));
    free(text);
}

/* Keepalive asks too: idle connections of a read-write pool whose server turns read-only
 * are retired by leash's own thread, with nobody borrowing. */
static void test_keepalive_rechecks_role(void **state)
{
    leash_pool_options o = {.max_size = 2, .acquire_timeout_ms = 1000, .keepalive_ms = 100};
    leash_pool *p = leash_pg_pool("keepalive-role", HA_A " target_session_attrs=read-write", &o);
    assert_non_null(p);
    leash_handle *a = take(p), *b = take(p);
    leash_release(&a);
    leash_release(&b);
    assert_int_equal(pgha("readonly", "a"), 0);
    double until = now_s() + 5;
    while (stats(p).destroyed_invalid < 2 && now_s() < until)
        sleep_ms(50);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_invalid, 2);
    assert_true(s.keepalives >= 2);
    assert_int_equal(s.acquired, 2);
    assert_int_equal(s.size, 0);
    assert_balanced(p);
}

/* ---- writers ---- */

struct writer {
    leash_pool *pool;
    int id;
    atomic_int *stop;
    _Atomic uint64_t *event_ms; /* when the failover was done (0: not yet) */
    long ok, ok_after, ok_after_on_old, ok_on_new, failed_after, read_only_after, acquire_failed;
    uint64_t first_ok_after_ms, longest_ms;
    char last_port[8];
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char sql[128];
    snprintf(sql, sizeof sql,
             "INSERT INTO leash_ha_writes (thread) VALUES (%d) RETURNING "
             "current_setting('port')",
             w->id);
    while (!atomic_load(w->stop)) {
        uint64_t t0 = now_ms();
        uint64_t event = atomic_load(w->event_ms);
        leash_handle *h = leash_acquire(w->pool);
        int ok = 0;
        if (h) {
            PGresult *r = leash_pg_exec(h, sql);
            ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
            if (ok)
                snprintf(w->last_port, sizeof w->last_port, "%s", PQgetvalue(r, 0, 0));
            const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
            if (event && state && strcmp(state, "25006") == 0)
                w->read_only_after++;
            PQclear(r);
            leash_release(&h);
        } else {
            w->acquire_failed++;
        }
        uint64_t t1 = now_ms();
        if (t1 - t0 > w->longest_ms)
            w->longest_ms = t1 - t0;
        if (ok) {
            w->ok++;
            if (event) {
                w->ok_after++;
                if (!w->first_ok_after_ms)
                    w->first_ok_after_ms = t1;
                if (strcmp(w->last_port, "15534") != 0)
                    w->ok_after_on_old++;
                else
                    w->ok_on_new++;
            }
        } else {
            if (event)
                w->failed_after++;
            sleep_ms(h ? 1 : 20);
        }
    }
    return NULL;
}

struct crew {
    struct writer w[WRITERS];
    pthread_t th[WRITERS];
    atomic_int stop;
    _Atomic uint64_t event_ms;
};

static void crew_start(struct crew *c, leash_pool *p)
{
    atomic_init(&c->stop, 0);
    atomic_init(&c->event_ms, 0);
    for (int i = 0; i < WRITERS; i++) {
        c->w[i] = (struct writer){.pool = p, .id = i, .stop = &c->stop, .event_ms = &c->event_ms};
        assert_int_equal(pthread_create(&c->th[i], NULL, writer_main, &c->w[i]), 0);
    }
}

/* Lets the writers run until each has written want rows on the new primary (node b) after
 * the event, or for at most max_s; then stops them. */
static void crew_finish(struct crew *c, long want, double max_s)
{
    double until = now_s() + max_s;
    for (;;) {
        int all = 1;
        for (int i = 0; i < WRITERS; i++)
            all &= c->w[i].ok_on_new >= want; /* read racily: only a hint to stop early */
        if (all || now_s() > until)
            break;
        sleep_ms(50);
    }
    atomic_store(&c->stop, 1);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(c->th[i], NULL);
}

/* Crash failover: the primary stops at once (pg_ctl stop -m immediate) under 8 writing
 * threads, then the standby is promoted. Writes succeed again within a few seconds of the
 * promotion, no operation waits past its deadline, no handle is lost, and every write after
 * the promotion (and every later borrow) is on the new primary. */
static void test_crash_failover(void **state)
{
    default_mode(); /* the failed connects are logged */
    capture_start();
    leash_pool *p = ha_pool("crash", HA_WRITE, POOL_SIZE);
    struct crew c;
    crew_start(&c, p);
    sleep_ms(500);
    assert_int_equal(pgha("crash", "a"), 0);
    sleep_ms(300);
    assert_int_equal(pgha("promote", "b"), 0);
    uint64_t promoted = now_ms();
    atomic_store(&c.event_ms, promoted);
    crew_finish(&c, 20, 15);
    uint64_t first = 0, longest = 0;
    long failed = 0, ok_before = 0;
    for (int i = 0; i < WRITERS; i++) {
        struct writer *w = &c.w[i];
        if (w->ok_after < 20)
            fail_msg("writer %d: %ld writes after the promotion (%ld failed)", i, w->ok_after,
                     w->failed_after);
        assert_int_equal(w->ok_after_on_old, 0);
        if (!first || w->first_ok_after_ms < first)
            first = w->first_ok_after_ms;
        if (w->longest_ms > longest)
            longest = w->longest_ms;
        failed += w->failed_after;
        ok_before += w->ok - w->ok_after;
    }
    print_message("crash failover: first write %lu ms after the promotion, %ld failed after it, "
                  "longest operation %lu ms, %ld writes before\n",
                  (unsigned long)(first - promoted), failed, (unsigned long)longest, ok_before);
    assert_true(ok_before > 0);
    if (first - promoted > 5000)
        fail_msg("the first write came %lu ms after the promotion",
                 (unsigned long)(first - promoted));
    /* acquire_timeout_ms 1000; a statement on a connection that died fails at once */
    if (longest > 3000)
        fail_msg("an operation took %lu ms", (unsigned long)longest);
    assert_int_equal(leash_outstanding(), 0);
    leash_handle *h = take(p);
    char *v = port_and_recovery(h);
    assert_string_equal(v, "15534 false");
    free(v);
    leash_release(&h);
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(text, "127.0.0.1:15534"));
    assert_null(strstr(text, "127.0.0.1:15533 ("));
    free(text);
    assert_balanced(p);
}

/* The demoted primary: the old primary stays up but read-only (default_transaction_read_only
 * on, reloaded) and the standby is promoted. Writes that meet SQLSTATE 25006 are bounded by
 * the connections the pool had (each at most once: the first retires every connection to
 * that server), not by time; then every write lands on the new primary. */
static void test_demoted_primary(void **state)
{
    leash_pool *p = ha_pool("demoted", HA_WRITE, POOL_SIZE);
    struct crew c;
    crew_start(&c, p);
    sleep_ms(500);
    assert_int_equal(pgha("promote", "b"), 0);
    atomic_store(&c.event_ms, now_ms());
    assert_int_equal(pgha("readonly", "a"), 0);
    crew_finish(&c, 20, 10);
    long read_only = 0, acquire_failed = 0, ok_after = 0;
    for (int i = 0; i < WRITERS; i++) {
        struct writer *w = &c.w[i];
        read_only += w->read_only_after;
        acquire_failed += w->acquire_failed;
        ok_after += w->ok_after;
        if (w->ok_on_new < 20 || strcmp(w->last_port, "15534") != 0)
            fail_msg("writer %d: %ld writes on the new primary, the last on %s", i, w->ok_on_new,
                     w->last_port);
    }
    leash_pool_stats s = stats(p);
    print_message("demoted primary: %ld writes failed read-only (pool of %d), %ld acquires "
                  "failed, %ld writes after; %lu connections evicted, %lu invalid\n",
                  read_only, POOL_SIZE, acquire_failed, ok_after,
                  (unsigned long)s.destroyed_evicted, (unsigned long)s.destroyed_invalid);
    assert_true(read_only >= 1);
    assert_true(read_only <= POOL_SIZE);
    assert_int_equal(acquire_failed, 0);
    assert_true(s.destroyed_evicted >= 1);
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(text, "retired because their server changed role"));
    free(text);
    leash_handle *h = take(p);
    char *v = port_and_recovery(h);
    assert_string_equal(v, "15534 false");
    free(v);
    leash_release(&h);
    assert_balanced(p);
}

/* The same through pgbouncer (transaction pooling) in front of node a alone: once node a is
 * read-only, statements that meet 25006 are bounded by the pool's connections; after that
 * the pool fails to connect (libpq's read-write check, through pgbouncer) instead of lending
 * connections that fail every write. */
static void test_demoted_primary_through_pgbouncer(void **state)
{
    default_mode(); /* the failed connects are logged */
    capture_start();
    leash_pool *p =
        ha_pool("demoted-bouncer",
                "host=127.0.0.1 port=16432 dbname=leash_ha user=leash password=" SRV_PG_PASSWORD
                " target_session_attrs=read-write",
                POOL_SIZE);
    struct crew c;
    crew_start(&c, p);
    sleep_ms(500);
    atomic_store(&c.event_ms, now_ms());
    assert_int_equal(pgha("readonly", "a"), 0);
    sleep_ms(1500);
    atomic_store(&c.stop, 1);
    long read_only = 0, ok_before = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(c.th[i], NULL);
        read_only += c.w[i].read_only_after;
        ok_before += c.w[i].ok - c.w[i].ok_after;
    }
    print_message("demoted through pgbouncer: %ld writes failed read-only (pool of %d)\n",
                  read_only, POOL_SIZE);
    assert_true(ok_before > 0);
    assert_true(read_only <= POOL_SIZE);
    assert_null(leash_acquire(p));
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    if (!strstr(leash_last_error(), "not read-write when asked after login"))
        fail_msg("%s", leash_last_error());
    assert_int_equal(leash_outstanding(), 0);
}

/* ---- the read pool ---- */

struct reader {
    leash_pool *pool;
    atomic_int *stop;
    long in_recovery, not_in_recovery, failed;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    while (!atomic_load(r->stop)) {
        leash_handle *h = leash_acquire(r->pool);
        if (!h) {
            r->failed++;
            sleep_ms(20);
            continue;
        }
        PGresult *res = leash_pg_exec(h, "SELECT pg_is_in_recovery()");
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
            *(strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? &r->in_recovery : &r->not_in_recovery) += 1;
        else
            r->failed++;
        PQclear(res);
        leash_release(&h);
    }
    return NULL;
}

/* A read pool (target_session_attrs=standby) whose standby is promoted. Idle connections are
 * never lent again: validation asks and retires them, and with no standby left the acquire
 * fails. Busy ones each run at most one statement on the promoted server (it reports the
 * change with that statement's answer), so such statements are bounded by the pool's
 * connections. prefer-standby falls back to a primary, as libpq does. */
static void test_read_pool_after_promotion(void **state)
{
    default_mode(); /* the failed connects are logged */
    capture_start();
    /* Idle: four warm connections on the standby, then the promotion. */
    leash_pool_options o = {
        .max_size = POOL_SIZE, .acquire_timeout_ms = 1000, .validate_idle_ms = 100};
    leash_pool *p = leash_pg_pool("reads-idle", HA_BOTH " target_session_attrs=standby", &o);
    assert_non_null(p);
    leash_handle *h[POOL_SIZE];
    for (int i = 0; i < POOL_SIZE; i++) {
        h[i] = take(p);
        char *v = port_and_recovery(h[i]);
        assert_string_equal(v, "15534 true");
        free(v);
    }
    for (int i = 0; i < POOL_SIZE; i++)
        leash_release(&h[i]);
    leash_pool_options po = {.max_size = 1, .acquire_timeout_ms = 1000, .validate_idle_ms = 100};
    leash_pool *prefer =
        leash_pg_pool("reads-prefer", HA_BOTH " target_session_attrs=prefer-standby", &po);
    assert_non_null(prefer);
    leash_handle *ph = take(prefer);
    leash_release(&ph);
    assert_int_equal(pgha("promote", "b"), 0);
    sleep_ms(400); /* idle past validate_idle_ms on the pools' clock */
    leash_handle *none = leash_acquire(p);
    if (none) {
        char *v = port_and_recovery(none);
        fail_msg("lent a connection on \"%s\"", v);
    }
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_invalid, POOL_SIZE);
    assert_int_equal(s.size, 0);
    /* prefer-standby: its standby connection goes, and it falls back to the primary. */
    sleep_ms(200);
    ph = take(prefer);
    char *v = port_and_recovery(ph);
    assert_string_equal(v, "15533 false");
    free(v);
    leash_release(&ph);
    assert_int_equal(stats(prefer).destroyed_invalid, 1);
    assert_balanced(prefer);
    assert_int_equal(leash_outstanding(), 0);

    /* Busy: four threads reading while the standby is promoted. */
    assert_int_equal(setup_topology(state), 0);
    leash_pool *q = leash_pg_pool("reads-busy", HA_BOTH " target_session_attrs=standby", &o);
    assert_non_null(q);
    atomic_int stop = 0;
    struct reader r[POOL_SIZE];
    pthread_t th[POOL_SIZE];
    for (int i = 0; i < POOL_SIZE; i++) {
        r[i] = (struct reader){.pool = q, .stop = &stop};
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
    }
    sleep_ms(500);
    assert_int_equal(pgha("promote", "b"), 0);
    sleep_ms(1500);
    atomic_store(&stop, 1);
    sleep_ms(300); /* what is idle now is past validate_idle_ms */
    long in_recovery = 0, not_in_recovery = 0;
    for (int i = 0; i < POOL_SIZE; i++) {
        pthread_join(th[i], NULL);
        in_recovery += r[i].in_recovery;
        not_in_recovery += r[i].not_in_recovery;
    }
    print_message("read pool, standby promoted under 4 readers: %ld reads in recovery before, "
                  "%ld statements on the promoted server (pool of %d)\n",
                  in_recovery, not_in_recovery, POOL_SIZE);
    assert_true(in_recovery > 0);
    assert_true(not_in_recovery <= POOL_SIZE);
    assert_null(leash_acquire(q));
    assert_int_equal(leash_outstanding(), 0);
}

/* pg_terminate_backend of every pooled backend, one of them in the middle of a statement:
 * that statement fails (LEASH_EIO, the connection dropped) and the pool's idle connections
 * to the same server are checked before they are lent, so the next borrowers are served
 * without an error; through pgbouncer the same terminations cost no borrower anything. */
static void test_terminate_pooled_backends(void **state)
{
    leash_pool *p = pool("terminated", HA_A, POOL_SIZE, NULL);
    leash_handle *h[POOL_SIZE];
    long pid[POOL_SIZE];
    for (int i = 0; i < POOL_SIZE; i++) {
        h[i] = take(p);
        pid[i] = backend_pid(h[i]);
    }
    for (int i = 1; i < POOL_SIZE; i++)
        leash_release(&h[i]);
    assert_int_equal(PQsendQuery(leash_pg(h[0]), "SELECT pg_sleep(5)"), 1);
    char *v = su_at(SRV_PGHA_A_PORT,
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE "
                    "pid IN (%ld, %ld, %ld, %ld)",
                    pid[0], pid[1], pid[2], pid[3]);
    assert_string_equal(v, "4");
    free(v);
    /* The running statement fails; the others are found out by validation. */
    PGresult *r = PQgetResult(leash_pg(h[0]));
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    while ((r = PQgetResult(leash_pg(h[0]))) != NULL)
        PQclear(r);
    leash_release(&h[0]); /* dead: dropped, and the others to node a checked */
    h[0] = take(p);
    /* Through the helper: 57P01 on a connection in use. */
    long mine = backend_pid(h[0]);
    free(su_at(SRV_PGHA_A_PORT, "SELECT pg_terminate_backend(%ld, 5000)", mine));
    assert_null(leash_pg_exec(h[0], "SELECT 1"));
    assert_int_equal(leash_last_status(), LEASH_EIO);
    leash_release(&h[0]);
    for (int round = 0; round < 8; round++) {
        leash_handle *b = take(p);
        long now = backend_pid(b);
        for (int i = 0; i < POOL_SIZE; i++)
            assert_true(now != pid[i]);
        leash_release(&b);
    }
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_broken, 2);
    assert_int_equal(s.destroyed_invalid, POOL_SIZE - 1);
    assert_balanced(p);
    leash_pool_close(p);

    /* Through pgbouncer: its server connections to node a are terminated (node a has no
     * other sessions of role leash now); the pool does not notice. */
    leash_pool *b =
        pool("terminated-bouncer",
             "host=127.0.0.1 port=16432 dbname=leash_ha user=leash password=" SRV_PG_PASSWORD,
             POOL_SIZE, NULL);
    for (int i = 0; i < POOL_SIZE; i++) {
        h[i] = take(b);
        assert_int_equal(value_long(h[i], "SELECT 1"), 1);
    }
    for (int i = 0; i < POOL_SIZE; i++)
        leash_release(&h[i]);
    v = su_at(SRV_PGHA_A_PORT, "SELECT count(pg_terminate_backend(pid, 5000)) FROM "
                               "pg_stat_activity WHERE usename = 'leash'");
    assert_true(atol(v) >= 1);
    free(v);
    sleep_ms(50);
    for (int round = 0; round < 8; round++) {
        leash_handle *x = take(b);
        assert_int_equal(value_long(x, "SELECT 2"), 2);
        leash_release(&x);
    }
    assert_balanced(b);
}

int main(void)
{
    const struct CMUnitTest deadlines[] = {
        cmocka_unit_test_teardown(test_connect_to_paused_server, teardown_resume),
        cmocka_unit_test_teardown(test_multi_host_skips_paused, teardown_resume),
        cmocka_unit_test_teardown(test_statement_to_paused_backend, teardown_no_leaks),
        cmocka_unit_test_teardown(test_validation_of_paused_backend, teardown_no_leaks),
        cmocka_unit_test_teardown(test_release_cancel_to_paused_server, teardown_resume),
        cmocka_unit_test_teardown(test_shutdown_joins_cancel_threads, teardown_resume),
        cmocka_unit_test_teardown(test_tcp_defaults, teardown_no_leaks),
    };
    const struct CMUnitTest failover[] = {
        cmocka_unit_test_setup_teardown(test_pools_land_by_role, setup_topology, teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_keepalive_rechecks_role, setup_topology,
                                        teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_crash_failover, setup_topology, teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_demoted_primary, setup_topology, teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_demoted_primary_through_pgbouncer, setup_topology,
                                        teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_read_pool_after_promotion, setup_topology,
                                        teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_terminate_pooled_backends, setup_topology,
                                        teardown_no_leaks),
    };
    int failed = cmocka_run_group_tests_name("deadlines", deadlines, group_setup, NULL);
    failed += cmocka_run_group_tests_name("failover", failover, group_setup, NULL);
    srv_ctl("start", "pgha"); /* leave the known topology behind */
    return failed;
}

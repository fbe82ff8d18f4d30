/* Unit tests of scope guards, strict mode and misuse: what is counted in default mode and
 * what aborts, with the borrow site, in strict mode. */
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int setup_default(void **state)
{
    (void)state;
    fake_reset();
    default_mode();
    return 0;
}

static int setup_strict(void **state)
{
    (void)state;
    fake_reset();
    return 0; /* LEASH_STRICT=1 comes from the test environment */
}

static int leak_line;

/* An error path that forgets its release: the guard catches it. */
static int leaky_path(leash_pool *p, int fail)
{
    LEASH_GUARD leash_handle *h = leash_acquire(p);
    leak_line = __LINE__ - 1;
    if (!h)
        return -1;
    if (fail)
        return -1; /* forgot leash_release(&h) */
    leash_release(&h);
    return 0;
}

static void test_auto_releases_at_scope_exit(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("auto", &fake_adapter, "fake://h", NULL);
    {
        LEASH_AUTO leash_handle *h = leash_acquire(p);
        assert_non_null(leash_conn(h));
        assert_int_equal(leash_outstanding(), 1);
    }
    assert_int_equal(leash_outstanding(), 0);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.released, 1);
    assert_int_equal(st.leaks_reclaimed, 0);
    {
        LEASH_AUTO leash_handle *h = leash_acquire(p);
        leash_release(&h); /* released early: the guard does nothing */
    }
    {
        LEASH_AUTO leash_handle *h = NULL; /* never acquired */
        (void)h;
    }
    st = stats(p);
    assert_int_equal(st.released, 2);
    assert_int_equal(st.misuse, 0);
    assert_invariant(p);
}

static void test_guard_quiet_when_released(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("g-ok", &fake_adapter, "fake://h", NULL);
    for (int i = 0; i < 10; i++)
        assert_int_equal(leaky_path(p, 0), 0);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.released, 10);
    assert_int_equal(st.leaks_reclaimed, 0);
    assert_int_equal(leash_pool_leaks(p), 0);
}

static void test_guard_reclaims_in_default_mode(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("g-leak", &fake_adapter, "fake://h", &o);
    /* The leak fires three times; the pool of one keeps working. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(leaky_path(p, 1), -1);
    assert_int_equal(leaky_path(p, 0), 0);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.leaks_reclaimed, 3);
    assert_int_equal(st.released, 1);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.created, 1); /* reclaimed clean: reused */
    assert_int_equal(leash_pool_leaks(p), 3);
    assert_invariant(p);

    /* The dump names the leaking site, though the handles are no longer held. */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(leash_stats_dump(fds[1], LEASH_FORMAT_TEXT), 0);
    close(fds[1]);
    char *text = slurp(fds[0]);
    close(fds[0]);
    char site[160];
    snprintf(site, sizeof site, "3 reclaimed  %s:%d in leaky_path()", __FILE__, leak_line);
    assert_non_null(strstr(text, "leaks and misuse by borrow site"));
    assert_non_null(strstr(text, site));
    free(text);
}

static void guard_leak_child(void *arg)
{
    (void)arg;
    leash_pool *p = leash_pool_open("g-strict", &fake_adapter, "fake://h", NULL);
    leaky_path(p, 1);
    _exit(0); /* not reached: strict mode aborts */
}

static void test_guard_aborts_in_strict_mode_with_site(void **state)
{
    (void)state;
    char *err = NULL;
    int st = run_child(guard_leak_child, NULL, &err);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    char site[128];
    snprintf(site, sizeof site, "test-guard.c:%d in leaky_path()", leak_line);
    assert_non_null(strstr(err, "STRICT"));
    assert_non_null(strstr(err, "pool \"g-strict\""));
    assert_non_null(strstr(err, "leaked"));
    assert_non_null(strstr(err, site));
    free(err);
}

static void test_double_release_counts_misuse(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("dbl", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p), *copy = h;
    leash_release(&h);
    leash_release(&copy); /* bad input: the same handle released twice */
    assert_int_equal(leash_last_status(), LEASH_EMISUSE);
    assert_non_null(strstr(leash_last_error(), "not checked out"));
    leash_pool_stats st = stats(p);
    assert_int_equal(st.misuse, 1);
    assert_int_equal(st.released, 1);
    assert_int_equal(st.idle, 1); /* healed: the pool is intact */
    /* A stale copy used after release. */
    h = leash_acquire(p);
    copy = h;
    leash_release(&h);
    assert_null(leash_conn(copy));
    assert_int_equal(stats(p).misuse, 2);
    leash_discard(&copy); /* discard of a handle not checked out */
    assert_int_equal(stats(p).misuse, 3);
    assert_int_equal(stats(p).idle, 1);
    /* Not a handle at all (bad input): refused, never dereferenced beyond its magic. */
    static char junk[512];
    leash_handle *bogus = (leash_handle *)junk;
    leash_release(&bogus);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_invariant(p);
}

static int release_line;

static void double_release_child(void *arg)
{
    (void)arg;
    leash_pool *p = leash_pool_open("dbl-strict", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p);
    leash_handle *copy = h;
    leash_release(&h);
    leash_release(&copy);
    _exit(0);
}

static void test_double_release_aborts_in_strict_mode(void **state)
{
    (void)state;
    char *err = NULL;
    int st = run_child(double_release_child, NULL, &err);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    assert_non_null(strstr(err, "pool \"dbl-strict\""));
    assert_non_null(strstr(err, "double release"));
    assert_non_null(strstr(err, "in double_release_child()"));
    free(err);
    (void)release_line;
}

static void dirty_child(void *arg)
{
    (void)arg;
    leash_pool *p = leash_pool_open("dirty-strict", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p);
    ((struct fake_conn *)leash_conn(h))->dirty = LEASH_RESET_CLEANED;
    leash_release(&h);
    _exit(0);
}

static void broken_child(void *arg)
{
    (void)arg;
    leash_pool *p = leash_pool_open("broken-strict", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p);
    leash_mark_broken(h);
    leash_release(&h);
    h = leash_acquire(p);
    ((struct fake_conn *)leash_conn(h))->dirty = LEASH_RESET_BROKEN;
    leash_release(&h);
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    _exit(st.destroyed == 2 && st.dirty_returns == 0 && st.misuse == 0 ? 0 : 3);
}

static void test_strict_dirty_aborts_broken_does_not(void **state)
{
    (void)state;
    char *err = NULL;
    int st = run_child(dirty_child, NULL, &err);
    assert_true(WIFSIGNALED(st));
    assert_non_null(strstr(err, "pool \"dirty-strict\""));
    assert_non_null(strstr(err, "dirty"));
    assert_non_null(strstr(err, "in dirty_child()"));
    free(err);

    st = run_child(broken_child, NULL, &err);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_null(strstr(err, "STRICT"));
    free(err);
}

static leash_handle *borrow_for_caller(leash_pool *p)
{
    LEASH_GUARD leash_handle *h = leash_acquire(p);
    if (!h)
        return NULL;
    return LEASH_TAKE(h); /* ownership moves out; the guard sees NULL */
}

static void test_take_moves_ownership(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("take", &fake_adapter, "fake://h", NULL);
    leash_handle *h = borrow_for_caller(p);
    assert_non_null(h);
    assert_int_equal(leash_outstanding(), 1);
    assert_int_equal(stats(p).leaks_reclaimed, 0);
    leash_release(&h);
}

static void release_by_value(leash_handle *h)
{
    leash_release(&h);
}

static void test_guard_after_release_through_copy(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("copy", &fake_adapter, "fake://h", NULL);
    {
        LEASH_GUARD leash_handle *h = leash_acquire(p);
        release_by_value(h); /* released through a copy: h still points at it */
    }
    leash_pool_stats st = stats(p);
    assert_int_equal(st.leaks_reclaimed, 0);
    assert_int_equal(st.misuse, 0);
    assert_int_equal(st.released, 1);
}

static int misuse_logs;

static void count_log(int level, const char *msg, void *arg)
{
    (void)arg;
    if (level == LEASH_LOG_WARN && strstr(msg, "misuse") && strstr(msg, "\"logonce\""))
        misuse_logs++;
}

static void test_misuse_logged_once_per_site(void **state)
{
    (void)state;
    leash_set_log(count_log, NULL);
    leash_pool *p = leash_pool_open("logonce", &fake_adapter, "fake://h", NULL);
    for (int i = 0; i < 5; i++) {
        leash_handle *h = leash_acquire(p), *c = h;
        leash_release(&h);
        leash_release(&c);
    }
    leash_set_log(NULL, NULL);
    assert_int_equal(stats(p).misuse, 5);
    assert_int_equal(misuse_logs, 1); /* counted every time, logged once per site */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_auto_releases_at_scope_exit, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_guard_quiet_when_released, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_guard_reclaims_in_default_mode, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_guard_aborts_in_strict_mode_with_site, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_double_release_counts_misuse, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_double_release_aborts_in_strict_mode, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_strict_dirty_aborts_broken_does_not, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_take_moves_ownership, setup_strict, fake_teardown),
        cmocka_unit_test_setup_teardown(test_guard_after_release_through_copy, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_misuse_logged_once_per_site, setup_default,
                                        fake_teardown),
    };
    return cmocka_run_group_tests_name("guard", tests, NULL, NULL);
}

/* Unit tests of the promises that must hold under pressure (issue "every promise holds"):
 * a handle value names one borrow (stale copies are misuse and never touch the live borrow),
 * fork (every pre-fork handle is stale in the child; a fork during a dump or a shutdown does
 * not hang the child), adapter hooks called in the core's lock order, nothing outliving its
 * pool, and errors that say why. Each test says what bad input it tries. */
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
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
    return 0; /* LEASH_STRICT=1 from the test environment */
}

/* Bad input: a copy of a released handle passed to release after the same slot was lent
 * again through the thread cache (the common case). */
static void test_stale_release_leaves_new_borrow_alone(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("stale", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    leash_handle *copy = h;
    leash_release(&h);
    leash_handle *h2 = leash_acquire(p);
    void *c2 = leash_conn(h2);
    assert_non_null(c2);

    leash_release(&copy); /* stale: misuse, h2 untouched */
    assert_null(copy);
    assert_int_equal(leash_last_status(), LEASH_EMISUSE);
    assert_non_null(strstr(leash_last_error(), "test-trust.c"));
    leash_pool_stats st = stats(p);
    assert_int_equal(st.misuse, 1);
    assert_int_equal(st.in_use, 1);
    assert_ptr_equal(leash_conn(h2), c2); /* still held, still usable */

    leash_release(&h2); /* the live borrow ends normally: not misuse */
    st = stats(p);
    assert_int_equal(st.misuse, 1);
    assert_int_equal(st.released, 2);
    assert_int_equal(st.in_use, 0);
    assert_invariant(p);
}

/* Bad input: a stale copy given to leash_conn, leash_conn_of, leash_mark_broken and
 * leash_discard while the slot is lent again. */
static void test_stale_accessors_never_reach_new_borrow(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("stale2", &fake_adapter, "fake://h", &o);
    leash_handle *h = take(p);
    leash_handle *copy = h;
    leash_release(&h);
    leash_handle *h2 = take(p);

    assert_null(leash_conn(copy));
    assert_null(leash_conn_of(copy, &fake_adapter));
    leash_mark_broken(copy); /* must not break h2 */
    leash_handle *c = copy;
    leash_discard(&c); /* must not end h2 */
    leash_pool_stats st = stats(p);
    assert_int_equal(st.misuse, 4);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(st.discarded, 0);

    leash_release(&h2);
    st = stats(p);
    assert_int_equal(st.destroyed, 0); /* not broken: reused */
    assert_int_equal(st.created, 1);
    assert_invariant(p);
}

static int guard_line;

/* A scope that releases its guarded handle through a copy, then borrows again. */
static void released_through_copy(leash_pool *p, leash_handle **keep)
{
    LEASH_GUARD leash_handle *h = leash_acquire(p);
    leash_handle *copy = h;
    leash_release(&copy);
    *keep = leash_acquire(p); /* same slot, same thread */
    guard_line = __LINE__ - 1;
}

/* Bad input: a guard whose handle was released through a copy, with a later borrow of the
 * same slot by the same thread alive at scope exit. */
static void test_guard_of_stale_value_leaves_later_borrow(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("guardcopy", &fake_adapter, "fake://h", &o);
    leash_handle *later = NULL;
    released_through_copy(p, &later);
    assert_non_null(later);
    assert_non_null(leash_conn(later));
    leash_pool_stats st = stats(p);
    assert_int_equal(st.leaks_reclaimed, 0);
    assert_int_equal(st.in_use, 1);
    leash_release(&later);
    assert_balanced(p);
}

static void stale_in_strict(void *arg)
{
    leash_pool *p = leash_pool_open("strictstale", &fake_adapter, "fake://h",
                                    &(leash_pool_options){.max_size = 1});
    (void)arg;
    leash_handle *h = leash_acquire(p); /* first borrow site */
    leash_handle *copy = h;
    leash_release(&h);
    leash_handle *h2 = leash_acquire(p); /* second borrow site */
    leash_release(&copy);                /* aborts */
    leash_release(&h2);
}

/* Strict mode: the stale release aborts, naming both borrows' sites. */
static void test_stale_release_strict_names_both_sites(void **state)
{
    (void)state;
    char *err = NULL;
    int st = run_child(stale_in_strict, NULL, &err);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(err, "STRICT"));
    assert_non_null(strstr(err, "has ended"));
    /* the ended borrow's site and the live one's, both in stale_in_strict() */
    const char *first = strstr(err, "stale_in_strict");
    assert_non_null(first);
    assert_non_null(strstr(first + 1, "stale_in_strict"));
    assert_non_null(strstr(err, "now lent to another borrow"));
    free(err);
}

/* ---- fork ---- */

struct fork_arg {
    leash_pool *p;
    leash_handle *h;
    int resets, destroys;
};

/* In the child, a handle borrowed before the fork: using it is misuse, and the child's
 * first leash call being that use runs the fork fix-up. */
static void child_uses_prefork_handle(void *v)
{
    struct fork_arg *a = v;
    if (leash_conn(a->h) != NULL)
        _exit(10); /* the parent's connection was reachable */
    if (leash_last_status() != LEASH_EMISUSE || !strstr(leash_last_error(), "before fork"))
        _exit(11);
    if (fake.abandons != 2) /* held and idle: abandoned, never spoken on */
        _exit(12);
    leash_release(&a->h); /* quiet: nothing sent, nothing counted */
    if (fake.resets != a->resets || fake.destroys != a->destroys)
        _exit(13);
    leash_pool_stats st;
    leash_pool_stats_get(a->p, &st);
    if (st.misuse != 1)
        _exit(14);
    leash_handle *mine = leash_acquire(a->p); /* fresh connection of the child's own */
    if (!mine || fake.connects != 3)
        _exit(15);
    leash_release(&mine);
    leash_shutdown();
    _exit(0);
}

static void test_fork_prefork_handle_is_stale(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("forkuse", &fake_adapter, "fake://h", NULL);
    leash_handle *idle = take(p);
    struct fork_arg a = {.p = p, .h = take(p)};
    leash_release(&idle);
    a.resets = fake.resets;
    a.destroys = fake.destroys;
    char *err = NULL;
    int st = run_child(child_uses_prefork_handle, &a, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d; stderr: %s", st, err);
    free(err);
    /* The parent's borrow is intact. */
    assert_non_null(leash_conn(a.h));
    leash_release(&a.h);
    assert_int_equal(fake.abandons, 0);
    assert_balanced(p);
}

/* The child's first leash call is a guard's scope exit. */
static void child_guard_exit_first(void *v)
{
    struct fork_arg *a = v;
    {
        LEASH_GUARD leash_handle *g = a->h; /* the pre-fork borrow, guarded in the child */
        (void)g;
    }
    if (fake.abandons != 1 || fake.resets != a->resets)
        _exit(10); /* the fix-up did not run, or the connection was reset over the wire */
    leash_pool_stats st;
    leash_pool_stats_get(a->p, &st);
    if (st.leaks_reclaimed != 0 || st.misuse != 0)
        _exit(11);
    leash_shutdown();
    _exit(0);
}

static void test_fork_guard_exit_is_first_call(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("forkguard", &fake_adapter, "fake://h", NULL);
    struct fork_arg a = {.p = p, .h = take(p)};
    a.resets = fake.resets;
    char *err = NULL;
    int st = run_child(child_guard_exit_first, &a, &err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child: status %d; stderr: %s", st, err);
    free(err);
    leash_release(&a.h);
    assert_balanced(p);
}

static _Atomic int busy_stop;

static void *dumper(void *arg)
{
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    (void)arg;
    while (!busy_stop) {
        leash_outstanding();
        leash_check_leaks(devnull);
        leash_stats_dump(devnull, LEASH_FORMAT_TEXT);
        leash_stats_dump(devnull, LEASH_FORMAT_PROMETHEUS);
    }
    close(devnull);
    return NULL;
}

/* Bad timing: fork while another thread is inside leash_outstanding, leash_check_leaks or a
 * dump. Each child must be able to shut leash down (it hung before: the dump counter of a
 * thread that does not exist in the child). */
static void test_fork_during_dump_child_shuts_down(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("forkdump", &fake_adapter, "fake://h", NULL);
    leash_handle *h = take(p);
    busy_stop = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, dumper, NULL), 0);
    for (int i = 0; i < 12; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            alarm(5);
            leash_shutdown();
            _exit(0);
        }
        int st = wait_child(pid);
        assert_true(child_done(st));
        sleep_ms(2);
    }
    busy_stop = 1;
    pthread_join(t, NULL);
    leash_release(&h);
    assert_balanced(p);
}

/* ---- adapter hooks in the core's order ---- */

static _Atomic int hook_inits, hook_prepares, hook_parents, hook_children;
static pthread_mutex_t adapter_lock = PTHREAD_MUTEX_INITIALIZER;

static int h_init(void)
{
    hook_inits++;
    return 0;
}
static void h_prepare(void)
{
    hook_prepares++;
    pthread_mutex_lock(&adapter_lock);
}
static void h_parent(void)
{
    hook_parents++;
    pthread_mutex_unlock(&adapter_lock);
}
static void h_child(void)
{
    hook_children++;
    pthread_mutex_unlock(&adapter_lock);
}
static void *h_connect(void *ctx, const char *t, char *err, size_t n)
{
    (void)ctx, (void)t, (void)err, (void)n;
    return malloc(8);
}
static void h_destroy(void *ctx, void *c)
{
    (void)ctx;
    free(c);
}
/* Takes the adapter's lock while the core frees the pool at shutdown (the core holds its
 * manager lock then): the order the fork handlers must agree with. */
static void h_ctx_free(void *ctx)
{
    pthread_mutex_lock(&adapter_lock);
    sleep_ms(1);
    pthread_mutex_unlock(&adapter_lock);
    free(ctx);
}
static const leash_adapter hooked = {
    .kind = "hooked",
    .connect = h_connect,
    .destroy = h_destroy,
    .abandon = h_destroy,
    .ctx_free = h_ctx_free,
    .process_init = h_init,
    .fork_prepare = h_prepare,
    .fork_parent = h_parent,
    .fork_child = h_child,
};

static void test_adapter_process_init_once_and_fork_hooks(void **state)
{
    (void)state;
    int inits = hook_inits;
    leash_pool *a = leash_pool_open_with("hk1", &hooked, malloc(8), "x", NULL);
    leash_pool *b = leash_pool_open_with("hk2", &hooked, malloc(8), "x", NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(hook_inits - inits <= 1); /* once per process, whatever the pool count */
    assert_int_equal(hook_inits, 1);
    int prep = hook_prepares, par = hook_parents;
    pid_t pid = fork();
    if (pid == 0)
        _exit(hook_children == 1 ? 0 : 1);
    int st = wait_child(pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(hook_prepares, prep + 1);
    assert_int_equal(hook_parents, par + 1);
}

static _Atomic int cycling, pause_req, paused;

static void *open_shutdown_loop(void *arg)
{
    (void)arg;
    while (cycling) {
        if (pause_req) { /* see below: only under AddressSanitizer */
            paused = 1;
            while (pause_req && cycling)
                sleep_ms(1);
            paused = 0;
        }
        leash_pool *p = leash_pool_open_with("cyc", &hooked, malloc(8), "x", NULL);
        leash_handle *h = p ? leash_acquire(p) : NULL;
        leash_release(&h);
        leash_shutdown();
    }
    return NULL;
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* Bad timing: fork while another thread is in leash_shutdown, which frees pools (taking the
 * adapter's own lock) with the manager lock held. No child may deadlock. Under
 * AddressSanitizer the forks wait until the other thread is between two leash calls: the
 * sanitizer's own allocator is not fork-safe (a child can hang in its first malloc whatever
 * leash does); the plain and ThreadSanitizer builds fork at any moment. */
static void test_fork_during_shutdown_never_deadlocks(void **state)
{
    (void)state;
    cycling = 1;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, open_shutdown_loop, NULL), 0);
    int bad = 0, last = 0;
    for (int i = 0; i < 20; i++) {
#ifdef UNDER_ASAN
        pause_req = 1;
        uint64_t t0 = now_ms();
        while (!paused && now_ms() - t0 < 2000)
            sleep_ms(1);
#endif
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            alarm(5);
            leash_pool *p = leash_pool_open_with("child", &hooked, malloc(8), "x", NULL);
            leash_handle *h = p ? leash_acquire(p) : NULL;
            leash_release(&h);
            leash_shutdown();
            _exit(0);
        }
        int st = wait_child(pid);
        pause_req = 0;
        if (!child_done(st)) {
            bad++;
            last = st;
        }
        sleep_ms(3);
    }
    /* The other thread stops before any assertion, so a failure here cannot reach the next
     * test (its shutdowns would free that test's pools). */
    cycling = 0;
    pthread_join(t, NULL);
    if (bad)
        fail_msg("%d of 20 children did not exit cleanly (last status %d)", bad, last);
}

/* ---- nothing outlives its pool ---- */

/* Bad timing: the pool closes while min_idle's connect is in flight. */
static void test_close_while_min_idle_connects(void **state)
{
    (void)state;
    fake_connect_delay_ms = 300;
    leash_pool_options o = {.min_idle = 1};
    leash_pool *p = leash_pool_open("closewarm", &fake_adapter, "fake://h", &o);
    uint64_t t0 = now_ms();
    while (fake_connecting == 0 && now_ms() - t0 < 2000)
        sleep_ms(2);
    assert_int_equal(fake_connecting, 1);
    leash_pool_close(p);
    t0 = now_ms();
    while ((fake.connects == 0 || fake.live != 0) && now_ms() - t0 < 3000)
        sleep_ms(5);
    assert_int_equal(fake.connects, 1);
    assert_int_equal(fake.live, 0); /* the late connection was destroyed, not kept */
    leash_pool_stats st = stats(p);
    assert_int_equal(st.destroyed_closed, 1);
    assert_int_equal(st.size, 0);
    assert_invariant(p);
}

/* ---- errors say why ---- */

static int holder_line;

/* Bad input: a pool of one whose handle is held elsewhere, and a connect that hangs. */
static void test_timeout_names_holders_and_connects(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("why", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    holder_line = __LINE__ - 1;
    sleep_ms(20);
    assert_null(leash_acquire_for(p, 30));
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    char where[64];
    snprintf(where, sizeof where, "test-trust.c:%d", holder_line);
    assert_non_null(strstr(leash_last_error(), where));
    assert_non_null(strstr(leash_last_error(), "1 in use"));
    assert_null(strstr(leash_last_error(), "1 handles"));
    leash_release(&h);

    leash_pool *q = leash_pool_open("why2", &fake_adapter, "fake://h", &o);
    fake_hang = 1;
    assert_null(leash_acquire_for(q, 50));
    assert_non_null(strstr(leash_last_error(), "1 connect in flight"));
    fake_hang = 0;
    assert_invariant(p);
}

/* A command timeout does not read as a wait for a handle. */
static void test_strerror_timeout_is_generic(void **state)
{
    (void)state;
    assert_null(strstr(leash_strerror(LEASH_ETIMEDOUT), "handle"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stale_release_leaves_new_borrow_alone, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_stale_accessors_never_reach_new_borrow, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_guard_of_stale_value_leaves_later_borrow,
                                        setup_default, fake_teardown),
        cmocka_unit_test_setup_teardown(test_stale_release_strict_names_both_sites, setup_strict,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_fork_prefork_handle_is_stale, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_fork_guard_exit_is_first_call, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_fork_during_dump_child_shuts_down, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_adapter_process_init_once_and_fork_hooks,
                                        setup_default, teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_fork_during_shutdown_never_deadlocks, setup_default,
                                        teardown_no_leaks),
        cmocka_unit_test_setup_teardown(test_close_while_min_idle_connects, setup_default,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_names_holders_and_connects, setup_default,
                                        fake_teardown),
        cmocka_unit_test(test_strerror_timeout_is_generic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

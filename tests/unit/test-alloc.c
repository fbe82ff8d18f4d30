/* Unit tests of allocation failure: for every n along a scenario (open two pools, borrow and
 * return handles that need new connections, dumps, sites, hooks, evict, a growth past the
 * first slot segment, retarget, close, shutdown), the n-th allocation inside leash fails. Every
 * failure must be a clean refusal (NULL / -1 with LEASH_ENOMEM, or ECONNECT when a connect job
 * could not start), never a crash, a hang, a lost handle or a leak (ASan's leak check runs in
 * each child), and the counting invariant holds for every pool. */
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif
#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

/* Internal to the core (src/alloc.c, src/stats.c); reachable since unit tests link the static
 * library. */
void leash__alloc_fail_at(long n);
long leash__alloc_calls(void);
long leash__render(char *buf, size_t cap, leash_format fmt);

static int setup(void **state)
{
    (void)state;
    fake_reset();
    return 0;
}

/* ---- the scenario, run in a child ---- */

static int problems;

__attribute__((format(printf, 1, 2))) static void problem(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "PROBLEM: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    problems++;
}

/* A call failed: its status must be one of the allowed ones (a bit per leash_status). */
static void refused(const char *step, unsigned allowed)
{
    leash_status st = leash_last_status();
    if (st == LEASH_OK || !(allowed & (1u << st)))
        problem("%s refused with %s (%s): not a clean refusal", step, leash_strerror(st),
                leash_last_error());
    else
        fprintf(stderr, "refused: %s: %s\n", step, leash_strerror(st));
}

#define ENOMEM_ONLY (1u << LEASH_ENOMEM)
#define ENOMEM_OR_CONNECT ((1u << LEASH_ENOMEM) | (1u << LEASH_ECONNECT))

static void invariant(leash_pool *p, const char *step)
{
    if (!p)
        return;
    leash_pool_stats s;
    if (leash_pool_stats_get(p, &s) != LEASH_OK) {
        problem("%s: stats of %s: %s", step, leash_pool_name(p), leash_last_error());
        return;
    }
    if (s.acquired != s.released + s.discarded + s.leaks_reclaimed + s.leaks_at_close + s.in_use)
        problem("%s: pool %s: acquired %llu != released %llu + discarded %llu + reclaimed %llu "
                "+ at_close %llu + in_use %u",
                step, s.name, (unsigned long long)s.acquired, (unsigned long long)s.released,
                (unsigned long long)s.discarded, (unsigned long long)s.leaks_reclaimed,
                (unsigned long long)s.leaks_at_close, s.in_use);
    if (s.destroyed != s.destroyed_broken + s.destroyed_dirty + s.destroyed_idle +
                           s.destroyed_lifetime + s.destroyed_evicted + s.destroyed_invalid +
                           s.destroyed_closed)
        problem("%s: pool %s: destroyed %llu is not the sum of its reasons", step, s.name,
                (unsigned long long)s.destroyed);
}

/* Borrows up to n handles of p into v (timeout_ms each); returns how many it got. */
static int borrow(leash_pool *p, leash_handle **v, int n, int timeout_ms, const char *step)
{
    int got = 0;
    for (int i = 0; i < n; i++) {
        leash_handle *h = leash_acquire_for(p, timeout_ms);
        if (h)
            v[got++] = h;
        else
            refused(step, ENOMEM_OR_CONNECT);
    }
    return got;
}

static void give_back(leash_handle **v, int n)
{
    for (int i = 0; i < n; i++)
        leash_release(&v[i]);
}

static _Atomic int hook_calls;

static void hook_acquire(leash_pool *p, leash_handle *h, uint64_t ns, leash_status st, void *a)
{
    (void)p;
    (void)h;
    (void)ns;
    (void)st;
    (void)a;
    hook_calls++;
}

#define GROWN 70 /* past the first segment of 64 slots */

static void scenario(long fail_at)
{
    setenv("LEASH_STATS_SHM", "0", 1); /* no page in /dev/shm left by a child that crashed */
    strcpy(fake_peer, "127.0.0.1:15999");
    leash__alloc_fail_at(fail_at);

    leash_pool_options ao = {.max_size = 4, .acquire_timeout_ms = 2000};
    leash_pool *a = leash_pool_open("alloc-a", &fake_adapter, "fake://a", &ao);
    if (!a)
        refused("open alloc-a", ENOMEM_ONLY);
    leash_pool_options bo = {
        .max_size = 3, .min_idle = 1, .acquire_timeout_ms = 2000, .keepalive_ms = 20};
    void *ctx = malloc(16);
    leash_pool *b = leash_pool_open_with("alloc-b", &fake_adapter_described, ctx,
                                         "fake://b?password=s3cret", &bo);
    if (!b)
        refused("open alloc-b", ENOMEM_ONLY);

    leash_handle *v[GROWN];
    if (a) {
        int n = borrow(a, v, 3, 2000, "acquire from alloc-a (new connections)");
        give_back(v, n);
        invariant(a, "after the first borrows");
        n = borrow(a, v, 3, 2000, "acquire from alloc-a (reused)");
        if (n > 0)
            leash_discard(&v[0]);
        give_back(v + 1, n > 1 ? n - 1 : 0);
        invariant(a, "after the second borrows");
    }
    if (b) {
        for (int i = 0; i < 30; i++) {
            leash_pool_stats s;
            if (leash_pool_stats_get(b, &s) == LEASH_OK && s.idle >= 1)
                break;
            sleep_ms(10);
        }
        int n = borrow(b, v, 2, 2000, "acquire from alloc-b");
        give_back(v, n);
        invariant(b, "after alloc-b's borrows");
        /* Keepalive: the idle connections are checked off the borrowers' path. */
        if (leash_pool_check_peer(b, NULL) < 0)
            problem("leash_pool_check_peer: %s", leash_last_error());
        for (int i = 0; i < 50; i++) {
            leash_pool_stats s;
            if (leash_pool_stats_get(b, &s) == LEASH_OK && s.keepalives >= 1)
                break;
            sleep_ms(10);
        }
        invariant(b, "after the keepalive");
    }

    int devnull = open("/dev/null", O_WRONLY);
    const leash_format fmts[] = {LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON, LEASH_FORMAT_PROMETHEUS};
    static char buf[1 << 20];
    for (int i = 0; i < 3; i++) {
        if (leash_stats_dump(devnull, fmts[i]) != 0)
            problem("leash_stats_dump format %d failed", i);
        if (leash__render(buf, sizeof buf, fmts[i]) < 0)
            problem("leash__render format %d failed", i);
    }
    close(devnull);
    if (strstr(buf, "s3cret"))
        problem("a password in the Prometheus dump");

    if (a) {
        leash_site_stats ss[4];
        if (leash_pool_sites(a, ss, 4) < 0)
            problem("leash_pool_sites: %s", leash_last_error());
        const leash_hooks hk = {.on_acquire = hook_acquire};
        if (leash_pool_set_hooks(a, &hk, NULL) != LEASH_OK)
            refused("leash_pool_set_hooks", ENOMEM_ONLY);
        if (leash_pool_evict(a) < 0)
            problem("leash_pool_evict: %s", leash_last_error());
        if (leash_pool_resize(a, GROWN, -1) != LEASH_OK)
            refused("leash_pool_resize", ENOMEM_ONLY);
        int n = borrow(a, v, GROWN, 2000, "acquire from alloc-a (grown past 64)");
        invariant(a, "while grown");
        give_back(v, n);
        invariant(a, "after the grown borrows");
    }
    if (b) {
        leash_status st = leash_pool_retarget(b, "fake://c?password=0ther");
        if (st != LEASH_OK)
            refused("leash_pool_retarget", ENOMEM_ONLY);
        int n = borrow(b, v, 3, 2000, "acquire from alloc-b after the retarget");
        give_back(v, n);
        invariant(b, "after the retarget");
    }
    if (a) {
        leash_pool_close(a);
        invariant(a, "after close");
    }
    invariant(b, "at the end");
    int out = leash_outstanding();
    if (out != 0)
        problem("%d handles still out before shutdown (lost handles)", out);
    long calls = leash__alloc_calls();
    leash_shutdown();
    if (fake.live != 0)
        problem("%d fake connections still alive after leash_shutdown", (int)fake.live);
    if (fake.ctx_frees != 1)
        problem("alloc-b's context freed %d times (want 1)", (int)fake.ctx_frees);
    fprintf(stderr, "allocations: %ld\n", calls);
#ifdef HAVE_LSAN
    if (__lsan_do_recoverable_leak_check())
        problem("LeakSanitizer found leaks (above)");
#endif
}

struct outcome {
    int status; /* wait status */
    char *err;  /* the child's stderr, malloc'd */
};

/* Runs the scenario in a child with the fail_at-th allocation failing; waits up to 10 s. */
static struct outcome run(long fail_at)
{
    char path[] = "/tmp/leash-test-alloc-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd, 2);
        close(fd);
        problems = 0;
        scenario(fail_at);
        _exit(problems ? 1 : 0);
    }
    struct outcome o;
    o.status = wait_child(pid);
    lseek(fd, 0, SEEK_SET);
    o.err = slurp(fd);
    close(fd);
    return o;
}

/* The scenario as it is (fail_at 0), then with each of its allocations failing in turn. */
static void test_every_allocation_may_fail(void **state)
{
    (void)state;
    struct outcome o = run(0);
    long total = -1;
    const char *at = strstr(o.err, "allocations: ");
    if (at)
        total = strtol(at + 13, NULL, 10);
    if (!WIFEXITED(o.status) || WEXITSTATUS(o.status) != 0 || total <= 0)
        fail_msg("the scenario without failures did not pass (status %d):\n%s", o.status, o.err);
    free(o.err);
    /* Connect jobs and the maintenance thread allocate too, so a run may make a few more; a
     * failure past the end is simply not reached. */
    int bad = 0, refusals = 0;
    for (long n = 1; n <= total + 10; n++) {
        o = run(n);
        int ok = WIFEXITED(o.status) && WEXITSTATUS(o.status) == 0;
        const char *r = strstr(o.err, "refused: ");
        if (r)
            refusals++;
        if (getenv("LEASH_TEST_VERBOSE"))
            print_message("allocation %ld failing: %.*s\n", n, r ? (int)strcspn(r, "\n") : 4,
                          r ? r : "none");
        if (!ok) {
            bad++;
            print_error("allocation %ld of %ld failing: %s %d\n%s\n", n, total,
                        WIFSIGNALED(o.status) ? "killed by signal" : "exit",
                        WIFSIGNALED(o.status) ? WTERMSIG(o.status) : WEXITSTATUS(o.status), o.err);
        }
        free(o.err);
    }
    print_message("%ld allocations; %d runs refused something cleanly\n", total, refusals);
    assert_true(refusals > 0); /* the failures did reach leash */
    if (bad)
        fail_msg("%d of %ld allocation failures were not clean refusals", bad, total + 10);
}

/* ---- targeted cases ---- */

/* An adapter that parses its target into ctx: retarget adopts the new target there. */
struct rec_ctx {
    char target[64];
};

static void *rec_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    (void)ctx;
    (void)target;
    (void)err;
    (void)errlen;
    return malloc(8);
}

static void rec_destroy(void *ctx, void *conn)
{
    (void)ctx;
    free(conn);
}

static int rec_retarget(void *ctx, const char *target, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct rec_ctx *c = ctx;
    snprintf(c->target, sizeof c->target, "%s", target);
    return 0;
}

static void rec_free(void *ctx)
{
    free(ctx);
}

static const leash_adapter rec_adapter = {.kind = "rec",
                                          .connect = rec_connect,
                                          .destroy = rec_destroy,
                                          .ctx_free = rec_free,
                                          .retarget = rec_retarget};

/* A retarget refused for want of memory changes nothing: neither the pool's target nor what
 * the adapter will connect to (its retarget hook adopts the new target when it accepts it). */
static void test_retarget_refused_changes_nothing(void **state)
{
    (void)state;
    struct rec_ctx *c = calloc(1, sizeof *c);
    snprintf(c->target, sizeof c->target, "rec://old");
    leash_pool *p = leash_pool_open_with("rec", &rec_adapter, c, "rec://old", NULL);
    assert_non_null(p);
    leash__alloc_fail_at(1);
    leash_status st = leash_pool_retarget(p, "rec://new");
    leash__alloc_fail_at(0);
    if (st == LEASH_OK)
        fail_msg("the retarget made no allocation: nothing to test");
    assert_int_equal(st, LEASH_ENOMEM);
    assert_string_equal(leash_pool_target(p), "rec://old");
    if (strcmp(c->target, "rec://old") != 0)
        fail_msg("the refused retarget changed the adapter's target to \"%s\": its later "
                 "connects go there while the pool reports rec://old",
                 c->target);
}

/* Bad input: hooks set while memory runs out: LEASH_ENOMEM, and the hooks that were set stay. */
static void test_hooks_refused_keep_the_old_ones(void **state)
{
    (void)state;
    hook_calls = 0;
    leash_pool *p = leash_pool_open("hooks", &fake_adapter, "fake://h", NULL);
    assert_non_null(p);
    const leash_hooks hk = {.on_acquire = hook_acquire};
    assert_int_equal(leash_pool_set_hooks(p, &hk, NULL), LEASH_OK);
    const leash_hooks none = {0};
    leash__alloc_fail_at(1);
    assert_int_equal(leash_pool_set_hooks(p, &none, NULL), LEASH_ENOMEM);
    leash__alloc_fail_at(0);
    assert_int_equal(leash_last_status(), LEASH_ENOMEM);
    leash_handle *h = take(p);
    leash_release(&h);
    assert_int_equal(hook_calls, 1);
}

/* Bad input: the pool's first allocations fail, one at a time: each open is refused with
 * LEASH_ENOMEM, leaves no pool behind (the name is free again) and frees the context once. */
static void test_open_refused_leaves_nothing(void **state)
{
    (void)state;
    for (long n = 1; n <= 8; n++) {
        leash__alloc_fail_at(n);
        void *ctx = malloc(16);
        leash_pool *p =
            leash_pool_open_with("opened", &fake_adapter_described, ctx, "fake://o", NULL);
        long calls = leash__alloc_calls();
        leash__alloc_fail_at(0);
        if (p) {
            assert_true(calls < n); /* the failure was not reached */
            leash_pool_close(p);
            break;
        }
        assert_int_equal(leash_last_status(), LEASH_ENOMEM);
        assert_null(leash_pool_get("opened"));
        assert_int_equal(leash_last_status(), LEASH_ENOTFOUND);
        assert_int_equal(fake.ctx_frees, n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_allocation_may_fail, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_retarget_refused_changes_nothing, setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_hooks_refused_keep_the_old_ones, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_open_refused_leaves_nothing, setup, fake_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

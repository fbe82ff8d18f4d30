/* Unit tests of stats: the text, JSON and Prometheus dumps, the dump on signal while a pool
 * lock is held, leak reports, password redaction and bad arguments. */
#include "core.h"
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROMTOOL "/usr/bin/promtool"

/* Acquires from p and stores the line of the call in l (both expand on the same line). */
#define ACQUIRE_NOTING_LINE(p, l) ((l) = __LINE__, leash_acquire(p))

static int setup(void **state)
{
    (void)state;
    fake_reset();
    return 0;
}

/* Writes s to a new temporary file and returns its path (static buffer). */
static const char *to_temp_file(const char *s)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/leash-test-stats-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(s);
    assert_int_equal(write(fd, s, n), (ssize_t)n);
    close(fd);
    return path;
}

/* Runs a shell command, returns its exit status (-1 if it did not exit) and its output
 * (stdout and stderr, malloc'd) in *out. */
static int run_cmd(const char *cmd, char **out)
{
    char full[2100];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    fflush(NULL);
    FILE *f = popen(full, "r");
    assert_non_null(f);
    *out = slurp(fileno(f));
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* 1 if text has "key value" with value a whole word (followed by a space, comma or newline). */
static int has_kv(const char *text, const char *key, unsigned long long value)
{
    char needle[96];
    int n = snprintf(needle, sizeof needle, "%s %llu", key, value);
    for (const char *at = strstr(text, needle); at; at = strstr(at + 1, needle)) {
        char before = at == text ? ' ' : at[-1];
        char after = at[n];
        if ((before == ' ' || before == '\n') &&
            (after == ' ' || after == '\n' || after == ',' || after == '\0'))
            return 1;
    }
    return 0;
}

/* A duration as the text dump writes it (850ns, 12us, 3.4ms, 1.25s, 3m20s), in ns. */
static uint64_t parse_dur_ns(const char *d)
{
    double v = 0;
    char unit[8] = "";
    if (sscanf(d, "%lf%7[a-z]", &v, unit) != 2)
        return UINT64_MAX;
    if (!strcmp(unit, "ns"))
        return (uint64_t)v;
    if (!strcmp(unit, "us"))
        return (uint64_t)(v * 1e3);
    if (!strcmp(unit, "ms"))
        return (uint64_t)(v * 1e6);
    if (!strcmp(unit, "s"))
        return (uint64_t)(v * 1e9);
    if (!strcmp(unit, "m"))
        return (uint64_t)(v * 60e9); /* good enough: the seconds part is ignored */
    return UINT64_MAX;
}

/* In a text dump, the "held by borrow site" line of this file's line: its count and oldest
 * age. Returns 0 if there is no such line. */
static int held_site(const char *text, int line, unsigned *count, uint64_t *oldest_ns)
{
    char needle[512];
    snprintf(needle, sizeof needle, "%s:%d in ", __FILE__, line);
    const char *at = strstr(text, needle);
    if (!at)
        return 0;
    const char *start = at;
    while (start > text && start[-1] != '\n')
        start--;
    char dur[32];
    if (sscanf(start, " %u %31s", count, dur) != 2)
        return 0;
    *oldest_ns = parse_dur_ns(dur);
    return 1;
}

/* 1 if the first line of text has change (e.g. "acquired +7") as a whole item. */
static int has_change(const char *text, const char *change)
{
    size_t n = strlen(change), end = strcspn(text, "\n");
    for (const char *at = strstr(text, change); at && (size_t)(at - text) < end;
         at = strstr(at + 1, change))
        if ((at[-1] == ' ') && (at[n] == ',' || at[n] == '\n'))
            return 1;
    return 0;
}

/* Counts the occurrences of needle in text. */
static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *at = strstr(text, needle); at; at = strstr(at + 1, needle))
        n++;
    return n;
}

/* ---- text ---- */

static void test_text_dump_content(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 6};
    leash_pool *p = leash_pool_open("dumpy", &fake_adapter, "fake://app:s3cret@db:5/x", &o);
    assert_non_null(p);
    leash_handle *h[4] = {0};
    int site1 = 0, site2 = 0;
    for (int i = 0; i < 3; i++)
        h[i] = ACQUIRE_NOTING_LINE(p, site1);
    sleep_ms(150);
    h[3] = ACQUIRE_NOTING_LINE(p, site2);
    for (int i = 0; i < 4; i++)
        assert_non_null(h[i]);
    leash_handle *extra = leash_acquire(p);
    leash_release(&extra); /* one idle, five connections in all */

    char *t = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(t, "=== leash stats"));
    assert_non_null(strstr(t, "pool \"dumpy\" (fake) fake://app:***@db:5/x\n"));
    assert_null(strstr(t, "s3cret"));
    assert_non_null(strstr(t, "connections 5/6: 4 in use, 1 idle, 0 waiting"));
    assert_true(has_kv(t, "created", 5));
    assert_true(has_kv(t, "acquired", 5));
    assert_true(has_kv(t, "released", 1));
    assert_true(has_kv(t, "destroyed", 0));
    assert_true(has_kv(t, "misuse", 0));
    assert_true(has_kv(t, "leaks_at_close", 0));
    assert_non_null(strstr(t, "held by borrow site"));

    unsigned c1 = 0, c2 = 0;
    uint64_t age1 = 0, age2 = 0;
    assert_true(held_site(t, site1, &c1, &age1));
    assert_true(held_site(t, site2, &c2, &age2));
    assert_int_equal(c1, 3);
    assert_int_equal(c2, 1);
    /* The first site's oldest handle was borrowed 150 ms before the second site's. */
    assert_true(age1 >= 120000000u);
    assert_true(age1 < 60000000000u);
    assert_true(age2 + 100000000u <= age1);
    char fn[64];
    snprintf(fn, sizeof fn, " in %s() thread ", __func__);
    assert_int_equal(count_of(t, fn), 2); /* one line per site, not per handle */
    assert_non_null(strstr(t, "=== end of leash stats ===\n"));
    free(t);

    for (int i = 0; i < 4; i++)
        leash_release(&h[i]);
    t = dump(LEASH_FORMAT_TEXT);
    assert_null(strstr(t, "held by borrow site"));
    assert_non_null(strstr(t, "connections 5/6: 0 in use, 5 idle, 0 waiting"));
    free(t);
    assert_invariant(p);
}

static void test_text_dump_changes_since_last(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("diff", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p); /* warm: the connection exists before the baseline */
    leash_release(&h);

    char *t = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(t, "changes: new since the last dump"));
    free(t);

    enum { N = 7 };
    for (int i = 0; i < N / 2; i++) {
        h = leash_acquire(p);
        leash_release(&h);
    }
    /* JSON and Prometheus dumps in between do not move the baseline. */
    free(dump(LEASH_FORMAT_JSON));
    free(dump(LEASH_FORMAT_PROMETHEUS));
    for (int i = N / 2; i < N; i++) {
        h = leash_acquire(p);
        leash_release(&h);
    }
    free(dump(LEASH_FORMAT_PROMETHEUS));
    free(dump(LEASH_FORMAT_JSON));

    t = dump(LEASH_FORMAT_TEXT);
    const char *ch = strstr(t, "changes since the last dump");
    assert_non_null(ch);
    assert_true(has_change(ch, "acquired +7"));
    assert_true(has_change(ch, "released +7"));
    assert_null(strstr(ch, "created +")); /* nothing new was connected */
    free(t);

    /* A text dump is the new baseline: nothing changed since. */
    t = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(t, "changes since the last dump: none"));
    free(t);

    /* A change the other way: a discard shows destroyed and discarded. */
    h = leash_acquire(p);
    leash_discard(&h);
    t = dump(LEASH_FORMAT_TEXT);
    ch = strstr(t, "changes since the last dump");
    assert_non_null(ch);
    assert_true(has_change(ch, "acquired +1"));
    assert_true(has_change(ch, "discarded +1"));
    assert_true(has_change(ch, "destroyed +1"));
    assert_true(has_change(ch, "size -1"));
    assert_false(has_change(ch, "released +1"));
    free(t);
    assert_invariant(p);
}

/* ---- JSON ---- */

/* Validates the JSON in path with Python and prints, per pool:
 * name|kind|target|acquired|released|in_use|held count|held lines */
static const char json_check_py[] =
    "import json,sys\n"
    "d=json.load(open(sys.argv[1]))\n"
    "assert isinstance(d['pid'],int)\n"
    "for p in d['pools']:\n"
    "  h=p['held']\n"
    "  print('%s|%s|%s|%d|%d|%d|%d|%s'%(p['name'],p['kind'],p['target'],p['acquired'],"
    "p['released'],p['in_use'],sum(x['count'] for x in h),"
    "','.join('%d:%d'%(x['line'],x['count']) for x in h)))\n";

static void test_json_valid_and_values(void **state)
{
    (void)state;
    const char *odd = "we\"ird\\name";
    leash_pool *p = leash_pool_open(odd, &fake_adapter, "fake://u:pw@h/q?x=\"1\"", NULL);
    leash_pool *q = leash_pool_open("plain", &fake_adapter_described, "fake://h", NULL);
    assert_non_null(p);
    assert_non_null(q);
    leash_handle *h[2];
    int line = 0;
    for (int i = 0; i < 2; i++)
        h[i] = ACQUIRE_NOTING_LINE(p, line);
    leash_handle *c = leash_acquire(q);
    leash_release(&c);

    char *j = dump(LEASH_FORMAT_JSON);
    const char *path = to_temp_file(j);
    char cmd[2048], *out = NULL;
    char script[] = "/tmp/leash-test-json-XXXXXX";
    int sfd = mkstemp(script);
    assert_true(sfd >= 0);
    assert_int_equal(write(sfd, json_check_py, sizeof json_check_py - 1),
                     (ssize_t)(sizeof json_check_py - 1));
    close(sfd);
    snprintf(cmd, sizeof cmd, "python3 %s %s", script, path);
    int rc = run_cmd(cmd, &out);
    if (rc != 0)
        print_error("python3 says: %s\nJSON was: %s\n", out, j);
    assert_int_equal(rc, 0);
    char want[256];
    snprintf(want, sizeof want, "%s|fake|fake://u:***@h/q?x=\"1\"|2|0|2|2|%d:2\n", odd, line);
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "plain|fake2|fake:fake://h|1|1|0|0|\n"));
    assert_null(strstr(j, ":pw@"));
    free(out);
    free(j);
    unlink(path);

    /* The bare json module as the brief's one-liner, fed on stdin. */
    j = dump(LEASH_FORMAT_JSON);
    path = to_temp_file(j);
    snprintf(cmd, sizeof cmd, "python3 -c 'import json,sys; json.load(sys.stdin)' < %s", path);
    assert_int_equal(run_cmd(cmd, &out), 0);
    free(out);
    free(j);
    unlink(path);
    unlink(script);

    leash_release(&h[0]);
    leash_release(&h[1]);
    assert_invariant(p);
    assert_invariant(q);
}

/* ---- Prometheus ---- */

static void test_prometheus_promtool_and_content(void **state)
{
    (void)state;
    /* Not a skip: without promtool this test cannot check anything, so it fails. */
    if (access(PROMTOOL, X_OK) != 0)
        fail_msg("%s is missing: install Debian's prometheus package (tests/deps.sh)", PROMTOOL);
    leash_pool *p = leash_pool_open("prom", &fake_adapter, "fake://h", NULL);
    leash_pool *q = leash_pool_open("qu\"o\\te", &fake_adapter, "fake://h", NULL);
    assert_non_null(p);
    assert_non_null(q);
    for (int i = 0; i < 5; i++) {
        leash_handle *h = leash_acquire(p);
        leash_release(&h);
    }
    int line = 0;
    leash_handle *held = ACQUIRE_NOTING_LINE(q, line);
    assert_non_null(held);

    char *m = dump(LEASH_FORMAT_PROMETHEUS);
    const char *path = to_temp_file(m);
    char cmd[512], *out = NULL;
    snprintf(cmd, sizeof cmd, PROMTOOL " check metrics < %s", path);
    int rc = run_cmd(cmd, &out);
    if (rc != 0)
        print_error("promtool says: %s\nmetrics were:\n%s\n", out, m);
    assert_int_equal(rc, 0);
    free(out);
    unlink(path);

    assert_non_null(strstr(m, "# HELP leash_pool_acquired_total "));
    assert_non_null(strstr(m, "# TYPE leash_pool_acquired_total counter\n"));
    assert_non_null(strstr(m, "# TYPE leash_pool_in_use gauge\n"));
    assert_non_null(strstr(m, "\nleash_pool_acquired_total{pool=\"prom\",kind=\"fake\"} 5\n"));
    assert_non_null(strstr(m, "\nleash_pool_released_total{pool=\"prom\",kind=\"fake\"} 5\n"));
    assert_non_null(strstr(m, "\nleash_pool_created_total{pool=\"prom\",kind=\"fake\"} 1\n"));
    assert_non_null(strstr(m, "\nleash_pool_idle{pool=\"prom\",kind=\"fake\"} 1\n"));
    assert_non_null(strstr(m, "\nleash_pool_in_use{pool=\"qu\\\"o\\\\te\",kind=\"fake\"} 1\n"));
    char site[512];
    snprintf(site, sizeof site, "leash_held_handles{pool=\"qu\\\"o\\\\te\",site=\"%s:%d\"",
             __FILE__, line);
    assert_non_null(strstr(m, site));

    /* Every counter's name ends in _total; every sample has a pool label. */
    int counters = 0;
    for (char *ln = strtok(m, "\n"); ln; ln = strtok(NULL, "\n")) {
        if (!strncmp(ln, "# TYPE ", 7)) {
            char name[128], type[32];
            assert_int_equal(sscanf(ln + 7, "%127s %31s", name, type), 2);
            if (!strcmp(type, "counter")) {
                size_t n = strlen(name);
                assert_true(n > 6 && !strcmp(name + n - 6, "_total"));
                counters++;
            }
        } else if (ln[0] != '#') {
            assert_non_null(strstr(ln, "{pool=\""));
        }
    }
    assert_true(counters >= 15);
    free(m);
    leash_release(&held);
    assert_invariant(p);
    assert_invariant(q);
}

/* ---- the dump on signal while a pool lock is held ---- */

struct locker {
    leash_pool *p;
    _Atomic int locked, release;
};

static void *lock_and_block(void *v)
{
    struct locker *l = v;
    pthread_mutex_lock(&((struct leash_pool *)l->p)->lock);
    atomic_store(&l->locked, 1);
    while (!atomic_load(&l->release))
        sleep_ms(2);
    pthread_mutex_unlock(&((struct leash_pool *)l->p)->lock);
    return NULL;
}

static _Atomic int target_stop;

/* The thread the signal is sent to: sleeps (a blocking call, where signals land). */
static void *signal_target(void *v)
{
    (void)v;
    while (!atomic_load(&target_stop))
        sleep_ms(2);
    return NULL;
}

/* Reads fd until needle appears or timeout_ms pass; returns what was read (malloc'd). */
static char *read_until(int fd, const char *needle, int timeout_ms)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = calloc(1, cap);
    for (int waited = 0; waited < timeout_ms && !strstr(buf, needle);) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, 20);
        if (r <= 0) {
            waited += 20;
            continue;
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k <= 0)
            break;
        n += (size_t)k;
        buf[n] = '\0';
    }
    return buf;
}

static void test_signal_dump_while_pool_lock_held(void **state)
{
    (void)state;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(
        leash_init(&(leash_config){.strict = -1, .stats_signal = SIGUSR1, .stats_fd = pfd[1]}),
        LEASH_OK);
    leash_pool *p = leash_pool_open("stuck", &fake_adapter, "fake://h", NULL);
    int line = 0;
    leash_handle *h = ACQUIRE_NOTING_LINE(p, line);
    assert_non_null(h);

    struct locker l = {.p = p};
    pthread_t locker, target;
    atomic_store(&target_stop, 0);
    assert_int_equal(pthread_create(&locker, NULL, lock_and_block, &l), 0);
    while (!atomic_load(&l.locked))
        sleep_ms(1);
    assert_int_equal(pthread_create(&target, NULL, signal_target, NULL), 0);
    assert_int_equal(pthread_kill(target, SIGUSR1), 0);

    /* The dump arrives while the pool's lock is still held. */
    char *t = read_until(pfd[0], "=== end of leash stats ===", 5000);
    int busy = pthread_mutex_trylock(&((struct leash_pool *)p)->lock);
    if (!strstr(t, "=== end of leash stats ===")) {
        /* The handler is blocked on the lock: let it go, so the failure is clean. */
        atomic_store(&l.release, 1);
        atomic_store(&target_stop, 1);
        pthread_join(locker, NULL);
        pthread_join(target, NULL);
        fail_msg("no dump within 5 s while another thread held the pool lock; got: %s", t);
    }
    assert_int_equal(busy, EBUSY);
    assert_non_null(strstr(t, "=== leash stats"));
    assert_non_null(strstr(t, "pool \"stuck\" (fake)"));
    unsigned c = 0;
    uint64_t age = 0;
    assert_true(held_site(t, line, &c, &age));
    assert_int_equal(c, 1);
    free(t);

    /* Also in the thread that is stuck holding the lock itself. A dump that took the lock
     * would deadlock that thread for good: fail at once rather than hang. */
    assert_int_equal(pthread_kill(locker, SIGUSR1), 0);
    t = read_until(pfd[0], "=== end of leash stats ===", 5000);
    if (!strstr(t, "=== end of leash stats ===")) {
        fprintf(stderr,
                "FAIL: the signal dump deadlocked in the thread holding the pool "
                "lock; got: %s\n",
                t);
        _exit(1);
    }
    assert_non_null(strstr(t, "changes since the last dump"));
    free(t);

    atomic_store(&l.release, 1);
    atomic_store(&target_stop, 1);
    pthread_join(locker, NULL);
    pthread_join(target, NULL);
    leash_release(&h);
    assert_invariant(p);
    leash_shutdown(); /* before closing the dump fd it borrows */
    close(pfd[0]);
    close(pfd[1]);
}

/* ---- leak reports ---- */

static void test_check_leaks_and_outstanding(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("leaky", &fake_adapter, "fake://h", NULL);
    leash_pool *q = leash_pool_open("other", &fake_adapter, "fake://h", NULL);
    assert_int_equal(leash_outstanding(), 0);
    int line = 0, qline = 0;
    leash_handle *h[2];
    for (int i = 0; i < 2; i++)
        h[i] = ACQUIRE_NOTING_LINE(p, line);
    leash_handle *g = ACQUIRE_NOTING_LINE(q, qline);
    assert_int_equal(leash_outstanding(), 3);

    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(leash_check_leaks(pfd[1]), 3);
    close(pfd[1]);
    char *r = slurp(pfd[0]);
    close(pfd[0]);
    char site[512];
    snprintf(site, sizeof site, "%s:%d in %s()", __FILE__, line, __func__);
    assert_int_equal(count_of(r, site), 2);
    snprintf(site, sizeof site, "%s:%d in %s()", __FILE__, qline, __func__);
    assert_int_equal(count_of(r, site), 1);
    assert_int_equal(count_of(r, "pool \"leaky\""), 2);
    assert_int_equal(count_of(r, "pool \"other\""), 1);
    assert_int_equal(count_of(r, "still held"), 3);
    free(r);

    leash_release(&h[0]);
    assert_int_equal(leash_outstanding(), 2);
    leash_release(&h[1]);
    leash_release(&g);
    assert_int_equal(leash_outstanding(), 0);
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(leash_check_leaks(pfd[1]), 0);
    close(pfd[1]);
    r = slurp(pfd[0]);
    close(pfd[0]);
    assert_string_equal(r, ""); /* nothing held, nothing written */
    free(r);
    assert_invariant(p);
    assert_invariant(q);
}

/* ---- secrets ---- */

static void assert_no_secret(const char *what, const char *s)
{
    if (strstr(s, "hunter2") || strstr(s, "hunt er2") || strstr(s, "er2'"))
        fail_msg("a password appears in %s: %s", what, s);
}

/* Bad input: targets carrying passwords, in URL userinfo, a password=... pair and a quoted
 * password='...' with a space, with an adapter that has no describe (the core redacts). */
static void test_passwords_never_shown(void **state)
{
    (void)state;
    static const char *const targets[] = {
        "fake://user:hunter2@host/x",
        "host=h password=hunter2 dbname=d",
        "password='hunt er2'",
    };
    static const char *const shown[] = {
        "fake://user:***@host/x",
        "host=h password=*** dbname=d",
        "password=***",
    };
    leash_pool_options o = {.max_size = 1, .acquire_timeout_ms = 20};
    leash_pool *p[3];
    leash_handle *h[3];
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "secret%d", i);
        p[i] = leash_pool_open(name, &fake_adapter, targets[i], &o);
        assert_non_null(p[i]);

        /* A connect failure: the adapter's message quotes the target. */
        fake_fail_connect = 1;
        assert_null(leash_acquire(p[i]));
        assert_int_equal(leash_last_status(), LEASH_ECONNECT);
        assert_no_secret("leash_last_error (connect)", leash_last_error());
        assert_non_null(strstr(leash_last_error(), shown[i]));
        fake_fail_connect = 0;

        /* A timeout: its message repeats the last connect error. */
        h[i] = leash_acquire(p[i]);
        assert_non_null(h[i]);
        assert_null(leash_acquire_for(p[i], 10));
        assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
        assert_non_null(strstr(leash_last_error(), "last connect error"));
        assert_no_secret("leash_last_error (timeout)", leash_last_error());
    }
    for (leash_format f = LEASH_FORMAT_TEXT; f <= LEASH_FORMAT_PROMETHEUS; f++) {
        char *d = dump(f);
        assert_no_secret("a dump", d);
        if (f == LEASH_FORMAT_TEXT)
            for (int i = 0; i < 3; i++)
                assert_non_null(strstr(d, shown[i]));
        free(d);
    }
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(leash_check_leaks(pfd[1]), 3);
    close(pfd[1]);
    char *r = slurp(pfd[0]);
    close(pfd[0]);
    assert_no_secret("leash_check_leaks", r);
    free(r);
    for (int i = 0; i < 3; i++) {
        leash_release(&h[i]);
        assert_invariant(p[i]);
    }
}

/* ---- bad arguments ---- */

/* Bad input: fd -1, a format out of range (99 and -1), and an fd open read-only (write
 * fails) for leash_stats_dump; NULL pool and NULL out for leash_pool_stats_get. */
static void test_bad_arguments(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("bad", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p);

    assert_int_equal(leash_stats_dump(-1, LEASH_FORMAT_TEXT), -1);
    assert_int_equal(leash_stats_dump(-1, LEASH_FORMAT_JSON), -1);
    FILE *f = tmpfile();
    assert_int_equal(leash_stats_dump(fileno(f), (leash_format)99), -1);
    assert_int_equal(leash_stats_dump(fileno(f), (leash_format)-1), -1);
    assert_int_equal(lseek(fileno(f), 0, SEEK_END), 0); /* nothing written */
    fclose(f);
    int ro = open("/dev/null", O_RDONLY);
    assert_true(ro >= 0);
    for (leash_format fmt = LEASH_FORMAT_TEXT; fmt <= LEASH_FORMAT_PROMETHEUS; fmt++)
        assert_int_equal(leash_stats_dump(ro, fmt), -1);
    close(ro);

    leash_pool_stats st;
    memset(&st, 0x5a, sizeof st);
    assert_int_equal(leash_pool_stats_get(NULL, &st), LEASH_EINVAL);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "pool"));
    assert_int_equal(leash_pool_stats_get(p, NULL), LEASH_EINVAL);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "out"));
    assert_int_equal(leash_pool_leaks(NULL), 0);

    /* Still works after all that. */
    assert_int_equal(stats(p).in_use, 1);
    char *t = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(t, "pool \"bad\""));
    free(t);
    leash_release(&h);
    assert_invariant(p);
}

/* ---- counting ---- */

struct churn {
    leash_pool *p;
    int n;
};

static void *churn(void *v)
{
    struct churn *c = v;
    for (int i = 0; i < c->n; i++) {
        leash_handle *h = leash_acquire_for(c->p, 5000);
        if (!h)
            continue;
        if (i % 7 == 0)
            leash_discard(&h);
        else
            leash_release(&h);
    }
    return NULL;
}

static void test_counting_invariant(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 3};
    leash_pool *p = leash_pool_open("count", &fake_adapter, "fake://h", &o);
    pthread_t t[4];
    struct churn c = {p, 300};
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, churn, &c);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    leash_handle *held = leash_acquire(p);
    /* A connect a waiter started may still land after that waiter got a returned handle:
     * quiet means none in flight. */
    uint64_t t0 = now_ms();
    while (stats(p).connecting != 0 && now_ms() - t0 < 5000)
        sleep_ms(1);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.connecting, 0);
    assert_int_equal(st.acquired, 1201);
    assert_int_equal(st.discarded, 4 * 43);
    assert_int_equal(st.released, 1200 - 4 * 43);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(st.created - st.destroyed, st.size);
    assert_invariant(p);
    leash_release(&held);
    leash_pool_close(p);
    st = stats(p);
    assert_int_equal(st.created, st.destroyed);
    assert_int_equal(st.size, 0);
    assert_invariant(p);
}

/* Bad input: a dump fd whose reader is gone (a closed pipe): -1, never SIGPIPE. */
static void test_dump_to_closed_pipe_is_an_error(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("gone-reader", &fake_adapter, "fake://h", NULL);
    assert_non_null(p);
    for (int fmt = LEASH_FORMAT_TEXT; fmt <= LEASH_FORMAT_PROMETHEUS; fmt++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        close(fds[0]);
        assert_int_equal(leash_stats_dump(fds[1], (leash_format)fmt), -1);
        assert_int_equal(leash_check_leaks(fds[1]), 0);
        close(fds[1]);
    }
    sigset_t pending;
    sigpending(&pending);
    assert_false(sigismember(&pending, SIGPIPE)); /* consumed, not left pending */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_dump_content, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_text_dump_changes_since_last, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_json_valid_and_values, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_prometheus_promtool_and_content, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_signal_dump_while_pool_lock_held, setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_check_leaks_and_outstanding, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_passwords_never_shown, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_counting_invariant, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_dump_to_closed_pipe_is_an_error, setup, fake_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

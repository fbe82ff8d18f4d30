/* Unit tests of the stats page and the metrics file (src/shm.c) and of leash-stat on them:
 * no torn copy while the page is rewritten, the counting invariant in every quiet snapshot
 * while 8 threads hammer a pool, 10 pools with 1,000 held handles, leash-stat on a stopped,
 * a dead and a forked process, corrupt and truncated pages, LEASH_STATS_SHM=0, the metrics
 * file read while rewritten, and the page going away at shutdown and at exit. */
#include "core.h"
#include "fake.h"
#include "shm.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The reader leash-stat uses, compiled in: the unit suites link no tool code otherwise. */
#include "../../tools/leash-stat/page.c"

static int setup(void **state)
{
    (void)state;
    fake_reset();
    unsetenv("LEASH_STATS_SHM");
    unsetenv("LEASH_METRICS_FILE");
    unsetenv("LEASH_METRICS_INTERVAL_MS");
    return 0;
}

static const char *page_of(pid_t pid)
{
    static char p[64];
    snprintf(p, sizeof p, "/dev/shm/leash.%d", (int)pid);
    return p;
}

/* Waits up to 3 s for pid's page to exist (it comes 0.5 s after the first pool). */
static int wait_page(pid_t pid)
{
    for (int i = 0; i < 300; i++) {
        if (access(page_of(pid), F_OK) == 0)
            return 1;
        sleep_ms(10);
    }
    return 0;
}

/* Reads this process's page; fails the test unless it is OK. *copy must be freed. */
static struct leash_page read_own(void **copy)
{
    struct leash_page pg;
    char why[512];
    int rc = leash_page_read(page_of(getpid()), copy, &pg, why, sizeof why);
    if (rc != LEASH_PAGE_OK)
        fail_msg("reading the page: %d %s", rc, why);
    return pg;
}

/* A section as a malloc'd NUL-terminated string. */
static char *section(const struct leash_page *pg, int i)
{
    char *s = malloc(pg->len[i] + 1);
    assert_non_null(s);
    memcpy(s, pg->sec[i], pg->len[i]);
    s[pg->len[i]] = '\0';
    return s;
}

/* ---- leash-stat ---- */

/* The leash-stat next to this test in the build tree (or $LEASH_STAT). */
static const char *leash_stat_path(void)
{
    static char path[PATH_MAX + 64];
    if (getenv("LEASH_STAT"))
        return getenv("LEASH_STAT");
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    *strrchr(self, '/') = '\0'; /* build/tests/unit */
    snprintf(path, sizeof path, "%s/../../tools/leash-stat/leash-stat", self);
    assert_int_equal(access(path, X_OK), 0);
    return path;
}

/* Runs leash-stat with a1.. (NULL-terminated, up to 6), stdout and stderr apart. */
static struct kit_run stat_run(const char *a1, ...)
{
    const char *args[8] = {"leash-stat"};
    int n = 1;
    va_list ap;
    va_start(ap, a1);
    for (const char *a = a1; a && n < 7; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    return run_program(leash_stat_path(), args, 0);
}

/* ---- a child process using leash ---- */

struct child {
    pid_t pid;
    int ctl; /* write end: closing it (or a byte) ends the child */
};

/* A forked child that opens a pool, holds `held` handles, says "ready" once its page
 * exists, then waits for a byte on its control pipe: 'x' exit(0), 'k' _exit(0). */
static struct child child_start(int held)
{
    int ready[2], ctl[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(ctl), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(ctl[1]);
        leash_pool_options o = {.max_size = 8};
        leash_pool *p = leash_pool_open("child", &fake_adapter, "fake://child", &o);
        leash_handle *h[8] = {0};
        for (int i = 0; p && i < held && i < 8; i++)
            h[i] = leash_acquire(p);
        char ok = wait_page(getpid()) ? 'r' : 'n';
        if (write(ready[1], &ok, 1) != 1)
            _exit(3);
        char c = 'x';
        if (read(ctl[0], &c, 1) != 1)
            c = 'x';
        if (c == 'k')
            _exit(0);
        for (int i = 0; i < 8; i++)
            leash_release(&h[i]);
        exit(0);
    }
    close(ready[1]);
    close(ctl[0]);
    char ok = 0;
    assert_int_equal(read(ready[0], &ok, 1), 1);
    close(ready[0]);
    assert_int_equal(ok, 'r');
    return (struct child){pid, ctl[1]};
}

static int child_end(struct child *c, char how)
{
    if (write(c->ctl, &how, 1) != 1)
        fail_msg("the child is not listening");
    close(c->ctl);
    return wait_child(c->pid);
}

/* ---- the sequence lock ---- */

/* The length of synthetic section i in a refresh of byte 'a' + k. */
static size_t synthetic_len(unsigned k, int i)
{
    return 1000 + (k * 7919 + (unsigned)i * 104729) % 60000;
}

struct writer_arg {
    _Atomic int stop;
    _Atomic uint64_t published;
};

/* Publishes pages whose three sections are one byte repeated, a different byte and a
 * different length each time: a copy that mixes two refreshes cannot look uniform. Between
 * two publishes it pauses 0 to 0.2 ms (a writer that never pauses would keep a reader
 * retrying: the real one writes every half second). */
static void *publisher(void *arg)
{
    struct writer_arg *w = arg;
    static char buf[3][70000];
    for (unsigned k = 0; !atomic_load(&w->stop); k++) {
        char c = (char)('a' + k % 26);
        size_t len[3];
        const char *text[3];
        for (int i = 0; i < 3; i++) {
            len[i] = synthetic_len(k % 26, i);
            memset(buf[i], c, len[i]);
            text[i] = buf[i];
        }
        if (leash__shm_publish(text, len))
            atomic_fetch_add(&w->published, 1);
        struct timespec ts = {0, (long)(k % 5) * 50000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* A reader copying the page while it is rewritten as fast as one thread can never gets a
 * copy that mixes two refreshes. Bad input: copies taken in the middle of writes. */
static void test_no_torn_copy(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("seq", &fake_adapter, "fake://seq", NULL);
    assert_non_null(p);
    assert_true(leash__shm_refresh_now() > 0);
    struct writer_arg w = {0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, publisher, &w), 0);
    int copies = 0, changed = 0;
    uint64_t last = 0;
    double until = now_s() + 1.5;
    while (now_s() < until || copies < 200) {
        void *copy;
        struct leash_page pg = read_own(&copy);
        assert_int_equal((pg.h.seq & 1), 0);
        if (pg.len[0] > 15 && !memcmp(pg.sec[0], "=== leash stats", 15)) {
            /* the maintenance thread's own refresh: a whole real dump */
            char *text = section(&pg, LEASH_SHM_TEXT);
            assert_non_null(strstr(text, "=== end of leash stats ===\n"));
            free(text);
            free(copy);
            continue;
        }
        char c = pg.sec[0][0];
        assert_true(c >= 'a' && c <= 'z');
        for (int i = 0; i < 3; i++) {
            if (pg.len[i] != synthetic_len((unsigned)(c - 'a'), i))
                fail_msg("torn copy: section %d has %zu bytes, a refresh of '%c' writes %zu", i,
                         pg.len[i], c, synthetic_len((unsigned)(c - 'a'), i));
            for (size_t j = 0; j < pg.len[i]; j++)
                if (pg.sec[i][j] != c)
                    fail_msg("torn copy: section %d byte %zu is '%c', byte 0 of text '%c'", i, j,
                             pg.sec[i][j], c);
        }
        changed += pg.h.refreshes != last;
        last = pg.h.refreshes;
        free(copy);
        copies++;
    }
    atomic_store(&w.stop, 1);
    pthread_join(t, NULL);
    assert_true(atomic_load(&w.published) > 100);
    assert_true(changed > 50); /* the copies did overlap rewrites */
    leash_pool_close(p);
}

/* ---- 8 threads hammering a pool ---- */

#define HAMMER_THREADS 8
#define HAMMER_ROUNDS 60
#define HAMMER_CYCLES 300

struct hammer {
    leash_pool *pool;
    pthread_barrier_t go, parked;
    _Atomic int done;
};

static void *hammer_main(void *arg)
{
    struct hammer *hm = arg;
    for (int r = 0; r < HAMMER_ROUNDS; r++) {
        pthread_barrier_wait(&hm->go);
        for (int i = 0; i < HAMMER_CYCLES; i++) {
            leash_handle *h = leash_acquire_for(hm->pool, 5000);
            assert_non_null(h);
            for (volatile int spin = 0; spin < 200; spin++)
                ;
            leash_release(&h);
        }
        pthread_barrier_wait(&hm->parked);
    }
    return NULL;
}

/* The value after "key": at or after from (JSON), or after "key " (text); ULLONG_MAX if
 * absent. */
static unsigned long long field(const char *from, const char *key, int json)
{
    char k[64];
    snprintf(k, sizeof k, json ? "\"%s\":" : " %s ", key);
    const char *at = strstr(from, k);
    return at ? strtoull(at + strlen(k), NULL, 10) : ULLONG_MAX;
}

/* The counting invariant of DESIGN.md for pool "hammer" in a JSON and a text section. */
static void invariant_of(const char *json, const char *text, unsigned long long *lhs,
                         unsigned long long *rhs, unsigned long long *tl, unsigned long long *tr)
{
    const char *pj = strstr(json, "\"name\":\"hammer\"");
    assert_non_null(pj);
    *lhs = field(pj, "acquired", 1);
    *rhs = field(pj, "released", 1) + field(pj, "discarded", 1) + field(pj, "leaks_reclaimed", 1) +
           field(pj, "leaks_at_close", 1) + field(pj, "in_use", 1);
    const char *pt = strstr(text, "pool \"hammer\"");
    assert_non_null(pt);
    const char *inuse = strstr(pt, " in use,");
    assert_non_null(inuse);
    const char *num = inuse;
    while (num > pt && num[-1] >= '0' && num[-1] <= '9')
        num--;
    *tl = field(pt, "acquired", 0);
    *tr = field(pt, "released", 0) + field(pt, "discarded", 0) + field(pt, "leaks_reclaimed", 0) +
          field(pt, "leaks_at_close", 0) + strtoull(num, NULL, 10);
}

struct snap {
    uint64_t refreshes;
    unsigned long long lhs, rhs, tl, tr;
};

struct reader {
    _Atomic int stop;
    _Atomic int n;
    int busy; /* copies refused as being written: must stay 0 (the reader retries) */
    struct snap snaps[4000];
};

/* Copies the page until told to stop; checks each copy is whole and keeps its counters. */
static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    while (!atomic_load(&rd->stop) &&
           atomic_load(&rd->n) < (int)(sizeof rd->snaps / sizeof rd->snaps[0])) {
        void *copy;
        struct leash_page pg;
        char why[512];
        int rc = leash_page_read(page_of(getpid()), &copy, &pg, why, sizeof why);
        if (rc != LEASH_PAGE_OK) {
            rd->busy++;
            continue;
        }
        char *text = section(&pg, LEASH_SHM_TEXT), *json = section(&pg, LEASH_SHM_JSON),
             *prom = section(&pg, LEASH_SHM_PROMETHEUS);
        char head[64];
        snprintf(head, sizeof head, "=== leash stats: pid %d, ", (int)getpid());
        assert_true(!strncmp(text, head, strlen(head)));
        size_t tl = strlen(text);
        const char *end = "=== end of leash stats ===\n";
        assert_true(tl > strlen(end) && !strcmp(text + tl - strlen(end), end));
        size_t jl = strlen(json);
        assert_true(jl > 2 && json[0] == '{' && !strcmp(json + jl - 3, "]}\n"));
        assert_non_null(strstr(prom, "leash_pool_acquired_total{pool=\"hammer\",kind=\"fake\"}"));
        assert_int_equal(prom[strlen(prom) - 1], '\n');
        struct snap *sn = &rd->snaps[atomic_load(&rd->n)];
        sn->refreshes = pg.h.refreshes;
        invariant_of(json, text, &sn->lhs, &sn->rhs, &sn->tl, &sn->tr);
        atomic_fetch_add(&rd->n, 1);
        free(text);
        free(json);
        free(prom);
        free(copy);
    }
    return NULL;
}

/* The page read while 8 threads hammer a pool of 4: every copy is whole (the text from its
 * first line to its last, JSON and Prometheus complete), acquired never goes back from one
 * refresh to the next, and DESIGN.md's counting invariant, acquired == released + discarded
 * + leaks_reclaimed + leaks_at_close + in_use, holds in the JSON and in the text of every
 * copy: those refreshed while the threads run (mid-round) and those refreshed while they
 * are parked between rounds (a quiet pool). A copy mixing two refreshes, rounds apart,
 * would break it. Bad input: copies racing the writer. */
static void test_page_while_threads_hammer(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 4};
    static struct hammer hm;
    hm.pool = leash_pool_open("hammer", &fake_adapter, "fake://h", &o);
    assert_non_null(hm.pool);
    pthread_barrier_init(&hm.go, NULL, HAMMER_THREADS + 1);
    pthread_barrier_init(&hm.parked, NULL, HAMMER_THREADS + 1);
    pthread_t t[HAMMER_THREADS];
    for (int i = 0; i < HAMMER_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer_main, &hm), 0);
    assert_true(leash__shm_refresh_now() > 0);
    static struct reader rd;
    memset(&rd, 0, sizeof rd);
    pthread_t rt;
    assert_int_equal(pthread_create(&rt, NULL, reader_main, &rd), 0);

    uint64_t quiet[HAMMER_ROUNDS * 3];
    int nquiet = 0;
    for (int r = 0; r < HAMMER_ROUNDS; r++) {
        pthread_barrier_wait(&hm.go);
        /* mid-round refreshes: a busy pool */
        leash__shm_refresh_now();
        pthread_barrier_wait(&hm.parked);
        for (int k = 0; k < 3; k++) {
            quiet[nquiet++] = leash__shm_refresh_now();
            sleep_ms(1);
        }
    }
    for (int i = 0; i < HAMMER_THREADS; i++)
        pthread_join(t[i], NULL);
    sleep_ms(20);
    atomic_store(&rd.stop, 1);
    pthread_join(rt, NULL);
    pthread_barrier_destroy(&hm.go);
    pthread_barrier_destroy(&hm.parked);

    int n = atomic_load(&rd.n), quiet_seen = 0, busy_seen = 0;
    assert_int_equal(rd.busy, 0);
    unsigned long long last_acquired = 0;
    uint64_t last_refresh = 0;
    for (int i = 0; i < n; i++) {
        struct snap *sn = &rd.snaps[i];
        if (sn->refreshes > last_refresh) {
            assert_true(sn->lhs >= last_acquired);
            last_acquired = sn->lhs;
            last_refresh = sn->refreshes;
        }
        int is_quiet = 0;
        for (int q = 0; q < nquiet && !is_quiet; q++)
            is_quiet = quiet[q] == sn->refreshes;
        quiet_seen += is_quiet;
        busy_seen += !is_quiet;
        if (sn->lhs != sn->rhs || sn->tl != sn->tr)
            fail_msg("refresh %llu (%s): JSON acquired %llu vs %llu, text %llu vs %llu",
                     (unsigned long long)sn->refreshes, is_quiet ? "quiet" : "busy", sn->lhs,
                     sn->rhs, sn->tl, sn->tr);
    }
    if (quiet_seen < 50 || busy_seen < 10)
        fail_msg("%d copies: %d of quiet refreshes, %d of busy ones (too few to tell)", n,
                 quiet_seen, busy_seen);
    print_message("      %d copies (%d of refreshes taken mid-round), the invariant in each\n", n,
                  busy_seen);
    /* and the last refresh has every borrow */
    assert_true(leash__shm_refresh_now() > 0);
    void *copy;
    struct leash_page pg = read_own(&copy);
    char *json = section(&pg, LEASH_SHM_JSON), *text = section(&pg, LEASH_SHM_TEXT);
    struct snap fin;
    invariant_of(json, text, &fin.lhs, &fin.rhs, &fin.tl, &fin.tr);
    assert_int_equal(fin.lhs, HAMMER_THREADS * HAMMER_ROUNDS * HAMMER_CYCLES);
    assert_int_equal(fin.rhs, fin.lhs);
    assert_int_equal(fin.tl, fin.lhs);
    assert_int_equal(fin.tr, fin.lhs);
    free(json);
    free(text);
    free(copy);
    assert_balanced(hm.pool);
    leash_pool_close(hm.pool);
}

/* ---- size ---- */

/* 10 pools with 100 handles held each (1,000) fit the page whole; the header counts them
 * and has the longest hold;
 * a section far larger than the page grows it, and a reader gets it back byte for byte.
 * Bad input: more than the page holds. */
static void test_large_page(void **state)
{
    (void)state;
    leash_pool *p[10];
    static leash_handle *h[10][100];
    leash_pool_options o = {.max_size = 100};
    for (int i = 0; i < 10; i++) {
        char name[16];
        snprintf(name, sizeof name, "big%d", i);
        p[i] = leash_pool_open(name, &fake_adapter, "fake://big", &o);
        assert_non_null(p[i]);
        for (int j = 0; j < 100; j++)
            h[i][j] = take(p[i]);
    }
    sleep_ms(30);
    assert_true(leash__shm_refresh_now() > 0);
    void *copy;
    struct leash_page pg = read_own(&copy);
    assert_int_equal(pg.h.pools, 10);
    assert_int_equal(pg.h.held, 1000);
    /* the oldest was taken before the 30 ms pause, on the exact clock (under valgrind,
     * taking the 1,000 handles may take many seconds: only a sane upper bound) */
    assert_true(pg.h.oldest_hold_ns >= 30000000ull && pg.h.oldest_hold_ns < 600000000000ull);
    assert_int_equal(pg.h.flags, 0);
    char *text = section(&pg, LEASH_SHM_TEXT);
    assert_non_null(strstr(text, "pool \"big9\""));
    assert_non_null(strstr(text, "=== end of leash stats ===\n"));
    print_message("      10 pools, 1000 held: text %zu, JSON %zu, Prometheus %zu bytes\n",
                  pg.len[0], pg.len[1], pg.len[2]);
    free(text);
    free(copy);

    /* 5 MB in one section */
    size_t big = 5u << 20;
    char *s = malloc(big);
    assert_non_null(s);
    for (size_t i = 0; i < big; i++)
        s[i] = (char)('A' + i % 23);
    const char *texts[3] = {s, "json", "prom"};
    size_t lens[3] = {big, 4, 4};
    assert_true(leash__shm_publish(texts, lens) > 0);
    pg = read_own(&copy);
    assert_int_equal(pg.len[0], big);
    assert_memory_equal(pg.sec[0], s, big);
    assert_int_equal(pg.h.flags, 0);
    struct stat st;
    assert_int_equal(stat(page_of(getpid()), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true((size_t)st.st_size >= big);
    free(copy);
    free(s);
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 100; j++)
            leash_release(&h[i][j]);
}

/* ---- leash-stat against real processes ---- */

/* A stopped process (SIGSTOP) is shown, and said to be stopped; once killed it is "gone"
 * (exit 1, nothing on stdout), --last shows its last page, --clean removes it. Bad input: a
 * page left behind by a killed process. */
static void test_stat_stopped_then_dead(void **state)
{
    (void)state;
    struct child c = child_start(3);
    char arg[16];
    snprintf(arg, sizeof arg, "%d", (int)c.pid);
    assert_int_equal(kill(c.pid, SIGSTOP), 0);
    int st = 0; /* until it is stopped: the signal is delivered when the child next runs */
    assert_int_equal(waitpid(c.pid, &st, WUNTRACED), c.pid);
    assert_true(WIFSTOPPED(st));
    struct kit_run r = stat_run(arg, NULL);
    assert_int_equal(r.code, 0);
    char head[80];
    snprintf(head, sizeof head, "=== leash stats: pid %d, 1 pool, 3 handles held", (int)c.pid);
    assert_true(!strncmp(r.out, head, strlen(head)));
    assert_non_null(strstr(r.err, "is stopped"));
    kit_run_free(&r);
    struct kit_run j = stat_run("--json", arg, NULL);
    assert_int_equal(j.code, 0);
    assert_non_null(strstr(j.out, "\"name\":\"child\""));
    kit_run_free(&j);

    kill(c.pid, SIGKILL);
    close(c.ctl);
    wait_child(c.pid);
    assert_int_equal(access(page_of(c.pid), F_OK), 0); /* no exit handler ran */
    struct kit_run g = stat_run(arg, NULL);
    assert_int_equal(g.code, 1);
    assert_non_null(strstr(g.err, "gone"));
    assert_string_equal(g.out, "");
    kit_run_free(&g);
    struct kit_run l = stat_run("--last", arg, NULL);
    assert_int_equal(l.code, 1);
    assert_true(!strncmp(l.out, head, strlen(head)));
    kit_run_free(&l);
    struct kit_run cl = stat_run("--clean", arg, NULL);
    assert_int_equal(cl.code, 0);
    assert_int_equal(access(page_of(c.pid), F_OK), -1);
    kit_run_free(&cl);
}

/* A forked child publishes its own page under its own pid; its exit removes its page and
 * never the parent's, and _exit leaves it behind (gone). */
static void test_fork_child_has_its_own_page(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("parent", &fake_adapter, "fake://parent", NULL);
    assert_non_null(p);
    assert_true(leash__shm_refresh_now() > 0);
    struct child c = child_start(1);
    assert_int_equal(access(page_of(c.pid), F_OK), 0);
    void *copy;
    struct leash_page pg;
    char why[256];
    assert_int_equal(leash_page_read(page_of(c.pid), &copy, &pg, why, sizeof why), LEASH_PAGE_OK);
    assert_int_equal(pg.h.pid, c.pid);
    char *text = section(&pg, LEASH_SHM_TEXT);
    assert_non_null(strstr(text, "pool \"child\""));
    free(text);
    free(copy);
    int st = child_end(&c, 'x');
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(access(page_of(c.pid), F_OK), -1);
    assert_int_equal(access(page_of(getpid()), F_OK), 0); /* the parent's page stays */
    pg = read_own(&copy);
    assert_int_equal(pg.h.pid, getpid());
    free(copy);

    struct child k = child_start(0);
    child_end(&k, 'k');
    assert_int_equal(access(page_of(k.pid), F_OK), 0);
    char arg[16];
    snprintf(arg, sizeof arg, "%d", (int)k.pid);
    struct kit_run g = stat_run(arg, NULL);
    assert_int_equal(g.code, 1);
    assert_non_null(strstr(g.err, "gone"));
    kit_run_free(&g);
    struct kit_run cl = stat_run("--clean", NULL);
    assert_int_equal(cl.code, 0);
    assert_int_equal(access(page_of(k.pid), F_OK), -1);
    assert_int_equal(access(page_of(getpid()), F_OK), 0); /* a live one is never cleaned */
    kit_run_free(&cl);
    leash_pool_close(p);
}

/* ---- corrupt pages ---- */

/* Writes n bytes as pid's page (mode 0600). */
static void put_page(pid_t pid, const void *b, size_t n)
{
    unlink(page_of(pid));
    int fd = open(page_of(pid), O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, n), (ssize_t)n);
    close(fd);
}

/* A well-formed page for pid with the given text. */
static size_t make_page(unsigned char *b, size_t cap, pid_t pid, const char *text)
{
    memset(b, 0, cap);
    struct leash_shm_header *h = (void *)b; /* b is aligned for it */
    memcpy(h->magic, LEASH_SHM_MAGIC, LEASH_SHM_MAGIC_LEN);
    h->version = LEASH_SHM_VERSION;
    h->header_size = sizeof *h;
    h->pid = pid;
    h->seq = 2;
    h->interval_ms = 500;
    size_t off = 256, n = strlen(text);
    for (int i = 0; i < 3; i++) {
        h->section[i].off = off;
        h->section[i].len = n;
        memcpy(b + off, text, n);
        off += n;
    }
    h->total_size = off;
    return off;
}

/* Every way a page can be wrong, as pid's page: leash-stat refuses it with exit 2 and a
 * reason, never crashes, and the list shows it as untrusted. Bad input: garbage, an empty
 * file, wrong magic, another version, a header size out of range, a total size beyond the
 * file (truncated), a section outside the page, a section with an offset that wraps, a
 * NUL byte in a section, another pid inside, a sequence odd forever, a symbolic link. */
static void test_stat_refuses_corrupt_pages(void **state)
{
    (void)state;
    /* a live process without leash to own the pages (so nothing is "gone") */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pause();
        _exit(0);
    }
    char arg[16];
    snprintf(arg, sizeof arg, "%d", (int)pid);
    static _Alignas(8) unsigned char b[8192];
    const char *text = "=== leash stats: pid 1, 0 pools, 0 handles held ===\n";
    struct leash_shm_header *h = (void *)b; /* b is aligned for it */
    struct {
        const char *name, *why;
    } cases[] = {
        {"garbage", "wrong magic"},   {"empty", "truncated"},    {"magic", "wrong magic"},
        {"version", "version 99"},    {"header", "header size"}, {"truncated", "truncated"},
        {"section", "lies outside"},  {"wrap", "lies outside"},  {"nul", "NUL byte"},
        {"pid", "names process"},     {"odd", "being written"},  {"huge", "total size"},
        {"symlink", "symbolic link"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *name = cases[c].name;
        size_t n = make_page(b, sizeof b, pid, text);
        if (!strcmp(name, "garbage")) {
            for (size_t i = 0; i < sizeof b; i++)
                b[i] = (unsigned char)(i * 131 + 7);
            n = sizeof b;
        } else if (!strcmp(name, "empty")) {
            n = 0;
        } else if (!strcmp(name, "magic")) {
            h->magic[0] = 'X';
        } else if (!strcmp(name, "version")) {
            h->version = 99;
        } else if (!strcmp(name, "header")) {
            h->header_size = 1u << 30;
        } else if (!strcmp(name, "truncated")) {
            n = n / 2; /* total_size says more */
        } else if (!strcmp(name, "section")) {
            h->section[1].off = h->total_size + 10;
        } else if (!strcmp(name, "wrap")) {
            h->section[2].off = 300;
            h->section[2].len = UINT64_MAX - 100;
        } else if (!strcmp(name, "nul")) {
            b[300] = '\0';
        } else if (!strcmp(name, "pid")) {
            h->pid = pid + 1;
        } else if (!strcmp(name, "odd")) {
            h->seq = 3;
        } else if (!strcmp(name, "huge")) {
            h->total_size = 1ull << 40;
        }
        if (!strcmp(name, "symlink")) {
            unlink(page_of(pid));
            assert_int_equal(symlink("/etc/hostname", page_of(pid)), 0);
        } else {
            put_page(pid, b, n);
        }
        struct kit_run r = stat_run(arg, NULL);
        if (r.code != 2 || !strstr(r.err, cases[c].why))
            fail_msg("%s page: exit %d, stderr \"%s\" (want exit 2 and \"%s\")", name, r.code,
                     r.err, cases[c].why);
        assert_string_equal(r.out, "");
        kit_run_free(&r);
        struct kit_run l = stat_run(NULL);
        assert_int_equal(l.code, 0);
        char row[32];
        snprintf(row, sizeof row, "%7d  ?", (int)pid);
        const char *at = strstr(l.out, row);
        if (!at || !strstr(at, "untrusted page"))
            fail_msg("%s page: the list shows\n%s", name, l.out);
        kit_run_free(&l);
    }
    /* --clean leaves a live process's page alone, corrupt or not */
    struct kit_run cl = stat_run("--clean", arg, NULL);
    assert_int_equal(cl.code, 0);
    struct stat st;
    assert_int_equal(lstat(page_of(pid), &st), 0);
    kit_run_free(&cl);
    kill(pid, SIGKILL);
    wait_child(pid);
    unlink(page_of(pid));
}

/* The reader's checks, straight: every prefix of a good page is refused as truncated or
 * parsed whole, and every single-byte change of its header is either refused or read with
 * sections inside the buffer. Bad input: all of those. */
static void test_parse_every_prefix_and_byte(void **state)
{
    (void)state;
    static _Alignas(8) unsigned char b[1024], m[1024];
    size_t n = make_page(b, sizeof b, 4242, "pool \"x\"\n");
    struct leash_page pg;
    char why[256];
    assert_int_equal(leash_page_parse(b, n, &pg, why, sizeof why), LEASH_PAGE_OK);
    for (size_t k = 0; k < n; k++)
        assert_int_not_equal(leash_page_parse(b, k, &pg, why, sizeof why), LEASH_PAGE_OK);
    assert_int_not_equal(leash_page_parse(NULL, 0, &pg, why, sizeof why), LEASH_PAGE_OK);
    for (size_t i = 0; i < sizeof(struct leash_shm_header); i++) {
        for (int v = 0; v < 256; v += 17) {
            memcpy(m, b, n);
            m[i] = (unsigned char)v;
            if (leash_page_parse(m, n, &pg, why, sizeof why) != LEASH_PAGE_OK)
                continue;
            for (int s = 0; s < 3; s++)
                assert_true(pg.sec[s] >= (const char *)m &&
                            pg.sec[s] + pg.len[s] <= (const char *)m + n);
        }
    }
}

/* ---- LEASH_STATS_SHM=0 ---- */

/* With LEASH_STATS_SHM=0 no page is made; leash-stat says the process publishes none (exit
 * 1). Bad input: LEASH_STATS_SHM=maybe is warned about and leaves the page on. */
static void test_shm_off(void **state)
{
    (void)state;
    setenv("LEASH_STATS_SHM", "0", 1);
    leash_pool *p = leash_pool_open("off", &fake_adapter, "fake://off", NULL);
    assert_non_null(p);
    leash_handle *h = take(p);
    assert_int_equal(leash__shm_refresh_now(), 0);
    sleep_ms(1200);
    assert_int_equal(access(page_of(getpid()), F_OK), -1);
    char arg[16];
    snprintf(arg, sizeof arg, "%d", (int)getpid());
    struct kit_run r = stat_run(arg, NULL);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "publishes no leash stats"));
    kit_run_free(&r);
    leash_release(&h);
    leash_shutdown();

    setenv("LEASH_STATS_SHM", "maybe", 1);
    capture_start();
    p = leash_pool_open("on", &fake_adapter, "fake://on", NULL);
    assert_non_null(p);
    assert_non_null(strstr(log_text, "LEASH_STATS_SHM=\"maybe\""));
    assert_true(leash__shm_refresh_now() > 0);
    unsetenv("LEASH_STATS_SHM");
}

/* ---- the page goes away ---- */

/* leash_shutdown removes the page at once; the next use of leash makes it again. */
static void test_shutdown_removes_the_page(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("gone", &fake_adapter, "fake://g", NULL);
    assert_non_null(p);
    assert_true(wait_page(getpid())); /* the maintenance thread's own first refresh */
    leash_shutdown();
    assert_int_equal(access(page_of(getpid()), F_OK), -1);
    assert_int_equal(leash__shm_refresh_now(), 0);
    p = leash_pool_open("again", &fake_adapter, "fake://g", NULL);
    assert_non_null(p);
    assert_true(wait_page(getpid()));
}

/* A child that exits (exit, no leash_shutdown) while refreshes run back to back in
 * another thread, the first of them making the page: afterwards neither the page nor a
 * half-made one is there, never made again by a refresh racing the exit. 20 times, the
 * exit 0 to 4 ms after the first refresh starts. */
static void *refresh_forever(void *arg)
{
    (void)arg;
    for (;;)
        leash__shm_refresh_now();
    return NULL;
}

static void exit_while_refreshing(void *arg)
{
    int ms = *(int *)arg;
    leash_pool *p = leash_pool_open("racer", &fake_adapter, "fake://r", NULL);
    if (!p)
        _exit(3);
    fprintf(stderr, "pid %d\n", (int)getpid());
    pthread_t t; /* it makes the page, racing the exit below */
    pthread_create(&t, NULL, refresh_forever, NULL);
    sleep_ms(ms);
    exit(0);
}

static void test_exit_removes_the_page(void **state)
{
    (void)state;
    for (int i = 0; i < 20; i++) {
        int ms = i % 5;
        char *err = NULL;
        int st = run_child(exit_while_refreshing, &ms, &err);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        int pid = 0;
        assert_int_equal(sscanf(err, "pid %d", &pid), 1);
        free(err);
        sleep_ms(5);
        if (access(page_of(pid), F_OK) == 0)
            fail_msg("round %d: the page of %d is still there after its exit", i, pid);
        char tmp_prefix[48];
        snprintf(tmp_prefix, sizeof tmp_prefix, ".leash.%d.", pid);
        DIR *d = opendir("/dev/shm");
        assert_non_null(d);
        struct dirent *e;
        while ((e = readdir(d)))
            if (!strncmp(e->d_name, tmp_prefix, strlen(tmp_prefix)))
                fail_msg("round %d: a half-made page %s is left", i, e->d_name);
        closedir(d);
    }
}

/* leash__shm_forget (for the strict-mode abort, which runs no exit handler) removes the
 * page at once, and no refresh makes it again before the abort. */
static void forget_then_abort(void *arg)
{
    (void)arg;
    leash_pool *p = leash_pool_open("aborts", &fake_adapter, "fake://a", NULL);
    if (!p || !leash__shm_refresh_now())
        _exit(3);
    fprintf(stderr, "pid %d\n", (int)getpid());
    leash__shm_forget();
    if (access(page_of(getpid()), F_OK) == 0 || leash__shm_refresh_now() != 0)
        _exit(4);
    sleep_ms(700); /* the maintenance thread's own refresh is due meanwhile */
    abort();
}

static void test_forget_before_abort(void **state)
{
    (void)state;
    char *err = NULL;
    int st = run_child(forget_then_abort, NULL, &err);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    int pid = 0;
    assert_int_equal(sscanf(err, "pid %d", &pid), 1);
    free(err);
    assert_int_equal(access(page_of(pid), F_OK), -1);
}

/* ---- the metrics file ---- */

struct churn {
    leash_pool *p;
    _Atomic int stop;
};

static void *churn_main(void *arg)
{
    struct churn *c = arg;
    while (!atomic_load(&c->stop)) {
        leash_handle *h = leash_acquire(c->p);
        leash_release(&h);
        sleep_ms(1);
    }
    return NULL;
}

/* LEASH_METRICS_FILE is rewritten every LEASH_METRICS_INTERVAL_MS; read 200 times while
 * that happens, every read is a whole Prometheus dump ending with "# EOF", and the file
 * was replaced many times meanwhile. Neither the file nor the page moves the text dump's
 * baseline. No temporary file is left. Bad input: LEASH_METRICS_INTERVAL_MS=soon (warned,
 * the default used). */
static void test_metrics_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/leash-test-metrics-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/leash.prom", dir);
    setenv("LEASH_METRICS_FILE", path, 1);
    setenv("LEASH_METRICS_INTERVAL_MS", "100", 1);
    static struct churn c;
    c.p = leash_pool_open("metrics", &fake_adapter, "fake://m", NULL);
    assert_non_null(c.p);
    atomic_store(&c.stop, 0);
    char *base = dump(LEASH_FORMAT_TEXT); /* the text dump's baseline */
    free(base);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, churn_main, &c), 0);
    for (int i = 0; i < 300 && access(path, F_OK) != 0; i++)
        sleep_ms(10);
    ino_t inodes[200];
    int distinct = 0;
    for (int i = 0; i < 200; i++) {
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        struct stat st;
        fstat(fd, &st);
        if (!distinct || inodes[distinct - 1] != st.st_ino)
            inodes[distinct++] = st.st_ino;
        char *s = slurp(fd);
        close(fd);
        size_t n = strlen(s);
        if (n < 6 || strcmp(s + n - 6, "# EOF\n") != 0 ||
            !strstr(s, "# TYPE leash_pool_acquired_total counter\n") ||
            !strstr(s, "leash_pool_acquired_total{pool=\"metrics\",kind=\"fake\"}"))
            fail_msg("read %d of the metrics file is not whole (%zu bytes):\n%s", i, n, s);
        free(s);
        sleep_ms(5);
    }
    atomic_store(&c.stop, 1);
    pthread_join(t, NULL);
    if (distinct < 5)
        fail_msg("the metrics file was replaced %d times in 200 reads", distinct);
    print_message("      200 reads, %d versions of the file\n", distinct);
    sleep_ms(600); /* at least one more page refresh and several more file writes */
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(text, "changes since the last dump"));
    assert_non_null(strstr(text, "acquired +"));
    free(text);
    leash_shutdown();
    /* the folder holds the file and nothing else */
    int entries = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
            entries++;
    closedir(d);
    assert_int_equal(entries, 1);
    unlink(path);
    rmdir(dir);

    /* %p in the path is the pid */
    snprintf(path, sizeof path, "/tmp/leash-test-metrics-%%p.prom");
    setenv("LEASH_METRICS_FILE", path, 1);
    assert_non_null(leash_pool_open("metrics-pid", &fake_adapter, "fake://m", NULL));
    char expanded[128];
    snprintf(expanded, sizeof expanded, "/tmp/leash-test-metrics-%d.prom", (int)getpid());
    for (int i = 0; i < 300 && access(expanded, F_OK) != 0; i++)
        sleep_ms(10);
    assert_int_equal(access(expanded, F_OK), 0);
    unlink(expanded);
    leash_shutdown();

    setenv("LEASH_METRICS_INTERVAL_MS", "soon", 1);
    capture_start();
    assert_non_null(leash_pool_open("metrics2", &fake_adapter, "fake://m", NULL));
    assert_non_null(strstr(log_text, "LEASH_METRICS_INTERVAL_MS=\"soon\""));
    unsetenv("LEASH_METRICS_FILE");
    unsetenv("LEASH_METRICS_INTERVAL_MS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_torn_copy, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_page_while_threads_hammer, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_large_page, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_stat_stopped_then_dead, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_fork_child_has_its_own_page, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_stat_refuses_corrupt_pages, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_parse_every_prefix_and_byte, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_shm_off, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_removes_the_page, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_exit_removes_the_page, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_forget_before_abort, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_metrics_file, setup, fake_teardown),
    };
    return cmocka_run_group_tests_name("shm", tests, NULL, NULL);
}

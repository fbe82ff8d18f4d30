/* Integration tests of leash-stat against a real process using leash (test-stat-helper: a
 * Redis pool on the real test server and a pool of its own adapter): the list, the text
 * dump (the same as the process's own), JSON, Prometheus (promtool), --watch, a stopped
 * process, and every way the process can end (exit, leash_shutdown, SIGKILL, _exit). */
#include "kit.h"
#include "servers.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROMTOOL "/usr/bin/promtool"

struct helper {
    pid_t pid;
    FILE *in;
    int out; /* read a byte at a time with a deadline: a helper that hangs fails the test */
};

static struct helper H;

static const char *page_of(pid_t pid)
{
    static char p[64];
    snprintf(p, sizeof p, "/dev/shm/leash.%d", (int)pid);
    return p;
}

/* ---- the helper process ---- */

static int helper_wait(void);

/* One line from the helper into buf (newline dropped); 0, or -1 at EOF or after 20 s. */
static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    double until = now_s() + 20;
    while (n + 1 < cap) {
        struct pollfd p = {H.out, POLLIN, 0};
        int left = (int)((until - now_s()) * 1000);
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        char c;
        if (read(H.out, &c, 1) != 1)
            return -1;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return 0;
}

static void helper_start(void)
{
    int to[2], from[2];
    assert_int_equal(pipe(to), 0);
    assert_int_equal(pipe(from), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[0]), close(to[1]), close(from[0]), close(from[1]);
        setenv("LEASH_STRICT", "1", 1);
        setenv("LEASH_STATS_SIGNAL", "", 1);
        unsetenv("LEASH_STATS_SHM");
        unsetenv("LEASH_METRICS_FILE");
        execl(getenv("LEASH_STAT_HELPER"), "test-stat-helper", (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    H.pid = pid;
    H.in = fdopen(to[1], "w");
    H.out = from[0];
    assert_non_null(H.in);
    char line[128];
    int ready = 0;
    if (read_line(line, sizeof line) != 0 || sscanf(line, "ready %d", &ready) != 1 ||
        ready != (int)pid) {
        kill(pid, SIGKILL);
        helper_wait();
        fail_msg("the helper did not start (is redis up on 16380?)");
    }
}

/* Sends one command and returns its answer line (static buffer); fails the test if none
 * comes. */
static const char *helper_say(const char *cmd)
{
    static char line[256];
    fprintf(H.in, "%s\n", cmd);
    fflush(H.in);
    if (read_line(line, sizeof line) != 0)
        fail_msg("the helper did not answer \"%s\" within 20 s", cmd);
    return line;
}

/* Waits for the helper to end; returns its wait status. */
static int helper_wait(void)
{
    int st = wait_child(H.pid);
    fclose(H.in);
    close(H.out);
    H.pid = 0;
    return st;
}

/* Ends the helper the normal way (its page goes with it); one that does not answer is
 * killed and its page removed here. */
static int teardown(void **state)
{
    (void)state;
    if (H.pid > 0) {
        pid_t pid = H.pid;
        kill(pid, SIGCONT);
        fprintf(H.in, "exit\n");
        fflush(H.in);
        helper_wait(); /* kills it after 10 s */
        unlink(page_of(pid));
    }
    return 0;
}

/* ---- running leash-stat ---- */

/* Runs leash-stat with up to 6 arguments (NULL-terminated); kill_after_ms > 0 sends it
 * SIGINT then (for --watch). */
static struct kit_run stat_run(int kill_after_ms, const char *a1, ...)
{
    const char *args[8] = {"leash-stat"};
    int n = 1;
    va_list ap;
    va_start(ap, a1);
    for (const char *a = a1; a && n < 7; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    return run_program(getenv("LEASH_STAT"), args, kill_after_ms);
}

static const char *pid_arg(void)
{
    static char b[16];
    snprintf(b, sizeof b, "%d", (int)H.pid);
    return b;
}

/* Waits until the page says the helper holds `held` handles (it refreshes every 0.5 s). */
static void wait_page_held(unsigned held)
{
    char want[64];
    snprintf(want, sizeof want, "\"pid\":%d,\"state\":\"running\"", (int)H.pid);
    char held_s[32];
    snprintf(held_s, sizeof held_s, "\"held\":%u,", held);
    for (int i = 0; i < 100; i++) {
        struct kit_run r = stat_run(0, "--json", NULL);
        const char *at = strstr(r.out, want);
        const char *end = at ? strchr(at, '}') : NULL;
        const char *h = at ? strstr(at, held_s) : NULL;
        int ok = h && h < end;
        kit_run_free(&r);
        if (ok)
            return;
        sleep_ms(100);
    }
    fail_msg("the page of %d never showed %u handles held", (int)H.pid, held);
}

/* The text with every duration (850ns, 12us, 3.4ms, 1.25s, 3m20s) as "D", so two dumps of
 * a quiet process taken a moment apart compare equal. */
static char *no_durations(const char *s)
{
    char *out = malloc(strlen(s) + 1);
    assert_non_null(out);
    size_t o = 0;
    for (size_t i = 0; s[i];) {
        size_t j = i;
        if (isdigit((unsigned char)s[i]) && (i == 0 || !isalnum((unsigned char)s[i - 1]))) {
            while (isdigit((unsigned char)s[j]) || s[j] == '.')
                j++;
            size_t k = j;
            if (s[k] == 'm' && isdigit((unsigned char)s[k + 1])) { /* 3m20s */
                k++;
                while (isdigit((unsigned char)s[k]))
                    k++;
            }
            static const char *const units[] = {"ns", "us", "ms", "s"};
            int matched = 0;
            for (size_t u = 0; u < 4 && !matched; u++) {
                size_t l = strlen(units[u]);
                if (!strncmp(s + k, units[u], l) && !isalnum((unsigned char)s[k + l])) {
                    out[o++] = 'D';
                    i = k + l;
                    matched = 1;
                }
            }
            if (matched)
                continue;
        }
        out[o++] = s[i++];
    }
    out[o] = '\0';
    return out;
}

/* ---- tests ---- */

static int setup(void **state)
{
    (void)state;
    assert_int_equal(srv_ctl("start", "redis"), 0);
    helper_start();
    return 0;
}

/* The list names the helper with its pools and held handles. Bad input: none (the list
 * must also survive other processes' pages, which may be anything). */
static void test_list_shows_the_process(void **state)
{
    (void)state;
    assert_string_equal(helper_say("hold 3"), "held 3");
    wait_page_held(3);
    struct kit_run r = stat_run(0, NULL);
    assert_int_equal(r.code, 0);
    char want[128];
    snprintf(want, sizeof want, "%7d  test-stat-helpe     2     3", (int)H.pid);
    if (!strstr(r.out, want))
        fail_msg("no \"%s\" in the list:\n%s", want, r.out);
    assert_non_null(strstr(r.out, "OLDEST HOLD"));
    kit_run_free(&r);
    assert_string_equal(helper_say("release"), "released");
}

/* leash-stat PID prints the same text as the process's own dump (durations aside), with
 * the held handles by borrow site and never the Redis password. Bad input: a target with a
 * password in it. */
static void test_text_is_the_dump(void **state)
{
    (void)state;
    assert_string_equal(helper_say("hold 2"), "held 2");
    wait_page_held(2);
    struct kit_run r = stat_run(0, pid_arg(), NULL);
    assert_int_equal(r.code, 0);
    char own_path[] = "/tmp/leash-test-stat-dump-XXXXXX";
    close(mkstemp(own_path));
    char cmd[128];
    snprintf(cmd, sizeof cmd, "dump %s", own_path);
    assert_string_equal(helper_say(cmd), "dumped");
    char *own = slurp_path(own_path);
    unlink(own_path);

    char head[96];
    snprintf(head, sizeof head, "=== leash stats: pid %d, 2 pools, 2 handles held", (int)H.pid);
    assert_true(!strncmp(r.out, head, strlen(head)));
    assert_non_null(strstr(r.out, "test-stat-helper.c:"));
    assert_non_null(strstr(r.out, " in hold_site() thread "));
    assert_non_null(strstr(r.out, "redis://:***@127.0.0.1:16380/2"));
    assert_null(strstr(r.out, "leash-redis-pw"));
    assert_null(strstr(r.out, "redis-pw"));
    char *a = no_durations(r.out), *b = no_durations(own);
    if (strcmp(a, b) != 0)
        fail_msg("leash-stat and the process's own dump differ:\n--- leash-stat\n%s--- dump\n%s", a,
                 b);
    free(a);
    free(b);
    free(own);
    kit_run_free(&r);
    assert_string_equal(helper_say("release"), "released");
}

/* --json and --prometheus print the other dumps; promtool accepts the Prometheus one. Bad
 * input: both formats at once, a PID that is not a number, two PIDs (usage: exit 2). */
static void test_json_and_prometheus(void **state)
{
    (void)state;
    assert_string_equal(helper_say("hold 1"), "held 1");
    wait_page_held(1);
    struct kit_run j = stat_run(0, "--json", pid_arg(), NULL);
    assert_int_equal(j.code, 0);
    char head[32];
    snprintf(head, sizeof head, "{\"pid\":%d,", (int)H.pid);
    assert_true(!strncmp(j.out, head, strlen(head)));
    assert_non_null(strstr(j.out, "\"name\":\"jobs\""));
    assert_non_null(strstr(j.out, "\"name\":\"cache\""));
    assert_null(strstr(j.out, "redis-pw"));
    kit_run_free(&j);

    struct kit_run p = stat_run(0, "--prometheus", pid_arg(), NULL);
    assert_int_equal(p.code, 0);
    assert_non_null(strstr(p.out, "leash_pool_acquired_total{pool=\"jobs\",kind=\"mem\"}"));
    char path[] = "/tmp/leash-test-stat-prom-XXXXXX";
    int fd = mkstemp(path);
    assert_int_equal(write(fd, p.out, strlen(p.out)), (ssize_t)strlen(p.out));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, PROMTOOL " check metrics < %s > /dev/null 2>&1", path);
    int st = system(cmd);
    unlink(path);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("promtool refused leash-stat --prometheus:\n%s", p.out);
    kit_run_free(&p);

    const char *bad[][3] = {{"--json", "--prometheus", pid_arg()},
                            {"12ab", NULL, NULL},
                            {pid_arg(), "1", NULL},
                            {"--watch", "0", pid_arg()},
                            {"--clean", "--json", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct kit_run u = stat_run(0, bad[i][0], bad[i][1], bad[i][2], NULL);
        assert_int_equal(u.code, 2);
        assert_non_null(strstr(u.err, "leash-stat: "));
        kit_run_free(&u);
    }
    assert_string_equal(helper_say("release"), "released");
}

/* --watch prints again and again while the process works. */
static void test_watch_refreshes(void **state)
{
    (void)state;
    assert_string_equal(helper_say("work 1"), "work 1");
    struct kit_run r = stat_run(2600, "--watch", "1", pid_arg(), NULL);
    int dumps = 0;
    for (const char *at = r.out; (at = strstr(at, "=== end of leash stats ===")); at++)
        dumps++;
    if (dumps < 2)
        fail_msg("--watch 1 printed %d dumps in 2.6 s:\n%s", dumps, r.out);
    kit_run_free(&r);
    assert_string_equal(helper_say("work 0"), "work 0");
}

/* A stopped process (SIGSTOP) is read all the same, and said to be stopped. */
static void test_stopped_process(void **state)
{
    (void)state;
    assert_string_equal(helper_say("work 1"), "work 1");
    assert_string_equal(helper_say("hold 4"), "held 4");
    wait_page_held(4);
    assert_int_equal(kill(H.pid, SIGSTOP), 0);
    int st = 0;
    assert_int_equal(waitpid(H.pid, &st, WUNTRACED), H.pid);
    assert_true(WIFSTOPPED(st));
    sleep_ms(1200);
    struct kit_run r = stat_run(0, pid_arg(), NULL);
    assert_int_equal(r.code, 0);
    assert_non_null(strstr(r.out, "=== end of leash stats ===\n"));
    assert_non_null(strstr(r.err, "is stopped"));
    kit_run_free(&r);
    struct kit_run l = stat_run(0, NULL);
    assert_non_null(strstr(l.out, "stopped"));
    kit_run_free(&l);
    assert_int_equal(kill(H.pid, SIGCONT), 0);
    assert_string_equal(helper_say("work 0"), "work 0");
    assert_string_equal(helper_say("release"), "released");
}

/* exit(0) without leash_shutdown removes the page (the exit handler). */
static void test_exit_removes_the_page(void **state)
{
    (void)state;
    assert_string_equal(helper_say("hold 2"), "held 2");
    assert_int_equal(access(page_of(H.pid), F_OK), 0);
    fprintf(H.in, "exit\n");
    fflush(H.in);
    pid_t pid = H.pid;
    int st = helper_wait();
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(access(page_of(pid), F_OK), -1);
    char arg[16];
    snprintf(arg, sizeof arg, "%d", (int)pid);
    struct kit_run r = stat_run(0, arg, NULL);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "no process"));
    kit_run_free(&r);
}

/* leash_shutdown removes the page at once; the process lives on without one. */
static void test_shutdown_removes_the_page(void **state)
{
    (void)state;
    assert_int_equal(access(page_of(H.pid), F_OK), 0);
    assert_string_equal(helper_say("shutdown"), "shut down");
    assert_int_equal(access(page_of(H.pid), F_OK), -1);
    struct kit_run r = stat_run(0, pid_arg(), NULL);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "publishes no leash stats"));
    kit_run_free(&r);
}

/* SIGKILL and _exit leave the page behind: leash-stat says "gone" (exit 1) and shows
 * nothing as live; --last shows what it said then; --clean removes it. */
static void check_gone(pid_t pid)
{
    char arg[16];
    snprintf(arg, sizeof arg, "%d", (int)pid);
    assert_int_equal(access(page_of(pid), F_OK), 0);
    struct kit_run r = stat_run(0, arg, NULL);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "is gone"));
    assert_string_equal(r.out, "");
    kit_run_free(&r);
    struct kit_run l = stat_run(0, "--last", arg, NULL);
    assert_int_equal(l.code, 1);
    assert_non_null(strstr(l.out, "=== end of leash stats ===\n"));
    kit_run_free(&l);
    struct kit_run list = stat_run(0, NULL);
    char row[32];
    snprintf(row, sizeof row, "%7d  test-stat-helpe", (int)pid);
    const char *at = strstr(list.out, row);
    assert_non_null(at);
    const char *eol = strchr(at, '\n');
    const char *gone = strstr(at, "gone");
    assert_true(gone && gone < eol);
    kit_run_free(&list);
    struct kit_run c = stat_run(0, "--clean", arg, NULL);
    assert_int_equal(c.code, 0);
    assert_non_null(strstr(c.out, "removed"));
    kit_run_free(&c);
    assert_int_equal(access(page_of(pid), F_OK), -1);
}

static void test_killed_is_gone(void **state)
{
    (void)state;
    assert_string_equal(helper_say("hold 3"), "held 3");
    wait_page_held(3);
    pid_t pid = H.pid;
    kill(pid, SIGKILL);
    helper_wait();
    check_gone(pid);
}

static void test_underscore_exit_is_gone(void **state)
{
    (void)state;
    pid_t pid = H.pid;
    fprintf(H.in, "_exit\n");
    fflush(H.in);
    helper_wait();
    check_gone(pid);
}

int main(void)
{
    if (!getenv("LEASH_STAT") || !getenv("LEASH_STAT_HELPER")) {
        fprintf(stderr, "run through meson test: LEASH_STAT and LEASH_STAT_HELPER unset\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_list_shows_the_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_is_the_dump, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_and_prometheus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_refreshes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stopped_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exit_removes_the_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_removes_the_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_is_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_underscore_exit_is_gone, setup, teardown),
    };
    return cmocka_run_group_tests_name("stat", tests, NULL, NULL);
}

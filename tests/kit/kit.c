/* Helpers shared by every cmocka suite of leash (see kit.h). */
#include "kit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

char *slurp(int fd)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (n + 1024 > cap) {
            buf = realloc(buf, cap *= 2);
            assert_non_null(buf);
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return buf;
}

char *dump(leash_format fmt)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(leash_stats_dump(fileno(f), fmt), 0);
    assert_int_equal(lseek(fileno(f), 0, SEEK_SET), 0);
    char *text = slurp(fileno(f));
    fclose(f);
    return text;
}

int run_child(void (*fn)(void *), void *arg, char **err)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char *out = slurp(fds[0]);
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (err)
        *err = out;
    else
        free(out);
    return st;
}

int wait_child(pid_t pid)
{
    int st = 0;
    for (int i = 0; i < 1000; i++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        assert_int_equal(r, 0);
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    fail_msg("child %d still running after 10 s: killed", (int)pid);
    return st;
}

char *slurp_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    char *s = slurp(fd);
    close(fd);
    return s;
}

struct kit_run run_program(const char *path, const char *const *argv, int sigint_after_ms)
{
    char op[] = "/tmp/leash-test-run-out-XXXXXX", ep[] = "/tmp/leash-test-run-err-XXXXXX";
    int out = mkstemp(op), err = mkstemp(ep);
    assert_true(out >= 0 && err >= 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(out, 1);
        dup2(err, 2);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(out);
    close(err);
    if (sigint_after_ms > 0) {
        sleep_ms(sigint_after_ms);
        kill(pid, SIGINT);
    }
    int st = wait_child(pid);
    struct kit_run r = {WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp_path(op), slurp_path(ep)};
    unlink(op);
    unlink(ep);
    return r;
}

void kit_run_free(struct kit_run *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

leash_pool_stats stats(leash_pool *p)
{
    leash_pool_stats s;
    assert_int_equal(leash_pool_stats_get(p, &s), LEASH_OK);
    return s;
}

leash_handle *take(leash_pool *p)
{
    leash_handle *h = leash_acquire(p);
    if (!h)
        fail_msg("acquire: %s", leash_last_error());
    return h;
}

void assert_invariant(leash_pool *p)
{
    leash_pool_stats s = stats(p);
    assert_int_equal(s.acquired,
                     s.released + s.discarded + s.leaks_reclaimed + s.leaks_at_close + s.in_use);
    /* Every destroyed connection is counted under exactly one reason. */
    assert_int_equal(s.destroyed, s.destroyed_broken + s.destroyed_dirty + s.destroyed_idle +
                                      s.destroyed_lifetime + s.destroyed_evicted +
                                      s.destroyed_invalid + s.destroyed_closed);
}

void assert_balanced(leash_pool *p)
{
    leash_pool_stats s = stats(p);
    assert_int_equal(s.in_use, 0);
    assert_int_equal(s.acquired, s.released + s.discarded + s.leaks_reclaimed + s.leaks_at_close);
    assert_int_equal(s.misuse, 0);
}

/* ---- log capture ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
char log_text[16384];
static size_t log_len;

static void capture(int level, const char *msg, void *arg)
{
    pthread_mutex_lock(&log_lock);
    int n = snprintf(log_text + log_len, sizeof log_text - log_len, "[%d] %s\n", level, msg);
    if (n > 0 && (size_t)n < sizeof log_text - log_len)
        log_len += (size_t)n;
    pthread_mutex_unlock(&log_lock);
}

void capture_start(void)
{
    pthread_mutex_lock(&log_lock);
    log_len = 0;
    log_text[0] = '\0';
    pthread_mutex_unlock(&log_lock);
    leash_set_log(capture, NULL);
}

void default_mode(void)
{
    leash_shutdown();
    assert_int_equal(leash_init(&(leash_config){.strict = 0, .stats_signal = 0, .stats_fd = -1}),
                     LEASH_OK);
    assert_int_equal(leash_strict(), 0);
}

int under_valgrind(void)
{
    const char *v = getenv("LEASH_UNDER_VALGRIND");
    return v && *v && strcmp(v, "0") != 0;
}

int slow_factor(void)
{
    return under_valgrind() ? 20 : 1;
}

int child_done(int status)
{
    if (!WIFEXITED(status))
        return 0;
    return WEXITSTATUS(status) == 0 || under_valgrind();
}

int teardown_no_leaks(void **state)
{
    leash_set_log(NULL, NULL);
    int held = leash_check_leaks(2);
    leash_shutdown();
    assert_int_equal(held, 0);
    return 0;
}

/* ---- a foreign adapter ---- */

static void *other_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    return malloc(16);
}

static void other_destroy(void *ctx, void *conn)
{
    free(conn);
}

const leash_adapter kit_other_adapter = {
    .kind = "other", .connect = other_connect, .destroy = other_destroy};

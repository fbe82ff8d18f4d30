/* Helpers shared by the Redis integration tests: servers, pools, replies, logs, children. */
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

/* A plain hiredis connection to the password-less instance, outside leash (for CLIENT KILL,
 * checks and setup). */
redisContext *admin(void)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, tv);
    if (!rc || rc->err)
        fail_msg("admin connect: %s", rc ? rc->errstr : "out of memory");
    redisSetTimeout(rc, tv);
    return rc;
}

/* Runs a command on the admin connection; fails the test unless a reply came. */
redisReply *admin_cmd(redisContext *rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("admin %s: %s", fmt, rc->errstr);
    return r;
}

leash_pool *pool(const char *name, const char *url, int max_size)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 5000};
    leash_pool *p = leash_redis_pool(name, url, &o);
    if (!p)
        fail_msg("pool %s: %s", name, leash_last_error());
    return p;
}

leash_handle *take(leash_pool *p)
{
    leash_handle *h = leash_acquire(p);
    if (!h)
        fail_msg("acquire: %s", leash_last_error());
    return h;
}

/* The reply r of the command what, which must be a reply and not an error (for must()). */
redisReply *checked(redisReply *r, const char *what)
{
    if (!r)
        fail_msg("%s: %s", what, leash_last_error());
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", what, r->str);
    return r;
}

/* GET key through h, as a malloc'd string ("(nil)" for none). */
char *get(leash_handle *h, const char *key)
{
    LEASH_REPLY redisReply *r = must(h, "GET %s", key);
    return strdup(r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
}

void set(leash_handle *h, const char *key, const char *value)
{
    LEASH_REPLY redisReply *r = leash_redis_command(h, "SET %s %s", key, value);
    if (!r || r->type != REDIS_REPLY_STATUS)
        fail_msg("SET %s: %s", key, r ? r->str : leash_last_error());
}

long long client_id(leash_handle *h)
{
    LEASH_REPLY redisReply *r = must(h, "CLIENT ID");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    return r->integer;
}

/* The value of field (e.g. "db") in this connection's CLIENT INFO line (malloc'd). */
char *client_info(leash_handle *h, const char *field)
{
    LEASH_REPLY redisReply *r = must(h, "CLIENT INFO");
    char key[64];
    snprintf(key, sizeof key, " %s=", field);
    const char *p = strstr(r->str, key);
    if (!p)
        fail_msg("CLIENT INFO has no %s: %s", field, r->str);
    p += strlen(key);
    return strndup(p, strcspn(p, " \r\n"));
}

leash_pool_stats stats(leash_pool *p)
{
    leash_pool_stats s;
    assert_int_equal(leash_pool_stats_get(p, &s), LEASH_OK);
    return s;
}

/* The counting invariant of DESIGN.md, for a quiet pool. */
void assert_balanced(leash_pool *p)
{
    leash_pool_stats s = stats(p);
    assert_int_equal(s.in_use, 0);
    assert_int_equal(s.acquired, s.released + s.discarded + s.leaks_reclaimed + s.leaks_at_close);
    assert_int_equal(s.misuse, 0);
}

/* Release checking off (the production default), for tests of dirty returns being cleaned. */
void default_mode(void)
{
    leash_shutdown();
    assert_int_equal(leash_init(&(leash_config){.strict = 0, .stats_signal = 0, .stats_fd = -1}),
                     LEASH_OK);
    assert_int_equal(leash_strict(), 0);
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

/* Reads everything from fd until EOF (malloc'd). */
char *slurp(int fd)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 1024 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return buf;
}

/* A dump of every pool in fmt, as a string (malloc'd). */
char *dump(leash_format fmt)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(leash_stats_dump(fileno(f), fmt), 0);
    rewind(f);
    char *text = slurp(fileno(f));
    fclose(f);
    return text;
}

/* Runs fn in a child process with stderr captured: returns its wait status, and its stderr
 * in *err (malloc'd). */
int run_child(void (*fn)(void), char **err)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        fn();
        _exit(0);
    }
    close(fds[1]);
    *err = slurp(fds[0]);
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    return st;
}

int teardown(void **state)
{
    srv_signal(SRV_REDIS_PIDFILE, SIGCONT); /* in case a pause test failed half-way */
    leash_set_log(NULL, NULL);
    assert_int_equal(leash_check_leaks(2), 0);
    leash_shutdown();
    return 0;
}

int group_setup(void **state)
{
    return srv_ctl("start", "redis") == 0 ? 0 : -1;
}

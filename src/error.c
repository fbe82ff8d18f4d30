/* Status strings, this thread's last error, the log callback, password redaction, clocks. */
#include "common.h"
#include "core.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One table generates the status strings; numbered and append-only like the enum. */
#define LEASH_STATUS_MAP(X)                                                                        \
    X(LEASH_OK, "success")                                                                         \
    X(LEASH_ETIMEDOUT, "timed out waiting for a handle")                                           \
    X(LEASH_EBUSY, "pool busy: too many waiters")                                                  \
    X(LEASH_ECONNECT, "could not connect")                                                         \
    X(LEASH_EINVAL, "invalid argument")                                                            \
    X(LEASH_ECLOSED, "pool closed")                                                                \
    X(LEASH_ENOMEM, "out of memory")                                                               \
    X(LEASH_EEXIST, "already exists")                                                              \
    X(LEASH_ENOTFOUND, "not found")                                                                \
    X(LEASH_EMISUSE, "handle misuse")                                                              \
    X(LEASH_EIO, "I/O error on the connection")

#define LEASH_STATUS_STR(code, text) [code] = text,
static const char *const status_text[] = {LEASH_STATUS_MAP(LEASH_STATUS_STR)};
#define LEASH_STATUS_COUNT (sizeof status_text / sizeof status_text[0])
_Static_assert(LEASH_STATUS_COUNT == LEASH_EIO + 1, "every status has a string");

const char *leash_strerror(leash_status s)
{
    if ((unsigned)s >= LEASH_STATUS_COUNT)
        return "unknown status";
    return status_text[s];
}

static _Thread_local leash_status t_status;
static _Thread_local char t_error[LEASH_ERR_MAX];

leash_status leash_last_status(void)
{
    return t_status;
}

const char *leash_last_error(void)
{
    return t_error;
}

LEASH_PRINTF(2, 0) static void set_error(leash_status s, const char *fmt, va_list ap)
{
    t_status = s;
    if (!fmt) {
        snprintf(t_error, sizeof t_error, "%s", leash_strerror(s));
        return;
    }
    vsnprintf(t_error, sizeof t_error, fmt, ap);
}

leash_status leash__fail(leash_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(s, fmt, ap);
    va_end(ap);
    return s;
}

void *leash__fail_null(leash_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(s, fmt, ap);
    va_end(ap);
    return NULL;
}

/* ---- log ------------------------------------------------------------------------------ */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static leash_log_fn log_fn;
static void *log_arg;
/* The default sink's rate limit: at most LOG_BURST messages per second. */
#define LOG_BURST 20
static uint64_t log_window_start;
static unsigned log_in_window, log_dropped;

void leash_set_log(leash_log_fn fn, void *arg)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_arg = arg;
    pthread_mutex_unlock(&log_lock);
}

static const char *level_name(int level)
{
    switch (level) {
    case LEASH_LOG_DEBUG:
        return "debug";
    case LEASH_LOG_INFO:
        return "info";
    case LEASH_LOG_WARN:
        return "warning";
    default:
        return "error";
    }
}

static void log_default(int level, const char *msg)
{
    if (level < LEASH_LOG_WARN)
        return;
    uint64_t now = leash__coarse_ns();
    unsigned dropped = 0;
    pthread_mutex_lock(&log_lock);
    if (now - log_window_start >= 1000000000ull) {
        dropped = log_dropped;
        log_window_start = now;
        log_in_window = 0;
        log_dropped = 0;
    }
    int ok = log_in_window < LOG_BURST;
    if (ok)
        log_in_window++;
    else
        log_dropped++;
    pthread_mutex_unlock(&log_lock);
    if (dropped)
        fprintf(stderr, "leash: warning: %u messages dropped (rate limit)\n", dropped);
    if (ok)
        fprintf(stderr, "leash: %s: %s\n", level_name(level), msg);
}

LEASH_PRINTF(2, 0) static void log_emit(int level, const char *fmt, va_list ap)
{
    char msg[LEASH_ERR_MAX + 256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    pthread_mutex_lock(&log_lock);
    leash_log_fn fn = log_fn;
    void *arg = log_arg;
    pthread_mutex_unlock(&log_lock);
    if (fn)
        fn(level, msg, arg);
    else
        log_default(level, msg);
}

void leash__log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_emit(level, fmt, ap);
    va_end(ap);
}

/* Call sites already logged, as an open-addressing set of (key, line); full means log. */
#define ONCE_SLOTS 256
static struct {
    const void *key;
    int line;
} once_seen[ONCE_SLOTS];
static pthread_mutex_t once_lock = PTHREAD_MUTEX_INITIALIZER;

static int first_time(const void *key, int line)
{
    uintptr_t h = ((uintptr_t)key >> 3) * 31u + (unsigned)line;
    int first = 1;
    pthread_mutex_lock(&once_lock);
    for (unsigned i = 0; i < ONCE_SLOTS; i++) {
        unsigned j = (unsigned)((h + i) % ONCE_SLOTS);
        if (!once_seen[j].key) {
            once_seen[j].key = key;
            once_seen[j].line = line;
            break;
        }
        if (once_seen[j].key == key && once_seen[j].line == line) {
            first = 0;
            break;
        }
    }
    pthread_mutex_unlock(&once_lock);
    return first;
}

int leash__log_once(const void *key, int line, int level, const char *fmt, ...)
{
    if (!first_time(key, line))
        return 0;
    va_list ap;
    va_start(ap, fmt);
    log_emit(level, fmt, ap);
    va_end(ap);
    return 1;
}

void leash__log_reset_once(void)
{
    pthread_mutex_lock(&once_lock);
    memset(once_seen, 0, sizeof once_seen);
    pthread_mutex_unlock(&once_lock);
}

/* ---- redaction ------------------------------------------------------------------------ */

static size_t put(char *out, size_t outlen, size_t o, const char *s, size_t n)
{
    for (size_t i = 0; i < n && o + 1 < outlen; i++)
        out[o++] = s[i];
    return o;
}

/* At in[i] starts "scheme://": returns the length of userinfo's password to hide, with
 * *from set to where it starts, or 0. */
static size_t url_password(const char *in, size_t i, size_t *from)
{
    const char *p = strstr(in + i, "://");
    if (!p)
        return 0;
    const char *auth = p + 3;
    size_t end = strcspn(auth, "/?#@ \t");
    if (auth[end] != '@') {
        /* An '@' may still come after a '/', '?' or '#' inside the password itself. */
        const char *at = strchr(auth, '@');
        const char *sp = strpbrk(auth, " \t");
        if (!at || (sp && sp < at))
            return 0;
        end = (size_t)(at - auth);
    }
    const char *colon = memchr(auth, ':', end);
    if (!colon)
        return 0;
    *from = (size_t)(colon + 1 - in);
    return (size_t)(auth + end - (colon + 1));
}

void leash__redact(const char *in, char *out, size_t outlen)
{
    if (!out || outlen == 0)
        return;
    out[0] = '\0';
    if (!in)
        return;
    size_t o = 0, len = strlen(in);
    for (size_t i = 0; i < len;) {
        size_t from = 0, n = 0;
        /* A URL: scheme letters then "://". */
        if (isalpha((unsigned char)in[i]) && (i == 0 || !isalnum((unsigned char)in[i - 1]))) {
            size_t j = i;
            while (isalnum((unsigned char)in[j]) || in[j] == '+' || in[j] == '-' || in[j] == '.')
                j++;
            if (strncmp(in + j, "://", 3) == 0)
                n = url_password(in, i, &from);
            if (n) {
                o = put(out, outlen, o, in + i, from - i);
                o = put(out, outlen, o, "***", 3);
                i = from + n;
                continue;
            }
        }
        /* password=value, password = 'quoted value' (also in URL query strings). */
        if (strncasecmp(in + i, "password", 8) == 0 &&
            (i == 0 || !isalnum((unsigned char)in[i - 1]))) {
            size_t j = i + 8;
            while (in[j] == ' ')
                j++;
            if (in[j] == '=') {
                j++;
                while (in[j] == ' ')
                    j++;
                o = put(out, outlen, o, "password=***", 12);
                if (in[j] == '\'') {
                    for (j++; in[j] && in[j] != '\''; j++)
                        if (in[j] == '\\' && in[j + 1])
                            j++;
                    if (in[j] == '\'')
                        j++;
                } else {
                    while (in[j] && in[j] != ' ' && in[j] != '&' && in[j] != '\t')
                        j++;
                }
                i = j;
                continue;
            }
        }
        o = put(out, outlen, o, in + i, 1);
        i++;
    }
    out[o < outlen ? o : outlen - 1] = '\0';
}

/* ---- clocks ---------------------------------------------------------------------------- */

uint64_t leash__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t leash__coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void leash__log_atfork(int lock)
{
    if (lock) {
        pthread_mutex_lock(&log_lock);
        pthread_mutex_lock(&once_lock);
    } else {
        pthread_mutex_unlock(&once_lock);
        pthread_mutex_unlock(&log_lock);
    }
}

/* ---- SIGPIPE ---------------------------------------------------------------------------- */

void leash__nopipe_begin(leash__nopipe *np)
{
    sigset_t pipe_set, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    np->was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &np->old);
}

void leash__nopipe_end(leash__nopipe *np)
{
    if (!np->was_pending) {
        sigset_t pipe_set, pending;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE)) {
            struct timespec zero = {0, 0};
            while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
                ;
        }
    }
    pthread_sigmask(SIG_SETMASK, &np->old, NULL);
}

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
    X(LEASH_ETIMEDOUT, "timed out (the deadline passed)")                                          \
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

/* What leash__redact hides, and where a hidden part ends. Hiding too much is preferred to
 * showing any part of a secret; a string cut short inside a hidden part is hidden to its end.
 *
 * URL userinfo: after each "://", up to the last '@' before the next whitespace (a URL has
 * no raw whitespace, and a password may hold '/', '?', '#', '@', ':', '[', ']' or '%'
 * unencoded). "user:***@" keeps the user name; a userinfo without ':' is hidden whole.
 * Without a '@', a "host:port" whose port is not a port (a password whose "@host" is
 * missing) is hidden from the ':' to the whitespace; a port is up to 5 digits, then the end
 * of the authority or a quote or bracket closing the URL.
 *
 * Keys: password=value, password: value, "password": "value", PASSWORD 'value' (any case;
 * also inside longer keys such as sentinel_password). A quoted value ends at its closing
 * quote (backslash escapes, doubled quotes); an unquoted one at whitespace (backslash
 * escapes), and in a URL query (a parameter name after '?' or '&') also at '&' or '#'. */

static size_t put(char *out, size_t outlen, size_t o, const char *s, size_t n)
{
    for (size_t i = 0; i < n && o + 1 < outlen; i++)
        out[o++] = s[i];
    return o;
}

static int space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* At in + a, just past "://": copies or hides the authority's userinfo into out at *o.
 * Returns where the scan goes on (a when there is nothing to hide). */
static size_t redact_authority(const char *in, size_t a, char *out, size_t outlen, size_t *o)
{
    size_t tok = a, at = 0, found = 0;
    for (; in[tok] && !space(in[tok]); tok++) {
        if (in[tok] == '@') {
            at = tok;
            found = 1;
        }
    }
    if (found) {
        const char *colon = memchr(in + a, ':', at - a);
        if (colon)
            *o = put(out, outlen, *o, in + a, (size_t)(colon + 1 - (in + a)));
        *o = put(out, outlen, *o, "***", 3);
        return at; /* the '@' and the host are copied by the caller's scan */
    }
    size_t end = a;
    while (end < tok && in[end] != '/' && in[end] != '?' && in[end] != '#')
        end++;
    size_t k = a;
    if (in[k] == '[')
        while (k < end && in[k] != ']')
            k++;
    while (k < end && in[k] != ':')
        k++;
    if (k == end)
        return a;
    size_t d = k + 1;
    while (d < end && isdigit((unsigned char)in[d]))
        d++;
    /* A port ends the authority, or a quote or bracket around the URL does. */
    if (d - (k + 1) <= 5 && (d == end || strchr("\"'>)]},;", in[d])))
        return a;
    *o = put(out, outlen, *o, in + a, k + 1 - a);
    *o = put(out, outlen, *o, "***", 3);
    return tok;
}

/* At in + i: if a password key starts there, copies the key as written and "***" into out
 * at *o and returns where its value ends; otherwise returns i. */
static size_t redact_key_value(const char *in, size_t i, char *out, size_t outlen, size_t *o)
{
    if (strncasecmp(in + i, "password", 8) != 0)
        return i;
    size_t j = i + 8;
    if (in[j] == '"' || in[j] == '\'')
        j++; /* a quoted key, as in JSON */
    while (in[j] == ' ' || in[j] == '\t')
        j++;
    if (in[j] == '=' || in[j] == ':') {
        j++;
        while (in[j] == ' ' || in[j] == '\t')
            j++;
    } else if ((in[j] != '\'' && in[j] != '"') || j == i + 8) {
        return i; /* neither "password=..." nor SQL's PASSWORD 'value' */
    }
    *o = put(out, outlen, *o, in + i, j - i);
    *o = put(out, outlen, *o, "***", 3);
    char quote = in[j];
    if (quote == '\'' || quote == '"') {
        for (j++; in[j]; j++) {
            if (in[j] == '\\' && in[j + 1]) {
                j++;
            } else if (in[j] == quote) {
                if (in[j + 1] != quote)
                    return j + 1;
                j++; /* a doubled quote is one quote of the value */
            }
        }
        return j;
    }
    /* A query parameter: its name (e.g. sentinel_password) follows a '?' or '&'. */
    size_t k = i;
    while (k > 0 && (isalnum((unsigned char)in[k - 1]) || strchr("_-.", in[k - 1])))
        k--;
    int query = k > 0 && (in[k - 1] == '?' || in[k - 1] == '&');
    while (in[j] && !space(in[j]) && !(query && (in[j] == '&' || in[j] == '#'))) {
        if (in[j] == '\\' && in[j + 1])
            j++;
        j++;
    }
    return j;
}

void leash__redact(const char *in, char *out, size_t outlen)
{
    if (!out || outlen == 0)
        return;
    out[0] = '\0';
    if (!in)
        return;
    size_t o = 0;
    for (size_t i = 0; in[i];) {
        if (in[i] == ':' && in[i + 1] == '/' && in[i + 2] == '/') {
            o = put(out, outlen, o, "://", 3);
            i = redact_authority(in, i + 3, out, outlen, &o);
            continue;
        }
        size_t next = redact_key_value(in, i, out, outlen, &o);
        if (next != i) {
            i = next;
            continue;
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

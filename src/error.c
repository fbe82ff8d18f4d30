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
 * unencoded). "user:***@" keeps a plain user name; a userinfo without ':', or one whose
 * part before the ':' has URL or key-value syntax in it, is hidden whole. A password key
 * (below) inside that part hides its whole value, past the '@' if need be.
 * Without a '@', a "host:port" whose port is not a port (a password whose "@host" is
 * missing) is hidden from the ':' to the whitespace; a port is 1 to 5 digits, then the end
 * of the authority or quotes or brackets closing the URL (then whitespace).
 *
 * Keys: password=value, password: value, "password": "value", PASSWORD 'value' (any case;
 * also inside longer keys such as sentinel_password). A value is a word: unquoted and
 * quoted runs (doubled quotes; backslash escapes or not, whichever reads further) up to
 * unquoted whitespace, or, when it starts with a quoted run, to a ',', ';', ')', ']' or
 * '}' right after that run. In a URL query (a parameter name after '?' or '&') a value
 * ends at '&', '#' or whitespace, quotes and all. */

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

static size_t redact_key_value(const char *in, size_t i, char *out, size_t outlen, size_t *o);

/* 1 when s (right after a port's digits) closes the URL: quotes or brackets around it,
 * then perhaps a ':', ',', ';' or '.', then whitespace or the end. */
static int url_closed(const char *s)
{
    if (!strchr("\"'>)]}", *s))
        return 0;
    while (*s && strchr("\"'>)]}", *s))
        s++;
    if (*s && strchr(":,;.", *s))
        s++;
    return !*s || space(*s);
}

/* 1 when [s, s+n) may be shown as a user name or host before a hidden password: no URL or
 * key-value syntax in it (else it may be a part of a password split at a ':'). */
static int plain_name(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strchr("/?#@=&;\"'\\", s[i]) || strncasecmp(s + i, "password", 8) == 0)
            return 0;
    return 1;
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
        /* A '@' in a query's password (?password=p@ss) is not the userinfo's: a key-value
         * pair that starts in the part hidden runs to its own end. */
        size_t stop = at, none = 0;
        for (size_t k = a; k < at; k++) {
            size_t e = redact_key_value(in, k, out, 0, &none);
            if (e > stop)
                stop = e;
        }
        const char *colon = memchr(in + a, ':', at - a);
        size_t user = colon ? (size_t)(colon - (in + a)) : 0;
        if (colon && stop == at && plain_name(in + a, user))
            *o = put(out, outlen, *o, in + a, user + 1);
        *o = put(out, outlen, *o, "***", 3);
        return stop; /* at the '@': it and the host are copied by the caller's scan */
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
    if (d - (k + 1) <= 5 && (d == end || (d > k + 1 && url_closed(in + d))))
        return a; /* a port */
    if (plain_name(in + a, k - a))
        *o = put(out, outlen, *o, in + a, k + 1 - a);
    *o = put(out, outlen, *o, "***", 3);
    return tok;
}

/* At in + j, an opening quote: returns the end of the quoted run (past its closing quote, or
 * the end of in). A doubled quote is one quote of the value; escapes: whether a backslash
 * escapes the next character. */
static size_t quoted_run(const char *in, size_t j, int escapes)
{
    char quote = in[j];
    for (j++; in[j]; j++) {
        if (escapes && in[j] == '\\' && in[j + 1]) {
            j++;
        } else if (in[j] == quote) {
            if (in[j + 1] != quote)
                return j + 1;
            j++;
        }
    }
    return j;
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
    /* A query parameter: its name (e.g. sentinel_password) follows a '?' or '&'; its value
     * ends at '&', '#' or whitespace, a quote in it is just a character. */
    size_t k = i;
    while (k > 0 && (isalnum((unsigned char)in[k - 1]) || strchr("_-.", in[k - 1])))
        k--;
    int query = k > 0 && (in[k - 1] == '?' || in[k - 1] == '&');
    if (query) {
        while (in[j] && !space(in[j]) && in[j] != '&' && in[j] != '#')
            j++;
        return j;
    }
    /* Elsewhere a value is a word: unquoted runs (backslash escapes) and quoted runs
     * (backslash escapes, doubled quotes) up to unquoted whitespace; a value that starts
     * with a quoted run also ends at a ',', ';', ')', ']' or '}' right after it (JSON). */
    for (size_t start = j; in[j] && !space(in[j]);) {
        char quote = in[j];
        if (quote != '\'' && quote != '"') {
            j += in[j] == '\\' && in[j + 1] ? 2 : 1;
            continue;
        }
        int first = j == start;
        /* Whether a backslash escapes (conninfo, JSON) or not (SQL), the run reaches at
         * least this far. */
        size_t escaped = quoted_run(in, j, 1), literal = quoted_run(in, j, 0);
        j = escaped > literal ? escaped : literal;
        if (first && in[j] && strchr(",;)]}", in[j]))
            break;
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

/* PostgreSQL adapter: pools of libpq connections that come back idle, with no result pending. */
#include "common.h"

#include <leash/pg.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define PG_CONNECT_TIMEOUT_S 5
#define PG_APP_NAME "leash"
#define PG_RESET_NS 1000000000ull     /* each cleaning step on release: about a second */
#define PG_QUICK_DRAIN_NS 20000000ull /* a query still running gets this long before a cancel */
#define PG_VALIDATE_NS 1000000000ull  /* the empty query of validate */
#define PG_INIT_NS 10000000000ull     /* init_sql on a new connection */
#define PG_MSG_MAX 256
/* A connection back in the pool for less than this is lent without looking at its socket
 * (a poll per borrow is a few percent of a loopback round trip); one idle longer is checked
 * on first use. leash__coarse_ns ticks every few ms, so this means "this tick or the last". */
#define PG_RECHECK_NS 2000000ull

/* The pool's adapter context: the parsed conninfo, ready for PQconnectdbParams. */
typedef struct pg_ctx {
    PQconninfoOption *opts; /* PQconninfoParse's result; keys and vals point into it */
    const char **keys, **vals;
    const char *password; /* for scrubbing messages (points into opts), or NULL */
    char *init_sql, *reset_sql, *app_name;
    char timeout[16];
    char shown[PG_MSG_MAX]; /* password-free description for dumps and errors */
} pg_ctx;

/* One pooled connection. */
typedef struct pg_conn {
    PGconn *conn;
    pg_ctx *ctx;
    int raw;   /* leash_pg() gave the PGconn out, or a helper left a COPY: full check on release */
    int fresh; /* back from the pool: check the socket on first use */
    uint64_t released_ns; /* leash__coarse_ns() at the last release */
} pg_conn;

/* ---- messages ---- */

/* Copies a libpq message to out on one line ("\n\t" -> " ", "\n" -> "; ", trailing
 * whitespace dropped), without URL or key=value passwords and without any copy of the
 * pool's password. */
static void shown(const pg_ctx *ctx, const char *msg, char *out, size_t outlen)
{
    char flat[LEASH_ERR_MAX];
    size_t n = 0;
    if (!msg || !*msg)
        msg = "no message from libpq";
    for (const char *p = msg; *p && n + 3 < sizeof flat; p++) {
        if (*p == '\n' && p[1] == '\t') {
            flat[n++] = ' ';
            p++;
        } else if (*p == '\n') {
            if (p[1]) {
                flat[n++] = ';';
                flat[n++] = ' ';
            }
        } else {
            flat[n++] = *p;
        }
    }
    while (n > 0 && isspace((unsigned char)flat[n - 1]))
        n--;
    flat[n] = '\0';
    leash__redact(flat, out, outlen);
    const char *pw = ctx ? ctx->password : NULL;
    size_t pwlen = pw ? strlen(pw) : 0;
    if (pwlen < 3)
        return;
    for (char *hit = strstr(out, pw); hit; hit = strstr(hit + 3, pw)) {
        memset(hit, '*', 3);
        memmove(hit + 3, hit + pwlen, strlen(hit + pwlen) + 1);
    }
}

/* Parts of conninfo that may hold the password: from the first "password" (any case) to the
 * end, and the password of a URI's user info. Fills up to 2 [start, end) pairs. */
static int secret_regions(const char *conninfo, size_t reg[2][2])
{
    size_t len = strlen(conninfo);
    int n = 0;
    const char *pw = strcasestr(conninfo, "password");
    if (pw) {
        reg[n][0] = (size_t)(pw - conninfo);
        reg[n++][1] = len;
    }
    const char *a = NULL;
    if (strncmp(conninfo, "postgresql://", 13) == 0)
        a = conninfo + 13;
    else if (strncmp(conninfo, "postgres://", 11) == 0)
        a = conninfo + 11;
    if (a) {
        size_t span = strcspn(a, "@/");
        const char *colon = memchr(a, ':', span);
        if (a[span] == '@' && colon) {
            reg[n][0] = (size_t)(colon - conninfo);
            reg[n++][1] = (size_t)(a + span - conninfo);
        }
    }
    return n;
}

/* 1 when frag (len bytes, quoted in a libpq message) can be shown: it occurs in conninfo
 * and no occurrence touches a part that may hold the password. */
static int fragment_safe(const char *conninfo, const char *frag, size_t len)
{
    if (len == 0 || (len == 1 && ispunct((unsigned char)frag[0])))
        return 1;
    size_t reg[2][2];
    int nreg = secret_regions(conninfo, reg);
    size_t total = strlen(conninfo);
    int found = 0;
    for (size_t i = 0; i + len <= total; i++) {
        if (memcmp(conninfo + i, frag, len) != 0)
            continue;
        found = 1;
        for (int r = 0; r < nreg; r++)
            if (i < reg[r][1] && reg[r][0] < i + len)
                return 0;
    }
    return found;
}

/* Rewrites PQconninfoParse's error (which may quote a piece of the password, e.g. a bad
 * percent-escape inside it) so that each quoted fragment that might come from the password
 * is replaced by a note. */
static void parse_error(const char *conninfo, const char *perr, char *out, size_t outlen)
{
    static const char hidden[] = "(hidden: it may hold the password)";
    size_t n = 0;
    if (!perr)
        perr = "out of memory";
    for (const char *p = perr; *p && n + 1 < outlen;) {
        const char *close = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (!close) {
            out[n++] = *p == '\n' ? ' ' : *p;
            p++;
            continue;
        }
        size_t len = (size_t)(close - p - 1);
        if (fragment_safe(conninfo, p + 1, len))
            n += (size_t)snprintf(out + n, outlen - n, "\"%.*s\"", (int)len, p + 1);
        else
            n += (size_t)snprintf(out + n, outlen - n, "%s", hidden);
        if (n >= outlen)
            n = outlen - 1;
        p = close + 1;
    }
    while (n > 0 && isspace((unsigned char)out[n - 1]))
        n--;
    out[n] = '\0';
}

/* Server notices go to the log callback: WARNING and worse at warn, the rest at debug. */
static void notice(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    int level = LEASH_LOG_DEBUG;
    if (sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "ERROR") == 0 ||
                strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        level = LEASH_LOG_WARN;
    char msg[PG_MSG_MAX];
    shown(arg, PQresultErrorMessage(res), msg, sizeof msg);
    leash__log(level, "pg: server says: %s", msg);
}

/* ---- bounded waits ---- */

/* Waits until conn's socket is readable or the deadline (leash__now_ns) passes: 1 readable
 * (or in error: libpq will tell), 0 timed out, -1 no socket. */
static int wait_readable(PGconn *conn, uint64_t deadline)
{
    int fd = PQsocket(conn);
    if (fd < 0)
        return -1;
    for (;;) {
        uint64_t now = leash__now_ns();
        int ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r == 0 && ms == 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* 1 when conn's socket has something to read right now (one poll, no wait). */
static int readable_now(PGconn *conn)
{
    int fd = PQsocket(conn);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return fd < 0 || poll(&p, 1, 0) != 0;
}

/* For an idle connection whose socket is readable: reads what is there (a terminated
 * backend's last message, then the end of the stream, take two reads). Returns 0 when the
 * connection is still good, -1 when it is dead. */
static int read_idle(PGconn *conn)
{
    for (int i = 0; i < 4; i++) {
        if (!PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK)
            return -1;
        if (!readable_now(conn))
            return 0;
    }
    return -1; /* nobody should be talking to an idle connection this much */
}

enum { DRAIN_OK, DRAIN_TIMEOUT, DRAIN_FAILED };

/* Reads and drops every pending result until libpq is idle again, waiting no later than
 * deadline. A COPY FROM STDIN is ended with an error; a COPY TO STDOUT is not drained
 * (DRAIN_FAILED: destroy). *sql_error is set when a result was an error. */
static int drain(PGconn *conn, uint64_t deadline, int *sql_error)
{
    for (;;) {
        if (!PQconsumeInput(conn))
            return DRAIN_FAILED;
        while (PQisBusy(conn)) {
            int r = wait_readable(conn, deadline);
            if (r == 0)
                return DRAIN_TIMEOUT;
            if (r < 0 || !PQconsumeInput(conn))
                return DRAIN_FAILED;
        }
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_FATAL_ERROR)
            *sql_error = 1;
        if (st == PGRES_COPY_IN) {
            if (PQputCopyEnd(conn, "leash: the connection was released during COPY") != 1)
                return DRAIN_FAILED;
        } else if (st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            return DRAIN_FAILED;
        }
    }
    return PQstatus(conn) == CONNECTION_OK ? DRAIN_OK : DRAIN_FAILED;
}

/* Runs sql (simple protocol, so it works behind pgbouncer) waiting no later than deadline:
 * 0 done, 1 SQL error, -1 connection failure or timeout (the connection is then unusable). */
static int run(PGconn *conn, const char *sql, uint64_t deadline)
{
    int sql_error = 0;
    if (!PQsendQuery(conn, sql) || drain(conn, deadline, &sql_error) != DRAIN_OK)
        return -1;
    return sql_error;
}

/* ---- connections ---- */

/* What every new (or re-made) connection gets: close-on-exec socket, notices to the log,
 * init_sql. Returns 0, or -1 with a message in err. */
static int setup(pg_conn *c, char *err, size_t errlen)
{
    int fd = PQsocket(c->conn);
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0 && !(fl & FD_CLOEXEC))
            fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    }
    PQsetNoticeReceiver(c->conn, notice, c->ctx);
    if (c->ctx && c->ctx->init_sql &&
        run(c->conn, c->ctx->init_sql, leash__now_ns() + PG_INIT_NS) != 0) {
        char msg[PG_MSG_MAX];
        shown(c->ctx, PQerrorMessage(c->conn), msg, sizeof msg);
        snprintf(err, errlen, "init_sql failed: %s", msg);
        return -1;
    }
    return 0;
}

static void *pg_connect(void *arg, const char *target, char *err, size_t errlen)
{
    pg_ctx *ctx = arg;
    PGconn *conn =
        ctx ? PQconnectdbParams(ctx->keys, ctx->vals, 0) : PQconnectdb(target ? target : "");
    if (!conn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        shown(ctx, PQerrorMessage(conn), err, errlen);
        PQfinish(conn);
        return NULL;
    }
    pg_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        PQfinish(conn);
        return NULL;
    }
    c->conn = conn;
    c->ctx = ctx;
    if (setup(c, err, errlen) != 0) {
        PQfinish(conn);
        free(c);
        return NULL;
    }
    return c;
}

/* Alive and idle: no error on the socket, and the server answers an empty query. A socket
 * readable while idle is suspect (a terminated backend leaves its last words there while
 * PQstatus still says OK), so read it first. */
static int pg_validate(void *arg, void *conn)
{
    pg_conn *c = conn;
    if (PQstatus(c->conn) != CONNECTION_OK || PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        return -1;
    if (readable_now(c->conn) && read_idle(c->conn) != 0)
        return -1;
    return run(c->conn, "", leash__now_ns() + PG_VALIDATE_NS) == 0 ? 0 : -1;
}

/* The full check for a PGconn the borrower used directly: leaves no query running, no
 * result pending, blocking mode. Returns 0, or LEASH_RESET_DIRTY / LEASH_RESET_BROKEN. */
static int reset_raw(pg_conn *c, int *dirty)
{
    PGconn *conn = c->conn;
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF) {
        *dirty = 1;
        return LEASH_RESET_DIRTY;
    }
    if (PQisnonblocking(conn)) {
        *dirty = 1;
        if (PQsetnonblocking(conn, 0) != 0)
            return LEASH_RESET_DIRTY;
    }
    if (PQtransactionStatus(conn) == PQTRANS_ACTIVE) {
        /* Results left unread, or a query still running: take what is there, give a
         * running query a moment, then cancel it; never wait more than about a second. */
        int sql_error = 0;
        *dirty = 1;
        int r = drain(conn, leash__now_ns() + PG_QUICK_DRAIN_NS, &sql_error);
        if (r == DRAIN_TIMEOUT) {
            PGcancel *cancel = PQgetCancel(conn);
            char buf[PG_MSG_MAX];
            if (cancel) {
                PQcancel(cancel, buf, sizeof buf);
                PQfreeCancel(cancel);
            }
            r = drain(conn, leash__now_ns() + PG_RESET_NS, &sql_error);
        }
        if (r != DRAIN_OK)
            return PQstatus(conn) == CONNECTION_OK ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
    } else if (readable_now(conn) && read_idle(conn) != 0) {
        return LEASH_RESET_BROKEN;
    }
    PGnotify *note;
    while ((note = PQnotifies(conn)) != NULL)
        PQfreemem(note);
    return 0;
}

/* On release. A borrower who used only leash_pg_exec/leash_pg_params left every result read
 * (PQexec reads them all), so the check is local: PQstatus and PQtransactionStatus, no
 * system call. A raw borrow gets reset_raw first. An open or failed transaction is rolled
 * back (dirty); then the optional reset_sql and init_sql. */
static int pg_reset(void *arg, void *conn)
{
    pg_ctx *ctx = arg;
    pg_conn *c = conn;
    int dirty = 0;
    c->fresh = 1;
    c->released_ns = leash__coarse_ns();
    if (LEASH_UNLIKELY(PQstatus(c->conn) != CONNECTION_OK))
        return LEASH_RESET_BROKEN;
    if (LEASH_UNLIKELY(c->raw)) {
        c->raw = 0;
        int r = reset_raw(c, &dirty);
        if (r != 0)
            return r;
    }
    PGTransactionStatusType tx = PQtransactionStatus(c->conn);
    if (LEASH_UNLIKELY(tx != PQTRANS_IDLE)) {
        if (tx != PQTRANS_INTRANS && tx != PQTRANS_INERROR)
            return LEASH_RESET_BROKEN;
        dirty = 1;
        if (run(c->conn, "ROLLBACK", leash__now_ns() + PG_RESET_NS) != 0 ||
            PQtransactionStatus(c->conn) != PQTRANS_IDLE)
            return PQstatus(c->conn) == CONNECTION_OK ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
    }
    if (ctx && ctx->reset_sql) {
        char err[PG_MSG_MAX];
        int r = run(c->conn, ctx->reset_sql, leash__now_ns() + PG_RESET_NS);
        if (r == 0 && setup(c, err, sizeof err) != 0)
            r = 1;
        if (r != 0) {
            /* Routine cleaning failed: not the borrower's doing, so broken, not dirty. */
            char msg[PG_MSG_MAX];
            shown(ctx, PQerrorMessage(c->conn), msg, sizeof msg);
            leash__log(LEASH_LOG_WARN, "pg: reset_sql failed, connection dropped: %s", msg);
            return dirty ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
        }
    }
    return dirty ? LEASH_RESET_CLEANED : LEASH_RESET_CLEAN;
}

static void pg_destroy(void *arg, void *conn)
{
    pg_conn *c = conn;
    PQfinish(c->conn);
    free(c);
}

/* In a forked child the socket is the parent's too, and PQfinish would send Terminate on it
 * (ending the parent's session). Point the descriptor at /dev/null first, so libpq's goodbye
 * (or a TLS close_notify) goes nowhere and its close() drops only our copy. */
static void pg_abandon(void *arg, void *conn)
{
    pg_conn *c = conn;
    int fd = PQsocket(c->conn);
    if (fd >= 0) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null < 0 || dup2(null, fd) < 0) {
            /* Cannot make it safe: leak the PGconn rather than speak on the wire. */
            if (null >= 0)
                close(null);
            free(c);
            return;
        }
        close(null);
    }
    pg_destroy(arg, conn);
}

static void pg_describe(void *arg, const char *target, char *out, size_t outlen)
{
    pg_ctx *ctx = arg;
    if (ctx)
        snprintf(out, outlen, "%s", ctx->shown);
    else
        leash__redact(target ? target : "", out, outlen);
}

static void ctx_free(void *arg)
{
    pg_ctx *ctx = arg;
    if (!ctx)
        return;
    PQconninfoFree(ctx->opts);
    free(ctx->keys);
    free(ctx->vals);
    free(ctx->init_sql);
    free(ctx->reset_sql);
    free(ctx->app_name);
    free(ctx);
}

const leash_adapter leash_pg_adapter = {
    .kind = "pg",
    .connect = pg_connect,
    .validate = pg_validate,
    .reset = pg_reset,
    .destroy = pg_destroy,
    .abandon = pg_abandon,
    .describe = pg_describe,
    .ctx_free = ctx_free,
};

/* ---- pools ---- */

static const char *opt_val(const PQconninfoOption *o, const char *key)
{
    for (; o->keyword; o++)
        if (strcmp(o->keyword, key) == 0)
            return o->val;
    return NULL;
}

/* port: a comma-separated list of numbers 1..65535 (an empty item means the default). */
static int ports_ok(const char *ports)
{
    const char *p = ports;
    while (*p) {
        long v = 0;
        const char *start = p;
        while (isdigit((unsigned char)*p) && v <= 65535)
            v = v * 10 + (*p++ - '0');
        if (p != start && (v < 1 || v > 65535))
            return 0;
        if (*p == ',')
            p++;
        else if (*p)
            return 0;
    }
    return 1;
}

static char *dup_opt(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

/* Builds the pool context from conninfo and the options; NULL with the failure recorded. */
static pg_ctx *ctx_new(const char *name, const char *conninfo, const leash_pg_options *o)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        char msg[LEASH_ERR_MAX / 2];
        parse_error(conninfo, perr, msg, sizeof msg);
        PQfreemem(perr);
        return leash__fail_null(LEASH_EINVAL, "pg pool \"%s\": malformed conninfo: %s",
                                name ? name : "", msg);
    }
    const char *port = opt_val(opts, "port");
    if (port && !ports_ok(port)) {
        leash__fail(LEASH_EINVAL,
                    "pg pool \"%s\": malformed conninfo: port \"%.40s\" is not a list of "
                    "numbers 1..65535",
                    name ? name : "", port);
        PQconninfoFree(opts);
        return NULL;
    }
    pg_ctx *ctx = calloc(1, sizeof *ctx);
    size_t n = 0;
    for (const PQconninfoOption *p = opts; p->keyword; p++)
        n++;
    int oom = !ctx;
    if (ctx) {
        ctx->opts = opts;
        ctx->keys = calloc(n + 3, sizeof *ctx->keys);
        ctx->vals = calloc(n + 3, sizeof *ctx->vals);
        ctx->init_sql = dup_opt(o->init_sql, &oom);
        ctx->reset_sql = dup_opt(o->reset_sql, &oom);
        ctx->app_name = dup_opt(o->application_name ? o->application_name : PG_APP_NAME, &oom);
        oom |= !ctx->keys || !ctx->vals;
    }
    if (oom) {
        if (ctx)
            ctx_free(ctx);
        else
            PQconninfoFree(opts);
        return leash__fail_null(LEASH_ENOMEM, "pg pool \"%s\": out of memory", name);
    }
    size_t k = 0;
    for (const PQconninfoOption *p = opts; p->keyword; p++) {
        if (!p->val)
            continue;
        ctx->keys[k] = p->keyword;
        ctx->vals[k++] = p->val;
    }
    if (!opt_val(opts, "application_name") && !opt_val(opts, "fallback_application_name")) {
        ctx->keys[k] = "fallback_application_name";
        ctx->vals[k++] = ctx->app_name;
    }
    if (!opt_val(opts, "connect_timeout")) {
        snprintf(ctx->timeout, sizeof ctx->timeout, "%d",
                 o->connect_timeout_s > 0 ? o->connect_timeout_s : PG_CONNECT_TIMEOUT_S);
        ctx->keys[k] = "connect_timeout";
        ctx->vals[k++] = ctx->timeout;
    }
    ctx->password = opt_val(opts, "password");

    static const char *const show[] = {"host", "hostaddr", "port", "dbname", "user"};
    size_t len = 0;
    for (size_t i = 0; i < sizeof show / sizeof show[0] && len < sizeof ctx->shown; i++) {
        const char *v = opt_val(opts, show[i]);
        if (v)
            len += (size_t)snprintf(ctx->shown + len, sizeof ctx->shown - len, "%s%s=%s",
                                    len ? " " : "", show[i], v);
    }
    if (len == 0)
        snprintf(ctx->shown, sizeof ctx->shown, "(libpq defaults)");
    return ctx;
}

leash_pool *leash_pg_pool_with(const char *name, const char *conninfo,
                               const leash_pool_options *opts, const leash_pg_options *pg)
{
    static const leash_pg_options defaults = {0};
    if (leash__ensure_init() != LEASH_OK)
        return NULL;
    if (!conninfo)
        return leash__fail_null(LEASH_EINVAL, "pg pool \"%s\": conninfo is NULL", name ? name : "");
    if (pg && pg->connect_timeout_s < 0)
        return leash__fail_null(LEASH_EINVAL,
                                "pg pool \"%s\": connect_timeout_s is %d: must be >= 0",
                                name ? name : "", pg->connect_timeout_s);
    pg_ctx *ctx = ctx_new(name, conninfo, pg ? pg : &defaults);
    if (!ctx)
        return NULL;
    return leash_pool_open_with(name, &leash_pg_adapter, ctx, conninfo, opts);
}

leash_pool *leash_pg_pool(const char *name, const char *conninfo, const leash_pool_options *opts)
{
    return leash_pg_pool_with(name, conninfo, opts, NULL);
}

/* ---- borrowers ---- */

/* h's connection, or NULL with LEASH_EINVAL. */
static pg_conn *held(leash_handle *h, const char *fn)
{
    return leash__held_conn(h, &leash_pg_adapter, fn, "PostgreSQL");
}

/* First use since the pool lent it: a connection that died while idle (backend terminated,
 * server restarted) still says CONNECTION_OK, but its socket is readable (checked when it
 * was idle more than PG_RECHECK_NS). Nothing of the
 * borrower's is on it yet, so make it again in place (same PGconn). Returns 0, or -1 with
 * h marked broken and the failure recorded. */
static int first_use(leash_handle *h, pg_conn *c, const char *fn)
{
    c->fresh = 0;
    if (LEASH_LIKELY(
            PQstatus(c->conn) == CONNECTION_OK &&
            (leash__coarse_ns() - c->released_ns < PG_RECHECK_NS || !readable_now(c->conn))))
        return 0;
    if (PQstatus(c->conn) == CONNECTION_OK && read_idle(c->conn) == 0)
        return 0; /* a notification or parameter change, nothing wrong */
    char err[PG_MSG_MAX];
    PQreset(c->conn);
    if (PQstatus(c->conn) == CONNECTION_OK && setup(c, err, sizeof err) == 0) {
        leash__log(LEASH_LOG_INFO, "pg: a pooled connection (%s) died while idle; reconnected",
                   c->ctx ? c->ctx->shown : "?");
        return 0;
    }
    if (PQstatus(c->conn) != CONNECTION_OK)
        shown(c->ctx, PQerrorMessage(c->conn), err, sizeof err);
    leash_mark_broken(h);
    leash__fail(LEASH_EIO, "%s: the connection died while idle and reconnecting failed: %s", fn,
                err);
    return -1;
}

/* A result from PQexec*: returned as is unless the connection failed (then NULL, LEASH_EIO,
 * h marked broken). */
static PGresult *finish(leash_handle *h, pg_conn *c, PGresult *res, const char *fn)
{
    if (LEASH_LIKELY(res && PQstatus(c->conn) == CONNECTION_OK)) {
        ExecStatusType st = PQresultStatus(res);
        if (LEASH_UNLIKELY(st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH))
            c->raw = 1; /* the borrower drives the COPY through leash_pg(): full check */
        return res;
    }
    char msg[PG_MSG_MAX];
    const char *m = res ? PQresultErrorMessage(res) : "";
    shown(c->ctx, *m ? m : PQerrorMessage(c->conn), msg, sizeof msg);
    PQclear(res);
    leash_mark_broken(h);
    return leash__fail_null(LEASH_EIO, "%s: connection failed: %s", fn, msg);
}

PGconn *leash_pg(leash_handle *h)
{
    pg_conn *c = held(h, "leash_pg");
    if (!c)
        return NULL;
    c->raw = 1;
    if (c->fresh)
        first_use(h, c, "leash_pg");
    return c->conn;
}

PGresult *leash_pg_exec(leash_handle *h, const char *sql)
{
    pg_conn *c = held(h, "leash_pg_exec");
    if (!c)
        return NULL;
    if (!sql)
        return leash__fail_null(LEASH_EINVAL, "leash_pg_exec: sql is NULL");
    if (c->fresh && first_use(h, c, "leash_pg_exec") != 0)
        return NULL;
    return finish(h, c, PQexec(c->conn, sql), "leash_pg_exec");
}

PGresult *leash_pg_params(leash_handle *h, const char *sql, int nparams, const char *const *values)
{
    pg_conn *c = held(h, "leash_pg_params");
    if (!c)
        return NULL;
    if (!sql)
        return leash__fail_null(LEASH_EINVAL, "leash_pg_params: sql is NULL");
    if (nparams < 0 || nparams > 65535 || (nparams > 0 && !values))
        return leash__fail_null(LEASH_EINVAL,
                                "leash_pg_params: nparams is %d with values %s (need 0..65535 "
                                "and values for each)",
                                nparams, values ? "set" : "NULL");
    if (c->fresh && first_use(h, c, "leash_pg_params") != 0)
        return NULL;
    /* The unnamed statement: no server-side state survives the call (pgbouncer-safe). */
    return finish(h, c, PQexecParams(c->conn, sql, nparams, NULL, values, NULL, NULL, 0),
                  "leash_pg_params");
}

void leash__result_clear(PGresult **r)
{
    if (r && *r) {
        PQclear(*r);
        *r = NULL;
    }
}

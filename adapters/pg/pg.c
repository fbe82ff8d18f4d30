/* PostgreSQL adapter: pools of libpq connections that come back idle, with no result pending,
 * and keep the conninfo's target_session_attrs for their whole life. */
#include "pg-int.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PG_APP_NAME "leash"
#define PG_RESET_NS 1000000000ull      /* a release waits about this long at most */
#define PG_QUICK_DRAIN_NS 20000000ull  /* a query still running gets this long before a cancel */
#define PG_CANCEL_WAIT_NS 500000000ull /* for a cancel request to reach the server */
#define PG_VALIDATE_MS 1000            /* the validation query */
/* A connection back in the pool for less than this is lent without looking at its socket
 * (a poll per borrow is a few percent of a loopback round trip); one idle longer is checked
 * on first use. leash__coarse_ns ticks every few ms, so this means "this tick or the last". */
#define PG_RECHECK_NS 2000000ull

/* The pool's adapter context. */
typedef struct pg_ctx {
    pg_target *target; /* what later connects use (one reference); under targets_lock */
    char name[LEASH_NAME_MAX + 1];
    char *init_sql, *reset_sql, *app_name;
    int connect_timeout_s;
    int command_timeout_ms;     /* -1: none */
    _Atomic(leash_pool *) pool; /* between attach and detach */
} pg_ctx;

/* One pooled connection. Only the thread that holds it (a borrower, or the core while it
 * validates or resets it) touches it, the notice receiver included. */
typedef struct pg_conn {
    PGconn *conn;
    pg_ctx *ctx;
    pg_target *target;    /* the conninfo it was made from (a reference) */
    int host;             /* its entry in target->hosts */
    int fallback;         /* prefer-standby: made when no standby would take it */
    int raw;              /* leash_pg() gave the PGconn out, or a helper left a COPY */
    int fresh;            /* back from the pool: check the socket on first use */
    int doomed;           /* the server said 57P01/57P02/57P03: it is going away */
    int misfit;           /* no longer keeps target_session_attrs: dropped on release */
    uint64_t released_ns; /* leash__coarse_ns() at the last release */
    pg_watch watch;       /* the statement watchdog's view of it */
    PGcancel *cancel;     /* made at connect: a statement that timed out has no socket left */
    char peer[PG_PEER_MAX];
} pg_conn;

/* Every pool context's target pointer. One lock for the adapter, so the fork hooks can hold
 * it across fork() (a child never inherits it locked). Held only to read or swap a pointer
 * and count a reference. */
static pthread_mutex_t targets_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *pool_name(const pg_ctx *ctx)
{
    return ctx ? ctx->name : "";
}

static int is_shutdown_state(const char *s)
{
    return s && (strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0);
}

/* Server notices go to the log callback: WARNING and worse at warn, the rest at debug. One
 * saying the server is going away (57P01 admin shutdown, 57P02 crash, 57P03 cannot connect
 * now: an immediate shutdown's comes as a notice) dooms the connection. */
static void notice(void *arg, const PGresult *res)
{
    pg_conn *c = arg;
    if (is_shutdown_state(PQresultErrorField(res, PG_DIAG_SQLSTATE)))
        c->doomed = 1;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    int level = LEASH_LOG_DEBUG;
    if (sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "ERROR") == 0 ||
                strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        level = LEASH_LOG_WARN;
    char msg[PG_MSG_MAX];
    pg__shown(c->target->password, PQresultErrorMessage(res), 0, msg, sizeof msg);
    leash__log(level, "pg pool \"%s\": server %s says: %s", pool_name(c->ctx), c->peer, msg);
}

/* ---- connections ---- */

/* ctx's current target, with a reference for the caller. */
static pg_target *ctx_target(pg_ctx *ctx)
{
    pthread_mutex_lock(&targets_lock);
    pg_target *t = ctx->target;
    /* relaxed: targets_lock orders it against the swap in pg_retarget */
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&targets_lock);
    return t;
}

/* What every new (or re-made) connection gets: close-on-exec socket, notices to the log,
 * init_sql (bounded by the connect timeout). Returns 0, or -1 with a message in err. */
static int setup(pg_conn *c, char *err, size_t errlen)
{
    int fd = PQsocket(c->conn);
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0 && !(fl & FD_CLOEXEC))
            fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    }
    PQsetNoticeReceiver(c->conn, notice, c);
    uint64_t deadline = leash__now_ns() + (uint64_t)c->target->connect_timeout_ms * 1000000ull;
    if (c->ctx && c->ctx->init_sql && pg__run(c->conn, c->ctx->init_sql, deadline) != 0) {
        char msg[PG_MSG_MAX];
        pg__shown(c->target->password, PQerrorMessage(c->conn), 0, msg, sizeof msg);
        snprintf(err, errlen, "init_sql failed on %s: %s", c->peer, msg);
        return -1;
    }
    return 0;
}

/* "host:port" of the server conn is on ("[v6]:port" for an IPv6 address). */
static void peer_of(PGconn *conn, char *out, size_t outlen)
{
    const char *host = PQhost(conn), *port = PQport(conn);
    if (!host)
        host = "";
    if (!port || !*port)
        port = "5432";
    if (strchr(host, ':') && host[0] != '/')
        snprintf(out, outlen, "[%s]:%s", host, port);
    else
        snprintf(out, outlen, "%s:%s", host, port);
}

static pg_tsa effective_tsa(const pg_target *t, int fallback);
static int role_fits(PGconn *conn, pg_tsa tsa, int timeout_ms);

/* Connects to t's host i for one pass. libpq checks target_session_attrs itself, from what
 * the server reported at login where it can; behind a pooler such as pgbouncer that report
 * may be stale (it keeps what its own server connection was told), so leash asks once more
 * with a query before it trusts the connection. NULL with a message in err. */
static PGconn *connect_fit(const pg_target *t, int i, int fallback, char *err, size_t errlen)
{
    pg_tsa tsa = effective_tsa(t, fallback);
    PGconn *conn = pg__connect_host(t, i, pg__tsa_name(tsa), err, errlen);
    if (!conn || tsa == PG_TSA_ANY)
        return conn;
    int r = role_fits(conn, tsa, t->connect_timeout_ms);
    if (r > 0)
        return conn;
    if (r == 0)
        snprintf(err, errlen,
                 "connection to server at \"%s\", port %s failed: not %s when asked after "
                 "login",
                 PQhost(conn), PQport(conn), pg__tsa_name(tsa));
    else
        pg__shown(t->password, PQerrorMessage(conn), 1, err, errlen);
    PQfinish(conn);
    return NULL;
}

/* Wraps a new PGconn; takes t's reference. NULL with a message in err on failure. */
static pg_conn *made(pg_ctx *ctx, pg_target *t, PGconn *conn, int host, int fallback, char *err,
                     size_t errlen)
{
    pg_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        PQfinish(conn);
        pg__target_put(t);
        return NULL;
    }
    c->conn = conn;
    c->ctx = ctx;
    c->target = t;
    c->host = host;
    c->fallback = fallback;
    peer_of(conn, c->peer, sizeof c->peer);
    pg__watch_add(&c->watch, PQsocket(conn));
    c->cancel = PQgetCancel(conn);
    if (setup(c, err, errlen) != 0) {
        pg__watch_remove(&c->watch);
        PQfreeCancel(c->cancel);
        PQfinish(conn);
        pg__target_put(t);
        free(c);
        return NULL;
    }
    return c;
}

/* Tries the hosts in the conninfo's order, each bounded by the connect timeout, with libpq
 * checking target_session_attrs on each; prefer-standby first asks every host for a standby,
 * then takes any (as libpq does). */
static void *pg_connect(void *arg, const char *target, char *err, size_t errlen)
{
    pg_ctx *ctx = arg;
    pg_target *t;
    if (ctx) {
        t = ctx_target(ctx);
    } else { /* the table used without leash_pg_pool: parse the target each time */
        leash_status st;
        pg_defaults d = {.app_name = PG_APP_NAME};
        t = pg__target_new(target ? target : "", &d, &st, err, errlen);
        if (!t)
            return NULL;
    }
    int passes = t->tsa == PG_TSA_PREFER_STANDBY ? 2 : 1;
    size_t used = 0;
    err[0] = '\0';
    for (int pass = 0; pass < passes; pass++) {
        for (int i = 0; i < t->nhosts; i++) {
            char e[PG_MSG_MAX];
            PGconn *conn = connect_fit(t, i, pass == 1, e, sizeof e);
            if (conn)
                return made(ctx, t, conn, i, pass == 1, err, errlen);
            if (used + 1 < errlen) {
                int w = snprintf(err + used, errlen - used, "%s%s", used ? "; " : "", e);
                used += w > 0 ? (size_t)w : 0;
            }
        }
    }
    pg__target_put(t);
    return NULL;
}

/* Makes c again in place, on the same server (so it keeps its peer). 0, or -1 with a message
 * in err (c->conn is then the failed connection: destroy c). */
static int reconnect(pg_conn *c, char *err, size_t errlen)
{
    PGconn *conn = connect_fit(c->target, c->host, c->fallback, err, errlen);
    if (!conn)
        return -1;
    pg__watch_remove(&c->watch);
    PQfreeCancel(c->cancel);
    PQfinish(c->conn);
    c->conn = conn;
    c->doomed = 0;
    pg__watch_add(&c->watch, PQsocket(conn));
    c->cancel = PQgetCancel(conn);
    return setup(c, err, errlen);
}

/* ---- does it still keep target_session_attrs? ---- */

/* From what the server reports by itself (in_hot_standby, default_transaction_read_only, sent
 * with each change by PostgreSQL 14 and later): 1 when c is on a server that no longer fits
 * the pool's target_session_attrs. No system call. */
static int reported_misfit(const pg_conn *c)
{
    const char *hs = PQparameterStatus(c->conn, "in_hot_standby");
    const char *ro = PQparameterStatus(c->conn, "default_transaction_read_only");
    int standby = hs && strcmp(hs, "on") == 0, primary = hs && strcmp(hs, "off") == 0;
    int ro_on = ro && strcmp(ro, "on") == 0;
    switch (c->target->tsa) {
    case PG_TSA_READ_WRITE:
        return standby || ro_on;
    case PG_TSA_READ_ONLY:
        return primary && ro && !ro_on;
    case PG_TSA_PRIMARY:
        return standby;
    case PG_TSA_STANDBY:
        return primary;
    case PG_TSA_PREFER_STANDBY:
        return primary && !c->fallback;
    case PG_TSA_ANY:
        break;
    }
    return 0;
}

/* The target_session_attrs a connection made in this pass must keep: prefer-standby is
 * standby in its first pass and any in its fallback. */
static pg_tsa effective_tsa(const pg_target *t, int fallback)
{
    if (t->tsa == PG_TSA_PREFER_STANDBY)
        return fallback ? PG_TSA_ANY : PG_TSA_STANDBY;
    return t->tsa;
}

/* Asks the server libpq's own questions for tsa (never PG_TSA_PREFER_STANDBY), waiting
 * timeout_ms at most: 1 fits, 0 does not, -1 no answer. For "any", an empty query. */
static int role_fits(PGconn *conn, pg_tsa tsa, int timeout_ms)
{
    if (tsa == PG_TSA_ANY)
        return pg__run(conn, "", leash__now_ns() + (uint64_t)timeout_ms * 1000000ull) == 0 ? 1 : -1;
    const char *q = tsa == PG_TSA_READ_WRITE || tsa == PG_TSA_READ_ONLY
                        ? "SHOW transaction_read_only"
                        : "SELECT pg_is_in_recovery()";
    char v[16];
    if (pg__ask(conn, q, timeout_ms, v, sizeof v) != 0)
        return -1;
    int yes = strcmp(v, "on") == 0 || strcmp(v, "t") == 0; /* read-only / in recovery */
    return tsa == PG_TSA_READ_WRITE || tsa == PG_TSA_PRIMARY ? !yes : yes;
}

enum { FITS = 0, DEAD = -1, MISFIT = -2 };

static int check(pg_conn *c)
{
    if (PQstatus(c->conn) != CONNECTION_OK || PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        return DEAD;
    /* A socket readable while idle is suspect (a terminated backend leaves its last words
     * there while PQstatus still says OK), so read it first. */
    if (pg__readable_now(c->conn) && pg__read_idle(c->conn) != 0)
        return DEAD;
    if (c->doomed)
        return DEAD;
    int r = role_fits(c->conn, effective_tsa(c->target, c->fallback), PG_VALIDATE_MS);
    if (r < 0 || c->doomed)
        return DEAD;
    return r ? FITS : MISFIT;
}

static void log_misfit(const pg_conn *c)
{
    leash__log(LEASH_LOG_INFO,
               "pg pool \"%s\": the connection to %s no longer keeps target_session_attrs=%s (the "
               "server changed role): retired",
               pool_name(c->ctx), c->peer, pg__tsa_name(c->target->tsa));
}

/* Alive, idle, and still on a server that keeps target_session_attrs. A connection that fails
 * gets the pool's other idle connections to the same server checked before they are lent. */
static int pg_validate(void *arg, void *conn)
{
    pg_conn *c = conn;
    int r = check(c);
    if (r == FITS)
        return 0;
    if (r == MISFIT)
        log_misfit(c);
    leash_pool *pool = c->ctx ? atomic_load(&c->ctx->pool) : NULL;
    if (pool)
        leash_pool_check_peer(pool, c->peer);
    return -1;
}

/* ---- release ---- */

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
        /* Results left unread, or a query still running: take what is there, give a running
         * query a moment, then cancel it (the request itself bounded: the server may be
         * paused); never wait more than about a second. */
        uint64_t end = leash__now_ns() + PG_RESET_NS;
        int sql_error = 0;
        *dirty = 1;
        int r = pg__drain(conn, leash__now_ns() + PG_QUICK_DRAIN_NS, &sql_error);
        if (r == PG_DRAIN_TIMEOUT) {
            uint64_t wait = leash__now_ns() + PG_CANCEL_WAIT_NS;
            r = pg__cancel(conn, c->ctx, wait < end ? wait : end) ? pg__drain(conn, end, &sql_error)
                                                                  : PG_DRAIN_FAILED;
        }
        if (r != PG_DRAIN_OK)
            return PQstatus(conn) == CONNECTION_OK ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
    } else if (pg__readable_now(conn) && pg__read_idle(conn) != 0) {
        return LEASH_RESET_BROKEN;
    }
    PGnotify *note;
    while ((note = PQnotifies(conn)) != NULL)
        PQfreemem(note);
    if (c->target->tsa != PG_TSA_ANY && reported_misfit(c)) {
        log_misfit(c);
        return LEASH_RESET_BROKEN;
    }
    return 0;
}

/* On release. A borrower who used only leash_pg_exec/leash_pg_params left every result read,
 * so the check is local: PQstatus and PQtransactionStatus, no system call. A raw borrow gets
 * reset_raw first. An open or failed transaction is rolled back (dirty); then the optional
 * reset_sql and init_sql. */
static int pg_reset(void *arg, void *conn)
{
    pg_ctx *ctx = arg;
    pg_conn *c = conn;
    int dirty = 0;
    c->fresh = 1;
    c->released_ns = leash__coarse_ns();
    if (LEASH_UNLIKELY(PQstatus(c->conn) != CONNECTION_OK || c->doomed || c->misfit)) {
        /* Dead (a raw borrower met it), or going away: the other idle ones to the same
         * server are checked before they are lent. */
        leash_pool *pool = ctx ? atomic_load(&ctx->pool) : NULL;
        if (pool && !c->misfit)
            leash_pool_check_peer(pool, c->peer);
        return LEASH_RESET_BROKEN;
    }
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
        if (pg__run(c->conn, "ROLLBACK", leash__now_ns() + PG_RESET_NS) != 0 ||
            PQtransactionStatus(c->conn) != PQTRANS_IDLE)
            return PQstatus(c->conn) == CONNECTION_OK ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
    }
    if (ctx && ctx->reset_sql) {
        char err[PG_MSG_MAX];
        int r = pg__run(c->conn, ctx->reset_sql, leash__now_ns() + PG_RESET_NS);
        if (r == 0 && setup(c, err, sizeof err) != 0)
            r = 1;
        if (r != 0) {
            /* Routine cleaning failed: not the borrower's doing, so broken, not dirty. */
            char msg[PG_MSG_MAX];
            pg__shown(c->target->password, PQerrorMessage(c->conn), 0, msg, sizeof msg);
            leash__log(LEASH_LOG_WARN, "pg pool \"%s\": reset_sql failed, connection dropped: %s",
                       pool_name(ctx), msg);
            return dirty ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
        }
    }
    return dirty ? LEASH_RESET_CLEANED : LEASH_RESET_CLEAN;
}

static void pg_destroy(void *arg, void *conn)
{
    pg_conn *c = conn;
    pg__watch_remove(&c->watch);
    PQfreeCancel(c->cancel);
    PQfinish(c->conn);
    pg__target_put(c->target);
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
            pg__watch_remove(&c->watch); /* closes only the child's copy of a descriptor */
            PQfreeCancel(c->cancel);
            pg__target_put(c->target);
            free(c);
            return;
        }
        close(null);
    }
    pg_destroy(arg, conn);
}

/* ---- the rest of the adapter table ---- */

static void pg_describe(void *arg, const char *target, char *out, size_t outlen)
{
    pg__describe(target, out, outlen);
}

static void pg_peer(void *arg, void *conn, char *out, size_t outlen)
{
    const pg_conn *c = conn;
    snprintf(out, outlen, "%s", c->peer);
}

/* leash_pool_retarget: the new conninfo gets every check of leash_pg_pool, then later
 * connects use it; a connect in flight keeps the target it started with (a reference). */
static int pg_retarget(void *arg, const char *target, char *err, size_t errlen)
{
    pg_ctx *ctx = arg;
    leash_status st;
    pg_defaults d = {.app_name = ctx ? ctx->app_name : PG_APP_NAME,
                     .connect_timeout_s = ctx ? ctx->connect_timeout_s : 0};
    pg_target *t = pg__target_new(target ? target : "", &d, &st, err, errlen);
    if (!t)
        return -1;
    if (!ctx) {
        pg__target_put(t);
        return 0;
    }
    pthread_mutex_lock(&targets_lock);
    pg_target *old = ctx->target;
    ctx->target = t;
    pthread_mutex_unlock(&targets_lock);
    pg__target_put(old);
    return 0;
}

static void pg_attach(void *arg, leash_pool *pool)
{
    pg_ctx *ctx = arg;
    if (!ctx)
        return;
    atomic_store(&ctx->pool, pool);
    pg__watch_start();
}

/* The pool closes: its cancel threads are joined (each bounded by its give-up time, about a
 * second after it started), and the watchdog with the last pool. */
static void pg_detach(void *arg)
{
    pg_ctx *ctx = arg;
    pg__cancel_join(ctx);
    if (!ctx)
        return;
    atomic_store(&ctx->pool, NULL);
    pg__watch_stop();
}

/* Lock order: targets_lock, then the watchdog's, then the cancel registry's. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&targets_lock);
    pg__watch_fork_prepare();
    pg__cancel_fork_prepare();
}

static void fork_parent(void)
{
    pg__cancel_fork_parent();
    pg__watch_fork_parent();
    pthread_mutex_unlock(&targets_lock);
}

static void fork_child(void)
{
    pg__cancel_fork_child();
    pg__watch_fork_child();
    pthread_mutex_unlock(&targets_lock);
}

/* Also joins what a release that raced the pool's close started after its detach. */
static void ctx_free(void *arg)
{
    pg_ctx *ctx = arg;
    if (!ctx)
        return;
    pg__cancel_join(ctx);
    pg__target_put(ctx->target);
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
    .fork_prepare = fork_prepare,
    .fork_parent = fork_parent,
    .fork_child = fork_child,
    .retarget = pg_retarget,
    .attach = pg_attach,
    .detach = pg_detach,
    .peer = pg_peer,
};

/* ---- pools ---- */

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
    pg_ctx *ctx = calloc(1, sizeof *ctx);
    int oom = !ctx;
    if (ctx) {
        snprintf(ctx->name, sizeof ctx->name, "%s", name ? name : "");
        ctx->init_sql = dup_opt(o->init_sql, &oom);
        ctx->reset_sql = dup_opt(o->reset_sql, &oom);
        ctx->app_name = dup_opt(o->application_name ? o->application_name : PG_APP_NAME, &oom);
        ctx->connect_timeout_s = o->connect_timeout_s;
        ctx->command_timeout_ms =
            o->command_timeout_ms ? o->command_timeout_ms : PG_COMMAND_TIMEOUT_MS;
    }
    if (oom) {
        ctx_free(ctx);
        return leash__fail_null(LEASH_ENOMEM, "pg pool \"%s\": out of memory", name ? name : "");
    }
    char err[LEASH_ERR_MAX / 2];
    leash_status st;
    pg_defaults d = {.app_name = ctx->app_name, .connect_timeout_s = ctx->connect_timeout_s};
    ctx->target = pg__target_new(conninfo, &d, &st, err, sizeof err);
    if (!ctx->target) {
        ctx_free(ctx);
        return leash__fail_null(st, "pg pool \"%s\": %s", name ? name : "", err);
    }
    return ctx;
}

leash_pool *leash_pg_pool_with(const char *name, const char *conninfo,
                               const leash_pool_options *opts, const leash_pg_options *pg)
{
    static const leash_pg_options defaults = {0};
    if (leash__ensure_init() != LEASH_OK)
        return NULL;
    const char *n = name ? name : "";
    if (!conninfo)
        return leash__fail_null(LEASH_EINVAL, "pg pool \"%s\": conninfo is NULL", n);
    if (pg && pg->connect_timeout_s < 0)
        return leash__fail_null(LEASH_EINVAL,
                                "pg pool \"%s\": connect_timeout_s is %d: must be >= 0", n,
                                pg->connect_timeout_s);
    if (pg && pg->command_timeout_ms < -1)
        return leash__fail_null(LEASH_EINVAL,
                                "pg pool \"%s\": command_timeout_ms is %d: must be >= 0, or -1 "
                                "for none",
                                n, pg->command_timeout_ms);
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

/* c is dead, or its server is going away: h's release destroys it, and the pool's other idle
 * connections to that server are checked before they are lent. */
static void lost(leash_handle *h, pg_conn *c)
{
    leash_mark_broken(h);
    leash_pool_check_peer(leash_handle_pool(h), c->peer);
}

/* c's server no longer keeps target_session_attrs (it said so itself): c goes at release and
 * the other idle connections to that server are checked. */
static void misfit(leash_handle *h, pg_conn *c)
{
    c->misfit = 1;
    log_misfit(c);
    leash_mark_broken(h);
    leash_pool_check_peer(leash_handle_pool(h), c->peer);
}

/* SQLSTATE 25006 on a read-write pool: the server became read-only (demoted, or made
 * read-only by its configuration), so every connection of the pool to it is retired, this
 * one at its release. */
static void became_read_only(leash_handle *h, pg_conn *c)
{
    int n = leash_pool_evict_peer(leash_handle_pool(h), c->peer);
    leash__log(LEASH_LOG_INFO,
               "pg pool \"%s\": %s is read-only now (SQLSTATE 25006 on a read-write pool): %d "
               "connection%s to it retired",
               pool_name(c->ctx), c->peer, n, n == 1 ? "" : "s");
    if (n < 0) { /* the pool could not evict: this one at least goes */
        c->misfit = 1;
        leash_mark_broken(h);
    }
}

/* First use since the pool lent it: a connection that died while idle (backend terminated,
 * server restarted) still says CONNECTION_OK, but its socket is readable (checked when it
 * was idle more than PG_RECHECK_NS). Nothing of the borrower's is on it yet, so it is made
 * again in place on the same server; the pool's other idle connections to that server are
 * checked before they are lent. Returns 0, or -1 with h marked broken and the failure
 * recorded. */
static int first_use(leash_handle *h, pg_conn *c, const char *fn)
{
    c->fresh = 0;
    if (LEASH_LIKELY(
            PQstatus(c->conn) == CONNECTION_OK && !c->doomed &&
            (leash__coarse_ns() - c->released_ns < PG_RECHECK_NS || !pg__readable_now(c->conn))))
        return 0;
    if (PQstatus(c->conn) == CONNECTION_OK && !c->doomed && pg__read_idle(c->conn) == 0 &&
        !c->doomed)
        return 0; /* a notification or parameter change, nothing wrong */
    leash_pool_check_peer(leash_handle_pool(h), c->peer);
    char err[PG_MSG_MAX];
    if (reconnect(c, err, sizeof err) == 0) {
        leash__log(LEASH_LOG_INFO,
                   "pg pool \"%s\": a pooled connection to %s died while idle; reconnected",
                   pool_name(c->ctx), c->peer);
        return 0;
    }
    leash_mark_broken(h);
    leash__fail(LEASH_EIO,
                "%s: pool \"%s\": the connection to %s died while idle and reconnecting failed: %s",
                fn, pool_name(c->ctx), c->peer, err);
    return -1;
}

/* A helper's statement gets this long (-1: no limit). */
static int command_timeout(const pg_conn *c)
{
    return c->ctx ? c->ctx->command_timeout_ms : PG_COMMAND_TIMEOUT_MS;
}

/* Before a helper's statement: the first-use check, and results a raw borrower left unread
 * dropped, as PQexec would. 0, or -1 with the failure recorded. */
static int before(leash_handle *h, pg_conn *c, const char *fn)
{
    if (c->fresh && first_use(h, c, fn) != 0)
        return -1;
    if (LEASH_UNLIKELY(c->raw) && PQtransactionStatus(c->conn) == PQTRANS_ACTIVE) {
        int sql_error = 0, ms = command_timeout(c);
        uint64_t deadline = ms < 0 ? UINT64_MAX : leash__now_ns() + (uint64_t)ms * 1000000ull;
        int r = pg__drain(c->conn, deadline, &sql_error);
        if (r != PG_DRAIN_OK) {
            leash_mark_broken(h);
            leash__fail(r == PG_DRAIN_TIMEOUT ? LEASH_ETIMEDOUT : LEASH_EIO,
                        "%s: pool \"%s\": the results left on the connection to %s could not be "
                        "read (%s)",
                        fn, pool_name(c->ctx), c->peer,
                        r == PG_DRAIN_TIMEOUT ? "command_timeout_ms passed" : "COPY or failure");
            return -1;
        }
    }
    return 0;
}

/* A result of pg__exec: returned as is (an SQL error included) unless the connection failed
 * or the deadline passed (then NULL, LEASH_EIO or LEASH_ETIMEDOUT, h marked broken). What the
 * server said on the way (25006 on a read-write pool, 57P0x, a changed role) retires
 * connections, never the caller's result: leash does not retry a statement. */
static PGresult *finish(leash_handle *h, pg_conn *c, PGresult *res, int timed_out, const char *fn)
{
    if (LEASH_LIKELY(res && PQstatus(c->conn) == CONNECTION_OK && !c->doomed)) {
        ExecStatusType st = PQresultStatus(res);
        if (LEASH_UNLIKELY(st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)) {
            if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
                c->raw = 1; /* the borrower drives the COPY through leash_pg(): full check */
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            if (st == PGRES_FATAL_ERROR && state && strcmp(state, "25006") == 0 &&
                c->target->tsa == PG_TSA_READ_WRITE) {
                became_read_only(h, c);
                return res;
            }
            if (st == PGRES_FATAL_ERROR && is_shutdown_state(state)) {
                lost(h, c);
                return res;
            }
        }
        if (LEASH_UNLIKELY(c->target->tsa != PG_TSA_ANY) && !c->misfit && reported_misfit(c))
            misfit(h, c);
        return res;
    }
    if (res && PQstatus(c->conn) == CONNECTION_OK) { /* doomed: the answer stands */
        lost(h, c);
        return res;
    }
    if (timed_out) {
        /* The server may still run it: ask it to stop, without waiting. */
        pg__cancel_with(c->cancel, c->ctx, 0);
        c->cancel = NULL;
        leash_mark_broken(h);
        return leash__fail_null(LEASH_ETIMEDOUT,
                                "%s: pool \"%s\": no answer from %s within %d ms "
                                "(command_timeout_ms); the connection is dropped at release",
                                fn, pool_name(c->ctx), c->peer, command_timeout(c));
    }
    char msg[PG_MSG_MAX];
    const char *m = res ? PQresultErrorMessage(res) : "";
    pg__shown(c->target->password, *m ? m : PQerrorMessage(c->conn), 0, msg, sizeof msg);
    PQclear(res);
    lost(h, c);
    return leash__fail_null(LEASH_EIO, "%s: pool \"%s\": connection failed (%s): %s", fn,
                            pool_name(c->ctx), c->peer, msg);
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
        return leash__fail_null(LEASH_EINVAL, "leash_pg_exec: pool \"%s\": sql is NULL",
                                pool_name(c->ctx));
    if (before(h, c, "leash_pg_exec") != 0)
        return NULL;
    int timed_out;
    PGresult *res = pg__exec(c->conn, sql, 0, 0, NULL, command_timeout(c), &c->watch, &timed_out);
    return finish(h, c, res, timed_out, "leash_pg_exec");
}

PGresult *leash_pg_params(leash_handle *h, const char *sql, int nparams, const char *const *values)
{
    pg_conn *c = held(h, "leash_pg_params");
    if (!c)
        return NULL;
    if (!sql)
        return leash__fail_null(LEASH_EINVAL, "leash_pg_params: pool \"%s\": sql is NULL",
                                pool_name(c->ctx));
    if (nparams < 0 || nparams > 65535 || (nparams > 0 && !values))
        return leash__fail_null(LEASH_EINVAL,
                                "leash_pg_params: pool \"%s\": nparams is %d with values %s (need "
                                "0..65535 and values for each)",
                                pool_name(c->ctx), nparams, values ? "set" : "NULL");
    if (before(h, c, "leash_pg_params") != 0)
        return NULL;
    /* The unnamed statement: no server-side state survives the call (pgbouncer-safe). */
    int timed_out;
    PGresult *res =
        pg__exec(c->conn, sql, 1, nparams, values, command_timeout(c), &c->watch, &timed_out);
    return finish(h, c, res, timed_out, "leash_pg_params");
}

void leash__result_clear(PGresult **r)
{
    if (r && *r) {
        PQclear(*r);
        *r = NULL;
    }
}

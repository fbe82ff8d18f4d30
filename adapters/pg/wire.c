/* PostgreSQL adapter: libpq calls that never wait past a deadline (connect, query, drain,
 * cancel), for a server that is slow, paused or gone. */
#include "pg-int.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PG_CANCELS_MAX 8 /* cancel threads in flight at once, per process */

/* ---- waiting ---- */

int pg__wait(PGconn *conn, short events, uint64_t deadline)
{
    int fd = PQsocket(conn);
    if (fd < 0)
        return -1;
    for (;;) {
        uint64_t now = leash__now_ns();
        uint64_t left = now >= deadline ? 0 : deadline - now;
        uint64_t left_ms = left / 1000000 + (left % 1000000 != 0);
        int ms = left_ms > INT_MAX ? INT_MAX : (int)left_ms;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r == 0 && ms == 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

int pg__readable_now(PGconn *conn)
{
    int fd = PQsocket(conn);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return fd < 0 || poll(&p, 1, 0) != 0;
}

/* A terminated backend's last message, then the end of the stream, take two reads. */
int pg__read_idle(PGconn *conn)
{
    for (int i = 0; i < 4; i++) {
        if (!PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK)
            return -1;
        if (!pg__readable_now(conn))
            return 0;
    }
    return -1; /* nobody should be talking to an idle connection this much */
}

/* Waits, reading as it goes, until libpq has a whole result (0), the deadline passes (1) or
 * the connection fails (-1). */
static int await_result(PGconn *conn, uint64_t deadline)
{
    while (PQisBusy(conn)) {
        int r = pg__wait(conn, POLLIN, deadline);
        if (r == 0)
            return 1;
        if (r < 0 || !PQconsumeInput(conn))
            return PQisBusy(conn) ? -1 : 0; /* libpq may hold the error as a result */
    }
    return 0;
}

int pg__drain(PGconn *conn, uint64_t deadline, int *sql_error)
{
    if (!PQconsumeInput(conn))
        return PG_DRAIN_FAILED;
    for (;;) {
        int r = await_result(conn, deadline);
        if (r != 0)
            return r > 0 ? PG_DRAIN_TIMEOUT : PG_DRAIN_FAILED;
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_FATAL_ERROR)
            *sql_error = 1;
        if (st == PGRES_COPY_IN) {
            if (PQputCopyEnd(conn, "leash: the connection was released during COPY") != 1)
                return PG_DRAIN_FAILED;
        } else if (st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            return PG_DRAIN_FAILED;
        }
    }
    return PQstatus(conn) == CONNECTION_OK ? PG_DRAIN_OK : PG_DRAIN_FAILED;
}

int pg__run(PGconn *conn, const char *sql, uint64_t deadline)
{
    int sql_error = 0;
    if (!PQsendQuery(conn, sql) || pg__drain(conn, deadline, &sql_error) != PG_DRAIN_OK)
        return -1;
    return sql_error;
}

int pg__ask(PGconn *conn, const char *sql, int timeout_ms, char *out, size_t outlen)
{
    int timed_out = 0;
    PGresult *res = pg__exec(conn, sql, 0, 0, NULL, timeout_ms, NULL, &timed_out);
    int ok = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 &&
             PQnfields(res) > 0 && PQstatus(conn) == CONNECTION_OK;
    if (ok)
        snprintf(out, outlen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return ok ? 0 : -1;
}

/* ---- queries ---- */

/* A statement's time budget, read on the coarse clock and only once it has to wait: the
 * common statement costs one poll() with the whole budget as its timeout. */
typedef struct budget {
    int ms;       /* the whole budget; -1: none */
    uint64_t end; /* leash__coarse_ns() when it runs out; 0: not started */
} budget;

/* Milliseconds left (-1: no limit). */
static int budget_left(budget *b)
{
    if (b->ms < 0)
        return -1;
    uint64_t now = leash__coarse_ns();
    if (!b->end) {
        b->end = now + (uint64_t)b->ms * 1000000ull;
        return b->ms;
    }
    return now >= b->end ? 0 : (int)((b->end - now + 999999) / 1000000);
}

/* pg__wait on a budget: 1 ready, 0 out of time, -1 no socket. */
static int wait_budget(PGconn *conn, short events, budget *b)
{
    int fd = PQsocket(conn);
    if (fd < 0)
        return -1;
    for (;;) {
        int ms = budget_left(b);
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Waits, reading as it goes, until libpq has a whole result (0), the budget runs out (1) or
 * the connection fails (-1). */
static int await_budget(PGconn *conn, budget *b)
{
    while (PQisBusy(conn)) {
        int r = wait_budget(conn, POLLIN, b);
        if (r == 0)
            return 1;
        if (r < 0 || !PQconsumeInput(conn))
            return PQisBusy(conn) ? -1 : 0; /* libpq may hold the error as a result */
    }
    return 0;
}

/* Sends what libpq has queued, reading meanwhile so a server that answers early cannot
 * deadlock us: 0 sent, 1 out of time, -1 failed. */
static int flush(PGconn *conn, budget *b)
{
    for (;;) {
        int f = PQflush(conn);
        if (f <= 0)
            return f;
        int r = wait_budget(conn, POLLOUT | POLLIN, b);
        if (r == 0)
            return 1;
        if (r < 0 || !PQconsumeInput(conn))
            return -1;
    }
}

/* A request this small fits the socket's send buffer, empty when a statement starts (an
 * idle connection has nothing queued), so libpq's blocking send cannot block on it. */
#define PG_SMALL_REQUEST 8192

static int small_request(const char *sql, int nparams, const char *const *values)
{
    size_t n = strlen(sql);
    for (int i = 0; i < nparams && n <= PG_SMALL_REQUEST; i++)
        n += values[i] ? strlen(values[i]) : 0;
    return n <= PG_SMALL_REQUEST;
}

PGresult *pg__exec(PGconn *conn, const char *sql, int extended, int nparams,
                   const char *const *values, int timeout_ms, pg_watch *w, int *timed_out)
{
    budget b = {.ms = timeout_ms};
    *timed_out = 0;
    int watched = w && timeout_ms >= 0 && pg__watch_begin(w, timeout_ms);
    if (watched)
        b.ms = -1; /* no kernel timer: the watchdog ends a wait that runs late */
    /* A large statement goes out nonblocking, so a server that stopped reading cannot hold
     * send() past the deadline; libpq's blocking mode is back before the caller sees the
     * connection. */
    int big = !small_request(sql, extended ? nparams : 0, values);
    if (big && PQsetnonblocking(conn, 1) != 0)
        return NULL;
    int sent = extended ? PQsendQueryParams(conn, sql, nparams, NULL, values, NULL, NULL, 0)
                        : PQsendQuery(conn, sql);
    PGresult *last = NULL;
    int r = !sent ? -1 : big ? flush(conn, &b) : 0;
    while (r == 0) {
        r = await_budget(conn, &b);
        if (r != 0)
            break;
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        PQclear(last);
        last = res;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH ||
            PQstatus(conn) == CONNECTION_BAD)
            break;
    }
    if ((watched && pg__watch_end(w)) || r > 0) {
        *timed_out = 1;
        PQclear(last);
        last = NULL;
    }
    if (big)
        PQsetnonblocking(conn, 0); /* fails only with output still queued: conn is dropped */
    return last;
}

/* ---- cancel ---- */

/* One cancel request. The thread and the waiter share it; whoever finishes last frees it. */
struct cancel_job {
    PGcancel *cancel;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, left; /* under mu: the request was sent; the waiter stopped waiting */
};

static atomic_int cancels_running; /* threads in flight, at most PG_CANCELS_MAX */

static void job_free(struct cancel_job *j)
{
    PQfreeCancel(j->cancel);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static void *cancel_main(void *arg)
{
    struct cancel_job *j = arg;
    char buf[256];
    PQcancel(j->cancel, buf, sizeof buf);
    pthread_mutex_lock(&j->mu);
    j->done = 1;
    int left = j->left;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (left)
        job_free(j);
    atomic_fetch_sub(&cancels_running, 1);
    return NULL;
}

int pg__cancel_with(PGcancel *cancel, uint64_t deadline)
{
    if (!cancel)
        return 0;
    if (atomic_fetch_add(&cancels_running, 1) >= PG_CANCELS_MAX) {
        atomic_fetch_sub(&cancels_running, 1);
        PQfreeCancel(cancel);
        return 0;
    }
    struct cancel_job *j = calloc(1, sizeof *j);
    if (!j) {
        atomic_fetch_sub(&cancels_running, 1);
        PQfreeCancel(cancel);
        return 0;
    }
    j->cancel = cancel;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&j->mu, NULL);
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    /* The thread runs with every signal blocked (it inherits the mask set here): the
     * application's handlers are not for it. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t th;
    int ok = pthread_create(&th, &ta, cancel_main, j) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&ta);
    if (!ok) {
        job_free(j);
        atomic_fetch_sub(&cancels_running, 1);
        return 0;
    }
    struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                          .tv_nsec = (long)(deadline % 1000000000ull)};
    pthread_mutex_lock(&j->mu);
    while (!j->done && leash__now_ns() < deadline)
        if (pthread_cond_timedwait(&j->cv, &j->mu, &ts) == ETIMEDOUT)
            break;
    int done = j->done;
    j->left = !done;
    pthread_mutex_unlock(&j->mu);
    if (done)
        job_free(j);
    return done;
}

int pg__cancel(PGconn *conn, uint64_t deadline)
{
    return pg__cancel_with(PQgetCancel(conn), deadline);
}

void pg__cancel_fork_child(void)
{
    atomic_store(&cancels_running, 0);
}

/* ---- connect ---- */

PGconn *pg__connect_host(const pg_target *t, int i, const char *tsa, char *err, size_t errlen)
{
    const pg_host *h = &t->hosts[i];
    const char *keys[96], *vals[96];
    const char **k = keys, **v = vals;
    const char **kb = NULL, **vb = NULL;
    if (t->nbase + 5 > 96) { /* an unusually long conninfo */
        kb = malloc((size_t)(t->nbase + 5) * sizeof *kb);
        vb = malloc((size_t)(t->nbase + 5) * sizeof *vb);
        if (!kb || !vb) {
            free(kb);
            free(vb);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        k = kb;
        v = vb;
    }
    int n = t->nbase;
    memcpy(k, t->keys, (size_t)n * sizeof *k);
    memcpy(v, t->vals, (size_t)n * sizeof *v);
    const char *extra[][2] = {{"host", h->host},
                              {"hostaddr", h->hostaddr},
                              {"port", h->port},
                              {"target_session_attrs", tsa}};
    for (size_t e = 0; e < sizeof extra / sizeof extra[0]; e++) {
        if (!extra[e][1])
            continue;
        k[n] = extra[e][0];
        v[n++] = extra[e][1];
    }
    k[n] = NULL;
    v[n] = NULL;
    PGconn *conn = PQconnectStartParams(k, v, 0); /* copies what it keeps */
    free(kb);
    free(vb);
    if (!conn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    uint64_t deadline = leash__now_ns() + (uint64_t)t->connect_timeout_ms * 1000000ull;
    PostgresPollingStatusType st =
        PQstatus(conn) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    for (;;) {
        if (st == PGRES_POLLING_OK)
            return conn;
        if (st == PGRES_POLLING_FAILED)
            break;
        int r = pg__wait(conn, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (r == 0) {
            snprintf(err, errlen,
                     "connection to server at \"%s\", port %s failed: no answer within %d ms "
                     "(connect_timeout)",
                     PQhost(conn), PQport(conn), t->connect_timeout_ms);
            PQfinish(conn);
            return NULL;
        }
        if (r < 0)
            break;
        st = PQconnectPoll(conn);
    }
    pg__shown(t->password, PQerrorMessage(conn), 1, err, errlen);
    PQfinish(conn);
    return NULL;
}

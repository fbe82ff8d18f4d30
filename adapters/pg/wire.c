/* PostgreSQL adapter: libpq calls that never wait past a deadline (connect, query, drain,
 * cancel), for a server that is slow, paused or gone. */
#include "pg-int.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PG_CANCELS_MAX 8                   /* cancel threads not joined yet, per process */
#define PG_CANCEL_GIVE_UP_NS 1000000000ull /* a cancel thread is stopped this long after */
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1u << 1) /* Linux 5.9; older C libraries do not name it */
#endif

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

/* PQcancel blocks (libpq 15 has no other cancel that can use the PGcancel made at connect):
 * in connect() to an unreachable server, and in recv() until the postmaster closes the
 * request's connection, which a paused postmaster never does (the kernel accepted it for
 * it). So each request runs on a thread of its own that leash stops and joins: the thread
 * first takes a descriptor table of its own (close_range CLOSE_RANGE_UNSHARE, else
 * unshare(CLONE_FILES)) and drops its copies of the process's descriptors, so the socket
 * PQcancel makes is in that table only; a thread still in PQcancel at its give-up time is
 * cancelled (connect, send and recv are cancellation points; PQcancel holds no lock and
 * allocates nothing, as it may run in a signal handler) and joined, and the kernel closes
 * its socket with its table. A request already sent stays in the server's queue and is
 * still honoured when the server runs again. Jobs are joined by whoever meets them done or
 * past their time (a new request, the statement watchdog), and all of a pool's at its detach
 * and context free, waiting at most until each one's give-up time. */

enum { JOB_RUNNING, JOB_SENT, JOB_FAILED };

struct cancel_job {
    struct cancel_job *next; /* the registry, under jobs_lock */
    const void *owner;       /* the pool context that asked (NULL: a pool without one) */
    PGcancel *cancel;        /* freed with the job, after the join */
    pthread_t thread;
    uint64_t give_up; /* leash__now_ns(): the thread is cancelled if still running then */
    int state;        /* JOB_*, under jobs_lock */
    int refs;         /* under jobs_lock: the registry's, and a waiter's */
};

static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t jobs_cv; /* CLOCK_MONOTONIC; broadcast when a job ends */
static pthread_once_t jobs_once = PTHREAD_ONCE_INIT;
static struct cancel_job *jobs; /* threads not joined yet */
static int njobs;               /* their count; at most PG_CANCELS_MAX */

static void jobs_cv_init(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&jobs_cv, &ca);
    pthread_condattr_destroy(&ca);
}

/* Waits on jobs_cv (jobs_lock held) until deadline (leash__now_ns) at most. */
static void jobs_wait(uint64_t deadline)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                          .tv_nsec = (long)(deadline % 1000000000ull)};
    pthread_cond_timedwait(&jobs_cv, &jobs_lock, &ts);
}

/* jobs_lock held; frees j when nobody holds it any more. */
static void job_put_locked(struct cancel_job *j)
{
    if (--j->refs == 0) {
        PQfreeCancel(j->cancel);
        free(j);
    }
}

/* Gives the calling thread a descriptor table of its own holding only stdin, stdout and
 * stderr. 0, or -1 when the system allows neither way. */
static int own_descriptors(void)
{
#if defined(SYS_close_range) && defined(CLOSE_RANGE_UNSHARE)
    if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_UNSHARE) == 0)
        return 0;
#endif
    if (unshare(CLONE_FILES) != 0)
        return -1;
#if defined(SYS_close_range)
    syscall(SYS_close_range, 3u, ~0u, 0u); /* else the copies go when the thread ends */
#endif
    return 0;
}

static void *cancel_main(void *arg)
{
    struct cancel_job *j = arg;
    int old, state = JOB_FAILED;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    /* Without a table of its own, a cancelled PQcancel would leave its socket open in the
     * process's: no request then (the connection is dropped all the same). */
    if (own_descriptors() == 0) {
        char buf[256];
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
        int sent = PQcancel(j->cancel, buf, sizeof buf);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
        state = sent ? JOB_SENT : JOB_FAILED;
    }
    pthread_mutex_lock(&jobs_lock);
    j->state = state;
    pthread_cond_broadcast(&jobs_cv);
    pthread_mutex_unlock(&jobs_lock);
    return NULL;
}

/* Takes out of the registry the jobs of owner (every_owner 0) or every job done or past its
 * give-up time (every_owner 1: nothing is waited for), waits for each until its give-up time
 * at most, cancels those still running, and joins them. */
static void reap(int every_owner, const void *owner)
{
    pthread_once(&jobs_once, jobs_cv_init);
    struct cancel_job *mine = NULL;
    pthread_mutex_lock(&jobs_lock);
    uint64_t now = leash__now_ns();
    for (struct cancel_job **pp = &jobs; *pp;) {
        struct cancel_job *j = *pp;
        int take = every_owner ? j->state != JOB_RUNNING || now >= j->give_up : j->owner == owner;
        if (take) {
            *pp = j->next;
            j->next = mine;
            mine = j;
        } else {
            pp = &j->next;
        }
    }
    for (struct cancel_job *j = mine; j; j = j->next)
        while (j->state == JOB_RUNNING && leash__now_ns() < j->give_up)
            jobs_wait(j->give_up);
    pthread_mutex_unlock(&jobs_lock);
    for (struct cancel_job *j = mine; j; j = j->next) {
        /* A thread that ends meanwhile ignores the request (it left PQcancel with
         * cancellation disabled); an ended, unjoined thread can still be named. */
        pthread_mutex_lock(&jobs_lock);
        int running = j->state == JOB_RUNNING;
        pthread_mutex_unlock(&jobs_lock);
        if (running)
            pthread_cancel(j->thread);
        pthread_join(j->thread, NULL);
    }
    pthread_mutex_lock(&jobs_lock);
    while (mine) {
        struct cancel_job *j = mine;
        mine = j->next;
        if (j->state == JOB_RUNNING)
            j->state = JOB_FAILED; /* cancelled: a waiter sees it was not delivered */
        njobs--;
        job_put_locked(j);
    }
    pthread_cond_broadcast(&jobs_cv);
    pthread_mutex_unlock(&jobs_lock);
}

void pg__cancel_reap(void)
{
    reap(1, NULL);
}

void pg__cancel_join(const void *owner)
{
    reap(0, owner);
}

int pg__cancel_with(PGcancel *cancel, const void *owner, uint64_t deadline)
{
    if (!cancel)
        return 0;
    reap(1, NULL); /* frees the places of ended jobs */
    struct cancel_job *j = calloc(1, sizeof *j);
    if (!j) {
        PQfreeCancel(cancel);
        return 0;
    }
    j->owner = owner;
    j->cancel = cancel;
    j->state = JOB_RUNNING;
    j->refs = deadline ? 2 : 1;
    j->give_up = leash__now_ns() + PG_CANCEL_GIVE_UP_NS;
    pthread_mutex_lock(&jobs_lock);
    int room = njobs < PG_CANCELS_MAX;
    int ok = 0;
    if (room) {
        /* The thread runs with every signal blocked (it inherits the mask set here): the
         * application's handlers are not for it. pthread_cancel's own signal stays open. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        ok = pthread_create(&j->thread, NULL, cancel_main, j) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (!ok) {
        pthread_mutex_unlock(&jobs_lock);
        PQfreeCancel(cancel);
        free(j);
        return 0;
    }
    njobs++;
    j->next = jobs;
    jobs = j;
    if (!deadline) {
        pthread_mutex_unlock(&jobs_lock);
        return 0;
    }
    while (j->state == JOB_RUNNING && leash__now_ns() < deadline)
        jobs_wait(deadline);
    int sent = j->state == JOB_SENT;
    job_put_locked(j);
    pthread_mutex_unlock(&jobs_lock);
    return sent;
}

int pg__cancel(PGconn *conn, const void *owner, uint64_t deadline)
{
    return pg__cancel_with(PQgetCancel(conn), owner, deadline);
}

void pg__cancel_fork_prepare(void)
{
    pthread_once(&jobs_once, jobs_cv_init);
    pthread_mutex_lock(&jobs_lock);
}

void pg__cancel_fork_parent(void)
{
    pthread_mutex_unlock(&jobs_lock);
}

/* The jobs' threads are the parent's: forget them (nobody in the child waits on one), and
 * give the child a lock and a condition variable with no parent's waiter in them. */
void pg__cancel_fork_child(void)
{
    while (jobs) {
        struct cancel_job *j = jobs;
        jobs = j->next;
        PQfreeCancel(j->cancel);
        free(j);
    }
    njobs = 0;
    pthread_mutex_init(&jobs_lock, NULL);
    jobs_cv_init();
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

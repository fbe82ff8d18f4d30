/* Private to the PostgreSQL adapter: the parsed conninfo, and the bounded libpq calls and
 * password-free messages its files share. Never installed. */
#ifndef LEASH_PG_INT_H
#define LEASH_PG_INT_H

#include "common.h"

#include <leash/pg.h>

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PG_MSG_MAX 256  /* one message from libpq, flattened */
#define PG_PEER_MAX 128 /* "host:port" */

/* Defaults when the conninfo names none (documented in include/leash/pg.h). */
#define PG_CONNECT_TIMEOUT_S 2      /* each host's whole handshake */
#define PG_COMMAND_TIMEOUT_MS 30000 /* leash_pg_exec / leash_pg_params */
#define PG_TCP_USER_TIMEOUT "10000" /* ms that sent data may stay unacknowledged */
#define PG_KEEPALIVES_IDLE "10"     /* s of silence before the first keepalive probe */
#define PG_KEEPALIVES_INTERVAL "5"  /* s between probes */
#define PG_KEEPALIVES_COUNT "3"     /* probes lost before the connection is dead */

/* target_session_attrs, libpq's meanings. */
typedef enum {
    PG_TSA_ANY,
    PG_TSA_READ_WRITE,
    PG_TSA_READ_ONLY,
    PG_TSA_PRIMARY,
    PG_TSA_STANDBY,
    PG_TSA_PREFER_STANDBY
} pg_tsa;

/* One entry of the conninfo's host list; NULL members are left to libpq's defaults. */
typedef struct pg_host {
    const char *host, *hostaddr, *port;
} pg_host;

/* A checked conninfo, ready for one connect attempt per host. Immutable once built and shared
 * by reference count: the pool's context holds one reference, each connect in flight and each
 * connection another, so a retarget never frees one under a connect. */
typedef struct pg_target {
    atomic_int refs;
    PQconninfoOption *opts;    /* PQconninfoParse's result; the values below point into it */
    const char **keys, **vals; /* nbase options every attempt passes (defaults added) */
    int nbase;
    pg_host *hosts; /* nhosts >= 1, in the conninfo's order */
    int nhosts;
    char *lists; /* the split host, hostaddr and port lists the hosts point into */
    pg_tsa tsa;
    const char *password; /* for scrubbing messages (points into opts), or NULL */
    int connect_timeout_ms;
    char shown[PG_MSG_MAX]; /* password-free description for dumps and errors */
    char app_name[64];      /* fallback_application_name, when the conninfo names none */
} pg_target;

/* What a target is built with besides the conninfo. */
typedef struct pg_defaults {
    const char *app_name;  /* fallback_application_name */
    int connect_timeout_s; /* 0: PG_CONNECT_TIMEOUT_S */
} pg_defaults;

/* A connection's part in the statement watchdog (watch.c). */
typedef struct pg_watch {
    struct pg_watch *next, *prev; /* the registry, under its lock */
    int fd;                       /* a descriptor of the socket of the watch's own; -1: none */
    _Atomic uint64_t deadline;    /* 0 not waiting, a leash__coarse_ns() deadline, or fired */
} pg_watch;

/* ---- conninfo.c ---- */

/* Parses and checks conninfo. Returns the target (one reference), or NULL with a status
 * (LEASH_EINVAL, LEASH_ENOMEM) in *st and a message in err that names the bad part but never
 * any piece of the password. */
pg_target *pg__target_new(const char *conninfo, const pg_defaults *d, leash_status *st, char *err,
                          size_t errlen);
void pg__target_put(pg_target *t);
/* target_session_attrs as libpq spells it. */
const char *pg__tsa_name(pg_tsa tsa);
/* Copies a libpq message to out on one line ("\n\t" -> " ", "\n" -> "; "), without URL or
 * key=value passwords and without any copy of password (may be NULL). first_line keeps only
 * the first line (libpq's hints follow on the next). */
void pg__shown(const char *password, const char *msg, int first_line, char *out, size_t outlen);
/* A password-free description of conninfo for dumps (describe), also for one that does not
 * parse. */
void pg__describe(const char *conninfo, char *out, size_t outlen);

/* ---- wire.c: libpq calls that never wait past a deadline (leash__now_ns) ---- */

/* Waits until conn's socket is ready for events (POLLIN, POLLOUT) or the deadline passes:
 * 1 ready (or in error: libpq will tell), 0 timed out, -1 no socket. */
int pg__wait(PGconn *conn, short events, uint64_t deadline);
/* 1 when conn's socket has something to read right now (one poll, no wait). */
int pg__readable_now(PGconn *conn);
/* For an idle connection whose socket is readable: reads what is there. 0 still good, -1
 * dead. */
int pg__read_idle(PGconn *conn);
enum { PG_DRAIN_OK, PG_DRAIN_TIMEOUT, PG_DRAIN_FAILED };
/* Reads and drops every pending result (a COPY FROM STDIN is ended; a COPY TO STDOUT fails).
 * *sql_error is set when a result was an error. */
int pg__drain(PGconn *conn, uint64_t deadline, int *sql_error);
/* Runs sql (simple protocol): 0 done, 1 SQL error, -1 connection failure or timeout. */
int pg__run(PGconn *conn, const char *sql, uint64_t deadline);
/* Runs sql and copies the first value of its first row to out: 0, or -1 on any failure. */
int pg__ask(PGconn *conn, const char *sql, int timeout_ms, char *out, size_t outlen);
/* Sends sql (extended protocol with nparams text values when extended, else simple) and
 * returns the last result as PQexec would, never waiting more than timeout_ms (-1: no limit):
 * NULL with *timed_out set when it ran out, NULL without it when nothing could be sent or
 * read (libpq's error message says why). With w (NULL: none) and the watchdog running, the
 * wait has no timeout of its own: the watchdog ends it by shutting the socket down. */
PGresult *pg__exec(PGconn *conn, const char *sql, int extended, int nparams,
                   const char *const *values, int timeout_ms, pg_watch *w, int *timed_out);
/* Asks the server to cancel conn's running query, waiting for the request to be delivered
 * until deadline at most (deadline 0: not at all). PQcancel can block (a paused or unreachable
 * server), so it runs on a thread of its own, which leash stops about a second after it
 * started if it is still blocked then (PG_CANCEL_GIVE_UP_NS) and always joins: when met done
 * or past that time (by a new request or the watchdog), and at the latest when owner (the
 * pool's context, or NULL) is detached or freed (pg__cancel_join). At most a few run at once.
 * Returns 1 when the request was delivered in time. */
int pg__cancel(PGconn *conn, const void *owner, uint64_t deadline);
/* The same with a cancel object made earlier (PQgetCancel), which it takes over. */
int pg__cancel_with(PGcancel *cancel, const void *owner, uint64_t deadline);
/* Joins owner's cancel threads, each waited for until its give-up time at most (about a
 * second after it started), then cancelled. */
void pg__cancel_join(const void *owner);
/* Joins the cancel threads that are done or past their give-up time, waiting for none. */
void pg__cancel_reap(void);
/* Around fork: the registry's lock held across it; the child forgets the parent's threads. */
void pg__cancel_fork_prepare(void);
void pg__cancel_fork_parent(void);
void pg__cancel_fork_child(void);
/* Connects to t's host number i with target_session_attrs tsa, bounded by
 * t->connect_timeout_ms: PQconnectStartParams and PQconnectPoll with poll(). Returns the
 * connection, or NULL with a one-line message in err. */
PGconn *pg__connect_host(const pg_target *t, int i, const char *tsa, char *err, size_t errlen);

/* ---- watch.c: the statement watchdog ---- */

/* A pool attached (start) or detached (stop): the watchdog runs while any is. */
void pg__watch_start(void);
void pg__watch_stop(void);
/* Registers w for the connection whose socket is fd (w keeps a descriptor of its own):
 * 0, or -1 when it cannot (w's statements then wait with poll() timeouts). */
int pg__watch_add(pg_watch *w, int fd);
/* Unregisters w and closes its descriptor; waits for a watchdog pass in progress. */
void pg__watch_remove(pg_watch *w);
/* Before a wait of at most timeout_ms: 1 when the watchdog will end it, 0 when the caller
 * must bound it itself. */
int pg__watch_begin(pg_watch *w, int timeout_ms);
/* After the wait: 1 when the watchdog ended it (the socket is shut down). */
int pg__watch_end(pg_watch *w);
void pg__watch_fork_prepare(void);
void pg__watch_fork_parent(void);
void pg__watch_fork_child(void);

#endif /* LEASH_PG_INT_H */

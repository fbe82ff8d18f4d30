/* leash PostgreSQL adapter: pools of libpq connections. */
#ifndef LEASH_PG_H
#define LEASH_PG_H

#include <leash/leash.h>
#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The adapter table behind leash_pg_pool, for leash_conn_of. */
LEASH_EXPORT extern const leash_adapter leash_pg_adapter;

typedef struct leash_pg_options { /* zero: default */
    const char *init_sql;         /* run on every new connection, and again after reset_sql
                                     (e.g. "SET search_path TO app"); if it fails, the connect fails */
    const char *reset_sql;        /* run on every release after any rollback (e.g. "DISCARD ALL");
                                     off by default; routine, so not counted dirty */
    const char *application_name; /* used when the conninfo names none; default "leash" */
    int connect_timeout_s;        /* used when the conninfo (or PGCONNECT_TIMEOUT) names no
                                     connect_timeout; default 2. Bounds each host's whole
                                     handshake (TCP, TLS, authentication, the target_session_attrs
                                     check) and init_sql; a connect_timeout of 0 means this
                                     default too: leash never waits for a server forever */
    /* appended */
    int command_timeout_ms; /* leash_pg_exec / leash_pg_params give up after this long (up
                               to about 50 ms later): LEASH_ETIMEDOUT, the running query is
                               cancelled and the connection dropped; default 30000; -1: no
                               limit */
} leash_pg_options;

/* Opens a pool of PostgreSQL connections. conninfo is any libpq conninfo string or URI
 * (multi-host, target_session_attrs, sslmode ... pass through); it is parsed and checked at
 * once (enumerated values such as sslmode, integers, ports, host addresses, how many of each)
 * and a malformed one returns NULL with LEASH_EINVAL; the message never holds any piece of the
 * password. In a URI, a password holding / or @ must be percent-encoded (%2F, %40): libpq
 * would split the URI inside it, so an "@" after the user information is refused.
 *
 * Connects try the hosts in order, each bounded by the connect timeout (leash_pg_options),
 * with keepalives_idle=10, keepalives_interval=5, keepalives_count=3 and tcp_user_timeout=10000
 * unless the conninfo names them, so a server that vanishes is noticed in about 25 s even by
 * raw libpq calls. Host names are resolved by libpq without a deadline: use addresses (or
 * hostaddr) where DNS may hang.
 *
 * target_session_attrs holds for a connection's whole life, not only at connect: validation
 * (after validate_idle_ms idle) and keepalives ask the server again (read-write: SHOW
 * transaction_read_only is off; read-only: on; primary: pg_is_in_recovery() is false;
 * standby: true; prefer-standby: a standby, or any server when none was found at connect),
 * and what the server reports after each statement (in_hot_standby,
 * default_transaction_read_only) is checked too; a connection that no longer fits is
 * retired. A new connection is asked once after login as well (one round trip): behind a
 * pooler such as pgbouncer, what libpq checked at login may be stale. SQLSTATE 25006 on a
 * read-write pool retires every connection of the pool to that server; 57P01/57P02/57P03 (as an
 * error or a notice) or a dead connection retire that one and get the pool's other idle connections
 * to the same server checked before they are lent. The statement that met the error fails to its
 * caller: leash never retries one.
 *
 * Sessions are named "leash" in pg_stat_activity unless the conninfo names them; server
 * notices go to the log callback. opts NULL: pool defaults. Copies its arguments. */
LEASH_EXPORT leash_pool *leash_pg_pool(const char *name, const char *conninfo,
                                       const leash_pool_options *opts);
/* The same with adapter options (pg NULL: defaults); the strings are copied. */
LEASH_EXPORT leash_pool *leash_pg_pool_with(const char *name, const char *conninfo,
                                            const leash_pool_options *opts,
                                            const leash_pg_options *pg);
/* The libpq connection of a held PostgreSQL handle, or NULL (h NULL, not held, not pg).
 * Borrowed; valid until release. Whatever is done with it, the release finds: results left
 * unread are drained, a query still running is cancelled, an open transaction is rolled
 * back (all counted dirty); a release waits about a second at most. Raw libpq calls on it
 * block as libpq does (no command_timeout_ms). Never PQfinish() it; in a forked child,
 * acquire afresh. */
LEASH_EXPORT PGconn *leash_pg(leash_handle *h);
/* Runs sql on h's connection. Returns libpq's result even for an SQL error (check
 * PQresultStatus; the caller PQclear()s it, or uses LEASH_RESULT), or NULL when there is
 * no result at all: LEASH_EINVAL for a bad handle or NULL sql, LEASH_EIO for a connection
 * failure, LEASH_ETIMEDOUT when command_timeout_ms passed (h is marked broken in both);
 * leash_last_error() says what happened. */
LEASH_EXPORT PGresult *leash_pg_exec(leash_handle *h, const char *sql);
/* The same with text parameters $1..$nparams (values may hold NULLs for SQL NULL);
 * uses the unnamed statement, so it works behind pgbouncer's transaction pooling. */
LEASH_EXPORT PGresult *leash_pg_params(leash_handle *h, const char *sql, int nparams,
                                       const char *const *values);

/* LEASH_RESULT PGresult *r = leash_pg_exec(h, "...");  PQclear()s r at scope exit.
 * GCC and Clang only. */
LEASH_EXPORT void leash__result_clear(PGresult **r);
#if defined(__GNUC__) || defined(__clang__)
#define LEASH_RESULT __attribute__((__cleanup__(leash__result_clear)))
#endif

#ifdef __cplusplus
}
#endif

#endif /* LEASH_PG_H */

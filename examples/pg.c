/* Example: PostgreSQL with leash (libpq underneath): a write pool on the primary and a read
 * pool on a standby, each keeping its target_session_attrs through a failover.
 * Usage: example-pg [write conninfo] [read conninfo]
 * With a primary and a hot standby, give both the same host list, e.g.
 *   example-pg
 * 'postgresql://leash:leash-pg-pw@10.0.0.5,10.0.0.6/leash?target_session_attrs=read-write' \
 *              'postgresql://leash:leash-pg-pw@10.0.0.5,10.0.0.6/leash?target_session_attrs=prefer-standby'
 * (the defaults point both at the one test server, where prefer-standby falls back to it). */
#include <leash/pg.h>

#include <stdio.h>

/* Runs one statement that returns no rows; 0 on success, else -1 after saying why. */
static int run(leash_handle *db, const char *sql, int n, const char *const *values)
{
    /* LEASH_RESULT clears the result at the end of the scope, whichever way it ends. */
    LEASH_RESULT PGresult *r = n ? leash_pg_params(db, sql, n, values) : leash_pg_exec(db, sql);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK)
        return 0;
    /* NULL: no result at all (connection lost or timed out: the handle is marked broken).
     * A failover shows up here once per connection at most (e.g. "cannot execute UPDATE in
     * a read-only transaction" from a demoted primary): leash retires the connections to
     * that server, but it never retries a statement; the caller decides. */
    fprintf(stderr, "%s: %s", sql, r ? PQresultErrorMessage(r) : leash_last_error());
    return -1;
}

/* Moves amount from one account to another in one transaction, on the write pool. Returns 0
 * or -1. */
static int transfer(leash_pool *pool, const char *from, const char *to, const char *amount)
{
    /* LEASH_GUARD: this code releases the handle itself, and the guard checks that it did
     * (strict mode aborts with this line if a path forgets; otherwise it is reclaimed). */
    LEASH_GUARD leash_handle *db = leash_acquire(pool);
    if (!db) {
        fprintf(stderr, "pg: %s\n", leash_last_error()); /* timeout, connect failure ... */
        return -1;
    }
    const char *debit[] = {amount, from}, *credit[] = {amount, to};
    int rc = run(db, "BEGIN", 0, NULL);
    if (rc == 0)
        rc =
            run(db, "UPDATE example_accounts SET balance = balance - $1 WHERE name = $2", 2, debit);
    if (rc == 0)
        rc = run(db, "UPDATE example_accounts SET balance = balance + $1 WHERE name = $2", 2,
                 credit);
    /* Finish the transaction before giving the handle back. (Releasing it open works too:
     * the pool rolls back, but counts a dirty return, and strict mode reports it.) */
    if (run(db, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL) < 0)
        rc = -1;
    leash_release(&db);
    return rc;
}

/* A report from the read pool: a standby when there is one. A standby may lag the primary
 * by a little, so reads that must see this process's own writes go to the write pool. */
static void report(leash_pool *reads)
{
    LEASH_AUTO leash_handle *db = leash_acquire(reads);
    LEASH_RESULT PGresult *r =
        db ? leash_pg_exec(db, "SELECT count(*), pg_is_in_recovery() FROM example_accounts") : NULL;
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
        printf("report: %s accounts (read on %s)\n", PQgetvalue(r, 0, 0),
               PQgetvalue(r, 0, 1)[0] == 't' ? "a standby" : "the primary");
    else
        fprintf(stderr, "report: %s", r ? PQresultErrorMessage(r) : leash_last_error());
}

int main(int argc, char **argv)
{
    const char *writes = argc > 1 ? argv[1]
                                  : "postgresql://leash:leash-pg-pw@127.0.0.1:15432/leash"
                                    "?target_session_attrs=read-write";
    const char *reads = argc > 2 ? argv[2]
                                 : "postgresql://leash:leash-pg-pw@127.0.0.1:15432/leash"
                                   "?target_session_attrs=prefer-standby";
    /* The conninfo is checked now (sslmode=bogus fails here, not at the first acquire); the
     * password in it never shows in errors or dumps. Connects are bounded (2 s per host by
     * default), and so are statements (command_timeout_ms, 30 s by default). */
    leash_pg_options pg = {.application_name = "example-pg"};
    leash_pool *pool = leash_pg_pool_with("db", writes, NULL, &pg);
    leash_pool *replica = pool ? leash_pg_pool_with("db-read", reads, NULL, &pg) : NULL;
    if (!pool || !replica) {
        fprintf(stderr, "bad conninfo: %s\n", leash_last_error());
        return 1;
    }
    {
        LEASH_AUTO leash_handle *db = leash_acquire(pool);
        LEASH_RESULT PGresult *r =
            db ? leash_pg_exec(db, "CREATE TABLE IF NOT EXISTS example_accounts (name text PRIMARY "
                                   "KEY, balance int);"
                                   "INSERT INTO example_accounts VALUES ('alice', 100), ('bob', 0)"
                                   " ON CONFLICT (name) DO UPDATE SET balance = EXCLUDED.balance")
               : NULL;
        if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "setup: %s\n", r ? PQresultErrorMessage(r) : leash_last_error());
            return 1;
        }
    }
    int rc = transfer(pool, "alice", "bob", "30");
    {
        /* Our own writes, read back: the write pool. */
        LEASH_AUTO leash_handle *db = leash_acquire(pool);
        LEASH_RESULT PGresult *r =
            db ? leash_pg_exec(db, "SELECT name, balance FROM example_accounts ORDER BY name")
               : NULL;
        for (int i = 0; r && PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
            printf("%s: %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    }
    report(replica);
    int held = leash_check_leaks(2);
    leash_shutdown();
    return rc == 0 && held == 0 ? 0 : 1;
}

/* Example: a pool of PostgreSQL connections with leash (libpq underneath).
 * Usage: example-pg [conninfo or postgresql:// URI] */
#include <leash/pg.h>

#include <stdio.h>

/* Runs one statement that returns no rows; 0 on success, else -1 after saying why. */
static int run(leash_handle *db, const char *sql, int n, const char *const *values)
{
    /* LEASH_RESULT clears the result at the end of the scope, whichever way it ends. */
    LEASH_RESULT PGresult *r = n ? leash_pg_params(db, sql, n, values) : leash_pg_exec(db, sql);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK)
        return 0;
    /* NULL: no result at all (connection lost: the handle is marked broken) */
    fprintf(stderr, "%s: %s", sql, r ? PQresultErrorMessage(r) : leash_last_error());
    return -1;
}

/* Moves amount from one account to another in one transaction. Returns 0 or -1. */
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

int main(int argc, char **argv)
{
    const char *conninfo =
        argc > 1 ? argv[1] : "postgresql://leash:leash-pg-pw@127.0.0.1:15432/leash";
    /* The conninfo is checked now; the password in it never shows in errors or dumps. */
    leash_pg_options pg = {.application_name = "example-pg"};
    leash_pool *pool = leash_pg_pool_with("db", conninfo, NULL, &pg);
    if (!pool) {
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
        LEASH_AUTO leash_handle *db = leash_acquire(pool);
        LEASH_RESULT PGresult *r =
            db ? leash_pg_exec(db, "SELECT name, balance FROM example_accounts ORDER BY name")
               : NULL;
        for (int i = 0; r && PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
            printf("%s: %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    }
    int held = leash_check_leaks(2);
    leash_shutdown();
    return rc == 0 && held == 0 ? 0 : 1;
}

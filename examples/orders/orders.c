/* orders: a multi-threaded worker service on leash pools of Redis, PostgreSQL and HTTP.
 *
 * Each worker pops an order id from a Redis list, loads the order from PostgreSQL, asks the
 * pricing service (HTTP) for the unit price, writes the result back in a transaction and
 * caches the total in Redis with a TTL. Every handle comes from a pool opened once at
 * start-up and every borrow is guarded, so a forgotten release cannot leak a connection.
 * Run orders-seed first; see --help for the flags. */
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_TTL_S 3600

struct order {
    long id;
    char sku[32];
    long qty;
    int is_new; /* status is 'new': not priced yet */
};

/* Loads order id into *o. Returns 1, or 0 with *why set to what the job ends as:
 * JOB_SKIPPED (no such order), JOB_RETRY (no connection: worth retrying) or JOB_FAILED
 * (an SQL error: retrying will not help). */
static int load_order(struct service *svc, long id, struct order *o, enum job_result *why)
{
    /* LEASH_GUARD: this scope must release the handle itself. If a later edit adds an
     * early return that forgets to, the guard takes it back (strict mode: aborts). */
    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db) {
        service_warn(svc, "order %ld: pg: %s", id, leash_last_error());
        *why = JOB_RETRY;
        return 0;
    }
    char idtxt[24];
    snprintf(idtxt, sizeof idtxt, "%ld", id);
    const char *params[] = {idtxt};
    LEASH_RESULT PGresult *res =
        leash_pg_params(db, "SELECT sku, qty, status = 'new' FROM orders WHERE id = $1", 1, params);
    leash_release(&db); /* the result does not need the connection: give it back now */

    if (!res) { /* no result at all: the connection failed (the pool replaces it) */
        service_warn(svc, "order %ld: %s", id, leash_last_error());
        *why = JOB_RETRY;
        return 0;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        service_warn(svc, "order %ld: %s", id, PQresultErrorMessage(res));
        *why = JOB_FAILED;
        return 0;
    }
    if (PQntuples(res) == 0) {
        *why = JOB_SKIPPED;
        return 0;
    }
    o->id = id;
    snprintf(o->sku, sizeof o->sku, "%s", PQgetvalue(res, 0, 0));
    o->qty = strtol(PQgetvalue(res, 0, 1), NULL, 10);
    o->is_new = PQgetvalue(res, 0, 2)[0] == 't';
    return 1;
}

/* Asks the pricing service for sku's unit price in cents. Returns JOB_PRICED with *cents
 * set, JOB_REJECTED for an unknown product (404), JOB_RETRY on a transient failure. */
static enum job_result fetch_price(struct service *svc, const char *sku, long *cents)
{
    /* LEASH_AUTO: plain RAII, the handle goes back whichever way the scope ends. */
    LEASH_AUTO leash_handle *web = leash_acquire(svc->http);
    if (!web) {
        service_warn(svc, "pricing: %s", leash_last_error());
        return JOB_RETRY;
    }
    char path[96];
    snprintf(path, sizeof path, "/prices/%s.json", sku);
    leash_http_response resp = {0};
    if (leash_http_get(web, path, &resp) != LEASH_OK) {
        service_warn(svc, "pricing %s: %s", path, leash_last_error());
        return JOB_RETRY;
    }
    enum job_result verdict = JOB_RETRY;
    const char *field = resp.status == 200 ? strstr(resp.body, "\"unit_cents\":") : NULL;
    if (resp.status == 404) {
        verdict = JOB_REJECTED;
    } else if (field) {
        *cents = strtol(field + strlen("\"unit_cents\":"), NULL, 10);
        verdict = *cents > 0 ? JOB_PRICED : JOB_REJECTED;
    } else {
        service_warn(svc, "pricing %s: HTTP %ld", path, resp.status);
    }
    leash_http_response_free(&resp);
    return verdict;
}

/* Runs one statement of the write-back transaction; 0 when it did what expect says, else
 * -1 after saying why. *rows, when asked for, gets the number of rows it touched. */
static int exec(struct service *svc, leash_handle *db, const char *sql, int n,
                const char *const *params, ExecStatusType expect, long *rows)
{
    LEASH_RESULT PGresult *res = n ? leash_pg_params(db, sql, n, params) : leash_pg_exec(db, sql);
    if (!res || PQresultStatus(res) != expect) {
        service_warn(svc, "%.24s...: %s", sql,
                     res ? PQresultErrorMessage(res) : leash_last_error());
        return -1;
    }
    if (rows)
        *rows = strtol(PQcmdTuples(res), NULL, 10);
    return 0;
}

/* Writes the verdict back in one transaction: the order row and an event row, or neither.
 * Returns verdict, JOB_SKIPPED when another worker got there first, JOB_RETRY when the
 * connection failed, JOB_FAILED for an SQL error. */
static enum job_result save(struct service *svc, const struct order *o, long unit_cents,
                            enum job_result verdict)
{
    char idtxt[24], unit[24], total[24];
    snprintf(idtxt, sizeof idtxt, "%ld", o->id);
    snprintf(unit, sizeof unit, "%ld", unit_cents);
    snprintf(total, sizeof total, "%ld", unit_cents * o->qty);
    const char *status = verdict == JOB_PRICED ? "priced" : "rejected";
    const char *upd[] = {idtxt, status, verdict == JOB_PRICED ? unit : NULL,
                         verdict == JOB_PRICED ? total : NULL, svc->prog};
    const char *ev[] = {idtxt, status, upd[3]};
    long rows = 0;
    enum job_result res;

    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db) {
        service_warn(svc, "order %ld: pg: %s", o->id, leash_last_error());
        return JOB_RETRY;
    }
    if (exec(svc, db, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL) < 0 ||
        exec(svc, db,
             "UPDATE orders SET status = $2, unit_cents = $3, total_cents = $4,"
             " priced_at = now(), priced_by = $5 WHERE id = $1 AND status = 'new'",
             5, upd, PGRES_COMMAND_OK, &rows) < 0)
        goto fail;
    if (rows == 0) { /* a duplicate job: someone priced it already */
        exec(svc, db, "ROLLBACK", 0, NULL, PGRES_COMMAND_OK, NULL);
        leash_release(&db);
        return JOB_SKIPPED;
    }
    if (exec(svc, db, "INSERT INTO order_events (order_id, event, total_cents) VALUES ($1, $2, $3)",
             3, ev, PGRES_COMMAND_OK, NULL) < 0 ||
        exec(svc, db, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL) < 0)
        goto fail;
    leash_release(&db);
    return verdict;

fail:
    /* A statement failed on a live connection: an SQL error, which retrying will not fix.
     * Otherwise the connection failed: the pool replaces it, and the job is worth a retry. */
    res = PQstatus(leash_pg(db)) == CONNECTION_OK ? JOB_FAILED : JOB_RETRY;
    /* Roll back ourselves rather than leave it to the pool: a release with a transaction
     * still open works (the adapter rolls back) but counts as a dirty return. */
    switch (PQtransactionStatus(leash_pg(db))) {
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        exec(svc, db, "ROLLBACK", 0, NULL, PGRES_COMMAND_OK, NULL);
        break;
    default: /* idle, or the connection is gone (its release destroys it) */
        break;
    }
    leash_release(&db);
    service_warn(svc, "order %ld: write-back failed%s", o->id,
                 res == JOB_RETRY ? "; queued again" : "");
    return res;
}

/* Caches the order's total for readers of orders:total:<id>, for CACHE_TTL_S seconds.
 * A cache write that fails is logged, not retried: the database has the truth. */
static void cache_total(struct service *svc, const struct order *o, long unit_cents)
{
    LEASH_AUTO leash_handle *kv = leash_acquire(svc->redis);
    if (!kv) {
        service_warn(svc, "order %ld: cache: %s", o->id, leash_last_error());
        return;
    }
    LEASH_REPLY redisReply *r = leash_redis_command(kv, "SET orders:total:%ld %ld EX %d", o->id,
                                                    unit_cents * o->qty, CACHE_TTL_S);
    if (!r || r->type == REDIS_REPLY_ERROR)
        service_warn(svc, "order %ld: cache: %s", o->id, r ? r->str : leash_last_error());
}

/* The job: one order from queue to database and cache. */
static enum job_result price_order(struct service *svc, long id)
{
    struct order o;
    enum job_result why = JOB_FAILED;
    if (!load_order(svc, id, &o, &why))
        return why;
    if (!o.is_new)
        return JOB_SKIPPED; /* a duplicate job: priced already */

    long unit_cents = 0;
    enum job_result verdict = o.qty > 0 ? fetch_price(svc, o.sku, &unit_cents) : JOB_REJECTED;
    if (verdict == JOB_RETRY)
        return JOB_RETRY;

    enum job_result res = save(svc, &o, unit_cents, verdict);
    if (res == JOB_PRICED)
        cache_total(svc, &o, unit_cents);
    return res;
}

int main(int argc, char **argv)
{
    struct service svc = {0};
    service_flags(&svc, argc, argv,
                  "Prices the orders queued by orders-seed, with pooled Redis, PostgreSQL and"
                  " HTTP.");
    if (service_open(&svc) < 0)
        return 1;
    int rc = service_run(&svc, price_order);
    return rc == 0 && svc.leaks == 0 ? 0 : 1;
}

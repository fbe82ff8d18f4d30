/* orders: a multi-threaded worker service on leash pools of Redis, PostgreSQL and HTTP.
 *
 * Each worker pops an order id from a Redis list, loads the order from PostgreSQL, asks the
 * pricing service (HTTP) for the unit price, writes the result back in a transaction and
 * caches the total in Redis with a TTL. Every handle comes from a pool opened once at
 * start-up and every borrow is guarded, so a forgotten release cannot leak a connection.
 *
 * It also runs on replicated servers (--redis redis-sentinel://..., --pg over a primary and
 * a standby with target_session_attrs=read-write, --pg-read for the reads a standby can
 * serve) and rides through their failovers: a request that fails because a server went
 * away or changed role fails the job transiently (JOB_RETRY), the service runs the job
 * again after a short pause (service.c, run_job), and every write of a job is idempotent,
 * so running it twice changes nothing:
 *   - the order row moves from 'new' once (UPDATE ... WHERE status = 'new'), its event row
 *     is keyed by the order (INSERT ... ON CONFLICT DO NOTHING), both in one transaction;
 *   - the row records which job priced it (priced_by), so an attempt whose COMMIT reply
 *     was lost finds out that the COMMIT happened;
 *   - the cache write is a SET of the order's key; with --drain, a sweep at the end
 *     queues again what the database says is not done and writes again the cached totals
 *     a Redis failover lost (see repair_cache).
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
    char status[16]; /* new, priced or rejected */
    long total;      /* total_cents, once priced */
    int mine;        /* this job (an earlier attempt of it) wrote the verdict */
};

/* "host:port" of a PostgreSQL handle's server, for the timeline. */
static const char *pg_peer(leash_handle *db, char *out, size_t len)
{
    PGconn *c = leash_pg(db);
    snprintf(out, len, "%s:%s", c && PQhost(c) ? PQhost(c) : "?", c && PQport(c) ? PQport(c) : "?");
    return out;
}

/* A failed request on pool: counted; JOB_RETRY when it is worth running the job again. */
static enum job_result request_failed(struct service *svc, enum service_pool pool, int transient)
{
    service_failed(svc, pool);
    return transient ? JOB_RETRY : JOB_FAILED;
}

/* Reads order id from pool into *o. Returns 1, 0 when there is no such order, or -1 with
 * *why set (JOB_RETRY: the server failed, JOB_FAILED: an SQL error). */
static int read_order(struct service *svc, leash_pool *pool, enum service_pool which, long id,
                      struct order *o, enum job_result *why)
{
    /* LEASH_GUARD: this scope must release the handle itself. If a later edit adds an
     * early return that forgets to, the guard takes it back (strict mode: aborts). */
    LEASH_GUARD leash_handle *db = leash_acquire(pool);
    if (!db) {
        service_warn(svc, "order %ld: %s: %s", id, leash_pool_target(pool), leash_last_error());
        *why = request_failed(svc, which, service_transient(leash_last_status()));
        return -1;
    }
    char idtxt[24], peer[80];
    snprintf(idtxt, sizeof idtxt, "%ld", id);
    const char *params[] = {idtxt, service_job_token()};
    LEASH_RESULT PGresult *res = leash_pg_params(
        db, "SELECT sku, qty, status, total_cents, priced_by = $2 FROM orders WHERE id = $1", 2,
        params);
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        service_served(svc, which, pg_peer(db, peer, sizeof peer));
    leash_release(&db); /* the result does not need the connection: give it back now */

    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        service_warn(svc, "order %ld: %s", id,
                     res ? PQresultErrorMessage(res) : leash_last_error());
        *why = request_failed(svc, which, service_transient_pg(res));
        return -1;
    }
    if (PQntuples(res) == 0)
        return 0;
    o->id = id;
    snprintf(o->sku, sizeof o->sku, "%s", PQgetvalue(res, 0, 0));
    o->qty = strtol(PQgetvalue(res, 0, 1), NULL, 10);
    snprintf(o->status, sizeof o->status, "%s", PQgetvalue(res, 0, 2));
    o->total = strtol(PQgetvalue(res, 0, 3), NULL, 10);
    o->mine = PQgetvalue(res, 0, 4)[0] == 't';
    return 1;
}

/* Loads order id: from the read pool (a standby, with --pg-read), and from the primary
 * when the standby cannot answer or has not got it yet (it replays the primary a little
 * behind: a row or even a table just created may not be there). Returns 1, or 0 with *why
 * set to what the job ends as. */
static int load_order(struct service *svc, long id, struct order *o, enum job_result *why)
{
    int found = -1;
    if (svc->pg_read != svc->pg)
        found = read_order(svc, svc->pg_read, POOL_PG_READ, id, o, why);
    if (found <= 0)
        found = read_order(svc, svc->pg, POOL_PG, id, o, why);
    if (found == 0)
        *why = JOB_SKIPPED; /* no such order */
    return found > 0;
}

/* Asks the pricing service for sku's unit price in cents. Returns JOB_PRICED with *cents
 * set, JOB_REJECTED for an unknown product (404), JOB_RETRY on a transient failure. */
static enum job_result fetch_price(struct service *svc, const char *sku, long *cents)
{
    /* LEASH_AUTO: plain RAII, the handle goes back whichever way the scope ends. */
    LEASH_AUTO leash_handle *web = leash_acquire(svc->http);
    if (!web) {
        service_warn(svc, "pricing: %s", leash_last_error());
        return request_failed(svc, POOL_HTTP, service_transient(leash_last_status()));
    }
    char path[96];
    snprintf(path, sizeof path, "/prices/%s.json", sku);
    leash_http_response resp = {0};
    if (leash_http_get(web, path, &resp) != LEASH_OK) {
        service_warn(svc, "pricing %s: %s", path, leash_last_error());
        return request_failed(svc, POOL_HTTP, service_transient(leash_last_status()));
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
        service_failed(svc, POOL_HTTP);
    }
    leash_http_response_free(&resp);
    return verdict;
}

/* Runs one statement of the write-back transaction. Returns its result when it did what
 * expect says; else NULL after saying why, with *why set (JOB_RETRY when the server
 * failed or changed role, JOB_FAILED for an SQL error). */
static PGresult *exec(struct service *svc, leash_handle *db, const char *sql, int n,
                      const char *const *params, ExecStatusType expect, enum job_result *why)
{
    PGresult *res = n ? leash_pg_params(db, sql, n, params) : leash_pg_exec(db, sql);
    if (res && PQresultStatus(res) == expect)
        return res;
    service_warn(svc, "%.24s...: %s", sql, res ? PQresultErrorMessage(res) : leash_last_error());
    *why = request_failed(svc, POOL_PG, service_transient_pg(res));
    PQclear(res);
    return NULL;
}

/* Writes the verdict back in one transaction: the order row and its event row, or neither.
 * When the row had moved on already (a duplicate job, or this job's earlier attempt whose
 * COMMIT reply was lost), reads what it says instead. Fills o->status, o->total and
 * o->mine. Returns 0, or -1 with *why set to JOB_RETRY or JOB_FAILED. */
static int save(struct service *svc, struct order *o, long unit_cents, enum job_result verdict,
                enum job_result *why)
{
    char idtxt[24], unit[24], total[24], peer[80];
    snprintf(idtxt, sizeof idtxt, "%ld", o->id);
    snprintf(unit, sizeof unit, "%ld", unit_cents);
    snprintf(total, sizeof total, "%ld", unit_cents * o->qty);
    const char *status = verdict == JOB_PRICED ? "priced" : "rejected";
    const char *upd[] = {idtxt, status, verdict == JOB_PRICED ? unit : NULL,
                         verdict == JOB_PRICED ? total : NULL, service_job_token()};
    const char *ev[] = {idtxt, status, upd[3]};
    const char *look[] = {idtxt, service_job_token()};
    PGresult *res = NULL;

    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db) {
        service_warn(svc, "order %ld: pg: %s", o->id, leash_last_error());
        *why = request_failed(svc, POOL_PG, service_transient(leash_last_status()));
        return -1;
    }
    res = exec(svc, db, "BEGIN", 0, NULL, PGRES_COMMAND_OK, why);
    if (!res)
        goto fail;
    PQclear(res);
    res = exec(svc, db,
               "UPDATE orders SET status = $2, unit_cents = $3, total_cents = $4,"
               " priced_at = now(), priced_by = $5 WHERE id = $1 AND status = 'new'",
               5, upd, PGRES_COMMAND_OK, why);
    if (!res)
        goto fail;
    long rows = strtol(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    if (rows == 1) {
        res = exec(svc, db,
                   "INSERT INTO order_events (order_id, event, total_cents)"
                   " VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
                   3, ev, PGRES_COMMAND_OK, why);
        if (!res)
            goto fail;
        PQclear(res);
        snprintf(o->status, sizeof o->status, "%s", status);
        o->total = unit_cents * o->qty;
        o->mine = 1;
    } else { /* the row moved on already: who did it, and what does it say? */
        res = exec(svc, db,
                   "SELECT status, total_cents, priced_by = $2 FROM orders"
                   " WHERE id = $1",
                   2, look, PGRES_TUPLES_OK, why);
        if (!res)
            goto fail;
        if (PQntuples(res) == 1) {
            snprintf(o->status, sizeof o->status, "%s", PQgetvalue(res, 0, 0));
            o->total = strtol(PQgetvalue(res, 0, 1), NULL, 10);
            o->mine = PQgetvalue(res, 0, 2)[0] == 't';
        }
        PQclear(res);
    }
    /* If the connection fails here, whether the COMMIT happened is unknown: the retry
     * reads the row and finds out (priced_by). */
    res = exec(svc, db, "COMMIT", 0, NULL, PGRES_COMMAND_OK, why);
    if (!res)
        goto fail;
    PQclear(res);
    service_served(svc, POOL_PG, pg_peer(db, peer, sizeof peer));
    leash_release(&db);
    return 0;

fail:
    /* Roll back ourselves rather than leave it to the pool: a release with a transaction
     * still open works (the adapter rolls back) but counts as a dirty return. */
    switch (PQtransactionStatus(leash_pg(db))) {
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        PQclear(leash_pg_exec(db, "ROLLBACK"));
        break;
    default: /* idle, or the connection is gone (its release destroys it) */
        break;
    }
    leash_release(&db);
    return -1;
}

/* Caches the order's total for readers of orders:total:<id>, for CACHE_TTL_S seconds.
 * Returns 0, or -1 with *why set to JOB_RETRY or JOB_FAILED. */
static int cache_total(struct service *svc, const struct order *o, enum job_result *why)
{
    LEASH_AUTO leash_handle *kv = leash_acquire(svc->redis);
    if (!kv) {
        service_warn(svc, "order %ld: cache: %s", o->id, leash_last_error());
        *why = request_failed(svc, POOL_REDIS, service_transient(leash_last_status()));
        return -1;
    }
    LEASH_REPLY redisReply *r =
        leash_redis_command(kv, "SET orders:total:%ld %ld EX %d", o->id, o->total, CACHE_TTL_S);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        service_warn(svc, "order %ld: cache: %s", o->id, r ? r->str : leash_last_error());
        *why = request_failed(svc, POOL_REDIS, service_transient_redis(r));
        return -1;
    }
    service_served(svc, POOL_REDIS, leash_redis_peer(kv));
    return 0;
}

/* The job: one order from queue to database and cache. Idempotent: a second run of the
 * same job, or a duplicate of it, finds the order done and only writes the cache again. */
static enum job_result price_order(struct service *svc, long id)
{
    struct order o = {0};
    enum job_result why = JOB_FAILED;
    if (!load_order(svc, id, &o, &why))
        return why;

    if (strcmp(o.status, "new") == 0) {
        long unit_cents = 0;
        enum job_result verdict = o.qty > 0 ? fetch_price(svc, o.sku, &unit_cents) : JOB_REJECTED;
        if (verdict == JOB_RETRY || verdict == JOB_FAILED)
            return verdict;
        if (save(svc, &o, unit_cents, verdict, &why) < 0)
            return why;
    }
    if (strcmp(o.status, "priced") == 0 && cache_total(svc, &o, &why) < 0)
        return why;
    if (!o.mine)
        return JOB_SKIPPED; /* a duplicate: another job did it */
    return strcmp(o.status, "priced") == 0 ? JOB_PRICED : JOB_REJECTED;
}

/* The sweep's second half: every priced order's total must be in the cache. A write that
 * went to a Redis master in the moment between its replica's promotion and the sentinels
 * announcing it is lost when the old master becomes a replica (no client can tell at the
 * time); the database has the truth, so write those again. Returns how many, or -1. */
static long repair_cache(struct service *svc)
{
    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db) {
        service_failed(svc, POOL_PG);
        return -1;
    }
    LEASH_RESULT PGresult *res =
        leash_pg_exec(db, "SELECT id, total_cents FROM orders WHERE status = 'priced' ORDER BY id");
    leash_release(&db);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        service_failed(svc, POOL_PG);
        return -1;
    }
    LEASH_AUTO leash_handle *kv = leash_acquire(svc->redis);
    if (!kv) {
        service_failed(svc, POOL_REDIS);
        return -1;
    }
    /* Many keys per MGET: the raw hiredis context takes an argument vector. */
    enum { BATCH = 500 };
    char keys[BATCH][40];
    const char *argv[BATCH + 1] = {"MGET"};
    long repaired = 0, n = PQntuples(res);
    for (long first = 0; first < n; first += BATCH) {
        int count = n - first < BATCH ? (int)(n - first) : BATCH;
        for (int k = 0; k < count; k++) {
            snprintf(keys[k], sizeof keys[k], "orders:total:%s",
                     PQgetvalue(res, (int)first + k, 0));
            argv[k + 1] = keys[k];
        }
        redisReply *got = redisCommandArgv(leash_redis(kv), count + 1, argv, NULL);
        if (!got || got->type != REDIS_REPLY_ARRAY || got->elements != (size_t)count) {
            if (got)
                freeReplyObject(got);
            leash_mark_broken(kv); /* whatever happened, do not reuse this connection */
            service_failed(svc, POOL_REDIS);
            return -1;
        }
        for (int k = 0; k < count; k++) {
            const char *want = PQgetvalue(res, (int)first + k, 1);
            redisReply *have = got->element[k];
            if (have->type == REDIS_REPLY_STRING && strcmp(have->str, want) == 0)
                continue;
            LEASH_REPLY redisReply *r =
                leash_redis_command(kv, "SET %s %s EX %d", keys[k], want, CACHE_TTL_S);
            if (!r || r->type == REDIS_REPLY_ERROR) {
                freeReplyObject(got);
                service_failed(svc, POOL_REDIS);
                return -1;
            }
            repaired++;
        }
        freeReplyObject(got);
    }
    return repaired;
}

/* --drain: before stopping, queue again the orders the database says are not done (a job
 * whose requeue was lost in a Redis failover, say), then check the cache. The database is
 * the system of record; the queue only says what to do next. */
static long sweep(struct service *svc)
{
    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db) {
        service_failed(svc, POOL_PG);
        return -1;
    }
    LEASH_RESULT PGresult *res =
        leash_pg_exec(db, "SELECT id FROM orders WHERE status = 'new' ORDER BY id");
    leash_release(&db);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        service_failed(svc, POOL_PG);
        return -1;
    }
    long n = PQntuples(res);
    for (long i = 0; i < n; i++)
        if (service_requeue(svc, strtol(PQgetvalue(res, (int)i, 0), NULL, 10)) < 0)
            return -1;
    atomic_fetch_add(&svc->swept, (unsigned long)n);
    if (n)
        return n;
    long repaired = repair_cache(svc);
    if (repaired < 0)
        return -1;
    if (repaired)
        service_warn(svc, "%ld cached totals were missing or stale: written again", repaired);
    atomic_fetch_add(&svc->repaired, (unsigned long)repaired);
    return 0;
}

int main(int argc, char **argv)
{
    struct service svc = {0};
    service_flags(&svc, argc, argv,
                  "Prices the orders queued by orders-seed, with pooled Redis, PostgreSQL and"
                  " HTTP.");
    if (service_open(&svc) < 0)
        return 1;
    svc.sweep = sweep;
    int rc = service_run(&svc, price_order);
    return rc == 0 && svc.leaks == 0 ? 0 : 1;
}

/* leak-hunt: the orders worker with one deliberate bug, to watch leash catch a leak.
 *
 * price_order() borrows a PostgreSQL handle and, on one error path (an order with quantity
 * 0, about one job in 29), returns without releasing it. Without leash that connection is
 * gone for good: after max_size such jobs the pool is empty and every worker hangs. Here
 * the handle is under LEASH_GUARD, so:
 *   - by default the guard reclaims it at the end of the scope, counts leaks_reclaimed
 *     (watch it grow in the dumps, under this borrow site) and the service keeps working;
 *   - with LEASH_STRICT=1 the first leak aborts the process with the borrow site, which is
 *     what a test suite wants.
 * Seed with orders-seed first; the flags are those of orders (--help). */
#include "../orders/service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GET /prices/<sku>.json from the pricing service: the unit price in cents, 0 if unknown,
 * -1 on a failure. */
static long unit_price(struct service *svc, const char *sku)
{
    LEASH_AUTO leash_handle *web = leash_acquire(svc->http);
    if (!web)
        return -1;
    char path[96];
    snprintf(path, sizeof path, "/prices/%s.json", sku);
    leash_http_response resp = {0};
    if (leash_http_get(web, path, &resp) != LEASH_OK)
        return -1;
    const char *field = resp.status == 200 ? strstr(resp.body, "\"unit_cents\":") : NULL;
    long cents =
        field ? strtol(field + strlen("\"unit_cents\":"), NULL, 10) : (resp.status == 404 ? 0 : -1);
    leash_http_response_free(&resp);
    return cents;
}

static enum job_result price_order(struct service *svc, long id)
{
    char idtxt[24];
    snprintf(idtxt, sizeof idtxt, "%ld", id);
    const char *params[] = {idtxt, NULL};
    char sku[32];
    long qty;

    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db)
        return JOB_RETRY;
    {
        LEASH_RESULT PGresult *res = leash_pg_params(
            db, "SELECT sku, qty FROM orders WHERE id = $1 AND status = 'new'", 1, params);
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
            leash_release(&db);
            return JOB_RETRY;
        }
        if (PQntuples(res) == 0) {
            leash_release(&db);
            return JOB_SKIPPED;
        }
        snprintf(sku, sizeof sku, "%s", PQgetvalue(res, 0, 0));
        qty = strtol(PQgetvalue(res, 0, 1), NULL, 10);
    }
    if (qty <= 0)
        return JOB_REJECTED; /* THE BUG: db is still borrowed on this path */
    leash_release(&db);

    long unit = unit_price(svc, sku);
    if (unit < 0)
        return JOB_RETRY;

    char total[24];
    snprintf(total, sizeof total, "%ld", unit * qty);
    params[1] = unit > 0 ? total : NULL;
    db = leash_acquire(svc->pg);
    if (!db)
        return JOB_RETRY;
    LEASH_RESULT PGresult *res =
        leash_pg_params(db,
                        "UPDATE orders SET status = CASE WHEN $2::bigint IS NULL THEN 'rejected'"
                        " ELSE 'priced' END, total_cents = $2, priced_at = now(),"
                        " priced_by = 'leak-hunt' WHERE id = $1 AND status = 'new'",
                        2, params);
    leash_release(&db);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
        return JOB_RETRY;
    if (unit == 0)
        return JOB_REJECTED;

    LEASH_AUTO leash_handle *kv = leash_acquire(svc->redis);
    LEASH_REPLY redisReply *r =
        kv ? leash_redis_command(kv, "SET orders:total:%ld %ld EX 3600", id, unit * qty) : NULL;
    (void)r; /* the cache is best effort */
    return JOB_PRICED;
}

int main(int argc, char **argv)
{
    struct service svc = {0};
    service_flags(&svc, argc, argv,
                  "The orders worker with a deliberate leak on an error path. Run it as is to"
                  " see the guard\nreclaim the leaked handles (try --dump-every 1), and with"
                  " LEASH_STRICT=1 to see it abort\nat the first leak, naming the borrow site.");
    if (service_open(&svc) < 0)
        return 1;
    /* Exit status: 0 when the service ran to the end with no handle left outstanding, even
     * though its guards caught leaks on the way (the summary counts them). */
    return service_run(&svc, price_order);
}

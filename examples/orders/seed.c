/* orders-seed: the load generator for orders and leak-hunt. It creates the schema, seeds N
 * orders in PostgreSQL, publishes the price list the pricing service (nginx) serves, and
 * queues the N job ids on the Redis list. Safe to run again: it starts over each time. */
#include "service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PRODUCTS 20 /* SKU-1 .. SKU-20 have a price; SKU-404 has none (rejected) */
#define BATCH 1000  /* job ids per LPUSH */

static const char *const schema_sql = "CREATE SCHEMA IF NOT EXISTS shop;"
                                      "CREATE TABLE IF NOT EXISTS shop.orders ("
                                      "  id bigint PRIMARY KEY,"
                                      "  customer text NOT NULL,"
                                      "  sku text NOT NULL,"
                                      "  qty integer NOT NULL,"
                                      "  status text NOT NULL DEFAULT 'new',"
                                      "  unit_cents bigint,"
                                      "  total_cents bigint,"
                                      "  priced_at timestamptz,"
                                      "  priced_by text);"
                                      "CREATE TABLE IF NOT EXISTS shop.order_events ("
                                      "  id bigserial PRIMARY KEY,"
                                      "  order_id bigint NOT NULL,"
                                      "  event text NOT NULL,"
                                      "  total_cents bigint,"
                                      "  at timestamptz NOT NULL DEFAULT now());"
                                      "TRUNCATE shop.orders, shop.order_events;"
                                      /* one event per order: orders inserts it with ON
                                       * CONFLICT DO NOTHING, so a job run twice adds none */
                                      "CREATE UNIQUE INDEX IF NOT EXISTS order_events_once"
                                      "  ON shop.order_events (order_id);";

/* Every 29th order has quantity 0 and every 50th an unknown product: both are rejected
 * by orders (and the first is the error path leak-hunt gets wrong). */
static const char *const seed_sql =
    "INSERT INTO shop.orders (id, customer, sku, qty)"
    " SELECT g, 'customer-' || (g % 97),"
    "        CASE WHEN g % 50 = 0 THEN 'SKU-404' ELSE 'SKU-' || (1 + g % 20) END,"
    "        CASE WHEN g % 29 = 0 THEN 0 ELSE 1 + g % 5 END"
    " FROM generate_series(1, $1::bigint) AS g";

static int seed_database(struct service *svc)
{
    LEASH_GUARD leash_handle *db = leash_acquire(svc->pg);
    if (!db) {
        service_warn(svc, "PostgreSQL: %s", leash_last_error());
        return -1;
    }
    /* Several statements in one string: leash_pg_exec sends it as a simple query, which
     * PostgreSQL runs as one implicit transaction. */
    PGresult *res = leash_pg_exec(db, schema_sql);
    int ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        service_warn(svc, "schema: %s", res ? PQresultErrorMessage(res) : leash_last_error());
    PQclear(res);

    char n[24];
    snprintf(n, sizeof n, "%ld", svc->jobs);
    const char *params[] = {n};
    res = ok ? leash_pg_params(db, seed_sql, 1, params) : NULL;
    if (ok && !(res && PQresultStatus(res) == PGRES_COMMAND_OK)) {
        service_warn(svc, "seed: %s", res ? PQresultErrorMessage(res) : leash_last_error());
        ok = 0;
    }
    PQclear(res);
    leash_release(&db);
    return ok ? 0 : -1;
}

/* The pricing service of the example is a folder of JSON files that the test nginx serves
 * (GET /prices/SKU-n.json); a real one would compute the price. */
static int publish_prices(struct service *svc, const char *www)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/prices", www) >= (int)sizeof path - 16) {
        service_warn(svc, "the nginx folder name is too long");
        return -1;
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST) {
        service_warn(svc, "%s: %s (is the nginx of tests/servers.sh running?)", path,
                     strerror(errno));
        return -1;
    }
    for (int i = 1; i <= PRODUCTS; i++) {
        if (snprintf(path, sizeof path, "%s/prices/SKU-%d.json", www, i) >= (int)sizeof path)
            return -1;
        FILE *f = fopen(path, "w");
        if (!f) {
            service_warn(svc, "%s: %s", path, strerror(errno));
            return -1;
        }
        fprintf(f, "{\"sku\":\"SKU-%d\",\"unit_cents\":%d,\"currency\":\"EUR\"}\n", i,
                100 * i + 99);
        fclose(f);
        chmod(path, 0644);
    }
    return 0;
}

/* Empties the queue and the cache, then queues ids 1..N (the worker's BRPOP takes 1 first). */
static int queue_jobs(struct service *svc)
{
    LEASH_AUTO leash_handle *kv = leash_acquire(svc->redis);
    if (!kv) {
        service_warn(svc, "Redis: %s", leash_last_error());
        return -1;
    }
    redisReply *r = leash_redis_command(kv, "DEL %s", svc->queue);
    if (!r) {
        service_warn(svc, "Redis: %s", leash_last_error());
        return -1;
    }
    freeReplyObject(r);

    /* Forget the totals cached by a previous run. */
    char cursor[32] = "0";
    do {
        LEASH_REPLY redisReply *page =
            leash_redis_command(kv, "SCAN %s MATCH orders:total:* COUNT 1000", cursor);
        if (!page || page->type != REDIS_REPLY_ARRAY || page->elements != 2) {
            service_warn(svc, "SCAN: %s", page ? "unexpected reply" : leash_last_error());
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", page->element[0]->str);
        redisReply *keys = page->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            LEASH_REPLY redisReply *d = leash_redis_command(kv, "DEL %s", keys->element[i]->str);
            if (!d)
                return -1;
        }
    } while (strcmp(cursor, "0") != 0);

    /* Many ids per command: the raw hiredis context is there for what the printf-style
     * helper cannot say (an argument vector). The pool checks it fully on release. */
    redisContext *c = leash_redis(kv);
    const char **argv = calloc(BATCH + 2, sizeof *argv);
    char(*ids)[24] = calloc(BATCH, sizeof *ids);
    int rc = argv && ids ? 0 : -1;
    for (long next = 1; rc == 0 && next <= svc->jobs; next += BATCH) {
        int argc = 0;
        argv[argc++] = "LPUSH";
        argv[argc++] = svc->queue;
        for (long id = next; id < next + BATCH && id <= svc->jobs; id++) {
            snprintf(ids[argc - 2], sizeof ids[0], "%ld", id);
            argv[argc] = ids[argc - 2];
            argc++;
        }
        redisReply *pushed = redisCommandArgv(c, argc, argv, NULL);
        if (!pushed || pushed->type != REDIS_REPLY_INTEGER) {
            service_warn(svc, "LPUSH: %s", pushed ? pushed->str : c->errstr);
            rc = -1;
        }
        if (pushed)
            freeReplyObject(pushed);
    }
    free(argv);
    free(ids);
    return rc;
}

int main(int argc, char **argv)
{
    struct service svc = {0};
    service_flags(&svc, argc, argv,
                  "Creates the shop schema, seeds --jobs orders, publishes the prices and"
                  " queues the job ids.\n"
                  "Environment: LEASH_SERVERS_DIR (default /tmp/leash-servers) locates the"
                  " nginx document root.");
    if (service_open(&svc) < 0)
        return 1;

    const char *dir = getenv("LEASH_SERVERS_DIR");
    char www[4096];
    snprintf(www, sizeof www, "%s/nginx/www", dir && *dir ? dir : "/tmp/leash-servers");

    int rc = seed_database(&svc);
    if (rc == 0)
        rc = publish_prices(&svc, www);
    if (rc == 0)
        rc = queue_jobs(&svc);
    if (rc == 0)
        printf("%s: %ld orders seeded, %ld jobs queued on '%s', %d prices published\n", svc.prog,
               svc.jobs, svc.jobs, svc.queue, PRODUCTS);
    leash_pool_close(svc.http);
    leash_pool_close(svc.pg);
    leash_pool_close(svc.redis);
    leash_shutdown();
    return rc == 0 ? 0 : 1;
}

/* Example: a pool of Redis connections with leash (hiredis underneath).
 * Usage: example-redis [URL]
 *   redis://[[user]:password@]host[:port][/db]
 *   redis-sentinel://:password@host1:26379,host2:26379/0?sentinel_password=...#mymaster
 * (with Sentinel the pool follows the master through a failover: the same code works). */
#include <leash/redis.h>

#include <stdio.h>

/* Counts a page view and returns the new count, or -1. The handle is borrowed for the
 * two commands only and the guards give everything back on every path. */
static long long count_visit(leash_pool *pool, const char *page)
{
    LEASH_AUTO leash_handle *h = leash_acquire(pool); /* released at the end of the scope */
    if (!h) {
        fprintf(stderr, "redis: %s\n", leash_last_error()); /* timeout, connect failure ... */
        return -1;
    }
    LEASH_REPLY redisReply *n = leash_redis_command(h, "INCR example:visits:%s", page);
    if (!n || n->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "INCR: %s\n", n ? n->str : leash_last_error());
        return -1;
    }
    LEASH_REPLY redisReply *ttl = leash_redis_command(h, "EXPIRE example:visits:%s 60", page);
    printf("(served by %s)\n", leash_redis_peer(h)); /* with Sentinel: the current master */
    return ttl ? n->integer : -1;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "redis://127.0.0.1:16379";
    leash_pool_options opts = {.max_size = 4, .acquire_timeout_ms = 500};

    /* Open once at start-up: the URL is checked now, the first connection is made lazily. */
    leash_pool *pool = leash_redis_pool("cache", url, &opts);
    if (!pool) {
        fprintf(stderr, "bad Redis URL: %s\n", leash_last_error());
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        long long n = count_visit(pool, "home");
        if (n < 0)
            break;
        printf("visits of home: %lld\n", n);
    }

    leash_pool_stats st;
    leash_pool_stats_get(pool, &st);
    printf("pool %s: %llu borrows over %llu connection(s)\n", st.name,
           (unsigned long long)st.acquired, (unsigned long long)st.created);
    int held = leash_check_leaks(2); /* 0: every handle came back */
    leash_shutdown();                /* closes the pool */
    return held == 0 ? 0 : 1;
}

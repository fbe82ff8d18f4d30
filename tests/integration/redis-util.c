/* Helpers shared by the Redis integration tests: servers, pools, replies. */
#include "redis-util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* A plain hiredis connection to the password-less instance, outside leash (for CLIENT KILL,
 * checks and setup). */
redisContext *admin(void)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", SRV_REDIS_PORT, tv);
    if (!rc || rc->err)
        fail_msg("admin connect: %s", rc ? rc->errstr : "out of memory");
    redisSetTimeout(rc, tv);
    return rc;
}

/* Runs a command on the admin connection; fails the test unless a reply came. */
redisReply *admin_cmd(redisContext *rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("admin %s: %s", fmt, rc->errstr);
    return r;
}

leash_pool *pool(const char *name, const char *url, int max_size)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 5000};
    leash_pool *p = leash_redis_pool(name, url, &o);
    if (!p)
        fail_msg("pool %s: %s", name, leash_last_error());
    return p;
}

/* The reply r of the command what, which must be a reply and not an error (for must()). */
redisReply *checked(redisReply *r, const char *what)
{
    if (!r)
        fail_msg("%s: %s", what, leash_last_error());
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", what, r->str);
    return r;
}

/* GET key through h, as a malloc'd string ("(nil)" for none). */
char *get(leash_handle *h, const char *key)
{
    LEASH_REPLY redisReply *r = must(h, "GET %s", key);
    return strdup(r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
}

void set(leash_handle *h, const char *key, const char *value)
{
    LEASH_REPLY redisReply *r = leash_redis_command(h, "SET %s %s", key, value);
    if (!r || r->type != REDIS_REPLY_STATUS)
        fail_msg("SET %s: %s", key, r ? r->str : leash_last_error());
}

long long client_id(leash_handle *h)
{
    LEASH_REPLY redisReply *r = must(h, "CLIENT ID");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    return r->integer;
}

/* The value of field (e.g. "db") in this connection's CLIENT INFO line (malloc'd). */
char *client_info(leash_handle *h, const char *field)
{
    LEASH_REPLY redisReply *r = must(h, "CLIENT INFO");
    char key[64];
    snprintf(key, sizeof key, " %s=", field);
    const char *p = strstr(r->str, key);
    if (!p)
        fail_msg("CLIENT INFO has no %s: %s", field, r->str);
    p += strlen(key);
    return strndup(p, strcspn(p, " \r\n"));
}

int teardown(void **state)
{
    srv_signal(SRV_REDIS_PIDFILE, SIGCONT); /* in case a pause test failed half-way */
    return teardown_no_leaks(state);
}

int group_setup(void **state)
{
    return srv_ctl("start", "redis") == 0 ? 0 : -1;
}

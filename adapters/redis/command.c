/* Redis adapter: the borrower's calls (leash_redis, leash_redis_command), the state they track
 * from commands and replies, and what a -READONLY reply means. */
#include "redis-int.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* A connection back from the pool is checked (one recv with MSG_PEEK) on first use only when
 * it sat idle at least this long: a peek costs about 2% of a loopback round trip, and a
 * connection reused within the millisecond is as likely to die after the peek as before. */
#define REDIS_PEEK_IDLE_NS 1000000u

static redis_conn *held(leash_handle *h, const char *fn)
{
    return leash__held_conn(h, &leash_redis_adapter, fn, "Redis");
}

static const char *pool_name(leash_handle *h)
{
    return leash_pool_name(leash_handle_pool(h));
}

/* The same node again, for a connection that died while idle: direct targets reconnect to
 * their address; a Sentinel pool's connection only while its node is still the one the
 * sentinels name, and only in the role it had. */
static redisContext *reopen(redis_conn *c, char *err, size_t errlen)
{
    const redis_target *t = c->t;
    uint64_t deadline = leash__redis_deadline(t->connect_timeout_ms);
    char host[REDIS_ADDR_MAX];
    int port = 0;
    const char *want = NULL;
    if (t->kind == REDIS_UNIX) {
        snprintf(host, sizeof host, "%s", t->host);
    } else if (t->kind == REDIS_TCP) {
        snprintf(host, sizeof host, "%s", t->host);
        port = t->port;
    } else {
        if (!leash__sentinel_peer_current(c->ctx, c->peer)) {
            snprintf(err, errlen, "%.200s is no longer where the sentinels point", c->peer);
            return NULL;
        }
        const char *colon = strrchr(c->peer, ':');
        int v6 = c->peer[0] == '[';
        snprintf(host, sizeof host, "%.*s", colon ? (int)(colon - c->peer - 2 * v6) : 0,
                 c->peer + v6);
        port = colon ? atoi(colon + 1) : 0;
        want = t->replica ? "slave" : "master";
    }
    char why[LEASH_ERR_MAX / 2];
    redisContext *rc = port || t->kind == REDIS_UNIX
                           ? leash__redis_dial(host, port, deadline, why, sizeof why)
                           : NULL;
    if (!rc && !port && t->kind != REDIS_UNIX)
        snprintf(why, sizeof why, "bad address");
    if (rc && leash__redis_handshake(rc, t, want, deadline, why, sizeof why) != 0) {
        redisFree(rc);
        rc = NULL;
    }
    if (rc && leash__redis_set_timeout(rc, t->command_timeout_ms) != 0) {
        snprintf(why, sizeof why, "cannot set the command timeout");
        redisFree(rc);
        rc = NULL;
    }
    if (!rc)
        leash__redis_message(t, "", why, err, errlen);
    return rc;
}

/* First use since the pool lent it: a connection that died while idle (CLIENT KILL, server
 * restart, idle timeout) shows EOF or an error on its socket. Nothing of the borrower's is on
 * it yet, so it is made again in place. Returns 0, or -1 with h marked broken and the
 * failure recorded. */
static int first_use(leash_handle *h, redis_conn *c, const char *fn)
{
    c->fresh = 0;
    if (leash__coarse_ns() - c->released < REDIS_PEEK_IDLE_NS)
        return 0;
    char b;
    ssize_t n;
    do
        n = recv(c->rc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (LEASH_LIKELY(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
        return 0;
    char err[LEASH_ERR_MAX / 2];
    redisContext *rc = reopen(c, err, sizeof err);
    if (rc) {
        redisFree(c->rc);
        c->rc = rc;
        c->db = c->t->db;
        c->multi = c->watch = c->subscribed = c->tainted = 0;
        leash__log(LEASH_LOG_INFO,
                   "redis pool \"%s\": a pooled connection to %s %s while idle; reconnected",
                   pool_name(h), c->peer, n == 0 ? "was closed by the server" : "went bad");
        return 0;
    }
    leash_mark_broken(h);
    leash__fail(LEASH_EIO,
                "%s: pool \"%s\": the connection to %s died while idle and reconnecting "
                "failed: %s",
                fn, pool_name(h), c->peer, err);
    return -1;
}

redisContext *leash_redis(leash_handle *h)
{
    redis_conn *c = held(h, "leash_redis");
    if (!c)
        return NULL;
    c->raw = 1;
    if (c->fresh)
        first_use(h, c, "leash_redis");
    return c->rc;
}

const char *leash_redis_peer(leash_handle *h)
{
    redis_conn *c = held(h, "leash_redis_peer");
    return c ? c->peer : NULL;
}

/* What a command changes in the tracked state. */
enum {
    CMD_OTHER,
    CMD_MULTI,
    CMD_END_MULTI, /* EXEC, DISCARD */
    CMD_WATCH,
    CMD_UNWATCH,
    CMD_SELECT,
    CMD_SUBSCRIBE,
    CMD_TAINT,
    CMD_CLIENT,
};

static int name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

/* The n-th argument (0: the command name) of a command hiredis formatted
 * ("*N\r\n$L\r\nARG\r\n..."), or NULL. */
static const char *arg_of(const char *cmd, size_t cmdlen, int n, size_t *len)
{
    const char *end = cmd + cmdlen;
    const char *p = memchr(cmd, '\n', cmdlen);
    if (!p)
        return NULL;
    p++;
    for (int i = 0; p < end && *p == '$'; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return NULL;
        size_t l = (size_t)strtoul(p + 1, NULL, 10);
        const char *arg = nl + 1;
        if ((size_t)(end - arg) < l + 2)
            return NULL;
        if (i == n) {
            *len = l;
            return arg;
        }
        p = arg + l + 2;
    }
    return NULL;
}

/* Classifies a formatted command by its name; most commands return after one switch. */
static int classify(const char *cmd, size_t cmdlen)
{
    size_t len = 0;
    const char *name = arg_of(cmd, cmdlen, 0, &len);
    if (!name || len < 4 || len > 10)
        return CMD_OTHER;
    switch (toupper((unsigned char)name[0])) {
    case 'A':
        return name_is(name, len, "AUTH") ? CMD_TAINT : CMD_OTHER;
    case 'C':
        return name_is(name, len, "CLIENT") ? CMD_CLIENT : CMD_OTHER;
    case 'D':
        return name_is(name, len, "DISCARD") ? CMD_END_MULTI : CMD_OTHER;
    case 'E':
        return name_is(name, len, "EXEC") ? CMD_END_MULTI : CMD_OTHER;
    case 'H':
        return name_is(name, len, "HELLO") ? CMD_TAINT : CMD_OTHER;
    case 'M':
        if (name_is(name, len, "MULTI"))
            return CMD_MULTI;
        return name_is(name, len, "MONITOR") ? CMD_TAINT : CMD_OTHER;
    case 'P':
        if (name_is(name, len, "PSUBSCRIBE"))
            return CMD_SUBSCRIBE;
        return name_is(name, len, "PSYNC") ? CMD_TAINT : CMD_OTHER;
    case 'Q':
        return name_is(name, len, "QUIT") ? CMD_TAINT : CMD_OTHER;
    case 'R':
        return name_is(name, len, "RESET") ? CMD_TAINT : CMD_OTHER;
    case 'S':
        if (name_is(name, len, "SELECT"))
            return CMD_SELECT;
        if (name_is(name, len, "SUBSCRIBE") || name_is(name, len, "SSUBSCRIBE"))
            return CMD_SUBSCRIBE;
        return name_is(name, len, "SYNC") ? CMD_TAINT : CMD_OTHER;
    case 'U':
        return name_is(name, len, "UNWATCH") ? CMD_UNWATCH : CMD_OTHER;
    case 'W':
        return name_is(name, len, "WATCH") ? CMD_WATCH : CMD_OTHER;
    default:
        return CMD_OTHER;
    }
}

static int error_starts(const redisReply *r, const char *prefix)
{
    return r && r->type == REDIS_REPLY_ERROR && r->str &&
           strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* Updates the tracked state after a command of kind answered r. The reply decides, not the
 * command alone: "EXEC without MULTI" and "DISCARD without MULTI" are errors that leave
 * WATCHed keys watched, so the next borrower's transaction could fail on a key it never
 * watched; only an EXEC or DISCARD that ended a transaction unwatches. */
static void track(redis_conn *c, int kind, const char *cmd, size_t cmdlen, const redisReply *r)
{
    size_t len = 0;
    const char *arg;
    switch (kind) {
    case CMD_MULTI:
        if (leash__redis_is_status(r, "OK"))
            c->multi = 1;
        break;
    case CMD_END_MULTI:
        /* Ended a transaction: an array, a nil (a watched key changed), +OK (DISCARD) or
         * -EXECABORT. Any other error (no MULTI open, a refused command) changes nothing. */
        if (r->type != REDIS_REPLY_ERROR || error_starts(r, "EXECABORT"))
            c->multi = c->watch = 0;
        break;
    case CMD_WATCH:
        if (!c->multi && leash__redis_is_status(r, "OK"))
            c->watch = 1;
        break;
    case CMD_UNWATCH:
        if (!c->multi && leash__redis_is_status(r, "OK"))
            c->watch = 0;
        break;
    case CMD_SELECT:
        if (leash__redis_is_status(r, "QUEUED")) {
            c->db = -1; /* EXEC will switch: SELECT back on release */
        } else if (leash__redis_is_status(r, "OK")) {
            long db = -1;
            arg = arg_of(cmd, cmdlen, 1, &len);
            if (!arg || leash__redis_parse_num(arg, len, INT_MAX, &db) != 0)
                db = -1;
            c->db = (int)db;
        }
        break;
    case CMD_SUBSCRIBE:
        c->subscribed = 1;
        break;
    case CMD_TAINT:
        c->tainted = 1;
        break;
    case CMD_CLIENT:
        arg = arg_of(cmd, cmdlen, 1, &len);
        if (arg && name_is(arg, len, "REPLY"))
            c->tainted = 1;
        break;
    default:
        break;
    }
}

/* Whether r says the node is a replica now (-READONLY), itself or, for EXEC, in an element. */
static int says_readonly(const redisReply *r, int kind)
{
    if (error_starts(r, "READONLY"))
        return 1;
    if (kind == CMD_END_MULTI && r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            if (error_starts(r->element[i], "READONLY"))
                return 1;
    return 0;
}

/* A -READONLY reply on a pool meant for writes: the node was demoted (a failover, a manual
 * REPLICAOF). The connection is retired at release and, on a Sentinel pool, the watcher
 * retires every connection to that node and asks the sentinels where the master is now. */
static void demoted(leash_handle *h, redis_conn *c)
{
    leash_mark_broken(h);
    leash__log(LEASH_LOG_WARN,
               "redis pool \"%s\": %s answered -READONLY (it is a replica now); the connection "
               "is retired%s",
               pool_name(h), c->peer,
               c->ctx && c->t->kind == REDIS_SENTINEL ? ", the sentinels asked again" : "");
    if (c->ctx && c->t->kind == REDIS_SENTINEL)
        leash__sentinel_kick(c->ctx, c->peer);
}

/* Whether the failure hiredis just reported on rc (errno e) was the socket timeout: hiredis
 * 1.x may say REDIS_ERR_TIMEOUT; 0.14 says REDIS_ERR_IO with EAGAIN. */
static int timed_out(const redisContext *rc, int e)
{
#ifdef REDIS_ERR_TIMEOUT
    if (rc->err == REDIS_ERR_TIMEOUT)
        return 1;
#endif
    return rc->err == REDIS_ERR_IO &&
           (e == EAGAIN || e == EWOULDBLOCK || strcmp(rc->errstr, strerror(EAGAIN)) == 0);
}

/* A failed round trip: h is marked broken, the failure recorded. */
static redisReply *io_failure(leash_handle *h, redis_conn *c, int timed_out, const char *fn)
{
    char msg[LEASH_ERR_MAX / 2];
    leash__redis_message(c->t, "", c->rc->errstr, msg, sizeof msg);
    leash_mark_broken(h);
    if (timed_out)
        return leash__fail_null(LEASH_ETIMEDOUT,
                                "%s: pool \"%s\": no reply from %s within the command timeout "
                                "(%d ms; %s); the connection will be dropped",
                                fn, pool_name(h), c->peer, c->t->command_timeout_ms, msg);
    return leash__fail_null(LEASH_EIO, "%s: pool \"%s\": the connection to %s failed: %s", fn,
                            pool_name(h), c->peer, msg);
}

redisReply *leash_redis_command(leash_handle *h, const char *fmt, ...)
{
    static const char fn[] = "leash_redis_command";
    redis_conn *c = held(h, fn);
    if (LEASH_UNLIKELY(!c))
        return NULL;
    if (LEASH_UNLIKELY(!fmt))
        return leash__fail_null(LEASH_EINVAL, "%s: pool \"%s\": the format is NULL", fn,
                                pool_name(h));
    if (LEASH_UNLIKELY(c->fresh) && first_use(h, c, fn) != 0)
        return NULL;
    redisContext *rc = c->rc;
    if (LEASH_UNLIKELY(rc->err))
        return io_failure(h, c, 0, fn);

    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (LEASH_UNLIKELY(len <= 0 || !cmd)) {
        redisFreeCommand(cmd);
        return leash__fail_null(LEASH_EINVAL,
                                "%s: pool \"%s\": the format is invalid (or out of memory)", fn,
                                pool_name(h));
    }
    int kind = classify(cmd, (size_t)len);

    int io;
    void *reply = NULL;
    if (LEASH_LIKELY(redis_obuf_len(rc) == 0)) {
        io = leash__redis_send_all(rc, cmd, (size_t)len);
    } else {
        /* The borrower appended commands through leash_redis(): they go first, like
         * redisCommand would send them, and the reply is the first one due. */
        leash__nopipe np;
        leash__nopipe_begin(&np);
        int done = 0, r = redisAppendFormattedCommand(rc, cmd, (size_t)len);
        while (!done && r == REDIS_OK)
            r = redisBufferWrite(rc, &done);
        leash__nopipe_end(&np);
        io = r == REDIS_OK ? IO_OK : IO_FAIL;
        kind = CMD_OTHER;
    }
    if (LEASH_LIKELY(io == IO_OK) && redisGetReply(rc, &reply) != REDIS_OK)
        io = timed_out(rc, errno) ? IO_TIMEOUT : IO_FAIL;
    if (LEASH_UNLIKELY(io != IO_OK)) {
        redisFreeCommand(cmd);
        if (!rc->err) {
            rc->err = REDIS_ERR_IO;
            snprintf(rc->errstr, sizeof rc->errstr, "no reply");
        }
        return io_failure(h, c, io == IO_TIMEOUT, fn);
    }
    redisReply *r = reply;
    if (LEASH_UNLIKELY(kind != CMD_OTHER))
        track(c, kind, cmd, (size_t)len, r);
    redisFreeCommand(cmd);
    if (LEASH_UNLIKELY(r->type == REDIS_REPLY_ERROR || kind == CMD_END_MULTI) &&
        says_readonly(r, kind) && !c->t->replica)
        demoted(h, c);
    return r;
}

void leash__reply_free(redisReply **r)
{
    if (r && *r) {
        freeReplyObject(*r);
        *r = NULL;
    }
}

/* Redis adapter: the adapter table (connect, validate, reset, destroy, retarget, watchers) and
 * leash_redis_pool. Borrowers' calls are in command.c, the wire in wire.c, Sentinel in
 * sentinel.c. */
#include "redis-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_RESET_MS 1000    /* a release waits at most this long for the server */
#define REDIS_DRAIN_MAX 100000 /* stale replies a release reads before giving up */

/* ---- contexts, and the fork hooks that keep their locks consistent ---- */

/* Every live context, so the fork hooks can take their locks (lock order: the core's locks,
 * then registry_lock, then each context's lock in list order). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static redis_ctx *registry;

static void known_from_target(redis_ctx *ctx)
{
    for (int i = 0; i < ctx->nknown; i++)
        free(ctx->known[i].host);
    ctx->nknown = 0;
    const redis_target *t = ctx->t;
    for (int i = 0; t->kind == REDIS_SENTINEL && i < t->nsentinels; i++) {
        char *h = strdup(t->sentinels[i].host);
        if (!h)
            break; /* out of memory: fewer sentinels to ask; connects say so if none */
        ctx->known[ctx->nknown++] = (redis_node){h, t->sentinels[i].port};
    }
    ctx->master[0] = '\0';
    ctx->epoch = 0;
    ctx->nreplicas = 0;
}

static redis_ctx *ctx_new(redis_target *t)
{
    redis_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    pthread_mutex_init(&ctx->lock, NULL);
    ctx->t = t;
    known_from_target(ctx);
    pthread_mutex_lock(&registry_lock);
    ctx->next = registry;
    registry = ctx;
    pthread_mutex_unlock(&registry_lock);
    return ctx;
}

static void redis_ctx_free(void *vctx)
{
    redis_ctx *ctx = vctx;
    if (!ctx)
        return;
    leash__sentinel_stop(ctx); /* detach already did, unless the pool never opened */
    pthread_mutex_lock(&registry_lock);
    for (redis_ctx **p = &registry; *p; p = &(*p)->next) {
        if (*p == ctx) {
            *p = ctx->next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    for (int i = 0; i < ctx->nknown; i++)
        free(ctx->known[i].host);
    leash__redis_target_unref(ctx->t);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

static void redis_fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    for (redis_ctx *c = registry; c; c = c->next)
        pthread_mutex_lock(&c->lock);
}

static void redis_fork_parent(void)
{
    for (redis_ctx *c = registry; c; c = c->next)
        pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&registry_lock);
}

static void redis_fork_child(void)
{
    leash__sentinel_fork_child();
    redis_fork_parent();
}

/* The context's current target, with a reference for the caller. */
static redis_target *current(redis_ctx *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    redis_target *t = leash__redis_target_ref(ctx->t);
    pthread_mutex_unlock(&ctx->lock);
    return t;
}

/* ---- connect ---- */

/* A data node of a redis:// or unix:// target, its address in peer. */
static redisContext *connect_direct(const redis_target *t, char *peer, size_t peerlen, char *err,
                                    size_t errlen)
{
    uint64_t deadline = leash__redis_deadline(t->connect_timeout_ms);
    int port = t->kind == REDIS_UNIX ? 0 : t->port;
    if (port)
        leash__redis_addr(t->host, port, peer, peerlen);
    else
        snprintf(peer, peerlen, "%s", t->host);
    char why[LEASH_ERR_MAX / 2];
    redisContext *rc = leash__redis_dial(t->host, port, deadline, why, sizeof why);
    if (rc && leash__redis_handshake(rc, t, NULL, deadline, why, sizeof why) != 0) {
        redisFree(rc);
        rc = NULL;
    }
    if (!rc)
        leash__redis_message(t, "", why, err, errlen);
    return rc;
}

static void *redis_connect(void *vctx, const char *target, char *err, size_t errlen)
{
    redis_ctx *ctx = vctx;
    redis_target *t;
    if (ctx) {
        t = current(ctx);
    } else {
        char why[LEASH_ERR_MAX / 2];
        t = leash__redis_url_parse(target ? target : "", why, sizeof why);
        if (!t) {
            snprintf(err, errlen, "malformed URL: %s", why);
            return NULL;
        }
    }
    redis_conn *c = NULL;
    if (t->kind == REDIS_SENTINEL && !ctx) {
        snprintf(err, errlen,
                 "a redis-sentinel:// URL needs leash_redis_pool (its watcher lives "
                 "in the pool's adapter context)");
        goto fail;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (t->kind == REDIS_SENTINEL) {
        leash__sentinel_start(ctx); /* a no-op unless a forked child has none yet */
        c->rc = leash__sentinel_connect(ctx, t, c->peer, sizeof c->peer, err, errlen);
    } else {
        c->rc = connect_direct(t, c->peer, sizeof c->peer, err, errlen);
    }
    if (!c->rc)
        goto fail;
    if (leash__redis_set_timeout(c->rc, t->command_timeout_ms) != 0) {
        snprintf(err, errlen, "cannot set the command timeout on the socket");
        redisFree(c->rc);
        goto fail;
    }
    c->t = t;
    c->ctx = ctx;
    c->db = t->db;
    return c;
fail:
    free(c);
    leash__redis_target_unref(t);
    return NULL;
}

/* Output hiredis has not sent, or input it has not handed out as replies. */
static int pending_local(const redisContext *rc)
{
    const redisReader *rd = rc->reader;
    return (rc->obuf && redis_obuf_len(rc) > 0) || (rd && (rd->pos < rd->len || rd->ridx >= 0));
}

/* Only when idle longer than validate_idle_ms, and from the keepalive: a PING within the
 * command timeout; on a Sentinel pool a ROLE, and the node must still be the one the
 * sentinels name (a lost event must not leave connections on a demoted master). */
static int redis_validate(void *vctx, void *conn)
{
    redis_conn *c = conn;
    c->fresh = 0;
    if (c->rc->err || pending_local(c->rc))
        return -1;
    int sentinel = c->t->kind == REDIS_SENTINEL && c->ctx;
    const char *argv[1] = {sentinel ? "ROLE" : "PING"};
    const char *const *av[1] = {argv};
    int argc[1] = {1};
    redisReply *r = NULL;
    if (leash__redis_pipeline(c->rc, 1, argc, av, leash__redis_deadline(c->t->command_timeout_ms),
                              &r) != IO_OK)
        return -1;
    int ok;
    if (sentinel) {
        const char *role = leash__redis_role(r);
        ok = role && strcmp(role, c->t->replica ? "slave" : "master") == 0 &&
             leash__sentinel_peer_current(c->ctx, c->peer);
        if (!ok)
            leash__sentinel_kick(c->ctx, c->peer);
    } else {
        ok = leash__redis_is_status(r, "PONG");
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* ---- reset ---- */

static int is_error_with(const redisReply *r, const char *text)
{
    return r->type == REDIS_REPLY_ERROR && r->str && strstr(r->str, text);
}

/* The slow release: state was tracked, or the context was used raw. Sends one pipeline
 * (DISCARD or UNWATCH, SELECT, and after raw use an ECHO of a unique token) and reads it
 * back within REDIS_RESET_MS. After raw use, replies the borrower never read arrive before
 * the token and are dropped; the token proves nothing else is due (replies come in order). */
static int reset_slow(redis_conn *c)
{
    redisContext *rc = c->rc;
    int raw = c->raw || pending_local(rc);
    int dirty = c->multi || c->watch || c->db != c->t->db;
    c->raw = 0;
    if (c->subscribed || c->tainted)
        return LEASH_RESET_DIRTY; /* no cheap and certain way back */
    if (rc->obuf && redis_obuf_len(rc) > 0)
        return LEASH_RESET_DIRTY; /* unsent output: maybe half a command went out */
    if (raw && leash__redis_set_timeout(rc, c->t->command_timeout_ms) != 0)
        return LEASH_RESET_BROKEN; /* the borrower may have changed it */

    char token[64];
    char db[16];
    snprintf(db, sizeof db, "%d", c->t->db);
    snprintf(token, sizeof token, "leash:sync:%lx:%u", (unsigned long)(uintptr_t)c, ++c->sync);
    const char *argv[3][2];
    int argc[3], n = 0;
    if (c->multi) {
        argv[n][0] = "DISCARD"; /* also forgets WATCHed keys */
        argc[n++] = 1;
    } else if (c->watch) {
        argv[n][0] = "UNWATCH";
        argc[n++] = 1;
    }
    if (c->db != c->t->db || raw) { /* raw: the borrower may have run SELECT itself */
        argv[n][0] = "SELECT";
        argv[n][1] = db;
        argc[n++] = 2;
    }
    if (raw) {
        argv[n][0] = "ECHO";
        argv[n][1] = token;
        argc[n++] = 2;
    }
    int oks = raw ? n - 1 : n; /* replies that must be +OK, just before the token if any */

    char *buf = NULL;
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        char *cmd = NULL;
        long long l = redisFormatCommandArgv(&cmd, argc[i], argv[i], NULL);
        char *grown = l >= 0 && cmd ? realloc(buf, len + (size_t)l) : NULL;
        if (!grown) {
            redisFreeCommand(cmd);
            free(buf);
            return LEASH_RESET_DIRTY; /* out of memory: do not risk it */
        }
        buf = grown;
        memcpy(buf + len, cmd, (size_t)l);
        len += (size_t)l;
        redisFreeCommand(cmd);
    }
    int io = leash__redis_send_all(rc, buf, len);
    free(buf);
    if (io != IO_OK)
        return LEASH_RESET_BROKEN;

    uint64_t deadline = leash__redis_deadline(REDIS_RESET_MS);
    int seen = 0, last_ok[2] = {0, 0}, expected = raw ? REDIS_DRAIN_MAX : oks;
    for (int i = 0; i <= expected; i++) {
        redisReply *r = NULL;
        io = leash__redis_read_reply(rc, deadline, &r);
        if (io == IO_TIMEOUT)
            return dirty || seen > oks ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
        if (io != IO_OK)
            return LEASH_RESET_BROKEN;
        if (!raw) {
            int ok = leash__redis_is_status(r, "OK");
            freeReplyObject(r);
            if (!ok)
                return LEASH_RESET_DIRTY;
            if (i + 1 == oks)
                break;
            continue;
        }
        int is_token = r->type == REDIS_REPLY_STRING && r->str && strcmp(r->str, token) == 0;
        /* Our commands were queued (a MULTI the borrower opened) or refused (subscribe mode):
         * the connection is in a state we cannot leave cheaply. */
        int stuck =
            leash__redis_is_status(r, "QUEUED") || is_error_with(r, "allowed in this context");
        int ok = leash__redis_is_status(r, "OK");
        freeReplyObject(r);
        if (stuck)
            return LEASH_RESET_DIRTY;
        if (is_token) {
            if (seen < oks || (oks >= 1 && !last_ok[0]) || (oks >= 2 && !last_ok[1]))
                return LEASH_RESET_DIRTY;
            if (seen > oks)
                dirty = 1; /* replies the borrower never read, now dropped */
            if (pending_local(rc))
                return LEASH_RESET_DIRTY; /* more after the token: a stream (MONITOR?) */
            c->multi = c->watch = 0;
            c->db = c->t->db;
            return dirty ? LEASH_RESET_CLEANED : LEASH_RESET_CLEAN;
        }
        last_ok[1] = last_ok[0];
        last_ok[0] = ok;
        seen++;
    }
    if (raw)
        return LEASH_RESET_DIRTY; /* a flood of replies: give up */
    c->multi = c->watch = 0;
    c->db = c->t->db;
    return LEASH_RESET_CLEANED;
}

/* On release. A borrower who used only leash_redis_command read every reply and left only
 * tracked state, so the common case is a few loads and no system call. */
static int redis_reset(void *ctx, void *conn)
{
    (void)ctx;
    redis_conn *c = conn;
    c->fresh = 1;
    c->released = leash__coarse_ns();
    if (LEASH_UNLIKELY(c->rc->err))
        return LEASH_RESET_BROKEN;
    if (LEASH_LIKELY(!(c->raw | c->multi | c->watch | c->subscribed | c->tainted) &&
                     c->db == c->t->db && !pending_local(c->rc)))
        return LEASH_RESET_CLEAN;
    return reset_slow(c);
}

static void redis_destroy(void *ctx, void *conn)
{
    (void)ctx;
    redis_conn *c = conn;
    redisFree(c->rc); /* closes the socket; hiredis sends nothing on free */
    leash__redis_target_unref(c->t);
    free(c);
}

/* In a forked child: redisFree only closes this process's copy of the socket (the parent's
 * stays open, so the server sees nothing). */
static void redis_abandon(void *ctx, void *conn)
{
    redis_destroy(ctx, conn);
}

/* ---- description, retarget, watchers, peers ---- */

static void redis_describe(void *vctx, const char *target, char *out, size_t outlen)
{
    char why[LEASH_ERR_MAX / 2];
    redis_target *t = leash__redis_url_parse(target ? target : "", why, sizeof why);
    snprintf(out, outlen, "%s", t ? t->shown : "(malformed Redis URL)");
    if (t && t->kind == REDIS_SENTINEL && vctx)
        leash__sentinel_describe(vctx, out, outlen);
    leash__redis_target_unref(t);
}

/* leash_pool_retarget: the new URL must parse; connects that already took the old target
 * finish with it (their reference keeps it alive), later ones take the new one. A Sentinel
 * watcher follows: the old one is stopped, one for the new target started. */
static int redis_retarget(void *vctx, const char *target, char *err, size_t errlen)
{
    redis_ctx *ctx = vctx;
    char why[LEASH_ERR_MAX / 2];
    redis_target *t = leash__redis_url_parse(target ? target : "", why, sizeof why);
    if (!t) {
        snprintf(err, errlen, "malformed URL: %s", why);
        return -1;
    }
    if (!ctx) {
        leash__redis_target_unref(t);
        return 0;
    }
    leash__sentinel_stop(ctx);
    pthread_mutex_lock(&ctx->lock);
    redis_target *old = ctx->t;
    ctx->t = t;
    known_from_target(ctx);
    pthread_mutex_unlock(&ctx->lock);
    leash__redis_target_unref(old);
    leash__sentinel_start(ctx);
    return 0;
}

static void redis_attach(void *vctx, leash_pool *pool)
{
    redis_ctx *ctx = vctx;
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->lock);
    ctx->pool = pool;
    pthread_mutex_unlock(&ctx->lock);
    leash__sentinel_start(ctx);
}

static void redis_detach(void *vctx)
{
    redis_ctx *ctx = vctx;
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->lock);
    ctx->detached = 1;
    pthread_mutex_unlock(&ctx->lock);
    leash__sentinel_stop(ctx);
}

static void redis_peer(void *ctx, void *conn, char *out, size_t outlen)
{
    (void)ctx;
    snprintf(out, outlen, "%s", ((redis_conn *)conn)->peer);
}

const leash_adapter leash_redis_adapter = {
    .kind = "redis",
    .connect = redis_connect,
    .validate = redis_validate,
    .reset = redis_reset,
    .destroy = redis_destroy,
    .abandon = redis_abandon,
    .describe = redis_describe,
    .ctx_free = redis_ctx_free,
    .fork_prepare = redis_fork_prepare,
    .fork_parent = redis_fork_parent,
    .fork_child = redis_fork_child,
    .retarget = redis_retarget,
    .attach = redis_attach,
    .detach = redis_detach,
    .peer = redis_peer,
};

leash_pool *leash_redis_pool(const char *name, const char *url, const leash_pool_options *opts)
{
    if (leash__ensure_init() != LEASH_OK)
        return NULL;
    if (!url)
        return leash__fail_null(LEASH_EINVAL, "redis pool \"%s\": url is NULL", name ? name : "");
    char why[LEASH_ERR_MAX / 2];
    redis_target *t = leash__redis_url_parse(url, why, sizeof why);
    if (!t)
        return leash__fail_null(LEASH_EINVAL, "redis pool \"%s\": malformed URL: %s",
                                name ? name : "", why);
    redis_ctx *ctx = ctx_new(t);
    if (!ctx) {
        leash__redis_target_unref(t);
        return leash__fail_null(LEASH_ENOMEM, "redis pool \"%s\": out of memory", name ? name : "");
    }
    return leash_pool_open_with(name, &leash_redis_adapter, ctx, url, opts);
}

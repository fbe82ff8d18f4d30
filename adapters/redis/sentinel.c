/* Redis adapter: Redis Sentinel. Borrowers' connects find the master (or a replica) through
 * the sentinels; a watcher thread per pool follows the sentinels' events and retires the
 * pool's connections when the master moves. */
#include "redis-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How the pool learns that the master moved, fastest first:
 *   - the watcher's subscription to one sentinel: +switch-master retires every connection
 *     at once (idle ones now, borrowed ones at release);
 *   - the watcher asks its sentinel where the master is every SENTINEL_POLL_MS (an event
 *     lost while the subscription was being re-made);
 *   - a -READONLY reply, or a validation whose ROLE or address is wrong, kicks the watcher:
 *     the connections to that node go, and the sentinels are asked again;
 *   - every connect asks the sentinels and checks ROLE before the connection is lent.
 * Answers carry the master's config epoch: an answer older than what the pool knows (a
 * sentinel that has not heard of the failover yet) is not followed back. */
#define SENTINEL_POLL_MS 1000
#define SENTINEL_PING_MS 1000
#define SENTINEL_BACKOFF_MIN_MS 50
#define SENTINEL_BACKOFF_MAX_MS 1000
#define KICKS_MAX 4

enum { IO_STOP = -3 };

/* Bumped in every forked child: a watcher of another generation has no thread here. */
static _Atomic unsigned fork_gen;

/* One watcher thread. The fields under "ctx->lock" are shared with borrowers; the rest
 * belong to the thread, or to whoever stops it after the join. */
struct redis_watcher {
    redis_ctx *ctx;
    redis_target *t; /* the target it watches (one reference) */
    pthread_t thread;
    unsigned gen;
    atomic_int stop;
    int wake[2]; /* a byte written to wake[1] wakes the thread */
    /* the thread's two sockets, for a forked child to close (relaxed: only the value
     * matters, and a child that misses one leaks a descriptor, nothing worse) */
    atomic_int fd_sub, fd_query;
    /* under ctx->lock */
    char kicked[KICKS_MAX][REDIS_ADDR_MAX];
    int nkicked;
    /* the thread's own */
    int lookup_now;
};

static const char *const events[] = {
    "+switch-master", "+promoted-slave", "+convert-to-slave", "+sdown",      "-sdown", "+odown",
    "-odown",         "+slave",          "+failover-end",     "+role-change"};
#define NEVENTS ((int)(sizeof events / sizeof *events))

/* ---- what the sentinels say ---- */

/* The value of key in a flat key/value array reply (SENTINEL MASTER, one entry of SENTINEL
 * REPLICAS or SENTINEL SENTINELS), or NULL. */
static const char *field(const redisReply *r, const char *key)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING && k->str && v->str &&
            strcmp(k->str, key) == 0)
            return v->str;
    }
    return NULL;
}

/* "ip:port" of a key/value entry into out; 0, or -1 when it has none. */
static int entry_addr(const redisReply *r, char *out, size_t outlen)
{
    const char *ip = field(r, "ip"), *port = field(r, "port");
    long p = 0;
    if (!ip || !port || !*ip || strlen(ip) > REDIS_HOST_MAX ||
        leash__redis_parse_num(port, strlen(port), 65535, &p) != 0 || p < 1)
        return -1;
    leash__redis_addr(ip, (int)p, out, outlen);
    return 0;
}

static int flagged_down(const char *flags)
{
    return !flags || strstr(flags, "s_down") || strstr(flags, "o_down") ||
           strstr(flags, "disconnected");
}

/* Splits "host:port" / "[v6]:port" into host and port. */
static int split_addr(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(addr, ':');
    int v6 = addr[0] == '[';
    if (!colon || colon - addr - 2 * v6 <= 0)
        return -1;
    snprintf(host, hostlen, "%.*s", (int)(colon - addr - 2 * v6), addr + v6);
    *port = atoi(colon + 1);
    return *port > 0 ? 0 : -1;
}

/* Adds the sentinels of a SENTINEL SENTINELS reply that ctx does not know yet (at the end:
 * the ones given in the URL, and the one that answered last, stay first). */
static void learn(redis_ctx *ctx, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return;
    pthread_mutex_lock(&ctx->lock);
    for (size_t i = 0; i < r->elements && ctx->nknown < REDIS_KNOWN_MAX; i++) {
        const char *ip = field(r->element[i], "ip"), *port = field(r->element[i], "port");
        long p = 0;
        if (!ip || !port || !*ip || strlen(ip) > REDIS_HOST_MAX ||
            leash__redis_parse_num(port, strlen(port), 65535, &p) != 0 || p < 1)
            continue;
        int known = 0;
        for (int k = 0; k < ctx->nknown && !known; k++)
            known = ctx->known[k].port == p && strcmp(ctx->known[k].host, ip) == 0;
        char *h = known ? NULL : strdup(ip);
        if (h)
            ctx->known[ctx->nknown++] = (redis_node){h, (int)p};
    }
    pthread_mutex_unlock(&ctx->lock);
}

/* The sentinel host:port answered: it goes first next time. */
static void prefer(redis_ctx *ctx, const char *host, int port)
{
    pthread_mutex_lock(&ctx->lock);
    for (int i = 1; i < ctx->nknown; i++) {
        if (ctx->known[i].port == port && strcmp(ctx->known[i].host, host) == 0) {
            redis_node n = ctx->known[i];
            memmove(&ctx->known[1], &ctx->known[0], sizeof *ctx->known * (size_t)i);
            ctx->known[0] = n;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->lock);
}

typedef struct node_copy {
    char host[REDIS_HOST_MAX + 1];
    int port;
} node_copy;

/* A copy of ctx's sentinels, in the order to ask them. */
static int snapshot(redis_ctx *ctx, node_copy *out)
{
    pthread_mutex_lock(&ctx->lock);
    int n = ctx->nknown;
    for (int i = 0; i < n; i++) {
        snprintf(out[i].host, sizeof out[i].host, "%s", ctx->known[i].host);
        out[i].port = ctx->known[i].port;
    }
    pthread_mutex_unlock(&ctx->lock);
    return n;
}

/* A sentinel's answer about the master: addr with its rank (master_answer), from a lookup
 * (event 0) or a +switch-master event (event 1: no rank; one above the known one, at most
 * the real one, and the next lookup brings that). Writes to use the address to connect to
 * (the one the pool knows when the answer ranks lower: a sentinel that has not heard of the
 * failover yet is not followed back), and returns 1 when the master moved, the previous one
 * in old, so its connections can go. */
static int apply_master(redis_ctx *ctx, const char *addr, uint64_t rank, int event, char *use,
                        size_t uselen, char *old, size_t oldlen)
{
    int moved = 0;
    pthread_mutex_lock(&ctx->lock);
    if (!event && ctx->master[0] && rank < ctx->epoch) {
        snprintf(use, uselen, "%s", ctx->master); /* a sentinel behind the others */
    } else {
        moved = ctx->master[0] && strcmp(ctx->master, addr) != 0;
        if (moved)
            snprintf(old, oldlen, "%s", ctx->master);
        if (event && moved)
            ctx->epoch++; /* at most the real rank: a failover raises the epoch */
        else if (!event && rank > ctx->epoch)
            ctx->epoch = rank;
        snprintf(ctx->master, sizeof ctx->master, "%s", addr);
        snprintf(use, uselen, "%s", addr);
    }
    pthread_mutex_unlock(&ctx->lock);
    return moved;
}

/* addr, which the pool took for the master, is not one (a failover was aborted after the
 * promotion, say): the sentinels' next answer is taken as it is. */
static void forget_master(redis_ctx *ctx, const char *addr)
{
    pthread_mutex_lock(&ctx->lock);
    if (strcmp(ctx->master, addr) == 0) {
        ctx->master[0] = '\0';
        ctx->epoch = 0;
    }
    pthread_mutex_unlock(&ctx->lock);
}

/* Healthy replicas of a SENTINEL REPLICAS reply into out (at most REDIS_REPLICAS_MAX). */
static int healthy_replicas(const redisReply *r, char (*out)[REDIS_ADDR_MAX])
{
    int n = 0;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const char *link = field(e, "master-link-status");
        if (flagged_down(field(e, "flags")) || (link && strcmp(link, "ok") != 0))
            continue;
        if (n < REDIS_REPLICAS_MAX && entry_addr(e, out[n], REDIS_ADDR_MAX) == 0)
            n++;
    }
    return n;
}

/* Stores the healthy replica set; the ones no longer in it go to gone (returns how many). */
static int apply_replicas(redis_ctx *ctx, char (*now)[REDIS_ADDR_MAX], int n,
                          char (*gone)[REDIS_ADDR_MAX])
{
    int ngone = 0;
    pthread_mutex_lock(&ctx->lock);
    for (int i = 0; i < ctx->nreplicas; i++) {
        int still = 0;
        for (int k = 0; k < n && !still; k++)
            still = strcmp(ctx->replicas[i], now[k]) == 0;
        if (!still)
            memcpy(gone[ngone++], ctx->replicas[i], REDIS_ADDR_MAX);
    }
    memcpy(ctx->replicas, now, sizeof *now * (size_t)n);
    ctx->nreplicas = n;
    pthread_mutex_unlock(&ctx->lock);
    return ngone;
}

int leash__sentinel_peer_current(redis_ctx *ctx, const char *peer)
{
    if (!ctx)
        return 1;
    pthread_mutex_lock(&ctx->lock);
    int ok;
    if (ctx->t->replica) {
        ok = ctx->nreplicas == 0;
        for (int i = 0; i < ctx->nreplicas && !ok; i++)
            ok = strcmp(ctx->replicas[i], peer) == 0;
    } else {
        ok = !ctx->master[0] || strcmp(ctx->master, peer) == 0;
    }
    pthread_mutex_unlock(&ctx->lock);
    return ok;
}

void leash__sentinel_describe(redis_ctx *ctx, char *out, size_t outlen)
{
    size_t k = strlen(out);
    pthread_mutex_lock(&ctx->lock);
    if (ctx->master[0] && k < outlen)
        snprintf(out + k, outlen - k, " (master %s)", ctx->master);
    pthread_mutex_unlock(&ctx->lock);
}

/* ---- a borrower's connect ---- */

/* Appends "; " and the formatted text to buf (len bytes). */
static void note(char *buf, size_t len, const char *fmt, ...) LEASH_PRINTF(3, 4);
static void note(char *buf, size_t len, const char *fmt, ...)
{
    size_t k = strlen(buf);
    if (k + 3 >= len)
        return;
    if (k)
        k += (size_t)snprintf(buf + k, len - k, "; ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + k, len - k, fmt, ap);
    va_end(ap);
}

/* Where the commands of a lookup are in its pipeline (-1: not sent). */
typedef struct lookup_idx {
    int auth, master, addr, sentinels, replicas;
} lookup_idx;

/* The sentinel commands of a lookup: [AUTH], SENTINEL MASTER (address and config epoch),
 * SENTINEL GET-MASTER-ADDR-BY-NAME (the promoted replica's address as soon as it is master,
 * before +switch-master), [SENTINEL SENTINELS], [SENTINEL REPLICAS for a replica pool].
 * Returns how many. */
static int lookup_commands(const redis_target *t, int auth, int sentinels, const char *av[5][4],
                           int *argc, lookup_idx *ix)
{
    int n = 0;
    *ix = (lookup_idx){-1, -1, -1, -1, -1};
    if (auth && t->sentinel_password) {
        ix->auth = n;
        av[n][0] = "AUTH";
        av[n][1] = t->sentinel_user ? t->sentinel_user : t->sentinel_password;
        av[n][2] = t->sentinel_password;
        argc[n++] = t->sentinel_user ? 3 : 2;
    }
    const char *sub[4] = {"MASTER", "GET-MASTER-ADDR-BY-NAME", sentinels ? "SENTINELS" : NULL,
                          t->replica ? "REPLICAS" : NULL};
    int *slot[4] = {&ix->master, &ix->addr, &ix->sentinels, &ix->replicas};
    for (int i = 0; i < 4; i++) {
        if (!sub[i])
            continue;
        *slot[i] = n;
        av[n][0] = "SENTINEL";
        av[n][1] = sub[i];
        av[n][2] = t->master_name;
        argc[n++] = 3;
    }
    return n;
}

/* The master's address from a lookup's replies, and its rank: twice its config epoch, plus
 * one while a failover has promoted a replica that SENTINEL MASTER does not name yet (the
 * next epoch will be higher still). 0, or -1 for an unusable answer. */
static int master_answer(const redisReply *master, const redisReply *addr, char *out, size_t outlen,
                         uint64_t *rank)
{
    const char *ep = field(master, "config-epoch");
    long epoch = 0;
    if (entry_addr(master, out, outlen) != 0 || !ep ||
        leash__redis_parse_num(ep, strlen(ep), 0x7fffffffL, &epoch) != 0)
        return -1;
    *rank = 2 * (uint64_t)epoch;
    if (addr && addr->type == REDIS_REPLY_ARRAY && addr->elements == 2 &&
        addr->element[0]->type == REDIS_REPLY_STRING &&
        addr->element[1]->type == REDIS_REPLY_STRING) {
        long port = 0;
        const char *ip = addr->element[0]->str, *ps = addr->element[1]->str;
        char now[REDIS_ADDR_MAX];
        if (strlen(ip) <= REDIS_HOST_MAX &&
            leash__redis_parse_num(ps, strlen(ps), 65535, &port) == 0 && port > 0) {
            leash__redis_addr(ip, (int)port, now, sizeof now);
            if (strcmp(now, out) != 0) {
                snprintf(out, outlen, "%s", now);
                *rank += 1;
            }
        }
    }
    return 0;
}

/* Picks the next healthy replica (round robin) into out; -1 when there is none. */
static int pick_replica(redis_ctx *ctx, int skip, char *out, size_t outlen)
{
    pthread_mutex_lock(&ctx->lock);
    int n = ctx->nreplicas;
    if (n > 0)
        snprintf(out, outlen, "%s", ctx->replicas[(ctx->rr++ + (unsigned)skip) % (unsigned)n]);
    pthread_mutex_unlock(&ctx->lock);
    return n > 0 ? 0 : -1;
}

/* Connects to the data node addr and checks its role; NULL with why filled. */
static redisContext *dial_node(const redis_target *t, const char *addr, char *why, size_t whylen)
{
    char host[REDIS_ADDR_MAX];
    int port = 0;
    if (split_addr(addr, host, sizeof host, &port) != 0) {
        snprintf(why, whylen, "the sentinels gave an unusable address");
        return NULL;
    }
    uint64_t deadline = leash__redis_deadline(t->connect_timeout_ms);
    redisContext *rc = leash__redis_dial(host, port, deadline, why, whylen);
    if (rc && leash__redis_handshake(rc, t, t->replica ? "slave" : "master", deadline, why,
                                     whylen) != 0) {
        redisFree(rc);
        rc = NULL;
    }
    return rc;
}

/* Asks one sentinel; on an answer, ctx learns the master (or replicas), the sentinel goes
 * first next time. Returns 1 answered, 0 it does not know the master, -1 no answer. */
static int ask(redis_ctx *ctx, const redis_target *t, const node_copy *s, char *why, size_t whylen)
{
    char addr[REDIS_ADDR_MAX];
    leash__redis_addr(s->host, s->port, addr, sizeof addr);
    uint64_t deadline = leash__redis_deadline(t->connect_timeout_ms);
    char err[160];
    redisContext *rc = leash__redis_dial(s->host, s->port, deadline, err, sizeof err);
    if (!rc) {
        note(why, whylen, "sentinel %s: %s", addr, err);
        return -1;
    }
    const char *av[5][4];
    int argc[5];
    lookup_idx ix;
    int n = lookup_commands(t, 1, 1, av, argc, &ix);
    const char *const *argv[5] = {av[0], av[1], av[2], av[3], av[4]};
    redisReply *r[5] = {NULL, NULL, NULL, NULL, NULL};
    int ret = -1;
    if (leash__redis_pipeline(rc, n, argc, argv, deadline, r) != IO_OK) {
        leash__redis_message(t, "", rc->errstr, err, sizeof err);
        note(why, whylen, "sentinel %s: %s", addr, err);
        goto out;
    }
    redisReply *master = r[ix.master];
    redisReply *replicas = ix.replicas >= 0 ? r[ix.replicas] : NULL;
    if (ix.auth >= 0 && !leash__redis_is_status(r[ix.auth], "OK")) {
        leash__redis_message(t, "AUTH failed: ", r[ix.auth]->str, err, sizeof err);
        note(why, whylen, "sentinel %s: %s", addr, err);
        goto out;
    }
    if (master->type == REDIS_REPLY_ERROR) {
        int unknown = master->str && strstr(master->str, "No such master");
        leash__redis_message(t, "", master->str, err, sizeof err);
        note(why, whylen, "sentinel %s: %s", addr, unknown ? "no such master" : err);
        ret = unknown ? 0 : -1;
        goto out;
    }
    char maddr[REDIS_ADDR_MAX], use[REDIS_ADDR_MAX], old[REDIS_ADDR_MAX] = "";
    uint64_t rank = 0;
    if (master_answer(master, r[ix.addr], maddr, sizeof maddr, &rank) != 0) {
        note(why, whylen, "sentinel %s: unexpected answer to SENTINEL MASTER", addr);
        goto out;
    }
    ret = 1;
    prefer(ctx, s->host, s->port);
    learn(ctx, r[ix.sentinels]);
    if (apply_master(ctx, maddr, rank, 0, use, sizeof use, old, sizeof old))
        leash__sentinel_kick(ctx, old); /* the watcher retires connections to the old one */
    if (replicas) {
        char now[REDIS_REPLICAS_MAX][REDIS_ADDR_MAX], gone[REDIS_REPLICAS_MAX][REDIS_ADDR_MAX];
        int ngone = apply_replicas(ctx, now, healthy_replicas(replicas, now), gone);
        for (int i = 0; i < ngone; i++)
            leash__sentinel_kick(ctx, gone[i]);
    }
out:
    for (int i = 0; i < n; i++)
        freeReplyObject(r[i]);
    redisFree(rc);
    return ret;
}

redisContext *leash__sentinel_connect(redis_ctx *ctx, const redis_target *t, char *peer,
                                      size_t peerlen, char *err, size_t errlen)
{
    node_copy *nodes = malloc(sizeof *nodes * REDIS_KNOWN_MAX);
    if (!nodes) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int n = snapshot(ctx, nodes);
    char why[LEASH_ERR_MAX] = "", tried[2][REDIS_ADDR_MAX] = {"", ""};
    int answered = 0, unknown = 0, ntried = 0;
    redisContext *rc = NULL;
    for (int i = 0; i < n && !rc; i++) {
        int a = ask(ctx, t, &nodes[i], why, sizeof why);
        answered += a == 1;
        unknown += a == 0;
        if (a != 1)
            continue;
        /* the node to try: the master, or the next healthy replica */
        for (int k = 0; k < (t->replica ? 2 : 1) && !rc; k++) {
            char addr[REDIS_ADDR_MAX];
            if (t->replica && pick_replica(ctx, k, addr, sizeof addr) != 0) {
                note(why, sizeof why, "no healthy replica of \"%s\"", t->master_name);
                break;
            }
            if (!t->replica) {
                pthread_mutex_lock(&ctx->lock);
                snprintf(addr, sizeof addr, "%s", ctx->master);
                pthread_mutex_unlock(&ctx->lock);
            }
            if (strcmp(addr, tried[0]) == 0 || strcmp(addr, tried[1]) == 0)
                continue; /* it failed already in this connect */
            char e[200];
            rc = dial_node(t, addr, e, sizeof e);
            if (rc) {
                snprintf(peer, peerlen, "%s", addr);
            } else {
                if (!t->replica && strstr(e, "its role is"))
                    forget_master(ctx, addr); /* the rank rule must not keep it */
                char m[240];
                leash__redis_message(t, "", e, m, sizeof m);
                note(why, sizeof why, "%s %s: %s", t->replica ? "replica" : "master", addr, m);
                snprintf(tried[ntried++ % 2], REDIS_ADDR_MAX, "%s", addr);
            }
        }
    }
    free(nodes);
    if (rc)
        return rc;
    if (!answered && unknown)
        snprintf(err, errlen, "unknown master name \"%s\": no sentinel knows it (%s)",
                 t->master_name, why);
    else if (!answered)
        snprintf(err, errlen, "no sentinel answered (%s)", n ? why : "none known");
    else
        snprintf(err, errlen, "%s", why);
    return NULL;
}

/* ---- the watcher ---- */

static int stopping(redis_watcher *w)
{
    /* relaxed: the stopper's write to the wake pipe is what the thread waits for */
    return atomic_load_explicit(&w->stop, memory_order_relaxed);
}

static void drain_wake(redis_watcher *w)
{
    char buf[64];
    while (read(w->wake[0], buf, sizeof buf) > 0)
        ;
}

/* Waits for events on fd (fd < 0: none) until deadline or a wake-up. 1 ready, 0 timed out or
 * woken (kicks are looked at by the caller), IO_STOP stopping. */
static int wait_for(redis_watcher *w, int fd, short ev, uint64_t deadline)
{
    for (;;) {
        if (stopping(w))
            return IO_STOP;
        uint64_t now = leash__now_ns();
        int ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
        struct pollfd p[2] = {{.fd = w->wake[0], .events = POLLIN}, {.fd = fd, .events = ev}};
        int r = poll(p, fd >= 0 ? 2 : 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (p[0].revents) {
            drain_wake(w);
            if (stopping(w))
                return IO_STOP;
            w->lookup_now = 1;
        }
        if (fd >= 0 && p[1].revents)
            return 1;
        if (r <= 0 || p[0].revents)
            return 0;
    }
}

/* Reads one reply on the watcher's non-blocking rc before deadline. */
static int w_read(redis_watcher *w, redisContext *rc, uint64_t deadline, redisReply **out)
{
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(rc, &r) != REDIS_OK)
            return IO_FAIL;
        if (r) {
            *out = r;
            return IO_OK;
        }
        int ready = wait_for(w, rc->fd, POLLIN, deadline);
        if (ready == IO_STOP)
            return IO_STOP;
        if (ready == 0 && leash__now_ns() >= deadline)
            return IO_TIMEOUT;
        if (ready == 1 && redisBufferRead(rc) != REDIS_OK)
            return IO_FAIL;
    }
}

/* Sends n commands and reads n replies before deadline (the replies' owner is the caller). */
static int w_pipeline(redis_watcher *w, redisContext *rc, int n, const int *argc,
                      const char *const *const *argv, uint64_t deadline, redisReply **out)
{
    for (int i = 0; i < n; i++)
        if (redisAppendCommandArgv(rc, argc[i], (const char **)argv[i], NULL) != REDIS_OK)
            return IO_FAIL;
    int done = 0;
    while (!done) {
        if (redisBufferWrite(rc, &done) != REDIS_OK)
            return IO_FAIL;
        int ready = done ? 1 : wait_for(w, rc->fd, POLLOUT, deadline);
        if (ready == IO_STOP)
            return IO_STOP;
        if (ready == 0 && leash__now_ns() >= deadline)
            return IO_TIMEOUT;
    }
    for (int i = 0; i < n; i++) {
        int io = w_read(w, rc, deadline, &out[i]);
        if (io != IO_OK) {
            while (i-- > 0)
                freeReplyObject(out[i]);
            return io;
        }
    }
    return IO_OK;
}

/* A non-blocking connection to a sentinel, authenticated, before deadline; NULL on failure
 * or stop. The connect itself waits on the wake pipe too, so a stop never waits for it. */
static redisContext *w_dial(redis_watcher *w, const node_copy *s, uint64_t deadline)
{
    redisContext *rc = redisConnectNonBlock(s->host, s->port);
    if (!rc)
        return NULL;
    int fl = rc->err ? -1 : fcntl(rc->fd, F_GETFD);
    if (fl < 0 || fcntl(rc->fd, F_SETFD, fl | FD_CLOEXEC) < 0 || redisEnableKeepAlive(rc) != 0)
        goto fail;
    if (wait_for(w, rc->fd, POLLOUT, deadline) != 1)
        goto fail;
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(rc->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0)
        goto fail;
    const redis_target *t = w->t;
    if (t->sentinel_password) {
        const char *av[3] = {"AUTH", t->sentinel_user ? t->sentinel_user : t->sentinel_password,
                             t->sentinel_password};
        const char *const *argv[1] = {av};
        int argc[1] = {t->sentinel_user ? 3 : 2};
        redisReply *r = NULL;
        if (w_pipeline(w, rc, 1, argc, argv, deadline, &r) != IO_OK)
            goto fail;
        int ok = leash__redis_is_status(r, "OK");
        freeReplyObject(r);
        if (!ok)
            goto fail;
    }
    return rc;
fail:
    redisFree(rc);
    return NULL;
}

static void w_close(atomic_int *slot, redisContext **rc)
{
    if (!*rc)
        return;
    /* forget the descriptor before closing it: a child forked in between leaks it at worst */
    atomic_store_explicit(slot, -1, memory_order_relaxed);
    redisFree(*rc);
    *rc = NULL;
}

/* Retires connections: every one (all), or those to each address in peers. */
static void retire(redis_watcher *w, int all, char (*peers)[REDIS_ADDR_MAX], int n, const char *why)
{
    leash_pool *pool = w->ctx->pool;
    if (all) {
        int k = leash_pool_evict(pool);
        leash__log(LEASH_LOG_INFO, "redis pool \"%s\": %s; %d connection%s retired",
                   leash_pool_name(pool), why, k < 0 ? 0 : k, k == 1 ? "" : "s");
    }
    for (int i = 0; i < n; i++) {
        int k = leash_pool_evict_peer(pool, peers[i]);
        if (k > 0)
            leash__log(LEASH_LOG_INFO, "redis pool \"%s\": %s: %d connection%s to %s retired",
                       leash_pool_name(pool), why, k, k == 1 ? "" : "s", peers[i]);
    }
}

/* Asks the watcher's sentinel where the master (and the replicas) are now, and retires what
 * moved. IO_OK, or a failure: the caller makes its connections again. */
static int w_lookup(redis_watcher *w, redisContext *q)
{
    const redis_target *t = w->t;
    redis_ctx *ctx = w->ctx;
    const char *av[5][4];
    int argc[5];
    lookup_idx ix;
    int n = lookup_commands(t, 0, 0, av, argc, &ix);
    const char *const *argv[5] = {av[0], av[1], av[2], av[3], av[4]};
    redisReply *r[5] = {NULL, NULL, NULL, NULL, NULL};
    int io = w_pipeline(w, q, n, argc, argv, leash__redis_deadline(t->connect_timeout_ms), r);
    if (io != IO_OK)
        return io;
    w->lookup_now = 0;
    char maddr[1][REDIS_ADDR_MAX], use[REDIS_ADDR_MAX], old[REDIS_ADDR_MAX] = "";
    uint64_t rank = 0;
    if (master_answer(r[ix.master], r[ix.addr], maddr[0], sizeof maddr[0], &rank) == 0) {
        int moved = apply_master(ctx, maddr[0], rank, 0, use, sizeof use, old, sizeof old);
        if (moved && !t->replica)
            retire(w, 1, NULL, 0, "the sentinels name a new master");
        if (moved && t->replica)
            retire(w, 0, maddr, 1, "a replica was promoted");
    }
    if (ix.replicas >= 0) {
        char now[REDIS_REPLICAS_MAX][REDIS_ADDR_MAX], gone[REDIS_REPLICAS_MAX][REDIS_ADDR_MAX];
        int ngone = apply_replicas(ctx, now, healthy_replicas(r[ix.replicas], now), gone);
        retire(w, 0, gone, ngone, "a replica is no longer healthy");
    }
    for (int i = 0; i < n; i++)
        freeReplyObject(r[i]);
    return IO_OK;
}

/* Peers that borrowers or validations reported in the wrong role: retired, and the
 * sentinels asked again. */
static void w_kicks(redis_watcher *w)
{
    char peers[KICKS_MAX][REDIS_ADDR_MAX];
    pthread_mutex_lock(&w->ctx->lock);
    int n = w->nkicked;
    memcpy(peers, w->kicked, sizeof peers[0] * (size_t)n);
    w->nkicked = 0;
    pthread_mutex_unlock(&w->ctx->lock);
    if (n) {
        retire(w, 0, peers, n, "not in the expected role");
        w->lookup_now = 1;
    }
}

/* A message on the subscription. */
static void w_event(redis_watcher *w, const redisReply *m)
{
    if (m->type != REDIS_REPLY_ARRAY || m->elements < 3 || !m->element[0]->str ||
        !m->element[1]->str || !m->element[2]->str || strcmp(m->element[0]->str, "message") != 0)
        return;
    const char *chan = m->element[1]->str, *text = m->element[2]->str;
    const char *name = w->t->master_name;
    size_t nlen = strlen(name);
    if (strcmp(chan, "+switch-master") == 0) {
        /* "<name> <old-ip> <old-port> <new-ip> <new-port>" */
        char mname[REDIS_MASTER_NAME_MAX + 1], oip[REDIS_HOST_MAX + 1], nip[REDIS_HOST_MAX + 1];
        int oport = 0, nport = 0;
        if (sscanf(text, "%128s %253s %d %253s %d", mname, oip, &oport, nip, &nport) != 5 ||
            strcmp(mname, name) != 0)
            return;
        char addr[1][REDIS_ADDR_MAX], use[REDIS_ADDR_MAX], old[REDIS_ADDR_MAX] = "";
        leash__redis_addr(nip, nport, addr[0], sizeof addr[0]);
        int moved = apply_master(w->ctx, addr[0], 0, 1, use, sizeof use, old, sizeof old);
        if (moved && !w->t->replica)
            retire(w, 1, NULL, 0, "+switch-master: the master moved");
        if (w->t->replica)
            retire(w, 0, addr, 1, "+switch-master: a replica was promoted");
        w->lookup_now = 1; /* the new epoch, and the replicas */
        return;
    }
    /* "<type> <name> <ip> <port> @ <master> <ip> <port>" or "master <name> <ip> <port>" */
    const char *at = strstr(text, " @ ");
    const char *about = at ? at + 3 : strncmp(text, "master ", 7) == 0 ? text + 7 : NULL;
    if (about && strncmp(about, name, nlen) == 0 && (about[nlen] == ' ' || !about[nlen]))
        w->lookup_now = 1;
}

/* Connects the watcher to the first sentinel that answers: a query connection and a
 * subscribed one. 0, or -1 (none answered, or stopping). */
static int w_connect(redis_watcher *w, redisContext **sub, redisContext **q)
{
    node_copy *nodes = malloc(sizeof *nodes * REDIS_KNOWN_MAX);
    if (!nodes)
        return -1;
    int n = snapshot(w->ctx, nodes), ok = -1;
    for (int i = 0; i < n && ok != 0 && !stopping(w); i++) {
        uint64_t deadline = leash__redis_deadline(w->t->connect_timeout_ms);
        *q = w_dial(w, &nodes[i], deadline);
        *sub = *q ? w_dial(w, &nodes[i], deadline) : NULL;
        if (*sub) {
            const char *av[1 + NEVENTS];
            av[0] = "SUBSCRIBE";
            for (int k = 0; k < NEVENTS; k++)
                av[1 + k] = events[k];
            const char *const *argv[1] = {av};
            int argc[1] = {1 + NEVENTS};
            redisReply *r = NULL;
            ok = w_pipeline(w, *sub, 1, argc, argv, deadline, &r) == IO_OK ? 0 : -1;
            freeReplyObject(r); /* the first confirmation; the others arrive as replies */
        }
        if (ok == 0) {
            atomic_store_explicit(&w->fd_sub, (*sub)->fd, memory_order_relaxed);
            atomic_store_explicit(&w->fd_query, (*q)->fd, memory_order_relaxed);
            prefer(w->ctx, nodes[i].host, nodes[i].port);
        } else {
            if (*sub)
                redisFree(*sub);
            if (*q)
                redisFree(*q);
            *sub = *q = NULL;
        }
    }
    free(nodes);
    return ok;
}

/* Follows one sentinel until its connections fail or the watcher stops. */
static void w_follow(redis_watcher *w, redisContext *sub, redisContext *q)
{
    uint64_t ping_ns = (uint64_t)SENTINEL_PING_MS * 1000000u;
    uint64_t poll_ns = (uint64_t)SENTINEL_POLL_MS * 1000000u;
    uint64_t now = leash__now_ns(), next_poll = now, next_ping = now + ping_ns, pong_due = 0;
    const char *ping[1] = {"PING"};
    w->lookup_now = 1;
    for (;;) {
        w_kicks(w);
        now = leash__now_ns();
        if (w->lookup_now || now >= next_poll) {
            if (w_lookup(w, q) != IO_OK)
                return;
            next_poll = leash__now_ns() + poll_ns;
        }
        now = leash__now_ns();
        if (pong_due && now > pong_due)
            return; /* the sentinel stopped answering */
        if (now >= next_ping && !pong_due) {
            int done = 0;
            if (redisAppendCommandArgv(sub, 1, ping, NULL) != REDIS_OK ||
                redisBufferWrite(sub, &done) != REDIS_OK)
                return;
            pong_due = now + (uint64_t)w->t->connect_timeout_ms * 1000000u;
            next_ping = now + ping_ns;
        }
        uint64_t until = next_poll < next_ping ? next_poll : next_ping;
        if (pong_due && pong_due < until)
            until = pong_due;
        int ready = wait_for(w, sub->fd, POLLIN, until);
        if (ready == IO_STOP)
            return;
        if (ready != 1)
            continue;
        if (redisBufferRead(sub) != REDIS_OK)
            return;
        for (;;) {
            void *r = NULL;
            if (redisGetReplyFromReader(sub, &r) != REDIS_OK)
                return;
            if (!r)
                break;
            redisReply *m = r;
            if (m->type == REDIS_REPLY_ARRAY && m->elements >= 1 && m->element[0]->str &&
                strcmp(m->element[0]->str, "pong") == 0)
                pong_due = 0;
            else
                w_event(w, m);
            freeReplyObject(m);
        }
    }
}

static void *w_main(void *arg)
{
    redis_watcher *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    int backoff = SENTINEL_BACKOFF_MIN_MS;
    while (!stopping(w)) {
        redisContext *sub = NULL, *q = NULL;
        if (w_connect(w, &sub, &q) == 0) {
            backoff = SENTINEL_BACKOFF_MIN_MS;
            w_follow(w, sub, q);
            w_close(&w->fd_sub, &sub);
            w_close(&w->fd_query, &q);
            continue; /* at once to the next sentinel (this one is last now) */
        }
        wait_for(w, -1, 0, leash__redis_deadline(backoff));
        backoff = backoff * 2 > SENTINEL_BACKOFF_MAX_MS ? SENTINEL_BACKOFF_MAX_MS : backoff * 2;
    }
    return NULL;
}

/* ---- starting and stopping ---- */

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* Frees a watcher whose thread has ended or, in a forked child, never existed here (then its
 * sockets are this process's copies: closing them sends nothing). */
static void w_free(redis_watcher *w, int forked)
{
    if (forked) {
        close_fd(atomic_load_explicit(&w->fd_sub, memory_order_relaxed));
        close_fd(atomic_load_explicit(&w->fd_query, memory_order_relaxed));
    }
    close_fd(w->wake[0]);
    close_fd(w->wake[1]);
    leash__redis_target_unref(w->t);
    free(w);
}

void leash__sentinel_fork_child(void)
{
    atomic_fetch_add(&fork_gen, 1);
}

void leash__sentinel_start(redis_ctx *ctx)
{
    unsigned gen = atomic_load(&fork_gen);
    redis_watcher *stale = NULL;
    pthread_mutex_lock(&ctx->lock);
    if (ctx->w && ctx->w->gen != gen) { /* a forked child: that thread is the parent's */
        stale = ctx->w;
        ctx->w = NULL;
    }
    if (ctx->w || ctx->detached || !ctx->pool || ctx->t->kind != REDIS_SENTINEL) {
        pthread_mutex_unlock(&ctx->lock);
        if (stale)
            w_free(stale, 1);
        return;
    }
    redis_watcher *w = calloc(1, sizeof *w);
    if (w && pipe2(w->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(w);
        w = NULL;
    }
    if (w) {
        w->ctx = ctx;
        w->t = leash__redis_target_ref(ctx->t);
        w->gen = gen;
        atomic_init(&w->fd_sub, -1);
        atomic_init(&w->fd_query, -1);
        if (pthread_create(&w->thread, NULL, w_main, w) != 0) {
            w_free(w, 0);
            w = NULL;
        }
    }
    ctx->w = w;
    pthread_mutex_unlock(&ctx->lock);
    if (!w)
        leash__log(LEASH_LOG_WARN,
                   "redis pool \"%s\": cannot start the Sentinel watcher; failovers are "
                   "noticed by connects and validations only",
                   leash_pool_name(ctx->pool));
    if (stale)
        w_free(stale, 1);
}

void leash__sentinel_stop(redis_ctx *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    redis_watcher *w = ctx->w;
    ctx->w = NULL;
    pthread_mutex_unlock(&ctx->lock);
    if (!w)
        return;
    if (w->gen != atomic_load(&fork_gen)) {
        w_free(w, 1);
        return;
    }
    /* relaxed: the byte written next wakes the thread, which then reads the flag */
    atomic_store_explicit(&w->stop, 1, memory_order_relaxed);
    ssize_t n;
    do
        n = write(w->wake[1], "s", 1);
    while (n < 0 && errno == EINTR);
    pthread_join(w->thread, NULL);
    w_free(w, 0);
}

void leash__sentinel_kick(redis_ctx *ctx, const char *peer)
{
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->lock);
    redis_watcher *w = ctx->w;
    if (w && w->gen == atomic_load(&fork_gen)) {
        int dup = 0;
        for (int i = 0; i < w->nkicked && !dup; i++)
            dup = strcmp(w->kicked[i], peer) == 0;
        if (!dup && w->nkicked < KICKS_MAX)
            snprintf(w->kicked[w->nkicked++], REDIS_ADDR_MAX, "%s", peer);
        ssize_t n = write(w->wake[1], "k", 1); /* non-blocking: a full pipe wakes it anyway */
        (void)n;
    }
    pthread_mutex_unlock(&ctx->lock);
}

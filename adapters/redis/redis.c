/* Redis adapter: pools of hiredis connections that never hand a stale reply to the next borrower.
 */
#include "common.h"

#include "url.h"

#include <leash/redis.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REDIS_RESET_MS 1000    /* a release waits at most this long for the server */
#define REDIS_DRAIN_MAX 100000 /* stale replies a release reads before giving up */
/* A connection back from the pool is checked (one recv with MSG_PEEK) on first use only when
 * it sat idle at least this long: a peek costs about 2% of a loopback round trip, and a
 * connection reused within the millisecond is as likely to die after the peek as before. */
#define REDIS_PEEK_IDLE_NS 1000000u

/* The length of hiredis's output buffer (an sds string): hiredis 1.x prefixes its sds
 * functions with hi_ (and defines HI_SDS_MAX_PREALLOC); 0.14 does not. */
#if defined(HI_SDS_MAX_PREALLOC)
#define obuf_len(rc) hi_sdslen((rc)->obuf)
#else
#define obuf_len(rc) sdslen((rc)->obuf)
#endif

/* One pooled connection: the hiredis context plus what the borrower did with it. */
typedef struct redis_conn {
    redisContext *rc;
    const redis_target *t;
    redis_target *own;        /* parsed here when the pool has no context (leash_pool_open) */
    int db;                   /* selected now; -1 unknown (a SELECT queued in MULTI) */
    unsigned sync;            /* numbers the release's ECHO tokens */
    uint64_t released;        /* leash__coarse_ns() at the last release */
    unsigned char raw;        /* leash_redis() gave the context out: full check on release */
    unsigned char multi;      /* MULTI open */
    unsigned char watch;      /* WATCH without EXEC, DISCARD or UNWATCH */
    unsigned char subscribed; /* SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE seen */
    unsigned char tainted;    /* AUTH, HELLO, RESET, MONITOR, QUIT, CLIENT REPLY: not cleanable */
    unsigned char fresh;      /* back from the pool: check the socket on first use */
} redis_conn;

enum { IO_OK = 0, IO_FAIL = -1, IO_TIMEOUT = -2 };

/* ---- wire ---- */

static void set_error(redisContext *rc, int type, const char *msg)
{
    rc->err = type;
    snprintf(rc->errstr, sizeof rc->errstr, "%s", msg);
}

#ifdef REDIS_ERR_TIMEOUT
#define ERR_TIMEOUT REDIS_ERR_TIMEOUT
#else
#define ERR_TIMEOUT REDIS_ERR_IO
#endif

/* Writes buf with MSG_NOSIGNAL (a closed peer is an error, never SIGPIPE). The socket's send
 * timeout (redisSetTimeout) bounds each wait. IO_OK, or IO_FAIL / IO_TIMEOUT with rc->err set. */
static int send_all(redisContext *rc, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(rc->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_error(rc, ERR_TIMEOUT, "timed out sending to the server");
            return IO_TIMEOUT;
        } else {
            char msg[128];
            snprintf(msg, sizeof msg, "%s", n < 0 ? strerror(errno) : "send wrote nothing");
            set_error(rc, REDIS_ERR_IO, msg);
            return IO_FAIL;
        }
    }
    return IO_OK;
}

/* Flushes what the borrower left in hiredis's output buffer (raw use) with SIGPIPE blocked on
 * this thread; a SIGPIPE raised meanwhile is consumed. IO_OK or IO_FAIL (rc->err set). */
static int flush_obuf(redisContext *rc)
{
    leash__nopipe np;
    leash__nopipe_begin(&np);
    int done = 0, r = REDIS_OK;
    while (!done && r == REDIS_OK)
        r = redisBufferWrite(rc, &done);
    leash__nopipe_end(&np);
    return r == REDIS_OK ? IO_OK : IO_FAIL;
}

/* Waits for fd to be readable until deadline (leash__now_ns): 1 readable, 0 timed out. */
static int wait_readable(int fd, uint64_t deadline)
{
    for (;;) {
        uint64_t now = leash__now_ns();
        int ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1; /* readable, or an error hiredis will report */
        if (r == 0 && ms == 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return 1;
    }
}

/* Reads one reply, waiting no later than deadline. IO_OK with *out, or IO_FAIL / IO_TIMEOUT
 * with rc->err set (after a timeout the context is unusable: a reply is still due). */
static int read_reply(redisContext *rc, uint64_t deadline, redisReply **out)
{
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(rc, &r) != REDIS_OK)
            return IO_FAIL;
        if (r) {
            *out = r;
            return IO_OK;
        }
        if (!wait_readable(rc->fd, deadline)) {
            set_error(rc, ERR_TIMEOUT, "timed out waiting for the server");
            return IO_TIMEOUT;
        }
        if (redisBufferRead(rc) != REDIS_OK)
            return IO_FAIL;
    }
}

static uint64_t deadline_ms(int ms)
{
    return leash__now_ns() + (uint64_t)ms * 1000000u;
}

/* Sends argv as one command and reads its reply within timeout_ms. */
static int command_argv(redisContext *rc, int argc, const char **argv, int timeout_ms,
                        redisReply **out)
{
    char *cmd = NULL;
    long long len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    if (len < 0 || !cmd) {
        set_error(rc, REDIS_ERR_OOM, "out of memory");
        return IO_FAIL;
    }
    int r = send_all(rc, cmd, (size_t)len);
    redisFreeCommand(cmd);
    if (r != IO_OK)
        return r;
    return read_reply(rc, deadline_ms(timeout_ms), out);
}

static int is_status(const redisReply *r, const char *text)
{
    return r && r->type == REDIS_REPLY_STATUS && r->str && strcmp(r->str, text) == 0;
}

/* ---- connections ---- */

static struct timeval tv_ms(int ms)
{
    struct timeval tv = {ms / 1000, (long)(ms % 1000) * 1000};
    return tv;
}

/* Copies a server or hiredis message to err, on one line, without the password. */
static void message(const redis_target *t, const char *prefix, const char *msg, char *err,
                    size_t errlen)
{
    char raw[LEASH_ERR_MAX];
    snprintf(raw, sizeof raw, "%s%s", prefix, msg && *msg ? msg : "no message");
    for (char *c = raw; *c; c++)
        if (*c == '\r' || *c == '\n')
            *c = ' ';
    const char *pw = t ? t->password : NULL;
    size_t pwlen = pw ? strlen(pw) : 0;
    char *hit;
    while (pwlen > 0 && (hit = strstr(raw, pw)) != NULL) {
        memset(hit, '*', pwlen < 3 ? pwlen : 3);
        if (pwlen > 3)
            memmove(hit + 3, hit + pwlen, strlen(hit + pwlen) + 1);
    }
    leash__redact(raw, err, errlen);
}

/* One handshake command (argv) that must answer with the status want. Returns 0, or -1 with
 * a message in err: Redis's own error, or hiredis's when the round trip failed. */
static int handshake(redisContext *rc, const redis_target *t, int argc, const char **argv,
                     const char *want, char *err, size_t errlen)
{
    redisReply *r = NULL;
    if (command_argv(rc, argc, argv, t->command_timeout_ms, &r) != IO_OK) {
        message(t, "", rc->errstr, err, errlen);
        return -1;
    }
    int ok = is_status(r, want);
    if (!ok) {
        char prefix[48];
        snprintf(prefix, sizeof prefix, "%s%s%s failed: ", argv[0],
                 strcmp(argv[0], "SELECT") == 0 ? " " : "",
                 strcmp(argv[0], "SELECT") == 0 ? argv[1] : "");
        message(t, prefix, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", err, errlen);
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* Connects to t: TCP or unix socket within the connect timeout, close-on-exec, keepalive
 * (TCP), the command timeout on the socket, then AUTH (argv form: the password is never
 * formatted into a string) and SELECT, or a PING when neither is needed, so a server that
 * does not answer fails here. NULL with a message in err. */
static redisContext *open_context(const redis_target *t, char *err, size_t errlen)
{
    struct timeval ct = tv_ms(t->connect_timeout_ms);
    redisContext *rc = t->unix_sock ? redisConnectUnixWithTimeout(t->host, ct)
                                    : redisConnectWithTimeout(t->host, t->port, ct);
    if (!rc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int fl = rc->err ? -1 : fcntl(rc->fd, F_GETFD);
    if (!rc->err && (fl < 0 || fcntl(rc->fd, F_SETFD, fl | FD_CLOEXEC) < 0))
        set_error(rc, REDIS_ERR_IO, "cannot set close-on-exec on the socket");
    if (!rc->err && !t->unix_sock)
        redisEnableKeepAlive(rc); /* sets rc->err on failure */
    if (!rc->err)
        redisSetTimeout(rc, tv_ms(t->command_timeout_ms));
    if (rc->err) {
        message(t, "", rc->errstr, err, errlen);
        redisFree(rc);
        return NULL;
    }
    char db[16];
    snprintf(db, sizeof db, "%d", t->db);
    const char *auth[3] = {"AUTH", t->user ? t->user : t->password, t->password};
    const char *select[2] = {"SELECT", db};
    const char *ping[1] = {"PING"};
    int failed = 0;
    if (t->password)
        failed = handshake(rc, t, t->user ? 3 : 2, auth, "OK", err, errlen);
    if (!failed && t->db != 0)
        failed = handshake(rc, t, 2, select, "OK", err, errlen);
    if (!failed && !t->password && t->db == 0)
        failed = handshake(rc, t, 1, ping, "PONG", err, errlen);
    if (failed) {
        redisFree(rc);
        return NULL;
    }
    return rc;
}

static void *redis_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    const redis_target *t = ctx;
    redis_target *own = NULL;
    if (!t) {
        char why[LEASH_ERR_MAX / 2];
        own = leash__redis_url_parse(target ? target : "", why, sizeof why);
        if (!own) {
            snprintf(err, errlen, "malformed URL: %s", why);
            return NULL;
        }
        t = own;
    }
    redis_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        leash__redis_target_free(own);
        return NULL;
    }
    c->rc = open_context(t, err, errlen);
    if (!c->rc) {
        leash__redis_target_free(own);
        free(c);
        return NULL;
    }
    c->t = t;
    c->own = own;
    c->db = t->db;
    return c;
}

/* Output hiredis has not sent, or input it has not handed out as replies. */
static int pending_local(const redisContext *rc)
{
    const redisReader *rd = rc->reader;
    return (rc->obuf && obuf_len(rc) > 0) || (rd && (rd->pos < rd->len || rd->ridx >= 0));
}

/* Only when idle longer than validate_idle_ms: a PING within the command timeout. */
static int redis_validate(void *ctx, void *conn)
{
    redis_conn *c = conn;
    c->fresh = 0;
    if (c->rc->err || pending_local(c->rc))
        return -1;
    const char *argv[1] = {"PING"};
    redisReply *r = NULL;
    if (command_argv(c->rc, 1, argv, c->t->command_timeout_ms, &r) != IO_OK)
        return -1;
    int ok = is_status(r, "PONG");
    freeReplyObject(r);
    return ok ? 0 : -1;
}

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
    if (rc->obuf && obuf_len(rc) > 0)
        return LEASH_RESET_DIRTY; /* unsent output: maybe half a command went out */
    if (raw && redisSetTimeout(rc, tv_ms(c->t->command_timeout_ms)) != REDIS_OK)
        return LEASH_RESET_BROKEN; /* the borrower may have changed it */

    char token[64];
    char db[16];
    snprintf(db, sizeof db, "%d", c->t->db);
    snprintf(token, sizeof token, "leash:sync:%lx:%u", (unsigned long)(uintptr_t)c, ++c->sync);
    const char *argv[4][2];
    int argc[4], n = 0;
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
    int io = send_all(rc, buf, len);
    free(buf);
    if (io != IO_OK)
        return LEASH_RESET_BROKEN;

    uint64_t deadline = deadline_ms(REDIS_RESET_MS);
    int seen = 0, last_ok[2] = {0, 0}, expected = raw ? REDIS_DRAIN_MAX : oks;
    for (int i = 0; i <= expected; i++) {
        redisReply *r = NULL;
        io = read_reply(rc, deadline, &r);
        if (io == IO_TIMEOUT)
            return dirty || seen > oks ? LEASH_RESET_DIRTY : LEASH_RESET_BROKEN;
        if (io != IO_OK)
            return LEASH_RESET_BROKEN;
        if (!raw) {
            int ok = is_status(r, "OK");
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
        int stuck = is_status(r, "QUEUED") || is_error_with(r, "allowed in this context");
        int ok = is_status(r, "OK");
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
    redis_conn *c = conn;
    redisFree(c->rc); /* closes the socket; hiredis sends nothing on free */
    leash__redis_target_free(c->own);
    free(c);
}

/* In a forked child: redisFree only closes this process's copy of the socket (the parent's
 * stays open, so the server sees nothing). */
static void redis_abandon(void *ctx, void *conn)
{
    redis_destroy(ctx, conn);
}

static void redis_describe(void *ctx, const char *target, char *out, size_t outlen)
{
    const redis_target *t = ctx;
    if (t) {
        snprintf(out, outlen, "%s", t->shown);
        return;
    }
    char why[LEASH_ERR_MAX / 2];
    redis_target *own = leash__redis_url_parse(target ? target : "", why, sizeof why);
    if (own)
        snprintf(out, outlen, "%s", own->shown);
    else
        snprintf(out, outlen, "(malformed Redis URL)");
    leash__redis_target_free(own);
}

static void redis_ctx_free(void *ctx)
{
    leash__redis_target_free(ctx);
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
    return leash_pool_open_with(name, &leash_redis_adapter, t, url, opts);
}

/* ---- borrowers ---- */

static redis_conn *held(leash_handle *h, const char *fn)
{
    return leash__held_conn(h, &leash_redis_adapter, fn, "Redis");
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
    redisContext *rc = open_context(c->t, err, sizeof err);
    if (rc) {
        redisFree(c->rc);
        c->rc = rc;
        c->db = c->t->db;
        c->multi = c->watch = c->subscribed = c->tainted = 0;
        leash__log(LEASH_LOG_INFO, "redis: a pooled connection to %s %s while idle; reconnected",
                   c->t->shown, n == 0 ? "was closed by the server" : "went bad");
        return 0;
    }
    leash_mark_broken(h);
    leash__fail(LEASH_EIO, "%s: the connection to %s died while idle and reconnecting failed: %s",
                fn, c->t->shown, err);
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

/* Updates the tracked state after a command of kind answered r. */
static void track(redis_conn *c, int kind, const char *cmd, size_t cmdlen, const redisReply *r)
{
    size_t len = 0;
    const char *arg;
    switch (kind) {
    case CMD_MULTI:
        if (is_status(r, "OK"))
            c->multi = 1;
        break;
    case CMD_END_MULTI:
        c->multi = c->watch = 0;
        break;
    case CMD_WATCH:
        if (!c->multi && is_status(r, "OK"))
            c->watch = 1;
        break;
    case CMD_UNWATCH:
        if (!c->multi)
            c->watch = 0;
        break;
    case CMD_SELECT:
        if (is_status(r, "QUEUED")) {
            c->db = -1; /* EXEC will switch: SELECT back on release */
        } else if (is_status(r, "OK")) {
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
    message(c->t, "", c->rc->errstr, msg, sizeof msg);
    leash_mark_broken(h);
    if (timed_out)
        return leash__fail_null(LEASH_ETIMEDOUT,
                                "%s: no reply from %s within %d ms (%s); the connection will be "
                                "dropped",
                                fn, c->t->shown, c->t->command_timeout_ms, msg);
    return leash__fail_null(LEASH_EIO, "%s: the connection to %s failed: %s", fn, c->t->shown, msg);
}

redisReply *leash_redis_command(leash_handle *h, const char *fmt, ...)
{
    static const char fn[] = "leash_redis_command";
    redis_conn *c = held(h, fn);
    if (LEASH_UNLIKELY(!c))
        return NULL;
    if (LEASH_UNLIKELY(!fmt))
        return leash__fail_null(LEASH_EINVAL, "%s: the format is NULL", fn);
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
        return leash__fail_null(LEASH_EINVAL, "%s: the format is invalid (or out of memory)", fn);
    }
    int kind = classify(cmd, (size_t)len);

    int io;
    void *reply = NULL;
    if (LEASH_LIKELY(obuf_len(rc) == 0)) {
        io = send_all(rc, cmd, (size_t)len);
    } else {
        /* The borrower appended commands through leash_redis(): they go first, like
         * redisCommand would send them, and the reply is the first one due. */
        io = redisAppendFormattedCommand(rc, cmd, (size_t)len) == REDIS_OK ? flush_obuf(rc)
                                                                           : IO_FAIL;
        kind = CMD_OTHER;
    }
    if (LEASH_LIKELY(io == IO_OK) && redisGetReply(rc, &reply) != REDIS_OK)
        io = timed_out(rc, errno) ? IO_TIMEOUT : IO_FAIL;
    if (LEASH_UNLIKELY(io != IO_OK)) {
        redisFreeCommand(cmd);
        if (!rc->err)
            set_error(rc, REDIS_ERR_IO, "no reply");
        return io_failure(h, c, io == IO_TIMEOUT, fn);
    }
    if (LEASH_UNLIKELY(kind != CMD_OTHER))
        track(c, kind, cmd, (size_t)len, reply);
    redisFreeCommand(cmd);
    return reply;
}

void leash__reply_free(redisReply **r)
{
    if (r && *r) {
        freeReplyObject(*r);
        *r = NULL;
    }
}

/* Redis adapter: the wire (bounded sends and reads, pipelines) and the connect handshake, every
 * step of which ends by one deadline. */
#include "redis-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#ifdef REDIS_ERR_TIMEOUT
#define ERR_TIMEOUT REDIS_ERR_TIMEOUT
#else
#define ERR_TIMEOUT REDIS_ERR_IO
#endif

static void set_error(redisContext *rc, int type, const char *msg)
{
    rc->err = type;
    snprintf(rc->errstr, sizeof rc->errstr, "%s", msg);
}

uint64_t leash__redis_deadline(int ms)
{
    return leash__now_ns() + (uint64_t)ms * 1000000u;
}

/* Milliseconds left until deadline, at least 1. */
static int ms_left(uint64_t deadline)
{
    uint64_t now = leash__now_ns();
    return now >= deadline ? 1 : (int)((deadline - now + 999999) / 1000000);
}

int leash__redis_send_all(redisContext *rc, const char *buf, size_t len)
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

/* Waits for fd to be readable until deadline: 1 readable, 0 timed out. */
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

int leash__redis_read_reply(redisContext *rc, uint64_t deadline, redisReply **out)
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

int leash__redis_pipeline(redisContext *rc, int n, const int *argc, const char *const *const *argv,
                          uint64_t deadline, redisReply **out)
{
    char *buf = NULL;
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        char *cmd = NULL;
        long long l = redisFormatCommandArgv(&cmd, argc[i], (const char **)argv[i], NULL);
        char *grown = l >= 0 && cmd ? realloc(buf, len + (size_t)l) : NULL;
        if (!grown) {
            if (cmd)
                explicit_bzero(cmd, (size_t)l);
            redisFreeCommand(cmd);
            if (buf)
                explicit_bzero(buf, len);
            free(buf);
            set_error(rc, REDIS_ERR_OOM, "out of memory");
            return IO_FAIL;
        }
        buf = grown;
        memcpy(buf + len, cmd, (size_t)l);
        len += (size_t)l;
        explicit_bzero(cmd, (size_t)l); /* AUTH's password */
        redisFreeCommand(cmd);
    }
    int io = leash__redis_send_all(rc, buf, len);
    explicit_bzero(buf, len);
    free(buf);
    for (int i = 0; io == IO_OK && i < n; i++) {
        io = leash__redis_read_reply(rc, deadline, &out[i]);
        if (io != IO_OK)
            while (i-- > 0)
                freeReplyObject(out[i]);
    }
    return io;
}

static struct timeval tv_ms(int ms)
{
    struct timeval tv = {ms / 1000, (long)(ms % 1000) * 1000};
    return tv;
}

int leash__redis_set_timeout(redisContext *rc, int ms)
{
    return redisSetTimeout(rc, tv_ms(ms)) == REDIS_OK ? 0 : -1;
}

redisContext *leash__redis_dial(const char *host, int port, uint64_t deadline, char *err,
                                size_t errlen)
{
    struct timeval ct = tv_ms(ms_left(deadline));
    redisContext *rc =
        port ? redisConnectWithTimeout(host, port, ct) : redisConnectUnixWithTimeout(host, ct);
    if (!rc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int fl = rc->err ? -1 : fcntl(rc->fd, F_GETFD);
    if (!rc->err && (fl < 0 || fcntl(rc->fd, F_SETFD, fl | FD_CLOEXEC) < 0))
        set_error(rc, REDIS_ERR_IO, "cannot set close-on-exec on the socket");
    if (!rc->err && port)
        redisEnableKeepAlive(rc); /* sets rc->err on failure */
    if (!rc->err)
        redisSetTimeout(rc, tv_ms(ms_left(deadline)));
    if (rc->err) {
        snprintf(err, errlen, "%s", rc->errstr[0] ? rc->errstr : "cannot connect");
        redisFree(rc);
        return NULL;
    }
    return rc;
}

/* Replaces every occurrence of pw in s by "***". */
static void strip(char *s, const char *pw)
{
    size_t n = pw ? strlen(pw) : 0;
    char *hit;
    while (n > 0 && (hit = strstr(s, pw)) != NULL) {
        memset(hit, '*', n < 3 ? n : 3);
        if (n > 3)
            memmove(hit + 3, hit + n, strlen(hit + n) + 1);
    }
}

void leash__redis_message(const redis_target *t, const char *prefix, const char *msg, char *err,
                          size_t errlen)
{
    char raw[LEASH_ERR_MAX];
    snprintf(raw, sizeof raw, "%s%s", prefix, msg && *msg ? msg : "no message");
    for (char *c = raw; *c; c++)
        if (*c == '\r' || *c == '\n')
            *c = ' ';
    if (t) {
        strip(raw, t->password);
        strip(raw, t->sentinel_password);
    }
    leash__redact(raw, err, errlen);
    explicit_bzero(raw, sizeof raw);
}

int leash__redis_is_status(const redisReply *r, const char *text)
{
    return r && r->type == REDIS_REPLY_STATUS && r->str && strcmp(r->str, text) == 0;
}

const char *leash__redis_role(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !r->element[0] ||
        r->element[0]->type != REDIS_REPLY_STRING || !r->element[0]->str)
        return NULL;
    static const char *const roles[] = {"master", "slave", "sentinel"};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
        if (strcmp(r->element[0]->str, roles[i]) == 0)
            return roles[i];
    return NULL;
}

int leash__redis_handshake(redisContext *rc, const redis_target *t, const char *want,
                           uint64_t deadline, char *err, size_t errlen)
{
    char db[16];
    snprintf(db, sizeof db, "%d", t->db);
    const char *auth[3] = {"AUTH", t->user ? t->user : t->password, t->password};
    const char *select[2] = {"SELECT", db};
    const char *role[1] = {want ? "ROLE" : "PING"};
    const char *const *argv[3];
    int argc[3], n = 0, iauth = -1, iselect = -1;
    if (t->password) {
        iauth = n;
        argv[n] = auth;
        argc[n++] = t->user ? 3 : 2;
    }
    if (t->db != 0) {
        iselect = n;
        argv[n] = select;
        argc[n++] = 2;
    }
    argv[n] = role;
    argc[n++] = 1;
    redisReply *r[3] = {NULL, NULL, NULL};
    int io = leash__redis_pipeline(rc, n, argc, argv, deadline, r);
    if (io != IO_OK) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "%s",
                 io == IO_TIMEOUT ? "no answer to the handshake within the connect timeout: " : "");
        leash__redis_message(t, prefix, rc->errstr, err, errlen);
        return -1;
    }
    int failed = -1;
    for (int i = 0; i < n && failed < 0; i++) {
        if (i == n - 1 && want)
            failed = leash__redis_role(r[i]) ? -1 : i;
        else if (i == n - 1)
            failed = leash__redis_is_status(r[i], "PONG") ? -1 : i;
        else
            failed = leash__redis_is_status(r[i], "OK") ? -1 : i;
    }
    if (failed >= 0) {
        char prefix[48];
        if (failed == iauth)
            snprintf(prefix, sizeof prefix, "AUTH failed: ");
        else if (failed == iselect)
            snprintf(prefix, sizeof prefix, "SELECT %d failed: ", t->db);
        else
            snprintf(prefix, sizeof prefix, "%s failed: ", role[0]);
        redisReply *bad = r[failed];
        leash__redis_message(
            t, prefix, bad->type == REDIS_REPLY_ERROR ? bad->str : "unexpected reply", err, errlen);
    } else if (want && strcmp(leash__redis_role(r[n - 1]), want) != 0) {
        failed = n - 1;
        snprintf(err, errlen, "its role is %s, not %s", leash__redis_role(r[n - 1]), want);
    }
    for (int i = 0; i < n; i++)
        freeReplyObject(r[i]);
    return failed >= 0 ? -1 : 0;
}

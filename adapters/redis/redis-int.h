/* Redis adapter internals shared by its files: the pool context, one pooled connection, the
 * wire helpers (wire.c) and the Sentinel side (sentinel.c). Never installed. */
#ifndef LEASH_REDIS_INT_H
#define LEASH_REDIS_INT_H

#include "common.h"
#include "url.h"

#include <leash/redis.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define REDIS_KNOWN_MAX 32    /* sentinels a pool remembers (given and learned) */
#define REDIS_REPLICAS_MAX 32 /* healthy replicas a replica pool remembers */

typedef struct redis_watcher redis_watcher; /* sentinel.c */

/* The pool's adapter context (leash_redis_pool). Lock rules: lock guards every field below
 * it; it is held only for a few loads and stores: never across I/O, never while calling the
 * core (the core's fork handler holds the pool locks when it takes lock through
 * redis_fork_prepare, so a thread holding lock must never wait for a pool lock). */
typedef struct redis_ctx {
    pthread_mutex_t lock;
    redis_target *t;  /* the current target (one reference); retarget swaps it */
    leash_pool *pool; /* set by attach; valid until leash_shutdown */
    int detached;     /* detach ran: no watcher may start again */
    /* Sentinel pools */
    redis_node known[REDIS_KNOWN_MAX]; /* sentinels to ask, the one that answered last first */
    int nknown;
    char master[REDIS_ADDR_MAX]; /* the master's address as last learned; "" unknown */
    uint64_t epoch;              /* its rank: 2 x config epoch (+1 while promoted, before the
                                    switch); a sentinel behind the others answers lower */
    char replicas[REDIS_REPLICAS_MAX][REDIS_ADDR_MAX]; /* healthy replicas, role=replica */
    int nreplicas;
    unsigned rr;            /* round robin over replicas */
    redis_watcher *w;       /* the watcher thread, NULL when none runs */
    struct redis_ctx *next; /* every live context, for the fork hooks */
} redis_ctx;

/* One pooled connection: the hiredis context plus what the borrower did with it. */
typedef struct redis_conn {
    redisContext *rc;
    redis_target *t;           /* the target it was made with (one reference) */
    redis_ctx *ctx;            /* NULL for a pool opened with leash_pool_open */
    int db;                    /* selected now; -1 unknown (a SELECT queued in MULTI) */
    unsigned sync;             /* numbers the release's ECHO tokens */
    uint64_t released;         /* leash__coarse_ns() at the last release */
    unsigned char raw;         /* leash_redis() gave the context out: full check on release */
    unsigned char multi;       /* MULTI open */
    unsigned char watch;       /* keys may be WATCHed: the release sends UNWATCH */
    unsigned char subscribed;  /* SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE seen */
    unsigned char tainted;     /* AUTH, HELLO, RESET, MONITOR, QUIT, CLIENT REPLY: not cleanable */
    unsigned char fresh;       /* back from the pool: check the socket on first use */
    char peer[REDIS_ADDR_MAX]; /* "host:port" or the socket path */
} redis_conn;

enum { IO_OK = 0, IO_FAIL = -1, IO_TIMEOUT = -2 };

/* ---- wire.c ---- */

/* The length of hiredis's output buffer (an sds string): hiredis 1.x prefixes its sds
 * functions with hi_ (and defines HI_SDS_MAX_PREALLOC); 0.14 does not. */
#if defined(HI_SDS_MAX_PREALLOC)
#define redis_obuf_len(rc) hi_sdslen((rc)->obuf)
#else
#define redis_obuf_len(rc) sdslen((rc)->obuf)
#endif

uint64_t leash__redis_deadline(int ms);
/* Writes buf with MSG_NOSIGNAL; the socket's send timeout bounds each wait. IO_OK, or
 * IO_FAIL / IO_TIMEOUT with rc->err set. */
int leash__redis_send_all(redisContext *rc, const char *buf, size_t len);
/* Reads one reply, waiting no later than deadline. IO_OK with *out, or IO_FAIL /
 * IO_TIMEOUT with rc->err set (after a timeout the context is unusable). */
int leash__redis_read_reply(redisContext *rc, uint64_t deadline, redisReply **out);
/* Sends n commands (argc[i], argv[i]) as one write, then reads their n replies into out
 * (the caller frees them) before deadline. IO_OK, or IO_FAIL / IO_TIMEOUT with rc->err set
 * and every reply read so far freed. */
int leash__redis_pipeline(redisContext *rc, int n, const int *argc, const char *const *const *argv,
                          uint64_t deadline, redisReply **out);
/* Connects to host:port (or the socket path host when port is 0) before deadline:
 * close-on-exec, keepalive on TCP, socket timeouts set to what is left. NULL with a message
 * in err. */
redisContext *leash__redis_dial(const char *host, int port, uint64_t deadline, char *err,
                                size_t errlen);
/* Sets the socket's send and receive timeouts to ms. */
int leash__redis_set_timeout(redisContext *rc, int ms);
/* Copies msg (after prefix) to err on one line, with both passwords of t removed. */
void leash__redis_message(const redis_target *t, const char *prefix, const char *msg, char *err,
                          size_t errlen);
int leash__redis_is_status(const redisReply *r, const char *text);
/* "master", "slave", "sentinel" or NULL from a ROLE reply. */
const char *leash__redis_role(const redisReply *r);
/* The data-node handshake on rc before deadline: AUTH (argv form: the password is never
 * formatted), SELECT, then ROLE (want "master" or "slave") or, want NULL, PING. 0, or -1
 * with a message in err. */
int leash__redis_handshake(redisContext *rc, const redis_target *t, const char *want,
                           uint64_t deadline, char *err, size_t errlen);

/* ---- sentinel.c ---- */

/* A connection to the master (or, role=replica, a replica) through the sentinels, its
 * address in peer. NULL with a message in err. */
redisContext *leash__sentinel_connect(redis_ctx *ctx, const redis_target *t, char *peer,
                                      size_t peerlen, char *err, size_t errlen);
/* The watcher of ctx's pool: started when a Sentinel pool opens (or, in a forked child, at
 * its first connect), stopped and joined when it closes or is retargeted. */
void leash__sentinel_start(redis_ctx *ctx);
void leash__sentinel_stop(redis_ctx *ctx);
/* A borrower or a validation found peer in the wrong role: the watcher retires the pool's
 * connections to it and asks the sentinels again. */
void leash__sentinel_kick(redis_ctx *ctx, const char *peer);
/* Whether peer is where a connection of ctx's pool should be now (the known master, or a
 * healthy replica); 1 when nothing is known yet. */
int leash__sentinel_peer_current(redis_ctx *ctx, const char *peer);
/* The fork hooks' part for the watchers: the child's watchers do not exist. */
void leash__sentinel_fork_child(void);
/* Appends " (master ADDR)" when ctx knows its master. */
void leash__sentinel_describe(redis_ctx *ctx, char *out, size_t outlen);

#endif /* LEASH_REDIS_INT_H */

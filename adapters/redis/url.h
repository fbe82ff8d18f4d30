/* Redis adapter internals: the parsed form of a Redis URL (redis://, unix://, redis-sentinel://).
 */
#ifndef LEASH_REDIS_URL_H
#define LEASH_REDIS_URL_H

#include <stdatomic.h>
#include <stddef.h>

#define REDIS_DEFAULT_PORT 6379
#define REDIS_SENTINEL_PORT 26379
#define REDIS_CONNECT_TIMEOUT_MS 2000
#define REDIS_COMMAND_TIMEOUT_MS 5000
#define REDIS_TIMEOUT_MAX_MS 86400000L /* a day */
#define REDIS_URL_MAX 4096
#define REDIS_HOST_MAX 253
#define REDIS_SHOWN_MAX 256
#define REDIS_SENTINELS_MAX 16 /* in one URL */
#define REDIS_MASTER_NAME_MAX 128
/* "host:port" of a TCP node (IPv6 in brackets), or a socket path, NUL included. */
#define REDIS_ADDR_MAX 272

enum { REDIS_TCP, REDIS_UNIX, REDIS_SENTINEL };

/* One host:port. */
typedef struct redis_node {
    char *host; /* name or address (IPv6 without brackets) */
    int port;
} redis_node;

/* A parsed URL. Shared by the pool's context and every connection made with it, so it is
 * reference counted (a retarget swaps the pool's copy; connections keep theirs). Immutable
 * once parsed. */
typedef struct redis_target {
    _Atomic int refs;
    int kind;   /* REDIS_TCP, REDIS_UNIX or REDIS_SENTINEL */
    char *host; /* REDIS_TCP: name or address; REDIS_UNIX: the socket path */
    int port;
    int db;
    char *user, *password; /* password NULL: no AUTH (data nodes) */
    int connect_timeout_ms, command_timeout_ms;
    /* REDIS_SENTINEL */
    redis_node sentinels[REDIS_SENTINELS_MAX];
    int nsentinels;
    char *master_name;
    char *sentinel_user, *sentinel_password; /* sentinel_password NULL: no AUTH (sentinels) */
    int replica;                             /* ?role=replica */
    char shown[REDIS_SHOWN_MAX];             /* password-free, for dumps and errors */
} redis_target;

/* Parses url into a new target (one reference), or returns NULL with a message in why
 * (whylen bytes) that names the bad part and never holds any part of a password:
 *   redis://[[user]:password@]host[:port][/db][?options]
 *   unix:///path/redis.sock[?db=N&options]
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]]...[/db][?options]#master
 * Passwords are percent-decoded. */
redis_target *leash__redis_url_parse(const char *url, char *why, size_t whylen);
/* Takes one more reference to t; returns t. */
redis_target *leash__redis_target_ref(redis_target *t);
/* Drops one reference; the last one frees t (wiping the passwords). NULL is a no-op. */
void leash__redis_target_unref(redis_target *t);
/* [s, s+n) as a number <= max, digits only: 0 with *out set, -1 not a number (empty, a sign,
 * another character), -2 too large. */
int leash__redis_parse_num(const char *s, size_t n, long max, long *out);
/* "host:port" (brackets around an IPv6 address) into out. */
void leash__redis_addr(const char *host, int port, char *out, size_t outlen);

#endif /* LEASH_REDIS_URL_H */

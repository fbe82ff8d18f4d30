/* Redis adapter internals: the parsed form of a Redis URL. */
#ifndef LEASH_REDIS_URL_H
#define LEASH_REDIS_URL_H

#include <stddef.h>

#define REDIS_DEFAULT_PORT 6379
#define REDIS_CONNECT_TIMEOUT_MS 2000
#define REDIS_COMMAND_TIMEOUT_MS 5000
#define REDIS_TIMEOUT_MAX_MS 86400000L /* a day */
#define REDIS_URL_MAX 4096
#define REDIS_HOST_MAX 253
#define REDIS_SHOWN_MAX 256

/* A parsed URL: the pool's adapter context. */
typedef struct redis_target {
    int unix_sock;
    char *host; /* name or address (IPv6 without brackets), or the socket path */
    int port;
    int db;
    char *user, *password; /* password NULL: no AUTH */
    int connect_timeout_ms, command_timeout_ms;
    char shown[REDIS_SHOWN_MAX]; /* password-free, for dumps and errors */
} redis_target;

/* Parses url (redis://[[user]:password@]host[:port][/db][?options] or
 * unix:///path[?db=N&options]) into a new target, or returns NULL with a message in why
 * (whylen bytes) that names the bad part and never holds the password. */
redis_target *leash__redis_url_parse(const char *url, char *why, size_t whylen);
/* Frees t (wiping the password); NULL is a no-op. */
void leash__redis_target_free(redis_target *t);
/* [s, s+n) as a number <= max, digits only: 0 with *out set, -1 not a number (empty, a sign,
 * another character), -2 too large. */
int leash__redis_parse_num(const char *s, size_t n, long max, long *out);

#endif /* LEASH_REDIS_URL_H */

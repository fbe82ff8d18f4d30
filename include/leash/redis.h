/* leash Redis adapter: pools of hiredis connections. */
#ifndef LEASH_REDIS_H
#define LEASH_REDIS_H

#include <hiredis/hiredis.h>
#include <leash/leash.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The adapter table behind leash_redis_pool, for leash_conn_of. */
LEASH_EXPORT extern const leash_adapter leash_redis_adapter;

/* Opens a pool of Redis connections to url:
 *   redis://[[user]:password@]host[:port][/db][?connect_timeout_ms=N&command_timeout_ms=N]
 *   unix:///path/redis.sock[?db=N&connect_timeout_ms=N&command_timeout_ms=N]
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]]...[/db][?options]#master-name
 * host is a name, an IPv4 address or a bracketed IPv6 address; port 1..65535 (6379; 26379 for
 * a sentinel); db >= 0; connect_timeout_ms (2000) bounds the whole connect of one node (TCP,
 * AUTH, SELECT, ROLE or PING), command_timeout_ms (5000) each later command.
 * Sentinel options: sentinel_password and sentinel_user (for the sentinels; the user info is
 * for the data nodes), role=master (default) or role=replica (read-only connections, round
 * robin over the replicas the sentinels list as healthy). Connections go to the node the
 * sentinels name, checked with ROLE before they are lent; a watcher thread retires them
 * when the master moves (+switch-master), so none is lent to a demoted master. A
 * redis-sentinel:// target needs this function (leash_pool_open with leash_redis_adapter
 * refuses it at connect: the watcher lives in the pool's adapter context).
 * Passwords (user info and option values) are percent-decoded (%40 for '@'). A raw
 * '/', '#', '@', ':', '[' or ']' in the user info's password is taken whole; a raw '?' too in
 * redis:// (refused in redis-sentinel://, whose options may hold an '@'); a '%' must start
 * a %XX escape. In option values write '&', '#' and '%' encoded.
 * The URL is checked at once: a malformed one returns NULL with LEASH_EINVAL and a
 * message naming the bad part (never any part of a password). opts NULL: pool defaults. */
LEASH_EXPORT leash_pool *leash_redis_pool(const char *name, const char *url,
                                          const leash_pool_options *opts);
/* The hiredis context of a held Redis handle, or NULL (h NULL, not held, not Redis).
 * Borrowed; valid until release. Raw use is allowed; the release then checks the
 * connection fully (unread replies, unsent output) with one round trip, since a reply may
 * still be on its way; unread replies are dropped (counted dirty), unsent output destroys
 * the connection. Raw calls follow hiredis's rules (SIGPIPE included). */
LEASH_EXPORT redisContext *leash_redis(leash_handle *h);
/* The node h's connection is on: "host:port" (an IPv6 host in brackets) or the socket path;
 * on a Sentinel pool the master's (or replica's) address as the sentinels gave it. NULL
 * unless h is a held Redis handle. Borrowed; valid until release. */
LEASH_EXPORT const char *leash_redis_peer(leash_handle *h);
/* printf-style command like redisCommand on h's connection. Returns the reply (the
 * caller frees it: freeReplyObject, or LEASH_REPLY), or NULL: LEASH_EINVAL for a bad
 * handle or format, LEASH_EIO for a connection failure and LEASH_ETIMEDOUT for a timeout
 * (both mark h broken); leash_last_error() says what happened. A Redis error reply
 * (REDIS_REPLY_ERROR) is a reply, not a failure; but -READONLY (the node is a replica now)
 * also marks h broken, on any pool but a role=replica one, and on a Sentinel pool retires
 * every connection to that node. Never raises SIGPIPE. MULTI, WATCH, SELECT and the
 * subscribe commands are tracked from their replies: the release discards, unwatches and
 * selects back (counted dirty); a subscribed connection is destroyed. */
LEASH_EXPORT redisReply *leash_redis_command(leash_handle *h, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* LEASH_REPLY redisReply *r = leash_redis_command(h, "GET k");  frees r at scope exit.
 * GCC and Clang only. */
LEASH_EXPORT void leash__reply_free(redisReply **r);
#if defined(__GNUC__) || defined(__clang__)
#define LEASH_REPLY __attribute__((__cleanup__(leash__reply_free)))
#endif

#ifdef __cplusplus
}
#endif

#endif /* LEASH_REDIS_H */

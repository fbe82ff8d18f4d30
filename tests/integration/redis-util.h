/* Helpers shared by the Redis integration tests (test-redis*.c). */
#ifndef LEASH_TEST_REDIS_UTIL_H
#define LEASH_TEST_REDIS_UTIL_H

#include "kit.h"
#include "servers.h"

#include <leash/redis.h>

#include <stdio.h>
#include <sys/types.h>

#define URL "redis://127.0.0.1:16379"
#define AUTH_URL "redis://:" SRV_REDIS_PASSWORD "@127.0.0.1:16380"

/* Runs a command through h that must answer (not an error reply); returns the reply. */
#define must(h, ...) checked(leash_redis_command((h), __VA_ARGS__), #__VA_ARGS__)

/* A plain hiredis connection to the password-less instance, outside leash (for CLIENT KILL,
 * checks and setup). */
redisContext *admin(void);
/* Runs a command on the admin connection; fails the test unless a reply came. */
redisReply *admin_cmd(redisContext *rc, const char *fmt, ...);
leash_pool *pool(const char *name, const char *url, int max_size);
/* The reply r of the command what, which must be a reply and not an error (for must()). */
redisReply *checked(redisReply *r, const char *what);
/* GET key through h, as a malloc'd string ("(nil)" for none). */
char *get(leash_handle *h, const char *key);
void set(leash_handle *h, const char *key, const char *value);
long long client_id(leash_handle *h);
/* The value of field (e.g. "db") in this connection's CLIENT INFO line (malloc'd). */
char *client_info(leash_handle *h, const char *field);
int teardown(void **state);
int group_setup(void **state);

/* the tests, by file */
void test_set_get(void **state);
void test_validate_only_when_idle(void **state);
void test_many_threads(void **state);
void test_stale_reply(void **state);
void test_state_left_behind(void **state);
void test_command_timeout(void **state);
void test_client_kill(void **state);
void test_restart_under_load(void **state);
void test_paused_server(void **state);
void test_wrong_password(void **state);
void test_unix_socket(void **state);
void test_fork(void **state);
void test_strict_aborts_on_dirty_return(void **state);
void test_no_sigpipe(void **state);
void test_bad_urls(void **state);
void test_bad_handles(void **state);
void test_watch_left_by_error(void **state);
void test_handshake_bounded(void **state);
void test_password_delimiters(void **state);
void test_retarget(void **state);

#endif

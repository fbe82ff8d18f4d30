/* Helpers shared by the PostgreSQL integration tests (test-pg*.c). */
#ifndef LEASH_TEST_PG_UTIL_H
#define LEASH_TEST_PG_UTIL_H

#include "kit.h"
#include "servers.h"

#include <leash/pg.h>

#define PG_KV "host=127.0.0.1 port=15432 dbname=leash user=leash password=" SRV_PG_PASSWORD
#define BOUNCER_KV "host=127.0.0.1 port=16432 dbname=leash user=leash password=" SRV_PG_PASSWORD
/* The replicated pair (tests/servers.d/pgha.sh): node a, node b, and both in that order. */
#define HA_A "host=127.0.0.1 port=15533 dbname=leash user=leash password=" SRV_PG_PASSWORD
#define HA_B "host=127.0.0.1 port=15534 dbname=leash user=leash password=" SRV_PG_PASSWORD
#define HA_BOTH                                                                                    \
    "host=127.0.0.1,127.0.0.1 port=15533,15534 dbname=leash user=leash password=" SRV_PG_PASSWORD

/* Runs sql as the superuser over the unix socket of the server on port (SRV_PG_PORT, or a
 * pgha node); returns the first value (malloc'd, "" when there is none). Fails the test on an
 * error. */
char *su_at(int port, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define su(...) su_at(SRV_PG_PORT, __VA_ARGS__)
long su_long(const char *sql);
/* The first value of sql through h, as a malloc'd string; fails the test unless it worked. */
char *value(leash_handle *h, const char *sql);
long value_long(leash_handle *h, const char *sql);
/* Runs sql through h; fails the test unless it worked. */
void exec_ok(leash_handle *h, const char *sql);
/* leash_pg_pool_with, max_size and acquire_timeout_ms 5000; fails the test on failure. */
leash_pool *pool(const char *name, const char *conninfo, int max_size, const leash_pg_options *pg);
long backend_pid(leash_handle *h);
/* pg_terminate_backend(pid) on SRV_PG_PORT, then a pause so the socket is readable. */
void terminate(long pid);
/* Runs tests/servers.d/pgha.sh CMD NODE (crash, promote, readonly); returns its exit status. */
int pgha(const char *cmd, const char *node);

/* the tests, by file */
/* test-pg-input.c */
void test_bad_option_values(void **state);
void test_password_characters(void **state);
void test_password_in_parse_errors(void **state);
void test_password_characters_accepted(void **state);
void test_messages_name_the_pool(void **state);
void test_retarget(void **state);
/* test-pg-deadlines.c */
int teardown_resume(void **state);
void test_connect_to_paused_server(void **state);
void test_multi_host_skips_paused(void **state);
void test_statement_to_paused_backend(void **state);
void test_validation_of_paused_backend(void **state);
void test_release_cancel_to_paused_server(void **state);
void test_shutdown_joins_cancel_threads(void **state);
void test_tcp_defaults(void **state);

#endif

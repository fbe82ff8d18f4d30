/* Helpers shared by the PostgreSQL integration tests (test-pg*.c). */
#include "test-pg-util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

char *su_at(int port, const char *fmt, ...)
{
    char sql[1024], ci[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    snprintf(ci, sizeof ci, "host=%s port=%d dbname=leash user=postgres connect_timeout=5",
             srv_path(port == SRV_PG_PORT ? "pg" : "pgha"), port);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("superuser connect to %d: %s", port, PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    char *v = strdup(st == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    PQfinish(c);
    return v;
}

long su_long(const char *sql)
{
    char *v = su("%s", sql);
    long n = atol(v);
    free(v);
    return n;
}

char *value(leash_handle *h, const char *sql)
{
    LEASH_RESULT PGresult *r = leash_pg_exec(h, sql);
    if (!r)
        fail_msg("%s: %s", sql, leash_last_error());
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    return strdup(PQgetvalue(r, 0, 0));
}

long value_long(leash_handle *h, const char *sql)
{
    char *v = value(h, sql);
    long n = atol(v);
    free(v);
    return n;
}

void exec_ok(leash_handle *h, const char *sql)
{
    LEASH_RESULT PGresult *r = leash_pg_exec(h, sql);
    if (!r)
        fail_msg("%s: %s", sql, leash_last_error());
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
}

leash_pool *pool(const char *name, const char *conninfo, int max_size, const leash_pg_options *pg)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 5000};
    leash_pool *p = leash_pg_pool_with(name, conninfo, &o, pg);
    if (!p)
        fail_msg("pool %s: %s", name, leash_last_error());
    return p;
}

long backend_pid(leash_handle *h)
{
    return value_long(h, "SELECT pg_backend_pid()");
}

void terminate(long pid)
{
    char *v = su("SELECT pg_terminate_backend(%ld, 5000)", pid);
    assert_string_equal(v, "t");
    free(v);
    sleep_ms(20); /* idle long enough for the adapter to look at the socket */
}

int pgha(const char *cmd, const char *node)
{
    const char *sh = getenv("LEASH_SERVERS_SH");
    char script[4096];
    snprintf(script, sizeof script, "%s", sh && *sh ? sh : "tests/servers.sh");
    char *slash = strrchr(script, '/');
    snprintf(slash ? slash + 1 : script, sizeof script - (size_t)(slash ? slash + 1 - script : 0),
             "servers.d/pgha.sh");
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execlp("bash", "bash", script, cmd, node, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

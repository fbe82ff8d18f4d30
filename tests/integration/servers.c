/* Helpers for integration tests: server paths and control through tests/servers.sh. */
#include "servers.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

const char *srv_dir(void)
{
    const char *d = getenv("LEASH_SERVERS_DIR");
    return d && *d ? d : "/tmp/leash-servers";
}

const char *srv_path(const char *rel)
{
    static _Thread_local char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", srv_dir(), rel);
    return buf;
}

int srv_ctl(const char *action, const char *server)
{
    const char *sh = getenv("LEASH_SERVERS_SH");
    if (!sh || !*sh)
        sh = "tests/servers.sh";
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execlp("bash", "bash", sh, action, server, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int srv_signal(const char *pidfile_rel, int sig)
{
    FILE *f = fopen(srv_path(pidfile_rel), "r");
    if (!f)
        return -1;
    long pid = 0;
    int n = fscanf(f, "%ld", &pid);
    fclose(f);
    if (n != 1 || pid <= 0)
        return -1;
    return kill((pid_t)pid, sig);
}

/* Benchmark: recovery from a Redis Sentinel failover. 8 threads write (INCR) through a leash
 * Sentinel pool; SENTINEL FAILOVER is sent; the run reports the time from that command to
 * the first successful write on the new master (and to the moment every thread wrote
 * there), the failed writes, the longest single operation, and the writes that reached the
 * old master after the sentinels named the new one (writes a failover loses). When node and
 * npm are installed, the same scenario runs with ioredis's Sentinel client (installed into a
 * temporary folder, never into the repository), default options and failoverDetector, and
 * the rows are printed side by side. Each scenario starts from the initial topology
 * (tests/servers.sh start sentinel), and the run leaves it restored.
 * Usage: bench-sentinel [--no-node]   (from anywhere; LEASH_SERVERS_SH overrides the script) */
#include <leash/redis.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef LEASH_SOURCE_ROOT
#define LEASH_SOURCE_ROOT "."
#endif
#define THREADS 8
#define CAP_S 15.0 /* a client that has not recovered by then is reported as such */
#define NAME "leash-master"
#define DATA_PW "leash-ha-pw"
#define SENTINEL_PW "leash-sentinel-pw"
#define SENTINEL_PORT 16393
#define URL                                                                                        \
    "redis-sentinel://:" DATA_PW "@127.0.0.1:16393,127.0.0.1:16394,127.0.0.1:16395/0"              \
    "?sentinel_password=" SENTINEL_PW "&connect_timeout_ms=500&command_timeout_ms=1000#" NAME

typedef struct result {
    double first, all, sw, max_op; /* seconds after the failover command; -1: never */
    long failed, ok, old_after_switch;
    char error[200];
} result;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int restore(void)
{
    const char *sh = getenv("LEASH_SERVERS_SH");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "bash '%s' start sentinel",
             sh && *sh ? sh : LEASH_SOURCE_ROOT "/tests/servers.sh");
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- the sentinel, through plain hiredis ---- */

static redisContext *sentinel(void)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", SENTINEL_PORT, tv);
    if (!rc || rc->err)
        return NULL;
    redisSetTimeout(rc, tv);
    redisReply *r = redisCommand(rc, "AUTH %s", SENTINEL_PW);
    freeReplyObject(r);
    return rc;
}

static int master_port(redisContext *s)
{
    redisReply *r = redisCommand(s, "SENTINEL GET-MASTER-ADDR-BY-NAME %s", NAME);
    int p = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? atoi(r->element[1]->str) : -1;
    freeReplyObject(r);
    return p;
}

/* ---- leash ---- */

static leash_pool *pool;
static atomic_int stop;
static _Atomic double t_failover, t_switch;
static atomic_int new_port;

typedef struct writer {
    int id;
    long ok, failed, old_after_switch;
    double first_new, max_op;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    while (!atomic_load(&stop)) {
        double s = now_s();
        int port = -1;
        leash_handle *h = leash_acquire(pool);
        if (h) {
            redisReply *r = leash_redis_command(h, "INCR leash:bench:sentinel:%d", w->id);
            const char *peer = leash_redis_peer(h);
            const char *colon = peer ? strrchr(peer, ':') : NULL;
            if (r && r->type == REDIS_REPLY_INTEGER && colon)
                port = atoi(colon + 1);
            freeReplyObject(r);
            leash_release(&h);
        }
        double e = now_s();
        if (e - s > w->max_op)
            w->max_op = e - s;
        double f = atomic_load(&t_failover), sw = atomic_load(&t_switch);
        if (port < 0) {
            if (f > 0)
                w->failed++;
            sleep_ms(5);
            continue;
        }
        w->ok++;
        if (sw > 0 && s > sw && port != atomic_load(&new_port))
            w->old_after_switch++;
        if (f > 0 && port == atomic_load(&new_port) && !w->first_new)
            w->first_new = e;
    }
    return NULL;
}

/* LEASH_BENCH_LOG=1: leash's messages on stderr, timed from the failover command. */
static void log_timed(int level, const char *msg, void *arg)
{
    (void)arg;
    double f = atomic_load(&t_failover);
    fprintf(stderr, "[%+.4f s] %d %s\n", f > 0 ? now_s() - f : 0.0, level, msg);
}

static void run_leash(result *res)
{
    if (getenv("LEASH_BENCH_LOG"))
        leash_set_log(log_timed, NULL);
    memset(res, 0, sizeof *res);
    leash_pool_options o = {.max_size = THREADS, .acquire_timeout_ms = 1000};
    pool = leash_redis_pool("bench-sentinel", URL, &o);
    redisContext *s = sentinel();
    if (!pool || !s) {
        snprintf(res->error, sizeof res->error, "%s",
                 pool ? "cannot reach the sentinel" : leash_last_error());
        return;
    }
    int before = master_port(s);
    atomic_store(&stop, 0);
    atomic_store(&t_failover, 0);
    atomic_store(&t_switch, 0);
    atomic_store(&new_port, 0);
    pthread_t t[THREADS];
    writer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (writer){.id = i};
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    }
    sleep_ms(500);
    double t0 = now_s();
    atomic_store(&t_failover, t0);
    redisReply *r = redisCommand(s, "SENTINEL FAILOVER %s", NAME);
    freeReplyObject(r);
    for (;;) {
        int p = master_port(s);
        if (p > 0 && p != before) {
            atomic_store(&new_port, p);
            atomic_store(&t_switch, now_s());
            if (getenv("LEASH_BENCH_LOG"))
                log_timed(-1, "the test sees the switch", NULL);
            break;
        }
        if (now_s() - t0 > 10)
            break;
        sleep_ms(5);
    }
    for (;;) {
        int all = 1;
        for (int i = 0; i < THREADS; i++)
            all &= w[i].first_new > 0; /* a racy read of a double: only for stopping early */
        if (all || now_s() - t0 > CAP_S)
            break;
        sleep_ms(20);
    }
    sleep_ms(300);
    atomic_store(&stop, 1);
    res->first = res->all = -1;
    double first = 0, last = 0;
    int got = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        res->ok += w[i].ok;
        res->failed += w[i].failed;
        res->old_after_switch += w[i].old_after_switch;
        if (w[i].max_op > res->max_op)
            res->max_op = w[i].max_op;
        if (w[i].first_new > 0) {
            first = got++ == 0 || w[i].first_new < first ? w[i].first_new : first;
            last = w[i].first_new > last ? w[i].first_new : last;
        }
    }
    res->first = got ? first - t0 : -1;
    res->all = got == THREADS ? last - t0 : -1;
    res->sw = atomic_load(&t_switch) > 0 ? atomic_load(&t_switch) - t0 : -1;
    redisFree(s);
    leash_shutdown();
}

/* ---- ioredis ---- */

static int have(const char *tool)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", tool);
    return system(cmd) == 0;
}

/* Pulls a number out of the JSON line: key's value, or -1. */
static double json_num(const char *j, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(j, k);
    return p ? atof(p + strlen(k)) : -1;
}

static void run_ioredis(const char *modules, int detector, result *res)
{
    memset(res, 0, sizeof *res);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "NODE_PATH='%s' node '%s/tests/bench/bench-sentinel-ioredis.js' "
             "'{\"sentinels\":[{\"host\":\"127.0.0.1\",\"port\":16393},"
             "{\"host\":\"127.0.0.1\",\"port\":16394},{\"host\":\"127.0.0.1\",\"port\":16395}],"
             "\"name\":\"" NAME "\",\"password\":\"" DATA_PW
             "\",\"sentinelPassword\":\"" SENTINEL_PW
             "\",\"threads\":%d,\"capMs\":%d,\"failoverDetector\":%s}' 2>/dev/null",
             modules, LEASH_SOURCE_ROOT, THREADS, (int)(CAP_S * 1000), detector ? "true" : "false");
    FILE *f = popen(cmd, "r");
    char line[4096] = "";
    if (!f || !fgets(line, sizeof line, f))
        snprintf(res->error, sizeof res->error, "no output from node");
    if (f)
        pclose(f);
    if (strstr(line, "\"error\"")) {
        snprintf(res->error, sizeof res->error, "%.190s", line);
        return;
    }
    res->first = json_num(line, "first");
    res->all = json_num(line, "firstAll");
    res->sw = json_num(line, "switch");
    res->max_op = json_num(line, "maxOp");
    res->failed = (long)json_num(line, "failed");
    res->ok = (long)json_num(line, "ok");
    res->old_after_switch = (long)json_num(line, "oldAfterSwitch");
}

/* ---- report ---- */

static void secs(char *out, size_t len, double v)
{
    if (v < 0)
        snprintf(out, len, "> %.0f s", CAP_S);
    else
        snprintf(out, len, "%.3f s", v);
}

/* "T s (+R)": from the failover command, and from the switch (the client's own reaction). */
static void since(char *out, size_t len, double v, double sw)
{
    if (v < 0)
        snprintf(out, len, "> %.0f s", CAP_S);
    else if (sw >= 0)
        snprintf(out, len, "%.3f s (+%.3f)", v, v - sw);
    else
        snprintf(out, len, "%.3f s", v);
}

static void row(const char *name, const result *r)
{
    if (r->error[0]) {
        printf("%-28s  failed to run: %s\n", name, r->error);
        return;
    }
    char a[24], b[40], c[40], d[24];
    secs(a, sizeof a, r->sw);
    since(b, sizeof b, r->first, r->sw);
    since(c, sizeof c, r->all, r->sw);
    snprintf(d, sizeof d, "%.3f s", r->max_op);
    printf("%-28s  %8s  %20s  %20s  %6ld  %10s  %12ld  %7ld\n", name, a, b, c, r->failed, d,
           r->old_after_switch, r->ok);
}

int main(int argc, char **argv)
{
    int node = !(argc > 1 && strcmp(argv[1], "--no-node") == 0) && have("node") && have("npm");
    if (restore() != 0) {
        fprintf(stderr, "bench-sentinel: the Sentinel topology did not start "
                        "(tests/servers.sh start sentinel)\n");
        return 1;
    }
    result leash, io_default, io_detector;
    run_leash(&leash);
    char dir[] = "/tmp/leash-ioredis-XXXXXX";
    char modules[256] = "";
    int installed = 0;
    if (node && mkdtemp(dir)) {
        char cmd[512];
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && npm install --silent --no-audit --no-fund --no-save ioredis "
                 ">/dev/null 2>&1",
                 dir);
        installed = system(cmd) == 0;
        snprintf(modules, sizeof modules, "%s/node_modules", dir);
    }
    if (installed) {
        restore();
        run_ioredis(modules, 0, &io_default);
        restore();
        run_ioredis(modules, 1, &io_detector);
    }
    restore();
    if (dir[strlen(dir) - 1] != 'X') {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench-sentinel: could not remove %s\n", dir);
    }

    printf("Sentinel failover, %d threads writing (INCR), SENTINEL FAILOVER at t=0; times from "
           "that command\n",
           THREADS);
    printf("%-28s  %8s  %20s  %20s  %6s  %10s  %12s  %7s\n", "client", "switch",
           "first on new (+sw)", "all on new (+sw)", "failed", "longest op", "old after sw",
           "writes");
    row("leash", &leash);
    if (installed) {
        row("ioredis (default options)", &io_default);
        row("ioredis (failoverDetector)", &io_detector);
    } else {
        printf("(ioredis: not run: %s)\n",
               node ? "npm install ioredis failed" : "node/npm not installed or --no-node");
    }
    printf("switch: the sentinel names the new master (its own timing varies from run to run: "
           "compare the +sw reactions); first/all on new: the first write, and the last "
           "thread's first write, on the new master; old after sw: writes that reached the old "
           "master after the switch (lost when it becomes a replica)\n");
    const result *io[2] = {&io_default, &io_detector};
    for (int i = 0; installed && i < 2; i++)
        if (leash.all >= 0 && leash.sw >= 0 && io[i]->all >= 0 && io[i]->sw >= 0 &&
            io[i]->all - io[i]->sw > 0)
            printf("all threads on the new master after the switch: leash %.4f s, ioredis (%s) "
                   "%.4f s (%.0fx leash's)\n",
                   leash.all - leash.sw, i ? "failoverDetector" : "default", io[i]->all - io[i]->sw,
                   (io[i]->all - io[i]->sw) /
                       (leash.all - leash.sw > 1e-4 ? leash.all - leash.sw : 1e-4));
    return leash.error[0] ? 1 : 0;
}

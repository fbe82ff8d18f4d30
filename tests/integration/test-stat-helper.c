/* A small backend for test-stat: a Redis pool on the real test server (with a password in
 * its URL) and a pool of its own adapter, handles held at a known borrow site, a worker
 * thread running commands. It links the installed-style libleash like any user program and
 * is driven by one-word commands on stdin, answering each with one line on stdout:
 *   hold N     borrow N more handles from "jobs" at hold_site()    -> "held N"
 *   release    give every held handle back                         -> "released"
 *   work 0|1   stop / start the worker thread                      -> "work 0|1"
 *   dump PATH  leash_stats_dump(TEXT) into PATH                    -> "dumped"
 *   shutdown   leash_shutdown()                                    -> "shut down"
 *   exit       exit(0) without leash_shutdown (the atexit path)
 *   _exit      _exit(0): no exit handlers run, the page stays behind
 * At start it prints "ready PID" once its stats page exists. */
#include <leash/leash.h>
#include <leash/redis.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REDIS_URL "redis://:leash-redis-pw@127.0.0.1:16380/2"
#define MAX_HELD 64

static leash_pool *jobs, *cache;
static leash_handle *held[MAX_HELD];
static int nheld;
static _Atomic int working, stop_worker;
static pthread_t worker;

static void *mem_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    (void)ctx, (void)target, (void)err, (void)errlen;
    return malloc(16);
}

static void mem_destroy(void *ctx, void *conn)
{
    (void)ctx;
    free(conn);
}

static const leash_adapter mem_adapter = {
    .kind = "mem",
    .connect = mem_connect,
    .destroy = mem_destroy,
};

/* The borrow site test-stat looks for in leash-stat's output. */
static leash_handle *hold_site(void)
{
    return leash_acquire(jobs);
}

static void *work(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_worker)) {
        leash_handle *h = leash_acquire(cache);
        if (h) {
            redisReply *r = leash_redis_command(h, "INCR leash-stat-helper");
            if (r)
                freeReplyObject(r);
            leash_release(&h);
        }
        leash_handle *j = leash_acquire(jobs);
        leash_release(&j);
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void set_work(int on)
{
    if (on && !atomic_load(&working)) {
        atomic_store(&stop_worker, 0);
        if (pthread_create(&worker, NULL, work, NULL) == 0)
            atomic_store(&working, 1);
    } else if (!on && atomic_load(&working)) {
        atomic_store(&stop_worker, 1);
        pthread_join(worker, NULL);
        atomic_store(&working, 0);
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    leash_pool_options o = {.max_size = 16};
    jobs = leash_pool_open("jobs", &mem_adapter, "mem://jobs", &o);
    cache = leash_redis_pool("cache", REDIS_URL, NULL);
    if (!jobs || !cache) {
        fprintf(stderr, "helper: cannot open the pools: %s\n", leash_last_error());
        return 3;
    }
    /* one real round trip, so the Redis pool has a connection to show */
    leash_handle *h = leash_acquire(cache);
    redisReply *r = h ? leash_redis_command(h, "PING") : NULL;
    if (!r) {
        fprintf(stderr, "helper: redis: %s\n", leash_last_error());
        return 3;
    }
    freeReplyObject(r);
    leash_release(&h);

    char page[64];
    snprintf(page, sizeof page, "/dev/shm/leash.%d", (int)getpid());
    for (int i = 0; i < 500 && access(page, F_OK) != 0; i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    printf("ready %d\n", (int)getpid());

    char line[512];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        int n;
        char path[400];
        if (sscanf(line, "hold %d", &n) == 1) {
            for (int i = 0; i < n && nheld < MAX_HELD; i++) {
                leash_handle *x = hold_site();
                if (!x)
                    break;
                held[nheld++] = x;
            }
            printf("held %d\n", nheld);
        } else if (!strcmp(line, "release")) {
            while (nheld)
                leash_release(&held[--nheld]);
            printf("released\n");
        } else if (sscanf(line, "work %d", &n) == 1) {
            set_work(n);
            printf("work %d\n", n);
        } else if (sscanf(line, "dump %399s", path) == 1) {
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            leash_stats_dump(fd, LEASH_FORMAT_TEXT);
            close(fd);
            printf("dumped\n");
        } else if (!strcmp(line, "shutdown")) {
            set_work(0);
            while (nheld)
                leash_release(&held[--nheld]);
            leash_shutdown();
            printf("shut down\n");
        } else if (!strcmp(line, "exit")) {
            set_work(0);
            exit(0);
        } else if (!strcmp(line, "_exit")) {
            _exit(0);
        } else {
            printf("unknown command: %s\n", line);
        }
    }
    set_work(0);
    return 0;
}

/* The plumbing the example worker services share: flags, pools, workers, signals, summary. */
#ifndef ORDERS_SERVICE_H
#define ORDERS_SERVICE_H

#include <leash/http.h>
#include <leash/leash.h>
#include <leash/pg.h>
#include <leash/redis.h>

#include <stdatomic.h>

/* What one job ended as; the service counts each. */
enum job_result {
    JOB_PRICED,   /* priced, written back and cached */
    JOB_REJECTED, /* a bad order (unknown product, bad quantity): marked rejected */
    JOB_SKIPPED,  /* nothing to do (already priced, or no such order) */
    JOB_RETRY,    /* a transient failure (no handle in time, a server went away): queued again */
    JOB_FAILED    /* a failure that retrying will not fix */
};
#define JOB_RESULTS 5

struct service {
    /* flags */
    const char *prog;                          /* program name, for messages */
    int workers;                               /* worker threads */
    const char *redis_url, *pg_url, *http_url; /* server addresses */
    int redis_size, pg_size, http_size;        /* pool max sizes */
    const char *queue;                         /* Redis list the job ids come from */
    int drain;                                 /* stop once the queue stays empty */
    int progress;                              /* a progress line every second */
    int dump_every;      /* seconds between stats dumps (0: on SIGUSR1 only) */
    const char *metrics; /* Prometheus text file, rewritten every second */
    long jobs;           /* seed only: how many orders */
    int quiet;           /* no start-up banner */
    /* pools, opened once at start-up by service_open */
    leash_pool *redis, *pg, *http;
    /* counters, one per enum job_result */
    atomic_ulong counts[JOB_RESULTS];
    /* set by service_run just before the pools close */
    unsigned long leaks; /* leaks counted by every pool (reclaimed + suspected + at close) */
};

/* The job a worker runs for each id popped from the queue. */
typedef enum job_result (*job_fn)(struct service *svc, long id);

/* Parses the command line into svc (defaults point at the tests/servers.sh servers).
 * extra_usage is printed under --help. Returns 0, or exits on --help and bad flags. */
int service_flags(struct service *svc, int argc, char **argv, const char *about);
/* Initialises leash (SIGUSR1 dumps the stats) and opens the three pools. Returns 0, or -1
 * after printing why. */
int service_open(struct service *svc);
/* Starts svc->workers threads that pop job ids and run job on each, until SIGINT or
 * SIGTERM (or, with --drain, until the queue stays empty). Then prints the summary, the
 * leak report, closes the pools and shuts leash down. Returns the process exit status:
 * 0 when no handle was left outstanding and no job failed. */
int service_run(struct service *svc, job_fn job);

/* Queues id again at the tail, so another worker retries it. Returns 0 or -1. */
int service_requeue(struct service *svc, long id);
/* Prints "prog: message" to stderr, one line. */
void service_warn(const struct service *svc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* ORDERS_SERVICE_H */

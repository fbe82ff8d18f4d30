/* The plumbing the example worker services share: flags, pools, workers, the retry policy,
 * signals, the timeline and the summary. */
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
    JOB_SKIPPED,  /* nothing to do (a duplicate of a job done already, or no such order) */
    JOB_RETRY,    /* a transient failure (no handle in time, a server went away or changed
                     role): the worker runs the job again after a pause */
    JOB_FAILED    /* a failure that retrying will not fix */
};
#define JOB_RESULTS 5

/* The pools, for the per-pool failure counts and the timeline. */
enum service_pool { POOL_REDIS, POOL_PG, POOL_PG_READ, POOL_HTTP };
#define SERVICE_POOLS 4

struct service {
    /* flags */
    const char *prog;                          /* program name, for messages */
    int workers;                               /* worker threads */
    const char *redis_url, *pg_url, *http_url; /* server addresses */
    const char *pg_read_url;            /* reads that may go to a standby (NULL: the pg pool) */
    int redis_size, pg_size, http_size; /* pool max sizes */
    const char *queue;                  /* Redis list the job ids come from */
    int drain;                          /* stop once the queue stays empty */
    int progress;                       /* a progress line every second */
    int dump_every;                     /* seconds between stats dumps (0: on SIGUSR1 only) */
    const char *metrics;                /* Prometheus text file, rewritten every second */
    const char *timeline; /* CSV file: one row per 100 ms, and one per server change */
    double rate;          /* jobs start at most this many per second (0: no limit) */
    int retry_ms;         /* how long a job is retried before it is queued again */
    long jobs;            /* seed only: how many orders */
    int quiet;            /* no start-up banner */
    /* set by the program before service_run: with --drain, called when the queue is empty
     * and no job is in flight; it queues again the jobs the system of record says are not
     * done and returns how many (0: the service may stop), or -1 on a failure. It may also
     * repair what a failover lost (a cache write that went to a demoted master). */
    long (*sweep)(struct service *svc);
    atomic_ulong swept, repaired; /* the sweep's counts: jobs queued again, writes redone */
    /* pools, opened once at start-up by service_open; pg_read is pg without --pg-read */
    leash_pool *redis, *pg, *pg_read, *http;
    /* counters, one per enum job_result; JOB_RETRY counts the jobs that needed a retry */
    atomic_ulong counts[JOB_RESULTS];
    atomic_ulong retries;                 /* attempts run again, all jobs */
    atomic_ulong failures[SERVICE_POOLS]; /* requests that failed, per pool */
    /* set by service_run just before the pools close */
    unsigned long leaks; /* leaks counted by every pool (reclaimed + suspected + at close) */
};

/* The job a worker runs for each id popped from the queue, and again after a pause while
 * it returns JOB_RETRY. Running it again must be harmless (idempotent writes). */
typedef enum job_result (*job_fn)(struct service *svc, long id);

/* Parses the command line into svc (defaults point at the tests/servers.sh servers).
 * about is printed under --help. Returns 0, or exits on --help and bad flags. */
int service_flags(struct service *svc, int argc, char **argv, const char *about);
/* Initialises leash (SIGUSR1 dumps the stats) and opens the pools. Returns 0, or -1 after
 * printing why. */
int service_open(struct service *svc);
/* Starts svc->workers threads that pop job ids and run job on each, until SIGINT or
 * SIGTERM (or, with --drain, until the queue stays empty). Then prints the summary, the
 * leak report, closes the pools and shuts leash down. Returns the process exit status:
 * 0 when no handle was left outstanding and no job failed. */
int service_run(struct service *svc, job_fn job);

/* Queues id again at the tail, so another worker retries it. Returns 0 or -1. */
int service_requeue(struct service *svc, long id);
/* Prints "prog: message" to stderr, one line; at most 20 lines a second (the others are
 * counted and said once). */
void service_warn(const struct service *svc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The retry policy's view of a failure: 1 when the request may well work if run again
 * (the server went away, restarted, changed role or did not answer in time: what a
 * failover looks like), 0 when it will fail the same way. */
int service_transient(leash_status st);
/* The same for an error result of PostgreSQL: SQLSTATE class 08 (connection), 25006 (a
 * read-only transaction: the server is a standby now), 40001/40P01 (serialization,
 * deadlock), 57P01-57P03 (shut down, crashed, starting up). */
int service_transient_pg(const PGresult *res);
/* The same for a Redis error reply: -READONLY (a replica now), -LOADING, -MASTERDOWN,
 * -TRYAGAIN. */
int service_transient_redis(const redisReply *r);

/* Counts a failed request on pool (the summary, the timeline and the metrics show them). */
void service_failed(struct service *svc, enum service_pool pool);
/* A request on pool succeeded on server peer ("host:port"): when that is not the server
 * the pool's last success was on, the timeline gets an event row saying so. */
void service_served(struct service *svc, enum service_pool pool, const char *peer);
/* A name for the job the calling worker runs, the same for each attempt of one popped job
 * and different for a duplicate of it ("prog:pid:serial"), so a job can tell its own
 * earlier write from someone else's. */
const char *service_job_token(void);

#endif /* ORDERS_SERVICE_H */

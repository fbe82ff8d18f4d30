/* The plumbing the example worker services share: flags, pools, workers, the retry policy,
 * signals, the timeline and the summary. */
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The servers tests/servers.sh starts on loopback. */
#define DEFAULT_REDIS "redis://127.0.0.1:16379"
#define DEFAULT_PG "postgresql://leash:leash-pg-pw@127.0.0.1:15432/leash"
#define DEFAULT_HTTP "http://127.0.0.1:18080"

#define POP_TIMEOUT_S 1      /* BRPOP timeout: how long a stop request can wait for a worker */
#define RETRY_FIRST_MS 25    /* the first pause before a job runs again */
#define RETRY_MAX_MS 400     /* the pause doubles up to this */
#define RETRY_FOR_MS 30000   /* default --retry-for: then the job is queued again */
#define WARN_PER_SECOND 20   /* service_warn's limit */
#define TICK_NS 100000000ull /* the main loop's period, and the timeline's */

static const char *const result_names[JOB_RESULTS] = {"priced", "rejected", "skipped", "retried",
                                                      "failed"};
static const char *const pool_names[SERVICE_POOLS] = {"redis", "pg", "pg-read", "pricing"};

static atomic_int stopping;     /* set by SIGINT/SIGTERM, or by a worker in --drain mode */
static atomic_int in_flight;    /* jobs popped and not finished (retries included) */
static atomic_ulong job_serial; /* numbers the popped jobs, for service_job_token */
static atomic_ulong tickets;    /* --rate: the next job's place in the schedule */
static atomic_ulong sweeps;     /* --drain: sweeps done (an empty pop from before one
                                   does not count) */
static pthread_mutex_t sweep_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long start_ns; /* when service_run started the workers */
static atomic_ullong first_job_ns;  /* when the first job was popped */
static atomic_ullong last_job_ns;   /* when the latest job finished */
static _Thread_local char job_token[64];
static _Thread_local unsigned int jitter_seed;

/* The timeline (--timeline): rows from the main thread every 100 ms, events from workers. */
static pthread_mutex_t timeline_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *timeline;
static atomic_ullong served_hash[SERVICE_POOLS]; /* of the peer of each pool's last success */
static char served_peer[SERVICE_POOLS][64];      /* under timeline_lock */

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static long long unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec pause = {ms / 1000, ms % 1000 * 1000000L};
    while (nanosleep(&pause, &pause) < 0 && errno == EINTR)
        ;
}

/* ms scaled by a random factor in [0.5, 1]: workers that failed together do not all come
 * back at the same moment. */
static long jittered(long ms)
{
    if (!jitter_seed)
        jitter_seed = (unsigned int)(now_ns() ^ (unsigned long long)pthread_self());
    return ms / 2 + (long)(rand_r(&jitter_seed) % (unsigned int)(ms / 2 + 1));
}

void service_warn(const struct service *svc, const char *fmt, ...)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static long long second;
    static int said;
    static unsigned long held_back;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    line[strcspn(line, "\n")] = '\0'; /* one line: PostgreSQL's messages go on for three */

    long long now = unix_ms() / 1000;
    pthread_mutex_lock(&lock);
    if (now != second) {
        if (held_back)
            fprintf(stderr, "%s: (%lu more warnings in that second not shown)\n", svc->prog,
                    held_back);
        second = now;
        said = 0;
        held_back = 0;
    }
    if (said++ < WARN_PER_SECOND)
        fprintf(stderr, "%s: %s\n", svc->prog, line);
    else
        held_back++;
    pthread_mutex_unlock(&lock);
}

static void usage(const struct service *svc, const char *about, FILE *out)
{
    fprintf(out,
            "usage: %s [options]\n%s\n"
            "  -w, --workers N       worker threads (default 8)\n"
            "      --redis URL       Redis server, or redis-sentinel://... for the master a\n"
            "                        Sentinel set names (default " DEFAULT_REDIS ")\n"
            "      --pg CONNINFO     PostgreSQL conninfo or URI for the writes (default: the\n"
            "                        test server, role leash on 127.0.0.1:15432, database\n"
            "                        leash); for a primary and standby name both hosts with\n"
            "                        target_session_attrs=read-write\n"
            "      --pg-read CONNINFO  a second pool for the reads that may go to a standby\n"
            "                        (e.g. target_session_attrs=prefer-standby; default: the\n"
            "                        --pg pool)\n"
            "      --http URL        pricing service base URL (default " DEFAULT_HTTP ")\n"
            "      --redis-pool N    Redis pool size (default: one per worker)\n"
            "      --pg-pool N       PostgreSQL pool sizes (default 4)\n"
            "      --http-pool N     HTTP pool size (default 4)\n"
            "      --queue KEY       Redis list of job ids (default orders:jobs)\n"
            "  -n, --jobs N          orders to seed (orders-seed only; default 1000)\n"
            "      --drain           stop once the queue stays empty and no job is left to do\n"
            "      --rate N          start at most N jobs a second, on a fixed schedule (jobs\n"
            "                        \"arrive\" at that rate; a backlog is worked off at full\n"
            "                        speed); default: as fast as the workers go\n"
            "      --retry-for MS    retry a job that failed transiently for MS milliseconds,\n"
            "                        then queue it again (default 30000)\n"
            "      --progress        print a progress line every second\n"
            "      --dump-every S    dump the pool stats every S seconds (SIGUSR1 always does)\n"
            "      --metrics FILE    keep FILE up to date with Prometheus metrics\n"
            "      --timeline FILE   write a CSV row every 100 ms (jobs done, retries, failed\n"
            "                        requests per pool) and one when a pool's server changes\n"
            "  -q, --quiet           no start-up banner\n"
            "Stop with SIGINT or SIGTERM; SIGUSR1 dumps the pool stats to stderr.\n",
            svc->prog, about);
}

static int parse_count(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int service_flags(struct service *svc, int argc, char **argv, const char *about)
{
    enum {
        O_REDIS = 256,
        O_PG,
        O_PG_READ,
        O_HTTP,
        O_RPOOL,
        O_PPOOL,
        O_HPOOL,
        O_QUEUE,
        O_DRAIN,
        O_RATE,
        O_RETRY,
        O_PROGRESS,
        O_DUMP,
        O_METRICS,
        O_TIMELINE
    };
    static const struct option longopts[] = {
        {"workers", required_argument, NULL, 'w'},
        {"redis", required_argument, NULL, O_REDIS},
        {"pg", required_argument, NULL, O_PG},
        {"pg-read", required_argument, NULL, O_PG_READ},
        {"http", required_argument, NULL, O_HTTP},
        {"redis-pool", required_argument, NULL, O_RPOOL},
        {"pg-pool", required_argument, NULL, O_PPOOL},
        {"http-pool", required_argument, NULL, O_HPOOL},
        {"queue", required_argument, NULL, O_QUEUE},
        {"jobs", required_argument, NULL, 'n'},
        {"drain", no_argument, NULL, O_DRAIN},
        {"rate", required_argument, NULL, O_RATE},
        {"retry-for", required_argument, NULL, O_RETRY},
        {"progress", no_argument, NULL, O_PROGRESS},
        {"dump-every", required_argument, NULL, O_DUMP},
        {"metrics", required_argument, NULL, O_METRICS},
        {"timeline", required_argument, NULL, O_TIMELINE},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *slash = strrchr(argv[0], '/');
    svc->prog = slash ? slash + 1 : argv[0];
    svc->workers = 8;
    svc->redis_url = DEFAULT_REDIS;
    svc->pg_url = DEFAULT_PG;
    svc->http_url = DEFAULT_HTTP;
    svc->pg_size = 4;
    svc->http_size = 4;
    svc->queue = "orders:jobs";
    svc->retry_ms = RETRY_FOR_MS;
    svc->jobs = 1000;

    for (;;) {
        int c = getopt_long(argc, argv, "w:n:qh", longopts, NULL);
        if (c == -1)
            break;
        long v = 0;
        switch (c) {
        case 'w':
        case O_RPOOL:
        case O_PPOOL:
        case O_HPOOL:
        case O_DUMP:
            if (parse_count(optarg, c == O_DUMP ? 0 : 1, 1000, &v) < 0) {
                service_warn(svc, "bad number '%s'", optarg);
                exit(2);
            }
            if (c == 'w')
                svc->workers = (int)v;
            else if (c == O_RPOOL)
                svc->redis_size = (int)v;
            else if (c == O_PPOOL)
                svc->pg_size = (int)v;
            else if (c == O_HPOOL)
                svc->http_size = (int)v;
            else
                svc->dump_every = (int)v;
            break;
        case O_RATE:
        case O_RETRY:
            if (parse_count(optarg, c == O_RATE ? 1 : 0, 100000000, &v) < 0) {
                service_warn(svc, "bad number '%s'", optarg);
                exit(2);
            }
            if (c == O_RATE)
                svc->rate = (double)v;
            else
                svc->retry_ms = (int)v;
            break;
        case 'n':
            if (parse_count(optarg, 1, 100000000, &svc->jobs) < 0) {
                service_warn(svc, "bad job count '%s'", optarg);
                exit(2);
            }
            break;
        case O_REDIS:
            svc->redis_url = optarg;
            break;
        case O_PG:
            svc->pg_url = optarg;
            break;
        case O_PG_READ:
            svc->pg_read_url = optarg;
            break;
        case O_HTTP:
            svc->http_url = optarg;
            break;
        case O_QUEUE:
            svc->queue = optarg;
            break;
        case O_DRAIN:
            svc->drain = 1;
            break;
        case O_PROGRESS:
            svc->progress = 1;
            break;
        case O_METRICS:
            svc->metrics = optarg;
            break;
        case O_TIMELINE:
            svc->timeline = optarg;
            break;
        case 'q':
            svc->quiet = 1;
            break;
        case 'h':
            usage(svc, about, stdout);
            exit(0);
        default:
            usage(svc, about, stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        service_warn(svc, "unexpected argument '%s' (see --help)", argv[optind]);
        exit(2);
    }
    if (!svc->redis_size)
        svc->redis_size = svc->workers; /* each worker blocks in BRPOP on its own connection */
    return 0;
}

int service_open(struct service *svc)
{
    /* The stats dump on SIGUSR1; strict mode stays as LEASH_STRICT says. */
    leash_config cfg = LEASH_CONFIG_DEFAULT;
    cfg.stats_signal = SIGUSR1;
    if (leash_init(&cfg) != LEASH_OK && leash_last_status() != LEASH_EEXIST) {
        service_warn(svc, "leash_init: %s", leash_last_error());
        return -1;
    }

    /* A job borrows one Redis handle at a time, so a pool as big as the worker count never
     * makes a worker wait; BRPOP blocks for POP_TIMEOUT_S, so allow longer than that. */
    leash_pool_options redis_opts = {
        .max_size = svc->redis_size, .acquire_timeout_ms = 3000, .leak_threshold_ms = 10000};
    /* Workers share fewer PostgreSQL connections than there are workers: they queue in
     * arrival order and the stats show how long they waited. */
    leash_pool_options pg_opts = {
        .max_size = svc->pg_size, .acquire_timeout_ms = 2000, .leak_threshold_ms = 5000};
    leash_pg_options pg_extra = {.init_sql = "SET search_path TO shop",
                                 .application_name = svc->prog};
    leash_pool_options http_opts = {.max_size = svc->http_size, .acquire_timeout_ms = 2000};
    leash_http_options http_extra = {.connect_timeout_ms = 2000, .timeout_ms = 5000};

    svc->redis = leash_redis_pool("redis", svc->redis_url, &redis_opts);
    if (!svc->redis) {
        service_warn(svc, "--redis: %s", leash_last_error());
        return -1;
    }
    svc->pg = leash_pg_pool_with("pg", svc->pg_url, &pg_opts, &pg_extra);
    if (!svc->pg) {
        service_warn(svc, "--pg: %s", leash_last_error());
        return -1;
    }
    svc->pg_read = svc->pg;
    if (svc->pg_read_url) {
        svc->pg_read = leash_pg_pool_with("pg-read", svc->pg_read_url, &pg_opts, &pg_extra);
        if (!svc->pg_read) {
            service_warn(svc, "--pg-read: %s", leash_last_error());
            return -1;
        }
    }
    svc->http = leash_http_pool_with("pricing", svc->http_url, &http_opts, &http_extra);
    if (!svc->http) {
        service_warn(svc, "--http: %s", leash_last_error());
        return -1;
    }
    return 0;
}

/* ---- the retry policy's classification of failures ---- */

int service_transient(leash_status st)
{
    switch (st) {
    case LEASH_ETIMEDOUT: /* no handle in time, or the server did not answer in time */
    case LEASH_EBUSY:     /* too many waiters: the pool is saturated for now */
    case LEASH_ECONNECT:  /* the server is down (or the pool says so, failing fast) */
    case LEASH_EIO:       /* the connection failed under the request */
        return 1;
    default: /* bad arguments, a closed pool, out of memory: the same again next time */
        return 0;
    }
}

int service_transient_pg(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!state)
        return res == NULL || PQresultStatus(res) == PGRES_FATAL_ERROR;
    static const char *const again[] = {"25006", "40001", "40P01", "57P01", "57P02", "57P03"};
    if (strncmp(state, "08", 2) == 0)
        return 1;
    for (size_t i = 0; i < sizeof again / sizeof again[0]; i++)
        if (strcmp(state, again[i]) == 0)
            return 1;
    return 0;
}

int service_transient_redis(const redisReply *r)
{
    static const char *const again[] = {"READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN"};
    if (!r)
        return 1;
    if (r->type != REDIS_REPLY_ERROR || !r->str)
        return 0;
    for (size_t i = 0; i < sizeof again / sizeof again[0]; i++)
        if (strncmp(r->str, again[i], strlen(again[i])) == 0)
            return 1;
    return 0;
}

void service_failed(struct service *svc, enum service_pool pool)
{
    atomic_fetch_add(&svc->failures[pool], 1);
}

/* FNV-1a, to tell whether a peer is the one seen last without taking the lock. */
static unsigned long long peer_hash(const char *s)
{
    unsigned long long h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h | 1; /* never 0: 0 means "nothing served yet" */
}

void service_served(struct service *svc, enum service_pool pool, const char *peer)
{
    if (!peer || !*peer)
        return;
    unsigned long long h = peer_hash(peer);
    if (atomic_load(&served_hash[pool]) == h)
        return;
    pthread_mutex_lock(&timeline_lock);
    if (atomic_load(&served_hash[pool]) != h) {
        char was[64];
        snprintf(was, sizeof was, "%s", served_peer[pool]);
        snprintf(served_peer[pool], sizeof served_peer[pool], "%s", peer);
        atomic_store(&served_hash[pool], h);
        if (timeline) {
            /* No comma in the event: it is the last column. */
            if (was[0])
                fprintf(timeline, "%lld,,,,,,,%s now on %s (was %s)\n", unix_ms(), pool_names[pool],
                        served_peer[pool], was);
            else
                fprintf(timeline, "%lld,,,,,,,%s on %s\n", unix_ms(), pool_names[pool],
                        served_peer[pool]);
            fflush(timeline);
        }
        if (was[0])
            service_warn(svc, "%s: now served by %s (was %s)", pool_names[pool], served_peer[pool],
                         was);
    }
    pthread_mutex_unlock(&timeline_lock);
}

const char *service_job_token(void)
{
    return job_token;
}

/* ---- the queue ---- */

int service_requeue(struct service *svc, long id)
{
    LEASH_AUTO leash_handle *h = leash_acquire(svc->redis);
    if (!h) {
        service_failed(svc, POOL_REDIS);
        return -1;
    }
    LEASH_REPLY redisReply *r = leash_redis_command(h, "LPUSH %s %ld", svc->queue, id);
    if (r && r->type == REDIS_REPLY_INTEGER)
        return 0;
    service_failed(svc, POOL_REDIS);
    return -1;
}

/* Pops one job id: 1 with *id set, 0 when the queue stayed empty, -1 on a failure (said
 * on stderr when say is set). */
static int pop_job(struct service *svc, long *id, int say)
{
    LEASH_AUTO leash_handle *h = leash_acquire(svc->redis);
    if (!h) {
        service_failed(svc, POOL_REDIS);
        if (say)
            service_warn(svc, "redis: %s", leash_last_error());
        return -1;
    }
    LEASH_REPLY redisReply *r = leash_redis_command(h, "BRPOP %s %d", svc->queue, POP_TIMEOUT_S);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        service_failed(svc, POOL_REDIS);
        if (say)
            service_warn(svc, "redis BRPOP: %s", r ? r->str : leash_last_error());
        return -1;
    }
    if (r->type == REDIS_REPLY_NIL)
        return 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        service_warn(svc, "redis BRPOP: unexpected reply (is '%s' a list?)", svc->queue);
        return -1;
    }
    char *end = NULL;
    *id = strtol(r->element[1]->str, &end, 10);
    if (end == r->element[1]->str || *end) {
        service_warn(svc, "dropping malformed job id '%s'", r->element[1]->str);
        return -1;
    }
    return 1;
}

/* --rate: waits for this worker's next place in the schedule (start + k / rate). */
static void wait_for_schedule(struct service *svc)
{
    if (svc->rate <= 0)
        return;
    unsigned long k = atomic_fetch_add(&tickets, 1);
    unsigned long long due = start_ns + (unsigned long long)((double)k * 1e9 / svc->rate);
    struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* The retry policy: runs job on id, and again after a pause (25 ms doubling to 400 ms,
 * jittered) while it fails transiently, for up to --retry-for; then, or when the service
 * is stopping, the job goes back on the queue. The library never retries a statement: only
 * the application knows that running this job twice is harmless. */
static enum job_result run_job(struct service *svc, job_fn job, long id)
{
    unsigned long long t0 = now_ns();
    enum job_result res = job(svc, id);
    long pause = RETRY_FIRST_MS;
    for (int attempt = 1; res == JOB_RETRY; attempt++) {
        if (atomic_load(&stopping) ||
            now_ns() - t0 >= (unsigned long long)svc->retry_ms * 1000000ull)
            break;
        if (attempt == 1)
            atomic_fetch_add(&svc->counts[JOB_RETRY], 1);
        atomic_fetch_add(&svc->retries, 1);
        sleep_ms(jittered(pause));
        pause = pause * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : pause * 2;
        res = job(svc, id);
    }
    if (res != JOB_RETRY)
        return res;
    if (service_requeue(svc, id) < 0) {
        service_warn(svc, "job %ld: could not queue it again: %s", id, leash_last_error());
        return JOB_FAILED;
    }
    if (!atomic_load(&stopping))
        service_warn(svc, "job %ld: still failing after %d ms; queued again", id, svc->retry_ms);
    return JOB_RETRY; /* not finished here: counted when it is */
}

struct worker_arg {
    struct service *svc;
    job_fn job;
};

/* --drain: the queue was empty for a pop that started when sweeps_before sweeps were done.
 * Stops the service when no job is in flight and the sweep (if any) finds nothing left to
 * do. One sweep at a time, and a pop that started before the last sweep tells nothing. */
static void queue_empty(struct service *svc, unsigned long sweeps_before)
{
    if (!svc->drain || atomic_load(&in_flight) > 0)
        return;
    if (pthread_mutex_trylock(&sweep_lock) != 0)
        return;
    if (atomic_load(&sweeps) == sweeps_before && atomic_load(&in_flight) == 0) {
        long found = svc->sweep ? svc->sweep(svc) : 0;
        if (found == 0)
            atomic_store(&stopping, 1);
        else if (found > 0)
            service_warn(svc, "the queue was empty, but %ld job%s not done: queued again", found,
                         found == 1 ? " was" : "s were");
        atomic_fetch_add(&sweeps, 1);
    }
    pthread_mutex_unlock(&sweep_lock);
}

static void *worker_main(void *p)
{
    struct worker_arg *wa = p;
    struct service *svc = wa->svc;
    int failures = 0; /* pops in a row: Redis is down or failing over */
    while (!atomic_load(&stopping)) {
        long id = 0;
        wait_for_schedule(svc);
        if (atomic_load(&stopping))
            break;
        unsigned long sweeps_before = atomic_load(&sweeps);
        int got = pop_job(svc, &id, failures == 0);
        if (got < 0) {
            /* Back off (50 ms, doubling up to 500 ms, jittered) and keep trying: the pool
             * reconnects when the server (or the new master) is there. */
            long ms = failures < 4 ? 50L << failures : 500;
            failures++;
            sleep_ms(jittered(ms));
            continue;
        }
        if (failures > 1)
            service_warn(svc, "redis is back after %d failed pops", failures);
        failures = 0;
        if (got == 0) {
            queue_empty(svc, sweeps_before);
            continue;
        }
        atomic_fetch_add(&in_flight, 1);
        unsigned long long expected = 0;
        atomic_compare_exchange_strong(&first_job_ns, &expected, now_ns());
        snprintf(job_token, sizeof job_token, "%s:%ld:%lu", svc->prog, (long)getpid(),
                 atomic_fetch_add(&job_serial, 1) + 1);

        enum job_result res = run_job(svc, wa->job, id);
        if (res != JOB_RETRY)
            atomic_fetch_add(&svc->counts[res], 1);
        atomic_store(&last_job_ns, now_ns());
        atomic_fetch_sub(&in_flight, 1);
    }
    return NULL;
}

static void on_stop_signal(int sig)
{
    (void)sig;
    atomic_store(&stopping, 1);
}

/* Jobs handled: priced, rejected, skipped (a duplicate) or failed. */
static unsigned long jobs_done(struct service *svc)
{
    unsigned long n = 0;
    for (int i = 0; i < JOB_RESULTS; i++)
        if (i != JOB_RETRY)
            n += atomic_load(&svc->counts[i]);
    return n;
}

static double elapsed_s(void)
{
    unsigned long long a = atomic_load(&first_job_ns), b = atomic_load(&last_job_ns);
    return a && b > a ? (double)(b - a) / 1e9 : 0.0;
}

static void print_counts(struct service *svc, FILE *out)
{
    for (int i = 0; i < JOB_RESULTS; i++)
        fprintf(out, "%s%s %lu", i ? ", " : "", result_names[i],
                (unsigned long)atomic_load(&svc->counts[i]));
}

/* ---- the timeline ---- */

static void timeline_open(struct service *svc)
{
    if (!svc->timeline)
        return;
    FILE *f = fopen(svc->timeline, "w");
    if (!f) {
        service_warn(svc, "--timeline %s: %s", svc->timeline, strerror(errno));
        return;
    }
    fprintf(f,
            "# %s timeline: a row every 100 ms (what happened in those 100 ms: jobs handled,"
            " attempts retried, failed requests per pool) and a row when a pool's requests"
            " start succeeding on another server (event)\n",
            svc->prog);
    fprintf(f, "unix_ms,done,retries,failed_redis,failed_pg,failed_pg_read,failed_pricing,event\n");
    fflush(f);
    pthread_mutex_lock(&timeline_lock);
    timeline = f;
    pthread_mutex_unlock(&timeline_lock);
}

/* One row: what changed since the previous one. */
static void timeline_tick(struct service *svc)
{
    static unsigned long prev[2 + SERVICE_POOLS];
    unsigned long cur[2 + SERVICE_POOLS];
    cur[0] = jobs_done(svc);
    cur[1] = atomic_load(&svc->retries);
    for (int i = 0; i < SERVICE_POOLS; i++)
        cur[2 + i] = atomic_load(&svc->failures[i]);
    pthread_mutex_lock(&timeline_lock);
    if (timeline) {
        fprintf(timeline, "%lld", unix_ms());
        for (int i = 0; i < 2 + SERVICE_POOLS; i++)
            fprintf(timeline, ",%lu", cur[i] - prev[i]);
        fprintf(timeline, ",\n");
        fflush(timeline);
    }
    pthread_mutex_unlock(&timeline_lock);
    memcpy(prev, cur, sizeof prev);
}

static void timeline_close(void)
{
    pthread_mutex_lock(&timeline_lock);
    if (timeline)
        fclose(timeline);
    timeline = NULL;
    pthread_mutex_unlock(&timeline_lock);
}

/* ---- metrics and summary ---- */

/* Rewrites the Prometheus text file: leash's pool metrics plus the job counters. Written
 * to a temporary name and renamed, so a scraper never reads half a file. */
static void write_metrics(struct service *svc)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", svc->metrics);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        service_warn(svc, "--metrics %s: %s", tmp, strerror(errno));
        svc->metrics = NULL;
        return;
    }
    int rc = leash_stats_dump(fd, LEASH_FORMAT_PROMETHEUS);
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return;
    }
    fprintf(f, "# HELP orders_jobs_total Jobs finished, by result (retried: jobs that needed"
               " another attempt).\n"
               "# TYPE orders_jobs_total counter\n");
    for (int i = 0; i < JOB_RESULTS; i++)
        fprintf(f, "orders_jobs_total{service=\"%s\",result=\"%s\"} %lu\n", svc->prog,
                result_names[i], (unsigned long)atomic_load(&svc->counts[i]));
    fprintf(f,
            "# HELP orders_job_retries_total Job attempts run again after a transient"
            " failure.\n"
            "# TYPE orders_job_retries_total counter\n"
            "orders_job_retries_total{service=\"%s\"} %lu\n",
            svc->prog, (unsigned long)atomic_load(&svc->retries));
    fprintf(f, "# HELP orders_request_failures_total Requests that failed, by pool.\n"
               "# TYPE orders_request_failures_total counter\n");
    for (int i = 0; i < SERVICE_POOLS; i++)
        fprintf(f, "orders_request_failures_total{service=\"%s\",pool=\"%s\"} %lu\n", svc->prog,
                pool_names[i], (unsigned long)atomic_load(&svc->failures[i]));
    if (fclose(f) == 0 && rc == 0)
        rename(tmp, svc->metrics);
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void print_pool(leash_pool *pool, FILE *out)
{
    leash_pool_stats st;
    if (leash_pool_stats_get(pool, &st) != LEASH_OK)
        return;
    uint64_t leaks = st.leaks_reclaimed + st.leaks_suspected + st.leaks_at_close;
    fprintf(out, "  %-8s %-5s %3u/%-3u %9llu %8.3f %8.2f %8.3f %8.2f %5llu %5llu %5llu %5llu\n",
            st.name, st.kind, (unsigned)st.size, (unsigned)st.max_size,
            (unsigned long long)st.acquired,
            st.acquired ? ms(st.wait_ns_total) / (double)st.acquired : 0.0, ms(st.wait_ns_max),
            st.acquired ? ms(st.hold_ns_total) / (double)st.acquired : 0.0, ms(st.hold_ns_max),
            (unsigned long long)st.created, (unsigned long long)st.timeouts,
            (unsigned long long)st.dirty_returns, (unsigned long long)leaks);
}

static void print_summary(struct service *svc)
{
    unsigned long done = jobs_done(svc);
    double secs = elapsed_s();
    printf("\n%s: %lu jobs in %.2f s = %.0f jobs/s (", svc->prog, done, secs,
           secs > 0 ? (double)done / secs : 0.0);
    print_counts(svc, stdout);
    printf(")\n");
    printf("  retries: %lu jobs retried, %lu attempts; failed requests:",
           (unsigned long)atomic_load(&svc->counts[JOB_RETRY]),
           (unsigned long)atomic_load(&svc->retries));
    for (int i = 0; i < SERVICE_POOLS; i++)
        if (i != POOL_PG_READ || svc->pg_read != svc->pg)
            printf(" %s %lu%s", pool_names[i], (unsigned long)atomic_load(&svc->failures[i]),
                   i + 1 < SERVICE_POOLS ? "," : "");
    printf("\n");
    if (svc->drain && svc->sweep)
        printf("  sweep: %lu jobs queued again, %lu writes redone\n",
               (unsigned long)atomic_load(&svc->swept), (unsigned long)atomic_load(&svc->repaired));
    printf("  pool     kind  size/max  acquired  wait ms  wait max  hold ms  hold max"
           " conns tmout dirty leaks\n");
    print_pool(svc->redis, stdout);
    print_pool(svc->pg, stdout);
    if (svc->pg_read != svc->pg)
        print_pool(svc->pg_read, stdout);
    print_pool(svc->http, stdout);
    fflush(stdout);
}

int service_run(struct service *svc, job_fn job)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C kills at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* Workers never take the signals: the main thread handles stop and stats requests. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old);

    if (!svc->quiet) {
        char read_pool[32] = "";
        if (svc->pg_read != svc->pg)
            snprintf(read_pool, sizeof read_pool, " pg-read %d,", svc->pg_size);
        printf("%s: %d workers on queue '%s'; pools: redis %d, pg %d,%s pricing %d"
               " (pid %ld: kill -USR1 for a stats dump)\n",
               svc->prog, svc->workers, svc->queue, svc->redis_size, svc->pg_size, read_pool,
               svc->http_size, (long)getpid());
        fflush(stdout);
    }
    timeline_open(svc);
    start_ns = now_ns();

    pthread_t *threads = calloc((size_t)svc->workers, sizeof *threads);
    struct worker_arg wa = {svc, job};
    int started = 0;
    for (; threads && started < svc->workers; started++) {
        if (pthread_create(&threads[started], NULL, worker_main, &wa) != 0) {
            service_warn(svc, "could not start worker %d", started + 1);
            atomic_store(&stopping, 1);
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    /* Every 100 ms on a fixed schedule: a timeline row; every second: progress, dump,
     * metrics. */
    unsigned long prev = 0;
    unsigned long long next = start_ns;
    for (int tick = 1; !atomic_load(&stopping); tick++) {
        next += TICK_NS;
        struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR &&
               !atomic_load(&stopping))
            ;
        timeline_tick(svc);
        if (tick % 10)
            continue;
        unsigned long done = jobs_done(svc);
        if (svc->progress) {
            fprintf(stderr, "%s: %lu jobs done (%lu/s; ", svc->prog, done, done - prev);
            print_counts(svc, stderr);
            fprintf(stderr, ")\n");
        }
        prev = done;
        if (svc->dump_every && (tick / 10) % svc->dump_every == 0)
            leash_stats_dump(2, LEASH_FORMAT_TEXT);
        if (svc->metrics)
            write_metrics(svc);
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    timeline_tick(svc);
    timeline_close();
    if (svc->metrics)
        write_metrics(svc);

    print_summary(svc);
    svc->leaks = (unsigned long)(leash_pool_leaks(svc->redis) + leash_pool_leaks(svc->pg) +
                                 leash_pool_leaks(svc->http));
    if (svc->pg_read != svc->pg)
        svc->leaks += (unsigned long)leash_pool_leaks(svc->pg_read);
    int outstanding = leash_check_leaks(2);
    printf("leaks: %d handle%s outstanding", outstanding, outstanding == 1 ? "" : "s");
    if (svc->leaks)
        printf(", %lu leak%s caught by guards during the run", svc->leaks,
               svc->leaks == 1 ? "" : "s");
    printf("\n");
    fflush(stdout);

    leash_pool_close(svc->http);
    if (svc->pg_read != svc->pg)
        leash_pool_close(svc->pg_read);
    leash_pool_close(svc->pg);
    leash_pool_close(svc->redis);
    leash_shutdown();
    return outstanding == 0 && atomic_load(&svc->counts[JOB_FAILED]) == 0 ? 0 : 1;
}

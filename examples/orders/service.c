/* The plumbing the example worker services share: flags, pools, workers, signals, summary. */
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

#define POP_TIMEOUT_S 1 /* BRPOP timeout: how long a stop request can wait for a worker */

static const char *const result_names[JOB_RESULTS] = {"priced", "rejected", "skipped", "retried",
                                                      "failed"};

static atomic_int stopping;        /* set by SIGINT/SIGTERM, or by a worker in --drain mode */
static atomic_ullong first_job_ns; /* when the first job was popped */
static atomic_ullong last_job_ns;  /* when the latest job finished */

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

void service_warn(const struct service *svc, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", svc->prog, line);
}

static void usage(const struct service *svc, const char *about, FILE *out)
{
    fprintf(out,
            "usage: %s [options]\n%s\n"
            "  -w, --workers N       worker threads (default 8)\n"
            "      --redis URL       Redis server (default " DEFAULT_REDIS ")\n"
            "      --pg CONNINFO     PostgreSQL conninfo or URI (default: the test server,\n"
            "                        role leash on 127.0.0.1:15432, database leash)\n"
            "      --http URL        pricing service base URL (default " DEFAULT_HTTP ")\n"
            "      --redis-pool N    Redis pool size (default: one per worker)\n"
            "      --pg-pool N       PostgreSQL pool size (default 4)\n"
            "      --http-pool N     HTTP pool size (default 4)\n"
            "      --queue KEY       Redis list of job ids (default orders:jobs)\n"
            "  -n, --jobs N          orders to seed (orders-seed only; default 1000)\n"
            "      --drain           stop once the queue stays empty for a second\n"
            "      --progress        print a progress line every second\n"
            "      --dump-every S    dump the pool stats every S seconds (SIGUSR1 always does)\n"
            "      --metrics FILE    keep FILE up to date with Prometheus metrics\n"
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
        O_HTTP,
        O_RPOOL,
        O_PPOOL,
        O_HPOOL,
        O_QUEUE,
        O_DRAIN,
        O_PROGRESS,
        O_DUMP,
        O_METRICS
    };
    static const struct option longopts[] = {
        {"workers", required_argument, NULL, 'w'},
        {"redis", required_argument, NULL, O_REDIS},
        {"pg", required_argument, NULL, O_PG},
        {"http", required_argument, NULL, O_HTTP},
        {"redis-pool", required_argument, NULL, O_RPOOL},
        {"pg-pool", required_argument, NULL, O_PPOOL},
        {"http-pool", required_argument, NULL, O_HPOOL},
        {"queue", required_argument, NULL, O_QUEUE},
        {"jobs", required_argument, NULL, 'n'},
        {"drain", no_argument, NULL, O_DRAIN},
        {"progress", no_argument, NULL, O_PROGRESS},
        {"dump-every", required_argument, NULL, O_DUMP},
        {"metrics", required_argument, NULL, O_METRICS},
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
    svc->http = leash_http_pool_with("pricing", svc->http_url, &http_opts, &http_extra);
    if (!svc->http) {
        service_warn(svc, "--http: %s", leash_last_error());
        return -1;
    }
    return 0;
}

int service_requeue(struct service *svc, long id)
{
    LEASH_AUTO leash_handle *h = leash_acquire(svc->redis);
    if (!h)
        return -1;
    LEASH_REPLY redisReply *r = leash_redis_command(h, "LPUSH %s %ld", svc->queue, id);
    return r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
}

/* Pops one job id: 1 with *id set, 0 when the queue stayed empty, -1 on a failure (said
 * on stderr when say is set). */
static int pop_job(struct service *svc, long *id, int say)
{
    LEASH_AUTO leash_handle *h = leash_acquire(svc->redis);
    if (!h) {
        if (say)
            service_warn(svc, "redis: %s", leash_last_error());
        return -1;
    }
    LEASH_REPLY redisReply *r = leash_redis_command(h, "BRPOP %s %d", svc->queue, POP_TIMEOUT_S);
    if (!r) {
        if (say)
            service_warn(svc, "redis BRPOP: %s", leash_last_error());
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

struct worker_arg {
    struct service *svc;
    job_fn job;
};

static void *worker_main(void *p)
{
    struct worker_arg *wa = p;
    struct service *svc = wa->svc;
    int failures = 0; /* in a row: Redis is down or restarting */
    while (!atomic_load(&stopping)) {
        long id = 0;
        int got = pop_job(svc, &id, failures % 20 == 0);
        if (got < 0) {
            /* Back off (0.1 s, doubling up to 2 s) and keep trying: the pool reconnects
             * when the server is back. */
            long ms = failures < 5 ? 100L << failures : 2000;
            struct timespec pause = {ms / 1000, ms % 1000 * 1000000L};
            failures++;
            nanosleep(&pause, NULL);
            continue;
        }
        if (failures)
            service_warn(svc, "redis is back after %d failed pops", failures);
        failures = 0;
        if (got == 0) {
            if (svc->drain)
                atomic_store(&stopping, 1);
            continue;
        }
        unsigned long long expected = 0;
        atomic_compare_exchange_strong(&first_job_ns, &expected, now_ns());

        enum job_result res = wa->job(svc, id);
        if (res == JOB_RETRY && service_requeue(svc, id) < 0) {
            service_warn(svc, "job %ld: could not queue it again: %s", id, leash_last_error());
            res = JOB_FAILED;
        }
        atomic_fetch_add(&svc->counts[res], 1);
        atomic_store(&last_job_ns, now_ns());
    }
    return NULL;
}

static void on_stop_signal(int sig)
{
    (void)sig;
    atomic_store(&stopping, 1);
}

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
    fprintf(f, "# HELP orders_jobs_total Jobs finished, by result.\n"
               "# TYPE orders_jobs_total counter\n");
    for (int i = 0; i < JOB_RESULTS; i++)
        fprintf(f, "orders_jobs_total{service=\"%s\",result=\"%s\"} %lu\n", svc->prog,
                result_names[i], (unsigned long)atomic_load(&svc->counts[i]));
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
    printf("  pool     kind  size/max  acquired  wait ms  wait max  hold ms  hold max"
           " conns tmout dirty leaks\n");
    print_pool(svc->redis, stdout);
    print_pool(svc->pg, stdout);
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
        printf("%s: %d workers on queue '%s'; pools: redis %d, pg %d, pricing %d"
               " (pid %ld: kill -USR1 for a stats dump)\n",
               svc->prog, svc->workers, svc->queue, svc->redis_size, svc->pg_size, svc->http_size,
               (long)getpid());
        fflush(stdout);
    }

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

    unsigned long prev = 0;
    for (int tick = 1; !atomic_load(&stopping); tick++) {
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
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
    if (svc->metrics)
        write_metrics(svc);

    print_summary(svc);
    svc->leaks = (unsigned long)(leash_pool_leaks(svc->redis) + leash_pool_leaks(svc->pg) +
                                 leash_pool_leaks(svc->http));
    int outstanding = leash_check_leaks(2);
    printf("leaks: %d handle%s outstanding", outstanding, outstanding == 1 ? "" : "s");
    if (svc->leaks)
        printf(", %lu leak%s caught by guards during the run", svc->leaks,
               svc->leaks == 1 ? "" : "s");
    printf("\n");
    fflush(stdout);

    leash_pool_close(svc->http);
    leash_pool_close(svc->pg);
    leash_pool_close(svc->redis);
    leash_shutdown();
    return outstanding == 0 && atomic_load(&svc->counts[JOB_FAILED]) == 0 ? 0 : 1;
}

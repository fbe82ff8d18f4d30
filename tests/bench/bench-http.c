/* Benchmark: GET of a small file from nginx through a leash pool, against one reused easy
 * handle per thread (the limit) and a new easy handle per request, 1 and 4 threads. */
#include <leash/http.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* tests/servers.sh start nginx; LEASH_BENCH_URL overrides the base (no path). */
#define BASE "http://127.0.0.1:18080"
#define PATH "/small"
#define RUN_MS 3000 /* per thread count: each thread alternates leash and reused batches */
#define BATCH 20
#define FRESH_MS 600
#define MAX_PAIRS 20000

enum mode { LEASH, REUSED, FRESH };

static char url[512];
static leash_pool *pool;
static _Atomic long failures;
static double pairs[MAX_PAIRS]; /* leash/reused speed of one pair of batches */
static _Atomic int npairs;

static double now_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The baselines keep the body too, in a buffer reused per thread. */
struct body {
    char buf[4096];
    size_t len;
};

static size_t keep(char *d, size_t sz, size_t n, void *arg)
{
    struct body *b = arg;
    size_t add = sz * n;
    if (add > sizeof b->buf - b->len)
        return 0;
    memcpy(b->buf + b->len, d, add);
    b->len += add;
    return add;
}

static CURL *easy(struct body *b)
{
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
    return e;
}

static int get(enum mode m, CURL *e, struct body *b)
{
    long status = 0;
    if (m == LEASH) {
        leash_handle *h = leash_acquire(pool);
        leash_http_response r;
        int ok = h && leash_http_get(h, PATH, &r) == LEASH_OK && r.status == 200;
        if (ok)
            leash_http_response_free(&r);
        leash_release(&h);
        return ok;
    }
    CURL *f = m == FRESH ? easy(b) : e;
    b->len = 0;
    int ok = curl_easy_perform(f) == CURLE_OK &&
             curl_easy_getinfo(f, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
    if (m == FRESH)
        curl_easy_cleanup(f);
    return ok;
}

struct worker {
    int fresh;              /* 1: only new easy handles; 0: leash and reused in turn */
    double ms;              /* how long */
    long done[3];           /* requests per mode */
    double secs[3], cpu[3]; /* wall and this thread's CPU time per mode */
};

static void *run(void *arg)
{
    struct worker *w = arg;
    struct body b;
    CURL *e = easy(&b);
    double end = now_s(CLOCK_MONOTONIC) + w->ms / 1000;
    for (int round = 0; now_s(CLOCK_MONOTONIC) < end; round++) {
        double speed[2] = {0, 0};
        for (int k = 0; k < (w->fresh ? 1 : 2); k++) {
            enum mode m = w->fresh ? FRESH : (k + round) % 2 ? REUSED : LEASH;
            double t0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_THREAD_CPUTIME_ID);
            int ok = 0;
            for (int i = 0; i < BATCH; i++)
                ok += get(m, e, &b);
            double dt = now_s(CLOCK_MONOTONIC) - t0;
            w->cpu[m] += now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
            w->secs[m] += dt;
            w->done[m] += ok;
            atomic_fetch_add(&failures, BATCH - ok);
            if (m != FRESH)
                speed[m] = ok / dt;
        }
        if (!w->fresh) {
            int i = atomic_fetch_add(&npairs, 1);
            if (i < MAX_PAIRS)
                pairs[i] = speed[REUSED] > 0 ? speed[LEASH] / speed[REUSED] : 0;
        }
    }
    curl_easy_cleanup(e);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs n threads; adds each mode's summed per-thread rate to rate[] and CPU us/request. */
static void measure(int n, int fresh, double ms, double rate[3], double cpu_us[3])
{
    pthread_t t[16];
    struct worker w[16];
    for (int i = 0; i < n; i++) {
        w[i] = (struct worker){.fresh = fresh, .ms = ms};
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    double cpu[3] = {0, 0, 0};
    long done[3] = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        for (int m = 0; m < 3; m++) {
            if (w[i].secs[m] > 0)
                rate[m] += (double)w[i].done[m] / w[i].secs[m];
            cpu[m] += w[i].cpu[m];
            done[m] += w[i].done[m];
        }
    }
    for (int m = 0; m < 3; m++)
        if (done[m])
            cpu_us[m] = cpu[m] / (double)done[m] * 1e6;
}

int main(void)
{
    const char *base = getenv("LEASH_BENCH_URL");
    if (!base || !*base)
        base = BASE;
    snprintf(url, sizeof url, "%s%s", base, PATH);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* One request first, so a missing server is one clear line rather than a table of zeros. */
    CURL *probe = curl_easy_init();
    curl_easy_setopt(probe, CURLOPT_URL, url);
    curl_easy_setopt(probe, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(probe, CURLOPT_TIMEOUT_MS, 5000L);
    CURLcode rc = curl_easy_perform(probe);
    curl_easy_cleanup(probe);
    if (rc != CURLE_OK) {
        fprintf(stderr, "bench-http: HEAD %s: %s (is tests/servers.sh start nginx running?)\n", url,
                curl_easy_strerror(rc));
        return 1;
    }
    printf("GET %s; each thread alternates batches of %d through leash and its own reused\n"
           "easy handle for %d ms; req/s summed over threads; ratio = leash/reused (whole run,\n"
           "and the median of batch pairs); client CPU us per request\n",
           url, BATCH, RUN_MS);
    printf("%-8s %10s %10s %10s %8s %8s %8s %8s\n", "threads", "leash", "reused", "new", "ratio",
           "median", "cpu-l", "cpu-r");
    int counts[] = {1, 4};
    for (int c = 0; c < 2; c++) {
        int n = counts[c];
        leash_pool_options o = {.max_size = n};
        pool = leash_http_pool("bench", base, &o);
        if (!pool) {
            fprintf(stderr, "bench-http: %s\n", leash_last_error());
            return 1;
        }
        double rate[3] = {0, 0, 0}, cpu[3] = {0, 0, 0};
        atomic_store(&npairs, 0);
        measure(n, 0, RUN_MS, rate, cpu);
        int np = atomic_load(&npairs) < MAX_PAIRS ? atomic_load(&npairs) : MAX_PAIRS;
        measure(n, 1, FRESH_MS, rate, cpu);
        qsort(pairs, (size_t)np, sizeof pairs[0], cmp_double);
        printf("%-8d %10.0f %10.0f %10.0f %8.3f %8.3f %8.1f %8.1f\n", n, rate[LEASH], rate[REUSED],
               rate[FRESH], rate[LEASH] / rate[REUSED], np ? pairs[np / 2] : 0.0, cpu[LEASH],
               cpu[REUSED]);
        leash_pool_close(pool);
    }
    long f = atomic_load(&failures);
    if (f)
        printf("failed requests: %ld\n", f);
    leash_shutdown();
    return f ? 1 : 0;
}

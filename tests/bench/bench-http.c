/* Benchmark: GET of a small file from nginx through a leash pool, against one reused easy
 * handle per thread (the limit) and a new easy handle per request, 1 and 4 threads. */
#include <leash/http.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* tests/servers.sh start nginx; override with LEASH_BENCH_URL (base, no path). */
#define BASE "http://127.0.0.1:18080"
#define PATH "/small"
#define SLICE_MS 150
#define SLICES 10 /* per mode; leash and reused alternate, so load changes hit both */

enum mode { LEASH, REUSED, FRESH };
static const char *mode_name[] = {"leash pool", "reused easy handle", "new easy handle"};

static const char *base = BASE;
static char url[512];
static leash_pool *pool;
static _Atomic int stop;
static _Atomic long failures;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The baselines keep the body like leash does, in one buffer reused per thread. */
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

static void setup_easy(CURL *e, struct body *b)
{
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
}

struct worker {
    enum mode mode;
    long done;
    double cpu; /* this thread's CPU seconds: less noisy than wall time on a busy machine */
};

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    struct body b;
    CURL *e = NULL;
    double c0 = cpu_s();
    if (w->mode == REUSED) {
        e = curl_easy_init();
        setup_easy(e, &b);
    }
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int ok = 0;
        if (w->mode == LEASH) {
            leash_handle *h = leash_acquire(pool);
            leash_http_response r;
            ok = h && leash_http_get(h, PATH, &r) == LEASH_OK && r.status == 200;
            if (ok)
                leash_http_response_free(&r);
            leash_release(&h);
        } else if (w->mode == REUSED) {
            long status = 0;
            b.len = 0;
            ok = curl_easy_perform(e) == CURLE_OK &&
                 curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
        } else {
            CURL *f = curl_easy_init();
            long status = 0;
            b.len = 0;
            setup_easy(f, &b);
            ok = curl_easy_perform(f) == CURLE_OK &&
                 curl_easy_getinfo(f, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
            curl_easy_cleanup(f);
        }
        if (ok)
            w->done++;
        else
            atomic_fetch_add(&failures, 1);
    }
    curl_easy_cleanup(e);
    w->cpu = cpu_s() - c0;
    return NULL;
}

/* Requests of nthreads threads in mode for ms milliseconds; *secs += the time taken,
 * *cpu += the threads' CPU time. */
static long measure(enum mode mode, int nthreads, int ms, double *secs, double *cpu)
{
    pthread_t t[16];
    struct worker w[16];
    atomic_store(&stop, 0);
    double t0 = now_s();
    for (int i = 0; i < nthreads; i++) {
        w[i] = (struct worker){.mode = mode};
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
    atomic_store(&stop, 1);
    long total = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(t[i], NULL);
        total += w[i].done;
        *cpu += w[i].cpu;
    }
    *secs += now_s() - t0;
    return total;
}

int main(void)
{
    const char *env = getenv("LEASH_BENCH_URL");
    if (env && *env)
        base = env;
    snprintf(url, sizeof url, "%s%s", base, PATH);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    printf("GET %s: %d slices of %d ms per mode, leash and reused alternating\n", url, SLICES,
           SLICE_MS);
    printf("req/s: %s | %s | %s; client CPU us per request: leash | reused\n", mode_name[LEASH],
           mode_name[REUSED], mode_name[FRESH]);
    printf("%-8s %10s %10s %10s %13s %8s %8s\n", "threads", "leash", "reused", "new",
           "leash/reused", "cpu-l", "cpu-r");
    int counts[] = {1, 4};
    for (int c = 0; c < 2; c++) {
        int n = counts[c];
        leash_pool_options o = {.max_size = n};
        pool = leash_http_pool("bench", base, &o);
        if (!pool) {
            fprintf(stderr, "bench-http: %s\n", leash_last_error());
            return 1;
        }
        double secs[3] = {0, 0, 0}, cpu[3] = {0, 0, 0}, rate[3], warm = 0;
        long reqs[3] = {0, 0, 0};
        measure(LEASH, n, 100, &warm, &warm); /* warm the pool's connections */
        for (int r = 0; r < SLICES; r++)
            for (int m = LEASH; m <= REUSED; m++)
                reqs[m] += measure((enum mode)m, n, SLICE_MS, &secs[m], &cpu[m]);
        reqs[FRESH] = measure(FRESH, n, SLICE_MS * 4, &secs[FRESH], &cpu[FRESH]);
        for (int m = 0; m < 3; m++)
            rate[m] = (double)reqs[m] / secs[m];
        printf("%-8d %10.0f %10.0f %10.0f %13.3f %8.1f %8.1f\n", n, rate[LEASH], rate[REUSED],
               rate[FRESH], rate[LEASH] / rate[REUSED], cpu[LEASH] / (double)reqs[LEASH] * 1e6,
               cpu[REUSED] / (double)reqs[REUSED] * 1e6);
        leash_pool_close(pool);
    }
    if (atomic_load(&failures))
        printf("failed requests: %ld\n", atomic_load(&failures));
    leash_shutdown();
    return atomic_load(&failures) ? 1 : 0;
}

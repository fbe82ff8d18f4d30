/* Benchmark of the stats page: the cost of one refresh (three dumps rendered into memory and
 * copied into the page under its sequence lock) with 10 pools and 1,000 held handles,
 * against one text dump written to /dev/null in the same run (the baseline), reported as a
 * ratio; also the part of it during which the page is being written (readers retry then),
 * and what a refresh every LEASH_SHM_INTERVAL_MS costs of one core.
 *
 *   bench-shm [refreshes-per-round]      default 200, best of 5 rounds */
#include "core.h"
#include "shm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POOLS 10
#define HELD 100 /* per pool: 1,000 in all */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *b_connect(void *ctx, const char *t, char *err, size_t n)
{
    (void)ctx, (void)t, (void)err, (void)n;
    return malloc(16);
}
static void b_destroy(void *ctx, void *c)
{
    (void)ctx;
    free(c);
}
static const leash_adapter bench_adapter = {
    .kind = "bench", .connect = b_connect, .destroy = b_destroy};

/* Four borrow sites, so the dumps group held handles as a real program's would. */
static leash_handle *borrow(leash_pool *p, int site)
{
    switch (site & 3) {
    case 0:
        return leash_acquire(p);
    case 1:
        return leash_acquire(p);
    case 2:
        return leash_acquire(p);
    default:
        return leash_acquire(p);
    }
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    if (n < 1)
        n = 200;
    unsetenv("LEASH_STATS_SHM");
    static leash_handle *held[POOLS][HELD];
    leash_pool *pools[POOLS];
    leash_pool_options o = {.max_size = HELD + 10};
    for (int i = 0; i < POOLS; i++) {
        char name[32];
        snprintf(name, sizeof name, "bench-pool-%d", i);
        pools[i] = leash_pool_open(name, &bench_adapter, "bench://host:1234/db", &o);
        if (!pools[i]) {
            fprintf(stderr, "bench-shm: %s\n", leash_last_error());
            return 1;
        }
        for (int k = 0; k < 1000; k++) { /* some history: counters, histograms, sites */
            leash_handle *h = borrow(pools[i], k);
            leash_release(&h);
        }
        for (int j = 0; j < HELD; j++)
            held[i][j] = borrow(pools[i], j);
    }
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (leash__shm_refresh_now() == 0 || devnull < 0) {
        fprintf(stderr, "bench-shm: no page (is /dev/shm writable?)\n");
        return 1;
    }

    /* the page's sections as they are now, for the write-only measurement */
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/leash.%d", (int)getpid());
    FILE *f = fopen(path, "rb");
    static struct leash_shm_header h;
    if (!f || fread(&h, sizeof h, 1, f) != 1) {
        fprintf(stderr, "bench-shm: cannot read %s\n", path);
        return 1;
    }
    char *sec[LEASH_SHM_SECTIONS];
    size_t len[LEASH_SHM_SECTIONS], total = 0;
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++) {
        len[i] = (size_t)h.section[i].len;
        sec[i] = malloc(len[i] + 1);
        fseek(f, (long)h.section[i].off, SEEK_SET);
        if (!sec[i] || fread(sec[i], 1, len[i], f) != len[i]) {
            fprintf(stderr, "bench-shm: cannot read %s\n", path);
            return 1;
        }
        total += len[i];
    }
    fclose(f);

    double best_refresh = 1e30, best_text = 1e30, best_write = 1e30;
    double best_render[LEASH_SHM_SECTIONS] = {1e30, 1e30, 1e30};
    static const leash_format fmts[LEASH_SHM_SECTIONS] = {LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON,
                                                          LEASH_FORMAT_PROMETHEUS};
    size_t cap = 4 * total + 65536;
    char *scratch = malloc(cap);
    for (int round = 0; round < 5; round++) {
        uint64_t t0 = now_ns();
        for (int i = 0; i < n; i++)
            leash_stats_dump(devnull, LEASH_FORMAT_TEXT);
        uint64_t t1 = now_ns();
        for (int i = 0; i < n; i++)
            leash__shm_refresh_now();
        uint64_t t2 = now_ns();
        for (int i = 0; i < n; i++)
            leash__shm_publish((const char *const *)sec, len);
        uint64_t t3 = now_ns();
        double text = (double)(t1 - t0) / n, refresh = (double)(t2 - t1) / n,
               write = (double)(t3 - t2) / n;
        best_text = text < best_text ? text : best_text;
        best_refresh = refresh < best_refresh ? refresh : best_refresh;
        best_write = write < best_write ? write : best_write;
        for (int k = 0; k < LEASH_SHM_SECTIONS; k++) {
            uint64_t r0 = now_ns();
            for (int i = 0; i < n; i++)
                leash__render(scratch, cap, fmts[k]);
            double r = (double)(now_ns() - r0) / n;
            best_render[k] = r < best_render[k] ? r : best_render[k];
        }
    }
    free(scratch);
    leash__shm_refresh_now(); /* leave the real dumps in the page */

    printf("stats page, %d pools, %d held handles (text %zu, JSON %zu, Prometheus %zu bytes)\n",
           POOLS, POOLS * HELD, len[0], len[1], len[2]);
    printf("  %-44s %10.0f ns\n", "one text dump to /dev/null (baseline)", best_text);
    printf("  %-44s %10.0f ns  %5.2fx the baseline\n", "one refresh (3 dumps rendered + written)",
           best_refresh, best_refresh / best_text);
    static const char *const what[LEASH_SHM_SECTIONS] = {
        "  rendering the text dump into memory", "  rendering the JSON dump into memory",
        "  rendering the Prometheus dump into memory"};
    for (int k = 0; k < LEASH_SHM_SECTIONS; k++)
        printf("  %-44s %10.0f ns  %5.2fx the baseline\n", what[k], best_render[k],
               best_render[k] / best_text);
    printf("  %-44s %10.0f ns  %5.2fx the baseline\n", "  writing the page (readers retry then)",
           best_write, best_write / best_text);
    char every[64];
    snprintf(every, sizeof every, "a refresh every %d ms", LEASH_SHM_INTERVAL_MS);
    printf("  %-44s %10.3f %% of one core\n", every,
           100.0 * best_refresh / (LEASH_SHM_INTERVAL_MS * 1e6));
    printf("  (best of 5 rounds of %d; %zu bytes of dumps per refresh)\n", n, total);

    for (int i = 0; i < POOLS; i++)
        for (int j = 0; j < HELD; j++)
            leash_release(&held[i][j]);
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++)
        free(sec[i]);
    close(devnull);
    leash_shutdown();
    return 0;
}

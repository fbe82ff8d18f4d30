/* The exact clock: time-stamp counter calibration against CLOCK_MONOTONIC. */
#include "clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Atomic uint64_t leash__clock_mult;

uint64_t leash__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#if LEASH_HAVE_TSC
/* The kernel says the counter ticks at a constant rate, also in deep sleep states. */
static int tsc_invariant(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return 0;
    char line[4096];
    int constant = 0, nonstop = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(f);
    return constant && nonstop;
}

static void calibrate(void)
{
    const char *env = getenv("LEASH_CLOCK");
    if ((env && strcmp(env, "monotonic") == 0) || !tsc_invariant())
        return;
    /* Two pairs of readings 5 ms apart; each pair taken back to back, keeping the
     * tightest of three so a preemption between the two reads does not skew it. */
    uint64_t t0 = 0, n0 = 0, t1 = 0, n1 = 0;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t best = UINT64_MAX, bt = 0, bn = 0;
        for (int i = 0; i < 3; i++) {
            uint64_t a = __rdtsc();
            uint64_t n = leash__mono_ns();
            uint64_t b = __rdtsc();
            if (b - a < best) {
                best = b - a;
                bt = a + (b - a) / 2;
                bn = n;
            }
        }
        if (pass == 0) {
            t0 = bt;
            n0 = bn;
            struct timespec ts = {0, 5000000};
            while (nanosleep(&ts, &ts) != 0)
                ;
        } else {
            t1 = bt;
            n1 = bn;
        }
    }
    if (t1 <= t0 || n1 <= n0)
        return;
    uint64_t mult = (uint64_t)(((leash__u128)(n1 - n0) << 32) / (t1 - t0));
    /* A counter slower than 100 MHz or faster than 20 GHz is not believable. */
    if (mult == 0 || mult > (10ull << 32) || mult < (1ull << 32) / 20)
        return;
    atomic_store(&leash__clock_mult, mult);
}
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;

void leash__clock_init(void)
{
#if LEASH_HAVE_TSC
    pthread_once(&once, calibrate);
#else
    (void)once;
#endif
}

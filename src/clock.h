/* The core's clocks: an exact per-borrow clock (the CPU's time-stamp counter where it is
 * invariant, else CLOCK_MONOTONIC) and the pools' coarse tick. */
#ifndef LEASH_CLOCK_H
#define LEASH_CLOCK_H

#include <stdatomic.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define LEASH_HAVE_TSC 1
#else
#define LEASH_HAVE_TSC 0
#endif

__extension__ typedef unsigned __int128 leash__u128;

/* The conversion from raw units to nanoseconds: ns = raw * mult >> 32. Set once per
 * process (leash__clock_init); mult 0 means the raw clock is CLOCK_MONOTONIC in ns. */
extern _Atomic uint64_t leash__clock_mult;

uint64_t leash__mono_ns(void);

/* Calibrates the time-stamp counter against CLOCK_MONOTONIC (a few ms, once per process;
 * later calls return at once). Falls back to CLOCK_MONOTONIC where the counter is not
 * invariant (no constant_tsc/nonstop_tsc), or under LEASH_CLOCK=monotonic. */
void leash__clock_init(void);

/* The exact clock's reading when it is the time-stamp counter, else 0 (then use
 * leash__clock_raw): for fast paths that must not call anything. */
static inline uint64_t leash__clock_tsc(void)
{
#if LEASH_HAVE_TSC
    /* relaxed: the mult was published before any pool existed (pairs with nothing that
     * needs ordering: a stale 0 only means "monotonic", and init runs before first use) */
    if (__builtin_expect(atomic_load_explicit(&leash__clock_mult, memory_order_relaxed) != 0, 1))
        return __rdtsc();
#endif
    return 0;
}

/* A reading of the exact clock, in raw units. Async-signal-safe. About 10 ns with the
 * counter, 25 ns with CLOCK_MONOTONIC on a kvm-clock guest. */
static inline uint64_t leash__clock_raw(void)
{
    uint64_t t = leash__clock_tsc();
    return __builtin_expect(t != 0, 1) ? t : leash__mono_ns();
}

/* ns in raw units (for comparisons on the fast path without a conversion). */
static inline uint64_t leash__clock_from_ns(uint64_t ns)
{
    uint64_t m = atomic_load_explicit(&leash__clock_mult, memory_order_relaxed);
    if (!m)
        return ns;
    leash__u128 r = ((leash__u128)ns << 32) / m;
    return r > UINT64_MAX ? UINT64_MAX : (uint64_t)r;
}

/* Nanoseconds between two raw readings (0 if b is before a). */
static inline uint64_t leash__clock_ns(uint64_t a, uint64_t b)
{
    if (b <= a)
        return 0;
    uint64_t d = b - a;
    uint64_t m = atomic_load_explicit(&leash__clock_mult, memory_order_relaxed);
    if (!m)
        return d;
    return (uint64_t)(((leash__u128)d * m) >> 32);
}

#endif /* LEASH_CLOCK_H */

/* The core's allocations, in one place so a test build can make the n-th one fail. */
#include "common.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Countdown to the failing allocation: 0 off; n > 0: the n-th allocation from now fails,
 * and every one after it succeeds again. */
static _Atomic long fail_at;
static _Atomic long calls;

void leash__alloc_fail_at(long n)
{
    atomic_store(&calls, 0);
    atomic_store(&fail_at, n);
}

long leash__alloc_calls(void)
{
    return atomic_load(&calls);
}

static int should_fail(void)
{
    long c = atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed) + 1;
    long f = atomic_load_explicit(&fail_at, memory_order_relaxed);
    return f > 0 && c == f;
}

void *leash__malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}

void *leash__calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n, size);
}

char *leash__strdup(const char *s)
{
    return should_fail() ? NULL : strdup(s);
}

void *leash__aligned_alloc(size_t align, size_t n)
{
    return should_fail() ? NULL : aligned_alloc(align, n);
}

void leash__free(void *p)
{
    free(p);
}

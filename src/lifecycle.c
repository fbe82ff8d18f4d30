/* Pool lifecycle: options, open, close and free, the fork fix-up, and the periodic
 * maintenance (leak threshold, idle timeout, max lifetime, min_idle). */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const leash_pool_options defaults = {
    .max_size = 10,
    .min_idle = 0,
    .acquire_timeout_ms = 1000,
    .max_waiters = 0,
    .idle_timeout_ms = 600000,
    .max_lifetime_ms = 1800000,
    .validate_idle_ms = 500,
    .leak_threshold_ms = 0,
};

/* ---- open, close, maintenance ---- */

static int check_opt(const char *field, int v)
{
    if (v < 0) {
        leash__fail(LEASH_EINVAL, "pool option %s is %d: must be >= 0 (0 means the default)", field,
                    v);
        return 0;
    }
    return 1;
}

static leash_status resolve_options(struct leash_pool *p, const leash_pool_options *o)
{
    leash_pool_options d = o ? *o : defaults;
    if (!check_opt("max_size", d.max_size) || !check_opt("min_idle", d.min_idle) ||
        !check_opt("acquire_timeout_ms", d.acquire_timeout_ms) ||
        !check_opt("max_waiters", d.max_waiters) ||
        !check_opt("idle_timeout_ms", d.idle_timeout_ms) ||
        !check_opt("max_lifetime_ms", d.max_lifetime_ms) ||
        !check_opt("validate_idle_ms", d.validate_idle_ms) ||
        !check_opt("leak_threshold_ms", d.leak_threshold_ms))
        return LEASH_EINVAL;
#define DEFAULT(f)                                                                                 \
    if (d.f == 0)                                                                                  \
        d.f = defaults.f;
    DEFAULT(max_size)
    DEFAULT(acquire_timeout_ms)
    DEFAULT(idle_timeout_ms)
    DEFAULT(max_lifetime_ms)
    DEFAULT(validate_idle_ms)
#undef DEFAULT
    if (d.max_size > LEASH_POOL_SIZE_MAX)
        return leash__fail(LEASH_EINVAL, "pool option max_size %d is over the limit %d", d.max_size,
                           LEASH_POOL_SIZE_MAX);
    if (d.min_idle > d.max_size)
        return leash__fail(LEASH_EINVAL, "pool option min_idle %d is more than max_size %d",
                           d.min_idle, d.max_size);
    p->nslots = (uint32_t)d.max_size;
    p->min_idle = d.min_idle;
    p->timeout_ms = d.acquire_timeout_ms;
    p->max_waiters = d.max_waiters;
    p->idle_ns = (uint64_t)d.idle_timeout_ms * 1000000u;
    p->lifetime_ns = (uint64_t)d.max_lifetime_ms * 1000000u;
    p->validate_ns = (uint64_t)d.validate_idle_ms * 1000000u;
    p->leak_ns = (uint64_t)d.leak_threshold_ms * 1000000u;
    return LEASH_OK;
}

static leash_status check_name(const char *name)
{
    if (!name)
        return leash__fail(LEASH_EINVAL, "pool name is NULL");
    size_t n = strnlen(name, LEASH_NAME_MAX + 1);
    if (n == 0)
        return leash__fail(LEASH_EINVAL, "pool name is empty");
    if (n > LEASH_NAME_MAX)
        return leash__fail(LEASH_EINVAL, "pool name is longer than %d bytes", LEASH_NAME_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return leash__fail(LEASH_EINVAL, "pool name has a control character at byte %zu", i);
    return LEASH_OK;
}

leash_pool *leash_pool_open_with(const char *name, const leash_adapter *adapter, void *ctx,
                                 const char *target, const leash_pool_options *opts)
{
    struct leash_pool *p = NULL;
    leash_status st = leash__ensure_init();
    if (st != LEASH_OK)
        goto fail;
    st = check_name(name);
    if (st != LEASH_OK)
        goto fail;
    if (!adapter || !adapter->connect || !adapter->destroy || !adapter->kind) {
        st = leash__fail(LEASH_EINVAL, "pool \"%s\": %s", name,
                         !adapter ? "adapter is NULL"
                                  : "the adapter needs kind, connect and destroy");
        goto fail;
    }
    st = leash__adapter_register(adapter);
    if (st != LEASH_OK)
        goto fail;
    p = calloc(1, sizeof *p);
    if (!p) {
        st = leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", name);
        goto fail;
    }
    st = resolve_options(p, opts);
    if (st != LEASH_OK)
        goto fail;
    p->magic = LEASH_POOL_MAGIC;
    static _Atomic uint32_t next_id;
    p->id = atomic_fetch_add(&next_id, 1);
    memcpy(p->name, name, strlen(name) + 1);
    p->adapter = adapter;
    p->target = strdup(target ? target : "");
    _Static_assert(sizeof(struct leash_handle) % LEASH_CACHE_LINE == 0, "aligned_alloc's rule");
    p->slots = aligned_alloc(LEASH_CACHE_LINE, sizeof(struct leash_handle) * p->nslots);
    if (!p->target || !p->slots) {
        st = leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", name);
        goto fail;
    }
    memset(p->slots, 0, sizeof(struct leash_handle) * p->nslots);
    for (uint32_t i = 0; i < p->nslots; i++) {
        p->slots[i].magic = LEASH_SLOT_MAGIC;
        p->slots[i].index = i;
        p->slots[i].pool = p;
        atomic_store(&p->slots[i].suspected, UINT64_MAX);
    }
    if (adapter->describe)
        adapter->describe(ctx, p->target, p->target_desc, sizeof p->target_desc);
    else
        leash__redact(p->target, p->target_desc, sizeof p->target_desc);
    p->rng = (uint32_t)(leash__now_ns() ^ (uintptr_t)p) | 1u;
    atomic_store(&p->fork_gen, atomic_load(&leash__fork_gen));
    pthread_mutex_init(&p->lock, NULL);
    p->ctx = ctx;
    st = leash__register_pool(p);
    if (st != LEASH_OK) {
        pthread_mutex_destroy(&p->lock);
        p->ctx = NULL;
        goto fail;
    }
    if (adapter->attach)
        adapter->attach(ctx, p);
    leash__maintenance_nudge();
    return p;
fail:
    if (p) {
        free(p->slots);
        free(p->target);
        free(p);
    }
    if (ctx && adapter && adapter->ctx_free)
        adapter->ctx_free(ctx);
    return NULL;
}

leash_pool *leash_pool_open(const char *name, const leash_adapter *adapter, const char *target,
                            const leash_pool_options *opts)
{
    return leash_pool_open_with(name, adapter, NULL, target, opts);
}

const char *leash_pool_name(const leash_pool *p)
{
    return p && p->magic == LEASH_POOL_MAGIC ? p->name : "";
}

/* Takes every idle slot, off the stack (newest first) and out of threads' caches (pool
 * lock held); returns how many, into out. */
static uint32_t drain_locked(struct leash_pool *p, struct leash_handle **out)
{
    uint32_t n = 0;
    struct leash_handle *s;
    while ((s = take_idle(p)) != NULL)
        out[n++] = s;
    return n;
}

static void destroy_all(struct leash_pool *p, struct leash_handle **v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        leash__drop_conn(p, v[i]);
    pthread_mutex_lock(&p->lock);
    for (uint32_t i = 0; i < n; i++) {
        atomic_store(&v[i]->state, SLOT_EMPTY);
        atomic_store(&p->size, atomic_load(&p->size) - 1);
    }
    leash__signal_head_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* Destroys idle connections of a closed pool (also after a late push). */
void leash__pool_destroy_orphans(struct leash_pool *p)
{
    struct leash_handle **v = malloc(sizeof *v * p->nslots);
    if (!v)
        return;
    pthread_mutex_lock(&p->lock);
    uint32_t n = drain_locked(p, v);
    pthread_mutex_unlock(&p->lock);
    destroy_all(p, v, n);
    free(v);
}

void leash_pool_close(leash_pool *p)
{
    if (!p || p->magic != LEASH_POOL_MAGIC)
        return;
    if (ld(&p->fork_gen) != atomic_load(&leash__fork_gen))
        leash__after_fork();
    if (!leash__unregister_pool(p))
        return;
    if (p->adapter->detach)
        p->adapter->detach(p->ctx);
    pthread_mutex_lock(&p->lock);
    for (struct leash_waiter *w = p->wait_head; w; w = w->next)
        pthread_cond_signal(&w->cond);
    uint32_t orphaned = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        int expect = SLOT_HELD;
        if (atomic_compare_exchange_strong(&p->slots[i].state, &expect, SLOT_ORPHANED)) {
            count(&p->leaks_at_close);
            leash__count_problem(p, &p->slots[i], PROB_AT_CLOSE);
            orphaned++;
        }
    }
    pthread_mutex_unlock(&p->lock);
    leash__pool_destroy_orphans(p);
    if (orphaned) {
        leash__report_held(leash__dump_fd(), p, "still borrowed when the pool closed");
        leash__log(LEASH_LOG_WARN,
                   "pool \"%s\" closed with %u handles still borrowed "
                   "(leaks_at_close)",
                   p->name, orphaned);
    }
}

/* At shutdown: frees p and everything it owns. Connections still out are destroyed. */
void leash__pool_free(struct leash_pool *p)
{
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (s->conn)
            leash__drop_conn(p, s);
        s->magic = 0;
    }
    if (p->adapter->ctx_free && p->ctx)
        p->adapter->ctx_free(p->ctx);
    pthread_mutex_destroy(&p->lock);
    p->magic = 0;
    free(p->slots);
    free(p->target);
    free(p);
}

/* Locks (lock=1) or unlocks every pool's mutex, around fork(). */
void leash__pool_lock_all(int lock)
{
    for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all)) {
        if (lock)
            pthread_mutex_lock(&p->lock);
        else
            pthread_mutex_unlock(&p->lock);
    }
}

/* In a forked child: drop what the parent's threads were doing, abandon inherited idle
 * connections. Handles the forking thread held stay held; their release abandons them. */
void leash__pool_fixup_child(struct leash_pool *p)
{
    struct leash_handle **v = malloc(sizeof *v * (p->nslots ? p->nslots : 1));
    uint32_t n = 0;
    int me = leash__tid();
    pthread_mutex_lock(&p->lock);
    p->wait_head = p->wait_tail = NULL;
    atomic_store(&p->nwaiters, 0);
    atomic_store(&p->head, 0);
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        int st = atomic_load(&s->state);
        if (st == SLOT_HELD && atomic_load(&s->tid) == leash__fork_tid) {
            atomic_store(&s->tid, me); /* the forking thread's own handle, now ours */
            continue;
        }
        if (st == SLOT_HELD || st == SLOT_CONNECTING || st == SLOT_RETURNING) {
            /* The thread that owned it does not exist here. */
            if (st == SLOT_HELD)
                count(&p->discarded);
            st = SLOT_IDLE;
        }
        if (is_idle_state(st) && v) {
            atomic_store(&s->state, SLOT_RETURNING);
            v[n++] = s;
        }
    }
    atomic_store(&p->fork_gen, atomic_load(&leash__fork_gen));
    pthread_mutex_unlock(&p->lock);
    if (v) {
        destroy_all(p, v, n);
        free(v);
    }
}

/* ---- maintenance (called from the maintenance thread about every 100 ms) ---- */

static void check_leaks(struct leash_pool *p, uint64_t now)
{
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (atomic_load(&s->state) != SLOT_HELD)
            continue;
        uint64_t seq = ld(&s->acquired);
        uint64_t since = ld(&s->since_ns);
        if (now <= since || now - since <= p->leak_ns || ld(&s->suspected) == seq)
            continue;
        if (atomic_load(&s->state) != SLOT_HELD || ld(&s->acquired) != seq)
            continue;
        atomic_store(&s->suspected, seq);
        count(&p->leaks_suspected);
        leash__count_problem(p, s, PROB_SUSPECTED);
        const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
        int line = atomic_load_explicit(&s->line, memory_order_relaxed);
        leash__log(LEASH_LOG_WARN,
                   "pool \"%s\": suspected leak: handle held for %llu ms (threshold %llu ms), "
                   "borrowed at %s:%d in %s() by thread %d",
                   p->name, (unsigned long long)((now - since) / 1000000u),
                   (unsigned long long)(p->leak_ns / 1000000u), file ? file : "?", line,
                   atomic_load_explicit(&s->func, memory_order_relaxed),
                   atomic_load_explicit(&s->tid, memory_order_relaxed));
    }
}

/* Closes idle connections past their idle timeout (above min_idle) or lifetime. */
static void expire_idle(struct leash_pool *p, uint64_t now)
{
    uint32_t due = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (!is_idle_state(atomic_load(&s->state)))
            continue;
        if (now >= ld(&s->expire_ns) || now - ld(&s->idle_since) > ld(&s->idle_limit))
            due++;
    }
    if (!due)
        return;
    struct leash_handle **v = malloc(sizeof *v * p->nslots * 2);
    if (!v)
        return;
    struct leash_handle **gone = v + p->nslots;
    uint32_t ngone = 0;
    pthread_mutex_lock(&p->lock);
    uint32_t n = drain_locked(p, v); /* newest first */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct leash_handle *s = v[i];
        int old = now >= ld(&s->expire_ns);
        int stale = now - ld(&s->idle_since) > ld(&s->idle_limit);
        if (old || (stale && kept >= (uint32_t)p->min_idle))
            gone[ngone++] = s;
        else
            v[kept++] = s;
    }
    for (uint32_t i = kept; i-- > 0;) {
        atomic_store(&v[i]->state, SLOT_IDLE);
        stack_push(p, v[i]);
    }
    pthread_mutex_unlock(&p->lock);
    for (uint32_t i = 0; i < ngone; i++)
        atomic_store(&gone[i]->state, SLOT_RETURNING);
    destroy_all(p, gone, ngone);
    if (atomic_load(&p->nwaiters))
        leash__wake_head(p);
    free(v);
}

/* Keeps min_idle connections warm; backs off after a failed connect. */
static void refill(struct leash_pool *p, uint64_t now)
{
    while (!atomic_load(&p->closed) && now >= p->refill_after) {
        uint32_t idle = 0;
        for (uint32_t i = 0; i < p->nslots; i++)
            idle += is_idle_state(atomic_load(&p->slots[i].state));
        if (idle >= (uint32_t)p->min_idle)
            return;
        pthread_mutex_lock(&p->lock);
        struct leash_handle *s = p->wait_head ? NULL : leash__reserve_locked(p);
        pthread_mutex_unlock(&p->lock);
        if (!s)
            return;
        if (leash__connect_into(p, s) != LEASH_OK) {
            leash__slot_free(p, s);
            p->refill_backoff = p->refill_backoff ? p->refill_backoff * 2 : 1000000000ull;
            if (p->refill_backoff > 30000000000ull)
                p->refill_backoff = 30000000000ull;
            p->refill_after = now + p->refill_backoff;
            leash__log(LEASH_LOG_WARN, "pool \"%s\": keeping min_idle warm: %s", p->name,
                       leash_last_error());
            return;
        }
        p->refill_backoff = 0;
        atomic_store_explicit(&s->state, SLOT_IDLE, memory_order_relaxed);
        stack_push(p, s);
        if (atomic_load(&p->nwaiters))
            leash__wake_head(p);
    }
}

void leash__pool_maintain(struct leash_pool *p, uint64_t now)
{
    if (atomic_load(&p->closed))
        return;
    if (p->leak_ns)
        check_leaks(p, now);
    expire_idle(p, now);
    if (p->min_idle)
        refill(p, now);
}

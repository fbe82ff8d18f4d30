/* Pool lifecycle: options, open, close and free, the fork fix-up, and the periodic
 * maintenance (leak threshold, idle timeout, max lifetime, keepalive, shrink, min_idle, the
 * probe of a backend that is down). */
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
    .max_connecting = 2,
    .keepalive_ms = 120000,
    .connect_backoff_ms = 1000,
};

/* ---- options ---- */

static int check_opt(const char *field, int v, int min)
{
    if (v < min) {
        leash__fail(LEASH_EINVAL, "pool option %s is %d: must be >= %d (0 means the default%s)",
                    field, v, min, min < 0 ? ", -1 off" : "");
        return 0;
    }
    return 1;
}

static leash_status resolve_options(struct leash_pool *p, const leash_pool_options *o)
{
    leash_pool_options d = o ? *o : defaults;
    if (!check_opt("max_size", d.max_size, 0) || !check_opt("min_idle", d.min_idle, 0) ||
        !check_opt("acquire_timeout_ms", d.acquire_timeout_ms, 0) ||
        !check_opt("max_waiters", d.max_waiters, 0) ||
        !check_opt("idle_timeout_ms", d.idle_timeout_ms, 0) ||
        !check_opt("max_lifetime_ms", d.max_lifetime_ms, 0) ||
        !check_opt("validate_idle_ms", d.validate_idle_ms, 0) ||
        !check_opt("leak_threshold_ms", d.leak_threshold_ms, 0) ||
        !check_opt("max_connecting", d.max_connecting, 0) ||
        !check_opt("keepalive_ms", d.keepalive_ms, -1) ||
        !check_opt("connect_backoff_ms", d.connect_backoff_ms, -1))
        return LEASH_EINVAL;
#define DEFAULT(f)                                                                                 \
    if (d.f == 0)                                                                                  \
        d.f = defaults.f;
    DEFAULT(max_size)
    DEFAULT(acquire_timeout_ms)
    DEFAULT(idle_timeout_ms)
    DEFAULT(max_lifetime_ms)
    DEFAULT(validate_idle_ms)
    DEFAULT(max_connecting)
    DEFAULT(keepalive_ms)
    DEFAULT(connect_backoff_ms)
#undef DEFAULT
    if (d.max_size > LEASH_POOL_SIZE_MAX)
        return leash__fail(LEASH_EINVAL, "pool option max_size %d is over the limit %d", d.max_size,
                           LEASH_POOL_SIZE_MAX);
    if (d.min_idle > d.max_size)
        return leash__fail(LEASH_EINVAL, "pool option min_idle %d is more than max_size %d",
                           d.min_idle, d.max_size);
    atomic_store(&p->nslots, (uint32_t)d.max_size);
    atomic_store(&p->min_idle, d.min_idle);
    p->timeout_ms = d.acquire_timeout_ms;
    p->max_waiters = d.max_waiters;
    p->max_connecting = d.max_connecting;
    p->idle_ns = (uint64_t)d.idle_timeout_ms * 1000000u;
    p->lifetime_ns = (uint64_t)d.max_lifetime_ms * 1000000u;
    p->validate_ns = (uint64_t)d.validate_idle_ms * 1000000u;
    p->validate_raw = leash__clock_from_ns(p->validate_ns);
    p->leak_ns = (uint64_t)d.leak_threshold_ms * 1000000u;
    p->keepalive_ns = d.keepalive_ms < 0 ? 0 : (uint64_t)d.keepalive_ms * 1000000u;
    p->backoff_max_ns = d.connect_backoff_ms < 0 ? 0 : (uint64_t)d.connect_backoff_ms * 1000000u;
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

/* A new slot's memo of its last borrow's call site: an address no caller passes. */
static const char memo_unset[1];

void leash__slots_init(struct leash_pool *p, struct leash_handle *seg, uint32_t first)
{
    memset(seg, 0, sizeof(struct leash_handle) * LEASH_SEG_SLOTS);
    for (uint32_t i = 0; i < LEASH_SEG_SLOTS; i++) {
        seg[i].magic = LEASH_SLOT_MAGIC;
        seg[i].index = first + i;
        seg[i].pool = p;
        seg[i].memo_file = memo_unset;
        atomic_store(&seg[i].suspected, UINT64_MAX);
        atomic_store(&seg[i].acc_site, UINT32_MAX);
        atomic_store(&seg[i].prev_site, UINT32_MAX);
    }
}

/* A new target record for t (copied), with its password-free description. */
struct leash_target *leash__target_new(struct leash_pool *p, const char *t)
{
    struct leash_target *nt = leash__calloc(1, sizeof *nt);
    if (!nt)
        return NULL;
    nt->target = leash__strdup(t ? t : "");
    if (!nt->target) {
        leash__free(nt);
        return NULL;
    }
    if (p->adapter->describe)
        p->adapter->describe(p->ctx, nt->target, nt->desc, sizeof nt->desc);
    else
        leash__redact(nt->target, nt->desc, sizeof nt->desc);
    return nt;
}

static void targets_free(struct leash_target *t)
{
    while (t) {
        struct leash_target *prev = t->prev;
        leash__free(t->target);
        leash__free(t);
        t = prev;
    }
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
    p = leash__aligned_alloc(LEASH_CACHE_LINE, (sizeof *p + LEASH_CACHE_LINE - 1) /
                                                   LEASH_CACHE_LINE * LEASH_CACHE_LINE);
    if (!p) {
        st = leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", name);
        goto fail;
    }
    memset(p, 0, sizeof *p);
    st = resolve_options(p, opts);
    if (st != LEASH_OK)
        goto fail;
    static _Atomic uint32_t next_id;
    p->id = atomic_fetch_add(&next_id, 1);
    memcpy(p->name, name, strlen(name) + 1);
    p->adapter = adapter;
    p->ctx = ctx;
    if (adapter->reset)
        atomic_store(&p->attn, ATTN_RESET);
    struct leash_target *t = leash__target_new(p, target);
    uint32_t nseg = (atomic_load(&p->nslots) + LEASH_SEG_SLOTS - 1) / LEASH_SEG_SLOTS;
    int ok = t != NULL;
    for (uint32_t i = 0; ok && i < nseg; i++) {
        struct leash_handle *seg =
            leash__aligned_alloc(LEASH_CACHE_LINE, sizeof(struct leash_handle) * LEASH_SEG_SLOTS);
        if (!seg || ((uintptr_t)seg & ~LEASH_ADDR_MASK) != 0) {
            leash__free(seg);
            ok = 0;
            break;
        }
        leash__slots_init(p, seg, i * LEASH_SEG_SLOTS);
        atomic_store(&p->seg[i], seg);
        atomic_store(&p->nalloc, (i + 1) * LEASH_SEG_SLOTS);
    }
    if (!ok) {
        targets_free(t);
        st = leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", name);
        goto fail;
    }
    atomic_store(&p->target, t);
    p->rng = (uint32_t)(leash__mono_ns() ^ (uintptr_t)p) | 1u;
    atomic_store(&p->fork_gen, atomic_load(&leash__fork_gen));
    pthread_mutex_init(&p->lock, NULL);
    p->magic = LEASH_POOL_MAGIC;
    st = leash__register_pool(p);
    if (st != LEASH_OK) {
        pthread_mutex_destroy(&p->lock);
        p->magic = 0;
        goto fail;
    }
    if (adapter->attach)
        adapter->attach(ctx, p);
    leash__maintenance_nudge();
    return p;
fail:
    if (p) {
        for (uint32_t i = 0; i < LEASH_SEGS; i++)
            leash__free(atomic_load(&p->seg[i]));
        targets_free(atomic_load(&p->target));
        leash__free(p);
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

/* ---- close ---- */

/* Takes every idle slot (off the stack, out of threads' caches) into v; returns how many.
 * v has room for slots_allocated(p). */
static uint32_t take_all_idle(struct leash_pool *p, struct leash_handle **v)
{
    uint32_t n = 0;
    struct leash_handle *s;
    while ((s = take_idle(p)) != NULL)
        v[n++] = s;
    return n;
}

/* Destroys the connections of v (owned by the caller) under reason why; frees the slots. */
static void destroy_all(struct leash_pool *p, struct leash_handle **v, uint32_t n, int why)
{
    for (uint32_t i = 0; i < n; i++)
        leash__drop_conn(p, v[i], why);
    pthread_mutex_lock(&p->lock);
    for (uint32_t i = 0; i < n; i++) {
        atomic_store_explicit(&v[i]->retire, 0, memory_order_relaxed);
        atomic_store_explicit(&v[i]->recheck, 0, memory_order_relaxed);
        slot_set(v[i], SLOT_EMPTY);
        atomic_store(&p->size, atomic_load(&p->size) - 1);
    }
    leash__signal_head_locked(p);
    leash__wait_kick_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* Destroys the idle connections of a closed pool (also after a late push). */
void leash__pool_destroy_orphans(struct leash_pool *p)
{
    for (;;) {
        struct leash_handle *v[64];
        uint32_t n = 0;
        struct leash_handle *s;
        while (n < 64 && (s = take_idle(p)) != NULL)
            v[n++] = s;
        if (!n)
            return;
        destroy_all(p, v, n, GONE_CLOSED);
    }
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
    leash__wake_all_locked(p);
    uint32_t orphaned = 0;
    uint64_t now = leash__clock_raw();
    FOR_EACH_SLOT(p, s)
    {
        if (slot_cas(s, SLOT_HELD, SLOT_ORPHANED)) {
            /* The borrow ends here (counted, and its hold time observed); a late release
             * only frees the connection. */
            uint64_t held = leash__clock_ns(ld(&s->since), now);
            atomic_fetch_add_explicit(&s->hold_ns_total, held, memory_order_relaxed);
            count_max(&s->hold_ns_max, held);
            atomic_fetch_add_explicit(&s->hist_hold[leash__hist_bucket(held)], 1,
                                      memory_order_relaxed);
            atomic_fetch_add_explicit(&s->n_at_close, 1, memory_order_release);
            leash__count_problem(p, atomic_load_explicit(&s->file, memory_order_relaxed),
                                 atomic_load_explicit(&s->line, memory_order_relaxed),
                                 atomic_load_explicit(&s->func, memory_order_relaxed),
                                 PROB_AT_CLOSE);
            orphaned++;
        }
    }
    pthread_mutex_unlock(&p->lock);
    leash__pool_destroy_orphans(p);
    if (orphaned) {
        leash__report_held(leash__dump_fd(), p, "still borrowed when the pool closed");
        leash__log(LEASH_LOG_WARN, "pool \"%s\" closed with %u %s still borrowed (leaks_at_close)",
                   p->name, orphaned, orphaned == 1 ? "handle" : "handles");
    }
}

void leash__pool_drop_all(struct leash_pool *p)
{
    FOR_EACH_SLOT(p, s)
    {
        if (s->conn)
            leash__drop_conn(p, s, GONE_CLOSED);
    }
}

/* At shutdown: frees p and everything it owns. Connections still out are destroyed. */
void leash__pool_free(struct leash_pool *p)
{
    FOR_EACH_SLOT(p, s)
    {
        if (s->conn)
            leash__drop_conn(p, s, GONE_CLOSED);
        s->magic = 0;
    }
    if (p->adapter->ctx_free && p->ctx)
        p->adapter->ctx_free(p->ctx);
    pthread_mutex_destroy(&p->lock);
    p->magic = 0;
    for (uint32_t i = 0; i < LEASH_SEGS; i++)
        leash__free(atomic_load(&p->seg[i]));
    targets_free(atomic_load(&p->target));
    for (int i = 0; i < atomic_load(&p->npeers); i++)
        leash__free((void *)p->peers[i]);
    struct leash_hooks_box *hb = atomic_load(&p->hooks);
    for (int pass = 0; pass < 2; pass++, hb = p->hooks_parked)
        while (hb) {
            struct leash_hooks_box *prev = hb->prev;
            leash__free(hb);
            hb = prev;
        }
    leash__free(p);
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

/* In a forked child: every borrow made before the fork is over (its handle value is stale
 * here: using it is misuse, releasing it does nothing), the parent's waiters and connects do
 * not exist, and inherited connections are abandoned, never spoken on. */
void leash__pool_fixup_child(struct leash_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->wait_head = p->wait_tail = NULL;
    atomic_store(&p->nwaiters, 0);
    atomic_store(&p->head, 0);
    atomic_store(&p->connecting, 0);
    pthread_mutex_unlock(&p->lock);
    FOR_EACH_SLOT(p, s)
    {
        uint64_t w = atomic_load(&s->word);
        int st = w_state(w);
        if (st == SLOT_EMPTY)
            continue;
        if (st == SLOT_HELD) {
            atomic_store(&s->pre_fork, w_borrow(w));
            /* The borrow ends here, as a discard, with its hold observed. */
            uint64_t held = leash__clock_ns(ld(&s->since), leash__clock_raw());
            atomic_fetch_add(&s->hold_ns_total, held);
            count_max(&s->hold_ns_max, held);
            atomic_fetch_add(&s->hist_hold[leash__hist_bucket(held)], 1);
            atomic_fetch_add(&s->n_discarded, 1);
        }
        if (st == SLOT_CONNECTING)
            s->conn = NULL; /* the parent's connect thread owns whatever it makes */
        /* Whatever its state, the parent's thread that owned it is not here. */
        atomic_store(&s->word, w_make(w_borrow(w), SLOT_RETURNING));
        leash__drop_conn(p, s, GONE_CLOSED); /* abandons: made in the parent */
        pthread_mutex_lock(&p->lock);
        atomic_store(&s->retire, 0);
        atomic_store(&s->word, w_make(w_borrow(w), SLOT_EMPTY));
        atomic_store(&p->size, atomic_load(&p->size) - 1);
        pthread_mutex_unlock(&p->lock);
    }
    atomic_store(&p->fork_gen, atomic_load(&leash__fork_gen));
}

/* ---- maintenance (the maintenance thread, about every 100 ms) ---- */

static void check_leaks(struct leash_pool *p)
{
    uint64_t now = leash__clock_raw();
    FOR_EACH_SLOT(p, s)
    {
        uint64_t w = slot_word(s);
        if (w_state(w) != SLOT_HELD)
            continue;
        uint64_t held = leash__clock_ns(ld(&s->since), now);
        if (held <= p->leak_ns || ld(&s->suspected) == w_borrow(w))
            continue;
        const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
        const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
        int line = atomic_load_explicit(&s->line, memory_order_relaxed);
        int tid = atomic_load_explicit(&s->tid, memory_order_relaxed);
        if (slot_word(s) != w) /* returned or lent again while we read */
            continue;
        atomic_store(&s->suspected, w_borrow(w));
        count(&p->leaks_suspected);
        leash__count_problem(p, file, line, func, PROB_SUSPECTED);
        leash__log(LEASH_LOG_WARN,
                   "pool \"%s\": suspected leak: handle held for %llu ms (threshold %llu ms), "
                   "borrowed at %s:%d in %s() by thread %d",
                   p->name, (unsigned long long)(held / 1000000u),
                   (unsigned long long)(p->leak_ns / 1000000u), file ? file : "?", line,
                   func ? func : "?", tid);
    }
}

/* What maintenance does to one idle connection it took. */
enum { KEEP, DROP_IDLE, DROP_LIFETIME, DROP_SURPLUS, DROP_RETIRED, CHECK };

static int idle_verdict(struct leash_pool *p, struct leash_handle *s, uint64_t now, uint32_t kept,
                        uint32_t *size)
{
    if (atomic_load(&s->retire) || ld(&s->conn_epoch) != ld(&p->evict_epoch))
        return DROP_RETIRED;
    if (now >= ld(&s->expire_ns))
        return DROP_LIFETIME;
    if (*size > atomic_load(&p->nslots)) {
        (*size)--;
        return DROP_SURPLUS;
    }
    /* Idle time on the exact clock (a connection returned after this pass began is 0 idle) */
    uint64_t raw = leash__clock_raw();
    uint64_t idle = leash__clock_ns(ld(&s->idle_since), raw);
    if (idle > ld(&s->idle_limit) && kept >= (uint32_t)atomic_load(&p->min_idle))
        return DROP_IDLE;
    if (p->adapter->validate && ((p->keepalive_ns && idle > p->keepalive_ns &&
                                  leash__clock_ns(ld(&s->checked_ns), raw) > p->keepalive_ns) ||
                                 atomic_load(&s->recheck)))
        return CHECK;
    return KEEP;
}

/* Idle connections: expire (idle timeout above min_idle, lifetime), retire (evicted,
 * surplus after a shrink) and keep alive (validated off the borrowers' path, taken off the
 * stack meanwhile so nobody waits behind the check). */
static void tend_idle(struct leash_pool *p, uint64_t now)
{
    /* A look without taking anything first: most ticks there is nothing to do. */
    uint32_t due = 0, idle = 0, stale = 0;
    uint32_t size = atomic_load(&p->size);
    FOR_EACH_SLOT(p, s)
    {
        if (!is_idle_state(slot_state(s)))
            continue;
        uint32_t sz = size;
        int v = idle_verdict(p, s, now, UINT32_MAX, &sz);
        idle++;
        stale += v == DROP_IDLE;
        due += v != KEEP && v != DROP_IDLE;
    }
    if (!due && !(stale && idle > (uint32_t)atomic_load(&p->min_idle)) &&
        size <= atomic_load(&p->nslots))
        return;
    uint32_t cap = slots_allocated(p);
    struct leash_handle **v = leash__malloc(sizeof *v * cap * 3);
    if (!v)
        return;
    struct leash_handle **gone = v + cap, **check = v + 2 * cap;
    uint32_t ngone = 0, kept = 0, nchecks = 0;
    uint32_t n = take_all_idle(p, v); /* newest first */
    size = atomic_load(&p->size);
    for (uint32_t i = 0; i < n; i++) {
        struct leash_handle *s = v[i];
        int verdict = idle_verdict(p, s, now, kept, &size);
        if (verdict == CHECK && atomic_load(&p->checking))
            verdict = KEEP; /* one keepalive job per pool at a time */
        if (verdict == KEEP) {
            v[kept++] = s;
        } else if (verdict == CHECK) {
            check[nchecks++] = s;
        } else {
            int why = verdict == DROP_IDLE       ? GONE_IDLE
                      : verdict == DROP_LIFETIME ? GONE_LIFETIME
                      : verdict == DROP_SURPLUS  ? GONE_EVICTED
                      : atomic_load(&s->retire)  ? atomic_load(&s->retire) - 1
                                                 : GONE_EVICTED;
            leash__drop_conn(p, s, why);
            gone[ngone++] = s;
        }
    }
    /* The ones kept go back at once, oldest first so the newest stays on top (LIFO): only
     * the ones being checked are off the stack while the (possibly slow) checks run. */
    for (uint32_t i = kept; i-- > 0;)
        leash__push_idle(p, v[i]);
    if (ngone)
        destroy_all(p, gone, ngone, GONE_CLOSED); /* connections already dropped above */
    if (nchecks)
        leash__check_start(p, check, nchecks);
    leash__free(v);
}

/* Keeps min_idle connections warm, and probes a backend that is down, with connect jobs. */
static void refill(struct leash_pool *p)
{
    pthread_mutex_lock(&p->lock);
    uint32_t idle = 0;
    FOR_EACH_SLOT(p, s)
    idle += is_idle_state(slot_state(s));
    idle += (uint32_t)atomic_load(&p->checking_one); /* idle, only being checked */
    uint32_t want = (uint32_t)atomic_load(&p->min_idle);
    uint32_t coming = atomic_load(&p->connecting);
    while (idle + coming < want && !p->wait_head) {
        if (leash__connect_start_locked(p, NULL) != 1)
            break;
        coming++;
    }
    /* A pool that is down is probed even with nobody borrowing, so health and the first
     * borrower after the backend is back find it up. */
    if (pool_down(p) && !coming)
        leash__connect_start_locked(p, NULL);
    pthread_mutex_unlock(&p->lock);
}

void leash__pool_maintain(struct leash_pool *p, uint64_t now)
{
    if (atomic_load(&p->closed))
        return;
    if (p->leak_ns)
        check_leaks(p);
    tend_idle(p, now);
    if (atomic_load(&p->min_idle) || pool_down(p))
        refill(p);
}

/* Runtime control of an open pool: evict, retarget, resize, drain, health, hooks. */
#include "pool.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static struct leash_pool *pool_arg(leash_pool *p, const char *fn)
{
    if (!p || p->magic != LEASH_POOL_MAGIC) {
        leash__fail(LEASH_EINVAL, "%s: %s", fn, p ? "not a pool" : "pool is NULL");
        return NULL;
    }
    if (ld(&p->fork_gen) != atomic_load(&leash__fork_gen))
        leash__after_fork();
    return p;
}

/* Retires the connections for which peer matches (NULL: all): borrowed ones on release,
 * idle ones now. Returns how many. */
static int retire_where(struct leash_pool *p, const char *peer, int why)
{
    int n = 0;
    FOR_EACH_SLOT(p, s)
    {
        int st = slot_state(s);
        if (st == SLOT_EMPTY || st == SLOT_CONNECTING)
            continue;
        const char *sp = atomic_load_explicit(&s->peer, memory_order_relaxed);
        if (peer && (!sp || strcmp(sp, peer) != 0))
            continue;
        int expect = 0;
        if (atomic_compare_exchange_strong(&s->retire, &expect, 1 + why))
            n++;
    }
    /* Idle ones go now; the check at lend catches one taken meanwhile. */
    struct leash_handle *v[64];
    for (;;) {
        uint32_t k = 0, put = 0;
        struct leash_handle *back[64];
        struct leash_handle *s;
        while (k < 64 && (s = take_idle(p)) != NULL) {
            if (atomic_load(&s->retire))
                v[k++] = s;
            else
                back[put++] = s;
            if (put == 64)
                break;
        }
        for (uint32_t i = put; i-- > 0;)
            leash__push_idle(p, back[i]);
        for (uint32_t i = 0; i < k; i++)
            leash__retire(p, v[i], atomic_load(&v[i]->retire) - 1);
        if (!k)
            break;
    }
    return n;
}

int leash_pool_evict(leash_pool *p)
{
    if (!pool_arg(p, "leash_pool_evict"))
        return -1;
    if (atomic_load(&p->closed)) {
        leash__fail(LEASH_ECLOSED, "leash_pool_evict: pool \"%s\" is closed", p->name);
        return -1;
    }
    /* Connects in flight land retired: they may be to the old target. */
    atomic_fetch_add(&p->evict_epoch, 1);
    int n = retire_where(p, NULL, GONE_EVICTED);
    leash__log(LEASH_LOG_INFO, "pool \"%s\": evicted %d %s", p->name, n,
               n == 1 ? "connection" : "connections");
    return n;
}

int leash_pool_evict_peer(leash_pool *p, const char *peer)
{
    if (!pool_arg(p, "leash_pool_evict_peer"))
        return -1;
    if (!peer) {
        leash__fail(LEASH_EINVAL, "leash_pool_evict_peer: peer is NULL");
        return -1;
    }
    if (atomic_load(&p->closed)) {
        leash__fail(LEASH_ECLOSED, "leash_pool_evict_peer: pool \"%s\" is closed", p->name);
        return -1;
    }
    int n = retire_where(p, peer, GONE_EVICTED);
    atomic_fetch_add(&p->retired_peer, (uint64_t)n);
    if (n)
        leash__log(LEASH_LOG_INFO, "pool \"%s\": retired %d %s to %s", p->name, n,
                   n == 1 ? "connection" : "connections", peer);
    return n;
}

int leash_pool_check_peer(leash_pool *p, const char *peer)
{
    if (!pool_arg(p, "leash_pool_check_peer"))
        return -1;
    if (atomic_load(&p->closed)) {
        leash__fail(LEASH_ECLOSED, "leash_pool_check_peer: pool \"%s\" is closed", p->name);
        return -1;
    }
    int n = 0;
    FOR_EACH_SLOT(p, s)
    {
        if (!is_idle_state(slot_state(s)))
            continue;
        const char *sp = atomic_load_explicit(&s->peer, memory_order_relaxed);
        if (peer && (!sp || strcmp(sp, peer) != 0))
            continue;
        atomic_store(&s->recheck, 1);
        n++;
    }
    return n;
}

leash_status leash_pool_retarget(leash_pool *p, const char *target)
{
    if (!pool_arg(p, "leash_pool_retarget"))
        return LEASH_EINVAL;
    if (!target)
        return leash__fail(LEASH_EINVAL, "leash_pool_retarget: pool \"%s\": target is NULL",
                           p->name);
    if (atomic_load(&p->closed))
        return leash__fail(LEASH_ECLOSED, "leash_pool_retarget: pool \"%s\" is closed", p->name);
    /* Everything that can fail for want of memory first: once the adapter has taken the
     * target, nothing may refuse it. */
    struct leash_target *t = leash__target_new(p, target);
    if (!t)
        return leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", p->name);
    if (p->adapter->retarget) {
        char err[256] = "";
        if (p->adapter->retarget(p->ctx, target, err, sizeof err) != 0) {
            char clean[256];
            leash__redact(err[0] ? err : "the adapter refused it", clean, sizeof clean);
            leash__free(t->target);
            leash__free(t);
            return leash__fail(LEASH_EINVAL, "pool \"%s\": new target refused: %s", p->name, clean);
        }
    }
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->live_seq, 0); /* the new target's own description until it connects */
    t->prev = atomic_load(&p->target);
    /* release: pairs with the acquire in pool_target (connect jobs, dumps) */
    atomic_store_explicit(&p->target, t, memory_order_release);
    /* A new backend: whatever the old one's state, the next borrower tries it at once. */
    leash__pool_set_last_error_locked(p, "");
    atomic_store(&p->consecutive_failures, 0);
    atomic_store(&p->down_since_ns, 0);
    p->next_attempt_ns = 0;
    p->backoff_ns = 0;
    leash__wake_all_locked(p);
    pthread_mutex_unlock(&p->lock);
    leash__log(LEASH_LOG_INFO, "pool \"%s\": new target %s", p->name, t->desc);
    leash_pool_evict(p);
    return LEASH_OK;
}

leash_status leash_pool_resize(leash_pool *p, int max_size, int min_idle)
{
    if (!pool_arg(p, "leash_pool_resize"))
        return LEASH_EINVAL;
    if (atomic_load(&p->closed))
        return leash__fail(LEASH_ECLOSED, "leash_pool_resize: pool \"%s\" is closed", p->name);
    pthread_mutex_lock(&p->lock);
    int ms = max_size == -1 ? (int)atomic_load(&p->nslots) : max_size;
    int mi = min_idle == -1 ? atomic_load(&p->min_idle) : min_idle;
    leash_status st = LEASH_OK;
    if (max_size < -1 || ms < 1 || ms > LEASH_POOL_SIZE_MAX)
        st = leash__fail(LEASH_EINVAL,
                         "leash_pool_resize: pool \"%s\": max_size %d (use 1..%d, "
                         "or -1 to keep it)",
                         p->name, max_size, LEASH_POOL_SIZE_MAX);
    else if (min_idle < -1 || mi > ms)
        st = leash__fail(LEASH_EINVAL,
                         "leash_pool_resize: pool \"%s\": min_idle %d with max_size "
                         "%d (use 0..max_size, or -1 to keep it)",
                         p->name, min_idle, ms);
    if (st == LEASH_OK) {
        if ((uint32_t)ms < atomic_load(&p->nslots))
            atomic_fetch_or(&p->attn, ATTN_SHRUNK);
        atomic_store(&p->nslots, (uint32_t)ms);
        atomic_store(&p->min_idle, mi);
        leash__wake_all_locked(p); /* more room: queued waiters may connect, in order */
    }
    pthread_mutex_unlock(&p->lock);
    if (st == LEASH_OK)
        leash__maintenance_nudge(); /* idle surplus and min_idle, within a tick */
    return st;
}

/* Slots between owners (RETURNING): being lent, checked or given back. */
static int in_transit(struct leash_pool *p)
{
    FOR_EACH_SLOT(p, s)
    {
        if (w_state(atomic_load(&s->word)) == SLOT_RETURNING) /* seq_cst: see pool.c */
            return 1;
    }
    return 0;
}

leash_status leash_pool_drain(leash_pool *p, int timeout_ms)
{
    if (!pool_arg(p, "leash_pool_drain"))
        return LEASH_EINVAL;
    if (timeout_ms < -1)
        return leash__fail(LEASH_EINVAL, "leash_pool_drain: timeout_ms %d", timeout_ms);
    if (atomic_load(&p->closed))
        return leash__fail(LEASH_ECLOSED, "leash_pool_drain: pool \"%s\" is closed", p->name);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_or(&p->attn, ATTN_DRAINING);
    atomic_store(&p->draining, 1);
    leash__wake_all_locked(p);
    pthread_mutex_unlock(&p->lock);
    uint64_t deadline =
        timeout_ms < 0 ? UINT64_MAX : leash__mono_ns() + (uint64_t)timeout_ms * 1000000u;
    /* Held handles, and slots being lent or returned right now (an acquire that took one
     * before it saw draining gives it back; see refuse_draining in pool.c). */
    while ((leash__pool_in_use(p) > 0 || in_transit(p)) && leash__mono_ns() < deadline) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    uint32_t left = leash__pool_in_use(p);
    leash_pool_close(p);
    if (left)
        return leash__fail(LEASH_ETIMEDOUT,
                           "leash_pool_drain: pool \"%s\": %u %s still borrowed after %d ms "
                           "(closed all the same; counted leaks_at_close)",
                           p->name, left, left == 1 ? "handle" : "handles", timeout_ms);
    return LEASH_OK;
}

leash_status leash_pool_health(leash_pool *p)
{
    if (!p || p->magic != LEASH_POOL_MAGIC)
        return leash__fail(LEASH_EINVAL, "leash_pool_health: %s",
                           p ? "not a pool" : "pool is NULL");
    if (atomic_load(&p->closed) || atomic_load(&p->draining))
        return leash__fail(LEASH_ECLOSED, "pool \"%s\" is %s", p->name,
                           atomic_load(&p->closed) ? "closed" : "draining");
    if (pool_down(p)) {
        char msg[600];
        leash__down_message(p, msg, sizeof msg);
        return leash__fail(LEASH_ECONNECT, "%s", msg);
    }
    /* Without fail-fast (connect_backoff_ms -1) the pool is never "down", but a probe must
     * still see a backend that refuses every connect. */
    uint32_t failed = atomic_load(&p->consecutive_failures);
    if (failed >= 2) {
        char last[sizeof p->last_error[0]];
        leash__pool_last_error(p, last, sizeof last);
        return leash__fail(LEASH_ECONNECT,
                           "pool \"%s\" (%s): backend %s: the last %u connect attempts failed; "
                           "last error: %s",
                           p->name, p->adapter->kind, pool_target(p)->desc, failed,
                           last[0] ? last : "?");
    }
    return LEASH_OK;
}

const char *leash_pool_target(const leash_pool *p)
{
    if (!p || p->magic != LEASH_POOL_MAGIC)
        return "";
    return pool_target(p)->desc;
}

leash_status leash_pool_set_hooks(leash_pool *p, const leash_hooks *hooks, void *arg)
{
    if (!pool_arg(p, "leash_pool_set_hooks"))
        return LEASH_EINVAL;
    struct leash_hooks_box *nb = NULL;
    if (hooks) {
        nb = leash__calloc(1, sizeof *nb);
        if (!nb)
            return leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", p->name);
        nb->hooks = *hooks;
        nb->arg = arg;
    }
    pthread_mutex_lock(&p->lock);
    struct leash_hooks_box *old = atomic_load(&p->hooks);
    /* Removed sets are kept (a thread may be calling one) until the pool is freed: linked
     * from the new set, or parked when hooks go away. */
    if (nb) {
        nb->prev = old;
    } else if (old) {
        struct leash_hooks_box *tail = old;
        while (tail->prev)
            tail = tail->prev;
        tail->prev = p->hooks_parked;
        p->hooks_parked = old;
    }
    if (nb)
        atomic_fetch_or(&p->attn, ATTN_HOOKS);
    /* release: pairs with the acquire in pool_hooks */
    atomic_store_explicit(&p->hooks, nb, memory_order_release);
    if (!nb)
        atomic_fetch_and(&p->attn, ~(uint32_t)ATTN_HOOKS);
    pthread_mutex_unlock(&p->lock);
    return LEASH_OK;
}

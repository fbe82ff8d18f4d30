/* Connects: each runs on a thread of leash's own (a connect job), so a borrower whose
 * deadline passes returns while the connect goes on; a connection that arrives later joins
 * the pool. Also the backend's up/down state: after two failures in a row the pool is down,
 * one probe at a time, spaced by a backoff doubling from BACKOFF_MIN_NS up to
 * connect_backoff_ms. */
#include "pool.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_NS 50000000ull /* the first pause once down */

struct job {
    struct job *next;
    pthread_t thread;
    _Atomic int done;
    struct leash_pool *pool;
    struct leash_handle *slot;
    struct leash_waiter *requester; /* under the pool lock */
    int probe;                      /* started while the pool was down */
    int validate;                   /* validates slot (an idle connection) instead */
    /* a keepalive job: idle slots (owned by the job) to validate */
    uint32_t nchecks;
    struct leash_handle *checks[];
};

/* Every job thread not yet joined. Lock order: a pool's lock, then jobs_lock. */
static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct job *jobs;

/* ---- slots and connections ---- */

struct leash_handle *leash__reserve_locked(struct leash_pool *p)
{
    uint32_t size = atomic_load(&p->size);
    if (size >= atomic_load(&p->nslots))
        return NULL;
    uint32_t n = slots_allocated(p);
    for (uint32_t i = 0; i < n; i++) {
        struct leash_handle *s = slot_at(p, i);
        if (slot_cas(s, SLOT_EMPTY, SLOT_CONNECTING)) {
            atomic_store(&p->size, size + 1);
            return s;
        }
    }
    /* Every allocated slot is in use but max_size allows more: a new segment. */
    if (n / LEASH_SEG_SLOTS >= LEASH_SEGS)
        return NULL;
    struct leash_handle *seg =
        leash__aligned_alloc(LEASH_CACHE_LINE, sizeof(struct leash_handle) * LEASH_SEG_SLOTS);
    if (!seg)
        return NULL;
    if (((uintptr_t)seg & ~LEASH_ADDR_MASK) != 0) { /* cannot carry tags */
        leash__free(seg);
        return NULL;
    }
    leash__slots_init(p, seg, n);
    atomic_store_explicit(&p->seg[n / LEASH_SEG_SLOTS], seg, memory_order_relaxed);
    /* release: publishes the segment (pairs with the acquire in slots_allocated) */
    atomic_store_explicit(&p->nalloc, n + LEASH_SEG_SLOTS, memory_order_release);
    struct leash_handle *s = slot_at(p, n);
    slot_set(s, SLOT_CONNECTING);
    atomic_store(&p->size, size + 1);
    return s;
}

static const char *const gone_name[GONE_REASONS] = {"broken",  "dirty",   "idle",  "lifetime",
                                                    "evicted", "invalid", "closed"};

void leash__hook_destroy(struct leash_pool *p, int why)
{
    const struct leash_hooks_box *hb = pool_hooks(p);
    if (hb && hb->hooks.on_destroy)
        hb->hooks.on_destroy(p, gone_name[why], hb->arg);
}

void leash__drop_conn(struct leash_pool *p, struct leash_handle *s, int why)
{
    void *c = s->conn;
    s->conn = NULL;
    atomic_store_explicit(&s->peer, NULL, memory_order_relaxed);
    if (!c)
        return;
    if (s->conn_gen != atomic_load(&leash__fork_gen)) {
        if (p->adapter->abandon)
            p->adapter->abandon(p->ctx, c);
    } else {
        p->adapter->destroy(p->ctx, c);
    }
    count(&p->gone[why]);
    count(&p->destroyed);
    leash__hook_destroy(p, why);
}

void leash__slot_free(struct leash_pool *p, struct leash_handle *s)
{
    pthread_mutex_lock(&p->lock);
    atomic_store_explicit(&s->retire, 0, memory_order_relaxed);
    atomic_store_explicit(&s->recheck, 0, memory_order_relaxed);
    slot_set(s, SLOT_EMPTY);
    atomic_store(&p->size, atomic_load(&p->size) - 1);
    leash__signal_head_locked(p);
    leash__wait_kick_locked(p);
    pthread_mutex_unlock(&p->lock);
}

void leash__retire(struct leash_pool *p, struct leash_handle *s, int why)
{
    leash__drop_conn(p, s, why);
    leash__slot_free(p, s);
}

/* The interned copy of peer (pool lock held); NULL when the table is full. */
static const char *intern_peer(struct leash_pool *p, const char *peer)
{
    int n = atomic_load_explicit(&p->npeers, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        if (strcmp(p->peers[i], peer) == 0)
            return p->peers[i];
    if (n == LEASH_PEERS)
        return NULL;
    char *copy = leash__strdup(peer);
    if (!copy)
        return NULL;
    p->peers[n] = copy;
    /* release: pairs with the acquire load of npeers by lock-free readers */
    atomic_store_explicit(&p->npeers, n + 1, memory_order_release);
    return copy;
}

/* v less up to 10%, so a pool's connections do not all expire at once (pool lock held). */
static uint64_t jitter_locked(struct leash_pool *p, uint64_t v)
{
    uint64_t span = v / 10;
    return span ? v - (uint64_t)leash__rand(p) % span : v;
}

/* ---- the backend's state ---- */

static void connect_ok_locked(struct leash_pool *p, uint64_t now)
{
    atomic_store(&p->consecutive_failures, 0);
    atomic_store(&p->down_since_ns, 0);
    atomic_store(&p->last_connect_ok_ns, now);
    p->backoff_ns = 0;
    p->next_attempt_ns = 0;
}

/* probe: the attempt started while the pool was down (only those double the backoff; one
 * that started before the pool went down and fails after it does not). */
static void connect_failed_locked(struct leash_pool *p, uint64_t now, const char *why, int probe)
{
    uint32_t n = atomic_load(&p->consecutive_failures) + 1;
    atomic_store(&p->consecutive_failures, n);
    atomic_store(&p->last_connect_fail_ns, now);
    leash__pool_set_last_error_locked(p, why);
    if (!p->backoff_max_ns || n < 2)
        return;
    if (!pool_down(p)) {
        atomic_store(&p->down_since_ns, now);
        p->backoff_ns = BACKOFF_MIN_NS;
    } else if (probe) {
        p->backoff_ns *= 2;
    } else {
        return; /* a straggler from before: the schedule stands */
    }
    if (p->backoff_ns > p->backoff_max_ns)
        p->backoff_ns = p->backoff_max_ns;
    p->next_attempt_ns = now + p->backoff_ns;
}

static void seq_write(_Atomic uint32_t *seq, _Atomic char (*buf)[LEASH_TARGET_DESC_MAX],
                      const char *src);

/* The adapter may describe the target differently after a connect (a Sentinel pool's master
 * moved): the dumps show the latest. */
static void refresh_desc(struct leash_pool *p, const struct leash_target *t)
{
    char now[LEASH_TARGET_DESC_MAX], cur[LEASH_TARGET_DESC_MAX];
    now[0] = '\0';
    p->adapter->describe(p->ctx, t->target, now, sizeof now);
    now[sizeof now - 1] = '\0';
    leash__pool_desc(p, cur, sizeof cur);
    if (strcmp(now, cur) == 0)
        return;
    pthread_mutex_lock(&p->lock);
    seq_write(&p->live_seq, p->live_desc, now);
    pthread_mutex_unlock(&p->lock);
}

/* A string in two buffers of atomic bytes: the writer (under the pool lock) fills the one
 * not published, then publishes it by moving the sequence on; a reader copies the published
 * one and keeps the copy if the sequence did not move meanwhile (a write in progress fills
 * the other buffer, so a reader is only disturbed by a write it can see). Async-signal-safe. */
static void seq_write(_Atomic uint32_t *seq, _Atomic char (*buf)[LEASH_TARGET_DESC_MAX],
                      const char *src)
{
    uint32_t next = atomic_load_explicit(seq, memory_order_relaxed) + 1;
    _Atomic char *dst = buf[next % 2];
    size_t n = strnlen(src, LEASH_TARGET_DESC_MAX - 1);
    for (size_t i = 0; i < n; i++)
        atomic_store_explicit(&dst[i], src[i], memory_order_relaxed);
    atomic_store_explicit(&dst[n], '\0', memory_order_relaxed);
    /* release: the bytes before the new sequence (pairs with seq_read's acquire) */
    atomic_store_explicit(seq, next, memory_order_release);
}

/* 1 if out holds a consistent copy (possibly ""). */
static int seq_read(_Atomic uint32_t *seq, _Atomic char (*buf)[LEASH_TARGET_DESC_MAX], char *out,
                    size_t outlen)
{
    if (!outlen)
        return 0;
    for (int tries = 0; tries < 64; tries++) {
        uint32_t s1 = atomic_load_explicit(seq, memory_order_acquire);
        _Atomic char *src = buf[s1 % 2];
        size_t i = 0;
        for (; i + 1 < outlen && i < LEASH_TARGET_DESC_MAX; i++) {
            out[i] = atomic_load_explicit(&src[i], memory_order_relaxed);
            if (!out[i])
                break;
        }
        out[i < outlen ? i : outlen - 1] = '\0';
        atomic_thread_fence(memory_order_acquire);
        /* unchanged: no write was published into this buffer meanwhile (a write in progress
         * goes to the other one until it is published) */
        if (atomic_load_explicit(seq, memory_order_relaxed) == s1)
            return 1;
    }
    out[0] = '\0';
    return 0;
}

void leash__pool_set_last_error_locked(struct leash_pool *p, const char *msg)
{
    seq_write(&p->last_error_seq, p->last_error, msg);
}

void leash__pool_last_error(struct leash_pool *p, char *out, size_t outlen)
{
    seq_read(&p->last_error_seq, p->last_error, out, outlen);
}

void leash__pool_desc(struct leash_pool *p, char *out, size_t outlen)
{
    if (atomic_load_explicit(&p->live_seq, memory_order_acquire) != 0 &&
        seq_read(&p->live_seq, p->live_desc, out, outlen) && out[0])
        return;
    const struct leash_target *t = pool_target(p);
    size_t n = strnlen(t->desc, sizeof t->desc);
    if (n >= outlen)
        n = outlen ? outlen - 1 : 0;
    memcpy(out, t->desc, n);
    if (outlen)
        out[n] = '\0';
}

/* ---- the job ---- */

static void job_done(struct job *j)
{
    pthread_mutex_lock(&jobs_lock);
    atomic_store(&j->done, 1);
    pthread_mutex_unlock(&jobs_lock);
}

/* Starts j's thread on fn and enlists it for leash__connect_reap: 0, or pthread_create's
 * error (j is then not started and still the caller's). Every signal is blocked in it. */
static int job_spawn(struct job *j, void *(*fn)(void *))
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* inherited by the new thread */
    pthread_mutex_lock(&jobs_lock);
    int rc = pthread_create(&j->thread, NULL, fn, j);
    if (rc == 0) {
        j->next = jobs;
        jobs = j;
    }
    pthread_mutex_unlock(&jobs_lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    struct leash_pool *p = j->pool;
    struct leash_handle *s = j->slot;

    /* The epoch first: a retarget between the two loads then tags the old target's
     * connection with the old epoch, and it is retired when it lands. */
    uint64_t epoch = atomic_load(&p->evict_epoch);
    const struct leash_target *t = pool_target(p);
    char err[256] = "";
    uint64_t t0 = leash__clock_raw();
    void *c = p->adapter->connect(p->ctx, t->target, err, sizeof err);
    uint64_t took = leash__clock_ns(t0, leash__clock_raw());
    atomic_fetch_add_explicit(&p->hist_connect[leash__hist_bucket(took)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->connect_ns_total, took, memory_order_relaxed);
    char peer[128] = "";
    if (c && p->adapter->peer)
        p->adapter->peer(p->ctx, c, peer, sizeof peer);
    char clean[256] = "";
    if (!c)
        leash__redact(err[0] ? err : "the adapter gave no reason", clean, sizeof clean);
    if (c && p->adapter->describe)
        refresh_desc(p, t);
    uint64_t now = leash__mono_ns();
    int why = -1; /* a connection to drop at once */

    pthread_mutex_lock(&p->lock);
    atomic_store(&p->connecting, atomic_load(&p->connecting) - 1);
    leash__wait_kick_locked(p); /* a connect slot came free */
    struct leash_waiter *req = j->requester;
    if (req)
        req->job = NULL;
    if (c) {
        count(&p->created);
        connect_ok_locked(p, now);
        uint64_t tk = tick();
        s->conn = c;
        s->conn_gen = atomic_load(&leash__fork_gen);
        atomic_store_explicit(&s->conn_epoch, epoch, memory_order_relaxed);
        atomic_store_explicit(&s->peer, peer[0] ? intern_peer(p, peer) : NULL,
                              memory_order_relaxed);
        atomic_store_explicit(&s->expire_ns, tk + jitter_locked(p, p->lifetime_ns),
                              memory_order_relaxed);
        atomic_store_explicit(&s->idle_limit, jitter_locked(p, p->idle_ns), memory_order_relaxed);
        atomic_store_explicit(&s->broken, 0, memory_order_relaxed);
        atomic_store_explicit(&s->idle_since, leash__clock_raw(), memory_order_relaxed);
        atomic_store_explicit(&s->checked_ns, 0, memory_order_relaxed);
        if (atomic_load(&p->closed) || atomic_load(&p->draining)) {
            why = GONE_CLOSED;
        } else if (atomic_load(&p->evict_epoch) != epoch) {
            why = GONE_EVICTED; /* evicted or retargeted while it connected */
        } else {
            slot_set(s, SLOT_RETURNING);
            if (!leash__wait_give_locked(p, s)) {
                slot_set(s, SLOT_IDLE);
                stack_push(p, s);
            }
        }
    } else {
        count(&p->connect_failures);
        connect_failed_locked(p, now, clean, j->probe);
        if (req) {
            req->connect_failed = 1;
            snprintf(req->error, sizeof req->error, "pool \"%s\" (%s): connect to %s failed: %s",
                     p->name, p->adapter->kind, t->desc, clean);
        }
        slot_set(s, SLOT_EMPTY);
        atomic_store(&p->size, atomic_load(&p->size) - 1);
        leash__wake_all_locked(p); /* each looks again: retry, or fail fast while down */
    }
    pthread_mutex_unlock(&p->lock);

    if (why >= 0)
        leash__retire(p, s, why);
    if (!c && !req)
        leash__log(LEASH_LOG_WARN, "pool \"%s\" (%s): connect to %s failed: %s", p->name,
                   p->adapter->kind, t->desc, clean);
    const struct leash_hooks_box *hb = pool_hooks(p);
    if (hb && hb->hooks.on_connect)
        hb->hooks.on_connect(p, took, c ? LEASH_OK : LEASH_ECONNECT, hb->arg);
    job_done(j);
    return NULL;
}

/* Validates s (an idle connection the caller owns): -1 if it may be kept, else the GONE_*
 * reason to destroy it (it failed, or it was evicted while it was checked). */
static int validated(struct leash_pool *p, struct leash_handle *s)
{
    atomic_store(&s->recheck, 0);
    if (p->adapter->validate(p->ctx, s->conn) != 0) {
        count(&p->validation_failures);
        return GONE_INVALID;
    }
    int retire = atomic_load(&s->retire);
    if (retire)
        return retire - 1;
    if (ld(&s->conn_epoch) != ld(&p->evict_epoch))
        return GONE_EVICTED;
    return -1;
}

/* Keepalive: validates the job's idle slots one by one, so the maintenance thread (and the
 * pools' clock it keeps) never waits on a slow server. The slots wait their turn parked
 * CACHED (idle, stealable: a borrower that finds the stack empty takes one), so only the one
 * being validated is out of reach; one a borrower took meanwhile is skipped. */
static void *check_main(void *arg)
{
    struct job *j = arg;
    struct leash_pool *p = j->pool;
    for (uint32_t i = 0; i < j->nchecks; i++) {
        struct leash_handle *s = j->checks[i];
        if (!slot_cas(s, SLOT_CACHED, SLOT_RETURNING))
            continue; /* a borrower took it (or close did) */
        atomic_store(&p->checking_one, 1);
        count(&p->keepalives);
        int why = validated(p, s);
        if (why < 0 && atomic_load(&p->closed))
            why = GONE_CLOSED;
        if (why >= 0) {
            leash__retire(p, s, why);
        } else {
            /* Checked, not used: its idle time (for idle_timeout_ms) goes on. */
            atomic_store_explicit(&s->checked_ns, leash__clock_raw(), memory_order_relaxed);
            leash__push_idle(p, s);
        }
        atomic_store(&p->checking_one, 0);
    }
    if (atomic_load(&p->closed))
        leash__pool_destroy_orphans(p);
    atomic_store(&p->checking, 0); /* min_idle refills at the next tick */
    job_done(j);
    return NULL;
}

/* Validation on acquire, off the borrower's thread. */
static void *validate_main(void *arg)
{
    struct job *j = arg;
    struct leash_pool *p = j->pool;
    struct leash_handle *s = j->slot;
    int why = validated(p, s);
    /* A connection that failed is destroyed (and counted) before the borrower hears of it:
     * whoever reads the counters after its acquire returned sees the failure whole. */
    if (why >= 0)
        leash__retire(p, s, why);
    int closing = 0;
    pthread_mutex_lock(&p->lock);
    struct leash_waiter *req = j->requester;
    if (req)
        req->job = NULL;
    if (why < 0 && (atomic_load(&p->closed) || atomic_load(&p->draining)))
        closing = 1;
    if (why < 0 && !closing) {
        atomic_store_explicit(&s->idle_since, leash__clock_raw(), memory_order_relaxed);
        if (!leash__wait_give_locked(p, s)) {
            slot_set(s, SLOT_IDLE);
            stack_push(p, s);
            leash__signal_head_locked(p);
        }
    } else {
        leash__wait_kick_locked(p); /* someone may connect instead */
    }
    pthread_mutex_unlock(&p->lock);
    if (closing)
        leash__retire(p, s, GONE_CLOSED);
    job_done(j);
    return NULL;
}

int leash__validate_start(struct leash_pool *p, struct leash_handle *s, struct leash_waiter *w)
{
    struct job *j = leash__calloc(1, sizeof *j);
    if (!j)
        return -1;
    j->pool = p;
    j->slot = s;
    j->validate = 1;
    pthread_mutex_lock(&p->lock);
    j->requester = w;
    int rc = job_spawn(j, validate_main);
    if (rc == 0)
        w->job = j;
    pthread_mutex_unlock(&p->lock);
    if (rc != 0) {
        leash__free(j);
        return -1;
    }
    return 0;
}

int leash__check_start(struct leash_pool *p, struct leash_handle **v, uint32_t n)
{
    struct job *j = leash__calloc(1, sizeof *j + sizeof j->checks[0] * n);
    if (j) {
        j->pool = p;
        j->nchecks = n;
        memcpy(j->checks, v, sizeof v[0] * n);
        atomic_store(&p->checking, 1);
        /* parked: idle and stealable until the job takes each in turn */
        for (uint32_t i = 0; i < n; i++)
            slot_set(v[i], SLOT_CACHED);
        if (job_spawn(j, check_main) == 0)
            return 0;
        atomic_store(&p->checking, 0);
        leash__free(j);
        /* No thread: the parked connections go back unchecked, for a later tick. */
        for (uint32_t i = n; i-- > 0;)
            if (slot_cas(v[i], SLOT_CACHED, SLOT_RETURNING))
                leash__push_idle(p, v[i]);
        return -1;
    }
    for (uint32_t i = n; i-- > 0;)
        leash__push_idle(p, v[i]);
    return -1;
}

int leash__connect_start_locked(struct leash_pool *p, struct leash_waiter *requester)
{
    if (atomic_load(&p->closed) || atomic_load(&p->draining))
        return 0;
    uint32_t connecting = atomic_load(&p->connecting);
    if (pool_down(p)) {
        if (connecting || leash__mono_ns() < p->next_attempt_ns)
            return 0; /* one probe at a time, after the backoff */
    } else if (p->max_connecting > 0 && connecting >= (uint32_t)p->max_connecting) {
        return 0;
    }
    struct leash_handle *s = leash__reserve_locked(p);
    if (!s)
        return 0;
    struct job *j = leash__calloc(1, sizeof *j);
    if (j) {
        j->pool = p;
        j->slot = s;
        j->requester = requester;
        j->probe = pool_down(p);
        /* Started with the pool lock held: the job's first step (connect) needs no lock, and
         * the bookkeeping below must see it started. */
        int rc = job_spawn(j, job_main);
        if (rc == 0) {
            atomic_store(&p->connecting, connecting + 1);
            if (requester)
                requester->job = j;
            return 1;
        }
        leash__free(j);
    }
    slot_set(s, SLOT_EMPTY);
    atomic_store(&p->size, atomic_load(&p->size) - 1);
    if (requester) {
        requester->connect_failed = 1;
        snprintf(requester->error, sizeof requester->error,
                 "pool \"%s\": cannot start a connect: %s", p->name,
                 j ? "no thread could be created" : "out of memory");
    }
    return -1;
}

void leash__connect_orphan_locked(struct leash_pool *p, struct leash_waiter *w)
{
    (void)p;
    struct job *j = w->job;
    if (j)
        j->requester = NULL;
    w->job = NULL;
}

void leash__connect_reap(int all)
{
    for (;;) {
        struct job *mine = NULL;
        pthread_mutex_lock(&jobs_lock);
        for (struct job **jp = &jobs; *jp;) {
            struct job *j = *jp;
            if (all || atomic_load(&j->done)) {
                *jp = j->next;
                j->next = mine;
                mine = j;
            } else {
                jp = &j->next;
            }
        }
        pthread_mutex_unlock(&jobs_lock);
        if (!mine)
            return;
        while (mine) {
            struct job *next = mine->next;
            pthread_join(mine->thread, NULL);
            leash__free(mine);
            mine = next;
        }
        if (!all)
            return;
    }
}

void leash__connect_atfork(int phase)
{
    if (phase == 0) {
        pthread_mutex_lock(&jobs_lock);
        return;
    }
    pthread_mutex_unlock(&jobs_lock);
    if (phase == 2) {
        /* The parent's job threads do not exist here; their slots are fixed up by
         * leash__pool_fixup_child. Their records go (not joinable here). */
        struct job *j = jobs;
        jobs = NULL;
        while (j) {
            struct job *next = j->next;
            leash__free(j);
            j = next;
        }
    }
}

/* ---- messages ---- */

static void fmt_age(char *out, size_t outlen, uint64_t ns)
{
    if (ns >= 10000000000ull)
        snprintf(out, outlen, "%llu s", (unsigned long long)(ns / 1000000000ull));
    else if (ns >= 1000000ull)
        snprintf(out, outlen, "%llu ms", (unsigned long long)(ns / 1000000ull));
    else
        snprintf(out, outlen, "%llu us", (unsigned long long)(ns / 1000ull));
}

void leash__describe_state(struct leash_pool *p, char *out, size_t outlen)
{
    struct top {
        struct leash_handle *s;
        uint64_t age;
    } top[3] = {{0}};
    uint32_t in_use = 0;
    uint64_t now = leash__clock_raw();
    FOR_EACH_SLOT(p, s)
    {
        if (slot_state(s) != SLOT_HELD)
            continue;
        in_use++;
        uint64_t age = leash__clock_ns(ld(&s->since), now);
        for (int k = 0; k < 3; k++) {
            if (!top[k].s || age > top[k].age) {
                for (int m = 2; m > k; m--)
                    top[m] = top[m - 1];
                top[k] = (struct top){s, age};
                break;
            }
        }
    }
    int waiting = atomic_load(&p->nwaiters);
    uint32_t connecting = atomic_load(&p->connecting);
    size_t n = (size_t)snprintf(out, outlen, "size %u of %u, %u in use", atomic_load(&p->size),
                                atomic_load(&p->nslots), in_use);
    for (int k = 0; k < 3 && top[k].s && n < outlen; k++) {
        char age[32];
        fmt_age(age, sizeof age, top[k].age);
        const char *file = atomic_load_explicit(&top[k].s->file, memory_order_relaxed);
        const char *func = atomic_load_explicit(&top[k].s->func, memory_order_relaxed);
        n += (size_t)snprintf(
            out + n, outlen - n, "%s%s:%d in %s() for %s", k ? ", " : " (by ", file ? file : "?",
            atomic_load_explicit(&top[k].s->line, memory_order_relaxed), func ? func : "?", age);
    }
    if (top[0].s && n < outlen)
        n += (size_t)snprintf(out + n, outlen - n, "%s)", in_use > 3 ? ", ..." : "");
    if (n < outlen)
        n += (size_t)snprintf(out + n, outlen - n, ", %d %s", waiting,
                              waiting == 1 ? "other waiter" : "other waiters");
    if (connecting && n < outlen)
        n += (size_t)snprintf(out + n, outlen - n, ", %u %s in flight", connecting,
                              connecting == 1 ? "connect" : "connects");
    pthread_mutex_lock(&p->lock);
    char last[sizeof p->last_error[0]];
    leash__pool_last_error(p, last, sizeof last);
    if (last[0] && n < outlen)
        snprintf(out + n, outlen - n, "; last connect error: %s", last);
    pthread_mutex_unlock(&p->lock);
}

void leash__down_message(struct leash_pool *p, char *out, size_t outlen)
{
    uint64_t now = leash__mono_ns();
    uint64_t since = atomic_load(&p->down_since_ns);
    char age[32], desc[LEASH_TARGET_DESC_MAX], last[sizeof p->last_error[0]];
    fmt_age(age, sizeof age, since && now > since ? now - since : 0);
    leash__pool_desc(p, desc, sizeof desc);
    leash__pool_last_error(p, last, sizeof last);
    pthread_mutex_lock(&p->lock);
    uint64_t next = p->next_attempt_ns > now ? p->next_attempt_ns - now : 0;
    snprintf(out, outlen,
             "pool \"%s\" (%s): backend %s down for %s (%u connect attempts in a row failed; "
             "next attempt in %llu ms); last error: %s",
             p->name, p->adapter->kind, desc, age, atomic_load(&p->consecutive_failures),
             (unsigned long long)(next / 1000000u), last[0] ? last : "?");
    pthread_mutex_unlock(&p->lock);
}

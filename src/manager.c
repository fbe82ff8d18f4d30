/* The process-wide manager: initialisation, configuration, the pool registry, the
 * maintenance thread, the stats signal, fork handling and shutdown. */
#include "core.h"
#include "shm.h" /* the stats page and the metrics file */

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TICK_BUSY_MS 10   /* the pools' clock while pools are busy */
#define TICK_QUIET_MS 100 /* ... and while they are quiet; also the maintenance period */

_Atomic uint64_t leash__fork_gen;
_Atomic uint64_t leash__tick;
_Atomic uint64_t leash__epoch;
__attribute__((tls_model(
    "initial-exec"))) _Thread_local struct leash_cache_entry leash__t_cache[LEASH_CACHE_WAYS];
int leash__fork_tid;
_Atomic(struct leash_pool *) leash__pools;
_Atomic int leash__dumping;

static struct {
    pthread_mutex_t lock; /* init, shutdown, the registry */
    _Atomic int ready;
    int strict;
    int stats_signal;
    _Atomic int stats_fd;
    int stats_fd_owned;
    struct sigaction old_action;
    uint64_t fixed_gen; /* fork generation the manager last fixed itself up for */

    pthread_mutex_t maint_lock;
    pthread_cond_t maint_cond;
    pthread_t maint_thread;
    int maint_running, maint_stop, maint_kick;
    _Atomic int shutting_down; /* leash_shutdown runs: nothing may start the thread again */
} g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .maint_lock = PTHREAD_MUTEX_INITIALIZER,
};

static _Atomic int g_strict_cache; /* read on misuse paths without the lock */

__attribute__((tls_model("initial-exec"))) _Thread_local int leash__t_tid;

int leash__tid_slow(void)
{
    leash__t_tid = (int)syscall(SYS_gettid);
    return leash__t_tid;
}

int leash__is_strict(void)
{
    return atomic_load_explicit(&g_strict_cache, memory_order_relaxed);
}

int leash__dump_fd(void)
{
    int fd = atomic_load(&g.stats_fd);
    return fd >= 0 ? fd : 2;
}

/* ---- adapter tables: process_init once each, fork hooks in a fixed order ---- */

/* Every adapter table a pool was opened with, in the order of first use. Entries are
 * only appended (under adapters_lock) and never removed for the life of the process, so
 * the fork handlers read them without that lock: n is published with a release store
 * that pairs with the acquire load in the handlers. */
#define LEASH_ADAPTERS_MAX 32
static struct {
    pthread_mutex_t lock;
    const leash_adapter *v[LEASH_ADAPTERS_MAX];
    _Atomic int n;
} adapters = {.lock = PTHREAD_MUTEX_INITIALIZER};

leash_status leash__adapter_register(const leash_adapter *a)
{
    leash_status st = LEASH_OK;
    pthread_mutex_lock(&adapters.lock);
    int n = atomic_load_explicit(&adapters.n, memory_order_relaxed);
    int i = 0;
    while (i < n && adapters.v[i] != a)
        i++;
    if (i == n) {
        if (n == LEASH_ADAPTERS_MAX) {
            st = leash__fail(LEASH_ENOMEM,
                             "adapter \"%s\": more than %d adapter tables in one "
                             "process",
                             a->kind, LEASH_ADAPTERS_MAX);
        } else if (a->process_init && a->process_init() != 0) {
            st = leash__fail(LEASH_ECONNECT, "adapter \"%s\": its process initialisation failed",
                             a->kind);
        } else {
            adapters.v[n] = a;
            /* pairs with the acquire loads in the fork handlers */
            atomic_store_explicit(&adapters.n, n + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&adapters.lock);
    return st;
}

static void adapters_fork(int phase) /* 0 prepare, 1 parent, 2 child */
{
    int n = atomic_load_explicit(&adapters.n, memory_order_acquire);
    if (phase == 0) {
        for (int i = 0; i < n; i++)
            if (adapters.v[i]->fork_prepare)
                adapters.v[i]->fork_prepare();
        return;
    }
    for (int i = n; i-- > 0;) {
        void (*fn)(void) = phase == 1 ? adapters.v[i]->fork_parent : adapters.v[i]->fork_child;
        if (fn)
            fn();
    }
}

/* ---- fork ---- */

/* Lock order, everywhere: adapters.lock, g.lock, g.maint_lock, every pool's lock (list
 * order), the log's locks, then whatever each adapter's fork_prepare takes. The handlers
 * take them in that order and release them in the reverse order. */
static void atfork_prepare(void)
{
    leash__fork_tid = leash__tid();
    pthread_mutex_lock(&adapters.lock);
    pthread_mutex_lock(&g.lock);
    pthread_mutex_lock(&g.maint_lock);
    leash__pool_lock_all(1);
    leash__connect_atfork(0);
    leash__log_atfork(1);
    adapters_fork(0);
}

static void atfork_parent(void)
{
    adapters_fork(1);
    leash__log_atfork(0);
    leash__connect_atfork(1);
    leash__pool_lock_all(0);
    pthread_mutex_unlock(&g.maint_lock);
    pthread_mutex_unlock(&g.lock);
    pthread_mutex_unlock(&adapters.lock);
}

/* In the child only async-signal-safe work: unlock, bump the generation; the rest
 * happens at the child's first leash call (leash__after_fork). */
static void atfork_child(void)
{
    leash__t_tid = 0;
    adapters_fork(2);
    leash__log_atfork(0);
    leash__connect_atfork(2);
    leash__pool_lock_all(0);
    pthread_mutex_unlock(&g.maint_lock);
    pthread_mutex_unlock(&g.lock);
    pthread_mutex_unlock(&adapters.lock);
    /* Dumps, leash_outstanding and leash_check_leaks in progress belong to the parent's
     * other threads, which do not exist here: the child's shutdown must not wait for them. */
    atomic_store(&leash__dumping, 0);
    atomic_fetch_add(&leash__fork_gen, 1);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void register_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void maint_start_locked(void);

void leash__after_fork(void)
{
    pthread_mutex_lock(&g.lock);
    uint64_t gen = atomic_load(&leash__fork_gen);
    if (g.fixed_gen != gen) {
        g.fixed_gen = gen;
        atomic_store(&leash__tick, leash__coarse_ns());
        /* The parent's maintenance thread does not exist here. */
        pthread_mutex_lock(&g.maint_lock);
        g.maint_running = 0;
        g.maint_stop = 0;
        atomic_store(&g.shutting_down, 0); /* a shutdown in the parent is not the child's */
        /* Not pthread_cond_destroy: it waits for the parent's waiter, which never comes. */
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&g.maint_cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_mutex_unlock(&g.maint_lock);
        for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all))
            if (atomic_load(&p->fork_gen) != gen)
                leash__pool_fixup_child(p);
        leash__shm_after_fork(); /* the parent's page is not this child's */
        if (atomic_load(&g.ready) && atomic_load(&leash__pools))
            maint_start_locked();
    }
    pthread_mutex_unlock(&g.lock);
}

/* ---- the maintenance thread ---- */

static void *maint_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    uint64_t last_work = 0;
    pthread_mutex_lock(&g.maint_lock);
    while (!g.maint_stop) {
        int kick = g.maint_kick;
        g.maint_kick = 0;
        pthread_mutex_unlock(&g.maint_lock);
        uint64_t now = leash__coarse_ns();
        atomic_store_explicit(&leash__tick, now, memory_order_relaxed);
        int busy = 0;
        for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all))
            busy |= atomic_exchange_explicit(&p->active, 0, memory_order_relaxed);
        if (kick || now - last_work >= TICK_QUIET_MS * 1000000ull) {
            last_work = now;
            leash__connect_reap(0);
            for (struct leash_pool *p = atomic_load(&leash__pools); p;
                 p = atomic_load(&p->next_all))
                leash__pool_maintain(p, now);
        }
        leash__shm_refresh(now); /* the stats page and the metrics file, when due */
        pthread_mutex_lock(&g.maint_lock);
        if (g.maint_stop || g.maint_kick)
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (busy ? TICK_BUSY_MS : TICK_QUIET_MS) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g.maint_cond, &g.maint_lock, &ts);
    }
    pthread_mutex_unlock(&g.maint_lock);
    return NULL;
}

/* g.lock held. */
static void maint_start_locked(void)
{
    pthread_mutex_lock(&g.maint_lock);
    if (!g.maint_running) {
        g.maint_stop = 0;
        if (pthread_create(&g.maint_thread, NULL, maint_main, NULL) == 0)
            g.maint_running = 1;
        else
            leash__log(LEASH_LOG_ERROR, "cannot start the maintenance thread: %s", strerror(errno));
    }
    pthread_mutex_unlock(&g.maint_lock);
}

void leash__maintenance_nudge(void)
{
    pthread_mutex_lock(&g.lock);
    if (atomic_load(&g.ready) && !atomic_load(&g.shutting_down))
        maint_start_locked();
    pthread_mutex_unlock(&g.lock);
    pthread_mutex_lock(&g.maint_lock);
    g.maint_kick = 1;
    pthread_cond_signal(&g.maint_cond);
    pthread_mutex_unlock(&g.maint_lock);
}

static void maint_stop(void)
{
    pthread_mutex_lock(&g.maint_lock);
    int running = g.maint_running;
    g.maint_stop = 1;
    pthread_cond_signal(&g.maint_cond);
    pthread_mutex_unlock(&g.maint_lock);
    if (running)
        pthread_join(g.maint_thread, NULL);
    pthread_mutex_lock(&g.maint_lock);
    g.maint_running = 0;
    g.maint_stop = 0;
    pthread_mutex_unlock(&g.maint_lock);
}

/* ---- configuration ---- */

static int env_bool(const char *name, int *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
             !strcasecmp(v, "off"))
        *out = 0;
    else {
        leash__log(LEASH_LOG_WARN, "%s=\"%.32s\" is not 0/1/true/false; ignored", name, v);
        return 0;
    }
    return 1;
}

static int env_signal(void)
{
    const char *v = getenv("LEASH_STATS_SIGNAL");
    if (!v || !*v)
        return 0;
    const char *n = strncasecmp(v, "SIG", 3) == 0 ? v + 3 : v;
    if (!strcasecmp(n, "USR1"))
        return SIGUSR1;
    if (!strcasecmp(n, "USR2"))
        return SIGUSR2;
    if (!strcasecmp(n, "none") || !strcmp(n, "0"))
        return 0;
    leash__log(LEASH_LOG_WARN, "LEASH_STATS_SIGNAL=\"%.32s\" is not USR1 or USR2; ignored", v);
    return 0;
}

static void on_stats_signal(int sig)
{
    (void)sig;
    int saved = errno;
    leash_stats_dump(leash__dump_fd(), LEASH_FORMAT_TEXT);
    errno = saved;
}

/* g.lock held. */
static leash_status init_locked(const leash_config *cfg)
{
    leash_config c = cfg ? *cfg : LEASH_CONFIG_DEFAULT;
    if (c.strict < -1 || c.strict > 1)
        return leash__fail(LEASH_EINVAL, "leash_init: strict is %d (use -1, 0 or 1)", c.strict);
    if (c.stats_signal < -1 || c.stats_signal >= NSIG || c.stats_signal == SIGKILL ||
        c.stats_signal == SIGSTOP)
        return leash__fail(LEASH_EINVAL, "leash_init: stats_signal %d is not a usable signal",
                           c.stats_signal);
    if (c.stats_fd < -1)
        return leash__fail(LEASH_EINVAL, "leash_init: stats_fd is %d", c.stats_fd);

    pthread_once(&atfork_once, register_atfork);
    leash__clock_init();
    int strict = 0;
    if (c.strict >= 0)
        strict = c.strict;
    else
        env_bool("LEASH_STRICT", &strict);
    g.strict = strict;
    atomic_store(&g_strict_cache, strict);

    g.stats_fd_owned = 0;
    int fd = c.stats_fd;
    if (fd < 0) {
        const char *path = getenv("LEASH_STATS_FILE");
        if (path && *path) {
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
            if (fd < 0)
                leash__log(LEASH_LOG_WARN, "LEASH_STATS_FILE: cannot open %s: %s; using stderr",
                           path, strerror(errno));
            else
                g.stats_fd_owned = 1;
        }
    }
    atomic_store(&g.stats_fd, fd);

    g.stats_signal = c.stats_signal >= 0 ? c.stats_signal : env_signal();
    if (g.stats_signal > 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_stats_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(g.stats_signal, &sa, &g.old_action) != 0) {
            leash__log(LEASH_LOG_WARN, "cannot install the stats signal %d: %s", g.stats_signal,
                       strerror(errno));
            g.stats_signal = 0;
        }
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g.maint_cond, &ca);
    pthread_condattr_destroy(&ca);
    g.fixed_gen = atomic_load(&leash__fork_gen);
    atomic_store(&leash__tick, leash__coarse_ns());
    leash__shm_start();
    atomic_store(&g.ready, 1);
    return LEASH_OK;
}

leash_status leash_init(const leash_config *cfg)
{
    pthread_mutex_lock(&g.lock);
    leash_status st;
    if (atomic_load(&g.ready))
        st = leash__fail(LEASH_EEXIST, "leash_init: already initialised (the first call wins)");
    else
        st = init_locked(cfg);
    pthread_mutex_unlock(&g.lock);
    return st;
}

leash_status leash__ensure_init(void)
{
    if (LEASH_LIKELY(atomic_load_explicit(&g.ready, memory_order_acquire))) {
        if (LEASH_UNLIKELY(g.fixed_gen != atomic_load(&leash__fork_gen)))
            leash__after_fork();
        return LEASH_OK;
    }
    pthread_mutex_lock(&g.lock);
    leash_status st = atomic_load(&g.ready) ? LEASH_OK : init_locked(NULL);
    pthread_mutex_unlock(&g.lock);
    return st;
}

int leash_strict(void)
{
    leash__ensure_init();
    return leash__is_strict();
}

/* ---- registry ---- */

leash_status leash__register_pool(struct leash_pool *p)
{
    pthread_mutex_lock(&g.lock);
    struct leash_pool *last = NULL;
    for (struct leash_pool *q = atomic_load(&leash__pools); q; q = atomic_load(&q->next_all)) {
        if (!atomic_load(&q->closed) && strcmp(q->name, p->name) == 0) {
            pthread_mutex_unlock(&g.lock);
            return leash__fail(LEASH_EEXIST, "a pool named \"%s\" is already open", p->name);
        }
        last = q;
    }
    if (last)
        atomic_store(&last->next_all, p);
    else
        atomic_store(&leash__pools, p);
    pthread_mutex_unlock(&g.lock);
    return LEASH_OK;
}

int leash__unregister_pool(struct leash_pool *p)
{
    pthread_mutex_lock(&g.lock);
    atomic_fetch_or(&p->attn, ATTN_CLOSED);
    int was_open = !atomic_exchange(&p->closed, 1);
    pthread_mutex_unlock(&g.lock);
    return was_open;
}

leash_pool *leash_pool_get(const char *name)
{
    if (!name)
        return leash__fail_null(LEASH_EINVAL, "leash_pool_get: name is NULL");
    if (leash__ensure_init() != LEASH_OK)
        return NULL;
    pthread_mutex_lock(&g.lock);
    struct leash_pool *q = atomic_load(&leash__pools);
    for (; q; q = atomic_load(&q->next_all))
        if (!atomic_load(&q->closed) && strcmp(q->name, name) == 0)
            break;
    pthread_mutex_unlock(&g.lock);
    if (!q)
        return leash__fail_null(LEASH_ENOTFOUND, "no open pool named \"%.*s\"", LEASH_NAME_MAX,
                                name);
    return q;
}

/* ---- shutdown ---- */

void leash_shutdown(void)
{
    pthread_mutex_lock(&g.lock);
    if (!atomic_load(&g.ready)) {
        pthread_mutex_unlock(&g.lock);
        return;
    }
    if (g.fixed_gen != atomic_load(&leash__fork_gen)) {
        pthread_mutex_unlock(&g.lock);
        leash__after_fork();
        pthread_mutex_lock(&g.lock);
    }
    atomic_store(&g.shutting_down, 1);
    pthread_mutex_unlock(&g.lock);
    maint_stop();
    leash__shm_stop(); /* the page goes before the pools it shows */
    /* Close every pool (reports what is still borrowed); without the lock, since close
     * takes it. Nothing else may run leash now (the documented contract). */
    for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all))
        leash_pool_close(p);

    /* Connects in flight end (each bounded by its adapter's connect timeout) and join:
     * no thread of leash's outlives shutdown. They see their pool closed and drop what
     * they made. */
    leash__connect_reap(1);
    /* Connections still out (borrowed when their pool closed) go now, without the manager
     * lock: an on_destroy hook may call leash. */
    for (struct leash_pool *q = atomic_load(&leash__pools); q; q = atomic_load(&q->next_all))
        leash__pool_drop_all(q);
    pthread_mutex_lock(&g.lock);
    if (g.stats_signal > 0)
        sigaction(g.stats_signal, &g.old_action, NULL);
    g.stats_signal = 0;
    struct leash_pool *p = atomic_exchange(&leash__pools, NULL);
    atomic_fetch_add(&leash__epoch, 1); /* every thread's cached handles are void now */
    while (atomic_load(&leash__dumping) != 0)
        sched_yield();
    while (p) {
        struct leash_pool *next = atomic_load(&p->next_all);
        leash__pool_free(p);
        p = next;
    }
    int fd = atomic_exchange(&g.stats_fd, -1);
    if (g.stats_fd_owned && fd >= 0)
        close(fd);
    g.stats_fd_owned = 0;
    pthread_cond_destroy(&g.maint_cond);
    leash__log_reset_once();
    atomic_store(&g_strict_cache, 0);
    atomic_store(&g.ready, 0);
    atomic_store(&g.shutting_down, 0);
    pthread_mutex_unlock(&g.lock);
}

/* PostgreSQL adapter: the statement watchdog. A statement waits for its answer in poll()
 * without a timeout (a timeout arms a kernel timer on every statement: about half a
 * microsecond of CPU each, a sixth of what the whole pool may cost); the watchdog, one
 * thread of the adapter's own while pools are open, ends the waits that run past their
 * deadline by shutting the connection's socket down.
 *
 * A watch's deadline word, the only state shared with the watchdog:
 *   0           not waiting            the waiter may set a deadline (begin)
 *   d           waiting until d        the waiter may clear it (end, exchange to 0); the
 *                                      watchdog may fire it (CAS d -> FIRED) once d passed
 *   FIRED       the watchdog shut it   the waiter clears it (end sees FIRED: timed out)
 * The socket is shut through a descriptor of the watch's own (a dup), so libpq closing its
 * descriptor meanwhile cannot make the watchdog shut a stranger's; that descriptor is closed
 * only after the watch left the registry, under the registry lock the watchdog holds. */
#include "pg-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define FIRED UINT64_MAX
#define WATCH_PERIOD_MS 50 /* how late a deadline may fire */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* the registry and the thread */
static pg_watch *watches;                                /* every watch with a descriptor */
static int users;                                        /* pools attached */
static int wakefd = -1; /* the running watchdog's eventfd: a write stops it (no condition
                           variable: a child would inherit its parent's waiter) */
static pthread_t thread;
static atomic_int running; /* the watchdog runs: waits may go without a timeout */

/* arg: the eventfd that stops this watchdog, its own for its whole life (the global one may
 * already belong to the next watchdog, or be -1, when this one looks). */
static void *watchdog(void *arg)
{
    int stopfd = (int)(intptr_t)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        uint64_t now = leash__coarse_ns();
        for (pg_watch *w = watches; w; w = w->next) {
            /* acquire: pairs with the release store in pg__watch_begin */
            uint64_t d = atomic_load_explicit(&w->deadline, memory_order_acquire);
            if (d == 0 || d == FIRED || now < d)
                continue;
            if (atomic_compare_exchange_strong(&w->deadline, &d, FIRED))
                shutdown(w->fd, SHUT_RDWR); /* the waiter's poll() returns; libpq sees EOF */
        }
        pthread_mutex_unlock(&lock);
        pg__cancel_reap(); /* cancel threads done, or past their time */
        struct pollfd p = {.fd = stopfd, .events = POLLIN};
        if (poll(&p, 1, WATCH_PERIOD_MS) > 0)
            return NULL;
    }
}

void pg__watch_start(void)
{
    pthread_mutex_lock(&lock);
    if (users++ == 0) {
        wakefd = eventfd(0, EFD_CLOEXEC);
        /* Every signal blocked: the application's handlers are not for this thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        if (wakefd >= 0 && pthread_create(&thread, NULL, watchdog, (void *)(intptr_t)wakefd) == 0)
            atomic_store(&running, 1);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    pthread_mutex_unlock(&lock);
}

void pg__watch_stop(void)
{
    pthread_mutex_lock(&lock);
    int last = users > 0 && --users == 0;
    int join = last && atomic_load(&running);
    pthread_t th = thread; /* a start after the unlock below makes another */
    if (last)
        atomic_store(&running, 0);
    int fd = last ? wakefd : -1;
    if (last)
        wakefd = -1;
    pthread_mutex_unlock(&lock);
    if (join) {
        uint64_t one = 1;
        while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
        pthread_join(th, NULL);
    }
    if (fd >= 0)
        close(fd);
}

int pg__watch_add(pg_watch *w, int fd)
{
    w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    atomic_init(&w->deadline, 0);
    if (w->fd < 0)
        return -1;
    pthread_mutex_lock(&lock);
    w->prev = NULL;
    w->next = watches;
    if (watches)
        watches->prev = w;
    watches = w;
    pthread_mutex_unlock(&lock);
    return 0;
}

void pg__watch_remove(pg_watch *w)
{
    if (w->fd < 0)
        return;
    pthread_mutex_lock(&lock);
    if (w->prev)
        w->prev->next = w->next;
    else
        watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    pthread_mutex_unlock(&lock);
    close(w->fd);
    w->fd = -1;
}

int pg__watch_begin(pg_watch *w, int timeout_ms)
{
    if (w->fd < 0 || !atomic_load_explicit(&running, memory_order_relaxed))
        return 0;
    uint64_t d = leash__coarse_ns() + (uint64_t)timeout_ms * 1000000ull;
    /* release: pairs with the watchdog's acquire load */
    atomic_store_explicit(&w->deadline, d, memory_order_release);
    return 1;
}

int pg__watch_end(pg_watch *w)
{
    return atomic_exchange(&w->deadline, 0) == FIRED;
}

void pg__watch_fork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

void pg__watch_fork_parent(void)
{
    pthread_mutex_unlock(&lock);
}

/* The watchdog is the parent's: the child's waits go back to poll() timeouts. Its pools stay
 * attached (users is kept), so their detach still balances; the last one closes the child's
 * copy of the eventfd. */
void pg__watch_fork_child(void)
{
    atomic_store(&running, 0);
    pthread_mutex_unlock(&lock);
}

/* The waiters' queue of a pool: threads that found no idle handle, served in arrival order.
 * Every function here runs with the pool lock held, except leash__wake_head. */
#include "pool.h"

#include <assert.h>

void leash__signal_head_locked(struct leash_pool *p)
{
    struct leash_waiter *w = p->wait_head;
    if (w && !w->signaled) {
        w->signaled = 1;
        pthread_cond_signal(&w->cond);
    }
}

void leash__wake_head(struct leash_pool *p)
{
    pthread_mutex_lock(&p->lock);
    leash__signal_head_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* Everyone looks again (the pool closed, went down, or grew). */
void leash__wake_all_locked(struct leash_pool *p)
{
    for (struct leash_waiter *w = p->wait_head; w; w = w->next) {
        w->signaled = 1;
        pthread_cond_signal(&w->cond);
    }
}

void leash__wait_enqueue_locked(struct leash_pool *p, struct leash_waiter *w)
{
    w->next = NULL;
    if (p->wait_tail) {
        p->wait_tail->next = w;
    } else {
        p->wait_head = w;
        atomic_store_explicit(&p->head_since, leash__clock_raw(), memory_order_relaxed);
    }
    p->wait_tail = w;
    /* seq_cst: pairs with the seq_cst push in stack_push (a releaser that pushed before this
     * sees nwaiters > 0 and wakes us, or we see its handle on the stack) */
    atomic_fetch_add_explicit(&p->nwaiters, 1, memory_order_seq_cst);
}

void leash__wait_leave_locked(struct leash_pool *p, struct leash_waiter *w)
{
    struct leash_waiter **pp = &p->wait_head, *prev = NULL;
    while (*pp != w) {
        assert(*pp); /* w is queued */
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = w->next;
    if (p->wait_tail == w)
        p->wait_tail = prev;
    if (!prev && w->next)
        atomic_store_explicit(&p->head_since, leash__clock_raw(), memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->nwaiters, 1, memory_order_relaxed);
    leash__connect_orphan_locked(p, w);
    /* Pass the turn on if there is something for the next one. */
    if (p->wait_head &&
        (STACK_IDX(atomic_load(&p->head)) != 0 || atomic_load(&p->size) < atomic_load(&p->nslots)))
        leash__signal_head_locked(p);
}

int leash__wait_give_locked(struct leash_pool *p, struct leash_handle *s)
{
    for (struct leash_waiter *w = p->wait_head; w; w = w->next) {
        if (!w->given && !w->connect_failed) {
            w->given = s;
            w->signaled = 1;
            pthread_cond_signal(&w->cond);
            return 1;
        }
    }
    return 0;
}

void leash__wait_kick_locked(struct leash_pool *p)
{
    for (struct leash_waiter *w = p->wait_head; w; w = w->next) {
        if (!w->job && !w->given && !w->connect_failed) {
            if (!w->signaled) {
                w->signaled = 1;
                pthread_cond_signal(&w->cond);
            }
            return;
        }
    }
}

/* Shared by the dumps (stats.c, dump-text.c, dump-prom.c): the counters as a table, the
 * gathering of a pool's numbers, held handles grouped by borrow site, site problems. All of
 * it async-signal-safe: no lock, no allocation. */
#ifndef LEASH_DUMP_H
#define LEASH_DUMP_H

#include "out.h"
#include "pool.h"

/* Visits every pool; the shutdown waits while leash__dumping is non-zero. */
#define FOR_EACH_POOL(p)                                                                           \
    for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all))

/* Counters as a table, for the dumps and the text diff. */
struct metric {
    const char *name, *help;
    int gauge;
};
extern const struct metric leash__metrics[];
extern const size_t leash__nmetrics;
#define NMETRICS leash__nmetrics
#define METRICS_MAX 48

extern const char *const leash__prob_name[PROB_KINDS];
extern const char *const leash__gone_names[GONE_REASONS];

void leash__gather(struct leash_pool *p, leash_pool_stats *st);
/* The pool's numbers in table order into v (METRICS_MAX entries). */
void leash__values(const leash_pool_stats *s, uint64_t *v);

/* Held handles of one pool grouped by borrow site. */
#define MAX_SITES 32
struct site {
    const char *file, *func;
    int line, tid;
    uint32_t count;
    uint64_t oldest_ns;
};
uint32_t leash__group_sites(struct leash_pool *p, struct site *sites, uint32_t *others,
                            uint64_t now);
/* Entry i is the first of the entries that name its site (the one shown). */
int leash__site_is_first(struct leash_pool *p, uint32_t i);
/* Problems of kind k at site i, over every entry that names the same site. */
uint64_t leash__site_prob(struct leash_pool *p, uint32_t i, int k);

void leash__dump_text(struct out *o);
void leash__dump_json(struct out *o);
void leash__dump_prometheus(struct out *o);
void leash__prom_problems(struct out *o);

#endif /* LEASH_DUMP_H */

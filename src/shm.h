/* The shared-memory stats page: its format, shared by the library (which writes it) and
 * leash-stat (which reads it), and the library's internal entry points. */
#ifndef LEASH_SHM_H
#define LEASH_SHM_H

#include <stddef.h>
#include <stdint.h>

/* Where pages live: one file per process, LEASH_SHM_DIR "/" LEASH_SHM_PREFIX "<pid>",
 * mode 0600, owned by the process's user. */
#define LEASH_SHM_DIR "/dev/shm"
#define LEASH_SHM_PREFIX "leash."

/* The page: a fixed header, then three sections of text (no NUL bytes), each exactly what
 * leash_stats_dump would write in that format at the refresh time, except that the text
 * dump's "changed since the last dump" baseline does not move.
 *
 * Consistency (a sequence lock): the writer makes seq odd, writes, then makes it even
 * again. A reader copies seq, then the page, then seq again, and keeps the copy only if
 * both readings are the same even value; otherwise it retries, a bounded number of times.
 * Everything after seq in the header is covered by it; magic, version, header_size, pid,
 * start_time and comm are written once, before the page gets its name.
 *
 * Compatibility: version changes when the meaning of an existing field changes; a reader
 * refuses a version it does not know. New header fields are appended, growing
 * header_size; a reader accepts a header_size at least as large as the one it knows. The
 * file may be larger than total_size (the writer grows it ahead of need and never
 * shrinks it while it exists). All fields are in the host's byte order. */
#define LEASH_SHM_MAGIC "LEASHPG1"
#define LEASH_SHM_MAGIC_LEN 8
#define LEASH_SHM_VERSION 1u
#define LEASH_SHM_COMM_LEN 32
#define LEASH_SHM_MAX_SIZE (64u << 20) /* a reader refuses larger pages */

enum { LEASH_SHM_TEXT, LEASH_SHM_JSON, LEASH_SHM_PROMETHEUS, LEASH_SHM_SECTIONS };

/* flags: section i was cut short (it did not fit: LEASH_SHM_F_CUT << i) */
#define LEASH_SHM_F_CUT 1u

struct leash_shm_section {
    uint64_t off; /* from the start of the page */
    uint64_t len; /* bytes */
};

struct leash_shm_header {
    char magic[LEASH_SHM_MAGIC_LEN]; /* LEASH_SHM_MAGIC, not NUL-terminated */
    uint32_t version;                /* LEASH_SHM_VERSION */
    uint32_t header_size;            /* sizeof(struct leash_shm_header) of the writer */
    uint64_t total_size;             /* bytes in use: header and sections */
    uint64_t seq;                    /* odd while the writer writes */
    int32_t pid;                     /* the process; also in the file name */
    uint32_t flags;                  /* LEASH_SHM_F_* */
    char comm[LEASH_SHM_COMM_LEN];   /* command name, NUL-padded */
    uint64_t start_time;     /* the process's start (field 22 of /proc/PID/stat); 0 unknown */
    uint64_t realtime_ns;    /* CLOCK_REALTIME at the refresh */
    uint64_t monotonic_ns;   /* CLOCK_MONOTONIC at the refresh */
    uint64_t refreshes;      /* since the page was made */
    uint32_t interval_ms;    /* the writer refreshes about this often */
    uint32_t pools;          /* pools in the dump, closed ones included */
    uint32_t held;           /* handles held, all pools */
    uint32_t reserved;       /* 0 */
    uint64_t oldest_hold_ns; /* the longest-held handle's age; 0 when none is held */
    struct leash_shm_section section[LEASH_SHM_SECTIONS];
};
_Static_assert(sizeof(struct leash_shm_header) == 176, "the version 1 header is 176 bytes");
_Static_assert(offsetof(struct leash_shm_header, seq) == 24, "seq stays where readers look");

/* From the text of /proc/PID/stat (n bytes, no NUL needed): the state letter (field 3) and
 * the start time in clock ticks after boot (field 22). 0, or -1 if the text lacks them. The
 * command name (field 2) may hold spaces and parentheses: fields are counted from the last
 * ')'. */
static inline int leash_shm_parse_stat(const char *s, size_t n, char *state, uint64_t *start)
{
    size_t i = n;
    while (i > 0 && s[i - 1] != ')')
        i--;
    if (i == 0)
        return -1;
    for (int field = 3; field <= 22; field++) {
        if (i >= n || s[i] != ' ')
            return -1;
        i++;
        size_t from = i;
        uint64_t v = 0;
        int digits = 1;
        for (; i < n && s[i] != ' ' && s[i] != '\n'; i++) {
            if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
                digits = 0;
            else
                v = v * 10 + (uint64_t)(s[i] - '0');
        }
        if (i == from)
            return -1;
        if (field == 3)
            *state = s[from];
        if (field == 22) {
            if (!digits)
                return -1;
            *start = v;
        }
    }
    return 0;
}

/* ---- the library side (src/shm.c), called by the manager ---- */

/* At initialisation (manager lock held): reads LEASH_STATS_SHM, LEASH_METRICS_FILE and
 * LEASH_METRICS_INTERVAL_MS. Creates nothing yet. */
void leash__shm_start(void);
/* From the maintenance thread on every round (now: the coarse clock): refreshes the page and
 * rewrites the metrics file when they are due; returns at once otherwise. */
void leash__shm_refresh(uint64_t now);
/* At shutdown, after the maintenance thread was joined: removes the page. */
void leash__shm_stop(void);
/* In a forked child, before its maintenance thread starts: forgets the parent's page (never
 * touching it) so the child publishes its own. */
void leash__shm_after_fork(void);

/* Removes this process's page at once and makes no page again: for paths that end the
 * process without exit handlers (the strict-mode abort). Async-signal-safe. */
void leash__shm_forget(void);

/* For tests and the benchmark: renders the dumps and publishes them now, whatever the
 * schedule. Returns the page's refresh count after it (h.refreshes), or 0 if there is no
 * page (off, failed, shut down, exiting). */
uint64_t leash__shm_refresh_now(void);
/* For tests: publishes the given sections (len[i] bytes each) as a refresh would, so the
 * sequence lock can be driven faster than the maintenance thread does. Returns as
 * leash__shm_refresh_now. */
uint64_t leash__shm_publish(const char *const text[LEASH_SHM_SECTIONS],
                            const size_t len[LEASH_SHM_SECTIONS]);

/* How often the page is refreshed, in ms: often enough that `leash-stat --watch 1` shows a
 * new refresh every time, rarely enough that rendering three dumps costs nothing a user
 * would notice (see tests/bench/bench-shm.c). */
#define LEASH_SHM_INTERVAL_MS 500

#endif /* LEASH_SHM_H */

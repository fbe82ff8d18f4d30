/* The stats page on /dev/shm/leash.<pid> and the metrics file, both written by leash's own
 * maintenance thread (the page's format: shm.h; its reader: tools/leash-stat). */
#include "shm.h"
#include "clock.h"
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SPACE 256u        /* the sections start here: room for the header to grow */
#define PAGE_GRAIN (64u << 10)   /* the file is a whole number of these */
#define RENDER_FIRST (64u << 10) /* first size of each render buffer */
#define RENDER_MAX (16u << 20)   /* a dump larger than this is cut (flagged in the page) */
#define METRICS_DEFAULT_MS 10000
#define METRICS_MIN_MS 100
#define METRICS_MAX_MS 86400000

_Static_assert(sizeof(struct leash_shm_header) <= HEADER_SPACE, "the header fits its space");
_Static_assert(HEADER_SPACE + 3ull * RENDER_MAX <= LEASH_SHM_MAX_SIZE,
               "a full page stays below what readers accept");

static const leash_format formats[LEASH_SHM_SECTIONS] = {LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON,
                                                         LEASH_FORMAT_PROMETHEUS};

/* Who touches what:
 *   configuration (page_on, metrics_*): written by leash__shm_start under the manager's
 *     lock before the maintenance thread exists, read by that thread;
 *   everything else but owner/exiting/next_due: under S.lock (the maintenance thread's
 *     refresh, shutdown's stop, tests' publish);
 *   owner, exiting: also read by the exit handler, which takes no lock (it may run while
 *     the maintenance thread is in the middle of a refresh);
 *   next_due: read without the lock by the refresh's early return. */
static struct {
    pthread_mutex_t lock;
    int page_on;
    char *metrics_path; /* as configured; "%p" is the pid */
    uint32_t metrics_ms;
    int metrics_here; /* 0 in a forked child whose path has no %p: the file is the parent's */

    int pid;     /* the process this state was set up for */
    int stopped; /* shut down: refreshes do nothing until the next start */
    int failed;  /* the page could not be made: not tried again until the next start */
    int fd;
    void *map; /* page-aligned (mmap) */
    size_t map_size;
    char tmp[96]; /* the page's name until it is complete (then renamed to path) */
    char path[64];
    uint64_t seq, refreshes;
    uint64_t page_due, metrics_due; /* coarse clock; 0 until the first round */
    _Atomic uint64_t next_due;      /* the earlier of the two */

    char *buf[LEASH_SHM_SECTIONS];
    size_t cap[LEASH_SHM_SECTIONS], len[LEASH_SHM_SECTIONS];
    uint32_t cut; /* LEASH_SHM_F_CUT << section: that render did not fit */

    _Atomic int owner;   /* pid whose page exists at path, 0 none */
    _Atomic int exiting; /* the process is exiting: no page is made again */
} S = {.lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1};

/* ---- at exit ---- */

/* Runs at normal exit (exit(), return from main), with or without leash_shutdown. exiting
 * is set first, so no refresh makes a page from here on. The handler then waits a little
 * for a refresh in progress (one that is making the page, say) to finish, and removes the
 * page and any half-made one. If the wait runs out (a thread holds the lock and does not
 * come back), it removes the page without the lock: a refresh that names a page after
 * that sees exiting and removes it itself (both sides use sequentially consistent
 * atomics on owner and exiting). */
static void at_exit(void)
{
    atomic_store(&S.exiting, 1);
    int pid = getpid();
    if (S.pid != pid)
        return; /* a forked child that never used leash: the state is the parent's */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 200000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    int locked = pthread_mutex_timedlock(&S.lock, &until) == 0;
    int owner = atomic_load(&S.owner);
    if (owner != 0 && owner == pid)
        unlink(S.path);
    if (locked) {
        atomic_store(&S.owner, 0);
        if (S.tmp[0])
            unlink(S.tmp);
        S.tmp[0] = '\0';
        pthread_mutex_unlock(&S.lock);
    }
}

void leash__shm_forget(void)
{
    atomic_store(&S.exiting, 1);
    int owner = atomic_load(&S.owner);
    if (owner != 0 && owner == getpid())
        unlink(S.path);
}

static pthread_once_t at_exit_once = PTHREAD_ONCE_INIT;

static void register_at_exit(void)
{
    /* glibc's atexit records the library it came from: it also runs when libleash is
     * unloaded, never after. */
    atexit(at_exit);
}

/* ---- configuration ---- */

static int env_off(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off"))
        return 1;
    if (strcmp(v, "1") && strcasecmp(v, "true") && strcasecmp(v, "yes") && strcasecmp(v, "on"))
        leash__log(LEASH_LOG_WARN, "%s=\"%.32s\" is not 0/1/true/false; the page stays on", name,
                   v);
    return 0;
}

static uint32_t env_interval(void)
{
    const char *v = getenv("LEASH_METRICS_INTERVAL_MS");
    if (!v || !*v)
        return METRICS_DEFAULT_MS;
    char *end;
    errno = 0;
    long long ms = strtoll(v, &end, 10);
    if (errno || *end || end == v || ms < METRICS_MIN_MS || ms > METRICS_MAX_MS) {
        leash__log(LEASH_LOG_WARN,
                   "LEASH_METRICS_INTERVAL_MS=\"%.32s\" is not a number of ms from %d to %d; "
                   "using %d",
                   v, METRICS_MIN_MS, METRICS_MAX_MS, METRICS_DEFAULT_MS);
        return METRICS_DEFAULT_MS;
    }
    return (uint32_t)ms;
}

static void set_next_due(void)
{
    uint64_t a = S.page_on && !S.failed ? S.page_due : UINT64_MAX;
    uint64_t b = S.metrics_path && S.metrics_here ? S.metrics_due : UINT64_MAX;
    atomic_store_explicit(&S.next_due, a < b ? a : b, memory_order_relaxed);
}

void leash__shm_start(void)
{
    pthread_mutex_lock(&S.lock);
    S.page_on = !env_off("LEASH_STATS_SHM");
    free(S.metrics_path);
    S.metrics_path = NULL;
    const char *m = getenv("LEASH_METRICS_FILE");
    if (m && *m) {
        if (strlen(m) >= PATH_MAX - 32)
            leash__log(LEASH_LOG_WARN, "LEASH_METRICS_FILE is longer than %d bytes; ignored",
                       PATH_MAX - 32);
        else
            S.metrics_path = strdup(m);
    }
    S.metrics_ms = env_interval();
    S.metrics_here = 1;
    S.pid = getpid();
    S.stopped = 0;
    S.failed = 0;
    S.seq = S.refreshes = 0;
    S.page_due = S.metrics_due = 0;
    atomic_store(&S.next_due, 0);
    pthread_mutex_unlock(&S.lock);
}

/* ---- the page ---- */

/* Field 22 of /proc/self/stat (0 if unknown) and the command name, for the constant part
 * of the header: a reader tells this process from a later one with the same pid by them. */
static void identity(struct leash_shm_header *h)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf);
        char state;
        uint64_t start;
        if (n > 0 && leash_shm_parse_stat(buf, (size_t)n, &state, &start) == 0)
            h->start_time = start;
        close(fd);
    }
    fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, LEASH_SHM_COMM_LEN - 1);
        for (ssize_t i = 0; i < n && buf[i] != '\n'; i++)
            h->comm[i] = buf[i];
        close(fd);
    }
}

static size_t round_up(size_t n)
{
    return (n + PAGE_GRAIN - 1) / PAGE_GRAIN * PAGE_GRAIN;
}

/* Gives up on the page until the next start, saying why once. S.lock held. */
static void page_failed(const char *what, int err)
{
    leash__log(LEASH_LOG_WARN,
               "stats page %s: %s: %s; no page until leash is initialised "
               "again (LEASH_STATS_SHM=0 turns it off)",
               S.path, what, strerror(err));
    if (S.map)
        munmap(S.map, S.map_size);
    if (S.fd >= 0)
        close(S.fd);
    if (S.tmp[0])
        unlink(S.tmp);
    S.map = NULL;
    S.map_size = 0;
    S.fd = -1;
    S.tmp[0] = '\0';
    S.failed = 1;
}

/* Makes the file under a temporary name, its blocks allocated (so that writing to the
 * mapping can never fault for lack of space: posix_fallocate says ENOSPC now instead),
 * mapped, with the constant part of the header. It gets its real name once its first
 * contents are complete. S.lock held. */
static int page_make(size_t need)
{
    pthread_once(&at_exit_once, register_at_exit);
    snprintf(S.path, sizeof S.path, "%s/%s%d", LEASH_SHM_DIR, LEASH_SHM_PREFIX, S.pid);
    snprintf(S.tmp, sizeof S.tmp, "%s/.%s%d.XXXXXX", LEASH_SHM_DIR, LEASH_SHM_PREFIX, S.pid);
    S.fd = mkostemp(S.tmp, O_CLOEXEC); /* mode 0600 */
    if (S.fd < 0) {
        int e = errno;
        S.tmp[0] = '\0';
        page_failed("cannot create it", e);
        return -1;
    }
    size_t size = round_up(need + need / 2);
    int e = posix_fallocate(S.fd, 0, (off_t)size);
    if (e) {
        page_failed("cannot allocate it", e);
        return -1;
    }
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, S.fd, 0);
    if (map == MAP_FAILED) {
        page_failed("cannot map it", errno);
        return -1;
    }
    S.map = map;
    S.map_size = size;
    struct leash_shm_header *h = S.map;
    memcpy(h->magic, LEASH_SHM_MAGIC, LEASH_SHM_MAGIC_LEN);
    h->version = LEASH_SHM_VERSION;
    h->header_size = sizeof *h;
    h->pid = S.pid;
    identity(h);
    h->interval_ms = LEASH_SHM_INTERVAL_MS;
    S.seq = 0;
    S.refreshes = 0;
    return 0;
}

/* Grows the file (never shrinks it: a reader that mapped it must not fault). Readers
 * copying the page meanwhile see the old, still consistent, contents: the sequence moves
 * only when the new ones are written. S.lock held. 0, or -1 if it stays as it was. */
static int page_grow(size_t need)
{
    size_t size = round_up(need + need / 2);
    if (size > LEASH_SHM_MAX_SIZE)
        size = LEASH_SHM_MAX_SIZE;
    if (size <= S.map_size)
        return -1;
    int e = posix_fallocate(S.fd, 0, (off_t)size);
    if (e) {
        leash__log(LEASH_LOG_WARN, "stats page %s: cannot grow it to %zu bytes: %s; dumps cut",
                   S.path, size, strerror(e));
        return -1;
    }
    void *map = mremap(S.map, S.map_size, size, MREMAP_MAYMOVE);
    if (map == MAP_FAILED) {
        leash__log(LEASH_LOG_WARN, "stats page %s: cannot map %zu bytes: %s; dumps cut", S.path,
                   size, strerror(errno));
        return -1;
    }
    S.map = map;
    S.map_size = size;
    return 0;
}

/* Writes the rendered sections and the summary into the page under the sequence lock.
 * S.lock held, S.map set. */
static void page_write(uint32_t pools, uint32_t held, uint64_t oldest)
{
    struct leash_shm_header *h = S.map;
    uint64_t seq = S.seq;
    __atomic_store_n(&h->seq, seq + 1, __ATOMIC_RELAXED);
    /* the odd seq is visible before any of the writes below (pairs with a reader's second
     * reading of seq, taken after its copy) */
    __atomic_thread_fence(__ATOMIC_RELEASE);

    size_t off = HEADER_SPACE;
    uint32_t cut = S.cut;
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++) {
        size_t n = S.len[i];
        if (n > S.map_size - off) {
            n = S.map_size - off;
            cut |= LEASH_SHM_F_CUT << i;
        }
        memcpy((char *)S.map + off, S.buf[i], n);
        h->section[i].off = off;
        h->section[i].len = n;
        off += n;
    }
    struct timespec rt, mono;
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    h->total_size = off;
    h->flags = cut;
    h->realtime_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
    h->monotonic_ns = (uint64_t)mono.tv_sec * 1000000000ull + (uint64_t)mono.tv_nsec;
    h->refreshes = ++S.refreshes;
    h->pools = pools;
    h->held = held;
    h->oldest_hold_ns = oldest;

    /* everything above is visible before the even seq (pairs with a reader's first
     * reading of seq, taken before its copy) */
    __atomic_store_n(&h->seq, seq + 2, __ATOMIC_RELEASE);
    S.seq = seq + 2;
}

/* Gives a complete new page its name. A page named while the process exits is removed
 * again (see at_exit). S.lock held. */
static void page_name(void)
{
    if (rename(S.tmp, S.path) != 0) {
        page_failed("cannot name it", errno);
        return;
    }
    S.tmp[0] = '\0';
    atomic_store(&S.owner, S.pid);
    if (atomic_load(&S.exiting)) {
        unlink(S.path);
        atomic_store(&S.owner, 0);
    }
}

/* Publishes what is in S.buf/S.len. S.lock held. */
static void page_publish(uint32_t pools, uint32_t held, uint64_t oldest)
{
    size_t need = HEADER_SPACE;
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++)
        need += S.len[i];
    if (!S.map && page_make(need) != 0)
        return;
    if (need > S.map_size)
        page_grow(need); /* if it cannot, page_write cuts the sections to fit */
    page_write(pools, held, oldest);
    if (S.tmp[0])
        page_name();
}

/* ---- rendering ---- */

/* Renders section i, growing its buffer until the dump fits or RENDER_MAX is reached (the
 * section is then cut and flagged). S.lock held. */
static void render(int i)
{
    for (;;) {
        if (S.cap[i]) {
            long n = leash__render(S.buf[i], S.cap[i], formats[i]);
            if (n >= 0) {
                S.len[i] = (size_t)n;
                return;
            }
        }
        size_t cap = S.cap[i] ? S.cap[i] * 2 : RENDER_FIRST;
        char *b = cap <= RENDER_MAX ? realloc(S.buf[i], cap) : NULL;
        if (!b) {
            S.len[i] = S.cap[i] ? strlen(S.buf[i]) : 0;
            S.cut |= LEASH_SHM_F_CUT << i;
            return;
        }
        S.buf[i] = b;
        S.cap[i] = cap;
    }
}

/* Pools, handles held and the longest hold now, for the header (the list leash-stat prints
 * without parsing any dump). Reads the slots as the dumps do, without a lock: a held slot's
 * borrow record counts only if the slot word did not move while it was read. */
static void summary(uint32_t *pools, uint32_t *held, uint64_t *oldest)
{
    uint64_t now = leash__clock_raw();
    *pools = *held = 0;
    *oldest = 0;
    for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all)) {
        (*pools)++;
        FOR_EACH_SLOT(p, s)
        {
            uint64_t w = slot_word(s);
            if (w_state(w) != SLOT_HELD)
                continue;
            uint64_t since = atomic_load_explicit(&s->since, memory_order_relaxed);
            /* the read of since comes before the re-read of the word (acquire fence; the
             * lender publishes since before the word, as in stats.c's group_sites) */
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&s->word, memory_order_relaxed) != w)
                continue;
            (*held)++;
            uint64_t age = leash__clock_ns(since, now);
            if (age > *oldest)
                *oldest = age;
        }
    }
}

/* ---- the metrics file ---- */

/* The path with %p replaced by the pid (and %% by %); 0, or -1 if it does not fit. */
static int metrics_expand(char *out, size_t cap)
{
    size_t n = 0;
    for (const char *s = S.metrics_path; *s; s++) {
        char num[16];
        const char *add = s;
        size_t k = 1;
        if (s[0] == '%' && (s[1] == 'p' || s[1] == '%')) {
            s++;
            if (*s == 'p') {
                k = (size_t)snprintf(num, sizeof num, "%d", S.pid);
                add = num;
            }
        }
        if (n + k >= cap)
            return -1;
        memcpy(out + n, add, k);
        n += k;
    }
    out[n] = '\0';
    return 0;
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes the Prometheus dump (S.buf[LEASH_SHM_PROMETHEUS]) to the metrics file: a hidden
 * temporary file in the same folder (".<name>.tmp.<pid>", which a textfile collector
 * reading *.prom ignores), then rename, so a reader sees the old file or the new one,
 * never a part. The file ends with "# EOF" (a comment to Prometheus 0.0.4 parsers) so a
 * reader can tell it is whole. S.lock held. */
static void metrics_write(void)
{
    static const char eof[] = "# EOF\n";
    char path[PATH_MAX], tmp[PATH_MAX + 32];
    const char *text = S.buf[LEASH_SHM_PROMETHEUS];
    size_t len = S.len[LEASH_SHM_PROMETHEUS];
    if (S.cut & (LEASH_SHM_F_CUT << LEASH_SHM_PROMETHEUS)) {
        leash__log_once(&S.metrics_ms, 0, LEASH_LOG_WARN,
                        "LEASH_METRICS_FILE: the Prometheus dump is larger than %u bytes; the "
                        "file is not rewritten",
                        (unsigned)RENDER_MAX);
        return; /* a cut dump must not look whole */
    }
    if (metrics_expand(path, sizeof path) != 0) {
        leash__log(LEASH_LOG_WARN, "LEASH_METRICS_FILE: the path is too long");
        return;
    }
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path + 1) : 0;
    snprintf(tmp, sizeof tmp, "%.*s.%s.tmp.%d", dir_len, path, path + dir_len, S.pid);
    int fd = -1, e = 0;
    for (int attempt = 0; attempt < 2 && fd < 0; attempt++) {
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        e = errno;
        if (fd < 0 && e == EEXIST) /* left by a process with this pid that died mid-write */
            unlink(tmp);
    }
    const char *what = "cannot create";
    if (fd >= 0) {
        int has_eof =
            len >= sizeof eof - 1 && !memcmp(text + len - (sizeof eof - 1), eof, sizeof eof - 1);
        what = "cannot write";
        if (write_all(fd, text, len) == 0 && (has_eof || write_all(fd, eof, sizeof eof - 1) == 0))
            what = NULL;
        e = errno;
        if (close(fd) != 0 && !what) {
            what = "cannot write";
            e = errno;
        }
        if (!what && rename(tmp, path) != 0) {
            what = "cannot rename it to its name";
            e = errno;
        }
        if (what)
            unlink(tmp);
    }
    if (what)
        leash__log_once(&S.metrics_path, e, LEASH_LOG_WARN, "LEASH_METRICS_FILE %s: %s %s: %s",
                        path, what, tmp, strerror(e));
}

/* ---- the maintenance thread's part ---- */

/* Renders the three dumps and publishes them. S.lock held. */
static void refresh_page(void)
{
    S.cut = 0;
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++)
        render(i);
    uint32_t pools, held;
    uint64_t oldest;
    summary(&pools, &held, &oldest);
    page_publish(pools, held, oldest);
}

/* 1 if a task with deadline *due is due at now; moves the deadline on. first: the delay
 * before the first time. */
static int due(uint64_t *deadline, uint64_t now, uint64_t first, uint64_t every)
{
    if (*deadline == 0) {
        *deadline = now + first;
        if (first)
            return 0;
    } else if (now < *deadline) {
        return 0;
    }
    *deadline += every;
    if (*deadline <= now)
        *deadline = now + every;
    return 1;
}

void leash__shm_refresh(uint64_t now)
{
    if (now < atomic_load_explicit(&S.next_due, memory_order_relaxed))
        return;
    pthread_mutex_lock(&S.lock);
    if (S.stopped || atomic_load(&S.exiting) || S.pid != getpid()) {
        pthread_mutex_unlock(&S.lock);
        return;
    }
    /* The first page comes one interval after the first pool: a process that lives less
     * than that leaves no page behind even if it never exits normally (e.g. _exit in a
     * forked child). The metrics file is written at once. */
    const uint64_t page_ns = LEASH_SHM_INTERVAL_MS * 1000000ull;
    int page = S.page_on && !S.failed && due(&S.page_due, now, page_ns, page_ns);
    int metrics =
        S.metrics_path && S.metrics_here && due(&S.metrics_due, now, 0, S.metrics_ms * 1000000ull);
    if (page)
        refresh_page();
    if (metrics) {
        if (!page) {
            S.cut = 0;
            render(LEASH_SHM_PROMETHEUS);
        }
        if (S.cap[LEASH_SHM_PROMETHEUS])
            metrics_write();
    }
    set_next_due();
    pthread_mutex_unlock(&S.lock);
}

void leash__shm_stop(void)
{
    pthread_mutex_lock(&S.lock);
    S.stopped = 1;
    int owner = atomic_exchange(&S.owner, 0);
    if (owner != 0 && owner == getpid())
        unlink(S.path);
    if (S.map)
        munmap(S.map, S.map_size);
    if (S.fd >= 0)
        close(S.fd);
    if (S.tmp[0])
        unlink(S.tmp);
    S.map = NULL;
    S.map_size = 0;
    S.fd = -1;
    S.tmp[0] = '\0';
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++) {
        free(S.buf[i]);
        S.buf[i] = NULL;
        S.cap[i] = S.len[i] = 0;
    }
    free(S.metrics_path);
    S.metrics_path = NULL;
    pthread_mutex_unlock(&S.lock);
}

void leash__shm_after_fork(void)
{
    /* The child has one thread. If the lock is free, nobody was changing the state at the
     * fork and the parent's mapping and buffers can be let go of here; if the parent's
     * refresh held it, they may be half-changed: leave them alone (a little memory of
     * this child) and start afresh. */
    if (pthread_mutex_trylock(&S.lock) == 0) {
        if (S.map)
            munmap(S.map, S.map_size); /* the parent's page: only this child's view of it */
        if (S.fd >= 0)
            close(S.fd);
        pthread_mutex_unlock(&S.lock);
    } else {
        pthread_mutex_init(&S.lock, NULL);
        for (int i = 0; i < LEASH_SHM_SECTIONS; i++) {
            S.buf[i] = NULL;
            S.cap[i] = S.len[i] = 0;
        }
    }
    /* S.tmp, if set, is the parent's file being made: the parent names or removes it */
    S.tmp[0] = '\0';
    S.map = NULL;
    S.map_size = 0;
    S.fd = -1;
    atomic_store(&S.owner, 0);
    S.pid = getpid();
    S.failed = 0;
    S.seq = S.refreshes = 0;
    S.page_due = S.metrics_due = 0;
    /* Two processes must not take turns writing one metrics file: a child writes only a
     * file named after its own pid. */
    S.metrics_here = S.metrics_path && strstr(S.metrics_path, "%p") != NULL;
    atomic_store(&S.next_due, 0);
}

/* ---- for tests and the benchmark ---- */

uint64_t leash__shm_refresh_now(void)
{
    pthread_mutex_lock(&S.lock);
    uint64_t n = 0;
    if (!S.stopped && S.page_on && !S.failed && !atomic_load(&S.exiting) && S.pid == getpid()) {
        refresh_page();
        n = S.map ? S.refreshes : 0;
    }
    pthread_mutex_unlock(&S.lock);
    return n;
}

uint64_t leash__shm_publish(const char *const text[LEASH_SHM_SECTIONS],
                            const size_t len[LEASH_SHM_SECTIONS])
{
    pthread_mutex_lock(&S.lock);
    uint64_t n = 0;
    if (!S.stopped && S.page_on && !S.failed && !atomic_load(&S.exiting) && S.pid == getpid()) {
        S.cut = 0;
        for (int i = 0; i < LEASH_SHM_SECTIONS; i++) {
            if (S.cap[i] < len[i] + 1) {
                char *b = realloc(S.buf[i], len[i] + 1);
                if (!b)
                    goto out;
                S.buf[i] = b;
                S.cap[i] = len[i] + 1;
            }
            memcpy(S.buf[i], text[i], len[i]);
            S.len[i] = len[i];
        }
        page_publish(0, 0, 0);
        n = S.map ? S.refreshes : 0;
    }
out:
    pthread_mutex_unlock(&S.lock);
    return n;
}

/* Reading leash stats pages: a consistent copy (sequence lock), the checks every page must
 * pass before it is used, and whether the process that wrote it still runs. */
#include "page.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SIZE_MAX 4096u /* a header larger than this is not one */
#define SPIN_TRIES 20         /* retries at once (a refresh writes for microseconds) ... */
#define SLEEP_TRIES 1000      /* ... then one every millisecond: about a second in all */

static const char *const section_name[LEASH_SHM_SECTIONS] = {"text", "JSON", "Prometheus"};

__attribute__((format(printf, 4, 5))) static int refuse(int rc, char *why, size_t whylen,
                                                        const char *fmt, ...)
{
    if (why && whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int leash_page_parse(const void *buf, size_t len, struct leash_page *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    const struct leash_shm_header *h = &out->h;
    if (len < sizeof *h || !buf)
        return refuse(LEASH_PAGE_BAD, why, whylen,
                      "truncated: %zu bytes, less than a page header (%zu bytes)", len, sizeof *h);
    const unsigned char *b = buf;
    memcpy(&out->h, b, sizeof out->h);
    if (memcmp(h->magic, LEASH_SHM_MAGIC, LEASH_SHM_MAGIC_LEN) != 0)
        return refuse(LEASH_PAGE_BAD, why, whylen, "not a leash stats page (wrong magic)");
    if (h->version != LEASH_SHM_VERSION)
        return refuse(LEASH_PAGE_BAD, why, whylen,
                      "page format version %u; this leash-stat reads version %u (use the "
                      "leash-stat of the process's leash)",
                      h->version, LEASH_SHM_VERSION);
    if (h->header_size < sizeof *h || h->header_size > HEADER_SIZE_MAX)
        return refuse(LEASH_PAGE_BAD, why, whylen, "header size %u is out of range (%zu to %u)",
                      h->header_size, sizeof *h, HEADER_SIZE_MAX);
    if (h->total_size < h->header_size || h->total_size > LEASH_SHM_MAX_SIZE)
        return refuse(LEASH_PAGE_BAD, why, whylen, "total size %llu is out of range (%u to %u)",
                      (unsigned long long)h->total_size, h->header_size, LEASH_SHM_MAX_SIZE);
    if (h->total_size > len)
        return refuse(LEASH_PAGE_BAD, why, whylen,
                      "truncated: the page says %llu bytes, %zu are there",
                      (unsigned long long)h->total_size, len);
    if (h->seq & 1)
        return refuse(LEASH_PAGE_BUSY, why, whylen, "being written (odd sequence %llu)",
                      (unsigned long long)h->seq);
    if (h->pid <= 0)
        return refuse(LEASH_PAGE_BAD, why, whylen, "pid %d is not a process id", (int)h->pid);
    for (int i = 0; i < LEASH_SHM_SECTIONS; i++) {
        uint64_t off = h->section[i].off, n = h->section[i].len;
        if (off < h->header_size || off > h->total_size || n > h->total_size - off)
            return refuse(LEASH_PAGE_BAD, why, whylen,
                          "the %s section (%llu bytes at %llu) lies outside the page (%llu bytes)",
                          section_name[i], (unsigned long long)n, (unsigned long long)off,
                          (unsigned long long)h->total_size);
        if (memchr(b + off, '\0', (size_t)n))
            return refuse(LEASH_PAGE_BAD, why, whylen, "the %s section holds a NUL byte",
                          section_name[i]);
        out->sec[i] = (const char *)b + off;
        out->len[i] = (size_t)n;
    }
    for (size_t i = 0; i < LEASH_SHM_COMM_LEN && h->comm[i]; i++) {
        unsigned char c = (unsigned char)h->comm[i];
        out->comm[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    return LEASH_PAGE_OK;
}

static void backoff(int attempt)
{
    if (attempt < SPIN_TRIES) {
        sched_yield();
    } else {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* One attempt at a consistent copy into *b (*cap bytes, grown as needed). Returns
 * LEASH_PAGE_OK, LEASH_PAGE_BUSY (try again) or a final failure. */
static int copy_once(int fd, unsigned char **b, size_t *cap, struct leash_page *out, char *why,
                     size_t whylen)
{
    struct leash_shm_header h;
    ssize_t n = pread(fd, &h, sizeof h, 0);
    if (n < 0)
        return refuse(LEASH_PAGE_BAD, why, whylen, "cannot read it: %s", strerror(errno));
    if ((size_t)n < sizeof h || h.total_size < sizeof h || h.total_size > LEASH_SHM_MAX_SIZE)
        return leash_page_parse(&h, (size_t)n, out, why, whylen); /* says what is wrong */
    uint64_t seq = h.seq;
    if (seq & 1)
        return refuse(LEASH_PAGE_BUSY, why, whylen, "being written");
    size_t total = (size_t)h.total_size;
    if (total > *cap) {
        unsigned char *nb = realloc(*b, total);
        if (!nb)
            return refuse(LEASH_PAGE_BAD, why, whylen, "out of memory for %zu bytes", total);
        *b = nb;
        *cap = total;
    }
    n = pread(fd, *b, total, 0);
    if (n < 0)
        return refuse(LEASH_PAGE_BAD, why, whylen, "cannot read it: %s", strerror(errno));
    /* The copy is complete before seq is read again (the writer's side: shm.c). Reads in
     * system calls are ordered by them; the fence orders this process's own. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t again;
    if (pread(fd, &again, sizeof again, offsetof(struct leash_shm_header, seq)) !=
        (ssize_t)sizeof again)
        return refuse(LEASH_PAGE_BAD, why, whylen, "truncated while being read");
    if (again != seq)
        return refuse(LEASH_PAGE_BUSY, why, whylen, "rewritten while being read");
    int rc = leash_page_parse(*b, (size_t)n, out, why, whylen);
    if (rc == LEASH_PAGE_OK && out->h.seq != seq)
        return refuse(LEASH_PAGE_BUSY, why, whylen, "rewritten while being read");
    return rc;
}

int leash_page_read(const char *path, void **copy, struct leash_page *out, char *why, size_t whylen)
{
    *copy = NULL;
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return refuse(LEASH_PAGE_MISSING, why, whylen, "no such page");
        if (e == EACCES || e == EPERM)
            return refuse(LEASH_PAGE_DENIED, why, whylen,
                          "cannot read it: %s (pages are mode 0600: run as the process's user)",
                          strerror(e));
        if (e == ELOOP)
            return refuse(LEASH_PAGE_BAD, why, whylen, "it is a symbolic link, not a page");
        return refuse(LEASH_PAGE_BAD, why, whylen, "cannot open it: %s", strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return refuse(LEASH_PAGE_BAD, why, whylen, "not a regular file");
    }
    unsigned char *b = NULL;
    size_t cap = 0;
    int rc = LEASH_PAGE_BUSY;
    int tries = SPIN_TRIES + SLEEP_TRIES;
    for (int attempt = 0; attempt < tries && rc == LEASH_PAGE_BUSY; attempt++) {
        if (attempt)
            backoff(attempt);
        rc = copy_once(fd, &b, &cap, out, why, whylen);
    }
    close(fd);
    if (rc == LEASH_PAGE_BUSY)
        refuse(rc, why, whylen,
               "it was being written on each of %d tries over about a second (its sequence "
               "stayed odd or kept moving): the process stopped or died in the middle of a "
               "refresh",
               tries);
    if (rc != LEASH_PAGE_OK) {
        free(b);
        memset(out, 0, sizeof *out);
        return rc;
    }
    *copy = b;
    return rc;
}

/* 1 if the process's memory maps show path mapped, 0 if not, -1 if they cannot be read. */
static int maps_show(int pid, const char *path)
{
    char name[64];
    snprintf(name, sizeof name, "/proc/%d/maps", pid);
    FILE *f = fopen(name, "re");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0, plen = strlen(path);
    int found = 0, any = 0;
    ssize_t n;
    while (!found && (n = getline(&line, &cap, f)) > 0) {
        any = 1;
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        found = (size_t)n > plen && line[n - (ssize_t)plen - 1] == ' ' &&
                strcmp(line + n - (ssize_t)plen, path) == 0;
    }
    free(line);
    fclose(f);
    return found ? 1 : any ? 0 : -1; /* empty: not allowed to see them */
}

int leash_page_process(int pid, uint64_t start_time, const char *path)
{
    if (pid <= 0)
        return LEASH_PROC_GONE;
    char name[64], buf[4096];
    snprintf(name, sizeof name, "/proc/%d/stat", pid);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    ssize_t n = -1;
    if (fd >= 0) {
        n = read(fd, buf, sizeof buf);
        close(fd);
    }
    char state = 0;
    uint64_t start = 0;
    if (n <= 0 || leash_shm_parse_stat(buf, (size_t)n, &state, &start) != 0) {
        /* no /proc to ask: existence is all there is to know */
        if (kill(pid, 0) == 0 || errno == EPERM)
            return LEASH_PROC_RUNNING;
        return LEASH_PROC_GONE;
    }
    if (state == 'Z' || state == 'X' || state == 'x')
        return LEASH_PROC_GONE;
    if (start_time && start != start_time)
        return LEASH_PROC_GONE; /* the pid was given to a later process */
    /* A running leash process keeps its page mapped; one that exec'd another program or
     * whose pid is now someone else's does not. */
    if (path && maps_show(pid, path) == 0)
        return LEASH_PROC_GONE;
    if (state == 'T' || state == 't')
        return LEASH_PROC_STOPPED;
    return LEASH_PROC_RUNNING;
}

int leash_page_pid_in_use(int pid)
{
    char name[64], buf[4096];
    snprintf(name, sizeof name, "/proc/%d/stat", pid);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    char state = 0;
    uint64_t start;
    if (n <= 0 || leash_shm_parse_stat(buf, (size_t)n, &state, &start) != 0)
        return 1;
    return state != 'Z' && state != 'X' && state != 'x';
}

int leash_page_pid_of(const char *name)
{
    size_t k = strlen(LEASH_SHM_PREFIX);
    if (strncmp(name, LEASH_SHM_PREFIX, k) != 0)
        return 0;
    const char *d = name + k;
    if (*d < '1' || *d > '9')
        return 0;
    long v = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9' || v > INT_MAX / 10)
            return 0;
        v = v * 10 + (*d - '0');
    }
    return v <= INT_MAX ? (int)v : 0;
}

void leash_page_dur(char *out, size_t outlen, uint64_t ns)
{
    unsigned long long v = (unsigned long long)ns;
    if (ns < 1000)
        snprintf(out, outlen, "%lluns", v);
    else if (ns < 1000000)
        snprintf(out, outlen, "%lluus", v / 1000);
    else if (ns < 1000000000ull)
        snprintf(out, outlen, "%llu.%llums", v / 1000000, v / 100000 % 10);
    else if (ns < 120000000000ull)
        snprintf(out, outlen, "%llu.%02llus", v / 1000000000ull, v / 10000000ull % 100);
    else
        snprintf(out, outlen, "%llum%llus", v / 60000000000ull, v / 1000000000ull % 60);
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

int leash_page_write(int fd, const char *s, size_t n)
{
    char buf[4096];
    while (n) {
        size_t k = n < sizeof buf ? n : sizeof buf;
        for (size_t i = 0; i < k; i++) {
            unsigned char c = (unsigned char)s[i];
            buf[i] = (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f ? '?' : (char)c;
        }
        if (write_all(fd, buf, k) != 0)
            return -1;
        s += k;
        n -= k;
    }
    return 0;
}

/* Reading leash stats pages from outside the process: a consistent copy, every check a
 * page must pass before anything in it is used, and whether its process still runs.
 * The format is src/shm.h. Nothing here trusts the page: a corrupt, truncated or hostile
 * one is refused with a reason, never a crash. */
#ifndef LEASH_STAT_PAGE_H
#define LEASH_STAT_PAGE_H

#include "shm.h"

#include <stddef.h>
#include <stdint.h>

/* What leash_page_read found. */
enum {
    LEASH_PAGE_OK = 0,
    LEASH_PAGE_MISSING, /* no such file */
    LEASH_PAGE_DENIED,  /* it exists but cannot be read (another user's) */
    LEASH_PAGE_BAD,     /* not a page that can be trusted: why says what is wrong */
    LEASH_PAGE_BUSY,    /* always being written (odd sequence) on every try */
};

/* A checked page. sec[i] points into the buffer that was parsed (len[i] bytes, no NUL
 * bytes inside, not NUL-terminated). */
struct leash_page {
    struct leash_shm_header h;
    char comm[LEASH_SHM_COMM_LEN + 1]; /* printable, NUL-terminated */
    const char *sec[LEASH_SHM_SECTIONS];
    size_t len[LEASH_SHM_SECTIONS];
};

/* Checks a copy of a page (len bytes at buf; buf may be NULL when len is 0). Returns
 * LEASH_PAGE_OK with *out filled, LEASH_PAGE_BUSY if the copy was taken mid-write, or
 * LEASH_PAGE_BAD with the reason in why (whylen bytes, NUL-terminated). */
int leash_page_parse(const void *buf, size_t len, struct leash_page *out, char *why, size_t whylen);

/* Copies the page at path consistently (sequence lock: retried while it is being written,
 * up to about a second) and checks it. On LEASH_PAGE_OK, *copy is the malloc'd copy that
 * out points into (free it); otherwise *copy is NULL and why says what happened. */
int leash_page_read(const char *path, void **copy, struct leash_page *out, char *why,
                    size_t whylen);

/* What became of the process that wrote a page. */
enum {
    LEASH_PROC_RUNNING = 0,
    LEASH_PROC_STOPPED, /* stopped by a signal or a debugger: the page is as it was then */
    LEASH_PROC_GONE,    /* exited, killed, a zombie, or its pid now belongs to another program */
};
/* Decides from /proc (and kill(pid, 0) where /proc says nothing) whether process pid,
 * started at start_time (0: unknown) and publishing the page at path (NULL: do not check),
 * still runs. */
int leash_page_process(int pid, uint64_t start_time, const char *path);

/* 1 if a process (not a zombie) has pid now: for a page whose writer is gone, the pid went
 * to another process or the writer exec'd another program. */
int leash_page_pid_in_use(int pid);

/* The pid in a page's file name ("leash.<pid>"), or 0 if the name is not a page's. */
int leash_page_pid_of(const char *name);

/* A duration the way the dumps write it (850ns, 12us, 3.4ms, 1.25s, 3m20s) in out. */
void leash_page_dur(char *out, size_t outlen, uint64_t ns);

/* Writes n bytes of a section to fd, with any control byte other than newline and tab
 * written as '?' (a page cannot drive the terminal). 0, or -1 on a write error. */
int leash_page_write(int fd, const char *s, size_t n);

#endif /* LEASH_STAT_PAGE_H */

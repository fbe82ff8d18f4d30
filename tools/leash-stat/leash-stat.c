/* leash-stat: the leash pools of running processes, read from the stats pages they publish
 * (/dev/shm/leash.<pid>) without any help from them: it works while a process is stopped
 * or stuck. */
#include "page.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_SHOWN = 0, EXIT_GONE = 1, EXIT_REFUSED = 2 };

static const char usage[] =
    "usage: leash-stat [--json] [--watch SECONDS]          list the processes using leash\n"
    "       leash-stat [--json | --prometheus] [--watch SECONDS] [--last] PID\n"
    "                                                       print PID's stats dump\n"
    "       leash-stat --clean [PID]                        remove pages of processes that are "
    "gone\n"
    "\n"
    "Reads /dev/shm/leash.<pid>, which every process using leash refreshes about every\n"
    "0.5 s (LEASH_STATS_SHM=0 turns it off). PID prints the text dump, --json and\n"
    "--prometheus the other formats, exactly as leash_stats_dump writes them. --watch\n"
    "prints again every SECONDS. A page whose process is gone (killed, crashed, _exit) is\n"
    "never shown as live: --last prints what it said then, --clean removes it.\n"
    "\n"
    "Exit status: 0 shown; 1 the process is gone or publishes no page; 2 the page cannot be\n"
    "read or trusted (corrupt, truncated, another version, another user's) or bad usage.\n";

struct opts {
    int format; /* a LEASH_SHM_* section */
    int json_list;
    int last, clean;
    double watch; /* seconds; 0: once */
    int pid;      /* 0: every process */
};

static uint64_t now_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void page_path(char *out, size_t outlen, int pid)
{
    snprintf(out, outlen, "%s/%s%d", LEASH_SHM_DIR, LEASH_SHM_PREFIX, pid);
}

/* How long ago the page was refreshed (both clocks are this machine's CLOCK_MONOTONIC). */
static uint64_t page_age(const struct leash_page *pg)
{
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    return now > pg->h.monotonic_ns ? now - pg->h.monotonic_ns : 0;
}

/* A refresh time for people: 2024-05-01 12:34:56 local time. */
static void wall_time(char *out, size_t outlen, uint64_t realtime_ns)
{
    time_t t = (time_t)(realtime_ns / 1000000000ull);
    struct tm tm;
    if (!localtime_r(&t, &tm) || !strftime(out, outlen, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(out, outlen, "(unknown time)");
}

/* ---- one process ---- */

static int show_gone(const struct opts *o, const struct leash_page *pg, const char *path)
{
    char when[64], age[32];
    wall_time(when, sizeof when, pg->h.realtime_ns);
    leash_page_dur(age, sizeof age, page_age(pg));
    int pid_taken = leash_page_pid_in_use(o->pid);
    fprintf(stderr,
            "leash-stat: process %d (%s) is gone: %s was left behind when it %s; last refreshed "
            "%s, %s ago. %s`leash-stat --clean` removes it.\n",
            o->pid, pg->comm, path,
            pid_taken ? "ended or exec'd another program (the pid is in use again)"
                      : "ended without exiting normally (killed, crashed or _exit)",
            when, age,
            o->last ? "What it said then follows. " : "Not shown as live; --last shows it. ");
    if (o->last) {
        fflush(stdout);
        leash_page_write(1, pg->sec[o->format], pg->len[o->format]);
    }
    return EXIT_GONE;
}

/* Notes on stderr, so that stdout stays exactly the dump. */
static void notes(const struct opts *o, const struct leash_page *pg, int state)
{
    char age[32];
    uint64_t ns = page_age(pg);
    leash_page_dur(age, sizeof age, ns);
    uint64_t every = (uint64_t)(pg->h.interval_ms ? pg->h.interval_ms : 1000) * 1000000ull;
    if (state == LEASH_PROC_STOPPED)
        fprintf(stderr, "leash-stat: process %d is stopped; its page was refreshed %s ago\n",
                o->pid, age);
    else if (ns > 3 * every + 1000000000ull)
        fprintf(stderr,
                "leash-stat: process %d last refreshed its page %s ago (it does every %ums): "
                "leash's thread in it is busy or stuck\n",
                o->pid, age, pg->h.interval_ms);
    if (pg->h.flags & (LEASH_SHM_F_CUT << o->format))
        fprintf(stderr, "leash-stat: the dump was cut short: it did not fit the page\n");
}

static int show_pid(const struct opts *o)
{
    char path[64], why[512];
    page_path(path, sizeof path, o->pid);
    void *copy;
    struct leash_page pg;
    int rc = leash_page_read(path, &copy, &pg, why, sizeof why);
    if (rc == LEASH_PAGE_MISSING) {
        if (leash_page_process(o->pid, 0, NULL) == LEASH_PROC_GONE)
            fprintf(stderr, "leash-stat: no process %d (and no page %s)\n", o->pid, path);
        else
            fprintf(stderr,
                    "leash-stat: process %d publishes no leash stats (no %s): it does not use "
                    "leash, runs with LEASH_STATS_SHM=0, has no pool, or opened its first pool "
                    "less than %.1f s ago\n",
                    o->pid, path, LEASH_SHM_INTERVAL_MS / 1000.0);
        return EXIT_GONE;
    }
    if (rc != LEASH_PAGE_OK) {
        fprintf(stderr, "leash-stat: %s: %s%s\n", path,
                rc == LEASH_PAGE_DENIED ? "" : "not a page leash-stat can trust: ", why);
        if (rc != LEASH_PAGE_DENIED && leash_page_process(o->pid, 0, NULL) == LEASH_PROC_GONE)
            fprintf(stderr, "leash-stat: process %d is gone; `leash-stat --clean` removes it\n",
                    o->pid);
        return EXIT_REFUSED;
    }
    int code = EXIT_SHOWN;
    if (pg.h.pid != o->pid) {
        fprintf(stderr, "leash-stat: %s: not a page leash-stat can trust: it names process %d\n",
                path, (int)pg.h.pid);
        code = EXIT_REFUSED;
    } else {
        int state = leash_page_process(o->pid, pg.h.start_time, path);
        if (state == LEASH_PROC_GONE) {
            code = show_gone(o, &pg, path);
        } else {
            notes(o, &pg, state);
            if (leash_page_write(1, pg.sec[o->format], pg.len[o->format]) != 0) {
                fprintf(stderr, "leash-stat: cannot write the dump: %s\n", strerror(errno));
                code = EXIT_REFUSED;
            }
        }
    }
    free(copy);
    return code;
}

/* ---- every process ---- */

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}

/* The pids of every page in LEASH_SHM_DIR, sorted, in a malloc'd array (*n of them); NULL
 * with *n 0 if there are none or the folder cannot be read. */
static int *page_pids(size_t *n)
{
    *n = 0;
    DIR *d = opendir(LEASH_SHM_DIR);
    if (!d)
        return NULL;
    int *v = NULL;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid = leash_page_pid_of(e->d_name);
        if (!pid)
            continue;
        if (*n == cap) {
            int *nv = realloc(v, (cap ? cap * 2 : 32) * sizeof *v);
            if (!nv)
                break;
            v = nv;
            cap = cap ? cap * 2 : 32;
        }
        v[(*n)++] = pid;
    }
    closedir(d);
    if (*n)
        qsort(v, *n, sizeof *v, cmp_int);
    return v;
}

struct row {
    int pid, state, rc;
    struct leash_page pg;
    char why[160];
};

static void read_row(struct row *r)
{
    char path[64];
    page_path(path, sizeof path, r->pid);
    void *copy;
    r->rc = leash_page_read(path, &copy, &r->pg, r->why, sizeof r->why);
    r->state = LEASH_PROC_GONE;
    if (r->rc == LEASH_PAGE_OK) {
        if (r->pg.h.pid != r->pid) {
            r->rc = LEASH_PAGE_BAD;
            snprintf(r->why, sizeof r->why, "it names process %d", (int)r->pg.h.pid);
        } else {
            r->state = leash_page_process(r->pid, r->pg.h.start_time, path);
        }
        free(copy); /* the sections are not used here */
        for (int i = 0; i < LEASH_SHM_SECTIONS; i++)
            r->pg.sec[i] = NULL;
    } else {
        r->state = leash_page_process(r->pid, 0, NULL);
    }
}

static const char *state_word(const struct row *r)
{
    static char buf[200];
    if (r->rc == LEASH_PAGE_DENIED)
        return "not readable (another user's)";
    if (r->rc != LEASH_PAGE_OK) {
        snprintf(buf, sizeof buf, "%suntrusted page: %s",
                 r->state == LEASH_PROC_GONE ? "gone, " : "", r->why);
        return buf;
    }
    return r->state == LEASH_PROC_GONE      ? "gone"
           : r->state == LEASH_PROC_STOPPED ? "stopped"
                                            : "running";
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static int list_all(const struct opts *o)
{
    size_t n;
    int *pids = page_pids(&n);
    struct row *rows = n ? calloc(n, sizeof *rows) : NULL;
    if (n && !rows) {
        fprintf(stderr, "leash-stat: out of memory\n");
        free(pids);
        return EXIT_REFUSED;
    }
    size_t gone = 0;
    for (size_t i = 0; i < n; i++) {
        rows[i].pid = pids[i];
        read_row(&rows[i]);
        gone += rows[i].state == LEASH_PROC_GONE;
    }
    if (o->json_list) {
        printf("[");
        for (size_t i = 0, first = 1; i < n; i++) {
            const struct row *r = &rows[i];
            if (r->rc == LEASH_PAGE_MISSING)
                continue;
            printf("%s{\"pid\":%d,\"state\":", first ? "" : ",", r->pid);
            first = 0;
            json_str(state_word(r));
            if (r->rc == LEASH_PAGE_OK) {
                printf(",\"command\":");
                json_str(r->pg.comm);
                printf(",\"refreshed_ns_ago\":%llu", (unsigned long long)page_age(&r->pg));
                if (r->state != LEASH_PROC_GONE)
                    printf(",\"pools\":%u,\"held\":%u,\"oldest_hold_ns\":%llu", r->pg.h.pools,
                           r->pg.h.held, (unsigned long long)r->pg.h.oldest_hold_ns);
            }
            printf("}");
        }
        printf("]\n");
    } else if (!n) {
        printf("no process publishes leash stats in %s\n", LEASH_SHM_DIR);
    } else {
        printf("%7s  %-15s %5s %5s %11s %12s  %s\n", "PID", "COMMAND", "POOLS", "HELD",
               "OLDEST HOLD", "REFRESHED", "STATE");
        for (size_t i = 0; i < n; i++) {
            const struct row *r = &rows[i];
            if (r->rc == LEASH_PAGE_MISSING)
                continue; /* it went away while we looked */
            char pools[16] = "-", held[16] = "-", oldest[32] = "-", age[32] = "-";
            if (r->rc == LEASH_PAGE_OK) {
                leash_page_dur(age, sizeof age - 4, page_age(&r->pg));
                strcat(age, " ago");
                if (r->state != LEASH_PROC_GONE) {
                    snprintf(pools, sizeof pools, "%u", r->pg.h.pools);
                    snprintf(held, sizeof held, "%u", r->pg.h.held);
                    if (r->pg.h.held)
                        leash_page_dur(oldest, sizeof oldest, r->pg.h.oldest_hold_ns);
                }
            }
            printf("%7d  %-15.15s %5s %5s %11s %12s  %s\n", r->pid,
                   r->rc == LEASH_PAGE_OK ? r->pg.comm : "?", pools, held, oldest, age,
                   state_word(r));
        }
        if (gone)
            printf("gone: the process ended without exiting normally; `leash-stat --last PID` "
                   "shows its last page, `leash-stat --clean` removes them\n");
    }
    free(rows);
    free(pids);
    return EXIT_SHOWN;
}

/* ---- --clean ---- */

/* Removes the page of pid if its process is gone (and, with every, any temporary page file
 * a process with that pid left while making its page). */
static int clean_one(int pid, int quiet_if_running)
{
    char path[64], why[256];
    page_path(path, sizeof path, pid);
    void *copy;
    struct leash_page pg;
    int rc = leash_page_read(path, &copy, &pg, why, sizeof why);
    if (rc == LEASH_PAGE_MISSING) {
        if (!quiet_if_running)
            printf("no page %s\n", path);
        return EXIT_SHOWN;
    }
    int state = rc == LEASH_PAGE_OK && pg.h.pid == pid
                    ? leash_page_process(pid, pg.h.start_time, path)
                    : leash_page_process(pid, 0, NULL);
    free(copy);
    if (state != LEASH_PROC_GONE) {
        if (!quiet_if_running)
            printf("process %d is %s: %s stays\n", pid,
                   state == LEASH_PROC_STOPPED ? "stopped" : "running", path);
        return EXIT_SHOWN;
    }
    if (unlink(path) != 0) {
        fprintf(stderr, "leash-stat: cannot remove %s: %s\n", path, strerror(errno));
        return EXIT_REFUSED;
    }
    printf("removed %s (process %d is gone)\n", path, pid);
    return EXIT_SHOWN;
}

/* Temporary files ".leash.<pid>.XXXXXX" of processes that died while making a page. */
static void clean_temporaries(void)
{
    DIR *d = opendir(LEASH_SHM_DIR);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] != '.')
            continue;
        char name[sizeof e->d_name];
        snprintf(name, sizeof name, "%s", e->d_name + 1);
        char *dot = strrchr(name, '.');
        if (!dot || strlen(dot) != 7)
            continue;
        *dot = '\0';
        int pid = leash_page_pid_of(name);
        if (!pid || leash_page_process(pid, 0, NULL) != LEASH_PROC_GONE)
            continue;
        char path[320];
        snprintf(path, sizeof path, "%s/%s", LEASH_SHM_DIR, e->d_name);
        if (unlink(path) == 0)
            printf("removed %s (process %d is gone)\n", path, pid);
    }
    closedir(d);
}

static int clean(const struct opts *o)
{
    if (o->pid)
        return clean_one(o->pid, 0);
    size_t n;
    int *pids = page_pids(&n);
    int code = EXIT_SHOWN;
    for (size_t i = 0; i < n; i++)
        if (clean_one(pids[i], 1) != EXIT_SHOWN)
            code = EXIT_REFUSED;
    free(pids);
    clean_temporaries();
    return code;
}

/* ---- main ---- */

static int parse_pid(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v <= 0 || v > 0x7fffffff)
        return 0;
    return (int)v;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"json", no_argument, NULL, 'j'},
        {"prometheus", no_argument, NULL, 'p'},
        {"watch", required_argument, NULL, 'w'},
        {"last", no_argument, NULL, 'l'},
        {"clean", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->format = LEASH_SHM_TEXT;
    int c, formats = 0;
    while ((c = getopt_long(argc, argv, "jpw:lch", longs, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'j':
            o->format = LEASH_SHM_JSON;
            formats++;
            break;
        case 'p':
            o->format = LEASH_SHM_PROMETHEUS;
            formats++;
            break;
        case 'w':
            errno = 0;
            o->watch = strtod(optarg, &end);
            if (errno || *end || end == optarg || !(o->watch >= 0.1 && o->watch <= 86400)) {
                fprintf(stderr, "leash-stat: --watch %s: give seconds from 0.1 to 86400\n", optarg);
                return -1;
            }
            break;
        case 'l':
            o->last = 1;
            break;
        case 'c':
            o->clean = 1;
            break;
        case 'h':
            fputs(usage, stdout);
            exit(EXIT_SHOWN);
        default:
            fputs(usage, stderr);
            return -1;
        }
    }
    if (optind < argc) {
        o->pid = parse_pid(argv[optind]);
        if (!o->pid) {
            fprintf(stderr, "leash-stat: \"%s\" is not a process id\n", argv[optind]);
            return -1;
        }
        optind++;
    }
    const char *bad = optind < argc ? "one PID at most"
                      : formats > 1 ? "--json or --prometheus, not both"
                      : o->clean && (formats || o->watch || o->last)
                          ? "--clean takes no other option"
                      : !o->pid && o->format == LEASH_SHM_PROMETHEUS ? "--prometheus needs a PID"
                      : !o->pid && o->last                           ? "--last needs a PID"
                                                                     : NULL;
    if (bad) {
        fprintf(stderr, "leash-stat: %s\n%s", bad, usage);
        return -1;
    }
    o->json_list = !o->pid && o->format == LEASH_SHM_JSON;
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_args(argc, argv, &o) != 0)
        return EXIT_REFUSED;
    if (o.clean)
        return clean(&o);
    int tty = isatty(1);
    for (;;) {
        if (o.watch > 0 && tty) {
            char when[64];
            wall_time(when, sizeof when, now_ns(CLOCK_REALTIME));
            printf("\033[H\033[2J");
            printf("leash-stat%s, every %gs, at %s (Ctrl-C stops)\n",
                   o.pid ? "" : ": processes using leash", o.watch, when);
            fflush(stdout);
        }
        int code = o.pid ? show_pid(&o) : list_all(&o);
        fflush(stdout);
        if (o.watch <= 0 || code != EXIT_SHOWN)
            return code;
        struct timespec ts = {(time_t)o.watch, (long)((o.watch - (double)(time_t)o.watch) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
}

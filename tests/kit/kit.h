/* Helpers shared by every cmocka suite of leash (unit and integration): time, children,
 * dumps, counters, log capture and teardown. Failures are reported through cmocka. */
#ifndef LEASH_TEST_KIT_H
#define LEASH_TEST_KIT_H

#include <leash/leash.h>

#include <stdint.h>
#include <sys/types.h>

/* Sleeps ms milliseconds (resumed after signals). */
void sleep_ms(int ms);
/* The monotonic clock, in seconds and in whole milliseconds. */
double now_s(void);
uint64_t now_ms(void);

/* Reads everything from fd until EOF into a malloc'd, NUL-terminated string. */
char *slurp(int fd);
/* The whole file at path, as slurp; fails the test if it cannot be opened. */
char *slurp_path(const char *path);
/* What leash_stats_dump writes for every pool in fmt, as a malloc'd string. */
char *dump(leash_format fmt);

/* Runs fn(arg) in a child process with stderr captured; returns the child's wait status and,
 * in *err (malloc'd; err may be NULL), what it wrote to stderr. The child exits 0 when fn
 * returns. */
int run_child(void (*fn)(void *), void *arg, char **err);
/* Waits up to 10 s for the child pid; a child still running then is killed and fails the
 * test (a hang in a child must not hang the suite). Returns its wait status. */
int wait_child(pid_t pid);

/* What a program run by run_program printed, and how it ended. */
struct kit_run {
    int code; /* exit status; -1 if it did not exit (killed by a signal: a crash) */
    char *out, *err;
};
/* Runs the program at path with argv (NULL-terminated, argv[0] first), its stdout and stderr
 * captured apart; sigint_after_ms > 0 sends it SIGINT that long after it started. A run that
 * hangs is killed and fails the test (wait_child). */
struct kit_run run_program(const char *path, const char *const *argv, int sigint_after_ms);
void kit_run_free(struct kit_run *r);

/* The pool's counters; fails the test if they cannot be read. */
leash_pool_stats stats(leash_pool *p);
/* leash_acquire that fails the test, with leash's message, when no handle comes. */
leash_handle *take(leash_pool *p);
/* The counting invariant of DESIGN.md, which holds at every moment. */
void assert_invariant(leash_pool *p);
/* A quiet pool: nothing held, the invariant holds, no misuse counted. */
void assert_balanced(leash_pool *p);

/* What the log callback received since capture_start() (lines "[level] message"). */
extern char log_text[16384];
/* Empties log_text and installs the capturing log callback. */
void capture_start(void);
/* Re-initialises leash with release checking off (the production default) and no dump
 * signal, for tests of dirty returns being cleaned rather than aborting. */
void default_mode(void);

/* 1 under the valgrind test setup (meson test --setup=valgrind sets LEASH_UNDER_VALGRIND):
 * everything runs some 10-50 times slower, and a forked child's exit status is valgrind's
 * (its leak check counts memory only the parent's other threads referenced). */
int under_valgrind(void);
/* How much longer a time bound may be: 1, or 20 under valgrind. */
int slow_factor(void);
/* A child exited by itself: status 0, or under valgrind any exit status (a child killed, by
 * the alarm of a hang among others, never counts). */
int child_done(int status);

/* The common teardown: removes the log callback, counts the handles still held (listing them
 * on stderr), shuts leash down either way so one failure does not leak into the next test,
 * then fails if any handle was held. */
int teardown_no_leaks(void **state);

/* A minimal adapter of something that is neither Redis, PostgreSQL nor HTTP, for tests that
 * pass a foreign handle to an adapter's accessors. */
extern const leash_adapter kit_other_adapter;

#endif

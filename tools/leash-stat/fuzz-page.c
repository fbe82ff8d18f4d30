/* libFuzzer target: every byte string as a stats page, through everything leash-stat does
 * with a page it accepted (the checks, the /proc stat parser, the section writer). Built
 * with clang only; see meson.build in this folder for how to run it. */
#include "page.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int devnull = -1;
    if (devnull < 0)
        devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    struct leash_page pg;
    char why[256];
    int rc = leash_page_parse(data, size, &pg, why, sizeof why);
    if (rc == LEASH_PAGE_OK) {
        for (int i = 0; i < LEASH_SHM_SECTIONS; i++)
            leash_page_write(devnull, pg.sec[i], pg.len[i]);
        char dur[32];
        leash_page_dur(dur, sizeof dur, pg.h.oldest_hold_ns);
        leash_page_dur(dur, sizeof dur, pg.h.monotonic_ns);
        (void)strlen(pg.comm);
    } else {
        (void)strlen(why);
    }
    /* the same bytes as /proc/PID/stat text */
    char state;
    uint64_t start;
    leash_shm_parse_stat((const char *)data, size, &state, &start);
    /* and as a file name */
    char name[64];
    size_t n = size < sizeof name - 1 ? size : sizeof name - 1;
    memcpy(name, data, n);
    name[n] = '\0';
    leash_page_pid_of(name);
    return 0;
}

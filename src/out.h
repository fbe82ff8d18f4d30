/* The dumps' output: an async-signal-safe buffer that writes to a file descriptor (or into
 * memory), and the formatting helpers every dump uses. Nothing here locks or allocates. */
#ifndef LEASH_OUT_H
#define LEASH_OUT_H

#include "common.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct out {
    int fd, err;
    size_t n;
    char buf[2048];
    char *mem; /* fd < 0: the output goes here instead (mem_cap bytes, NUL-terminated) */
    size_t mem_len, mem_cap;
    int baseline; /* a text dump moves the "changed since" baseline */
};

/* Writes the buffer out. A reader that went away (a closed pipe, a dead log shipper) is
 * a write error, never a SIGPIPE. */
static inline void o_flush(struct out *o)
{
    if (!o->n)
        return;
    if (o->fd < 0) {
        size_t room = o->mem_cap - 1 - o->mem_len;
        size_t k = o->n < room ? o->n : room;
        memcpy(o->mem + o->mem_len, o->buf, k);
        o->mem_len += k;
        o->mem[o->mem_len] = '\0';
        if (k < o->n)
            o->err = 1;
        o->n = 0;
        return;
    }
    leash__nopipe np;
    leash__nopipe_begin(&np);
    size_t off = 0;
    while (off < o->n && !o->err) {
        ssize_t w = write(o->fd, o->buf + off, o->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            o->err = 1;
        else
            off += (size_t)w;
    }
    leash__nopipe_end(&np);
    o->n = 0;
}

static inline void o_mem(struct out *o, const char *s, size_t n)
{
    while (n) {
        if (o->n == sizeof o->buf)
            o_flush(o);
        size_t k = sizeof o->buf - o->n;
        if (k > n)
            k = n;
        memcpy(o->buf + o->n, s, k);
        o->n += k;
        s += k;
        n -= k;
    }
}

static inline void o_str(struct out *o, const char *s)
{
    o_mem(o, s ? s : "?", strlen(s ? s : "?"));
}

static inline size_t leash__fmt_u64(char *buf, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = '\0';
    return n;
}

static inline void o_u64(struct out *o, uint64_t v)
{
    char b[24];
    o_mem(o, b, leash__fmt_u64(b, v));
}

static inline void o_i64(struct out *o, int64_t v)
{
    if (v < 0) {
        o_mem(o, "-", 1);
        o_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        o_u64(o, (uint64_t)v);
    }
}

/* A duration for people: 850ns, 12us, 3.4ms, 1.25s, 3m20s. */
static inline void o_dur(struct out *o, uint64_t ns)
{
    if (ns < 1000) {
        o_u64(o, ns);
        o_str(o, "ns");
    } else if (ns < 1000000) {
        o_u64(o, ns / 1000);
        o_str(o, "us");
    } else if (ns < 1000000000ull) {
        o_u64(o, ns / 1000000);
        o_str(o, ".");
        o_u64(o, ns / 100000 % 10);
        o_str(o, "ms");
    } else if (ns < 120000000000ull) {
        o_u64(o, ns / 1000000000ull);
        o_str(o, ".");
        uint64_t c = ns / 10000000ull % 100;
        if (c < 10)
            o_str(o, "0");
        o_u64(o, c);
        o_str(o, "s");
    } else {
        o_u64(o, ns / 60000000000ull);
        o_str(o, "m");
        o_u64(o, ns / 1000000000ull % 60);
        o_str(o, "s");
    }
}

/* Seconds with nanosecond digits, for machines: 1.250000000 */
static inline void o_secs(struct out *o, uint64_t ns)
{
    char b[24];
    o_u64(o, ns / 1000000000ull);
    o_str(o, ".");
    size_t n = leash__fmt_u64(b, ns % 1000000000ull);
    for (size_t i = n; i < 9; i++)
        o_str(o, "0");
    o_mem(o, b, n);
}

/* A string inside JSON quotes, or a Prometheus label value (same escapes suffice). */
static inline void o_esc(struct out *o, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            o_mem(o, e, 2);
        } else if (c == '\n') {
            o_str(o, "\\n");
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            o_mem(o, e, 6);
        } else {
            o_mem(o, (const char *)&c, 1);
        }
    }
}

static inline uint64_t leash__now_coarse(void)
{
    return leash__coarse_ns();
}

#endif /* LEASH_OUT_H */

/* Redis adapter: parsing and checking Redis URLs, naming the bad part without the password. */
#include "url.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

void leash__redis_target_free(redis_target *t)
{
    if (!t)
        return;
    free(t->host);
    free(t->user);
    if (t->password) {
        explicit_bzero(t->password, strlen(t->password));
        free(t->password);
    }
    free(t);
}

int leash__redis_parse_num(const char *s, size_t n, long max, long *out)
{
    long long v = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        if (v <= max)
            v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -2;
    *out = (long)v;
    return 0;
}

/* Echoes [s, s+n) in a message only when it is short and harmless (digits, or an option
 * name): anything else might be a misplaced password. */
static int echo_ok(const char *s, size_t n)
{
    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]) && !islower((unsigned char)s[i]) && s[i] != '_')
            return 0;
    return 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes [s, s+n) into a new string: 0, -1 bad escape, -2 a NUL byte, -3 no memory. */
static int decode(const char *s, size_t n, char **out)
{
    char *d = malloc(n + 1);
    size_t k = 0;
    if (!d)
        return -3;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            d[k++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(d);
            return -1;
        }
        d[k] = (char)(hi * 16 + lo);
        if (d[k++] == '\0') {
            free(d);
            return -2;
        }
        i += 2;
    }
    d[k] = '\0';
    *out = d;
    return 0;
}

static int host_char_ok(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_';
}

/* Parses the query string [q, end) into t. Returns 0, or -1 with why filled. */
static int parse_options(const char *q, const char *end, redis_target *t, char *why, size_t whylen)
{
    int seen_ct = 0, seen_cmd = 0, seen_db = 0;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        size_t klen = (size_t)((eq ? eq : stop) - q);
        if (stop == q) { /* an empty pair ("&&", a trailing "&") */
            q = stop + 1;
            continue;
        }
        char key[40] = "";
        if (echo_ok(q, klen))
            snprintf(key, sizeof key, "%.*s", (int)klen, q);
        int *slot = NULL, *seen = NULL;
        long max = REDIS_TIMEOUT_MAX_MS, min = 1;
        if (strcmp(key, "connect_timeout_ms") == 0) {
            slot = &t->connect_timeout_ms;
            seen = &seen_ct;
        } else if (strcmp(key, "command_timeout_ms") == 0) {
            slot = &t->command_timeout_ms;
            seen = &seen_cmd;
        } else if (strcmp(key, "db") == 0 && t->unix_sock) {
            slot = &t->db;
            seen = &seen_db;
            max = INT_MAX;
            min = 0;
        } else if (strcmp(key, "db") == 0) {
            snprintf(why, whylen,
                     "unknown option \"db\" (a redis:// URL takes the db as its "
                     "path: redis://host:port/N)");
            return -1;
        } else {
            snprintf(why, whylen,
                     "unknown option %s%s%s (known: connect_timeout_ms, "
                     "command_timeout_ms%s)",
                     key[0] ? "\"" : "", key[0] ? key : "in the query string", key[0] ? "\"" : "",
                     t->unix_sock ? ", db" : "");
            return -1;
        }
        if (*seen) {
            snprintf(why, whylen, "option %s is given twice", key);
            return -1;
        }
        *seen = 1;
        if (!eq) {
            snprintf(why, whylen, "option %s has no value (write %s=N)", key, key);
            return -1;
        }
        const char *v = eq + 1;
        size_t vlen = (size_t)(stop - v);
        long n = 0;
        int r = leash__redis_parse_num(v, vlen, max, &n);
        if (r == 0 && n < min)
            r = -2;
        if (r == -1) {
            snprintf(why, whylen, "option %s is not a number", key);
            return -1;
        }
        if (r == -2) {
            if (vlen <= 12)
                snprintf(why, whylen, "option %s=%.*s is out of range %ld..%ld", key, (int)vlen, v,
                         min, max);
            else
                snprintf(why, whylen, "option %s is out of range %ld..%ld", key, min, max);
            return -1;
        }
        *slot = (int)n;
        q = stop + (amp ? 1 : 0);
    }
    return 0;
}

/* The user info [s, at): user and password, percent-decoded. */
static int parse_userinfo(const char *s, const char *at, redis_target *t, char *why, size_t whylen)
{
    const char *colon = memchr(s, ':', (size_t)(at - s));
    if (!colon) {
        snprintf(why, whylen,
                 "the user info before '@' has no ':' (write "
                 "redis://:password@host or redis://user:password@host)");
        return -1;
    }
    if (colon > s) {
        int r = decode(s, (size_t)(colon - s), &t->user);
        if (r == -3)
            goto oom;
        if (r != 0) {
            snprintf(why, whylen, "the user name has a %s",
                     r == -1 ? "bad percent-escape" : "NUL byte (%%00)");
            return -1;
        }
    }
    int r = decode(colon + 1, (size_t)(at - colon - 1), &t->password);
    if (r == -3)
        goto oom;
    if (r != 0) {
        snprintf(why, whylen, "the password has a %s",
                 r == -1 ? "bad percent-escape (write %%XX, e.g. %%40 for '@')"
                         : "NUL byte (%%00)");
        return -1;
    }
    if (!t->password[0]) {
        snprintf(why, whylen, "the password is empty");
        return -1;
    }
    return 0;
oom:
    snprintf(why, whylen, "out of memory");
    return -1;
}

/* host[:port][/db] in [s, end) of a redis:// URL. */
static int parse_hostport(const char *s, const char *end, redis_target *t, char *why, size_t whylen)
{
    const char *slash = memchr(s, '/', (size_t)(end - s));
    const char *hp_end = slash ? slash : end;
    const char *h = s, *h_end, *p = NULL;
    if (*s == '[') {
        const char *close = memchr(s, ']', (size_t)(hp_end - s));
        if (!close) {
            snprintf(why, whylen, "the host: '[' without ']' (write redis://[::1]:6379)");
            return -1;
        }
        h = s + 1;
        h_end = close;
        if (close + 1 < hp_end && close[1] != ':') {
            snprintf(why, whylen, "the host: unexpected text after ']'");
            return -1;
        }
        if (close + 1 < hp_end)
            p = close + 2;
        char addr[INET6_ADDRSTRLEN + 8];
        unsigned char bin[16];
        size_t n = (size_t)(h_end - h);
        if (n == 0 || n >= sizeof addr ||
            (snprintf(addr, sizeof addr, "%.*s", (int)n, h), inet_pton(AF_INET6, addr, bin) != 1)) {
            snprintf(why, whylen, "the host in brackets is not an IPv6 address");
            return -1;
        }
    } else {
        const char *colon = memchr(s, ':', (size_t)(hp_end - s));
        h_end = colon ? colon : hp_end;
        if (colon)
            p = colon + 1;
        if (h_end == h) {
            snprintf(why, whylen, "the host is empty");
            return -1;
        }
        for (const char *c = h; c < h_end; c++) {
            if (!host_char_ok(*c)) {
                snprintf(why, whylen, "the host has an invalid character (0x%02x)",
                         (unsigned char)*c);
                return -1;
            }
        }
    }
    if ((size_t)(h_end - h) > REDIS_HOST_MAX) {
        snprintf(why, whylen, "the host is longer than %d bytes", REDIS_HOST_MAX);
        return -1;
    }
    t->host = strndup(h, (size_t)(h_end - h));
    if (!t->host) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    t->port = REDIS_DEFAULT_PORT;
    if (p) {
        size_t n = (size_t)(hp_end - p);
        long v = 0;
        int r = leash__redis_parse_num(p, n, 65535, &v);
        if (r == 0 && v < 1)
            r = -2;
        if (n == 0)
            snprintf(why, whylen, "the port is empty (drop the ':' for %d)", REDIS_DEFAULT_PORT);
        else if (r == -1 && memchr(p, ':', n))
            snprintf(why, whylen,
                     "the port is not a number (an IPv6 host goes in brackets: "
                     "redis://[::1]:6379)");
        else if (r == -1)
            snprintf(why, whylen, "the port is not a number 1..65535");
        else if (r == -2 && n <= 10)
            snprintf(why, whylen, "the port %.*s is out of range 1..65535", (int)n, p);
        else if (r == -2)
            snprintf(why, whylen, "the port is out of range 1..65535");
        if (n == 0 || r != 0)
            return -1;
        t->port = (int)v;
    }
    if (slash && slash + 1 < end) {
        const char *d = slash + 1;
        size_t n = (size_t)(end - d);
        long v = 0;
        int r = leash__redis_parse_num(d, n, INT_MAX, &v);
        if (r == -1) {
            snprintf(why, whylen, "the db (the path) is not a number >= 0");
            return -1;
        }
        if (r == -2) {
            snprintf(why, whylen, "the db (the path) is out of range 0..%d", INT_MAX);
            return -1;
        }
        t->db = (int)v;
    }
    return 0;
}

static void show_target(redis_target *t)
{
    if (t->unix_sock) {
        if (t->db)
            snprintf(t->shown, sizeof t->shown, "unix://%s?db=%d", t->host, t->db);
        else
            snprintf(t->shown, sizeof t->shown, "unix://%s", t->host);
        return;
    }
    int v6 = strchr(t->host, ':') != NULL;
    snprintf(t->shown, sizeof t->shown, "redis://%s%s%s%s%s:%d/%d", t->user ? t->user : "",
             t->password ? ":***@" : "", v6 ? "[" : "", t->host, v6 ? "]" : "", t->port, t->db);
}

redis_target *leash__redis_url_parse(const char *url, char *why, size_t whylen)
{
    size_t len = strlen(url);
    if (len > REDIS_URL_MAX) {
        snprintf(why, whylen, "the URL is longer than %d bytes", REDIS_URL_MAX);
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c < 0x20 || c == 0x7f) {
            snprintf(why, whylen, "the URL has a control character (0x%02x) at byte %zu", c, i);
            return NULL;
        }
        if (c == ' ') {
            snprintf(why, whylen, "the URL has a space at byte %zu", i);
            return NULL;
        }
    }
    redis_target *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    t->connect_timeout_ms = REDIS_CONNECT_TIMEOUT_MS;
    t->command_timeout_ms = REDIS_COMMAND_TIMEOUT_MS;
    const char *end = url + len;
    const char *rest;
    if (strncasecmp(url, "redis://", 8) == 0) {
        rest = url + 8;
    } else if (strncasecmp(url, "unix://", 7) == 0) {
        rest = url + 7;
        t->unix_sock = 1;
    } else if (strncasecmp(url, "rediss://", 9) == 0) {
        snprintf(why, whylen, "TLS (rediss://) is not supported: use redis:// or unix://");
        goto fail;
    } else {
        snprintf(why, whylen,
                 "the scheme must be redis:// or unix:// "
                 "(redis://[[user]:password@]host[:port][/db] or "
                 "unix:///path/redis.sock[?db=N])");
        goto fail;
    }
    if (!t->unix_sock) {
        /* '@' can only belong to the user info (host, port, db and options cannot hold one),
         * so the last '@' ends it even when the password holds '@', '/', ':' or '?'. */
        const char *at = NULL;
        for (const char *c = rest; c < end; c++)
            if (*c == '@')
                at = c;
        if (at) {
            if (parse_userinfo(rest, at, t, why, whylen) != 0)
                goto fail;
            rest = at + 1;
        }
    }
    const char *q = memchr(rest, '?', (size_t)(end - rest));
    const char *main_end = q ? q : end;
    if (t->unix_sock) {
        size_t n = (size_t)(main_end - rest);
        if (n == 0) {
            snprintf(why, whylen, "the socket path is empty (write unix:///path/redis.sock)");
            goto fail;
        }
        if (rest[0] != '/') {
            snprintf(why, whylen,
                     "the socket path must be absolute (write unix:///path/redis.sock)");
            goto fail;
        }
        if (n >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            snprintf(why, whylen, "the socket path is longer than %zu bytes",
                     sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
            goto fail;
        }
        t->host = strndup(rest, n);
        if (!t->host) {
            snprintf(why, whylen, "out of memory");
            goto fail;
        }
    } else if (parse_hostport(rest, main_end, t, why, whylen) != 0) {
        goto fail;
    }
    if (q && parse_options(q + 1, end, t, why, whylen) != 0)
        goto fail;
    show_target(t);
    return t;
fail:
    leash__redis_target_free(t);
    return NULL;
}

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

/* How the parser treats a password holding a URL delimiter, for every scheme:
 *   '@'              the user info ends at the last '@' (host, port, db, options and the
 *                    master name cannot hold one), so the password is taken whole;
 *   '/' '#' '[' ']'  before that '@': taken whole;
 *   ':'              the first ':' of the user info ends the user name: taken whole;
 *   '%'              must start a %XX escape, else the URL is refused;
 *   '?'              redis://: taken whole; redis-sentinel://: refused, since its options
 *                    may hold a password with an '@' and the two cannot be told apart.
 * A message never quotes any part of the user info, of an option value, or of a part that
 * might be a misplaced password (a refused port, host or master name is described, not
 * shown). */

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

redis_target *leash__redis_target_ref(redis_target *t)
{
    /* relaxed: a new reference is taken from one the caller already holds */
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void leash__redis_target_unref(redis_target *t)
{
    /* acq_rel: the last release sees every write made through the other references */
    if (!t || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(t->host);
    free(t->user);
    wipe_free(t->password);
    for (int i = 0; i < t->nsentinels; i++)
        free(t->sentinels[i].host);
    free(t->master_name);
    free(t->sentinel_user);
    wipe_free(t->sentinel_password);
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

void leash__redis_addr(const char *host, int port, char *out, size_t outlen)
{
    int v6 = strchr(host, ':') != NULL;
    snprintf(out, outlen, "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
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
            explicit_bzero(d, k);
            free(d);
            return -1;
        }
        d[k] = (char)(hi * 16 + lo);
        if (d[k++] == '\0') {
            explicit_bzero(d, k);
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

static const char *last_of(const char *s, const char *end, char c)
{
    const char *hit = NULL;
    for (const char *p = s; p < end; p++)
        if (*p == c)
            hit = p;
    return hit;
}

/* ---- options ---- */

enum { OPT_NUM, OPT_STR, OPT_ROLE };

/* A string option's value, percent-decoded into *slot. 0, or -1 with why filled (never the
 * value: it may be a password). */
static int string_option(const char *key, const char *v, size_t vlen, char **slot, char *why,
                         size_t whylen)
{
    int r = decode(v, vlen, slot);
    if (r == -3)
        snprintf(why, whylen, "out of memory");
    else if (r == -1)
        snprintf(why, whylen, "option %s has a bad percent-escape (write %%XX, e.g. %%26 for '&')",
                 key);
    else if (r == -2)
        snprintf(why, whylen, "option %s has a NUL byte (%%00)", key);
    else if (!(*slot)[0])
        snprintf(why, whylen, "option %s is empty", key);
    return r == 0 && (*slot)[0] ? 0 : -1;
}

/* Parses the query string [q, end) into t. Returns 0, or -1 with why filled. */
static int parse_options(const char *q, const char *end, redis_target *t, char *why, size_t whylen)
{
    /* A password option's value may hold a raw '&' that split it: then no key is quoted. */
    int quiet = 0;
    for (const char *p = q; p + 8 <= end; p++)
        if (strncmp(p, "sentinel", 8) == 0)
            quiet = 1;
    int seen[6] = {0};
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
        int which = -1, type = OPT_NUM;
        long max = REDIS_TIMEOUT_MAX_MS, min = 1;
        if (strcmp(key, "connect_timeout_ms") == 0) {
            which = 0;
        } else if (strcmp(key, "command_timeout_ms") == 0) {
            which = 1;
        } else if (strcmp(key, "db") == 0 && t->kind == REDIS_UNIX) {
            which = 2;
            max = INT_MAX;
            min = 0;
        } else if (strcmp(key, "sentinel_password") == 0 && t->kind == REDIS_SENTINEL) {
            which = 3;
            type = OPT_STR;
        } else if (strcmp(key, "sentinel_user") == 0 && t->kind == REDIS_SENTINEL) {
            which = 4;
            type = OPT_STR;
        } else if (strcmp(key, "role") == 0 && t->kind == REDIS_SENTINEL) {
            which = 5;
            type = OPT_ROLE;
        } else if (strcmp(key, "db") == 0) {
            snprintf(why, whylen,
                     "unknown option \"db\" (this URL takes the db as its path: "
                     "%s://host:port/N)",
                     t->kind == REDIS_SENTINEL ? "redis-sentinel" : "redis");
            return -1;
        } else {
            int shown = key[0] && !quiet;
            snprintf(why, whylen,
                     "unknown option %s%s%s (known: connect_timeout_ms, "
                     "command_timeout_ms%s)",
                     shown ? "\"" : "", shown ? key : "in the query string", shown ? "\"" : "",
                     t->kind == REDIS_UNIX       ? ", db"
                     : t->kind == REDIS_SENTINEL ? ", sentinel_password, sentinel_user, role"
                                                 : "");
            return -1;
        }
        if (seen[which]) {
            snprintf(why, whylen, "option %s is given twice", key);
            return -1;
        }
        seen[which] = 1;
        if (!eq) {
            snprintf(why, whylen, "option %s has no value (write %s=%s)", key, key,
                     type == OPT_NUM ? "N" : "...");
            return -1;
        }
        const char *v = eq + 1;
        size_t vlen = (size_t)(stop - v);
        q = stop + (amp ? 1 : 0);
        if (type == OPT_STR) {
            if (string_option(key, v, vlen, which == 3 ? &t->sentinel_password : &t->sentinel_user,
                              why, whylen) != 0)
                return -1;
            continue;
        }
        if (type == OPT_ROLE) {
            if (vlen == 6 && strncmp(v, "master", 6) == 0) {
                t->replica = 0;
            } else if (vlen == 7 && strncmp(v, "replica", 7) == 0) {
                t->replica = 1;
            } else {
                snprintf(why, whylen, "option role must be master or replica");
                return -1;
            }
            continue;
        }
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
        *(which == 0   ? &t->connect_timeout_ms
          : which == 1 ? &t->command_timeout_ms
                       : &t->db) = (int)n;
    }
    return 0;
}

/* ---- user info, hosts, master name ---- */

/* The user info [s, at): user and password, percent-decoded. */
static int parse_userinfo(const char *s, const char *at, redis_target *t, char *why, size_t whylen)
{
    const char *colon = memchr(s, ':', (size_t)(at - s));
    if (!colon) {
        snprintf(why, whylen,
                 "the user info before '@' has no ':' (write scheme://:password@host or "
                 "scheme://user:password@host, and %%40 for an '@' elsewhere)");
        return -1;
    }
    if (colon > s) {
        int r = decode(s, (size_t)(colon - s), &t->user);
        if (r == -3)
            goto oom;
        if (r != 0) {
            snprintf(why, whylen, "the user name has a %s",
                     r == -1 ? "bad percent-escape" : "NUL byte (%00)");
            return -1;
        }
    }
    int r = decode(colon + 1, (size_t)(at - colon - 1), &t->password);
    if (r == -3)
        goto oom;
    if (r != 0) {
        snprintf(why, whylen, "the password has a %s",
                 r == -1 ? "bad percent-escape (write %XX, e.g. %25 for '%' and %40 for '@')"
                         : "NUL byte (%00)");
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

/* One host[:port] in [s, end) into *host and *port (defport when absent). label ("" or
 * "sentinel N: ") starts every message. 0, or -1 with why filled. */
static int parse_node(const char *s, const char *end, int defport, const char *label, char **host,
                      int *port, char *why, size_t whylen)
{
    const char *h = s, *h_end, *p = NULL;
    char msg[200] = "";
    if (s < end && *s == '[') {
        const char *close = memchr(s, ']', (size_t)(end - s));
        if (!close) {
            snprintf(msg, sizeof msg, "the host: '[' without ']' (write [::1]:6379)");
            goto fail;
        }
        h = s + 1;
        h_end = close;
        if (close + 1 < end && close[1] != ':') {
            snprintf(msg, sizeof msg, "the host: unexpected text after ']'");
            goto fail;
        }
        if (close + 1 < end)
            p = close + 2;
        char addr[INET6_ADDRSTRLEN + 8];
        unsigned char bin[16];
        size_t n = (size_t)(h_end - h);
        if (n == 0 || n >= sizeof addr ||
            (snprintf(addr, sizeof addr, "%.*s", (int)n, h), inet_pton(AF_INET6, addr, bin) != 1)) {
            snprintf(msg, sizeof msg, "the host in brackets is not an IPv6 address");
            goto fail;
        }
    } else {
        const char *colon = memchr(s, ':', (size_t)(end - s));
        h_end = colon ? colon : end;
        if (colon)
            p = colon + 1;
        if (h_end == h) {
            snprintf(msg, sizeof msg, "the host is empty");
            goto fail;
        }
        for (const char *c = h; c < h_end; c++) {
            if (!host_char_ok(*c)) {
                snprintf(msg, sizeof msg,
                         "the host has an invalid character (letters, digits, '.', '-', '_'; "
                         "an IPv6 address in brackets)");
                goto fail;
            }
        }
    }
    if ((size_t)(h_end - h) > REDIS_HOST_MAX) {
        snprintf(msg, sizeof msg, "the host is longer than %d bytes", REDIS_HOST_MAX);
        goto fail;
    }
    *port = defport;
    if (p) {
        size_t n = (size_t)(end - p);
        long v = 0;
        int r = leash__redis_parse_num(p, n, 65535, &v);
        if (r == 0 && v < 1)
            r = -2;
        if (n == 0)
            snprintf(msg, sizeof msg, "the port is empty (drop the ':' for %d)", defport);
        else if (r == -1 && memchr(p, ':', n))
            snprintf(msg, sizeof msg,
                     "the port is not a number (an IPv6 host goes in brackets: [::1]:6379)");
        else if (r == -1)
            snprintf(msg, sizeof msg, "the port is not a number 1..65535");
        else if (r == -2 && n <= 10)
            snprintf(msg, sizeof msg, "the port %.*s is out of range 1..65535", (int)n, p);
        else if (r == -2)
            snprintf(msg, sizeof msg, "the port is out of range 1..65535");
        if (n == 0 || r != 0)
            goto fail;
        *port = (int)v;
    }
    *host = strndup(h, (size_t)(h_end - h));
    if (!*host) {
        snprintf(msg, sizeof msg, "out of memory");
        goto fail;
    }
    return 0;
fail:
    snprintf(why, whylen, "%s%s", label, msg);
    return -1;
}

/* The db path after '/', [d, end). */
static int parse_db(const char *d, const char *end, redis_target *t, char *why, size_t whylen)
{
    if (d >= end)
        return 0;
    long v = 0;
    int r = leash__redis_parse_num(d, (size_t)(end - d), INT_MAX, &v);
    if (r == -1) {
        snprintf(why, whylen, "the db (the path) is not a number >= 0");
        return -1;
    }
    if (r == -2) {
        snprintf(why, whylen, "the db (the path) is out of range 0..%d", INT_MAX);
        return -1;
    }
    t->db = (int)v;
    return 0;
}

/* host[:port][/db] in [s, end) of a redis:// URL. */
static int parse_hostport(const char *s, const char *end, redis_target *t, char *why, size_t whylen)
{
    const char *slash = memchr(s, '/', (size_t)(end - s));
    if (parse_node(s, slash ? slash : end, REDIS_DEFAULT_PORT, "", &t->host, &t->port, why,
                   whylen) != 0)
        return -1;
    return slash ? parse_db(slash + 1, end, t, why, whylen) : 0;
}

/* host[:port][,host[:port]]...[/db] in [s, end) of a redis-sentinel:// URL. */
static int parse_sentinels(const char *s, const char *end, redis_target *t, char *why,
                           size_t whylen)
{
    const char *slash = memchr(s, '/', (size_t)(end - s));
    const char *hosts_end = slash ? slash : end;
    const char *p = s;
    for (int i = 0;; i++) {
        const char *comma = memchr(p, ',', (size_t)(hosts_end - p));
        const char *stop = comma ? comma : hosts_end;
        char label[32];
        snprintf(label, sizeof label, "sentinel %d: ", i + 1);
        if (i == REDIS_SENTINELS_MAX) {
            snprintf(why, whylen, "more than %d sentinels", REDIS_SENTINELS_MAX);
            return -1;
        }
        if (stop == p) {
            snprintf(why, whylen, "sentinel %d is empty (write host[:port],host[:port]...)", i + 1);
            return -1;
        }
        redis_node *n = &t->sentinels[i];
        if (parse_node(p, stop, REDIS_SENTINEL_PORT, label, &n->host, &n->port, why, whylen) != 0)
            return -1;
        t->nsentinels = i + 1;
        if (!comma)
            break;
        p = comma + 1;
    }
    return slash ? parse_db(slash + 1, end, t, why, whylen) : 0;
}

/* The master name after '#', [s, end), percent-decoded: printable, no space. Never quoted
 * when refused (after a '#' of a password it would be part of the password). */
static int parse_master(const char *s, const char *end, redis_target *t, char *why, size_t whylen)
{
    if (s == end) {
        snprintf(why, whylen, "the master name after '#' is empty");
        return -1;
    }
    if ((size_t)(end - s) > REDIS_MASTER_NAME_MAX) {
        snprintf(why, whylen, "the master name is longer than %d bytes", REDIS_MASTER_NAME_MAX);
        return -1;
    }
    for (const char *c = s; c < end; c++) {
        if (!host_char_ok(*c) && *c != '%' && *c != ':') {
            snprintf(why, whylen,
                     "the master name (after the last '#') is missing or has an invalid "
                     "character (letters, digits, '.', '-', '_', ':' or %%XX)");
            return -1;
        }
    }
    int r = decode(s, (size_t)(end - s), &t->master_name);
    if (r == -3) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    for (const char *c = r == 0 ? t->master_name : ""; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            r = -1;
    if (r != 0) {
        snprintf(why, whylen, "the master name has a bad percent-escape or a space");
        return -1;
    }
    return 0;
}

static void show_target(redis_target *t)
{
    char *o = t->shown;
    size_t n = sizeof t->shown, k = 0;
#define SHOW(...)                                                                                  \
    do {                                                                                           \
        if (k < n)                                                                                 \
            k += (size_t)snprintf(o + k, n - k, __VA_ARGS__);                                      \
    } while (0)
    if (t->kind == REDIS_UNIX) {
        SHOW("unix://%.200s", t->host);
        if (t->db)
            SHOW("?db=%d", t->db);
        return;
    }
    char addr[REDIS_ADDR_MAX];
    SHOW("%s://%.100s%s", t->kind == REDIS_SENTINEL ? "redis-sentinel" : "redis",
         t->user ? t->user : "", t->password ? ":***@" : (t->user ? "@" : ""));
    if (t->kind == REDIS_TCP) {
        leash__redis_addr(t->host, t->port, addr, sizeof addr);
        SHOW("%.200s/%d", addr, t->db);
        return;
    }
    for (int i = 0; i < t->nsentinels; i++) {
        leash__redis_addr(t->sentinels[i].host, t->sentinels[i].port, addr, sizeof addr);
        SHOW("%s%.200s", i ? "," : "", addr);
    }
    SHOW("/%d", t->db);
    if (t->replica)
        SHOW("?role=replica");
    SHOW("#%.128s", t->master_name);
#undef SHOW
}

/* ---- the URL ---- */

static int check_bytes(const char *url, size_t len, char *why, size_t whylen)
{
    if (len > REDIS_URL_MAX) {
        snprintf(why, whylen, "the URL is longer than %d bytes", REDIS_URL_MAX);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c < 0x20 || c == 0x7f) {
            snprintf(why, whylen, "the URL has a control character (0x%02x) at byte %zu", c, i);
            return -1;
        }
        if (c == ' ') {
            snprintf(why, whylen, "the URL has a space at byte %zu", i);
            return -1;
        }
    }
    return 0;
}

static const char *scheme(const char *url, redis_target *t, char *why, size_t whylen)
{
    if (strncasecmp(url, "redis://", 8) == 0)
        return url + 8;
    if (strncasecmp(url, "unix://", 7) == 0) {
        t->kind = REDIS_UNIX;
        return url + 7;
    }
    if (strncasecmp(url, "redis-sentinel://", 17) == 0) {
        t->kind = REDIS_SENTINEL;
        return url + 17;
    }
    if (strncasecmp(url, "rediss://", 9) == 0)
        snprintf(why, whylen, "TLS (rediss://) is not supported: use redis:// or unix://");
    else
        snprintf(why, whylen,
                 "the scheme must be redis://, unix:// or redis-sentinel:// "
                 "(redis://[[user]:password@]host[:port][/db], "
                 "unix:///path/redis.sock[?db=N] or "
                 "redis-sentinel://[[user]:password@]host[:port][,host[:port]]...[/"
                 "db]#master-name)");
    return NULL;
}

redis_target *leash__redis_url_parse(const char *url, char *why, size_t whylen)
{
    size_t len = strlen(url);
    if (check_bytes(url, len, why, whylen) != 0)
        return NULL;
    redis_target *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->connect_timeout_ms = REDIS_CONNECT_TIMEOUT_MS;
    t->command_timeout_ms = REDIS_COMMAND_TIMEOUT_MS;
    const char *end = url + len;
    const char *rest = scheme(url, t, why, whylen);
    if (!rest)
        goto fail;
    if (t->kind == REDIS_SENTINEL) {
        /* the master name follows the last '#' (it holds none, nor an '@') */
        const char *hash = last_of(rest, end, '#');
        if (!hash) {
            snprintf(why, whylen, "the master name is missing (end the URL with #master-name)");
            goto fail;
        }
        if (parse_master(hash + 1, end, t, why, whylen) != 0)
            goto fail;
        end = hash;
    }
    if (t->kind != REDIS_UNIX) {
        const char *at = last_of(rest, end, '@');
        if (at && t->kind == REDIS_SENTINEL && memchr(rest, '?', (size_t)(at - rest))) {
            snprintf(why, whylen,
                     "a '?' comes before the last '@': write a '?' in a password as %%3F and an "
                     "'@' in an option value as %%40");
            goto fail;
        }
        if (at) {
            if (parse_userinfo(rest, at, t, why, whylen) != 0)
                goto fail;
            rest = at + 1;
        }
    }
    const char *q = memchr(rest, '?', (size_t)(end - rest));
    const char *main_end = q ? q : end;
    if (t->kind == REDIS_UNIX) {
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
    } else if (t->kind == REDIS_SENTINEL) {
        if (parse_sentinels(rest, main_end, t, why, whylen) != 0)
            goto fail;
    } else if (parse_hostport(rest, main_end, t, why, whylen) != 0) {
        goto fail;
    }
    if (q && parse_options(q + 1, end, t, why, whylen) != 0)
        goto fail;
    if (t->sentinel_user && !t->sentinel_password) {
        snprintf(why, whylen, "option sentinel_user needs sentinel_password");
        goto fail;
    }
    show_target(t);
    return t;
fail:
    leash__redis_target_unref(t);
    return NULL;
}

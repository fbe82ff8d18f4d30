/* PostgreSQL adapter: conninfo parsing and checking at open, and messages that never hold any
 * piece of the password. */
#include "pg-int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PG_HOSTS_MAX 64
#define HIDDEN "(hidden: it may hold a piece of the password)"

/* ---- where the password may be ---- */

/* After "postgresql://" or "postgres://", or NULL when conninfo is not a URI. */
static const char *uri_body(const char *conninfo)
{
    if (strncmp(conninfo, "postgresql://", 13) == 0)
        return conninfo + 13;
    if (strncmp(conninfo, "postgres://", 11) == 0)
        return conninfo + 11;
    return NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 1 when s[0, n) holds "password" (any case) once percent-decoded as libpq decodes a URI's
 * query (a bad escape is kept as written): "%70assword=..." sets the password too. */
static int decodes_to_password(const char *s, size_t n)
{
    static const char word[] = "password";
    char win[sizeof word - 1] = {0}; /* the last 8 decoded bytes */
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = (unsigned char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        }
        memmove(win, win + 1, sizeof win - 1);
        win[sizeof win - 1] = (char)tolower(c);
        if (++got >= sizeof win && memcmp(win, word, sizeof win) == 0)
            return 1;
    }
    return 0;
}

/* Parts of conninfo that may hold the password. In a key=value conninfo: from the first
 * "password" (any case) to the end. In a URI: the password of the user information (libpq's
 * rule: the user information ends at the first "@" met before any "/"; the region starts at
 * its ":"), and from the first query parameter that names a password, percent-encoded or not
 * (the region starts at the "?" or "&" before it), to the end. Fills up to 2 [start, end)
 * pairs; a region that reaches the end is always the last. */
static int secret_regions(const char *conninfo, size_t reg[2][2])
{
    size_t len = strlen(conninfo);
    const char *a = uri_body(conninfo);
    if (!a) {
        const char *pw = strcasestr(conninfo, "password");
        if (!pw)
            return 0;
        reg[0][0] = (size_t)(pw - conninfo);
        reg[0][1] = len;
        return 1;
    }
    int n = 0;
    size_t span = strcspn(a, "@/");
    const char *colon = memchr(a, ':', span);
    const char *rest = a;
    if (a[span] == '@') {
        rest = a + span + 1;
        if (colon) {
            reg[n][0] = (size_t)(colon - conninfo);
            reg[n++][1] = (size_t)(a + span - conninfo);
        }
    }
    for (const char *q = strchr(rest, '?'); q && *q; q += 1 + strcspn(q + 1, "&")) {
        size_t plen = strcspn(q + 1, "&");
        if (decodes_to_password(q + 1, plen)) {
            reg[n][0] = (size_t)(q - conninfo);
            reg[n++][1] = len;
            break;
        }
    }
    return n;
}

/* 1 when frag (len bytes) can be quoted in a message: it occurs in conninfo and no occurrence
 * touches a part that may hold the password. A value that does not occur as written (percent-
 * decoded, or from the environment) is not shown either. */
static int fragment_safe(const char *conninfo, const char *frag, size_t len)
{
    if (len == 0 || (len == 1 && ispunct((unsigned char)frag[0])))
        return 1;
    size_t reg[2][2];
    int nreg = secret_regions(conninfo, reg);
    size_t total = strlen(conninfo);
    int found = 0;
    for (size_t i = 0; i + len <= total; i++) {
        if (memcmp(conninfo + i, frag, len) != 0)
            continue;
        found = 1;
        for (int r = 0; r < nreg; r++)
            if (i < reg[r][1] && reg[r][0] < i + len)
                return 0;
    }
    return found;
}

/* "value" in quotes when it is safe to show, else a note. */
static const char *quoted(const char *conninfo, const char *v, char *buf, size_t len)
{
    if (fragment_safe(conninfo, v, strlen(v)))
        snprintf(buf, len, "\"%.60s\"", v);
    else
        snprintf(buf, len, "%s", HIDDEN);
    return buf;
}

/* Says why PQconninfoParse refused conninfo. Without a password in it, libpq's message (on one
 * line, through leash__redact). With one, nothing libpq said about conninfo itself is shown:
 * its message may quote any piece of the input, a piece of the password included, with the
 * password's own quotes or percent-escapes around it (its quotes cannot be paired), or with a
 * translation's quotes. Instead conninfo is read again with the URI's password as "***" and
 * cut where a password parameter may begin, and what libpq says about that copy, which holds
 * nothing of the password, is shown; when the copy reads fine, the fault is in the part left
 * out, and nothing of it is shown. */
static void parse_error(const char *conninfo, const char *perr, char *out, size_t outlen)
{
    size_t reg[2][2];
    int nreg = secret_regions(conninfo, reg);
    if (nreg == 0) {
        pg__shown(NULL, perr, 0, out, outlen);
        return;
    }
    size_t len = strlen(conninfo), cut = len;
    char *masked = malloc(len + 4);
    if (!masked) {
        snprintf(out, outlen, "libpq cannot read it (not shown: it holds a password)");
        return;
    }
    size_t m = 0;
    for (size_t i = 0; i < len;) {
        int r = reg[0][0] == i ? 0 : (nreg > 1 && reg[1][0] == i ? 1 : -1);
        if (r >= 0 && reg[r][1] == len) {
            cut = i;
            break;
        }
        if (r >= 0) {
            masked[m++] = ':';
            if (reg[r][1] > i + 1)
                m += (size_t)snprintf(masked + m, 4, "***");
            i = reg[r][1];
            continue;
        }
        masked[m++] = conninfo[i++];
    }
    masked[m] = '\0';
    char *again = NULL;
    PQconninfoOption *o = PQconninfoParse(masked, &again);
    if (!o && again) {
        char msg[PG_MSG_MAX / 2];
        pg__shown(NULL, again, 0, msg, sizeof msg);
        snprintf(out, outlen, "%s (%s)", msg,
                 cut < len ? "read up to where a password may begin; nothing after that is shown"
                           : "read with the password as ***");
    } else {
        snprintf(out, outlen,
                 "libpq cannot read %s (nothing of it is shown: it may hold the password); check "
                 "its quotes, backslashes and percent-escapes (%%XX with two hex digits, never "
                 "%%00)",
                 cut < len ? "the part from where a password may begin" : "the password");
    }
    PQconninfoFree(o);
    PQfreemem(again);
    free(masked);
}

/* libpq splits a URI's user information at the first "@" before any "/": a password holding
 * "/" or "@" as written makes it take a piece of the password for the host, port or database.
 * Such a URI is refused before libpq quotes any of it: an "@" after the user information. */
static int uri_check(const char *conninfo, char *err, size_t errlen)
{
    const char *a = uri_body(conninfo);
    if (!a)
        return 0;
    const char *p = a + strcspn(a, "@/");
    const char *host = *p == '@' ? p + 1 : a;
    if (!strchr(host, '@'))
        return 0;
    snprintf(err, errlen,
             "malformed conninfo: the URI has an \"@\" after its user information (nothing of it "
             "is shown: it may hold the password); percent-encode / and @ in a password or user "
             "name (%%2F, %%40)");
    return -1;
}

/* ---- values ---- */

static const char *opt_val(const PQconninfoOption *o, const char *key)
{
    for (; o->keyword; o++)
        if (strcmp(o->keyword, key) == 0)
            return o->val && *o->val ? o->val : NULL;
    return NULL;
}

/* The conninfo's value for key, else the environment variable libpq would read, else NULL. */
static const char *val_or_env(const PQconninfoOption *o, const char *key, const char *env)
{
    const char *v = opt_val(o, key);
    if (!v && env) {
        v = getenv(env);
        if (v && !*v)
            v = NULL;
    }
    return v;
}

static const char *const sslmodes[] = {"disable",   "allow",       "prefer", "require",
                                       "verify-ca", "verify-full", NULL};
static const char *const gssencmodes[] = {"disable", "prefer", "require", NULL};
static const char *const tsas[] = {"any",     "read-write",     "read-only", "primary",
                                   "standby", "prefer-standby", NULL};
static const char *const tls_versions[] = {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", NULL};
static const char *const gsslibs[] = {"gssapi", NULL};

static const struct {
    const char *key, *env;
    const char *const *values;
    int nocase;
} enums[] = {
    {"sslmode", "PGSSLMODE", sslmodes, 0},
    {"gssencmode", "PGGSSENCMODE", gssencmodes, 0},
    {"channel_binding", "PGCHANNELBINDING", gssencmodes, 0}, /* the same three words */
    {"target_session_attrs", "PGTARGETSESSIONATTRS", tsas, 0},
    {"ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", tls_versions, 1},
    {"ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION", tls_versions, 1},
    {"gsslib", "PGGSSLIB", gsslibs, 0},
};

/* Options libpq reads as integers; min is the smallest value that means something. */
static const struct {
    const char *key;
    long min;
} ints[] = {
    {"connect_timeout", INT_MIN}, {"keepalives", INT_MIN}, {"keepalives_idle", 0},
    {"keepalives_interval", 0},   {"keepalives_count", 0}, {"tcp_user_timeout", 0},
    {"sslcompression", 0},        {"sslsni", 0},
};

const char *pg__tsa_name(pg_tsa tsa)
{
    return tsas[tsa];
}

/* An integer as libpq's parse_int_param takes it (spaces around, a sign, no overflow). */
static int int_ok(const char *v, long min, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || errno != 0 || n > INT_MAX || n < min)
        return 0;
    while (isspace((unsigned char)*end))
        end++;
    if (*end)
        return 0;
    *out = n;
    return 1;
}

/* Items of a comma-separated list (an empty list has one empty item). */
static int items(const char *list)
{
    int n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    return n;
}

/* Item i of a comma-separated list, copied to buf. */
static const char *item(const char *list, int i, char *buf, size_t len)
{
    const char *p = list;
    for (; i > 0 && p; i--) {
        p = strchr(p, ',');
        if (p)
            p++;
    }
    size_t n = p ? strcspn(p, ",") : 0;
    if (n >= len)
        n = len - 1;
    memcpy(buf, p ? p : "", n);
    buf[n] = '\0';
    return buf;
}

/* The checks libpq would only make at the first connect, made at open: enumerated values,
 * integers, ports, host addresses and how many of each. 0, or -1 with a message in err. */
static int check_values(const char *conninfo, const PQconninfoOption *o, int *nhosts, char *err,
                        size_t errlen)
{
    char q[80], one[256];
    for (size_t i = 0; i < sizeof enums / sizeof enums[0]; i++) {
        const char *v = val_or_env(o, enums[i].key, enums[i].env);
        if (!v)
            continue;
        int ok = 0;
        for (const char *const *w = enums[i].values; *w && !ok; w++)
            ok = enums[i].nocase ? strcasecmp(v, *w) == 0 : strcmp(v, *w) == 0;
        if (ok)
            continue;
        size_t n = 0;
        for (const char *const *w = enums[i].values; *w && n < sizeof one; w++)
            n += (size_t)snprintf(one + n, sizeof one - n, "%s%s", n ? ", " : "", *w);
        char from[48] = "";
        if (!opt_val(o, enums[i].key))
            snprintf(from, sizeof from, " (from %s)", enums[i].env);
        snprintf(err, errlen, "malformed conninfo: %s %s%s is not one of %s", enums[i].key,
                 quoted(conninfo, v, q, sizeof q), from, one);
        return -1;
    }
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const char *v = opt_val(o, ints[i].key);
        long n;
        if (v && !int_ok(v, ints[i].min, &n)) {
            snprintf(err, errlen, "malformed conninfo: %s %s is not %s", ints[i].key,
                     quoted(conninfo, v, q, sizeof q),
                     ints[i].min == 0 ? "an integer >= 0" : "an integer");
            return -1;
        }
    }
    const char *hosts = val_or_env(o, "host", "PGHOST");
    const char *addrs = val_or_env(o, "hostaddr", "PGHOSTADDR");
    const char *ports = val_or_env(o, "port", "PGPORT");
    int nh = hosts ? items(hosts) : 0, na = addrs ? items(addrs) : 0;
    int np = ports ? items(ports) : 0;
    int n = nh ? nh : (na ? na : 1);
    if (nh && na && nh != na) {
        snprintf(err, errlen, "malformed conninfo: %d host names but %d hostaddr values", nh, na);
        return -1;
    }
    if (np > 1 && np != n) {
        snprintf(err, errlen, "malformed conninfo: %d port numbers for %d hosts", np, n);
        return -1;
    }
    if (n > PG_HOSTS_MAX) {
        snprintf(err, errlen, "malformed conninfo: %d hosts (at most %d)", n, PG_HOSTS_MAX);
        return -1;
    }
    for (int i = 0; i < np; i++) {
        item(ports, i, one, sizeof one);
        long v;
        if (*one && (!int_ok(one, 1, &v) || v > 65535 || !isdigit((unsigned char)one[0]))) {
            snprintf(err, errlen, "malformed conninfo: port %s is not a list of numbers 1..65535",
                     quoted(conninfo, one, q, sizeof q));
            return -1;
        }
    }
    for (int i = 0; i < na; i++) {
        unsigned char bin[16];
        item(addrs, i, one, sizeof one);
        if (*one && inet_pton(AF_INET, one, bin) != 1 && inet_pton(AF_INET6, one, bin) != 1) {
            snprintf(err, errlen, "malformed conninfo: hostaddr %s is not a numeric IP address",
                     quoted(conninfo, one, q, sizeof q));
            return -1;
        }
    }
    *nhosts = n;
    return 0;
}

/* ---- targets ---- */

static void target_free(pg_target *t)
{
    if (!t)
        return;
    PQconninfoFree(t->opts);
    free(t->keys);
    free(t->vals);
    free(t->hosts);
    free(t->lists);
    free(t);
}

void pg__target_put(pg_target *t)
{
    /* acq_rel: the last owner's free follows every other owner's use (pairs with itself) */
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        target_free(t);
}

/* Options every attempt passes: the conninfo's own, but for the per-host ones and the timeout
 * leash enforces itself. */
static int per_attempt(const char *key)
{
    return strcmp(key, "host") == 0 || strcmp(key, "hostaddr") == 0 || strcmp(key, "port") == 0 ||
           strcmp(key, "target_session_attrs") == 0 || strcmp(key, "connect_timeout") == 0;
}

/* Splits the host, hostaddr and port lists into t->hosts. */
static int split_hosts(pg_target *t, int n)
{
    const char *hosts = val_or_env(t->opts, "host", "PGHOST");
    const char *addrs = val_or_env(t->opts, "hostaddr", "PGHOSTADDR");
    const char *ports = val_or_env(t->opts, "port", "PGPORT");
    size_t len = (hosts ? strlen(hosts) : 0) + (addrs ? strlen(addrs) : 0) +
                 (ports ? strlen(ports) * (size_t)n : 0) + 3 * (size_t)n + 1;
    t->hosts = calloc((size_t)n, sizeof *t->hosts);
    t->lists = malloc(len);
    if (!t->hosts || !t->lists)
        return -1;
    t->nhosts = n;
    char *w = t->lists;
    int np = ports ? items(ports) : 0;
    for (int i = 0; i < n; i++) {
        const char *src[3] = {hosts, addrs, ports};
        int idx[3] = {i, i, np == 1 ? 0 : i};
        const char **dst[3] = {&t->hosts[i].host, &t->hosts[i].hostaddr, &t->hosts[i].port};
        for (int k = 0; k < 3; k++) {
            if (!src[k])
                continue;
            item(src[k], idx[k], w, len - (size_t)(w - t->lists));
            *dst[k] = *w ? w : NULL;
            w += strlen(w) + 1;
        }
    }
    return 0;
}

static void describe_opts(const PQconninfoOption *o, char *out, size_t outlen)
{
    static const char *const show[] = {"host",   "hostaddr", "port",
                                       "dbname", "user",     "target_session_attrs"};
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof show / sizeof show[0] && len < outlen; i++) {
        const char *v = opt_val(o, show[i]);
        if (v)
            len += (size_t)snprintf(out + len, outlen - len, "%s%s=%s", len ? " " : "", show[i], v);
    }
    if (len == 0)
        snprintf(out, outlen, "(libpq defaults)");
}

pg_target *pg__target_new(const char *conninfo, const pg_defaults *d, leash_status *st, char *err,
                          size_t errlen)
{
    *st = LEASH_EINVAL;
    if (uri_check(conninfo, err, errlen) != 0)
        return NULL;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        if (!perr) {
            *st = LEASH_ENOMEM;
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        char msg[PG_MSG_MAX];
        parse_error(conninfo, perr, msg, sizeof msg);
        PQfreemem(perr);
        snprintf(err, errlen, "malformed conninfo: %s", msg);
        return NULL;
    }
    int nhosts = 1;
    if (check_values(conninfo, opts, &nhosts, err, errlen) != 0) {
        PQconninfoFree(opts);
        return NULL;
    }
    pg_target *t = calloc(1, sizeof *t);
    if (!t) {
        PQconninfoFree(opts);
        *st = LEASH_ENOMEM;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->opts = opts;
    size_t n = 0;
    for (const PQconninfoOption *p = opts; p->keyword; p++)
        n++;
    /* + 5 defaults, + 4 per-host options, + the NULL end */
    t->keys = calloc(n + 10, sizeof *t->keys);
    t->vals = calloc(n + 10, sizeof *t->vals);
    if (!t->keys || !t->vals || split_hosts(t, nhosts) != 0) {
        target_free(t);
        *st = LEASH_ENOMEM;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int k = 0;
    for (const PQconninfoOption *p = opts; p->keyword; p++) {
        if (!p->val || !*p->val || per_attempt(p->keyword))
            continue;
        t->keys[k] = p->keyword;
        t->vals[k++] = p->val;
    }
    static const struct {
        const char *key, *val;
    } dflt[] = {
        {"keepalives_idle", PG_KEEPALIVES_IDLE},
        {"keepalives_interval", PG_KEEPALIVES_INTERVAL},
        {"keepalives_count", PG_KEEPALIVES_COUNT},
        {"tcp_user_timeout", PG_TCP_USER_TIMEOUT},
    };
    for (size_t i = 0; i < sizeof dflt / sizeof dflt[0]; i++) {
        if (opt_val(opts, dflt[i].key))
            continue;
        t->keys[k] = dflt[i].key;
        t->vals[k++] = dflt[i].val;
    }
    if (!opt_val(opts, "application_name") && !opt_val(opts, "fallback_application_name") &&
        d->app_name) {
        snprintf(t->app_name, sizeof t->app_name, "%s", d->app_name);
        t->keys[k] = "fallback_application_name";
        t->vals[k++] = t->app_name;
    }
    t->nbase = k;

    const char *tsa = val_or_env(opts, "target_session_attrs", "PGTARGETSESSIONATTRS");
    t->tsa = PG_TSA_ANY;
    for (int i = 0; tsa && tsas[i]; i++)
        if (strcmp(tsa, tsas[i]) == 0)
            t->tsa = (pg_tsa)i;
    long secs = 0;
    const char *ct = val_or_env(opts, "connect_timeout", "PGCONNECT_TIMEOUT");
    if (!ct || !int_ok(ct, INT_MIN, &secs) || secs <= 0)
        secs = d->connect_timeout_s > 0 ? d->connect_timeout_s : PG_CONNECT_TIMEOUT_S;
    if (secs > INT_MAX / 1000)
        secs = INT_MAX / 1000;
    t->connect_timeout_ms = (int)secs * 1000;
    t->password = opt_val(opts, "password");
    describe_opts(opts, t->shown, sizeof t->shown);
    *st = LEASH_OK;
    return t;
}

void pg__describe(const char *conninfo, char *out, size_t outlen)
{
    char err[PG_MSG_MAX];
    leash_status st;
    pg_defaults d = {0};
    pg_target *t = conninfo ? pg__target_new(conninfo, &d, &st, err, sizeof err) : NULL;
    snprintf(out, outlen, "%s", t ? t->shown : "(malformed conninfo)");
    pg__target_put(t);
}

/* ---- messages ---- */

void pg__shown(const char *password, const char *msg, int first_line, char *out, size_t outlen)
{
    char flat[LEASH_ERR_MAX];
    size_t n = 0;
    if (!msg || !*msg)
        msg = "no message from libpq";
    for (const char *p = msg; *p && n + 3 < sizeof flat; p++) {
        if (*p == '\n' && first_line)
            break;
        if (*p == '\n' && p[1] == '\t') {
            flat[n++] = ' ';
            p++;
        } else if (*p == '\n') {
            if (p[1]) {
                flat[n++] = ';';
                flat[n++] = ' ';
            }
        } else {
            flat[n++] = *p;
        }
    }
    while (n > 0 && isspace((unsigned char)flat[n - 1]))
        n--;
    flat[n] = '\0';
    leash__redact(flat, out, outlen);
    size_t pwlen = password ? strlen(password) : 0;
    if (pwlen < 3)
        return;
    for (char *hit = strstr(out, password); hit; hit = strstr(hit + 3, password)) {
        memset(hit, '*', 3);
        memmove(hit + 3, hit + pwlen, strlen(hit + pwlen) + 1);
    }
}

/* HTTP adapter: pools of libcurl easy handles that keep their connections alive. */
#include "common.h"

#include <leash/http.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HTTP_CONNECT_TIMEOUT_MS 5000
#define HTTP_TIMEOUT_MS 30000
#define HTTP_MAX_BODY ((size_t)8 << 20)
/* Redirects are off by default (a 3xx is a response); a borrower who turns
 * CURLOPT_FOLLOWLOCATION on through leash_http() gets https-only redirects, this many. */
#define HTTP_MAX_REDIRS 5L
#define HTTP_METHOD_MAX 32

/* Called once from the manager's initialisation (and defensively from pool open). */
void leash__http_global_init(void);
/* The easy handle of a held HTTP handle without counting it as a raw borrow (tests read
 * CURLINFO_* through it); NULL as leash_http. */
CURL *leash__http_easy(leash_handle *h);
/* Test hook: takes (lock 1) or drops (lock 0) the DNS lock of the share of h's pool, as
 * libcurl does around a DNS cache lookup. */
void leash__http_share_hold(leash_handle *h, int lock);

/* The pool's adapter context: the parsed options and the share object. */
typedef struct http_ctx {
    char *base; /* validated, no trailing '/' */
    size_t base_len;
    char shown[LEASH_ERR_MAX / 2]; /* base without password, for messages */
    long connect_timeout_ms, timeout_ms;
    size_t max_body;
    struct curl_slist *headers;
    char *ca_file;
    int insecure;
    CURLSH *share;
    struct http_ctx *next; /* every live context, for the fork handlers */
    pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
} http_ctx;

/* One pooled connection: an easy handle and what the request helpers need. */
typedef struct http_conn {
    CURL *curl;
    http_ctx *ctx;
    int raw;    /* leash_http() gave the easy handle out: full reset on release */
    int method; /* a helper set a method other than GET: undo on release */
    int over;   /* the body went over max_body */
    char *buf;  /* the response being received */
    size_t len, cap;
    char *url; /* the last URL given to curl */
    size_t url_cap;
    int url_set; /* curl holds url (a raw borrow may have changed it) */
    char errbuf[CURL_ERROR_SIZE];
} http_conn;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;

/* Every pool's share locks are taken around fork(), so a child never inherits one held
 * by a thread that does not exist there. */
static pthread_mutex_t ctxs_lock = PTHREAD_MUTEX_INITIALIZER;
static http_ctx *ctxs;

/* Takes all of ctx's locks, or none and retries: libcurl might nest two of them. */
static void lock_all(http_ctx *ctx)
{
    for (;;) {
        int i = 0;
        while (i < CURL_LOCK_DATA_LAST && pthread_mutex_trylock(&ctx->locks[i]) == 0)
            i++;
        if (i == CURL_LOCK_DATA_LAST)
            return;
        while (i-- > 0)
            pthread_mutex_unlock(&ctx->locks[i]);
        sched_yield();
    }
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&ctxs_lock);
    for (http_ctx *ctx = ctxs; ctx; ctx = ctx->next)
        lock_all(ctx);
}

static void fork_done(void)
{
    for (http_ctx *ctx = ctxs; ctx; ctx = ctx->next)
        for (int i = CURL_LOCK_DATA_LAST - 1; i >= 0; i--)
            pthread_mutex_unlock(&ctx->locks[i]);
    pthread_mutex_unlock(&ctxs_lock);
}

static void global_init_once(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_atfork(fork_prepare, fork_done, fork_done);
}

void leash__http_global_init(void)
{
    pthread_once(&global_once, global_init_once);
}

/* ---- the share object's locks ---- */

static void share_lock(CURL *curl, curl_lock_data data, curl_lock_access access, void *arg)
{
    http_ctx *ctx = arg;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&ctx->locks[data]);
}

static void share_unlock(CURL *curl, curl_lock_data data, void *arg)
{
    http_ctx *ctx = arg;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&ctx->locks[data]);
}

/* ---- base URL ---- */

static int bad_char(unsigned char ch)
{
    return ch <= 0x20 || ch == 0x7f;
}

static int host_char(unsigned char ch)
{
    return isalnum(ch) || ch == '.' || ch == '-' || ch == '_' || ch == '%';
}

/* Checks url's syntax: http:// or https://, optional userinfo, a host (name, IPv4 or
 * [IPv6]), an optional port 1..65535 and an optional path prefix; no query, fragment,
 * space or control character. The message names the bad part, never the userinfo. */
static leash_status check_base(const char *url)
{
    const char *p;
    if (!url)
        return leash__fail(LEASH_EINVAL, "http pool: base URL is NULL");
    if (!*url)
        return leash__fail(LEASH_EINVAL, "http pool: base URL is empty");
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
    } else {
        const char *sep = strstr(url, "://");
        size_t n = sep ? (size_t)(sep - url) : 0;
        for (size_t i = 0; i < n; i++)
            if (!isalnum((unsigned char)url[i]) && !strchr("+-.", url[i]))
                n = 0;
        if (n == 0 || n > 16)
            return leash__fail(LEASH_EINVAL,
                               "http pool: bad base URL: scheme missing (want http:// or "
                               "https://)");
        return leash__fail(LEASH_EINVAL,
                           "http pool: bad base URL: scheme \"%.*s\" not supported (want "
                           "http:// or https://)",
                           (int)n, url);
    }
    for (const char *q = url; *q; q++) {
        if (bad_char((unsigned char)*q))
            return leash__fail(LEASH_EINVAL,
                               "http pool: bad base URL: space or control character at "
                               "offset %zu",
                               (size_t)(q - url));
    }
    size_t auth_len = strcspn(p, "/?#");
    const char *end = p + auth_len;
    /* userinfo: everything up to the last '@' of the authority; never shown */
    const char *host = p;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            host = q + 1;
    if (host == end)
        return leash__fail(LEASH_EINVAL, "http pool: bad base URL: host missing");
    const char *port = NULL;
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));
        if (!close)
            return leash__fail(LEASH_EINVAL,
                               "http pool: bad base URL: IPv6 host without closing ']'");
        if (close == host + 1)
            return leash__fail(LEASH_EINVAL, "http pool: bad base URL: host missing");
        for (const char *q = host + 1; q < close; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.')
                return leash__fail(LEASH_EINVAL, "http pool: bad base URL: bad IPv6 host");
        if (close + 1 < end && close[1] != ':')
            return leash__fail(LEASH_EINVAL, "http pool: bad base URL: junk after the IPv6 host");
        if (close + 1 < end)
            port = close + 2;
    } else {
        const char *colon = memchr(host, ':', (size_t)(end - host));
        const char *hend = colon ? colon : end;
        if (hend == host)
            return leash__fail(LEASH_EINVAL, "http pool: bad base URL: host missing");
        for (const char *q = host; q < hend; q++)
            if (!host_char((unsigned char)*q))
                return leash__fail(LEASH_EINVAL,
                                   "http pool: bad base URL: bad character '%c' in the host", *q);
        if (colon)
            port = colon + 1;
    }
    if (port) {
        long v = 0;
        int n = (int)(end - port);
        if (n == 0)
            return leash__fail(LEASH_EINVAL, "http pool: bad base URL: port missing after ':'");
        for (const char *q = port; q < end; q++) {
            if (!isdigit((unsigned char)*q) || n > 5)
                return leash__fail(LEASH_EINVAL,
                                   "http pool: bad base URL: port \"%.*s\" is not 1..65535",
                                   n > 16 ? 16 : n, port);
            v = v * 10 + (*q - '0');
        }
        if (v < 1 || v > 65535)
            return leash__fail(LEASH_EINVAL, "http pool: bad base URL: port %ld is not 1..65535",
                               v);
    }
    if (strpbrk(end, "?#"))
        return leash__fail(LEASH_EINVAL,
                           "http pool: bad base URL: a query or fragment is not allowed "
                           "(put it in the request path)");
    /* libcurl's own parser has the last word. */
    CURLU *u = curl_url();
    if (!u)
        return leash__fail(LEASH_ENOMEM, "http pool: out of memory");
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    curl_url_cleanup(u);
    if (uc != CURLUE_OK)
        return leash__fail(LEASH_EINVAL, "http pool: bad base URL: %s", curl_url_strerror(uc));
    return LEASH_OK;
}

/* ---- options applied to every pooled easy handle ---- */

static size_t sink(char *data, size_t size, size_t n, void *arg);

/* Sets the pool's defaults on a fresh or reset easy handle; 0, or -1 with the option's
 * name in err. */
static int apply_defaults(http_conn *c, char *err, size_t errlen)
{
    http_ctx *ctx = c->ctx;
    CURL *e = c->curl;
    CURLcode rc = CURLE_OK;
    const char *what = "";
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK) {                                                                      \
            rc = curl_easy_setopt(e, opt, val);                                                    \
            what = #opt;                                                                           \
        }                                                                                          \
    } while (0)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SET(CURLOPT_MAXREDIRS, HTTP_MAX_REDIRS);
    SET(CURLOPT_CONNECTTIMEOUT_MS, ctx->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, ctx->timeout_ms);
    SET(CURLOPT_MAXFILESIZE_LARGE,
        (curl_off_t)(ctx->max_body < (size_t)INT64_MAX ? ctx->max_body : (size_t)INT64_MAX));
    SET(CURLOPT_MAXCONNECTS, 1L); /* one live connection per handle (see abandon) */
    SET(CURLOPT_SHARE, ctx->share);
    SET(CURLOPT_WRITEFUNCTION, sink);
    SET(CURLOPT_WRITEDATA, c);
    SET(CURLOPT_ERRORBUFFER, c->errbuf);
    if (ctx->headers)
        SET(CURLOPT_HTTPHEADER, ctx->headers);
    if (ctx->ca_file)
        SET(CURLOPT_CAINFO, ctx->ca_file);
    if (ctx->insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
#undef SET
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "curl_easy_setopt(%s): %s", what, curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

/* ---- adapter ---- */

static void *http_connect(void *arg, const char *target, char *err, size_t errlen)
{
    http_ctx *ctx = arg;
    http_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->ctx = ctx;
    c->curl = curl_easy_init();
    if (!c->curl) {
        snprintf(err, errlen, "curl_easy_init failed");
        free(c);
        return NULL;
    }
    if (apply_defaults(c, err, errlen) != 0) {
        curl_easy_cleanup(c->curl);
        free(c);
        return NULL;
    }
    return c;
}

/* Back to a plain GET: undoes what set_method did (the body pointer was the caller's, valid
 * only during its request). */
static void undo_method(http_conn *c)
{
    curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L);
    c->method = 0;
}

/* A helper-only borrow changed at most the URL and the method (undone here, without a
 * system call); a raw borrow gets curl_easy_reset, cookies dropped and the defaults
 * again. Either way the live connection stays in the handle's cache. */
static int http_reset(void *arg, void *conn)
{
    http_conn *c = conn;
    if (c->raw) {
        char err[128];
        /* curl_easy_reset keeps an enabled cookie engine and its cookies (and, in 7.88,
         * leaks the cookie file list): NULL drops all three first. */
        curl_easy_setopt(c->curl, CURLOPT_COOKIEFILE, NULL);
        curl_easy_reset(c->curl);
        c->raw = 0;
        c->method = 0;
        c->url_set = 0;
        if (apply_defaults(c, err, sizeof err) != 0)
            return LEASH_RESET_BROKEN; /* curl out of memory: not the borrower's doing */
        return LEASH_RESET_CLEAN;
    }
    if (c->method)
        undo_method(c);
    return LEASH_RESET_CLEAN;
}

static void http_destroy(void *arg, void *conn)
{
    http_conn *c = conn;
    curl_easy_cleanup(c->curl);
    free(c->buf);
    free(c->url);
    free(c);
}

/* In a forked child: the connection's socket is the parent's too. Point the descriptor at
 * /dev/null first, so whatever curl_easy_cleanup says on it (a TLS close_notify) never
 * reaches the parent's peer; closing our copy leaves the parent's socket open. */
static void http_abandon(void *arg, void *conn)
{
    http_conn *c = conn;
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(c->curl, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK &&
        fd != CURL_SOCKET_BAD) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null < 0 || dup2(null, fd) < 0) {
            /* Cannot make it safe: leak the handle rather than speak on the wire. */
            if (null >= 0)
                close(null);
            free(c->buf);
            free(c->url);
            free(c);
            return;
        }
        close(null);
    }
    http_destroy(arg, conn);
}

static void http_describe(void *arg, const char *target, char *out, size_t outlen)
{
    http_ctx *ctx = arg;
    snprintf(out, outlen, "%s%s", ctx->shown, ctx->insecure ? " [insecure: TLS not verified]" : "");
}

static void ctx_free(void *arg)
{
    http_ctx *ctx = arg;
    if (!ctx)
        return;
    if (ctx->share && curl_share_cleanup(ctx->share) != CURLSHE_OK)
        return; /* still used by an easy handle (a leaked one): keep it alive */
    pthread_mutex_lock(&ctxs_lock);
    for (http_ctx **pp = &ctxs; *pp; pp = &(*pp)->next) {
        if (*pp == ctx) {
            *pp = ctx->next;
            break;
        }
    }
    pthread_mutex_unlock(&ctxs_lock);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&ctx->locks[i]);
    curl_slist_free_all(ctx->headers);
    free(ctx->ca_file);
    free(ctx->base);
    free(ctx);
}

const leash_adapter leash_http_adapter = {
    .kind = "http",
    .connect = http_connect,
    .validate = NULL, /* libcurl checks a kept connection itself before reusing it */
    .reset = http_reset,
    .destroy = http_destroy,
    .abandon = http_abandon,
    .describe = http_describe,
    .ctx_free = ctx_free,
};

/* ---- pools ---- */

static leash_status copy_options(http_ctx *ctx, const leash_http_options *o)
{
    leash_http_options d = {0};
    if (!o)
        o = &d;
    if (o->connect_timeout_ms < 0 || o->timeout_ms < 0)
        return leash__fail(LEASH_EINVAL,
                           "http pool: connect_timeout_ms and timeout_ms must be >= 0 "
                           "(0 means the default)");
    ctx->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : HTTP_CONNECT_TIMEOUT_MS;
    ctx->timeout_ms = o->timeout_ms ? o->timeout_ms : HTTP_TIMEOUT_MS;
    ctx->max_body = o->max_body ? o->max_body : HTTP_MAX_BODY;
    ctx->insecure = o->insecure != 0;
    if (o->ca_file) {
        if (access(o->ca_file, R_OK) != 0)
            return leash__fail(LEASH_EINVAL, "http pool: ca_file \"%s\" cannot be read: %s",
                               o->ca_file, strerror(errno));
        ctx->ca_file = strdup(o->ca_file);
        if (!ctx->ca_file)
            return leash__fail(LEASH_ENOMEM, "http pool: out of memory");
    }
    for (size_t i = 0; o->headers && o->headers[i]; i++) {
        const char *hd = o->headers[i];
        const char *colon = strchr(hd, ':');
        int ok = colon && colon != hd;
        for (const char *q = hd; ok && *q; q++)
            if ((unsigned char)*q < 0x20 && *q != '\t')
                ok = 0;
        for (const char *q = hd; ok && q < colon; q++)
            if (bad_char((unsigned char)*q))
                ok = 0;
        if (!ok)
            return leash__fail(LEASH_EINVAL,
                               "http pool: header %zu is not \"Name: value\" (no control "
                               "characters)",
                               i);
        struct curl_slist *l = curl_slist_append(ctx->headers, hd);
        if (!l)
            return leash__fail(LEASH_ENOMEM, "http pool: out of memory");
        ctx->headers = l;
    }
    return LEASH_OK;
}

leash_pool *leash_http_pool_with(const char *name, const char *base_url,
                                 const leash_pool_options *opts, const leash_http_options *http)
{
    leash_status st = leash__ensure_init();
    if (st != LEASH_OK)
        return NULL;
    leash__http_global_init();
    if (global_rc != CURLE_OK)
        return leash__fail_null(LEASH_ENOMEM, "http pool: curl_global_init failed: %s",
                                curl_easy_strerror(global_rc));
    if (check_base(base_url) != LEASH_OK)
        return NULL;
    http_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return leash__fail_null(LEASH_ENOMEM, "http pool: out of memory");
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&ctx->locks[i], NULL);
    ctx->base = strdup(base_url);
    if (!ctx->base) {
        ctx_free(ctx);
        return leash__fail_null(LEASH_ENOMEM, "http pool: out of memory");
    }
    ctx->base_len = strlen(ctx->base);
    while (ctx->base_len > 0 && ctx->base[ctx->base_len - 1] == '/')
        ctx->base[--ctx->base_len] = '\0';
    leash__redact(ctx->base, ctx->shown, sizeof ctx->shown);
    if (copy_options(ctx, http) != LEASH_OK) {
        ctx_free(ctx);
        return NULL;
    }
    ctx->share = curl_share_init();
    if (!ctx->share || curl_share_setopt(ctx->share, CURLSHOPT_LOCKFUNC, share_lock) ||
        curl_share_setopt(ctx->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
        curl_share_setopt(ctx->share, CURLSHOPT_USERDATA, ctx) ||
        curl_share_setopt(ctx->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
        curl_share_setopt(ctx->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION)) {
        ctx_free(ctx);
        return leash__fail_null(LEASH_ENOMEM, "http pool: cannot set up the curl share");
    }
    pthread_mutex_lock(&ctxs_lock);
    ctx->next = ctxs;
    ctxs = ctx;
    pthread_mutex_unlock(&ctxs_lock);
    return leash_pool_open_with(name, &leash_http_adapter, ctx, base_url, opts);
}

leash_pool *leash_http_pool(const char *name, const char *base_url, const leash_pool_options *opts)
{
    return leash_http_pool_with(name, base_url, opts, NULL);
}

CURL *leash_http(leash_handle *h)
{
    http_conn *c = leash_conn_of(h, &leash_http_adapter);
    if (!c)
        return NULL;
    if (c->method) /* the borrower gets a GET, not a POST of a body that is gone */
        undo_method(c);
    c->raw = 1;
    return c->curl;
}

CURL *leash__http_easy(leash_handle *h)
{
    http_conn *c = leash_conn_of(h, &leash_http_adapter);
    return c ? c->curl : NULL;
}

void leash__http_share_hold(leash_handle *h, int lock)
{
    http_conn *c = leash_conn_of(h, &leash_http_adapter);
    if (c && lock)
        share_lock(c->curl, CURL_LOCK_DATA_DNS, CURL_LOCK_ACCESS_SINGLE, c->ctx);
    else if (c)
        share_unlock(c->curl, CURL_LOCK_DATA_DNS, c->ctx);
}

/* ---- requests ---- */

static size_t sink(char *data, size_t size, size_t n, void *arg)
{
    http_conn *c = arg;
    size_t add = size * n;
    if (add > c->ctx->max_body - c->len) {
        c->over = 1;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (c->len + add + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        curl_off_t whole = -1;
        /* First data of a body of known length: allocate it once. */
        if (!c->cap &&
            curl_easy_getinfo(c->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &whole) == CURLE_OK &&
            whole > 0 && (uint64_t)whole <= c->ctx->max_body)
            cap = (size_t)whole + 1;
        while (cap < c->len + add + 1)
            cap *= 2;
        char *b = realloc(c->buf, cap);
        if (!b)
            return 0;
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, add);
    c->len += add;
    return add;
}

static int token_char(unsigned char ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Sets the method and body; 0, or -1 when curl refused an option. */
static int set_method(http_conn *c, const char *method, const char *body, size_t len)
{
    CURL *e = c->curl;
    int rc = 0;
    if (strcmp(method, "GET") == 0 && !body) {
        /* A fresh or reset handle is already a GET: nothing to set on the common path. */
        if (c->method || c->raw)
            undo_method(c);
        return 0;
    }
    c->method = 1;
    if (strcmp(method, "HEAD") == 0 && !body) {
        rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
        rc |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        return rc ? -1 : 0;
    }
    rc |= curl_easy_setopt(e, CURLOPT_NOBODY, 0L); /* after a HEAD; before the method */
    if (body || strcmp(method, "POST") == 0) {
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
    } else {
        rc |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ? method : NULL);
    return rc ? -1 : 0;
}

leash_status leash_http_request(leash_handle *h, const char *method, const char *path,
                                const char *body, size_t len, leash_http_response *out)
{
    if (!out)
        return leash__fail(LEASH_EINVAL, "http request: out is NULL");
    out->status = 0;
    out->body = NULL;
    out->len = 0;
    http_conn *c = leash__held_conn(h, &leash_http_adapter, "http request", "HTTP");
    if (!c)
        return LEASH_EINVAL;
    if (!method || !*method || strlen(method) > HTTP_METHOD_MAX)
        return leash__fail(LEASH_EINVAL, "http request: method is NULL, empty or too long");
    for (const char *q = method; *q; q++)
        if (!token_char((unsigned char)*q))
            return leash__fail(LEASH_EINVAL, "http request: bad character in the method");
    if (!path)
        return leash__fail(LEASH_EINVAL, "http request: path is NULL");
    if (!body && len)
        return leash__fail(LEASH_EINVAL, "http request: body is NULL but len is %zu", len);
    if (body && strcmp(method, "HEAD") == 0)
        return leash__fail(LEASH_EINVAL, "http request: a HEAD request takes no body");
    size_t plen = 0;
    for (; path[plen]; plen++)
        if (bad_char((unsigned char)path[plen]))
            return leash__fail(LEASH_EINVAL,
                               "http request: path has a space or control character at "
                               "offset %zu",
                               plen);

    http_ctx *ctx = c->ctx;
    size_t need = ctx->base_len + plen + 2;
    if (need > c->url_cap) {
        char *u = realloc(c->url, need);
        if (!u)
            return leash__fail(LEASH_ENOMEM, "http request: out of memory");
        c->url = u;
        c->url_cap = need;
    }
    /* curl keeps its own copy of the URL: set it only when it changed. */
    size_t at = ctx->base_len + (path[0] != '/');
    int same = c->url_set && !c->raw && strcmp(c->url + at, path) == 0;
    if (!same) {
        memcpy(c->url, ctx->base, ctx->base_len);
        c->url[ctx->base_len] = '/';
        memcpy(c->url + at, path, plen + 1);
    }
    int bad = (!same && curl_easy_setopt(c->curl, CURLOPT_URL, c->url) != CURLE_OK) ||
              set_method(c, method, body, len) != 0;
    c->url_set = !bad;
    if (c->raw) /* the borrower may have pointed these elsewhere */
        bad = bad || curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, sink) != CURLE_OK ||
              curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c) != CURLE_OK ||
              curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf) != CURLE_OK;
    if (bad)
        return leash__fail(LEASH_ENOMEM, "http request: curl_easy_setopt failed");
    c->errbuf[0] = '\0';
    c->buf = NULL;
    c->len = c->cap = 0;
    c->over = 0;
    CURLcode rc = curl_easy_perform(c->curl);
    if (rc != CURLE_OK) {
        int over = c->over || rc == CURLE_FILESIZE_EXCEEDED;
        free(c->buf);
        c->buf = NULL;
        c->len = c->cap = 0;
        leash_status st = LEASH_EIO;
        char msg[LEASH_ERR_MAX], clean[LEASH_ERR_MAX];
        if (over) {
            snprintf(msg, sizeof msg,
                     "http %s %.160s%s%.96s: response body over max_body (%zu bytes)", method,
                     ctx->shown, path[0] == '/' ? "" : "/", path, ctx->max_body);
        } else {
            if (rc == CURLE_OPERATION_TIMEDOUT)
                st = LEASH_ETIMEDOUT;
            else if (rc == CURLE_WRITE_ERROR || rc == CURLE_OUT_OF_MEMORY)
                st = LEASH_ENOMEM;
            snprintf(msg, sizeof msg, "http %s %.160s%s%.96s: %.200s", method, ctx->shown,
                     path[0] == '/' ? "" : "/", path,
                     c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
            /* The connection's state is unknown after a transport failure or a timeout. */
            if (st != LEASH_ENOMEM)
                leash_mark_broken(h);
        }
        leash__redact(msg, clean, sizeof clean);
        return leash__fail(st, "%s", clean);
    }
    if (!c->buf) {
        c->buf = malloc(1);
        if (!c->buf)
            return leash__fail(LEASH_ENOMEM, "http request: out of memory");
    }
    c->buf[c->len] = '\0';
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &out->status);
    out->body = c->buf;
    out->len = c->len;
    c->buf = NULL;
    c->len = c->cap = 0;
    return LEASH_OK;
}

leash_status leash_http_get(leash_handle *h, const char *path, leash_http_response *out)
{
    return leash_http_request(h, "GET", path, NULL, 0, out);
}

void leash_http_response_free(leash_http_response *r)
{
    if (!r)
        return;
    free(r->body);
    r->body = NULL;
    r->len = 0;
    r->status = 0;
}

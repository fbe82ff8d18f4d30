/* HTTP adapter: pools of libcurl easy handles that keep their connections alive. */
#include "common.h"
#include "http-internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
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
#define HTTP_PEER_MAX 300

/* One base URL of a pool: the one it opened with, then one per leash_pool_retarget.
 * Immutable once published. A connection keeps the one it was made for (the core retires
 * connections made before a retarget), so every version lives until the context is freed. */
typedef struct http_base {
    char *target; /* as given to leash_http_pool or leash_pool_retarget */
    char *url;    /* validated, no trailing '/' */
    size_t len;
    char shown[LEASH_ERR_MAX / 2]; /* url without password, for messages */
    char peer[HTTP_PEER_MAX];      /* "host:port", for the adapter's peer hook */
    struct http_base *older;
} http_base;

/* The pool's adapter context: the parsed options and the share object. */
typedef struct http_ctx {
    char name[LEASH_NAME_MAX + 1]; /* the pool's, for messages */
    /* The newest base URL: stored under retarget_lock with release order, read by connects
     * with acquire order (a new connection sees a fully built version). */
    _Atomic(http_base *) base;
    pthread_mutex_t retarget_lock;
    long connect_timeout_ms, timeout_ms;
    size_t max_body;
    struct curl_slist *headers;
    char *ca_file;
    int insecure;
    CURLSH *share;
    struct http_ctx *next; /* every live context, for the fork hooks */
    pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
} http_ctx;

/* One pooled connection: an easy handle and what the request helpers need. */
typedef struct http_conn {
    CURL *curl;
    http_ctx *ctx;
    const http_base *base; /* the base URL it was made for */
    int raw;               /* leash_http() gave the easy handle out: full reset on release */
    /* A request helper is inside curl on this handle. Read by abandon in a forked child,
     * where the thread that set it is gone and the handle may be half way through a call. */
    _Atomic int busy;
    int method; /* a helper set a method other than GET: undo on release */
    int over;   /* the body went over max_body */
    char *buf;  /* the response being received */
    size_t len, cap;
    char *url; /* the last URL given to curl */
    size_t url_cap;
    int url_set; /* curl holds url (a raw borrow may have changed it) */
    char errbuf[CURL_ERROR_SIZE];
} http_conn;

/* ---- messages ---- */

/* "http pool \"name\": " then fmt into out; returns st. Every message of this adapter
 * starts with the pool's name. */
LEASH_PRINTF(5, 0)
static leash_status vsay(char *out, size_t outlen, const char *name, leash_status st,
                         const char *fmt, va_list ap)
{
    int n = name ? snprintf(out, outlen, "http pool \"%.*s\": ", LEASH_NAME_MAX, name)
                 : snprintf(out, outlen, "http pool: ");
    if (n > 0 && (size_t)n < outlen)
        vsnprintf(out + n, outlen - (size_t)n, fmt, ap);
    return st;
}

LEASH_PRINTF(5, 6)
static leash_status say(char *out, size_t outlen, const char *name, leash_status st,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(out, outlen, name, st, fmt, ap);
    va_end(ap);
    return st;
}

/* The same as this thread's last error. */
LEASH_PRINTF(3, 4) static leash_status fail(const char *name, leash_status st, const char *fmt, ...)
{
    char msg[LEASH_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsay(msg, sizeof msg, name, st, fmt, ap);
    va_end(ap);
    return leash__fail(st, "%s", msg);
}

static const char *plural(size_t n)
{
    return n == 1 ? "" : "s";
}

/* ---- process-wide state: curl's global init, the fork hooks ---- */

/* Every pool's share locks are taken around fork() (from the core's own atfork handlers,
 * after the core's locks), so a child never inherits one held by a thread that does not
 * exist there. Lock order: ctxs_lock, then each context's locks in index order. */
static pthread_mutex_t ctxs_lock = PTHREAD_MUTEX_INITIALIZER;
static http_ctx *ctxs;

static int http_process_init(void)
{
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        leash__log(LEASH_LOG_ERROR, "http: curl_global_init failed: %s", curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

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

static void http_fork_prepare(void)
{
    pthread_mutex_lock(&ctxs_lock);
    for (http_ctx *ctx = ctxs; ctx; ctx = ctx->next)
        lock_all(ctx);
}

/* Parent and child alike: the forking thread holds every lock; it lets them go. */
static void http_fork_done(void)
{
    for (http_ctx *ctx = ctxs; ctx; ctx = ctx->next)
        for (int i = CURL_LOCK_DATA_LAST - 1; i >= 0; i--)
            pthread_mutex_unlock(&ctx->locks[i]);
    pthread_mutex_unlock(&ctxs_lock);
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

/* ---- base URL and path ---- */

static int bad_char(unsigned char ch)
{
    return ch <= 0x20 || ch == 0x7f;
}

static int host_char(unsigned char ch)
{
    return isalnum(ch) || ch == '.' || ch == '-' || ch == '_' || ch == '%';
}

/* The scheme: p set past "http://" or "https://", or a refusal. A scheme is quoted only
 * when it is one: letters, digits, '+', '-', '.' before the first "://". */
static leash_status check_scheme(const char *name, const char *url, const char **p, char *why,
                                 size_t whylen)
{
    if (strncasecmp(url, "http://", 7) == 0) {
        *p = url + 7;
        return LEASH_OK;
    }
    if (strncasecmp(url, "https://", 8) == 0) {
        *p = url + 8;
        return LEASH_OK;
    }
    const char *sep = strstr(url, "://");
    size_t n = sep ? (size_t)(sep - url) : 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)url[i]) && !strchr("+-.", url[i]))
            n = 0;
    if (n == 0 || n > 16)
        return say(why, whylen, name, LEASH_EINVAL,
                   "bad base URL: scheme missing (want http:// or https://)");
    return say(why, whylen, name, LEASH_EINVAL,
               "bad base URL: scheme \"%.*s\" not supported (want http:// or https://)", (int)n,
               url);
}

/* Userinfo [u, end): no raw '/', '?', '#', '@', '[' or ']' (a password holding one could
 * not be told from the host or path that follows: refused rather than split), and every
 * '%' starts an escape. The message says what is wrong, never where, since a position
 * inside a password tells a part of it. */
static leash_status check_userinfo(const char *name, const char *u, const char *end, char *why,
                                   size_t whylen)
{
    for (const char *q = u; q < end; q++) {
        if (strchr("/?#@[]", *q))
            return say(why, whylen, name, LEASH_EINVAL,
                       "bad base URL: a '/', '?', '#', '@', '[' or ']' before the host's '@' "
                       "(percent-encode it in a user name or password, and a '@' in the path "
                       "as %%40)");
        if (*q == '%' &&
            !(q + 2 < end && isxdigit((unsigned char)q[1]) && isxdigit((unsigned char)q[2])))
            return say(why, whylen, name, LEASH_EINVAL,
                       "bad base URL: a '%%' in the user name or password is not followed by "
                       "two hex digits");
    }
    return LEASH_OK;
}

/* Host and port [host, end): a name, IPv4 or [IPv6] host, an optional port 1..65535. */
static leash_status check_host(const char *name, const char *url, const char *host, const char *end,
                               char *why, size_t whylen)
{
    const char *port = NULL;
    if (host == end)
        return say(why, whylen, name, LEASH_EINVAL, "bad base URL: host missing");
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));
        if (!close)
            return say(why, whylen, name, LEASH_EINVAL,
                       "bad base URL: IPv6 host without closing ']'");
        if (close == host + 1)
            return say(why, whylen, name, LEASH_EINVAL, "bad base URL: host missing");
        for (const char *q = host + 1; q < close; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.')
                return say(why, whylen, name, LEASH_EINVAL, "bad base URL: bad IPv6 host");
        if (close + 1 < end && close[1] != ':')
            return say(why, whylen, name, LEASH_EINVAL, "bad base URL: junk after the IPv6 host");
        if (close + 1 < end)
            port = close + 2;
    } else {
        const char *colon = memchr(host, ':', (size_t)(end - host));
        const char *hend = colon ? colon : end;
        if (hend == host)
            return say(why, whylen, name, LEASH_EINVAL, "bad base URL: host missing");
        for (const char *q = host; q < hend; q++)
            if (!host_char((unsigned char)*q))
                return say(why, whylen, name, LEASH_EINVAL,
                           "bad base URL: bad character in the host at offset %zu",
                           (size_t)(q - url));
        if (colon)
            port = colon + 1;
    }
    if (!port)
        return LEASH_OK;
    /* Never quoted: without a '@', a password typed after "user:" reads as a port. */
    long v = 0;
    if (port == end)
        return say(why, whylen, name, LEASH_EINVAL, "bad base URL: port missing after ':'");
    for (const char *q = port; q < end; q++) {
        if (!isdigit((unsigned char)*q) || q - port >= 5)
            return say(why, whylen, name, LEASH_EINVAL,
                       "bad base URL: port is not a number in 1..65535");
        v = v * 10 + (*q - '0');
    }
    if (v < 1 || v > 65535)
        return say(why, whylen, name, LEASH_EINVAL, "bad base URL: port is not in 1..65535");
    return LEASH_OK;
}

/* http:// or https://, optional userinfo (up to the last '@'), a host (name, IPv4 or
 * [IPv6]), an optional port 1..65535 and an optional path prefix; no query, fragment,
 * space or control character; then libcurl's own parser has the last word. */
leash_status leash__http_check_base(const char *name, const char *url, char *why, size_t whylen)
{
    const char *p = NULL;
    leash_status st;
    if (!url)
        return say(why, whylen, name, LEASH_EINVAL, "base URL is NULL");
    if (!*url)
        return say(why, whylen, name, LEASH_EINVAL, "base URL is empty");
    for (const char *q = url; *q; q++)
        if (bad_char((unsigned char)*q))
            return say(why, whylen, name, LEASH_EINVAL,
                       "bad base URL: space or control character at offset %zu", (size_t)(q - url));
    st = check_scheme(name, url, &p, why, whylen);
    if (st != LEASH_OK)
        return st;
    /* A base URL has no query or fragment, so its last '@' ends the userinfo; a '@' in the
     * path prefix must be encoded, or it would read as a password holding a '/'. */
    const char *host = p;
    const char *at = strrchr(p, '@');
    if (at) {
        st = check_userinfo(name, p, at, why, whylen);
        if (st != LEASH_OK)
            return st;
        host = at + 1;
    }
    const char *end = host + strcspn(host, "/?#");
    st = check_host(name, url, host, end, why, whylen);
    if (st != LEASH_OK)
        return st;
    if (strpbrk(end, "?#"))
        return say(why, whylen, name, LEASH_EINVAL,
                   "bad base URL: a query or fragment is not allowed (put it in the request "
                   "path)");
    CURLU *u = curl_url();
    if (!u)
        return say(why, whylen, name, LEASH_ENOMEM, "out of memory");
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    curl_url_cleanup(u);
    if (uc == CURLUE_OUT_OF_MEMORY)
        return say(why, whylen, name, LEASH_ENOMEM, "out of memory");
    if (uc != CURLUE_OK)
        return say(why, whylen, name, LEASH_EINVAL, "bad base URL: %s", curl_url_strerror(uc));
    return LEASH_OK;
}

leash_status leash__http_check_path(const char *name, const char *path, char *why, size_t whylen)
{
    if (!path)
        return say(why, whylen, name, LEASH_EINVAL, "request: path is NULL");
    for (size_t i = 0; path[i]; i++)
        if (bad_char((unsigned char)path[i]))
            return say(why, whylen, name, LEASH_EINVAL,
                       "request: path has a space or control character at offset %zu", i);
    return LEASH_OK;
}

void leash__http_show_base(const char *url, char *out, size_t outlen)
{
    char copy[LEASH_ERR_MAX];
    size_t n = url ? strlen(url) : 0;
    while (n > 0 && url[n - 1] == '/')
        n--;
    /* Redacted whole, then cut: cutting first could cut a password's end marker off. */
    char *tmp = n < sizeof copy ? copy : malloc(n + 1);
    if (!tmp) {
        snprintf(out, outlen, "(base URL)");
        return;
    }
    if (n)
        memcpy(tmp, url, n);
    tmp[n] = '\0';
    leash__redact(tmp, out, outlen);
    if (tmp != copy)
        free(tmp);
}

static void free_base(http_base *b)
{
    if (b) {
        free(b->target);
        free(b->url);
        free(b);
    }
}

/* A new version of the base URL: checked, trailing '/' removed, its shown form and peer. */
static leash_status new_base(const char *name, const char *url, http_base **out, char *why,
                             size_t whylen)
{
    *out = NULL;
    leash_status st = leash__http_check_base(name, url, why, whylen);
    if (st != LEASH_OK)
        return st;
    http_base *b = calloc(1, sizeof *b);
    if (!b || !(b->url = strdup(url)) || !(b->target = strdup(url))) {
        free_base(b);
        return say(why, whylen, name, LEASH_ENOMEM, "out of memory");
    }
    b->len = strlen(b->url);
    while (b->len > 0 && b->url[b->len - 1] == '/')
        b->url[--b->len] = '\0';
    leash__http_show_base(b->url, b->shown, sizeof b->shown);
    /* The peer: host and port as curl will connect to them (default port by scheme). */
    CURLU *u = curl_url();
    if (!u) {
        free_base(b);
        return say(why, whylen, name, LEASH_ENOMEM, "out of memory");
    }
    char *host = NULL, *port = NULL;
    if (curl_url_set(u, CURLUPART_URL, b->url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
        snprintf(b->peer, sizeof b->peer, "%s:%s", host, port);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    *out = b;
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
        snprintf(err, errlen, "http pool \"%s\": curl_easy_setopt(%s): %s", ctx->name, what,
                 curl_easy_strerror(rc));
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
        snprintf(err, errlen, "http pool \"%s\": out of memory", ctx->name);
        return NULL;
    }
    c->ctx = ctx;
    /* The version of the core's target (the newest, unless a retarget is under way or the
     * core could not adopt one the hook accepted). Acquire: pairs with the release store in
     * http_retarget, so the version is complete. */
    c->base = atomic_load_explicit(&ctx->base, memory_order_acquire);
    for (const http_base *b = c->base; b && target; b = b->older) {
        if (strcmp(b->target, target) == 0) {
            c->base = b;
            break;
        }
    }
    c->curl = curl_easy_init();
    if (!c->curl) {
        snprintf(err, errlen, "http pool \"%s\": curl_easy_init failed", ctx->name);
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
 * reaches the parent's peer; closing our copy leaves the parent's socket open. A handle
 * that another thread of the parent was using in curl when it forked (a request helper, or
 * a raw borrower) may be in any state: it is leaked whole, never touched. */
static void http_abandon(void *arg, void *conn)
{
    http_conn *c = conn;
    if (atomic_load(&c->busy) || c->raw)
        return;
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

/* The target as given (at open or retarget), so it agrees with the core's copy whichever
 * of the two it asks first. */
static void http_describe(void *arg, const char *target, char *out, size_t outlen)
{
    http_ctx *ctx = arg;
    char shown[LEASH_ERR_MAX / 2];
    leash__http_show_base(target, shown, sizeof shown);
    snprintf(out, outlen, "%s%s", shown, ctx->insecure ? " [insecure: TLS not verified]" : "");
}

/* leash_pool_retarget: a new base URL for later connections. Those made before keep the
 * version they were made for until the core retires them. */
static int http_retarget(void *arg, const char *target, char *err, size_t errlen)
{
    http_ctx *ctx = arg;
    http_base *b = NULL;
    if (new_base(ctx->name, target, &b, err, errlen) != LEASH_OK)
        return -1;
    pthread_mutex_lock(&ctx->retarget_lock);
    /* relaxed: only writers, which hold retarget_lock, store the pointer */
    b->older = atomic_load_explicit(&ctx->base, memory_order_relaxed);
    /* pairs with the acquire load in http_connect */
    atomic_store_explicit(&ctx->base, b, memory_order_release);
    pthread_mutex_unlock(&ctx->retarget_lock);
    return 0;
}

static void http_peer(void *arg, void *conn, char *out, size_t outlen)
{
    http_conn *c = conn;
    snprintf(out, outlen, "%s", c->base->peer);
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
    pthread_mutex_destroy(&ctx->retarget_lock);
    for (http_base *b = atomic_load(&ctx->base), *older; b; b = older) {
        older = b->older;
        free_base(b);
    }
    curl_slist_free_all(ctx->headers);
    free(ctx->ca_file);
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
    .process_init = http_process_init,
    .fork_prepare = http_fork_prepare,
    .fork_parent = http_fork_done,
    .fork_child = http_fork_done,
    .retarget = http_retarget,
    .peer = http_peer,
};

/* ---- pools ---- */

static leash_status copy_options(http_ctx *ctx, const char *name, const leash_http_options *o)
{
    leash_http_options d = {0};
    if (!o)
        o = &d;
    if (o->connect_timeout_ms < 0 || o->timeout_ms < 0)
        return fail(name, LEASH_EINVAL,
                    "connect_timeout_ms and timeout_ms must be >= 0 (0 means the default)");
    ctx->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : HTTP_CONNECT_TIMEOUT_MS;
    ctx->timeout_ms = o->timeout_ms ? o->timeout_ms : HTTP_TIMEOUT_MS;
    ctx->max_body = o->max_body ? o->max_body : HTTP_MAX_BODY;
    ctx->insecure = o->insecure != 0;
    if (o->ca_file) {
        if (access(o->ca_file, R_OK) != 0)
            return fail(name, LEASH_EINVAL, "ca_file \"%s\" cannot be read: %s", o->ca_file,
                        strerror(errno));
        ctx->ca_file = strdup(o->ca_file);
        if (!ctx->ca_file)
            return fail(name, LEASH_ENOMEM, "out of memory");
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
            return fail(name, LEASH_EINVAL,
                        "header %zu is not \"Name: value\" (no control characters)", i);
        struct curl_slist *l = curl_slist_append(ctx->headers, hd);
        if (!l)
            return fail(name, LEASH_ENOMEM, "out of memory");
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
    char why[LEASH_ERR_MAX];
    http_base *base = NULL;
    st = new_base(name, base_url, &base, why, sizeof why);
    if (st != LEASH_OK)
        return leash__fail_null(st, "%s", why);
    http_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        free_base(base);
        fail(name, LEASH_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(ctx->name, sizeof ctx->name, "%s", name ? name : "");
    atomic_init(&ctx->base, base);
    pthread_mutex_init(&ctx->retarget_lock, NULL);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&ctx->locks[i], NULL);
    if (copy_options(ctx, name, http) != LEASH_OK) {
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
        fail(name, LEASH_ENOMEM, "cannot set up the curl share");
        return NULL;
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

void leash__http_transfer_message(char *out, size_t outlen, const char *name, const char *method,
                                  const char *shown, const char *path, const char *what)
{
    /* Redacted whole, then cut to fit: cutting first could cut a password's end marker. */
    char where[LEASH_ERR_MAX], clean[LEASH_ERR_MAX];
    leash__redact(path, where, sizeof where);
    leash__redact(what, clean, sizeof clean);
    say(out, outlen, name, LEASH_EIO, "%s %.160s%s%.96s: %.200s", method, shown,
        path[0] == '/' ? "" : "/", where, clean);
}

/* A failed transfer: the status, the broken mark, the message. */
static leash_status transfer_failed(leash_handle *h, http_conn *c, const char *method,
                                    const char *path, CURLcode rc)
{
    http_ctx *ctx = c->ctx;
    int over = c->over || rc == CURLE_FILESIZE_EXCEEDED;
    char what[LEASH_ERR_MAX], msg[LEASH_ERR_MAX];
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    leash_status st = LEASH_EIO;
    if (over) {
        snprintf(what, sizeof what, "response body over max_body (%zu byte%s)", ctx->max_body,
                 plural(ctx->max_body));
    } else {
        if (rc == CURLE_OPERATION_TIMEDOUT)
            st = LEASH_ETIMEDOUT;
        else if (rc == CURLE_WRITE_ERROR || rc == CURLE_OUT_OF_MEMORY)
            st = LEASH_ENOMEM;
        /* The connection's state is unknown after a transport failure or a timeout. */
        if (st != LEASH_ENOMEM)
            leash_mark_broken(h);
        snprintf(what, sizeof what, "%s", c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
    }
    leash__http_transfer_message(msg, sizeof msg, ctx->name, method, c->base->shown, path, what);
    return leash__fail(st, "%s", msg);
}

static leash_status request(leash_handle *h, http_conn *c, const char *method, const char *path,
                            const char *body, size_t len, leash_http_response *out)
{
    http_ctx *ctx = c->ctx;
    if (!out)
        return fail(ctx->name, LEASH_EINVAL, "request: out is NULL");
    if (!method || !*method || strlen(method) > HTTP_METHOD_MAX)
        return fail(ctx->name, LEASH_EINVAL, "request: method is NULL, empty or too long");
    for (const char *q = method; *q; q++)
        if (!token_char((unsigned char)*q))
            return fail(ctx->name, LEASH_EINVAL, "request: bad character in the method");
    char why[LEASH_ERR_MAX];
    if (leash__http_check_path(ctx->name, path, why, sizeof why) != LEASH_OK)
        return leash__fail(LEASH_EINVAL, "%s", why);
    if (!body && len)
        return fail(ctx->name, LEASH_EINVAL, "request: body is NULL but len is %zu", len);
    if (body && strcmp(method, "HEAD") == 0)
        return fail(ctx->name, LEASH_EINVAL, "request: a HEAD request takes no body");

    const http_base *b = c->base;
    size_t plen = strlen(path);
    size_t need = b->len + plen + 2;
    if (need > c->url_cap) {
        char *u = realloc(c->url, need);
        if (!u)
            return fail(ctx->name, LEASH_ENOMEM, "request: out of memory");
        c->url = u;
        c->url_cap = need;
    }
    /* curl keeps its own copy of the URL: set it only when it changed. */
    size_t at = b->len + (path[0] != '/');
    int same = c->url_set && !c->raw && strcmp(c->url + at, path) == 0;
    if (!same) {
        memcpy(c->url, b->url, b->len);
        c->url[b->len] = '/';
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
        return fail(ctx->name, LEASH_ENOMEM, "request: curl_easy_setopt failed");
    c->errbuf[0] = '\0';
    c->buf = NULL;
    c->len = c->cap = 0;
    c->over = 0;
    CURLcode rc = curl_easy_perform(c->curl);
    if (rc != CURLE_OK)
        return transfer_failed(h, c, method, path, rc);
    if (!c->buf) {
        c->buf = malloc(1);
        if (!c->buf)
            return fail(ctx->name, LEASH_ENOMEM, "request: out of memory");
    }
    c->buf[c->len] = '\0';
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &out->status);
    out->body = c->buf;
    out->len = c->len;
    c->buf = NULL;
    c->len = c->cap = 0;
    return LEASH_OK;
}

leash_status leash_http_request(leash_handle *h, const char *method, const char *path,
                                const char *body, size_t len, leash_http_response *out)
{
    if (out) {
        out->status = 0;
        out->body = NULL;
        out->len = 0;
    }
    http_conn *c = leash__held_conn(h, &leash_http_adapter, "http request", "HTTP");
    if (!c)
        return LEASH_EINVAL;
    /* seq_cst: set before any of curl's own stores on the handle */
    atomic_store(&c->busy, 1);
    leash_status st = request(h, c, method, path, body, len, out);
    /* release: curl's stores on the handle come before it */
    atomic_store_explicit(&c->busy, 0, memory_order_release);
    return st;
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

/* Integration tests of the HTTP adapter against a real nginx (tests/servers.d/nginx.sh). */
#include "kit.h"
#include "servers.h"

#include <leash/http.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* Internal: the easy handle without counting a raw borrow, the share-lock hook, the checks. */
#include "adapters/http/http-internal.h"

#define PLAIN "http://127.0.0.1:18080"
#define TLS "https://127.0.0.1:18443"
#define SMALL "hello, leash\n"
#define LARGE_SIZE 1048576

/* ---- helpers ---- */

/* CURLINFO_NUM_CONNECTS of h's last transfer: connections it had to open. */
static long connects(leash_handle *h)
{
    long n = -1;
    CURL *e = leash__http_easy(h);
    assert_non_null(e);
    assert_int_equal(curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &n), CURLE_OK);
    return n;
}

/* GETs path and checks the status (and the body when want is not NULL). */
static void get_ok(leash_handle *h, const char *path, long status, const char *want)
{
    leash_http_response r = {0};
    leash_status st = leash_http_get(h, path, &r);
    if (st != LEASH_OK)
        fail_msg("GET %s: %s: %s", path, leash_strerror(st), leash_last_error());
    assert_int_equal(r.status, status);
    assert_non_null(r.body);
    assert_int_equal(r.body[r.len], '\0');
    if (want) {
        assert_int_equal(r.len, strlen(want));
        assert_string_equal(r.body, want);
    }
    leash_http_response_free(&r);
    assert_null(r.body);
    assert_int_equal(r.len, 0);
}

/* A request that must fail with st; the response must come back empty. */
static void request_fails(leash_handle *h, const char *method, const char *path, leash_status st,
                          const char *msg_part)
{
    leash_http_response r = {.status = 7, .body = (char *)"junk", .len = 4};
    assert_int_equal(leash_http_request(h, method, path, NULL, 0, &r), st);
    assert_null(r.body);
    assert_int_equal(r.len, 0);
    assert_int_equal(leash_last_status(), st);
    if (msg_part && !strstr(leash_last_error(), msg_part))
        fail_msg("error \"%s\" does not mention \"%s\"", leash_last_error(), msg_part);
}

static leash_pool *pool_with(const char *name, const char *base, int max_size,
                             const leash_http_options *http)
{
    leash_pool_options o = {.max_size = max_size, .acquire_timeout_ms = 5000};
    leash_pool *p = leash_http_pool_with(name, base, &o, http);
    if (!p)
        fail_msg("pool %s on %s: %s", name, base, leash_last_error());
    return p;
}

/* A response body collected by a raw curl handle (up to 511 bytes, NUL-terminated). */
struct text {
    size_t len;
    char buf[512];
};

static size_t collect(char *d, size_t sz, size_t n, void *arg)
{
    struct text *t = arg;
    size_t add = sz * n;
    if (t->len + add < sizeof t->buf) {
        memcpy(t->buf + t->len, d, add);
        t->len += add;
        t->buf[t->len] = '\0';
    }
    return add;
}

/* nginx's accepted-connections counter, read with a fresh curl handle of its own. */
static long nginx_accepts(void)
{
    struct text t = {0};
    CURL *e = curl_easy_init();
    assert_non_null(e);
    curl_easy_setopt(e, CURLOPT_URL, PLAIN "/status");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    curl_easy_cleanup(e);
    const char *s = strstr(t.buf, "requests\n");
    assert_non_null(s);
    return strtol(s + 9, NULL, 10);
}

/* Waits up to ms for the child pid; one still running then is killed and fails the test
 * (a child that deadlocked on a lock it inherited held never exits by itself). */
static int exits_within(pid_t pid, int ms)
{
    int st = 0;
    uint64_t end = now_ms() + (uint64_t)ms;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        assert_int_equal(r, 0);
        if (now_ms() >= end)
            break;
        sleep_ms(5);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    fail_msg("child %d still running after %d ms: killed (deadlocked after fork?)", (int)pid, ms);
    return st;
}

static int group_setup(void **state)
{
    if (srv_ctl("start", "nginx") != 0) {
        fprintf(stderr, "test-http: tests/servers.sh start nginx failed\n");
        return -1;
    }
    return 0;
}

/* ---- requests ---- */

static void test_get_statuses_and_joins(void **state)
{
    leash_pool *p = pool_with("get", PLAIN, 1, NULL);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    get_ok(h, "/small", 200, SMALL);
    assert_int_equal(connects(h), 1);
    get_ok(h, "small", 200, SMALL); /* a '/' is added */
    assert_int_equal(connects(h), 0);
    get_ok(h, "/small?x=1&y=%20", 200, SMALL);
    leash_http_response r = {0};
    assert_int_equal(leash_http_get(h, "", &r), LEASH_OK); /* the base: "/", no index */
    assert_int_equal(r.status, 403);
    leash_http_response_free(&r);
    /* An HTTP error status is a response. */
    get_ok(h, "/missing", 404, NULL);
    get_ok(h, "/error", 500, NULL);
    /* A 3xx is a response too: redirects are not followed. */
    get_ok(h, "/redirect", 302, NULL);
    assert_int_equal(leash_http_request(h, "HEAD", "/small", NULL, 0, &r), LEASH_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    assert_string_equal(r.body, "");
    leash_http_response_free(&r);
    get_ok(h, "/small", 200, SMALL); /* a GET again after the HEAD */
    assert_int_equal(connects(h), 0);
    leash_release(&h);
    assert_null(h);
    assert_int_equal(stats(p).dirty_returns, 0);
    leash_http_response_free(NULL);

    /* Base URL forms: trailing '/', a path prefix, localhost. */
    const char *bases[] = {PLAIN "/", PLAIN "//", "http://localhost:18080",
                           "HTTP://127.0.0.1:18080/prefix", PLAIN "/prefix/"};
    for (size_t i = 0; i < sizeof bases / sizeof *bases; i++) {
        char name[32];
        snprintf(name, sizeof name, "base%zu", i);
        leash_pool *q = pool_with(name, bases[i], 1, NULL);
        h = leash_acquire(q);
        assert_non_null(h);
        get_ok(h, "/small", 200, SMALL);
        get_ok(h, "small", 200, SMALL);
        leash_release(&h);
    }
}

static void test_post_with_body(void **state)
{
    leash_pool *p = pool_with("post", PLAIN, 1, NULL);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    leash_http_response r = {0};
    const char *body = "leash posted this";
    assert_int_equal(leash_http_request(h, "POST", "/echo", body, strlen(body), &r), LEASH_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "POST 17 leash posted this");
    leash_http_response_free(&r);
    /* len bytes are sent, not up to a NUL */
    assert_int_equal(leash_http_request(h, "PUT", "/echo", "abcdef", 3, &r), LEASH_OK);
    assert_string_equal(r.body, "PUT 3 abc");
    leash_http_response_free(&r);
    assert_int_equal(leash_http_request(h, "POST", "/echo", NULL, 0, &r), LEASH_OK);
    assert_string_equal(r.body, "POST 0 ");
    leash_http_response_free(&r);
    /* The next GET on the same handle is a GET, with no body. */
    assert_int_equal(leash_http_get(h, "/echo", &r), LEASH_OK);
    assert_string_equal(r.body, "GET  ");
    leash_http_response_free(&r);
    assert_int_equal(leash_http_request(h, "DELETE", "/echo", NULL, 0, &r), LEASH_OK);
    assert_string_equal(r.body, "DELETE  ");
    leash_http_response_free(&r);
    assert_int_equal(leash_http_request(h, "POST", "/echo", "x", 1, &r), LEASH_OK);
    leash_http_response_free(&r);
    leash_release(&h);
    /* After a release the method is back to GET, over the same connection. */
    h = leash_acquire(p);
    assert_int_equal(leash_http_get(h, "/echo", &r), LEASH_OK);
    assert_string_equal(r.body, "GET  ");
    assert_int_equal(connects(h), 0);
    leash_http_response_free(&r);
    leash_release(&h);
    assert_int_equal(stats(p).created, 1);
}

struct many {
    leash_pool *pool;
    int n, ok;
    long connects;
};

static void *many_gets(void *arg)
{
    struct many *m = arg;
    for (int i = 0; i < m->n; i++) {
        leash_handle *h = leash_acquire(m->pool);
        if (!h)
            continue;
        leash_http_response r;
        if (leash_http_get(h, "/small", &r) == LEASH_OK && r.status == 200 &&
            strcmp(r.body, SMALL) == 0)
            m->ok++;
        long n = 0;
        curl_easy_getinfo(leash__http_easy(h), CURLINFO_NUM_CONNECTS, &n);
        m->connects += n;
        leash_http_response_free(&r);
        leash_release(&h);
    }
    return NULL;
}

static void test_thousand_gets_two_connections(void **state)
{
    leash_pool *p = pool_with("thousand", PLAIN, 2, NULL);
    long before = nginx_accepts();
    struct many m[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        m[i] = (struct many){.pool = p, .n = 250};
        assert_int_equal(pthread_create(&t[i], NULL, many_gets, &m[i]), 0);
    }
    int ok = 0;
    long conns = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ok += m[i].ok;
        conns += m[i].connects;
    }
    long after = nginx_accepts();
    assert_int_equal(ok, 1000);
    assert_in_range(conns, 1, 2);
    /* nginx agrees: the pool's connections plus the second status request's own. */
    assert_in_range(after - before, 2, 3);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.acquired, 1000);
    assert_in_range(s.created, 1, 2);
    assert_int_equal(s.destroyed, 0);
}

static void test_slow_endpoint_times_out(void **state)
{
    leash_http_options o = {.timeout_ms = 400};
    leash_pool *p = pool_with("slow", PLAIN, 1, &o);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    get_ok(h, "/small", 200, SMALL);
    double t0 = now_s();
    request_fails(h, "GET", "/slow", LEASH_ETIMEDOUT, "/slow");
    double took = now_s() - t0;
    assert_true(took >= 0.35 && took < 3.0);
    assert_non_null(strstr(leash_last_error(), "timed out"));
    leash_release(&h); /* broken: destroyed, not dirty (strict mode would abort) */
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed, 1);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.misuse, 0);
    h = leash_acquire(p);
    get_ok(h, "/small", 200, SMALL);
    assert_int_equal(connects(h), 1);
    leash_release(&h);
    assert_int_equal(stats(p).created, 2);
}

static void test_body_over_limit(void **state)
{
    /* Content-Length over the limit (/large) and a chunked body that grows past it. */
    leash_http_options o = {.max_body = 64 * 1024};
    leash_pool *p = pool_with("limit", PLAIN, 1, &o);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    request_fails(h, "GET", "/large", LEASH_EIO, "max_body");
    request_fails(h, "GET", "/chunked", LEASH_EIO, "max_body");
    get_ok(h, "/small", 200, SMALL); /* the handle is still usable */
    leash_release(&h);
    assert_int_equal(stats(p).destroyed, 0);

    /* Exactly at the limit is fine; one byte less is not. */
    o.max_body = LARGE_SIZE;
    leash_pool *q = pool_with("exact", PLAIN, 1, &o);
    h = leash_acquire(q);
    leash_http_response r;
    assert_int_equal(leash_http_get(h, "/large", &r), LEASH_OK);
    assert_int_equal(r.len, LARGE_SIZE);
    leash_http_response_free(&r);
    assert_int_equal(leash_http_get(h, "/chunked", &r), LEASH_OK);
    assert_int_equal(r.len, LARGE_SIZE);
    leash_http_response_free(&r);
    leash_release(&h);
    o.max_body = LARGE_SIZE - 1;
    leash_pool *u = pool_with("under", PLAIN, 1, &o);
    h = leash_acquire(u);
    request_fails(h, "GET", "/large", LEASH_EIO, "max_body");
    request_fails(h, "GET", "/chunked", LEASH_EIO, "max_body");
    leash_release(&h);
}

/* ---- nginx reloaded and restarted under load ---- */

struct worker {
    leash_pool *pool;
    _Atomic int *stop;
    _Atomic int *phase; /* -1 before the restart (the reload happens then), 0 during, 1 after */
    _Atomic int ok, ok_after, eio, eio_before_restart, other, no_handle;
    long connects_before_restart;
    char other_msg[256];
};

static void *worker(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load(w->stop)) {
        leash_handle *h = leash_acquire(w->pool);
        if (!h) {
            w->no_handle++;
            continue;
        }
        int phase = atomic_load(w->phase);
        leash_http_response r;
        leash_status st = leash_http_get(h, "/small", &r);
        if (st == LEASH_OK && r.status == 200 && strcmp(r.body, SMALL) == 0) {
            w->ok++;
            long n = 0;
            curl_easy_getinfo(leash__http_easy(h), CURLINFO_NUM_CONNECTS, &n);
            if (phase < 0)
                w->connects_before_restart += n;
            if (phase > 0)
                w->ok_after++;
        } else if (st == LEASH_EIO) {
            w->eio++;
            if (phase < 0)
                w->eio_before_restart++;
        } else {
            w->other++;
            snprintf(w->other_msg, sizeof w->other_msg, "%s (%ld): %s", leash_strerror(st),
                     r.status, leash_last_error());
        }
        leash_http_response_free(&r);
        leash_release(&h);
        if (st != LEASH_OK)
            sleep_ms(2);
    }
    return NULL;
}

static void test_reload_and_restart_under_load(void **state)
{
    leash_http_options o = {.connect_timeout_ms = 1000, .timeout_ms = 3000};
    leash_pool *p = pool_with("reload", PLAIN, 4, &o);
    _Atomic int stop = 0, phase = -1;
    struct worker w[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].pool = p;
        w[i].stop = &stop;
        w[i].phase = &phase;
        assert_int_equal(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    sleep_ms(300);
    assert_int_equal(srv_signal("nginx/nginx.pid", SIGHUP), 0); /* graceful reload */
    sleep_ms(700);
    atomic_store(&phase, 0);
    assert_int_equal(srv_ctl("restart", "nginx"), 0);
    atomic_store(&phase, 1);
    double deadline = now_s() + 15;
    for (;;) {
        int done = 1;
        for (int i = 0; i < 8; i++)
            if (w[i].ok_after < 20)
                done = 0;
        if (done || now_s() > deadline)
            break;
        sleep_ms(20);
    }
    atomic_store(&stop, 1);
    int ok = 0, eio = 0, eio_reload = 0;
    long reconnects = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        if (w[i].other)
            fail_msg("worker %d: unexpected failure %s", i, w[i].other_msg);
        assert_int_equal(w[i].no_handle, 0);
        assert_true(w[i].ok_after >= 20); /* service came back for every thread */
        ok += w[i].ok;
        eio += w[i].eio;
        eio_reload += w[i].eio_before_restart;
        reconnects += w[i].connects_before_restart;
    }
    print_message("reload+restart: %d requests ok, %d failed with LEASH_EIO (%d before the "
                  "restart); %ld connections made before the restart\n",
                  ok, eio, eio_reload, reconnects);
    /* The reload closed the pool's connections (more were made than the pool holds), yet no
     * request failed: libcurl notices a closed kept-alive connection and connects again. */
    assert_true(reconnects > 4);
    assert_int_equal(eio_reload, 0);
    /* No handle lost: all four can be held at once, and every borrow is accounted for. */
    leash_pool_stats s = stats(p);
    assert_int_equal(s.in_use, 0);
    assert_true(s.size <= 4);
    assert_int_equal(s.acquired, s.released + s.discarded);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.misuse, 0);
    leash_handle *h[4];
    for (int i = 0; i < 4; i++) {
        h[i] = leash_acquire_for(p, 0);
        assert_non_null(h[i]);
        get_ok(h[i], "/small", 200, SMALL);
    }
    for (int i = 0; i < 4; i++)
        leash_release(&h[i]);
}

/* ---- TLS ---- */

static void test_tls_verification(void **state)
{
    char ca[4096];
    snprintf(ca, sizeof ca, "%s", srv_path("nginx/ca.pem"));

    /* Verification is on by default: the test CA is unknown to the system. */
    leash_pool *p = pool_with("tls-nocafile", TLS, 1, NULL);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    request_fails(h, "GET", "/small", LEASH_EIO, "certificate");
    leash_release(&h);
    assert_int_equal(stats(p).destroyed, 1);

    leash_http_options o = {.ca_file = ca};
    leash_pool *q = pool_with("tls-ca", TLS, 1, &o);
    h = leash_acquire(q);
    get_ok(h, "/small", 200, SMALL);
    get_ok(h, "/small", 200, SMALL);
    assert_int_equal(connects(h), 0);
    leash_release(&h);
    leash_pool *l = pool_with("tls-localhost", "https://localhost:18443", 1, &o);
    h = leash_acquire(l);
    get_ok(h, "/small", 200, SMALL);
    leash_release(&h);

    char *text = dump(LEASH_FORMAT_TEXT);
    assert_null(strstr(text, "insecure"));
    free(text);
    leash_http_options off = {.insecure = 1};
    leash_pool *i = pool_with("tls-insecure", TLS, 1, &off);
    h = leash_acquire(i);
    get_ok(h, "/small", 200, SMALL);
    leash_release(&h);
    text = dump(LEASH_FORMAT_TEXT);
    const char *line = strstr(text, "\"tls-insecure\"");
    assert_non_null(line);
    const char *eol = strchr(line, '\n');
    const char *mark = strstr(line, "insecure: TLS not verified");
    assert_true(mark && eol && mark < eol);
    free(text);
}

/* ---- fork ---- */

static void test_fork_child_leaves_parent_connections_alone(void **state)
{
    char ca[4096];
    snprintf(ca, sizeof ca, "%s", srv_path("nginx/ca.pem"));

    /* Control: a child that cleans up an inherited TLS easy handle with no care kills
     * the parent's connection (its close_notify reaches nginx). This is what the check
     * below can see. */
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, TLS "/small");
    curl_easy_setopt(e, CURLOPT_CAINFO, ca);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    struct text t = {0};
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        curl_easy_cleanup(e);
        _exit(0);
    }
    wait_child(pid);
    sleep_ms(100);
    t.len = 0;
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    long n = -1;
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &n);
    assert_int_equal(n, 1);
    curl_easy_cleanup(e);

    /* The pool: one handle held across the fork, one idle. */
    leash_http_options o = {.ca_file = ca};
    leash_pool *p = pool_with("fork", TLS, 2, &o);
    leash_handle *a = leash_acquire(p), *b = leash_acquire(p);
    assert_non_null(a);
    assert_non_null(b);
    get_ok(a, "/small", 200, SMALL);
    get_ok(b, "/small", 200, SMALL);
    leash_release(&b);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int bad = 0;
        leash_release(&a); /* held across the fork: abandoned */
        leash_handle *c = leash_acquire(p);
        leash_http_response r;
        if (!c || leash_http_get(c, "/small", &r) != LEASH_OK || r.status != 200)
            bad = 1;
        else if (connects(c) != 1) /* a fresh connection of its own */
            bad = 2;
        if (c) {
            leash_http_response_free(&r);
            leash_release(&c);
        }
        leash_pool_close(p);
        leash_shutdown();
        _exit(bad);
    }
    int st = wait_child(pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    sleep_ms(100);
    /* Both of the parent's connections are alive and reused. */
    get_ok(a, "/small", 200, SMALL);
    assert_int_equal(connects(a), 0);
    b = leash_acquire(p);
    get_ok(b, "/small", 200, SMALL);
    assert_int_equal(connects(b), 0);
    leash_release(&a);
    leash_release(&b);
    assert_int_equal(stats(p).created, 2);
}

struct holder {
    leash_handle *h;
    _Atomic int locked;
};

/* Holds the DNS lock of the share of h's pool for 200 ms, as a lookup in progress would. */
static void *hold_share(void *arg)
{
    struct holder *x = arg;
    leash__http_share_hold(x->h, 1);
    atomic_store(&x->locked, 1);
    sleep_ms(200);
    leash__http_share_hold(x->h, 0);
    return NULL;
}

static void test_fork_while_a_share_lock_is_held(void **state)
{
    /* A share lock held by another thread when fork() is called must not be inherited
     * locked: the child's first connection looks its host up under that lock. */
    leash_pool *p = pool_with("fork-lock", "http://localhost:18080", 2, NULL);
    struct holder x = {.h = leash_acquire(p)};
    assert_non_null(x.h);
    get_ok(x.h, "/small", 200, SMALL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hold_share, &x), 0);
    while (!atomic_load(&x.locked))
        sleep_ms(1);
    pid_t pid = fork(); /* waits for the lock, then takes it across the fork */
    assert_true(pid >= 0);
    if (pid == 0) {
        leash_handle *c = leash_acquire(p);
        leash_http_response r;
        int bad = !c || leash_http_get(c, "/small", &r) != LEASH_OK || r.status != 200;
        if (c)
            leash_http_response_free(&r);
        _exit(bad);
    }
    int st = exits_within(pid, 5000);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    pthread_join(t, NULL);
    get_ok(x.h, "/small", 200, SMALL);
    leash_release(&x.h);
}

/* What a child does after each fork below: a pool of its own, a request through it (a DNS
 * lookup under the share's lock, since the host is a name), shutdown. 0 when all went well. */
static int child_round_trip(void)
{
    leash_pool_options o = {.max_size = 1, .acquire_timeout_ms = 2000};
    leash_http_options ho = {.connect_timeout_ms = 1000, .timeout_ms = 2000};
    leash_pool *p = leash_http_pool_with("child", "http://localhost:18080", &o, &ho);
    leash_handle *h = p ? leash_acquire(p) : NULL;
    leash_http_response r = {0};
    int bad = !h || leash_http_get(h, "/small", &r) != LEASH_OK || r.status != 200;
    leash_http_response_free(&r);
    leash_release(&h);
    leash_shutdown();
    return bad;
}

/* AddressSanitizer's allocator (gcc 12, clang 14) takes no lock around fork(): a child
 * whose parent forked while another thread held one of its size-class locks deadlocks in
 * its first malloc of that size, whatever leash does (every pool open allocates the same
 * large sizes). Under it the main thread forks only while the churning thread is parked
 * between two leash calls, its pools open and connected; the plain build forks at any
 * moment, inside leash_shutdown and inside requests. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#define CHURN_POOLS 32

struct churn {
    _Atomic int stop, rounds;
    _Atomic int park, parked; /* park: asked to wait before its shutdown; parked: waiting */
};

/* Opens an HTTP pool, makes a request, shuts leash down, over and over: forks from the main
 * thread land inside leash_shutdown (manager lock held, the adapter's contexts being freed)
 * as well as inside requests (share locks held). The only thread making leash calls. */
static void *shutdown_churn(void *arg)
{
    struct churn *c = arg;
    while (!atomic_load(&c->stop)) {
        /* Many pools, so shutdown spends a while freeing their contexts. */
        for (int i = 0; i < CHURN_POOLS; i++) {
            char name[16];
            snprintf(name, sizeof name, "churn%d", i);
            leash_http_pool(name, "http://localhost:18080", NULL);
        }
        leash_pool *p = leash_pool_get("churn0");
        leash_handle *h = p ? leash_acquire(p) : NULL;
        leash_http_response r = {0};
        if (h)
            leash_http_get(h, "/small", &r);
        leash_http_response_free(&r);
        leash_release(&h);
        if (atomic_load(&c->park)) {
            atomic_store(&c->parked, 1);
            while (atomic_load(&c->park))
                sleep_ms(1);
            atomic_store(&c->parked, 0);
        }
        leash_shutdown();
        atomic_fetch_add(&c->rounds, 1);
    }
    return NULL;
}

/* Waits up to ms for pid without failing the test: its wait status, or -1 after killing it. */
static int reap_within(pid_t pid, int ms)
{
    int st = 0;
    uint64_t end = now_ms() + (uint64_t)ms;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(5);
    }
    return st;
}

/* The scenario below, in a process of its own so that a fork() that deadlocks in its atfork
 * handlers is seen as a timeout, not a hung suite. Exit status: 0 fine, 1 a child failed its
 * request, 2 a child did not exit within 5 s. */
static void fork_during_shutdown_scenario(void)
{
    struct churn c = {0};
    pthread_t t;
    if (pthread_create(&t, NULL, shutdown_churn, &c) != 0)
        _exit(3);
    while (atomic_load(&c.rounds) < 3)
        sleep_ms(1);
    int failed = 0, hung = 0;
    for (int i = 0; i < 100; i++) {
#ifdef UNDER_ASAN
        atomic_store(&c.park, 1);
        while (!atomic_load(&c.parked))
            sleep_ms(1);
#endif
        pid_t pid = fork();
        atomic_store(&c.park, 0);
        if (pid < 0)
            break;
        if (pid == 0)
            _exit(child_round_trip());
        int st = reap_within(pid, 5000);
        if (st < 0)
            hung++;
        else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }
    atomic_store(&c.stop, 1);
    pthread_join(t, NULL);
    fprintf(stderr, "fork during shutdown: %d shutdown rounds, %d children failed, %d hung\n",
            atomic_load(&c.rounds), failed, hung);
    _exit(hung ? 2 : failed ? 1 : 0);
}

static void test_fork_during_shutdown_and_requests(void **state)
{
    /* Bad timing tried: fork() while another thread is inside leash_shutdown (the manager's
     * lock held, the adapter's contexts being freed) or inside a request holding a share
     * lock. Neither the fork nor the child may deadlock: each child makes a request of its
     * own and exits within 5 s, and the whole run ends within 60 s. */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        fork_during_shutdown_scenario();
    int st = reap_within(pid, 60000);
    if (st < 0)
        fail_msg("the forking process hung (a fork() deadlocked in its atfork handlers?)");
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) == 2)
        fail_msg("a child forked during shutdown did not exit within 5 s");
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- raw borrowers ---- */

static size_t discard_body(char *d, size_t sz, size_t n, void *arg)
{
    (*(int *)arg)++;
    return sz * n;
}

static void test_raw_borrower_then_keepalive_reused(void **state)
{
    const char *headers[] = {"X-Leash: pool", NULL};
    leash_http_options o = {.headers = headers};
    leash_pool *p = pool_with("raw", PLAIN, 1, &o);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    get_ok(h, "/headers", 200, "|pool|");
    assert_int_equal(connects(h), 1);

    /* A POST through the helper, then the raw handle: it is a GET again (the POST's body
     * pointer was only valid during that call). */
    char body[] = "posted";
    leash_http_response r;
    assert_int_equal(leash_http_request(h, "POST", "/echo", body, 6, &r), LEASH_OK);
    assert_string_equal(r.body, "POST 6 posted");
    leash_http_response_free(&r);
    CURL *e = leash_http(h);
    assert_non_null(e);
    struct text echo = {0};
    curl_easy_setopt(e, CURLOPT_URL, PLAIN "/echo");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &echo);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    assert_string_equal(echo.buf, "GET  ");

    /* The borrower sets its own options and cookies. */
    struct curl_slist *mine = curl_slist_append(NULL, "X-Leash: mine");
    int calls = 0;
    curl_easy_setopt(e, CURLOPT_USERAGENT, "raw-agent");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, mine);
    curl_easy_setopt(e, CURLOPT_COOKIEFILE, "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 12345L);
    curl_easy_setopt(e, CURLOPT_URL, PLAIN "/cookie");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &calls);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    assert_true(calls == 0 || calls == 1);
    /* Its options apply to the helpers too, until release; the body still comes back. */
    get_ok(h, "/headers", 200, "raw-agent|mine|leash=c00kie");
    leash_release(&h);
    curl_slist_free_all(mine);

    /* The next borrower gets the pool's defaults over the same live connection. */
    h = leash_acquire(p);
    get_ok(h, "/headers", 200, "|pool|");
    assert_int_equal(connects(h), 0);
    /* The cookie engine is off again: a Set-Cookie is not sent back. */
    get_ok(h, "/cookie", 200, "");
    get_ok(h, "/headers", 200, "|pool|");
    /* Redirects stay off after a reset. */
    get_ok(h, "/redirect", 302, NULL);
    leash_release(&h);

    /* A borrower that turns redirects on gets https-only redirects: /redirect points at
     * plain http, so the transfer is refused. */
    h = leash_acquire(p);
    e = leash_http(h);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    assert_int_equal(leash_http_get(h, "/redirect", &r), LEASH_EIO);
    assert_null(r.body);
    leash_release(&h); /* a transport failure: destroyed */
    leash_pool_stats s = stats(p);
    assert_int_equal(s.created, 1);
    assert_int_equal(s.destroyed, 1);
    assert_int_equal(s.dirty_returns, 0);
}

/* ---- failures and bad input ---- */

static void test_transport_failure_marks_broken(void **state)
{
    leash_http_options o = {.connect_timeout_ms = 1000};
    leash_pool *p = pool_with("refused", "http://127.0.0.1:1", 1, &o);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    request_fails(h, "GET", "/small", LEASH_EIO, "127.0.0.1");
    print_message("connection refused: %s\n", leash_last_error());
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed, 1);
    assert_int_equal(s.dirty_returns, 0);
}

static void test_bad_base_urls(void **state)
{
    /* Each: the base URL tried, and a word the message must contain. */
    static const struct {
        const char *url, *part;
    } bad[] = {
        {NULL, "NULL"},
        {"", "empty"},
        {"127.0.0.1:18080", "scheme"},
        {"//127.0.0.1:18080", "scheme"},
        {"ftp://127.0.0.1/", "scheme \"ftp\""},
        {"file:///etc/passwd", "scheme \"file\""},
        {"gopher://127.0.0.1:18080", "scheme"},
        {"http:/127.0.0.1", "scheme"},
        {"http://", "host"},
        {"http:///small", "host"},
        {"http://:18080", "host"},
        {"http://user:pw@", "host"},
        {"http://127.0.0.1:", "port"},
        {"http://127.0.0.1:0", "port"},
        {"http://127.0.0.1:65536", "port"},
        {"http://127.0.0.1:99999999999", "port"},
        {"http://127.0.0.1:-1", "port"},
        {"http://127.0.0.1:80a", "port"},
        {"http://127.0.0.1:18080:1", "port"},
        {"http://ho st", "space"},
        {"http://host\n", "control"},
        {"http://127.0.0.1:18080/pa th", "space"},
        {"http://127.0.0.1:18080/\x7f", "control"},
        {"http://ho!st", "host"},
        {"http://127.0.0.1:18080/?q=1", "query"},
        {"http://127.0.0.1:18080?q=1", "query"},
        {"http://127.0.0.1:18080/#frag", "fragment"},
        {"http://[::1", "IPv6"},
        {"http://[]:80", "host"},
        {"http://[zz::1]:80", "IPv6"},
        {"http://[::1]x", "IPv6"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        leash_pool *p = leash_http_pool("bad", bad[i].url, NULL);
        if (p)
            fail_msg("base URL #%zu was accepted", i);
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        if (strncmp(leash_last_error(), "http pool \"bad\": ", 17) != 0)
            fail_msg("base URL #%zu: \"%s\" does not name the pool", i, leash_last_error());
        if (!strstr(leash_last_error(), bad[i].part))
            fail_msg("base URL #%zu: \"%s\" does not name \"%s\"", i, leash_last_error(),
                     bad[i].part);
    }
    /* Valid but unusual forms are accepted. */
    const char *good[] = {"http://[::1]:18080", "http://user:pw@127.0.0.1:18080",
                          "https://example.invalid", "http://127.0.0.1:65535/a/b/"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        char name[16];
        snprintf(name, sizeof name, "good%zu", i);
        if (!leash_http_pool(name, good[i], NULL))
            fail_msg("%s refused: %s", good[i], leash_last_error());
    }
}

static void test_bad_paths_and_methods(void **state)
{
    leash_pool *p = pool_with("paths", PLAIN, 1, NULL);
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    /* Paths: a space, CR LF (header injection), a tab, DEL, NULL. */
    request_fails(h, "GET", "/sm all", LEASH_EINVAL, "space");
    request_fails(h, "GET", "/small\r\nX-Injected: 1", LEASH_EINVAL, "control");
    request_fails(h, "GET", "/small\t", LEASH_EINVAL, "control");
    request_fails(h, "GET", "/\x7f", LEASH_EINVAL, "control");
    request_fails(h, "GET", NULL, LEASH_EINVAL, "path");
    assert_non_null(strstr(leash_last_error(), "http pool \"paths\": "));
    leash_http_response r = {.body = (char *)"junk", .len = 4};
    assert_int_equal(leash_http_get(h, " /small", &r), LEASH_EINVAL);
    assert_null(r.body);
    assert_int_equal(r.len, 0);
    /* Methods: NULL, empty, a space, CR LF. */
    request_fails(h, NULL, "/small", LEASH_EINVAL, "method");
    request_fails(h, "", "/small", LEASH_EINVAL, "method");
    request_fails(h, "GE T", "/small", LEASH_EINVAL, "method");
    request_fails(h, "GET\r\n", "/small", LEASH_EINVAL, "method");
    /* A NULL body with a length. */
    r = (leash_http_response){.body = (char *)"junk", .len = 4};
    assert_int_equal(leash_http_request(h, "POST", "/echo", NULL, 5, &r), LEASH_EINVAL);
    assert_null(r.body);
    assert_non_null(strstr(leash_last_error(), "body"));
    /* A HEAD with a body (curl would wait for a response body that never comes). */
    assert_int_equal(leash_http_request(h, "HEAD", "/small", "x", 1, &r), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "HEAD"));
    /* None of it broke the handle. */
    get_ok(h, "/small", 200, SMALL);
    leash_release(&h);
    assert_int_equal(stats(p).destroyed, 0);
}

static void test_bad_handles(void **state)
{
    leash_http_response r = {.body = (char *)"junk", .len = 4};
    /* NULL handle */
    assert_null(leash_http(NULL));
    assert_int_equal(leash_http_get(NULL, "/small", &r), LEASH_EINVAL);
    assert_null(r.body);
    assert_int_equal(r.len, 0);
    assert_non_null(strstr(leash_last_error(), "NULL"));
    /* A handle from a pool of another adapter */
    leash_pool *f = leash_pool_open("other", &kit_other_adapter, "x", NULL);
    assert_non_null(f);
    leash_handle *h = leash_acquire(f);
    assert_non_null(h);
    assert_null(leash_http(h));
    r = (leash_http_response){.body = (char *)"junk", .len = 4};
    assert_int_equal(leash_http_request(h, "POST", "/echo", "x", 1, &r), LEASH_EINVAL);
    assert_null(r.body);
    assert_non_null(strstr(leash_last_error(), "HTTP handle"));
    leash_release(&h);
    /* NULL out */
    leash_pool *p = pool_with("nullout", PLAIN, 1, NULL);
    h = leash_acquire(p);
    assert_int_equal(leash_http_get(h, "/small", NULL), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "out"));
    assert_int_equal(leash_http_request(h, "GET", "/small", NULL, 0, NULL), LEASH_EINVAL);
    leash_release(&h);
    leash_http_response_free(NULL);
}

static void test_bad_options(void **state)
{
    /* Negative timeouts, a header with CR LF, a header without a name, a missing CA file. */
    const char *crlf[] = {"X-A: 1\r\nX-Injected: 2", NULL};
    const char *noname[] = {": value", NULL};
    const char *nocolon[] = {"X-A 1", NULL};
    const leash_http_options bad[] = {
        {.connect_timeout_ms = -1}, {.timeout_ms = -5},   {.headers = crlf},
        {.headers = noname},        {.headers = nocolon}, {.ca_file = "/nonexistent/ca.pem"},
    };
    const char *part[] = {"timeout", "timeout", "header 0", "header 0", "header 0", "ca_file"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(leash_http_pool_with("opt", PLAIN, NULL, &bad[i]));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        if (!strstr(leash_last_error(), part[i]))
            fail_msg("options #%zu: \"%s\" does not name \"%s\"", i, leash_last_error(), part[i]);
        assert_non_null(strstr(leash_last_error(), "http pool \"opt\": "));
    }
    /* A bad pool option (from the core) is refused too, and the context freed. */
    leash_pool_options neg = {.max_size = -1};
    assert_null(leash_http_pool("opt", PLAIN, &neg));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
}

static void test_password_never_shown(void **state)
{
    const char *secret = "s3cret-pw";
    /* A bad base URL carrying a password: the message names the port, not the password. */
    assert_null(leash_http_pool("pw", "http://user:s3cret-pw@127.0.0.1:0", NULL));
    assert_null(strstr(leash_last_error(), secret));
    assert_null(leash_http_pool("pw", "http://user:s3cret-pw@ho st", NULL));
    assert_null(strstr(leash_last_error(), secret));

    /* A working pool with basic-auth userinfo: dumps show the user, not the password. */
    leash_pool *p = pool_with("pw", "http://user:s3cret-pw@127.0.0.1:18080", 1, NULL);
    leash_handle *h = leash_acquire(p);
    get_ok(h, "/small", 200, SMALL);
    leash_release(&h);
    leash_format fmts[] = {LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON, LEASH_FORMAT_PROMETHEUS};
    for (int i = 0; i < 3; i++) {
        char *text = dump(fmts[i]);
        assert_null(strstr(text, secret));
        if (i == 0)
            assert_non_null(strstr(text, "http://user:***@127.0.0.1:18080"));
        free(text);
    }
    /* A failed request: the message shows the redacted URL. */
    leash_pool *q = pool_with("pw-refused", "http://user:s3cret-pw@127.0.0.1:1", 1, NULL);
    h = leash_acquire(q);
    request_fails(h, "GET", "/x?password=hunter2", LEASH_EIO, "user:***@");
    assert_null(strstr(leash_last_error(), secret));
    assert_null(strstr(leash_last_error(), "hunter2"));
    leash_release(&h);
}

/* Fails if any 4 or more consecutive characters of secret appear in text. */
static void assert_no_fragment(const char *what, const char *text, const char *secret)
{
    size_t n = strlen(secret);
    for (size_t i = 0; i + 4 <= n; i++) {
        char part[5];
        memcpy(part, secret + i, 4);
        part[4] = '\0';
        if (strstr(text, part))
            fail_msg("%s shows \"%s\" of the password \"%s\": %s", what, part, secret, text);
    }
}

static void test_password_delimiters_never_shown(void **state)
{
    /* Bad input tried: a base URL whose password holds one of / ? # @ : [ ] % raw, with the
     * "@host" part, without it (so a parser could read the password as a port), and with a
     * path after it; then one whose password is percent-encoded. Refused or accepted, no
     * message, target or dump may show 4 characters of it. A password that cannot be told
     * from the host or path is refused. */
    static const char delims[] = "/?#@:[]%";
    static const char *const forms[][2] = {
        {"http://u:", "@127.0.0.1:1"},        {"http://u:", ""},
        {"http://u:", "@127.0.0.1:1/prefix"}, {"https://", "@127.0.0.1:1"},
        {"http://u:", "/more@127.0.0.1:1/"},
    };
    int accepted = 0;
    for (const char *d = delims; *d; d++) {
        for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
            char pw[32], url[128];
            snprintf(pw, sizeof pw, "s3cr%cet-pw", *d);
            snprintf(url, sizeof url, "%s%s%s", forms[f][0], pw, forms[f][1]);
            /* Not a password there: "http://u:s3cr@et-pw" is a URL of the host et-pw,
             * "https://s3cr:et-pw@..." one of the user s3cr. */
            if ((*d == '@' && f == 1) || (*d == ':' && f == 3))
                continue;
            leash_pool *p = leash_http_pool("pw-chars", url, NULL);
            if (!p) {
                assert_int_equal(leash_last_status(), LEASH_EINVAL);
                assert_non_null(strstr(leash_last_error(), "http pool \"pw-chars\": "));
                assert_no_fragment("the open's message", leash_last_error(), pw);
                continue;
            }
            /* Only ':' may be in a password raw: libcurl splits the userinfo at the first. */
            if (*d != ':' || f == 1 || f == 4)
                fail_msg("%s was accepted", url);
            accepted++;
            assert_no_fragment("the target", leash_pool_target(p), pw);
            for (leash_format fmt = LEASH_FORMAT_TEXT; fmt <= LEASH_FORMAT_PROMETHEUS; fmt++) {
                char *text = dump(fmt);
                assert_no_fragment("a dump", text, pw);
                free(text);
            }
            leash_handle *h = leash_acquire(p);
            assert_non_null(h);
            request_fails(h, "GET", "/x", LEASH_EIO, "http pool \"pw-chars\": GET ");
            assert_no_fragment("a request's message", leash_last_error(), pw);
            leash_release(&h);
            leash_pool_close(p);
        }
    }
    assert_int_equal(accepted, 2);
    /* Percent-encoded, every delimiter is fine, and hidden all the same. */
    const char *pw = "s3cr%2F%3F%23%40%3A%5B%5D%25et";
    char url[128];
    snprintf(url, sizeof url, "http://u:%s@127.0.0.1:18080", pw);
    leash_pool *p = pool_with("pw-encoded", url, 1, NULL);
    assert_no_fragment("the target", leash_pool_target(p), pw);
    leash_handle *h = leash_acquire(p);
    get_ok(h, "/small", 200, SMALL);
    leash_release(&h);
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_no_fragment("a dump", text, pw);
    assert_non_null(strstr(text, "http://u:***@127.0.0.1:18080"));
    free(text);
    /* A bad escape in the password is refused without quoting it. */
    assert_null(leash_http_pool("pw-bad-escape", "http://u:s3cr%zzet-pw@127.0.0.1:1", NULL));
    assert_non_null(strstr(leash_last_error(), "'%'"));
    assert_no_fragment("the open's message", leash_last_error(), "s3cr%zzet-pw");
}

static void test_messages_name_the_pool_and_count_right(void **state)
{
    /* Bad input tried: a body over a max_body of 1 byte (singular), then of 2 bytes; a
     * request on a refused port; a timeout. Every message names the pool. */
    leash_http_options o = {.max_body = 1};
    leash_pool *p = pool_with("one-byte", PLAIN, 1, &o);
    leash_handle *h = leash_acquire(p);
    request_fails(h, "GET", "/small", LEASH_EIO, "http pool \"one-byte\": GET " PLAIN "/small");
    assert_non_null(strstr(leash_last_error(), "max_body (1 byte)"));
    leash_release(&h);
    o.max_body = 2;
    p = pool_with("two-bytes", PLAIN, 1, &o);
    h = leash_acquire(p);
    request_fails(h, "GET", "small", LEASH_EIO, "max_body (2 bytes)");
    leash_release(&h);
    p = pool_with("refused-named", "http://127.0.0.1:1", 1, NULL);
    h = leash_acquire(p);
    request_fails(h, "POST", "/x", LEASH_EIO,
                  "http pool \"refused-named\": POST http://127.0.0.1:1/x: ");
    leash_release(&h);
    leash_http_options slow = {.timeout_ms = 200};
    p = pool_with("slow-named", PLAIN, 1, &slow);
    h = leash_acquire(p);
    request_fails(h, "GET", "/slow", LEASH_ETIMEDOUT, "http pool \"slow-named\": GET ");
    leash_release(&h);
}

/* GETs path on a handle of p and returns the status (fails the test on a transport error). */
static long status_of(leash_pool *p, const char *path)
{
    leash_handle *h = take(p);
    leash_http_response r = {0};
    if (leash_http_get(h, path, &r) != LEASH_OK)
        fail_msg("GET %s: %s", path, leash_last_error());
    long st = r.status;
    leash_http_response_free(&r);
    leash_release(&h);
    return st;
}

static void test_retarget(void **state)
{
    /* Bad input tried: retargets to malformed URLs (one with a password holding '/', one
     * with a query, NULL); each is refused, quotes no part of the password, and changes
     * nothing. A good retarget takes effect for new connections; a handle held across it
     * keeps its base until released, and its connection is then retired. */
    leash_pool *p = pool_with("retarget", PLAIN "/prefix", 2, NULL);
    /* /prefix/small exists; /prefix/prefix/small does not. */
    assert_int_equal(status_of(p, "/small"), 200);
    assert_int_equal(status_of(p, "/prefix/small"), 404);
    leash_handle *held = take(p);

    const char *bad[] = {"http://u:s3cr/et-pw@127.0.0.1:18080", PLAIN "/?q=1", "ftp://h/", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(leash_pool_retarget(p, bad[i]), LEASH_EINVAL);
        assert_non_null(strstr(leash_last_error(), "retarget"));
        assert_no_fragment("a refused retarget's message", leash_last_error(), "s3cr/et-pw");
    }
    assert_int_equal(leash_pool_retarget(p, NULL), LEASH_EINVAL);
    assert_string_equal(leash_pool_target(p), PLAIN "/prefix");
    assert_int_equal(status_of(p, "/small"), 200);

    assert_int_equal(leash_pool_retarget(p, "http://user:s3cret-pw@localhost:18080/"), LEASH_OK);
    assert_string_equal(leash_pool_target(p), "http://user:***@localhost:18080");
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_no_fragment("a dump", text, "s3cret-pw");
    free(text);
    /* New connections use the new base. */
    assert_int_equal(status_of(p, "/prefix/small"), 200);
    assert_int_equal(status_of(p, "/small"), 200);
    /* The handle held across the retarget still talks to the base it was made for... */
    leash_http_response r = {0};
    assert_int_equal(leash_http_get(held, "/prefix/small", &r), LEASH_OK);
    assert_int_equal(r.status, 404);
    leash_http_response_free(&r);
    /* ...and its connection is retired when it comes back, not reused. */
    uint64_t evicted = stats(p).destroyed_evicted;
    leash_release(&held);
    assert_int_equal(stats(p).destroyed_evicted, evicted + 1);
    assert_int_equal(status_of(p, "/prefix/small"), 200);
}

static void test_peer(void **state)
{
    /* The peer of each connection is the base URL's host and port (the scheme's default
     * port when none is given), so leash_pool_evict_peer retires exactly those. Tried: a
     * peer that matches nothing, an IPv6 host, an https URL without a port. */
    leash_pool *p = pool_with("peer", PLAIN, 2, NULL);
    leash_handle *a = take(p), *b = take(p);
    leash_release(&a);
    leash_release(&b);
    assert_int_equal(leash_pool_evict_peer(p, "127.0.0.1:18443"), 0);
    assert_int_equal(leash_pool_evict_peer(p, "localhost:18080"), 0);
    assert_int_equal(leash_pool_evict_peer(p, "127.0.0.1:18080"), 2);
    assert_int_equal(stats(p).destroyed_evicted, 2);

    static const struct {
        const char *base, *peer;
    } forms[] = {
        {"http://[::1]:18080/x", "[::1]:18080"},
        {"https://example.invalid", "example.invalid:443"},
        {"http://user:pw@example.invalid/", "example.invalid:80"},
    };
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        char name[16];
        snprintf(name, sizeof name, "peer%zu", i);
        leash_pool *q = pool_with(name, forms[i].base, 1, NULL);
        leash_handle *h = take(q); /* no request: the easy handle connects lazily */
        leash_release(&h);
        assert_int_equal(leash_pool_evict_peer(q, forms[i].peer), 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_get_statuses_and_joins, teardown_no_leaks),
        cmocka_unit_test_teardown(test_post_with_body, teardown_no_leaks),
        cmocka_unit_test_teardown(test_thousand_gets_two_connections, teardown_no_leaks),
        cmocka_unit_test_teardown(test_slow_endpoint_times_out, teardown_no_leaks),
        cmocka_unit_test_teardown(test_body_over_limit, teardown_no_leaks),
        cmocka_unit_test_teardown(test_tls_verification, teardown_no_leaks),
        cmocka_unit_test_teardown(test_fork_child_leaves_parent_connections_alone,
                                  teardown_no_leaks),
        cmocka_unit_test_teardown(test_fork_while_a_share_lock_is_held, teardown_no_leaks),
        cmocka_unit_test_teardown(test_fork_during_shutdown_and_requests, teardown_no_leaks),
        cmocka_unit_test_teardown(test_raw_borrower_then_keepalive_reused, teardown_no_leaks),
        cmocka_unit_test_teardown(test_transport_failure_marks_broken, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_base_urls, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_paths_and_methods, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_handles, teardown_no_leaks),
        cmocka_unit_test_teardown(test_bad_options, teardown_no_leaks),
        cmocka_unit_test_teardown(test_password_never_shown, teardown_no_leaks),
        cmocka_unit_test_teardown(test_password_delimiters_never_shown, teardown_no_leaks),
        cmocka_unit_test_teardown(test_messages_name_the_pool_and_count_right, teardown_no_leaks),
        cmocka_unit_test_teardown(test_retarget, teardown_no_leaks),
        cmocka_unit_test_teardown(test_peer, teardown_no_leaks),
        cmocka_unit_test_teardown(test_reload_and_restart_under_load, teardown_no_leaks),
    };
    const char *only = getenv("TEST_FILTER"); /* e.g. TEST_FILTER='*fork*' */
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, group_setup, NULL);
}

/* Redis integration tests: malformed URLs and handles that are not Redis handles. */
#include "redis-util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- bad input ---- */

/* Every malformed URL: NULL + LEASH_EINVAL, a message naming the bad part, never the
 * password, and no pool left open. */
void test_bad_urls(void **state)
{
    static const struct {
        const char *url, *names, *secret;
    } bad[] = {
        /* not a Redis URL at all */
        {"", "scheme", NULL},
        {"127.0.0.1:6379", "scheme", NULL},
        {"http://127.0.0.1:6379", "scheme", NULL},
        {"redis:/127.0.0.1", "scheme", NULL},
        {"rediss://127.0.0.1:6380", "TLS", NULL},
        /* host */
        {"redis://", "host is empty", NULL},
        {"redis://:6379", "host is empty", NULL},
        {"redis://:s3cret-Pw@", "host is empty", "s3cret"},
        {"redis://:s3cret-Pw@:6379/0", "host is empty", "s3cret"},
        {"redis://exa mple.com", "space", NULL},
        {"redis://exa%mple.com", "host has an invalid character", NULL},
        {"redis://[::1", "']'", NULL},
        {"redis://[not-v6]:6379", "IPv6", NULL},
        {"redis://[::1]x:6379", "after ']'", NULL},
        {"redis://::1:6379", "host is empty", NULL},
        {"redis://fe80::1", "brackets", NULL},
        /* port */
        {"redis://127.0.0.1:", "port is empty", NULL},
        {"redis://127.0.0.1:0", "port 0 is out of range", NULL},
        {"redis://127.0.0.1:65536", "port 65536 is out of range", NULL},
        {"redis://127.0.0.1:99999999999999999999", "port is out of range", NULL},
        {"redis://127.0.0.1:-1", "port is not a number", NULL},
        {"redis://127.0.0.1:+80", "port is not a number", NULL},
        {"redis://127.0.0.1:63a9", "port is not a number", NULL},
        {"redis://localhost:s3cret-Pw/0", "port is not a number", "s3cret"},
        /* db */
        {"redis://127.0.0.1:6379/abc", "db", NULL},
        {"redis://127.0.0.1:6379/-1", "db", NULL},
        {"redis://127.0.0.1:6379/1.5", "db", NULL},
        {"redis://127.0.0.1:6379/0/1", "db", NULL},
        {"redis://127.0.0.1:6379/99999999999", "db (the path) is out of range", NULL},
        /* user info */
        {"redis://s3cret-Pw@127.0.0.1", "has no ':'", "s3cret"},
        {"redis://:@127.0.0.1", "password is empty", NULL},
        {"redis://app:@127.0.0.1", "password is empty", NULL},
        {"redis://:s3cr%zzet-Pw@127.0.0.1", "percent-escape", "s3cr"},
        {"redis://:s3cret-Pw%@127.0.0.1", "percent-escape", "s3cret"},
        {"redis://:s3cret%00Pw@127.0.0.1", "NUL", "s3cret"},
        {"redis://a%zz:s3cret-Pw@127.0.0.1", "user name", "s3cret"},
        /* options */
        {"redis://127.0.0.1?colour=blue", "unknown option \"colour\"", NULL},
        {"redis://127.0.0.1?password=s3cret-Pw", "unknown option \"password\"", "s3cret"},
        {"redis://127.0.0.1?s3cret-Pw", "unknown option", "s3cret"},
        {"redis://127.0.0.1?db=2", "unknown option \"db\"", NULL},
        {"redis://127.0.0.1?connect_timeout_ms", "has no value", NULL},
        {"redis://127.0.0.1?connect_timeout_ms=", "not a number", NULL},
        {"redis://127.0.0.1?connect_timeout_ms=fast", "not a number", NULL},
        {"redis://127.0.0.1?connect_timeout_ms=0", "out of range", NULL},
        {"redis://127.0.0.1?command_timeout_ms=-5", "not a number", NULL},
        {"redis://127.0.0.1?command_timeout_ms=86400001", "out of range", NULL},
        {"redis://127.0.0.1?command_timeout_ms=1&command_timeout_ms=2", "given twice", NULL},
        {"redis://:s3cret-Pw@127.0.0.1?colour=1", "colour", "s3cret"},
        /* control characters */
        {"redis://127.0.0.1\n:6379", "control character", NULL},
        {"redis://:s3cret\tPw@127.0.0.1", "control character", "s3cret"},
        /* unix sockets */
        {"unix://", "socket path is empty", NULL},
        {"unix://?db=1", "socket path is empty", NULL},
        {"unix://tmp/redis.sock", "must be absolute", NULL},
        {"unix:///tmp/redis.sock?db=x", "option db is not a number", NULL},
        {"unix:///tmp/redis.sock?db=-1", "option db is not a number", NULL},
        {"unix:///tmp/redis.sock?timeout=1", "unknown option \"timeout\"", NULL},
        {"unix:///tmp/"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
         "socket path is longer", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(leash_redis_pool("bad", bad[i].url, NULL));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].names))
            fail_msg("#%zu %s: \"%s\" does not name \"%s\"", i, bad[i].url, msg, bad[i].names);
        if (bad[i].secret && strstr(msg, bad[i].secret))
            fail_msg("#%zu: \"%s\" shows the password", i, msg);
        if (!strstr(msg, "redis pool \"bad\""))
            fail_msg("#%zu: \"%s\" does not name the pool", i, msg);
        assert_null(leash_pool_get("bad"));
    }
    /* an over-long URL */
    char *huge = malloc(5000);
    memset(huge, 'a', 4999);
    memcpy(huge, "redis://", 8);
    huge[4999] = '\0';
    assert_null(leash_redis_pool("bad", huge, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "longer"));
    free(huge);
    /* NULL URL, NULL name, a negative pool option */
    assert_null(leash_redis_pool("bad", NULL, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_pool(NULL, URL, NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_pool("bad", URL, &(leash_pool_options){.max_size = -1}));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pool_get("bad"));

    /* the good forms parse */
    static const char *const good[] = {
        "redis://localhost",
        "REDIS://127.0.0.1:6379/",
        "redis://[::1]:6379/3",
        "redis://[::1]",
        ("redis://:p%40ss%2Fw:rd@host.example-1_x:1/"
         "0?connect_timeout_ms=1&command_timeout_ms=86400000"),
        "redis://us%65r:p@ss@h?&connect_timeout_ms=5&",
        "unix:///tmp/redis.sock",
        "unix:///tmp/redis.sock?db=15&connect_timeout_ms=100",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        leash_pool *p = leash_redis_pool("good", good[i], NULL);
        if (!p)
            fail_msg("#%zu %s: %s", i, good[i], leash_last_error());
        leash_pool_close(p);
    }
}

/* Runs ACL SETUSER name reset on >pw ~* &* +@all on the password-less instance (argv form). */
static void acl_user(redisContext *ad, const char *name, const char *pw)
{
    char pass[64];
    snprintf(pass, sizeof pass, ">%s", pw);
    const char *argv[] = {"ACL", "SETUSER", name, "reset", "on", pass, "~*", "&*", "+@all"};
    redisReply *r = redisCommandArgv(ad, 9, argv, NULL);
    if (!r || r->type != REDIS_REPLY_STATUS)
        fail_msg("ACL SETUSER: %s", r ? r->str : ad->errstr);
    freeReplyObject(r);
}

/* Fails if any text leash shows (the last error, the log, every dump format, the pool's
 * target) holds a piece of the password: a, b are its two halves around the delimiter. */
static void assert_hidden(leash_pool *p, const char *a, const char *b, const char *what)
{
    const char *texts[5] = {leash_last_error(), log_text, p ? leash_pool_target(p) : ""};
    char *d[3];
    for (leash_format f = LEASH_FORMAT_TEXT; f <= LEASH_FORMAT_PROMETHEUS; f++)
        d[f] = dump(f);
    for (int i = 0; i < 6; i++) {
        const char *t = i < 3 ? texts[i] : d[i - 3];
        if (strstr(t, a) || strstr(t, b))
            fail_msg("%s: text %d shows part of the password: %s", what, i, t);
    }
    for (int f = 0; f < 3; f++)
        free(d[f]);
}

/* Bad input: a password holding each URL delimiter, raw and percent-encoded, right and wrong.
 * Raw, each is taken whole (the connect as that ACL user succeeds) except '%' not starting a
 * %XX escape, which is refused with LEASH_EINVAL; encoded, each works. No message, log line,
 * dump or description shows a piece of any of them (before, a '/' in a password made its
 * first half "the port"). */
void test_password_delimiters(void **state)
{
    static const char delims[] = "/?#@:[]%";
    redisContext *ad = admin();
    capture_start();
    for (const char *c = delims; *c; c++) {
        char pw[32], url[160], what[64];
        snprintf(pw, sizeof pw, "Xq7%cZk9pw", *c);
        acl_user(ad, "leash-delim", pw);
        /* raw */
        snprintf(url, sizeof url, "redis://leash-delim:%s@127.0.0.1:16379/0", pw);
        snprintf(what, sizeof what, "raw '%c'", *c);
        leash_pool *p = leash_redis_pool("delim", url, NULL);
        if (*c == '%') {
            assert_null(p);
            assert_int_equal(leash_last_status(), LEASH_EINVAL);
            assert_non_null(strstr(leash_last_error(), "percent-escape"));
            assert_hidden(NULL, "Xq7", "Zk9", what);
        } else {
            if (!p)
                fail_msg("%s: %s", what, leash_last_error());
            leash_handle *h = take(p);
            LEASH_REPLY redisReply *who = must(h, "ACL WHOAMI");
            assert_string_equal(who->str, "leash-delim");
            leash_release(&h);
            assert_hidden(p, "Xq7", "Zk9", what);
            leash_pool_close(p);
        }
        /* percent-encoded */
        snprintf(url, sizeof url, "redis://leash-delim:Xq7%%%02XZk9pw@127.0.0.1:16379", *c);
        snprintf(what, sizeof what, "encoded '%c'", *c);
        p = leash_redis_pool("delim", url, NULL);
        if (!p)
            fail_msg("%s: %s", what, leash_last_error());
        leash_handle *h = take(p);
        leash_release(&h);
        assert_hidden(p, "Xq7", "Zk9", what);
        leash_pool_close(p);
        /* wrong, raw: refused at open ('%') or at connect, never shown */
        snprintf(url, sizeof url, "redis://leash-delim:Wr0%cNg9pw@127.0.0.1:16379", *c);
        snprintf(what, sizeof what, "wrong raw '%c'", *c);
        p = leash_redis_pool("delim", url, NULL);
        if (p) {
            assert_null(leash_acquire(p));
            assert_int_equal(leash_last_status(), LEASH_ECONNECT);
            assert_non_null(strstr(leash_last_error(), "WRONGPASS"));
        } else {
            assert_int_equal(leash_last_status(), LEASH_EINVAL);
        }
        assert_hidden(p, "Wr0", "Ng9", what);
        leash_pool_close(p);
    }
    freeReplyObject(admin_cmd(ad, "ACL DELUSER leash-delim"));
    redisFree(ad);
}

/* NULL and non-Redis handles, a NULL format: LEASH_EINVAL, no crash. */
void test_bad_handles(void **state)
{
    assert_null(leash_redis(NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_command(NULL, "PING"));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "NULL"));

    leash_pool *o = leash_pool_open("other", &kit_other_adapter, "x", NULL);
    assert_non_null(o);
    leash_handle *h = take(o);
    assert_null(leash_redis(h));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_redis_command(h, "PING"));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "not a held Redis handle"));
    leash_release(&h);

    leash_pool *p = pool("bad-args", URL, 1);
    h = take(p);
    const char *no_format = NULL;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-security"
    assert_null(leash_redis_command(h, no_format)); /* a NULL format */
#pragma GCC diagnostic pop
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    LEASH_REPLY redisReply *r = must(h, "PING"); /* still fine */
    assert_string_equal(r->str, "PONG");
    leash_release(&h);
    leash__reply_free(NULL); /* accepts NULL */
    redisReply *none = NULL;
    leash__reply_free(&none);
    assert_balanced(p);
    assert_balanced(o);
    /* the adapter table is usable directly: leash_pool_open parses the target itself */
    leash_pool *d = leash_pool_open("direct", &leash_redis_adapter, AUTH_URL "/5", NULL);
    assert_non_null(d);
    h = take(d);
    char *db = client_info(h, "db");
    assert_string_equal(db, "5");
    free(db);
    leash_release(&h);
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_null(strstr(text, SRV_REDIS_PASSWORD));
    free(text);
    assert_balanced(d);
}

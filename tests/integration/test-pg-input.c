/* Integration tests of the PostgreSQL adapter's input checks: option values refused at open,
 * passwords that leave no piece of themselves anywhere, retarget and the servers in dumps. */
#include "test-pg-util.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Invalid values of libpq options are refused at open (not at the first acquire) with
 * LEASH_EINVAL naming the option, and a value that may be a piece of the password is not
 * quoted. */
void test_bad_option_values(void **state)
{
    struct {
        const char *conninfo, *names, *not_shown;
    } bad[] = {
        /* a misspelt enumerated value, in both forms and in the wrong case */
        {"host=127.0.0.1 sslmode=bogus", "sslmode \"bogus\" is not one of disable, allow", NULL},
        {"postgresql://127.0.0.1/leash?sslmode=Require", "sslmode \"Require\"", NULL},
        {"host=127.0.0.1 gssencmode=sometimes", "gssencmode \"sometimes\"", NULL},
        {"host=127.0.0.1 channel_binding=maybe", "channel_binding \"maybe\"", NULL},
        {"host=127.0.0.1 target_session_attrs=readwrite", "target_session_attrs \"readwrite\"",
         NULL},
        {"host=127.0.0.1 ssl_min_protocol_version=TLSv9", "ssl_min_protocol_version", NULL},
        {"host=127.0.0.1 gsslib=kerberos", "gsslib", NULL},
        /* integers that are not */
        {"host=127.0.0.1 connect_timeout=soon", "connect_timeout \"soon\" is not an integer", NULL},
        {"host=127.0.0.1 keepalives_idle=-5", "keepalives_idle \"-5\" is not an integer >= 0",
         NULL},
        {"host=127.0.0.1 tcp_user_timeout=1e3", "tcp_user_timeout", NULL},
        /* addresses and lists that do not match */
        {"hostaddr=not-an-ip", "hostaddr \"not-an-ip\" is not a numeric IP address", NULL},
        {"host=a,b,c port=1,2", "2 port numbers for 3 hosts", NULL},
        {"host=a,b hostaddr=127.0.0.1", "2 host names but 1 hostaddr values", NULL},
        {"host=127.0.0.1 port=0", "port \"0\"", NULL},
        {"postgresql://127.0.0.1:15432,127.0.0.1:99999/leash", "port", "99999"},
        /* after an unquoted password with a space, "sslmode=bogus" may be part of it */
        {"host=127.0.0.1 password=my sslmode=bogus", "sslmode (hidden", "bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(leash_pg_pool("bad", bad[i].conninfo, NULL));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (!strstr(msg, bad[i].names) || !strstr(msg, "pg pool \"bad\""))
            fail_msg("#%zu: \"%s\" does not name \"%s\" and the pool", i, msg, bad[i].names);
        if (bad[i].not_shown && strstr(msg, bad[i].not_shown) && strcmp(bad[i].not_shown, "99999"))
            fail_msg("#%zu: \"%s\" shows \"%s\"", i, msg, bad[i].not_shown);
        assert_null(leash_pool_get("bad"));
    }
    /* From the environment too, as libpq would read it at connect. */
    setenv("PGSSLMODE", "bogus", 1);
    assert_null(leash_pg_pool("bad", "host=127.0.0.1", NULL));
    unsetenv("PGSSLMODE");
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "(from PGSSLMODE)"));
    /* A negative command timeout other than -1. */
    assert_null(
        leash_pg_pool_with("bad", PG_KV, NULL, &(leash_pg_options){.command_timeout_ms = -2}));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    /* Valid values of the same options open fine. */
    leash_pool *p = leash_pg_pool("good",
                                  PG_KV " sslmode=disable gssencmode=disable channel_binding=prefer"
                                        " target_session_attrs=any keepalives_idle=30"
                                        " ssl_min_protocol_version=tlsv1.2 connect_timeout=3",
                                  NULL);
    if (!p)
        fail_msg("%s", leash_last_error());
    leash_handle *h = take(p);
    assert_int_equal(value_long(h, "SELECT 6"), 6);
    leash_release(&h);
    assert_balanced(p);
}

/* 1 when text shows any piece of the password "Qz7" c "Kx9-Wv" of test_password_characters. */
static int shows_password(const char *text)
{
    return strstr(text, "Qz7") || strstr(text, "Kx9") || strstr(text, "9-Wv");
}

/* Everything leash could have said: the last error, the log, the three dumps. */
static void assert_nothing_shows(const char *what)
{
    if (shows_password(leash_last_error()))
        fail_msg("%s: the message shows the password: %s", what, leash_last_error());
    if (shows_password(log_text))
        fail_msg("%s: the log shows the password: %s", what, log_text);
    leash_format fmts[] = {LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON, LEASH_FORMAT_PROMETHEUS};
    for (int i = 0; i < 3; i++) {
        char *text = dump(fmts[i]);
        if (shows_password(text))
            fail_msg("%s: dump %d shows the password: %s", what, i, text);
        free(text);
    }
}

/* A password with each character a user may put in one (/ ? # @ : [ ] %), written as is in
 * a URI and in a key=value conninfo: libpq splits such a URI inside the password ("/" ends
 * its user information, an extra "@" moves the host), so leash refuses it at open without
 * quoting it, or takes it whole; either way no piece of it reaches a message, the log or a
 * dump, on the parse, connect, describe and retarget paths. */
void test_password_characters(void **state)
{
    capture_start();
    default_mode(); /* the failed connects below are logged, not reports */
    capture_start();
    leash_pool *r = pool("retarget-pw", PG_KV, 1, NULL);
    const char chars[] = "/?#@:[]%";
    for (const char *c = chars; *c; c++) {
        char pw[32], uri[160], kv[200];
        snprintf(pw, sizeof pw, "Qz7%cKx9-Wv", *c);
        snprintf(uri, sizeof uri, "postgresql://leash:%s@127.0.0.1:15432/leash", pw);
        snprintf(kv, sizeof kv, "host=127.0.0.1 port=15432 dbname=leash user=leash password=%s",
                 pw);
        const char *forms[] = {uri, kv};
        for (int f = 0; f < 2; f++) {
            char what[64];
            snprintf(what, sizeof what, "'%c' in the %s", *c, f ? "key=value form" : "URI");
            leash_pool *p = leash_pg_pool("pw", forms[f], NULL);
            if (p) {
                /* Taken whole: a wrong password, refused by the server. */
                assert_string_not_equal(leash_pool_target(p), "");
                if (shows_password(leash_pool_target(p)))
                    fail_msg("%s: described as %s", what, leash_pool_target(p));
                assert_null(leash_acquire(p));
                assert_int_equal(leash_last_status(), LEASH_ECONNECT);
                if (!strstr(leash_last_error(), "password authentication failed"))
                    fail_msg("%s: %s", what, leash_last_error());
                assert_nothing_shows(what);
                leash_pool_close(p);
            } else {
                /* Refused at open: only "/", "@" (split inside) and "%" (a bad escape). */
                assert_int_equal(f, 0);
                assert_non_null(strchr("/@%", *c));
                assert_int_equal(leash_last_status(), LEASH_EINVAL);
                assert_nothing_shows(what);
            }
            leash_status st = leash_pool_retarget(r, forms[f]);
            assert_true(st == (p ? LEASH_OK : LEASH_EINVAL));
            assert_nothing_shows(what);
            if (st == LEASH_OK) {
                assert_null(leash_acquire(r));
                assert_nothing_shows(what);
                assert_int_equal(leash_pool_retarget(r, PG_KV), LEASH_OK);
            }
        }
    }
    /* The examples of the issue: a "/" and an "@" in a URI password. */
    const char *split[] = {"postgresql://u:s3/cret@h/db", "postgresql://u:p@ssw0rd@h/db",
                           "postgresql://u:s3/cr?et@h/db"};
    for (int i = 0; i < 3; i++) {
        assert_null(leash_pg_pool("pw", split[i], NULL));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        const char *msg = leash_last_error();
        if (strstr(msg, "s3") || strstr(msg, "cret") || strstr(msg, "ssw0rd") ||
            strstr(msg, "cr?et") || !strstr(msg, "percent-encode"))
            fail_msg("\"%s\": %s", split[i], msg);
    }
    assert_balanced(r);
}

/* The first 4-character piece of pw (as written, or percent-decoded) that text shows, or NULL.
 * pw's letters occur nowhere else in the conninfos of test_password_in_parse_errors. */
static const char *password_piece(const char *text, const char *pw)
{
    static char piece[5];
    char dec[64];
    size_t n = 0;
    for (const char *p = pw; *p && n + 1 < sizeof dec; p++) {
        unsigned hi, lo;
        if (p[0] == '%' && sscanf(p + 1, "%1x%1x", &hi, &lo) == 2) {
            dec[n++] = (char)(hi * 16 + lo);
            p += 2;
        } else {
            dec[n++] = *p;
        }
    }
    dec[n] = '\0';
    const char *forms[] = {pw, dec};
    for (int f = 0; f < 2; f++)
        for (size_t i = 0; i + 4 <= strlen(forms[f]); i++) {
            memcpy(piece, forms[f] + i, 4);
            piece[4] = '\0';
            if (strcasestr(text, piece))
                return piece;
        }
    return NULL;
}

/* A conninfo libpq cannot parse, with a password in it: whatever quotes, backslashes or
 * percent-escapes surround the password (libpq's message quotes the password, and a '"' in it
 * breaks the pairing of the quotes), no 4-character piece of it is in the message, as written
 * or decoded. Bad input tried: the fuzzer's case (a '"' after a bad escape), quotes around and
 * inside the password, %00, a percent-encoded "password" key (libpq decodes keys), the
 * password again as the port, an unquoted password with spaces, an unterminated quote, an
 * IPv6 host left open; on open and on retarget. The message still says where the fault is,
 * with libpq's words when the fault is outside the password. No server is needed. */
void test_password_in_parse_errors(void **state)
{
    capture_start();
    struct {
        const char *conninfo, *pw, *says;
    } bad[] = {
        {"postgresql://u:%zz\"Qz7Kx9-Wv@127.0.0.1/db", "Qz7Kx9-Wv", "cannot read the password"},
        {"postgresql://u:\"Qz7Kx9-Wv\"%zz@127.0.0.1/db", "Qz7Kx9-Wv", "cannot read the password"},
        {"postgresql://u:Qz7\"Kx9%g\"Wv-Jy@127.0.0.1/db", "Qz7\"Kx9%g\"Wv-Jy",
         "cannot read the password"},
        {"postgresql://u:\"Qz7\"\"Kx9-Wv%@127.0.0.1/db", "\"Qz7\"\"Kx9-Wv%",
         "cannot read the password"},
        {"postgresql://u:Qz7Kx9%00Wv@127.0.0.1/db", "Qz7Kx9%00Wv", "cannot read the password"},
        {"postgresql://127.0.0.1/db?%70assword=Qz7Kx9-Wv%zz", "Qz7Kx9-Wv%zz",
         "cannot read the part from where a password may begin"},
        {"postgresql://127.0.0.1/db?pass%77ord=Qz7\"Kx9\"%q", "Qz7\"Kx9\"%q",
         "cannot read the part from where a password may begin"},
        {"postgresql://127.0.0.1/db?pass%77ord=Qz7Kx9&port=Qz7Kx9", "Qz7Kx9", "port"},
        {"postgresql://u:Qz7Kx9-Wv@[::1/db", "Qz7Kx9-Wv", "IPv6"},
        {"postgresql://u:Qz7Kx9-Wv@127.0.0.1/db?colour=blue", "Qz7Kx9-Wv", "\"colour\""},
        {"host=127.0.0.1 password=Qz7 Kx9-Wv", "Qz7 Kx9-Wv",
         "cannot read the part from where a password may begin"},
        {"host=127.0.0.1 password='Qz7\"Kx9-Wv", "Qz7\"Kx9-Wv",
         "cannot read the part from where a password may begin"},
        {"host=127.0.0.1 password=Qz7\\\"Kx9 \"Wv=1\"", "Qz7\\\"Kx9 \"Wv",
         "cannot read the part from where a password may begin"},
        {"host=127.0.0.1 colour=blue password=\"Qz7Kx9-Wv", "Qz7Kx9-Wv",
         "invalid connection option \"colour\""},
    };
    leash_pool *r = leash_pg_pool("retarget-parse", PG_KV, NULL);
    assert_non_null(r);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        for (int retarget = 0; retarget < 2; retarget++) {
            if (retarget) {
                assert_int_equal(leash_pool_retarget(r, bad[i].conninfo), LEASH_EINVAL);
            } else {
                assert_null(leash_pg_pool("bad", bad[i].conninfo, NULL));
                assert_int_equal(leash_last_status(), LEASH_EINVAL);
            }
            const char *msg = leash_last_error();
            const char *piece = password_piece(msg, bad[i].pw);
            if (piece)
                fail_msg("#%zu %s: \"%s\" shows \"%s\" of the password", i,
                         retarget ? "retarget" : "open", msg, piece);
            if (!strstr(msg, bad[i].says) || !strstr(msg, "malformed conninfo"))
                fail_msg("#%zu: \"%s\" does not say \"%s\"", i, msg, bad[i].says);
            if ((piece = password_piece(log_text, bad[i].pw)) != NULL)
                fail_msg("#%zu: the log shows \"%s\": %s", i, piece, log_text);
        }
    }
    assert_null(leash_pool_get("bad"));
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_null(strstr(text, "Qz7"));
    free(text);
    leash_pool_close(r);
}

/* The same characters percent-encoded in a URI, or as is in a key=value conninfo, reach the
 * server intact: a role whose password holds all of them logs in both ways. */
void test_password_characters_accepted(void **state)
{
    free(su("DO $$BEGIN CREATE ROLE leash_chars LOGIN; EXCEPTION WHEN duplicate_object THEN "
            "NULL; END$$"));
    free(su("ALTER ROLE leash_chars PASSWORD 'a/b?c#d@e:f[g]h%%i j'"));
    const char *forms[] = {
        "postgresql://leash_chars:a%2Fb%3Fc%23d%40e%3Af%5Bg%5Dh%25i%20j@127.0.0.1:15432/leash",
        "host=127.0.0.1 port=15432 dbname=leash user=leash_chars password='a/b?c#d@e:f[g]h%i j'",
    };
    for (int i = 0; i < 2; i++) {
        leash_pool *p = pool(i ? "chars-kv" : "chars-uri", forms[i], 1, NULL);
        leash_handle *h = take(p);
        char *who = value(h, "SELECT current_user");
        assert_string_equal(who, "leash_chars");
        free(who);
        leash_release(&h);
        assert_null(strstr(leash_pool_target(p), "a/b"));
        assert_balanced(p);
    }
}

/* Messages about a connection name its pool: a failed statement and a failed connect. */
void test_messages_name_the_pool(void **state)
{
    leash_pool *p = pool("named-pool", PG_KV, 1, NULL);
    leash_handle *h = take(p);
    terminate(backend_pid(h));
    assert_null(leash_pg_exec(h, "SELECT 1"));
    assert_int_equal(leash_last_status(), LEASH_EIO);
    assert_non_null(strstr(leash_last_error(), "pool \"named-pool\""));
    assert_non_null(strstr(leash_last_error(), "127.0.0.1:15432"));
    leash_release(&h);
    /* A NULL statement names it too. */
    h = take(p);
    assert_null(leash_pg_exec(h, NULL));
    assert_non_null(strstr(leash_last_error(), "pool \"named-pool\""));
    leash_release(&h);
    leash_pool *q = pool("named-refused", "host=127.0.0.1 port=1 dbname=leash user=leash", 1, NULL);
    assert_null(leash_acquire(q));
    assert_non_null(strstr(leash_last_error(), "pool \"named-refused\""));
    assert_balanced(p);
}

struct flipper {
    leash_pool *pool;
    atomic_int *stop;
    long ok, wrong;
};

static void *flip_main(void *arg)
{
    struct flipper *f = arg;
    while (!atomic_load(f->stop)) {
        leash_handle *h = leash_acquire(f->pool);
        if (!h)
            continue;
        const char *port = PQport(leash_pg(h));
        if (strcmp(port, "15432") && strcmp(port, "16432")) {
            fprintf(stderr, "port %s\n", port);
            f->wrong++;
        }
        LEASH_RESULT PGresult *r = leash_pg_exec(h, "SELECT 1");
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
            f->ok++;
        leash_release(&h);
    }
    return NULL;
}

/* leash_pool_retarget checks the new conninfo like leash_pg_pool (a bad one changes
 * nothing), later connects use it, and connects in flight while it changes are safe; the
 * dump shows the server the connections are on. */
void test_retarget(void **state)
{
    leash_pool *p = pool("retarget", PG_KV, 2, NULL);
    leash_handle *h = take(p);
    assert_string_equal(PQport(leash_pg(h)), "15432");
    leash_release(&h);
    char *text = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(text, "127.0.0.1:15432 (1)"));
    free(text);

    assert_int_equal(leash_pool_retarget(p, BOUNCER_KV), LEASH_OK);
    h = take(p);
    assert_string_equal(PQport(leash_pg(h)), "16432");
    assert_int_equal(value_long(h, "SELECT 4"), 4);
    leash_release(&h);
    text = dump(LEASH_FORMAT_TEXT);
    assert_non_null(strstr(text, "127.0.0.1:16432 (1)"));
    free(text);

    /* Refused: a bad value, and a URI split inside its password; the pool keeps its target. */
    assert_int_equal(leash_pool_retarget(p, "host=127.0.0.1 sslmode=bogus"), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "sslmode \"bogus\""));
    assert_int_equal(leash_pool_retarget(p, "postgresql://leash:Qz7/Kx9@127.0.0.1/leash"),
                     LEASH_EINVAL);
    assert_null(strstr(leash_last_error(), "Qz7"));
    assert_null(strstr(leash_last_error(), "Kx9"));
    h = take(p);
    assert_string_equal(PQport(leash_pg(h)), "16432");
    leash_release(&h);

    /* Four threads borrow while the target flips 40 times: every connection is on one of the
     * two, every statement answers. */
    atomic_int stop = 0;
    struct flipper f[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        f[i] = (struct flipper){.pool = p, .stop = &stop};
        assert_int_equal(pthread_create(&th[i], NULL, flip_main, &f[i]), 0);
    }
    for (int i = 0; i < 40; i++) {
        assert_int_equal(leash_pool_retarget(p, i % 2 ? BOUNCER_KV : PG_KV), LEASH_OK);
        sleep_ms(10);
    }
    atomic_store(&stop, 1);
    long ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(f[i].wrong, 0);
        ok += f[i].ok;
    }
    assert_true(ok > 0);
    h = take(p);
    assert_string_equal(PQport(leash_pg(h)), "16432"); /* the last one */
    leash_release(&h);
    assert_balanced(p);
}

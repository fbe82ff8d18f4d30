/* Unit tests of leash__redact: no part of a password survives, whatever it holds. */
#include "kit.h"

#include "common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Fails if any 4 or more consecutive characters of secret appear in text. */
static void assert_no_fragment(const char *text, const char *secret, const char *input)
{
    size_t n = strlen(secret);
    for (size_t i = 0; i + 4 <= n; i++) {
        char part[5];
        memcpy(part, secret + i, 4);
        part[4] = '\0';
        if (strstr(text, part))
            fail_msg("redact(\"%s\") = \"%s\": shows \"%s\" of the password", input, text, part);
    }
}

static void redacts_to(const char *in, const char *secret, const char *want)
{
    char out[512];
    leash__redact(in, out, sizeof out);
    assert_no_fragment(out, secret, in);
    if (want && strcmp(out, want) != 0)
        fail_msg("redact(\"%s\") = \"%s\", want \"%s\"", in, out, want);
}

/* The characters a user may put in a password that are also URL or conninfo syntax. */
static const char delims[] = "/?#@:[]%";

static void test_url_userinfo_with_every_delimiter(void **state)
{
    /* Bad input tried: a URL password holding each of / ? # @ : [ ] % raw (unencoded), in
     * the middle, at the start and at the end, then all of them at once. */
    for (const char *d = delims; *d; d++) {
        for (size_t f = 0; f < 3; f++) {
            char pw[32], in[128], want[128];
            /* in the middle, at the start, at the end */
            static const char *const around[3][2] = {
                {"s3cr", "et-pw"}, {"", "s3cret-pw"}, {"s3cret-pw", ""}};
            snprintf(pw, sizeof pw, "%s%c%s", around[f][0], *d, around[f][1]);
            snprintf(in, sizeof in, "redis://user:%s@db.example:6379/2", pw);
            redacts_to(in, pw, "redis://user:***@db.example:6379/2");
            /* inside a message, quoted, followed by an address with its own '@' */
            snprintf(in, sizeof in, "connect to \"postgresql://u:%s@h/db\" failed: ask a@b", pw);
            snprintf(want, sizeof want, "connect to \"postgresql://u:***@h/db\" failed: ask a@b");
            redacts_to(in, pw, want);
        }
    }
    redacts_to("http://u:a/b?c#d@e:f[g]h%i@host:80/p", "a/b?c#d@e:f[g]h%i",
               "http://u:***@host:80/p");
    /* percent-encoded passwords are hidden the same way */
    redacts_to("redis://u:s3cr%2Fet%40pw@h", "s3cr%2Fet%40pw", "redis://u:***@h");
    /* two URLs in one message */
    redacts_to("from redis://a:s3cret-1@h1 to redis://b:s3cret-2@h2", "s3cret-",
               "from redis://a:***@h1 to redis://b:***@h2");
    /* IPv6 hosts keep their port; a user name alone is shown, a token alone is hidden */
    redacts_to("redis://u:s3cret-pw@[::1]:6379", "s3cret-pw", "redis://u:***@[::1]:6379");
    redacts_to("https://t0ken-s3cret@api.example/v1", "t0ken-s3cret", "https://***@api.example/v1");
    redacts_to("redis://:s3cret-pw@h", "s3cret-pw", "redis://:***@h");
}

static void test_url_cut_or_without_host(void **state)
{
    /* Bad input tried: a password whose "@host" is missing or was cut off (a truncated
     * message), which a parser would read as a port. */
    redacts_to("redis://u:s3cr/et-pw", "s3cr/et-pw", "redis://u:***");
    redacts_to("redis://u:s3cret-pw", "s3cret-pw", "redis://u:***");
    redacts_to("http://u:s3cr?et#pw more text", "s3cr?et#pw", "http://u:*** more text");
    redacts_to("x://u:123456789", "123456789", "x://u:***");
    /* Real ports stay, also inside quotes and brackets. */
    redacts_to("http://h:8080/x", "", "http://h:8080/x");
    redacts_to("\"redis://127.0.0.1:6379\"", "", "\"redis://127.0.0.1:6379\"");
    redacts_to("(redis://[::1]:6379)", "", "(redis://[::1]:6379)");
    redacts_to("unix:///tmp/redis.sock?db=1", "", "unix:///tmp/redis.sock?db=1");
    redacts_to("mail user@example.com", "", "mail user@example.com");
}

static void test_key_value_forms(void **state)
{
    /* Bad input tried: password values holding spaces, quotes, escapes, '&', '#' and every
     * delimiter, in conninfo, URL query, JSON and SQL forms, and unterminated quotes. */
    redacts_to("host=h password=s3cr/et?#@:[]% dbname=d", "s3cr/et?#@:[]%",
               "host=h password=*** dbname=d");
    redacts_to("host=h password = 's3c\\'r et pw' dbname=d", "s3c\\'r et pw",
               "host=h password = *** dbname=d");
    redacts_to("password='it''s s3cret' x", "s s3cret", "password=*** x");
    redacts_to("password=s3cr\\ et\\\\pw host=h", "s3cr\\ et\\\\pw", "password=*** host=h");
    redacts_to("host=h password=s3cr&et-pw", "s3cr&et-pw", "host=h password=***");
    redacts_to("redis://h/0?sentinel_password=s3cr%26et&db=1#m", "s3cr%26et",
               "redis://h/0?sentinel_password=***&db=1#m");
    redacts_to("postgresql://h/db?user=u&password=s3cret-pw", "s3cret-pw",
               "postgresql://h/db?user=u&password=***");
    redacts_to("{\"password\": \"s3c\\\"ret-pw\", \"user\": \"u\"}", "s3c\\\"ret-pw",
               "{\"password\": ***, \"user\": \"u\"}");
    /* a '@' in a query's password is not the end of a userinfo */
    redacts_to("postgresql://h/db?password=p@ssw0rd-x&user=u", "p@ssw0rd-x",
               "postgresql://***&user=u");
    redacts_to("{\"url\":\"redis://h\",\"password\":\"p@ssw0rd-x\"}", "p@ssw0rd-x", NULL);
    redacts_to("PASSWORD=S3CRET-PW", "S3CRET-PW", "PASSWORD=***");
    redacts_to("ALTER ROLE u PASSWORD 's3cret-pw'", "s3cret-pw", "ALTER ROLE u PASSWORD ***");
    redacts_to("password: s3cret-pw", "s3cret-pw", "password: ***");
    redacts_to("password='s3cret-pw", "s3cret-pw", "password=***");
    redacts_to("password=\"s3cret\\", "s3cret", "password=***");
    /* Not a password: left alone. */
    redacts_to("FATAL:  password authentication failed for user \"bob\"", "",
               "FATAL:  password authentication failed for user \"bob\"");
    redacts_to("no password supplied", "", "no password supplied");
}

static void test_small_buffers_and_null(void **state)
{
    /* Bad input tried: output buffers too small for the text (cut anywhere, always
     * terminated, never a fragment), NULL in, NULL out, zero length. */
    const char *in = "redis://user:s3cret-pw@h:1 password='s3cret-pw'";
    for (size_t n = 1; n < 64; n++) {
        char out[64];
        memset(out, 'x', sizeof out);
        leash__redact(in, out, n);
        assert_true(strlen(out) < n);
        assert_no_fragment(out, "s3cret-pw", in);
    }
    char out[8] = "junk";
    leash__redact(NULL, out, sizeof out);
    assert_string_equal(out, "");
    leash__redact(in, NULL, 8);
    leash__redact(in, out, 0);
    leash__redact("", out, sizeof out);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_userinfo_with_every_delimiter),
        cmocka_unit_test(test_url_cut_or_without_host),
        cmocka_unit_test(test_key_value_forms),
        cmocka_unit_test(test_small_buffers_and_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

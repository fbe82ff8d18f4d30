/* libFuzzer target: the Redis URL parser (redis://, rediss://, redis-sentinel://), with a
 * password in the userinfo, raw or percent-encoded, or in the sentinel_password option. */
#include "fuzz.h"

#include "adapters/redis/url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fields: 0 a user name, 1 the password, 2 what follows the '@' or the option. sel % 6
 * chooses the form (see build). */
enum { USER, SECRET, REST };
#define FORMS 6

static const char *const schemes[] = {"redis://", "rediss://", "redis-sentinel://"};

/* The URL with pw in the form sel asks for; *placed gets pw as placed. Returns 1 when the
 * password sits where a parser cannot tell it from a host (no '@'): the oracle then applies
 * only to a refusal. */
static int build(fz_buf *url, fz_buf *placed, unsigned sel, const fz_input *in, const char *pw)
{
    int form = (int)(sel % FORMS);
    fz_clear(url);
    fz_clear(placed);
    fz_add(url, schemes[(sel / FORMS) % 3]);
    if (form == 4) { /* redis-sentinel://host?sentinel_password=ENC&REST */
        fz_clear(url);
        fz_add(url, "redis-sentinel://h:26379/0?sentinel_password=");
        fz_add_pct(placed, pw, "&#");
        fz_add(url, placed->s);
        fz_add(url, "&");
        fz_add(url, in->field[REST]);
        return 0;
    }
    if (form != 1) /* form 1: ":PW@" (no user) */
        fz_add(url, in->field[USER]);
    fz_add(url, ":");
    if (form == 3)
        fz_add_pct(placed, pw, ":/?#@[]");
    else
        fz_add(placed, pw);
    fz_add(url, placed->s);
    if (form != 5)
        fz_add(url, "@");
    fz_add(url, in->field[REST]);
    return form == 5;
}

/* The parser's refusal, or the URL as shown; *got the password it kept (a copy), if any. */
static void outputs(const char *url, fz_buf *out, int *accepted, char **got)
{
    char why[512];
    fz_clear(out);
    *got = NULL;
    redis_target *t = leash__redis_url_parse(url, why, sizeof why);
    *accepted = t != NULL;
    if (!t) {
        fz_add(out, why);
        return;
    }
    fz_add(out, t->shown);
    if (t->password)
        *got = strdup(t->password);
    leash__redis_target_unref(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_input in;
    fz_parse(data, size, &in);
    fz_replace(in.field[USER], ":@/?#[]%", '_');
    char *pw = in.field[SECRET];
    char *pw_rot = fz_rotate(pw);
    fz_buf url = {0}, url_rot = {0}, placed = {0}, placed_rot = {0}, out = {0}, out_rot = {0};
    fz_buf dec = {0}, dec_rot = {0};
    int only_refusal = build(&url, &placed, in.sel, &in, pw);
    build(&url_rot, &placed_rot, in.sel, &in, pw_rot);
    int ok = 0, ok_rot = 0;
    char *got = NULL, *got_rot = NULL;
    outputs(url.s, &out, &ok, &got);
    outputs(url_rot.s, &out_rot, &ok_rot, &got_rot);
    fz_pct_decode(placed.s, &dec);
    fz_pct_decode(placed_rot.s, &dec_rot);
    /* Without its "@host", a password with a '/', '?', '#', '@' or ',' in it is a path, a
     * query or a list to any reader: the oracle needs a password that can only be a port. */
    if (only_refusal && strpbrk(pw, "/?#@,"))
        only_refusal = 2;
    if (!(only_refusal && ok) && only_refusal != 2) {
        void (*check)(const char *, const char *, const char *, const char *, const char *,
                      const char *) = only_refusal ? fz_check_no_host : fz_check;
        check("redis-url", "the password", pw, pw_rot, out.s, out_rot.s);
        check("redis-url", "the password as placed", placed.s, placed_rot.s, out.s, out_rot.s);
        check("redis-url", "the password decoded", dec.s, dec_rot.s, out.s, out_rot.s);
    }
    /* Taken whole or refused, never split: a userinfo password the parser accepted holds all
     * of the one given (a raw '%' is an escape, so only without one). */
    int form = (int)(in.sel % FORMS);
    if (ok && form <= 3 && *pw && (form == 3 || !strchr(pw, '%'))) {
        const char *want = form == 3 ? dec.s : pw;
        if (!got || !strstr(got, want)) {
            fprintf(stderr,
                    "\n=== fuzz-redis-url: password split\nurl: \"%s\"\n"
                    "given: \"%s\"\nkept:  \"%s\"\n",
                    url.s, want, got ? got : "(none)");
            abort();
        }
    }
    free(got);
    free(got_rot);
    fz_buf_free(&url);
    fz_buf_free(&url_rot);
    fz_buf_free(&placed);
    fz_buf_free(&placed_rot);
    fz_buf_free(&out);
    fz_buf_free(&out_rot);
    fz_buf_free(&dec);
    fz_buf_free(&dec_rot);
    free(pw_rot);
    fz_input_free(&in);
    return 0;
}

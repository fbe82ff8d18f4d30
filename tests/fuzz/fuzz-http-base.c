/* libFuzzer target: the HTTP adapter's base URL and path checks, the base URL as shown and a
 * failed request's message, with a password in the base URL's userinfo or the path's query. */
#include "fuzz.h"

#include "adapters/http/http-internal.h"
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fields: 0 a user name, 1 the password, 2 what follows the '@' (host, port, path), 3 a
 * request path. sel % 5 chooses the form of the base URL (see build). */
enum { USER, SECRET, REST, PATH };
#define FORMS 5

/* The base URL with pw in the form sel asks for; *placed gets pw as placed. Returns 1 when a
 * refusal is the only right answer for a URL that holds the password where it cannot be
 * told from a host or path (the oracle then applies only to a refusal). */
static int build(fz_buf *url, fz_buf *placed, unsigned sel, const fz_input *in, const char *pw)
{
    fz_clear(url);
    fz_clear(placed);
    int form = (int)(sel % FORMS);
    fz_add(url, (sel / FORMS) % 2 ? "https://" : "http://");
    if (form != 1) {
        fz_add(url, in->field[USER]);
        fz_add(url, ":");
    }
    if (form == 2)
        fz_add_pct(placed, pw, ":/?#@[]"); /* percent-encoded: always fine */
    else
        fz_add(placed, pw);
    fz_add(url, placed->s);
    if (form == 3) { /* "@host" missing: may read as a host and port, or a path */
        fz_add(url, in->field[REST]);
        return 1;
    }
    if (form == 4) { /* the password in the request path's query instead (a base has none) */
        fz_clear(url);
        fz_clear(placed);
        fz_add(url, "http://h/p");
        fz_add_pct(placed, pw, "&#");
        return 0;
    }
    fz_add(url, "@");
    fz_add(url, in->field[REST]);
    return 0;
}

/* What the adapter says about url and path: its refusal, or the base as shown and the
 * message of a request on that path that failed with curl's text naming the URL. */
static void outputs(const char *url, const char *path, fz_buf *out, int *accepted)
{
    char why[512], shown[256], msg[512];
    fz_clear(out);
    *accepted = leash__http_check_base("fz", url, why, sizeof why) == LEASH_OK;
    if (!*accepted) {
        fz_add(out, why);
    } else {
        leash__http_show_base(url, shown, sizeof shown);
        fz_add(out, shown);
        fz_add(out, "\n");
        if (leash__http_check_path("fz", path, why, sizeof why) != LEASH_OK) {
            fz_add(out, why);
        } else {
            char what[512];
            snprintf(what, sizeof what, "Could not reach %s: refused", url);
            leash__http_transfer_message(msg, sizeof msg, "fz", "GET", shown, path, what);
            fz_add(out, msg);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_input in;
    fz_parse(data, size, &in);
    fz_replace(in.field[USER], ":@/?#[]%", '_');
    char *pw = in.field[SECRET];
    if (in.sel % FORMS == 1) /* a token: a ':' would make a user name of what precedes it */
        fz_replace(pw, ":", '_');
    char *pw_rot = fz_rotate(pw);
    fz_buf url = {0}, url_rot = {0}, placed = {0}, placed_rot = {0}, out = {0}, out_rot = {0};
    fz_buf path = {0}, path_rot = {0}, dec = {0}, dec_rot = {0};
    int only_refusal = build(&url, &placed, in.sel, &in, pw);
    build(&url_rot, &placed_rot, in.sel, &in, pw_rot);
    /* The request path: the fuzzer's, or one carrying the password in its query. */
    fz_add(&path, in.field[PATH]);
    fz_add(&path_rot, in.field[PATH]);
    if (in.sel % FORMS == 4) {
        fz_add(&path, "?password=");
        fz_add(&path, placed.s);
        fz_add(&path_rot, "?password=");
        fz_add(&path_rot, placed_rot.s);
    }
    int ok = 0, ok_rot = 0;
    outputs(url.s, path.s, &out, &ok);
    outputs(url_rot.s, path_rot.s, &out_rot, &ok_rot);
    fz_pct_decode(placed.s, &dec);
    fz_pct_decode(placed_rot.s, &dec_rot);
    /* Without its "@host", a password with a '/', '?', '#', '@' or ',' in it is a path, a
     * query or a list to any reader: the oracle needs a password that can only be a port. */
    if (only_refusal && strpbrk(pw, "/?#@,"))
        only_refusal = 2;
    if (!(only_refusal && ok) && only_refusal != 2) {
        void (*check)(const char *, const char *, const char *, const char *, const char *,
                      const char *) = only_refusal ? fz_check_no_host : fz_check;
        check("http-base", "the password", pw, pw_rot, out.s, out_rot.s);
        check("http-base", "the password as placed", placed.s, placed_rot.s, out.s, out_rot.s);
        check("http-base", "the password decoded", dec.s, dec_rot.s, out.s, out_rot.s);
    }
    fz_buf_free(&url);
    fz_buf_free(&url_rot);
    fz_buf_free(&placed);
    fz_buf_free(&placed_rot);
    fz_buf_free(&out);
    fz_buf_free(&out_rot);
    fz_buf_free(&path);
    fz_buf_free(&path_rot);
    fz_buf_free(&dec);
    fz_buf_free(&dec_rot);
    free(pw_rot);
    fz_input_free(&in);
    return 0;
}

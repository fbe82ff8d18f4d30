/* libFuzzer target: leash__redact, with the password in each form it promises to hide. */
#include "fuzz.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>

/* Fields: 0 the text before, 1 the password, 2 the text after, 3 a user name.
 * sel % 7 chooses how the password is placed (see build). */
enum { PREFIX, SECRET, SUFFIX, USER };
#define FORMS 7

/* The text under test, with pw in the form sel asks for; *placed gets pw as placed. */
static void build(fz_buf *text, fz_buf *placed, unsigned sel, const fz_input *in, const char *pw)
{
    fz_clear(text);
    fz_clear(placed);
    fz_add(text, in->field[PREFIX]);
    switch (sel % FORMS) {
    case 0: /* URL userinfo: x://user:PW@rest (a URL holds no whitespace) */
        fz_add(text, " x://");
        fz_add(text, in->field[USER]);
        fz_add(text, ":");
        fz_add(placed, pw);
        fz_add(text, placed->s);
        fz_add(text, "@");
        break;
    case 1: /* a userinfo without ':' (a token) */
        fz_add(text, " x://");
        fz_add(placed, pw);
        fz_add(text, placed->s);
        fz_add(text, "@");
        break;
    case 2: /* conninfo, unquoted, backslash escapes */
        fz_add(text, " password=");
        fz_add_escaped(placed, pw, " \t\n\r\v\f'\"");
        fz_add(text, placed->s);
        fz_add(text, " ");
        break;
    case 3: /* conninfo, quoted */
        fz_add(text, " password = '");
        fz_add_escaped(placed, pw, "'");
        fz_add(text, placed->s);
        fz_add(text, "'");
        break;
    case 4: /* JSON */
        fz_add(text, " {\"password\": \"");
        fz_add_escaped(placed, pw, "\"");
        fz_add(text, placed->s);
        fz_add(text, "\"}");
        break;
    case 5: /* a URL query parameter, percent-encoded */
        fz_add(text, " x://h/db?a=1&sentinel_password=");
        fz_add_pct(placed, pw, "&#");
        fz_add(text, placed->s);
        fz_add(text, "&");
        break;
    default: /* SQL */
        fz_add(text, " ALTER ROLE u PASSWORD '");
        fz_add_doubled(placed, pw, '\'');
        fz_add(text, placed->s);
        fz_add(text, "'");
        break;
    }
    fz_add(text, in->field[SUFFIX]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_input in;
    fz_parse(data, size, &in);
    /* The text around may not open a form of its own the password would fall into. */
    fz_plain(in.field[PREFIX]);
    fz_replace(in.field[USER], ":@/?#[]% \t\n\r\v\f\"'", '_');
    char *pw = in.field[SECRET];
    if (in.sel % FORMS <= 1) /* no whitespace in a URL; no ':' in a token */
        fz_replace(pw, in.sel % FORMS == 1 ? ": \t\n\r\v\f" : " \t\n\r\v\f", '_');
    /* A key inside the password would make the two runs take different paths (rotated, it is
     * no key): "passw0rd" instead. */
    fz_unkey(pw);
    char *pw_rot = fz_rotate(pw);
    fz_buf text = {0}, text_rot = {0}, placed = {0}, placed_rot = {0}, dec = {0}, dec_rot = {0};
    build(&text, &placed, in.sel, &in, pw);
    build(&text_rot, &placed_rot, in.sel, &in, pw_rot);
    fz_pct_decode(placed.s, &dec);
    fz_pct_decode(placed_rot.s, &dec_rot);

    /* Cut outputs may be of one length after different paths: only when the whole outputs
     * are of one length are the cut ones compared too. */
    static const size_t lens[] = {4096, 97, 16, 1};
    int same_path = 1;
    for (size_t i = 0; i < sizeof lens / sizeof *lens && same_path; i++) {
        char *out = malloc(lens[i]), *out_rot = malloc(lens[i]);
        if (!out || !out_rot)
            abort();
        leash__redact(text.s, out, lens[i]);
        leash__redact(text_rot.s, out_rot, lens[i]);
        if (strlen(out) >= lens[i])
            abort();
        same_path = strlen(out) == strlen(out_rot);
        fz_check("redact", "the password", pw, pw_rot, out, out_rot);
        fz_check("redact", "the password as placed", placed.s, placed_rot.s, out, out_rot);
        fz_check("redact", "the password decoded", dec.s, dec_rot.s, out, out_rot);
        free(out);
        free(out_rot);
    }
    fz_buf_free(&text);
    fz_buf_free(&text_rot);
    fz_buf_free(&placed);
    fz_buf_free(&placed_rot);
    fz_buf_free(&dec);
    fz_buf_free(&dec_rot);
    free(pw_rot);
    fz_input_free(&in);
    return 0;
}

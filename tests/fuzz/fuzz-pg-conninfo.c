/* libFuzzer target: the PostgreSQL adapter's conninfo check and description (key=value and
 * URI forms), through the adapter's own parser and through leash_pg_pool, which validates a
 * target at open without a server. */
#include "fuzz.h"

#include "adapters/pg/pg-int.h"

#include <leash/pg.h>

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fields: 0 the conninfo before the password, 1 the password, 2 what follows, 3 a user name
 * or host. sel % 5 chooses the form (see build). */
enum { PREFIX, SECRET, SUFFIX, USER };
#define FORMS 5

/* The conninfo with pw in the form sel asks for; *placed gets pw as placed. */
static void build(fz_buf *ci, fz_buf *placed, unsigned sel, const fz_input *in, const char *pw)
{
    fz_clear(ci);
    fz_clear(placed);
    switch (sel % FORMS) {
    case 0: /* key=value, quoted */
        fz_add(ci, in->field[PREFIX]);
        fz_add(ci, " password='");
        fz_add_escaped(placed, pw, "'");
        fz_add(ci, placed->s);
        fz_add(ci, "' ");
        break;
    case 1: /* key=value, unquoted */
        fz_add(ci, in->field[PREFIX]);
        fz_add(ci, " password=");
        fz_add_escaped(placed, pw, " \t\n\r\v\f'");
        fz_add(ci, placed->s);
        fz_add(ci, " ");
        break;
    case 2: /* URI userinfo, raw: '/', '@', ... as a user may type them */
    case 3: /* URI userinfo, percent-encoded */
        fz_add(ci, "postgresql://");
        fz_add(ci, in->field[USER]);
        fz_add(ci, ":");
        if (sel % FORMS == 3)
            fz_add_pct(placed, pw, ":/?#@[]&=");
        else
            fz_add(placed, pw);
        fz_add(ci, placed->s);
        fz_add(ci, "@");
        break;
    default: /* URI query */
        fz_add(ci, "postgresql://");
        fz_add(ci, in->field[USER]);
        fz_add(ci, "/db?password=");
        fz_add_pct(placed, pw, "&#=");
        fz_add(ci, placed->s);
        fz_add(ci, "&");
        break;
    }
    fz_add(ci, in->field[SUFFIX]);
}

/* 1 when the key=value text before the password is whole (libpq reads a password placed
 * after it as the password): otherwise the "password" would only be part of another value. */
static int prefix_whole(const char *prefix)
{
    fz_buf probe = {0};
    fz_add(&probe, prefix);
    fz_add(&probe, " password='x'");
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(probe.s, &err);
    int ok = 0;
    for (PQconninfoOption *p = o; p && p->keyword; p++)
        if (strcmp(p->keyword, "password") == 0)
            ok = p->val && strcmp(p->val, "x") == 0;
    PQconninfoFree(o);
    PQfreemem(err);
    fz_buf_free(&probe);
    return ok;
}

/* What the adapter says about ci: its parser's refusal or description, then leash_pg_pool's
 * refusal or the pool's target as dumps show it. */
static void outputs(const char *ci, fz_buf *out)
{
    char err[512];
    leash_status st = LEASH_OK;
    pg_defaults d = {0};
    fz_clear(out);
    pg_target *t = pg__target_new(ci, &d, &st, err, sizeof err);
    fz_add(out, t ? t->shown : err);
    pg__target_put(t);
    fz_add(out, "\n");
    pg__describe(ci, err, sizeof err);
    fz_add(out, err);
    fz_add(out, "\n");
    leash_pool *p = leash_pg_pool("fz", ci, NULL);
    fz_add(out, p ? leash_pool_target(p) : leash_last_error());
    leash_pool_close(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    fz_input in;
    fz_parse(data, size, &in);
    fz_replace(in.field[USER], ":@/?#[]%&= \t\n\r\v\f", '_');
    char *pw = in.field[SECRET];
    char *pw_rot = fz_rotate(pw);
    fz_buf ci = {0}, ci_rot = {0}, placed = {0}, placed_rot = {0}, out = {0}, out_rot = {0};
    fz_buf dec = {0}, dec_rot = {0};
    build(&ci, &placed, in.sel, &in, pw);
    build(&ci_rot, &placed_rot, in.sel, &in, pw_rot);
    outputs(ci.s, &out);
    outputs(ci_rot.s, &out_rot);
    fz_pct_decode(placed.s, &dec);
    fz_pct_decode(placed_rot.s, &dec_rot);
    if (in.sel % FORMS >= 2 || prefix_whole(in.field[PREFIX])) {
        fz_check("pg-conninfo", "the password", pw, pw_rot, out.s, out_rot.s);
        fz_check("pg-conninfo", "the password as placed", placed.s, placed_rot.s, out.s, out_rot.s);
        fz_check("pg-conninfo", "the password decoded", dec.s, dec_rot.s, out.s, out_rot.s);
    }
    /* Closed pools stay readable until shutdown: free them now and then. */
    if (++runs % 512 == 0)
        leash_shutdown();
    fz_buf_free(&ci);
    fz_buf_free(&ci_rot);
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

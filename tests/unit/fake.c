/* The in-test adapter of the unit tests. */
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct fake_stats fake;
_Atomic int fake_fail_connect;
_Atomic int fake_connect_delay_ms;
_Atomic int fake_validate_result;
_Atomic int fake_connecting, fake_connecting_peak;
_Atomic int fake_hang;
char fake_peer[64];
static _Atomic int next_id;

void fake_reset(void)
{
    memset(&fake, 0, sizeof fake);
    fake_fail_connect = 0;
    fake_connect_delay_ms = 0;
    fake_validate_result = 0;
    fake_connecting = fake_connecting_peak = 0;
    fake_hang = 0;
    fake_peer[0] = '\0';
}

static void *f_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    (void)ctx;
    int now = ++fake_connecting;
    int peak = fake_connecting_peak;
    while (now > peak && !atomic_compare_exchange_weak(&fake_connecting_peak, &peak, now))
        ;
    int d = fake_connect_delay_ms;
    if (d)
        sleep_ms(d);
    for (int i = 0; fake_hang && i < 10000; i++)
        sleep_ms(1);
    fake_connecting--;
    if (fake_fail_connect) {
        fake.connect_fails++;
        /* A real adapter's message may quote its target: the core must redact it. */
        snprintf(err, errlen, "fake refused %s", target);
        return NULL;
    }
    struct fake_conn *c = calloc(1, sizeof *c);
    c->id = ++next_id;
    fake.connects++;
    fake.live++;
    return c;
}

static int f_validate(void *ctx, void *conn)
{
    (void)ctx;
    struct fake_conn *c = conn;
    fake.validates++;
    return c->dead ? -1 : fake_validate_result;
}

static int f_reset(void *ctx, void *conn)
{
    (void)ctx;
    struct fake_conn *c = conn;
    fake.resets++;
    return atomic_exchange(&c->dirty, 0);
}

static void f_destroy(void *ctx, void *conn)
{
    (void)ctx;
    fake.destroys++;
    fake.live--;
    free(conn);
}

static void f_abandon(void *ctx, void *conn)
{
    (void)ctx;
    fake.abandons++;
    fake.live--;
    free(conn);
}

static void f_describe(void *ctx, const char *target, char *out, size_t outlen)
{
    (void)ctx;
    fake.describes++;
    snprintf(out, outlen, "fake:%.*s", (int)strcspn(target, "?"), target);
}

static int f_retarget(void *ctx, const char *target, char *err, size_t errlen)
{
    (void)ctx;
    if (strstr(target, "bad")) {
        /* Quotes the target: the core must redact it. */
        snprintf(err, errlen, "cannot use %s", target);
        return -1;
    }
    return 0;
}

static void f_peer(void *ctx, void *conn, char *out, size_t outlen)
{
    (void)ctx;
    (void)conn;
    snprintf(out, outlen, "%s", fake_peer);
}

static void f_ctx_free(void *ctx)
{
    fake.ctx_frees++;
    free(ctx);
}

const leash_adapter fake_adapter = {
    .kind = "fake",
    .connect = f_connect,
    .validate = f_validate,
    .reset = f_reset,
    .destroy = f_destroy,
    .abandon = f_abandon,
};

const leash_adapter fake_adapter_described = {
    .kind = "fake2",
    .connect = f_connect,
    .validate = f_validate,
    .reset = f_reset,
    .destroy = f_destroy,
    .abandon = f_abandon,
    .describe = f_describe,
    .ctx_free = f_ctx_free,
    .retarget = f_retarget,
    .peer = f_peer,
};

int fake_teardown(void **state)
{
    int failed = teardown_no_leaks(state);
    assert_int_equal(fake.live, 0);
    return failed;
}

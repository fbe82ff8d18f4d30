/* Integration tests of the PostgreSQL adapter against replication and outages: a primary and
 * a hot standby (tests/servers.d/pgha.sh) that tests crash, promote, demote and pause. */
#include "test-pg-util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static int group_setup(void **state)
{
    if (srv_ctl("start", "pg") != 0 || srv_ctl("start", "pgha") != 0)
        return -1;
    return 0;
}

int main(void)
{
    const struct CMUnitTest deadlines[] = {
        cmocka_unit_test_teardown(test_connect_to_paused_server, teardown_resume),
        cmocka_unit_test_teardown(test_multi_host_skips_paused, teardown_resume),
        cmocka_unit_test_teardown(test_statement_to_paused_backend, teardown_no_leaks),
        cmocka_unit_test_teardown(test_validation_of_paused_backend, teardown_no_leaks),
        cmocka_unit_test_teardown(test_release_cancel_to_paused_server, teardown_resume),
        cmocka_unit_test_teardown(test_tcp_defaults, teardown_no_leaks),
    };
    return cmocka_run_group_tests_name("deadlines", deadlines, group_setup, NULL);
}

/* Example: a pool of HTTP clients with leash (libcurl underneath); keep-alive connections
 * are reused from borrow to borrow. Usage: example-http [base URL] [path] */
#include <leash/http.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "http://127.0.0.1:18080";
    const char *path = argc > 2 ? argv[2] : "/small";
    const char *const headers[] = {"Accept: application/json", NULL};
    leash_http_options http = {.timeout_ms = 2000, .headers = headers};

    leash_pool *api = leash_http_pool_with("api", base, NULL, &http);
    if (!api) {
        fprintf(stderr, "%s\n", leash_last_error()); /* http pool "api": bad base URL: ... */
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        LEASH_AUTO leash_handle *h = leash_acquire(api); /* released at the end of each turn */
        if (!h) {
            fprintf(stderr, "http: %s\n", leash_last_error());
            break;
        }
        leash_http_response resp = {0};
        if (leash_http_get(h, path, &resp) != LEASH_OK) { /* transport failure or timeout */
            fprintf(stderr, "GET %s: %s\n", path, leash_last_error());
            break;
        }
        printf("GET %s: HTTP %ld, %zu bytes\n", path, resp.status, resp.len); /* 404 is a reply */
        leash_http_response_free(&resp);
    }

    leash_pool_stats st;
    leash_pool_stats_get(api, &st);
    printf("pool %s: %llu requests over %llu connection(s)\n", st.name,
           (unsigned long long)st.acquired, (unsigned long long)st.created);
    int held = leash_check_leaks(2);
    leash_shutdown();
    return held == 0 ? 0 : 1;
}

/* leash HTTP adapter: pools of libcurl easy handles that keep their connections alive. */
#ifndef LEASH_HTTP_H
#define LEASH_HTTP_H

#include <curl/curl.h>
#include <leash/leash.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The adapter table behind leash_http_pool, for leash_conn_of. */
LEASH_EXPORT extern const leash_adapter leash_http_adapter;

typedef struct leash_http_options { /* zero: default */
    int connect_timeout_ms;         /* 5000 */
    int timeout_ms;                 /* 30000, the whole request */
    size_t max_body;                /* 8 MiB; a larger body is an error */
    const char *const *headers;     /* NULL-terminated "Name: value" list sent with every request; copied */
    const char *ca_file;            /* NULL: the system's CAs */
    int insecure;                   /* 1: no TLS verification (explicit, and shown in dumps) */
} leash_http_options;

/* Opens a pool of HTTP clients for base_url (http:// or https://, optional user:password@,
 * host, optional port and path prefix; no trailing '/' needed). Checked at once: a malformed
 * URL returns NULL with LEASH_EINVAL and a message that names the pool and the bad part but
 * never any part of a user name or password. In a user name or password, '/', '?', '#', '@',
 * '[' and ']' must be percent-encoded (raw, they cannot be told from the host or the path:
 * refused), and a '%' must start an escape. opts NULL: pool defaults. Copies its arguments.
 * leash_pool_retarget takes a new base URL, checked the same way: connections made after it
 * use it; a handle held across it keeps the old base until it is released (its connection
 * is then retired). Each connection's peer (leash_pool_evict_peer) is the base URL's
 * "host:port", the port 80 or 443 when the URL names none.
 * Each pooled easy handle keeps one live connection, made at its first request (so a
 * refused connection is LEASH_EIO from the request, not LEASH_ECONNECT from acquire).
 * Handles are set up with: protocols http and https only; redirects not followed (a 3xx
 * is a response), and if a borrower turns CURLOPT_FOLLOWLOCATION on, https targets only,
 * at most 5; no cookie engine; CURLOPT_NOSIGNAL; never CURLOPT_VERBOSE. DNS and TLS
 * sessions are shared within the pool, connections are not. */
LEASH_EXPORT leash_pool *leash_http_pool(const char *name, const char *base_url,
                                         const leash_pool_options *opts);
/* The same with adapter options (http NULL: defaults). */
LEASH_EXPORT leash_pool *leash_http_pool_with(const char *name, const char *base_url,
                                              const leash_pool_options *opts,
                                              const leash_http_options *http);
/* The curl easy handle of a held HTTP handle, or NULL (h NULL, not held, not HTTP).
 * Borrowed; options set on it apply until release (leash_http_get/request still use their
 * own URL, method, body and response sink), when it is reset to the pool's defaults with
 * curl_easy_reset and its cookies dropped (the live connection is kept). It starts as a
 * GET with the pool's options. Do not call curl_easy_cleanup on it, remove it from any
 * multi handle before release, and keep CURLOPT_MAXCONNECTS at 1 if the process forks. */
LEASH_EXPORT CURL *leash_http(leash_handle *h);

typedef struct leash_http_response {
    long status;
    char *body; /* NUL-terminated; owned by the response: leash_http_response_free */
    size_t len;
} leash_http_response;

/* GET base_url + path. An HTTP status (404, 500 ...) is a response, not an error.
 * Returns LEASH_OK and fills *out; or LEASH_EINVAL (bad handle, NULL out, path with
 * spaces or control characters), LEASH_EIO (transport failure: h is marked broken; or a
 * body over max_body), LEASH_ETIMEDOUT; then out->body is NULL and out->len 0. */
LEASH_EXPORT leash_status leash_http_get(leash_handle *h, const char *path,
                                         leash_http_response *out);
/* Any method with an optional body (body NULL: none; len bytes are sent). As _get. */
LEASH_EXPORT leash_status leash_http_request(leash_handle *h, const char *method,
                                             const char *path, const char *body, size_t len,
                                             leash_http_response *out);
/* Frees r's body and zeroes it; NULL is a no-op. */
LEASH_EXPORT void leash_http_response_free(leash_http_response *r);

#ifdef __cplusplus
}
#endif

#endif /* LEASH_HTTP_H */

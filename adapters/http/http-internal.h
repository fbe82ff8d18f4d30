/* HTTP adapter internals shared with its tests and fuzz targets (never installed). */
#ifndef LEASH_HTTP_INTERNAL_H
#define LEASH_HTTP_INTERNAL_H

#include <leash/http.h>

#include <stddef.h>

/* Checks a base URL as leash_http_pool does: LEASH_OK, or LEASH_EINVAL (LEASH_ENOMEM when
 * curl is out of memory) with a message in why (whylen bytes) that starts with
 * "http pool \"name\"" and names the bad part by kind or offset, never quoting a user name,
 * a password or any part of one. name may be NULL. */
leash_status leash__http_check_base(const char *name, const char *url, char *why, size_t whylen);
/* The same for a request path (leash_http_request's rule: no space or control character). */
leash_status leash__http_check_path(const char *name, const char *path, char *why, size_t whylen);
/* url as dumps and messages show it: trailing '/' removed, passwords replaced by "***". */
void leash__http_show_base(const char *url, char *out, size_t outlen);
/* A failed request's message into out: "http pool \"name\": METHOD SHOWN/PATH: WHAT", with
 * shown already password-free (leash__http_show_base) and path and what (curl's text)
 * redacted here, each before it is cut to fit. */
void leash__http_transfer_message(char *out, size_t outlen, const char *name, const char *method,
                                  const char *shown, const char *path, const char *what);

/* The easy handle of a held HTTP handle without counting it as a raw borrow (tests read
 * CURLINFO_* through it); NULL as leash_http. */
CURL *leash__http_easy(leash_handle *h);
/* Test hook: takes (lock 1) or drops (lock 0) the DNS lock of the share of h's pool, as
 * libcurl does around a DNS cache lookup. */
void leash__http_share_hold(leash_handle *h, int lock);

#endif /* LEASH_HTTP_INTERNAL_H */

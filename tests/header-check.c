/* Build check: the public headers compile as strict C99 (and, via header-check.cpp, C++). */
#include <leash/leash.h>
#ifdef HAVE_REDIS
#include <leash/redis.h>
#endif
#ifdef HAVE_PG
#include <leash/pg.h>
#endif
#ifdef HAVE_HTTP
#include <leash/http.h>
#endif

int main(void)
{
    leash_config cfg = LEASH_CONFIG_DEFAULT;
    leash_pool_options opts = {0};
    (void)opts;
    return cfg.strict == -1 ? 0 : 1;
}

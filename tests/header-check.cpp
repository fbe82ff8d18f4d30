// Build check: the public headers compile from C++.
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

int main()
{
    leash_pool_options opts = {};
    (void)opts;
    return leash_strerror(LEASH_OK) != nullptr ? 0 : 1;
}

#!/bin/sh
# The core never names an adapter: no file under src/ includes a client library's header or
# calls into an adapter (hiredis, libpq, libcurl, or leash's own redis/pg/http adapters).
# Adapters reach the core only through src/common.h and the public headers.
# Usage: core-boundary.sh SOURCE_ROOT
root=${1:?usage: core-boundary.sh SOURCE_ROOT}
bad=$(grep -nE '#include *[<"](hiredis|libpq|postgresql|curl|leash/(redis|pg|http)\.h)|leash__(redis|pg|http|sentinel)_|LEASH_WITH_(REDIS|PG|HTTP)' \
    "$root"/src/*.c "$root"/src/*.h)
if [ -n "$bad" ]; then
    echo "core-boundary: the core names an adapter:" >&2
    echo "$bad" >&2
    exit 1
fi
# And the adapters do not name each other.
for a in redis pg http; do
    for b in redis pg http; do
        [ "$a" = "$b" ] && continue
        hit=$(grep -nE "leash__${b}_|#include *\"(\.\./)*adapters/${b}/|#include *<leash/${b}\.h>" \
            "$root"/adapters/"$a"/*.c "$root"/adapters/"$a"/*.h 2>/dev/null)
        if [ -n "$hit" ]; then
            echo "core-boundary: adapter $a names adapter $b:" >&2
            echo "$hit" >&2
            exit 1
        fi
    done
done
echo "core-boundary: src/ names no adapter; adapters name no other adapter"

/* Where the real test servers started by tests/servers.sh listen, and how tests drive them. */
#ifndef LEASH_TEST_SERVERS_H
#define LEASH_TEST_SERVERS_H

/* Fixed loopback ports (unusual on purpose); tests/servers.d/NAME.sh use the same numbers. */
#define SRV_REDIS_PORT 16379        /* no password */
#define SRV_REDIS_AUTH_PORT 16380   /* requirepass SRV_REDIS_PASSWORD; ACL user app/app-pw */
#define SRV_REDIS_PASSWORD "leash-redis-pw"
/* Files under srv_dir() (tests/servers.d/redis.sh): the unix socket of SRV_REDIS_PORT, and each
 * instance's pid file, e.g. srv_signal(SRV_REDIS_PIDFILE, SIGSTOP) pauses SRV_REDIS_PORT. */
#define SRV_REDIS_SOCKET "redis/redis.sock"
#define SRV_REDIS_PIDFILE "redis/redis-16379.pid"
#define SRV_REDIS_AUTH_PIDFILE "redis/redis-16380.pid"
#define SRV_PG_PORT 15432           /* role leash / SRV_PG_PASSWORD (scram), database leash */
#define SRV_PG_PASSWORD "leash-pg-pw"
#define SRV_PGBOUNCER_PORT 16432    /* pgbouncer, transaction pooling, in front of SRV_PG_PORT */
/* A replicated pair (tests/servers.d/pgha.sh), role leash as on SRV_PG_PORT. After
 * srv_ctl("start", "pgha"), node a is the primary and node b its hot standby. */
#define SRV_PGHA_A_PORT 15533
#define SRV_PGHA_B_PORT 15534
#define SRV_PGHA_A_PIDFILE "pgha/a.pid"
#define SRV_PGHA_B_PIDFILE "pgha/b.pid"
#define SRV_HTTP_PORT 18080         /* nginx, plain HTTP */
#define SRV_HTTPS_PORT 18443        /* nginx, TLS with a certificate signed by srv_path("nginx/ca.pem") */

/* Redis Sentinel (tests/servers.d/sentinel.sh): a master and its replica (both with
 * SRV_SENTINEL_DATA_PASSWORD) watched by three sentinels (SRV_SENTINEL_PASSWORD) as
 * SRV_SENTINEL_NAME, quorum 2. `srv_ctl("start", "sentinel")` restores that topology. */
#define SRV_SENTINEL_MASTER_PORT 16391
#define SRV_SENTINEL_REPLICA_PORT 16392
#define SRV_SENTINEL_PORT1 16393
#define SRV_SENTINEL_PORT2 16394
#define SRV_SENTINEL_PORT3 16395
#define SRV_SENTINEL_NAME "leash-master"
#define SRV_SENTINEL_DATA_PASSWORD "leash-ha-pw"
#define SRV_SENTINEL_PASSWORD "leash-sentinel-pw"
#define SRV_SENTINEL_MASTER_PIDFILE "sentinel/redis-16391.pid"
#define SRV_SENTINEL_REPLICA_PIDFILE "sentinel/redis-16392.pid"
#define SRV_SENTINEL1_PIDFILE "sentinel/redis-16393.pid"

/* The servers' folder: $LEASH_SERVERS_DIR, default /tmp/leash-servers. */
const char *srv_dir(void);
/* srv_dir() + "/" + rel, in a static buffer per call site's copy: copy it if you keep it. */
const char *srv_path(const char *rel);
/* Runs "tests/servers.sh ACTION SERVER" ($LEASH_SERVERS_SH); returns its exit status,
 * or -1 if it could not be run. E.g. srv_ctl("restart", "redis"). */
int srv_ctl(const char *action, const char *server);
/* Sends sig to the pid in srv_path(pidfile_rel); returns 0 on success. */
int srv_signal(const char *pidfile_rel, int sig);

#endif

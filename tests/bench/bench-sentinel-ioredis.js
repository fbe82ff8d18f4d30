// The reference side of tests/bench/bench-sentinel: the same failover scenario with ioredis's
// Sentinel client. Run by bench-sentinel (never by hand), with ioredis installed in a temporary
// folder on NODE_PATH. Argument: a JSON object {sentinels: [{host, port}], name, password,
// sentinelPassword, threads, capMs, failoverDetector}. Prints one JSON line of results.
'use strict';
const Redis = require('ioredis');

const now = () => Number(process.hrtime.bigint()) / 1e9;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const opts = {
    sentinels: cfg.sentinels,
    name: cfg.name,
    password: cfg.password,
    sentinelPassword: cfg.sentinelPassword,
    failoverDetector: !!cfg.failoverDetector,
    connectTimeout: 500, // as the leash run: connect_timeout_ms=500
    commandTimeout: 1000, // command_timeout_ms=1000
    lazyConnect: false,
  };
  const clients = [];
  for (let i = 0; i < cfg.threads; i++) clients.push(new Redis(opts));
  for (const c of clients) c.on('error', () => {}); // counted per command below
  await Promise.all(clients.map((c) => c.ping()));
  const admin = new Redis({
    host: cfg.sentinels[0].host,
    port: cfg.sentinels[0].port,
    password: cfg.sentinelPassword,
  });
  const masterPort = async () => {
    const a = await admin.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', cfg.name);
    return Number(a[1]);
  };
  const before = await masterPort();

  let stop = false;
  let t0 = 0; // SENTINEL FAILOVER sent
  let switched = 0; // the sentinel names the new master
  let newPort = 0;
  const res = { failed: 0, ok: 0, maxOp: 0, oldAfterSwitch: 0, first: 0, firstAll: 0 };
  const firstNew = new Array(cfg.threads).fill(0);

  async function loop(i) {
    const c = clients[i];
    while (!stop) {
      const s = now();
      let port = -1;
      try {
        await c.incr('leash:bench:sentinel:' + i);
        port = c.stream ? c.stream.remotePort : -1;
      } catch (e) {
        port = -1;
      }
      const e = now();
      if (e - s > res.maxOp) res.maxOp = e - s;
      if (port < 0) {
        if (t0) res.failed++;
        await sleep(5);
        continue;
      }
      res.ok++;
      if (switched && s > switched && port !== newPort) res.oldAfterSwitch++;
      if (t0 && newPort && port === newPort && !firstNew[i]) firstNew[i] = e;
    }
  }
  const loops = clients.map((_, i) => loop(i));
  await sleep(500);
  t0 = now();
  await admin.call('SENTINEL', 'FAILOVER', cfg.name);
  for (;;) {
    const p = await masterPort();
    if (p && p !== before) {
      newPort = p;
      switched = now();
      break;
    }
    if (now() - t0 > 10) break;
    await sleep(5);
  }
  while (now() - t0 < cfg.capMs / 1000 && firstNew.some((f) => !f)) await sleep(20);
  await sleep(300);
  stop = true;
  await Promise.all(loops);
  const got = firstNew.filter((f) => f);
  res.first = got.length ? Math.min(...got) - t0 : -1;
  res.firstAll = got.length === cfg.threads ? Math.max(...got) - t0 : -1;
  res.switch = switched ? switched - t0 : -1;
  console.log(JSON.stringify(res));
  for (const c of clients) c.disconnect();
  admin.disconnect();
  process.exit(0);
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.message ? e.message : e) }));
  process.exit(1);
});

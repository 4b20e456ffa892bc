/**
 * A counting (and optionally delaying) HTTP proxy on 127.0.0.1 in front of a
 * relay: every request is recorded as "METHOD /path" before it is forwarded,
 * and each request and WebSocket upgrade can be held `delayMs` first (half a
 * round trip each way: a network's latency, as bench/latency.mjs uses it).
 * It stops with `close()`; it never listens anywhere but 127.0.0.1.
 * Used by test/e2e/round-trips.test.ts (counting) and bench/latency.mjs
 * (a network's delay).
 */
import { createServer, request as httpRequest } from 'node:http';
import { connect } from 'node:net';

/**
 * @typedef {object} CountingProxy
 * @property {string} url the proxy's base URL, to give casa as the relay
 * @property {string[]} seen every request since the last reset, as "METHOD /path" (query dropped)
 * @property {{ up: number, down: number }} bytes body bytes sent to the relay and received from it since the last reset
 * @property {() => void} reset
 * @property {() => Promise<void>} close
 */

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * @param {string} target the relay's base URL (on 127.0.0.1)
 * @param {{ delayMs?: number }} [opts] held before forwarding a request and again before its answer
 * @returns {Promise<CountingProxy>}
 */
export async function startCountingProxy(target, opts = {}) {
  const t = new URL(target);
  const port = Number(t.port || 80);
  const delay = opts.delayMs ?? 0;
  /** @type {string[]} */
  const seen = [];
  const bytes = { up: 0, down: 0 };
  /** @type {Set<import('node:net').Socket>} */
  const sockets = new Set();
  const record = (req) => seen.push(`${req.method} ${(req.url ?? '/').split('?')[0]}`);

  const server = createServer((req, res) => {
    record(req);
    const go = () => {
      const up = httpRequest(
        { host: '127.0.0.1', port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } },
        (r) => {
          const answer = () => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.on('data', (d) => (bytes.down += d.length));
            r.pipe(res);
          };
          if (delay > 0) void sleep(delay).then(answer);
          else answer();
        },
      );
      up.on('error', () => {
        if (!res.headersSent) res.writeHead(502).end();
        else res.destroy();
      });
      req.on('data', (d) => (bytes.up += d.length));
      req.pipe(up);
    };
    if (delay > 0) void sleep(delay).then(go);
    else go();
  });
  server.on('upgrade', (req, client, head) => {
    record(req);
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    const go = () => {
      const up = connect(port, '127.0.0.1', () => {
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) {
          const k = req.rawHeaders[i];
          lines.push(`${k}: ${k.toLowerCase() === 'host' ? t.host : req.rawHeaders[i + 1]}`);
        }
        up.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head.length > 0) up.write(head);
        up.pipe(client);
        client.pipe(up);
      });
      sockets.add(up);
      up.on('close', () => {
        sockets.delete(up);
        client.destroy();
      });
      up.on('error', () => client.destroy());
      client.on('error', () => up.destroy());
    };
    if (delay > 0) void sleep(delay).then(go);
    else go();
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${addr.port}`,
    seen,
    bytes,
    reset: () => {
      seen.length = 0;
      bytes.up = 0;
      bytes.down = 0;
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

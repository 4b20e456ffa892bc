/**
 * The relay client's transport: a request that dies on a reused keep-alive
 * connection before any answer (the server had closed it) is sent again on a
 * fresh one; an answer that is not a casa relay's is exit 5, never a crash.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { checkRelayTransport, isLoopbackHost, RelayClient } from '../../src/relay/client.js';
import { UnreachableError, UsageError } from '../../src/errors.js';

let server: Server;
let url: string;
const served = new WeakMap<Socket, number>();
let mode: 'reset-reused' | 'garbage' | 'bytes' | 'chunked' = 'reset-reused';
const BLOB = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 7 + 3) & 0xff);

beforeAll(async () => {
  server = createServer((req, res) => {
    const n = (served.get(req.socket) ?? 0) + 1;
    served.set(req.socket, n);
    if (mode === 'reset-reused' && n > 1) {
      req.socket.destroy(); // as if the server had dropped the idle connection
      return;
    }
    if (mode === 'bytes' || mode === 'chunked') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', ...(mode === 'bytes' ? { 'content-length': String(BLOB.length) } : {}) });
      res.end(Buffer.from(BLOB));
      return;
    }
    if (mode === 'garbage') {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<html>');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'x-casa-time': String(Date.now()) });
    res.end(JSON.stringify({ ok: true, service: 'casa-relay', version: 'test', time: Date.now() }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

describe('relay client transport', () => {
  it('retries once on a fresh connection when a reused one was reset', async () => {
    mode = 'reset-reused';
    const c = new RelayClient(url);
    for (let i = 0; i < 5; i++) expect((await c.health()).version).toBe('test');
    expect(c.clockOffsetMs).not.toBeNull();
  });

  it('calls what answers HTML not a casa relay (exit 5)', async () => {
    mode = 'garbage';
    const err = await new RelayClient(url).health().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnreachableError);
    expect((err as UnreachableError).exitCode).toBe(5);
  });

  it('reads a body of declared length into the caller\'s buffer when it is long enough, else into a new one', async () => {
    const c = new RelayClient(url);
    mode = 'bytes';
    const into = new Uint8Array(BLOB.length + 10);
    const a = await c.send('GET', '/blob', { into });
    expect(a.body.buffer).toBe(into.buffer);
    expect(Buffer.from(a.body).equals(Buffer.from(BLOB))).toBe(true);
    const small = new Uint8Array(BLOB.length - 1);
    const b = await c.send('GET', '/blob', { into: small });
    expect(b.body.buffer).not.toBe(small.buffer);
    expect(Buffer.from(b.body).equals(Buffer.from(BLOB))).toBe(true);
    mode = 'chunked'; // no Content-Length: gathered, the caller's buffer unused
    const d = await c.send('GET', '/blob', { into });
    expect(d.body.buffer).not.toBe(into.buffer);
    expect(Buffer.from(d.body).equals(Buffer.from(BLOB))).toBe(true);
  });
});

describe('checkRelayTransport: TLS, or this machine (docs/SECURITY.md §5)', () => {
  it('takes https anywhere and http on loopback', () => {
    for (const u of ['https://relay.example.org', 'https://10.0.0.5:8443', 'http://127.0.0.1:8787', 'http://127.8.9.10', 'http://localhost:8787', 'http://LOCALHOST', 'http://[::1]:8787', 'http://[::ffff:127.0.0.1]:1', 'http://127.1:8787']) {
      expect(() => checkRelayTransport(u, false), u).not.toThrow();
    }
    for (const h of ['127.0.0.1', '127.255.255.254', 'localhost', '[::1]']) expect(isLoopbackHost(h), h).toBe(true);
  });

  it('refuses plain http off this machine with exit 2 and a hint, unless insecure', () => {
    for (const u of ['http://relay.example.org', 'http://192.168.1.10:8787', 'http://128.0.0.1', 'http://localhost.example.org', 'http://[::2]', 'http://0.0.0.0:8787', 'http://127.0.0.1.nip.io']) {
      const err = (() => {
        try {
          checkRelayTransport(u, false);
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(err, u).toBeInstanceOf(UsageError);
      expect((err as UsageError).exitCode).toBe(2);
      expect((err as UsageError).message).toMatch(/^refusing to reach the relay at http:\/\/\S+ over plain http$/);
      expect((err as UsageError).hints.join('\n')).toContain('--insecure-http');
      expect(() => checkRelayTransport(u, true), u).not.toThrow();
    }
    // Not a URL at all: left to the client's own check.
    expect(() => checkRelayTransport('not a url', false)).not.toThrow();
  });
});

/**
 * The relay client: every call to the relay goes through here, over
 * node:http(s) with one keep-alive Agent per protocol and bounded
 * connections. (docs/ARCHITECTURE.md §7 names undici; measured here, importing it costs
 * every command ~16 MB of RSS and ~80 ms, a seventh of the snapshot memory
 * budget, for nothing node:http lacks. undici stays for the WebSocket of
 * `casa sync --watch`.)
 *
 * Every response is distrusted: a body that is not the JSON casa expects is a
 * protocol error (exit 5, "not a casa relay"), never a crash; the relay's
 * clock (`X-Casa-Time`) is recorded on every answer so commands can show the
 * offset. An error answer becomes a RelayHttpError (its status and code as
 * data); its meaning to the user (exit code, reason, hints) is src/failures.ts
 * mapRelayError, the one mapping, re-exported here for the capability modules;
 * callers add the context-specific message for 404/401 where it means "wrong
 * phrase" or "unknown vault".
 */
import { sha256Hex } from '../crypto/sha256.js';
import { collectGarbage, collectYoung } from '../gc.js';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { CancelledError, FailureError, RestartCommand, UsageError } from '../errors.js';
import { mapRelayError, notARelay, RelayHttpError, unreachable } from '../failures.js';
import { EPOCH_HEADER, EXPECT_EPOCH_HEADER, RELAY_SERVICE, SHA256_HEADER, TIME_HEADER } from '../protocol/messages.js';
import type { CachedToken, TokenCache } from './token-cache.js';
import { b64uEncode } from '../crypto/bytes.js';
import { signPurpose } from '../crypto/sign.js';

export interface RelayClientOptions {
  signal?: AbortSignal;
  /** Per-request timeout. */
  timeoutMs?: number;
  now?: () => number;
}

/** The most casa reads of one answer: a pack or manifest is at most 16 MiB on the relay. */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/** The relay's errors as data, and their one meaning to the user (src/failures.ts), for the capability modules. */
export { malformedAnswer, mapRelayError, RelayHttpError } from '../failures.js';

function parseJsonObject(server: string, status: number, body: Uint8Array): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch {
    throw notARelay(server, `answered ${status} with a body that is not JSON`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw notARelay(server, `answered ${status} with unexpected JSON`);
  }
  return doc as Record<string, unknown>;
}

const agents = {
  http: new HttpAgent({ keepAlive: true, maxSockets: 8, timeout: 60_000 }),
  https: new HttpsAgent({ keepAlive: true, maxSockets: 8, timeout: 60_000 }),
};

interface RawResponse {
  status: number;
  headers: IncomingMessage['headers'];
  body: Uint8Array;
}

/**
 * One request over the shared keep-alive agents; rejects on network errors,
 * abort and oversized answers. A request that fails on a *reused* idle
 * connection before any answer (the server closed it while it sat in the
 * pool: ECONNRESET/EPIPE) is sent once more on a fresh one, as Node's docs
 * advise: the server never saw it.
 */
interface Outgoing {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body: string | Uint8Array | undefined;
  signal: AbortSignal;
  /** A buffer to read a body of declared length into, when it is long enough (see RelayClient.send). */
  into?: Uint8Array | undefined;
}

async function exchange(out: Outgoing): Promise<RawResponse> {
  try {
    return await exchangeOnce(out);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { reusedSocket?: boolean };
    if (!e.reusedSocket || !(e.code === 'ECONNRESET' || e.code === 'EPIPE') || out.signal.aborted) throw err;
    return exchangeOnce(out);
  }
}

function exchangeOnce({ url, method, headers, body, signal, into }: Outgoing): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const https = url.protocol === 'https:';
    let answered = false;
    const req = (https ? httpsRequest : httpRequest)(
      url,
      {
        method,
        headers: body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) },
        agent: https ? agents.https : agents.http,
        signal,
      },
      (res) => {
        answered = true;
        // A declared length: one buffer of that size, filled as the chunks arrive (a pack is 2–3 MiB:
        // no list of 64 KiB chunks held until a final copy). Otherwise chunks and a concat.
        const declared = Number(res.headers['content-length']);
        const known = res.headers['content-length'] !== undefined && Number.isSafeInteger(declared) && declared >= 0 && declared <= MAX_RESPONSE_BYTES;
        const whole = !known ? null : into && into.length >= declared ? into.subarray(0, declared) : new Uint8Array(Buffer.allocUnsafeSlow(declared).buffer, 0, declared);
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          if (whole !== null) {
            if (size + c.length > whole.length) {
              req.destroy(new Error('answer longer than its Content-Length'));
              return;
            }
            whole.set(c, size);
            size += c.length;
            noteReceived(c.length);
            return;
          }
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(new Error('answer too large'));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          if (whole !== null && size !== whole.length) {
            reject(new Error('answer shorter than its Content-Length'));
            return;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: whole ?? Buffer.concat(chunks) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', (err: NodeJS.ErrnoException & { reusedSocket?: boolean }) => {
      if (!answered && req.reusedSocket) err.reusedSocket = true;
      reject(err);
    });
    req.end(body);
  });
}

/**
 * Node reads a socket into a fresh 64 KiB buffer per read; copied into the
 * answer's buffer, each is garbage at once, but their small JS wrappers
 * hardly fill V8's young generation, so they wait for a collection. A young
 * collection (well under a millisecond) every 4 MiB received frees most of
 * them; the ones a young collection found still in use were moved to the old
 * generation, which only a full collection (a few milliseconds on this small
 * heap) frees, so every 32 MiB it is a full one. Measured on a 1 GiB restore,
 * 4 runs each: peak RSS 118–122 MiB with both, 125–132 MiB with the young
 * ones alone, the time unchanged.
 */
const RECEIVED_COLLECT_BYTES = 4 * 1024 * 1024;
const FULL_COLLECT_EVERY = 8;
let received = 0;
let collections = 0;
function noteReceived(bytes: number): void {
  received += bytes;
  if (received < RECEIVED_COLLECT_BYTES) return;
  received = 0;
  if (++collections % FULL_COLLECT_EVERY === 0) collectGarbage();
  else collectYoung();
}

export class RelayClient {
  readonly server: string;
  /** relay clock − local clock, in ms, from the last answer (null before any). */
  clockOffsetMs: number | null = null;
  /** The key epoch the last authenticated answer named (EPOCH_HEADER), or null. */
  epochHeader: string | null = null;
  private readonly opts: RelayClientOptions;

  constructor(server: string, opts: RelayClientOptions = {}) {
    this.server = normaliseServer(server);
    this.opts = opts;
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /**
   * One HTTP exchange. Returns the body of a 2xx answer; any other status
   * becomes a RelayHttpError carrying the relay's error document.
   */
  async send(
    method: string,
    path: string,
    opts: { json?: unknown; bytes?: Uint8Array; headers?: Record<string, string>; token?: string; timeoutMs?: number; into?: Uint8Array } = {},
  ): Promise<{ status: number; body: Uint8Array; contentType: string }> {
    const url = this.server + path;
    const headers: Record<string, string> = { accept: 'application/json', ...opts.headers };
    let body: string | Uint8Array | undefined;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.bytes !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      body = opts.bytes;
    }
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    const timeout = AbortSignal.timeout(opts.timeoutMs ?? this.opts.timeoutMs ?? 30_000);
    const signal = this.opts.signal ? AbortSignal.any([this.opts.signal, timeout]) : timeout;
    const sent = this.now();
    let res: RawResponse;
    try {
      res = await exchange({ url: new URL(url), method, headers, body, signal, into: opts.into });
    } catch (err) {
      if (this.opts.signal?.aborted) throw new CancelledError();
      throw unreachable(this.server, err);
    }
    const buf = new Uint8Array(res.body.buffer, res.body.byteOffset, res.body.length);
    const t = Number(res.headers[TIME_HEADER.toLowerCase()]);
    if (Number.isFinite(t) && t > 0) this.clockOffsetMs = Math.round(t - (sent + this.now()) / 2);
    const epoch = res.headers[EPOCH_HEADER.toLowerCase()];
    if (typeof epoch === 'string') this.epochHeader = epoch;
    const contentType = String(res.headers['content-type'] ?? '');
    if (res.status >= 200 && res.status < 300) return { status: res.status, body: buf, contentType };
    const d = parseJsonObject(this.server, res.status, buf);
    const e = d.error as Record<string, unknown> | undefined;
    if (!e || typeof e.code !== 'string') throw notARelay(this.server, `answered ${res.status} without an error code`);
    const ra = Number(res.headers['retry-after']);
    throw new RelayHttpError(res.status, e.code, typeof e.message === 'string' ? e.message : e.code, Number.isFinite(ra) ? ra : null, d);
  }

  /** A JSON exchange: the parsed object of a 2xx answer, or RelayHttpError / a CasaError. */
  async request(method: string, path: string, body?: unknown, token?: string, headers?: Record<string, string>): Promise<Record<string, unknown>> {
    const res = await this.send(method, path, { json: body, token, ...(headers ? { headers } : {}) });
    return parseJsonObject(this.server, res.status, res.body);
  }

  /** GET /v1/health: proves a casa relay answers at this URL. */
  async health(): Promise<{ version: string; time: number }> {
    const d = await this.call('GET', '/v1/health');
    if (d.service !== RELAY_SERVICE || typeof d.version !== 'string' || typeof d.time !== 'number') {
      throw notARelay(this.server, 'is not a casa relay');
    }
    return { version: d.version, time: d.time };
  }

  /** Like request(), with the generic mapping of relay errors onto casa's exit codes. */
  async call(method: string, path: string, body?: unknown, token?: string): Promise<Record<string, unknown>> {
    try {
      return await this.request(method, path, body, token);
    } catch (err) {
      throw mapRelayError(this.server, err);
    }
  }
}

export function normaliseServer(server: string): string {
  let u: URL;
  try {
    u = new URL(server);
  } catch {
    throw new FailureError(`not a relay URL: ${JSON.stringify(server)}`, {
      hints: ['give --server (or CASA_SERVER) as http://HOST:PORT or https://HOST'],
    });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new FailureError(`not a relay URL: ${JSON.stringify(server)}`, {
      hints: ['give --server (or CASA_SERVER) as http://HOST:PORT or https://HOST'],
    });
  }
  return u.origin + u.pathname.replace(/\/+$/, '');
}

/**
 * Whether `hostname` (as URL.hostname gives it) is this machine's loopback:
 * `localhost`, 127.0.0.0/8, ::1 (and ::1's IPv4-mapped 127/8 form).
 */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return (
    h === 'localhost' ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) ||
    h === '[::1]' ||
    /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/.test(h)
  );
}

/**
 * docs/SECURITY.md §5: a relay is reached over TLS, or on this machine. A
 * plain `http://` URL whose host is not loopback is refused (exit 2) unless
 * `insecure` (--insecure-http, CASA_INSECURE_HTTP=1): tokens, device names
 * and the relay's answers would cross the network in the clear. A URL that
 * does not parse is left to normaliseServer to report.
 */
export function checkRelayTransport(server: string, insecure: boolean): void {
  let u: URL;
  try {
    u = new URL(server);
  } catch {
    return;
  }
  if (u.protocol !== 'http:' || insecure || isLoopbackHost(u.hostname)) return;
  throw new UsageError(`refusing to reach the relay at ${u.origin} over plain http`, {
    hints: [
      'use an https:// URL, or a relay on this machine (127.0.0.1, ::1, localhost)',
      'on a network you trust, pass --insecure-http (or set CASA_INSECURE_HTTP=1): tokens and metadata then cross it unencrypted',
    ],
  });
}

/**
 * A device's authenticated session: challenge → signed → short-lived token,
 * fetched lazily and renewed before it expires. With a TokenCache, a token
 * an earlier command fetched is used while it lives, and a new one is kept
 * for the next (src/relay/token-cache.ts states the rules).
 */
export class DeviceSession {
  private token: string | null = null;
  private expiresAt = 0;
  /** The kept token in use, until its first answer confirms the epoch it names. */
  private probing: CachedToken | null = null;
  /** Whether the kept token may still be tried (not after forgetToken or a fetch). */
  private cacheUsable: boolean;
  private lastEpochHeader: string | null = null;
  /** The vault's current epoch and key id, as the relay last named them (docs/RELAY-API.md "Membership and epochs"). */
  relayEpoch: { epoch: number; keyId: string } | null = null;

  constructor(
    readonly client: RelayClient,
    readonly vaultId: string,
    readonly deviceId: string,
    /** The device's Ed25519 seed (read once from the keystore by the command). */
    readonly deviceSeed: Uint8Array,
    private readonly cache: TokenCache | null = null,
  ) {
    this.cacheUsable = cache !== null;
  }

  private get base(): string {
    return `/v1/vaults/${this.vaultId}`;
  }

  /** Whether the token in use came from an earlier command (so no request was needed for it). */
  get reusedToken(): boolean {
    return this.token !== null && this.probing !== null;
  }

  async getToken(): Promise<string> {
    if (this.token && Date.now() < this.expiresAt - 30_000) return this.token;
    if (this.cacheUsable) {
      this.cacheUsable = false;
      const kept = this.cache!.read(this.client.server, this.vaultId, this.deviceId, Date.now());
      if (kept) {
        this.token = kept.token;
        this.expiresAt = kept.expiresAt;
        this.probing = kept;
        this.lastEpochHeader = kept.epoch;
        this.relayEpoch = parseEpoch(kept.epoch);
        return this.token;
      }
    }
    this.probing = null;
    const ch = await this.client.call('POST', `${this.base}/auth/challenge`, { deviceId: this.deviceId });
    if (typeof ch.challenge !== 'string') throw notARelay(this.client.server, 'sent a malformed challenge');
    const signature = b64uEncode(signPurpose(this.deviceSeed, 'token', [this.vaultId, this.deviceId, ch.challenge]));
    const tk = await this.client.call('POST', `${this.base}/auth/token`, {
      deviceId: this.deviceId,
      challenge: ch.challenge,
      signature,
    });
    if (typeof tk.token !== 'string' || typeof tk.expiresAt !== 'number') {
      throw notARelay(this.client.server, 'sent a malformed token');
    }
    this.token = tk.token;
    this.relayEpoch =
      typeof tk.epoch === 'number' && Number.isSafeInteger(tk.epoch) && tk.epoch >= 0 && typeof tk.keyId === 'string' ? { epoch: tk.epoch, keyId: tk.keyId } : null;
    // Trust our own clock for renewal: at most 5 minutes, whatever the relay says.
    this.expiresAt = Date.now() + Math.min(5 * 60_000, Math.max(0, tk.expiresAt - (Date.now() + (this.client.clockOffsetMs ?? 0))));
    this.lastEpochHeader = this.relayEpoch ? `${this.relayEpoch.epoch}.${this.relayEpoch.keyId}` : null;
    this.keep();
    return this.token;
  }

  /** A new token at once (the next request names the relay's current epoch); the kept one is not used again. */
  forgetToken(): void {
    this.token = null;
    this.expiresAt = 0;
    this.probing = null;
    this.cacheUsable = false;
  }

  private keep(): void {
    if (!this.cache || !this.token || this.lastEpochHeader === null) return;
    this.cache.write({
      server: this.client.server,
      vaultId: this.vaultId,
      deviceId: this.deviceId,
      token: this.token,
      expiresAt: this.expiresAt,
      epoch: this.lastEpochHeader,
    });
  }

  /**
   * One authenticated exchange: the token, the expected epoch on a kept
   * token's first request, the epoch the answer names noted, and a kept
   * token the relay refuses dropped (RestartCommand when nothing was done).
   */
  private async exchange<T>(f: (token: string, headers: Record<string, string>) => Promise<T>): Promise<T> {
    const token = await this.getToken();
    const probe = this.probing;
    const headers: Record<string, string> = probe ? { [EXPECT_EPOCH_HEADER.toLowerCase()]: probe.epoch } : {};
    this.client.epochHeader = null;
    try {
      const r = await f(token, headers);
      if (probe && this.probing === probe) this.probing = null;
      return r;
    } catch (err) {
      if (err instanceof RelayHttpError) {
        if (err.status === 403 && err.code === 'device_revoked') this.cache?.drop();
        if (probe && this.probing === probe && (err.status === 401 || (err.status === 409 && err.code === 'epoch_moved'))) {
          this.cache?.drop();
          this.forgetToken();
          throw new RestartCommand(err.status === 401 ? 'the kept token was refused' : 'the vault moved to another key epoch');
        }
      }
      throw err;
    } finally {
      this.noteEpoch();
    }
  }

  /** The epoch the last answer named, remembered for this command and kept for the next. */
  private noteEpoch(): void {
    const h = this.client.epochHeader;
    if (h === null || !/^\d+\.[0-9a-f]*$/.test(h)) return;
    this.relayEpoch = parseEpoch(h);
    if (h !== this.lastEpochHeader) {
      this.lastEpochHeader = h;
      this.keep();
    }
  }

  async call(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    try {
      return await this.request(method, path, body);
    } catch (err) {
      throw mapRelayError(this.client.server, err);
    }
  }

  /** Like call(), but RelayHttpError is left for the caller to interpret (409 bodies, 404 as absence). */
  async request(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    return this.exchange((token, headers) => this.client.request(method, `${this.base}${path}`, body, token, headers));
  }

  /** Uploads bytes with their SHA-256 for the relay to check on arrival. */
  async putBytes(path: string, bytes: Uint8Array): Promise<Record<string, unknown>> {
    return (await this.uploadBytes('PUT', path, bytes)).doc;
  }

  /**
   * putBytes with another method and extra headers (a changeset push names
   * its seq in one), and the status (200 and 201 mean different things there).
   */
  async uploadBytes(
    method: 'PUT' | 'POST',
    path: string,
    bytes: Uint8Array,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; doc: Record<string, unknown> }> {
    const sha = sha256Hex(bytes);
    return this.exchange(async (token, auth) => {
      const res = await this.client.send(method, `${this.base}${path}`, {
        bytes,
        token,
        headers: { ...headers, ...auth, [SHA256_HEADER.toLowerCase()]: sha },
        timeoutMs: 120_000,
      });
      return { status: res.status, doc: parseJsonObject(this.client.server, res.status, res.body) };
    });
  }

  /**
   * A binary GET; RelayHttpError (404 …) is left to the caller. With `into`
   * long enough for the body, the body is read into it and the result is a
   * view of it (a restore reads pack after pack into the same buffer);
   * otherwise into a new buffer.
   */
  async getBytes(path: string, into?: Uint8Array): Promise<Uint8Array> {
    return this.exchange(async (token, headers) => {
      const res = await this.client.send('GET', `${this.base}${path}`, { token, headers, timeoutMs: 120_000, ...(into ? { into } : {}) });
      return res.body;
    });
  }
}

function parseEpoch(h: string): { epoch: number; keyId: string } {
  const dot = h.indexOf('.');
  return { epoch: Number(h.slice(0, dot)), keyId: h.slice(dot + 1) };
}

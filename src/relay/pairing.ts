/**
 * The relay's pairing mailbox (docs/RELAY-API.md "Pairing by code"), as the
 * two sides of `casa pair` see it. The relay only stores and forwards three
 * opaque messages; every answer is checked for shape here before the
 * handshake (src/crypto/pairing.ts) looks at the bytes, and nothing the relay
 * says is trusted beyond "this is what was posted".
 *
 * Long polls: the relay holds a status request until the session moves or
 * `wait` ms pass, so a waiting side makes one request every few seconds.
 */
import { b64uDecode, b64uEncode, bytesToHex, hexToBytes } from '../crypto/bytes.js';
import { PAIR_MAX_FINAL_BYTES } from '../crypto/pairing.js';
import { UnreachableError } from '../errors.js';
import { isDeviceId, isPairingSessionId } from '../protocol/ids.js';
import { mapRelayError, RelayHttpError, type DeviceSession, type RelayClient } from './client.js';

export type PairingState = 'open' | 'joined' | 'confirmed' | 'failed' | 'done' | 'cancelled' | 'expired';
const STATES: readonly PairingState[] = ['open', 'joined', 'confirmed', 'failed', 'done', 'cancelled', 'expired'];

/** How long one long poll may be held by the relay (the request timeout is longer). */
export const POLL_WAIT_MS = 10_000;
const POLL_TIMEOUT_MS = POLL_WAIT_MS + 15_000;
/** The largest message either side accepts from the relay (the handshake's own limits are smaller). */
const MAX_MESSAGE_BYTES = PAIR_MAX_FINAL_BYTES;

export const NAMEPLATE = /^[1-9][0-9]{0,8}$/;

function malformed(server: string, what: string): UnreachableError {
  return new UnreachableError(`the relay at ${server} sent a malformed pairing answer (${what})`, {
    code: 'relay_protocol',
    hints: ['check that --server (or CASA_SERVER) points at a casa relay'],
  });
}

function message(server: string, v: unknown, what: string): Uint8Array {
  if (typeof v !== 'string' || v.length === 0 || v.length > (MAX_MESSAGE_BYTES * 4) / 3 + 4) throw malformed(server, what);
  try {
    return b64uDecode(v);
  } catch {
    throw malformed(server, what);
  }
}

function state(server: string, v: unknown): PairingState {
  if (typeof v !== 'string' || !STATES.includes(v as PairingState)) throw malformed(server, 'state');
  return v as PairingState;
}

function time(server: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw malformed(server, 'expiresAt');
  return v;
}

export interface OfferStatus {
  state: PairingState;
  expiresAt: number;
  msgB?: Uint8Array;
  deviceId?: string;
}

/** The offering (paired) device's side: authenticated vault routes. */
export class OfferMailbox {
  constructor(private readonly session: DeviceSession) {}

  private get server(): string {
    return this.session.client.server;
  }

  async create(sid: Uint8Array, msgA: Uint8Array, ttlSeconds: number): Promise<{ nameplate: string; expiresAt: number }> {
    const d = await this.session.call('POST', '/pairings', { sid: bytesToHex(sid), msgA: b64uEncode(msgA), ttlSeconds });
    if (typeof d.nameplate !== 'string' || !NAMEPLATE.test(d.nameplate)) throw malformed(this.server, 'nameplate');
    return { nameplate: d.nameplate, expiresAt: time(this.server, d.expiresAt) };
  }

  /** Waits (up to `waitMs`) for the session to leave `since`, then says where it is. */
  async status(nameplate: string, since: PairingState, waitMs = POLL_WAIT_MS): Promise<OfferStatus> {
    const token = await this.session.getToken();
    const path = `/v1/vaults/${this.session.vaultId}/pairings/${nameplate}?since=${since}&wait=${waitMs}`;
    let d: Record<string, unknown>;
    try {
      const res = await this.session.client.send('GET', path, { token, timeoutMs: waitMs + POLL_TIMEOUT_MS });
      d = JSON.parse(new TextDecoder().decode(res.body)) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === 'not_found') return { state: 'expired', expiresAt: 0 };
      throw err instanceof SyntaxError ? malformed(this.server, 'not JSON') : this.mapped(err);
    }
    const out: OfferStatus = { state: state(this.server, d.state), expiresAt: time(this.server, d.expiresAt) };
    if (d.msgB !== undefined) out.msgB = message(this.server, d.msgB, 'msgB');
    if (d.deviceId !== undefined) {
      if (!isDeviceId(d.deviceId)) throw malformed(this.server, 'deviceId');
      out.deviceId = d.deviceId;
    }
    return out;
  }

  async finish(nameplate: string, msgFinal: Uint8Array | null): Promise<void> {
    await this.session.call('POST', `/pairings/${nameplate}/finish`, msgFinal ? { ok: true, msgFinal: b64uEncode(msgFinal) } : { ok: false });
  }

  /** Best effort: a session left behind expires on its own. */
  async cancel(nameplate: string): Promise<void> {
    await this.session.request('DELETE', `/pairings/${nameplate}`).catch(() => undefined);
  }

  private mapped(err: unknown): unknown {
    return mapRelayError(this.server, err);
  }
}

export interface OfferMessage {
  sid: Uint8Array;
  msgA: Uint8Array;
  expiresAt: number;
}

/** The joining (new) device's side: unauthenticated routes; the bearer token proves it is the one that joined. */
export class JoinMailbox {
  constructor(private readonly client: RelayClient) {}

  private get server(): string {
    return this.client.server;
  }

  /** The offer of an open session, or null when there is none by that number (wrong, expired, used). */
  async offer(nameplate: string): Promise<OfferMessage | null> {
    let d: Record<string, unknown>;
    try {
      d = await this.client.request('GET', `/v1/pairings/${nameplate}`);
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === 'not_found') return null;
      throw this.mapped(err);
    }
    if (!isPairingSessionId(d.sid)) throw malformed(this.server, 'sid');
    return { sid: hexToBytes(d.sid), msgA: message(this.server, d.msgA, 'msgA'), expiresAt: time(this.server, d.expiresAt) };
  }

  /** Posts the answer; the bearer token for what follows, or null if the session is gone meanwhile. */
  async join(nameplate: string, msgB: Uint8Array): Promise<string | null> {
    let d: Record<string, unknown>;
    try {
      d = await this.client.request('POST', `/v1/pairings/${nameplate}/join`, { msgB: b64uEncode(msgB) });
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === 'not_found') return null;
      throw this.mapped(err);
    }
    if (typeof d.token !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(d.token)) throw malformed(this.server, 'token');
    return d.token;
  }

  /** Waits (up to `waitMs`) while the session is 'joined'; then its state and the final message, if any. */
  async result(nameplate: string, token: string, waitMs = POLL_WAIT_MS): Promise<{ state: PairingState; msgFinal?: Uint8Array }> {
    let d: Record<string, unknown>;
    try {
      const res = await this.client.send('GET', `/v1/pairings/${nameplate}/result?wait=${waitMs}`, {
        token,
        timeoutMs: waitMs + POLL_TIMEOUT_MS,
      });
      d = JSON.parse(new TextDecoder().decode(res.body)) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === 'not_found') return { state: 'expired' };
      throw err instanceof SyntaxError ? malformed(this.server, 'not JSON') : this.mapped(err);
    }
    const s = state(this.server, d.state);
    return d.msgFinal === undefined ? { state: s } : { state: s, msgFinal: message(this.server, d.msgFinal, 'msgFinal') };
  }

  async done(nameplate: string, token: string, deviceId: string): Promise<void> {
    try {
      await this.client.request('POST', `/v1/pairings/${nameplate}/done`, { deviceId }, token);
    } catch (err) {
      throw this.mapped(err);
    }
  }

  private mapped(err: unknown): unknown {
    return mapRelayError(this.server, err);
  }
}

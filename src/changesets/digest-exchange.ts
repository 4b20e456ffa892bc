/**
 * Digest exchange (`casa verify --sync`, docs/RELAY-API.md "Digests",
 * docs/FORMAT.md §8): each device keeps one slot on the relay holding its
 * latest sealed digest record; comparing the records of devices in the same
 * state tells whether their synced tables are identical.
 *
 * Invariants:
 * - A device publishes only in a comparable state, checked in the same read
 *   transaction as its digest: nothing left to push (casa_changes empty),
 *   no received change waiting for a newer schema (casa_pending empty), and
 *   every batch it pushed applied within its cursor. Two records compare only
 *   if their cursor and schema fingerprint are equal: such devices applied
 *   the same changesets onto the same baseline, so their tables must be equal.
 * - The relay is distrusted: every answer is checked as src/relay/changesets.ts
 *   does (a malformed one is an IntegrityError); a slot that does not open
 *   under its device's identity, names another device, or goes back to an
 *   older record than this device saw from it is tampering (IntegrityError).
 *   The relay only ever holds ciphertext, sealed with a fresh salt each time.
 * - What this device remembers (CASA_HOME, beside the sync state) holds no
 *   digest: a keyed MAC of what it last published, the highest record seq
 *   seen per device, and the last comparison's verdicts (for `casa status`).
 * - With a key view source (`casa verify --sync`), the record also carries
 *   this device's view of the key history (src/changesets/key-view.ts), and
 *   every other device's view is compared with it before, and whatever, the
 *   tables compare: another device at a newer epoch, or whose slot is sealed
 *   under keys this device does not hold, first makes this device pick up
 *   the relay's newest epoch (once); one that verified a revocation of a
 *   device this one counts as a member first makes it read the membership
 *   records again (once). What is still apart afterwards is in the report
 *   (`keys` of each device) for the caller to refuse (exit 6).
 */
import { mkdirSync, readFileSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { VaultKeys } from '../crypto/kdf.js';
import { AuthenticationError, ObjectFormatError, WrongKeyError } from '../crypto/objects.js';
import { b64uDecode } from '../crypto/bytes.js';
import { IntegrityError } from '../errors.js';
import { objectFailure } from '../failures.js';
import { isDeviceId } from '../protocol/ids.js';
import { writeFileAtomic } from '../state.js';
import { pendingCount } from './change-log.js';
import { compareKeyViews, keyViewOf, type KeyComparison, type KeyView } from './key-view.js';
import {
  differingTables,
  MAX_SEALED_RECORD,
  openRecord,
  recordMac,
  RecordFormatError,
  sealRecord,
  syncDigest,
  type DigestRecord,
  type SyncDigest,
} from './digest.js';
import { pendingRemoteCount } from './merge.js';
import { malformedAnswer, mapRelayError, type DeviceSession } from '../relay/client.js';
import type { SyncSchema } from './rules.js';
import { loadSyncState, type SyncEnv } from './sync-run.js';
import { syncDir, syncStatePath, type SyncState } from './sync-state.js';

const uint = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

export interface DigestSlot {
  deviceId: string;
  /** The sealed record, as the device uploaded it (unopened). */
  bytes: Uint8Array;
  updatedAt: number;
}

export interface VaultDevice {
  id: string;
  name: string;
  revokedAt: number | null;
}

/** The relay's digest routes (and the device list they are read against), typed, every answer checked. */
export class DigestApi {
  constructor(readonly session: DeviceSession) {}

  private get server(): string {
    return this.session.client.server;
  }

  /** Stores `bytes` as this device's slot, replacing the previous one. */
  async put(bytes: Uint8Array): Promise<{ updatedAt: number }> {
    if (bytes.length === 0 || bytes.length > MAX_SEALED_RECORD) throw new RangeError(`a digest record is 1 to ${MAX_SEALED_RECORD} bytes`);
    let res: { status: number; doc: Record<string, unknown> };
    try {
      res = await this.session.uploadBytes('PUT', '/digest', bytes);
    } catch (err) {
      throw mapRelayError(this.server, err);
    }
    const d = res.doc;
    if (res.status !== 200 || d.deviceId !== this.session.deviceId || d.bytes !== bytes.length || !uint(d.updatedAt)) {
      throw malformedAnswer(this.server, 'digest upload answer');
    }
    return { updatedAt: d.updatedAt };
  }

  /** Every device's slot (revoked devices' too), by device id. */
  async list(): Promise<DigestSlot[]> {
    const d = await this.session.call('GET', '/digests');
    if (!Array.isArray(d.digests)) throw malformedAnswer(this.server, 'digest list');
    const seen = new Set<string>();
    return d.digests.map((v: unknown) => {
      const x = v as Record<string, unknown>;
      if (typeof x !== 'object' || x === null || !isDeviceId(x.deviceId) || seen.has(x.deviceId)) {
        throw malformedAnswer(this.server, 'digest list');
      }
      if (typeof x.data !== 'string' || !uint(x.updatedAt)) throw malformedAnswer(this.server, 'digest list');
      let bytes: Uint8Array;
      try {
        bytes = b64uDecode(x.data);
      } catch {
        throw malformedAnswer(this.server, 'digest list');
      }
      if (bytes.length === 0 || bytes.length > MAX_SEALED_RECORD) throw malformedAnswer(this.server, 'digest list');
      seen.add(x.deviceId);
      return { deviceId: x.deviceId, bytes, updatedAt: x.updatedAt };
    });
  }

  /** The vault's devices: id, name, and whether revoked. */
  async devices(): Promise<VaultDevice[]> {
    const d = await this.session.call('GET', '/devices');
    if (!Array.isArray(d.devices)) throw malformedAnswer(this.server, 'device list');
    const seen = new Set<string>();
    return d.devices.map((v: unknown) => {
      const x = v as Record<string, unknown>;
      if (
        typeof x !== 'object' ||
        x === null ||
        !isDeviceId(x.id) ||
        seen.has(x.id) ||
        typeof x.name !== 'string' ||
        !(x.revokedAt === null || uint(x.revokedAt))
      ) {
        throw malformedAnswer(this.server, 'device list');
      }
      seen.add(x.id);
      return { id: x.id, name: x.name, revokedAt: x.revokedAt };
    });
  }
}

// ---------------------------------------------------------------- what this device remembers

export type PeerStatus = 'same' | 'differs' | 'not_comparable';

/**
 * The other device's key history against this device's (key-view.ts), or:
 * `unknown` — its record carries none (casa before key views) or it has no
 * record; `unreadable` — its record is sealed under keys this device does not
 * hold even after picking up the relay's newest epoch.
 */
export type PeerKeyStatus = KeyComparison['status'] | 'unknown' | 'unreadable';

export interface PeerKeys {
  status: PeerKeyStatus;
  /** The epoch its record names (null: unknown or unreadable). */
  epoch: number | null;
  /** Revocations it verified of devices this device counts as members: hidden from this device. */
  hiddenRevocations: string[];
  /** Revocations this device verified that it has not. */
  missingRevocations: string[];
}

/** What a key view needs beyond the vault keys: the membership, verified from signed records (src/keys). */
export interface MembershipView {
  /** Device ids this device verified revoked (now, and remembered from before). */
  revoked: string[];
  /** Device ids it counts as members (certified, not revoked). */
  members: string[];
}

export interface KeyViewSource {
  /** Reads and verifies the vault's membership records afresh. */
  membership(): Promise<MembershipView>;
}

export interface PeerResult {
  deviceId: string;
  name: string;
  status: PeerStatus;
  /** With 'differs': the tables whose digests differ, by name. */
  tablesDiffer: string[];
  /** With 'not_comparable': why, in words. */
  why: string | null;
  /** The other device's record: its cursor and when it computed it (null: none). */
  cursor: number | null;
  at: number | null;
  /** Its key history against this device's (null: not compared, no key view source). */
  keys: PeerKeys | null;
}

/** The last comparison, as `casa status` shows it. */
export interface LastComparison {
  at: number;
  cursor: number;
  comparable: boolean;
  devices: { deviceId: string; name: string; status: PeerStatus; tablesDiffer: string[] }[];
}

export interface DigestMemory {
  format: 1;
  /** What this device last published (a MAC, not the digests), or null. */
  published: { seq: number; cursor: number; fingerprint: string; mac: string; at: number } | null;
  /** The highest record seq seen from each other device: a lower one is a rollback. */
  seen: Record<string, number>;
  last: LastComparison | null;
}

const emptyMemory = (): DigestMemory => ({ format: 1, published: null, seen: {}, last: null });

function digestMemoryPath(home: string, keys: VaultKeys, dbPath: string): string {
  return syncStatePath(home, keys, dbPath).replace(/\.json$/, '.digest.json');
}

/** What this device remembers, or null; a damaged file reads as nothing remembered (it only costs a publication). */
export function readDigestMemory(home: string, keys: VaultKeys, dbPath: string): DigestMemory | null {
  let m: DigestMemory;
  try {
    m = JSON.parse(readFileSync(digestMemoryPath(home, keys, dbPath), 'utf8')) as DigestMemory;
  } catch {
    return null;
  }
  const p = m?.published;
  const ok =
    m?.format === 1 &&
    (p === null || (typeof p === 'object' && uint(p.seq) && uint(p.cursor) && typeof p.fingerprint === 'string' && typeof p.mac === 'string' && uint(p.at))) &&
    typeof m.seen === 'object' &&
    m.seen !== null &&
    Object.entries(m.seen).every(([id, s]) => isDeviceId(id) && uint(s)) &&
    (m.last === null || (typeof m.last === 'object' && uint(m.last.at) && uint(m.last.cursor) && Array.isArray(m.last.devices)));
  return ok ? m : null;
}

function writeDigestMemory(env: Pick<SyncEnv, 'home' | 'keys' | 'dbPath'>, m: DigestMemory): void {
  mkdirSync(syncDir(env.home, env.keys), { recursive: true, mode: 0o700 });
  writeFileAtomic(digestMemoryPath(env.home, env.keys, env.dbPath), JSON.stringify(m), 0o600);
}

// ---------------------------------------------------------------- the exchange

export interface DigestReport {
  deviceId: string;
  cursor: number;
  fingerprint: string;
  /** This device's table digests; null when it is not in a comparable state. */
  tables: Record<string, string> | null;
  /** Why this device is not in a comparable state, or null. */
  why: string | null;
  /** The digest's cost here: rows read and ms (0 when none was computed). */
  rows: number;
  ms: number;
  /** Whether a new record was uploaded (false: the relay holds an equal one, or none was made). */
  published: boolean;
  /** Every other device that is not revoked, by name. */
  devices: PeerResult[];
  /** This device's view of the key history, as published (null: no key view source). */
  keys: KeyView | null;
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** Why this device's database is not a state to compare, or null (read in the caller's transaction). */
function notComparable(db: Database.Database, st: SyncState, deviceId: string): string | null {
  const local = pendingCount(db);
  if (local > 0) return `${plural(local, 'local change')} not pushed yet (written while verifying)`;
  const remote = pendingRemoteCount(db);
  if (remote > 0) return `${plural(remote, 'received change')} wait for a newer schema here (update the app on this device)`;
  if (st.pushed.seq > (st.chains[deviceId]?.seq ?? 0)) return 'a changeset this device pushed is not within its cursor yet';
  return null;
}

/** The digest of a comparable state, or why there is none: the checks and the digest see one committed state. */
function measure(db: Database.Database, schema: SyncSchema, st: SyncState, deviceId: string): { why: string | null; digest: SyncDigest | null } {
  return db.transaction(() => {
    const why = notComparable(db, st, deviceId);
    return why !== null ? { why, digest: null } : { why: null, digest: syncDigest(db, schema) };
  })();
}

function tampered(server: string, name: string, what: string): IntegrityError {
  return new IntegrityError(`the digest the relay holds for device ${name} ${what}`, {
    hints: [`the relay at ${server} served a damaged, altered, moved or older digest; nothing was changed here`],
  });
}

/**
 * Opens a slot as its device's, refusing anything the relay could have
 * altered, moved or rolled back. With `unknownKeys`, a slot sealed under keys
 * this device does not hold is null (the caller tells a newer epoch from a
 * fork), else exit 4 as every wrong key.
 */
function openSlot(env: SyncEnv, slot: DigestSlot, name: string, seenSeq: number, unknownKeys = false): DigestRecord | null {
  let r: DigestRecord;
  try {
    r = openRecord(env.keys, slot.deviceId, slot.bytes);
  } catch (err) {
    if (err instanceof AuthenticationError || err instanceof ObjectFormatError || err instanceof RecordFormatError) {
      throw tampered(env.server, name, 'failed its integrity check');
    }
    if (err instanceof WrongKeyError && unknownKeys) return null;
    // Exit 4 like every wrong key (casa-verify(1)), not 6: the phrase or the relay's vault is not this one.
    if (err instanceof WrongKeyError) throw objectFailure('wrong_key', `the digest the relay holds for device ${name}`, { server: env.server });
    throw err;
  }
  if (r.seq < seenSeq) throw tampered(env.server, name, `is older (record ${r.seq}) than one this device saw (${seenSeq})`);
  return r;
}

function compare(
  me: { cursor: number; fingerprint: string; tables: Record<string, string> | null; why: string | null },
  other: DigestRecord | null,
  unreadable = false,
): Pick<PeerResult, 'status' | 'tablesDiffer' | 'why'> {
  const nc = (why: string) => ({ status: 'not_comparable' as const, tablesDiffer: [], why });
  if (unreadable) return nc('its digest is sealed under keys this device does not hold');
  if (me.tables === null) return nc(`this device is not in a comparable state: ${me.why}`);
  if (other === null) return nc('it has not published a digest yet');
  if (other.fingerprint !== me.fingerprint) return nc('it syncs another schema (another app version?)');
  if (other.cursor !== me.cursor) return nc(`it is at changeset ${other.cursor}, this device at ${me.cursor}`);
  const differ = differingTables(me.tables, other.tables);
  return differ.length === 0 ? { status: 'same', tablesDiffer: [], why: null } : { status: 'differs', tablesDiffer: differ, why: null };
}

/** Another device's key view against this one's; `unknown` without a record or without a view in it. */
function keysOf(mine: { keys: VaultKeys; view: KeyView; members: ReadonlySet<string> }, r: DigestRecord | null, unreadable: boolean): PeerKeys {
  if (unreadable) return { status: 'unreadable', epoch: null, hiddenRevocations: [], missingRevocations: [] };
  if (r?.keys === undefined) return { status: 'unknown', epoch: null, hiddenRevocations: [], missingRevocations: [] };
  return { ...compareKeyViews(mine, r.keys), epoch: r.keys.epoch };
}

/**
 * Computes this device's digest (when it is in a comparable state),
 * publishes it unless the relay already holds an equal record of this
 * device (`publish: false`: never), reads every other device's record and
 * compares. Throws IntegrityError for a relay that tampers with a slot.
 * With `keyView`, the record carries this device's key view and every other
 * device's is compared with it (the module's invariants): the verdicts are
 * in each device's `keys`, for the caller to act on.
 */
export async function exchangeDigests(
  env: SyncEnv,
  db: Database.Database,
  schema: SyncSchema,
  opts: { publish: boolean; keyView?: KeyViewSource } = { publish: true },
): Promise<DigestReport> {
  const api = new DigestApi(env.api.session);
  const memory = readDigestMemory(env.home, env.keys, env.dbPath) ?? emptyMemory();
  const st = loadSyncState(env);
  const { why, digest } = measure(db, schema, st, env.deviceId);
  env.trace?.(digest ? `digest of ${digest.rows} rows in ${digest.ms} ms` : `not comparable: ${why}`);

  const [devices, slots, firstMembership] = await Promise.all([api.devices(), api.list(), opts.keyView?.membership()]);
  let membership = firstMembership ?? null;
  const names = new Map(devices.map((d) => [d.id, d.name]));
  const active = new Set(devices.filter((d) => d.revokedAt === null).map((d) => d.id));
  const records = new Map<string, DigestRecord>();
  const unreadable = new Map<string, DigestSlot>();
  const seen = { ...memory.seen };
  const take = (slot: DigestSlot): void => {
    const own = slot.deviceId === env.deviceId;
    const r = openSlot(env, slot, names.get(slot.deviceId) ?? slot.deviceId, own ? 0 : (seen[slot.deviceId] ?? 0), opts.keyView !== undefined && !own);
    if (r === null) {
      unreadable.set(slot.deviceId, slot);
      return;
    }
    unreadable.delete(slot.deviceId);
    records.set(slot.deviceId, r);
    if (!own) seen[slot.deviceId] = Math.max(seen[slot.deviceId] ?? 0, r.seq);
  };
  for (const slot of slots) {
    // A revoked device's slot, or one of a device the vault does not list, is not compared.
    if (active.has(slot.deviceId)) take(slot);
  }

  // The key views: a newer epoch elsewhere, or a slot under keys not held here, is picked up first (once);
  // a revocation verified elsewhere of a device this one counts as a member makes it read the records again (once).
  type Mine = { keys: VaultKeys; view: KeyView; members: ReadonlySet<string> };
  const viewOf = (m: MembershipView): Mine => ({ keys: env.keys, view: keyViewOf(env.keys, m.revoked), members: new Set(m.members) });
  const peerRecords = () => [...records.entries()].filter(([id]) => id !== env.deviceId).map(([, r]) => r);
  let mine: Mine | null = null;
  if (membership && opts.keyView) {
    mine = viewOf(membership);
    const epoch = mine.view.epoch;
    const ahead = peerRecords().some((r) => r.keys !== undefined && r.keys.epoch > epoch);
    if ((ahead || unreadable.size > 0) && env.refreshKeys) {
      env.trace?.('another device holds keys this one does not: picking up the newest epoch');
      env.keys = await env.refreshKeys();
      for (const slot of [...unreadable.values()]) take(slot);
      mine = viewOf(membership);
    }
    const now = mine;
    if (peerRecords().some((r) => r.keys !== undefined && compareKeyViews(now, r.keys).hiddenRevocations.length > 0)) {
      env.trace?.('another device verified a revocation this one has not: reading the membership again');
      membership = await opts.keyView.membership();
      mine = viewOf(membership);
    }
  }

  let published = false;
  let pub = memory.published;
  if (digest && opts.publish) {
    const keys = mine?.view;
    const mac = recordMac(env.keys, { cursor: st.cursor, fingerprint: schema.fingerprint, tables: digest.tables, ...(keys ? { keys } : {}) });
    const onRelay = records.get(env.deviceId);
    if (pub === null || pub.mac !== mac || onRelay === undefined || onRelay.seq !== pub.seq) {
      const seq = Math.max(pub?.seq ?? 0, onRelay?.seq ?? 0) + 1;
      const at = env.now();
      const record: DigestRecord = { deviceId: env.deviceId, seq, cursor: st.cursor, fingerprint: schema.fingerprint, tables: digest.tables, ...(keys ? { keys } : {}), at };
      await api.put(sealRecord(env.keys, record, env.random));
      pub = { seq, cursor: st.cursor, fingerprint: schema.fingerprint, mac, at };
      published = true;
    }
  }

  const me = { cursor: st.cursor, fingerprint: schema.fingerprint, tables: digest?.tables ?? null, why };
  const peers: PeerResult[] = devices
    .filter((d) => d.revokedAt === null && d.id !== env.deviceId)
    .sort((a, b) => (a.name === b.name ? (a.id < b.id ? -1 : 1) : a.name < b.name ? -1 : 1))
    .map((d) => {
      const r = records.get(d.id) ?? null;
      const sealedAway = unreadable.has(d.id);
      return {
        deviceId: d.id,
        name: d.name,
        ...compare(me, r, sealedAway),
        cursor: r?.cursor ?? null,
        at: r?.at ?? null,
        keys: mine ? keysOf(mine, r, sealedAway) : null,
      };
    });

  writeDigestMemory(env, {
    format: 1,
    published: pub,
    seen,
    last: {
      at: env.now(),
      cursor: st.cursor,
      comparable: digest !== null,
      devices: peers.map((p) => ({ deviceId: p.deviceId, name: p.name, status: p.status, tablesDiffer: p.tablesDiffer })),
    },
  });
  return {
    deviceId: env.deviceId,
    cursor: st.cursor,
    fingerprint: schema.fingerprint,
    tables: digest?.tables ?? null,
    why,
    rows: digest?.rows ?? 0,
    ms: digest?.ms ?? 0,
    published,
    devices: peers,
    keys: mine ? mine.view : null,
  };
}

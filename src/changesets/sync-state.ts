/**
 * Device-local changeset state (docs/ARCHITECTURE.md §4: never in the synced database):
 * where this device's pushes stand (its last batch seq and hash, for the
 * chain), how far it has pulled the vault (the cursor), the last batch seen
 * from each other device (their chains), and its hybrid logical clock.
 *
 * One file per (vault, database), `CASA_HOME/sync/<vault>/<db key>.json`,
 * written atomically after the database commit it describes: a crash between
 * the two only means re-applying (idempotent) or re-sending (the relay
 * answers "duplicate") what was already done. A batch sealed but not yet
 * acknowledged waits in the outbox beside it, so a retry sends the same bytes.
 */
import { createHmac } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { VaultKeys } from '../crypto/kdf.js';
import { isDeviceId, isSha256Hex } from '../protocol/ids.js';
import { writeFileAtomic } from '../state.js';

export interface ChainHead {
  seq: number;
  hash: string;
}

export interface SyncState {
  format: 1;
  /** This device's last acknowledged batch (seq 0, hash '' before the first). */
  pushed: ChainHead;
  /** Vault-wide cursor: every changeset up to here is applied to the database. */
  cursor: number;
  /** The cursor sync started from (a restore's snapshot watermark): chains begin after it. */
  baseCursor: number;
  /** Last batch applied from each device (including this one's, applied back after a restore). */
  chains: Record<string, ChainHead>;
  /** The clock: the highest HLC wall/counter issued or received. */
  hlc: { wall: number; counter: number };
  lastSyncAt: number | null;
  /** relay clock − local clock at the last sync (ms). */
  clockOffsetMs: number | null;
}

export function emptySyncState(cursor = 0): SyncState {
  return { format: 1, pushed: { seq: 0, hash: '' }, cursor, baseCursor: cursor, chains: {}, hlc: { wall: 0, counter: 0 }, lastSyncAt: null, clockOffsetMs: null };
}

function dbKey(keys: VaultKeys, dbPath: string): string {
  return createHmac('sha256', keys.localIndexKey).update(`sync:${dbPath}`, 'utf8').digest('hex').slice(0, 16);
}

export function syncDir(home: string, keys: VaultKeys): string {
  return join(home, 'sync', keys.vaultId);
}

export function syncStatePath(home: string, keys: VaultKeys, dbPath: string): string {
  return join(syncDir(home, keys), `${dbKey(keys, dbPath)}.json`);
}

function outboxPath(home: string, keys: VaultKeys, dbPath: string): string {
  return join(syncDir(home, keys), `${dbKey(keys, dbPath)}.outbox`);
}

const nat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function validHead(v: unknown): v is ChainHead {
  const h = v as ChainHead;
  return typeof h === 'object' && h !== null && nat(h.seq) && typeof h.hash === 'string' && (h.seq === 0 ? h.hash === '' : isSha256Hex(h.hash));
}

/** The state, or null if there is none. A damaged file is an error: guessing could re-apply or skip batches. */
export function readSyncState(home: string, keys: VaultKeys, dbPath: string): SyncState | null {
  let text: string;
  try {
    text = readFileSync(syncStatePath(home, keys, dbPath), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const s = JSON.parse(text) as SyncState;
  const ok =
    s?.format === 1 &&
    validHead(s.pushed) &&
    nat(s.cursor) &&
    nat(s.baseCursor) &&
    typeof s.chains === 'object' &&
    s.chains !== null &&
    Object.entries(s.chains).every(([id, h]) => isDeviceId(id) && validHead(h)) &&
    nat(s.hlc?.wall) &&
    nat(s.hlc?.counter);
  if (!ok) throw new Error(`${syncStatePath(home, keys, dbPath)} is damaged`);
  return s;
}

export function writeSyncState(home: string, keys: VaultKeys, dbPath: string, s: SyncState): void {
  mkdirSync(syncDir(home, keys), { recursive: true, mode: 0o700 });
  writeFileAtomic(syncStatePath(home, keys, dbPath), JSON.stringify(s), 0o600);
}

/** A sealed batch not yet acknowledged by the relay: the same bytes are sent again. */
export interface Outbox {
  seq: number;
  hash: string;
  /** The local change-log seq the batch covers (dropped from the log once acknowledged). */
  uptoSeq: number;
  hlc: { wall: number; counter: number };
  bytes: Uint8Array;
}

export function readOutbox(home: string, keys: VaultKeys, dbPath: string): Outbox | null {
  let buf: Buffer;
  try {
    buf = readFileSync(outboxPath(home, keys, dbPath));
  } catch {
    return null;
  }
  const n = buf.readUInt32BE(0);
  const meta = JSON.parse(buf.subarray(4, 4 + n).toString('utf8')) as Omit<Outbox, 'bytes'>;
  return { ...meta, bytes: new Uint8Array(buf.subarray(4 + n)) };
}

export function writeOutbox(home: string, keys: VaultKeys, dbPath: string, o: Outbox): void {
  mkdirSync(syncDir(home, keys), { recursive: true, mode: 0o700 });
  const meta = Buffer.from(JSON.stringify({ seq: o.seq, hash: o.hash, uptoSeq: o.uptoSeq, hlc: o.hlc }), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(meta.length, 0);
  writeFileAtomic(outboxPath(home, keys, dbPath), Buffer.concat([head, meta, o.bytes]), 0o600);
}

export function clearOutbox(home: string, keys: VaultKeys, dbPath: string): void {
  rmSync(outboxPath(home, keys, dbPath), { force: true });
}

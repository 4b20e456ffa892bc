/**
 * One round of changeset sync (docs/ARCHITECTURE.md §4): pull every batch after this
 * device's cursor, check each (AEAD, identity, per-device hash chain) and
 * apply them all in one SQLite transaction; then push the local change log
 * as sealed, numbered, chained batches. The relay is distrusted throughout:
 * a dropped, reordered, replayed or altered batch is an IntegrityError and
 * nothing of that round is applied; a relay whose head goes back behind the
 * cursor is a rollback. A batch that does not open becomes its exit code
 * through src/failures.ts (changesetFailure), as a snapshot's objects do.
 *
 * State moves only after what it describes is durable: the database commit
 * before the cursor; the relay's acknowledgement before the pushed seq; the
 * sealed batch is kept in the outbox until then, so a retry sends the same
 * bytes (the relay answers "duplicate").
 */
import type Database from 'better-sqlite3';
import type { VaultKeys } from '../crypto/kdf.js';
import { EpochMarkError, markOf } from '../crypto/keyring.js';
import { bytesToHex } from '../crypto/bytes.js';
import { ConflictError, FailureError, IntegrityError, CancelledError } from '../errors.js';
import { mapCryptoError, objectFailure } from '../failures.js';
import type { Change } from './change.js';
import { decodeChanges, encodeChanges } from './change-codec.js';
import { dropLocalChanges, pendingCount, takeLocalChanges } from './change-log.js';
import { StaleEpochError } from '../relay/changesets.js';
import { BatchChainError, BatchFormatError, checkChain, openBatch, sealBatch, type ChainPoint, type ChainStep, type OpenedBatch } from './batch.js';
import { ChangesetApi, SeqConflictError, type PulledChangeset } from '../relay/changesets.js';
import { ClockSkewError, MAX_SKEW_MS, maxState, parseHlc } from './hlc.js';
import { applyRemote } from './merge.js';
import type { SyncSchema } from './rules.js';
import {
  clearOutbox,
  emptySyncState,
  readOutbox,
  readSyncState,
  writeOutbox,
  writeSyncState,
  type SyncState,
} from './sync-state.js';

/** Changes per pushed batch (a batch stays well under the relay's cap once compressed). */
const PUSH_LIMIT = 20_000;
/** Changes applied in one transaction before the cursor moves (bounds memory on a long catch-up). */
const APPLY_LIMIT = 200_000;

export interface SyncEnv {
  home: string;
  dbPath: string;
  keys: VaultKeys;
  /** The vault's keys again, after the relay said a new epoch began (src/keys/open.ts); the push seals again under them. */
  refreshKeys?: () => Promise<VaultKeys>;
  deviceId: string;
  api: ChangesetApi;
  /** A device token (the live WebSocket takes it as ?token=). */
  token: () => Promise<string>;
  /** relay clock − local clock (ms), from the last relay answer. */
  clockOffsetMs: () => number | null;
  now: () => number;
  random: (n: number) => Uint8Array;
  signal: AbortSignal;
  server: string;
  maxSkewMs?: number;
  trace?: (label: string) => void;
}

export interface SyncRound {
  pushedBatches: number;
  pushedChanges: number;
  pulledBatches: number;
  pulledChanges: number;
  applied: number;
  conflicts: number;
  pending: number;
  cursor: number;
  head: number;
  pendingLocal: number;
}

export function loadSyncState(env: Pick<SyncEnv, 'home' | 'keys' | 'dbPath'>): SyncState {
  try {
    return readSyncState(env.home, env.keys, env.dbPath) ?? emptySyncState(0);
  } catch (err) {
    throw new FailureError((err as Error).message, {
      hints: ['remove the file and restore the database (`casa pull --force`) to start sync over from a snapshot'],
    });
  }
}

/** Refuses to sync when this machine's clock is far from the relay's: its edits would win or lose wrongly. */
export function checkClock(env: SyncEnv): void {
  const off = env.clockOffsetMs();
  const max = env.maxSkewMs ?? MAX_SKEW_MS;
  if (off !== null && Math.abs(off) > max) {
    throw new FailureError(`this machine's clock is ${Math.round(Math.abs(off) / 1000)} s ${off > 0 ? 'behind' : 'ahead of'} the relay's`, {
      code: 'clock_skew',
      hints: ['set the clock right (enable NTP: `timedatectl set-ntp true`), then sync again'],
    });
  }
}

/**
 * A pulled changeset that did not open or apply, as src/failures.ts maps it
 * (the same codes as a snapshot's objects): a broken chain or a malformed
 * or altered batch exit 6, sealed under another key exit 4; a time too far
 * ahead is clock skew (exit 1). Other errors pass through.
 */
export function changesetFailure(err: unknown, what: string, server: string): unknown {
  const source = { server, untouched: 'nothing was applied' };
  if (err instanceof BatchChainError) return objectFailure('broken_chain', what, source, err.message);
  if (err instanceof BatchFormatError) return objectFailure('malformed', what, source);
  if (err instanceof ClockSkewError) {
    return new FailureError(`${what} carries a time ${Math.round(err.skewMs / 1000)} s ahead of this clock`, {
      code: 'clock_skew',
      hints: ["the other device's clock (or this one's) is wrong: fix it, then sync again; nothing was applied"],
    });
  }
  return mapCryptoError(err, what, source);
}

/**
 * One pulled batch checked as every reader checks it (docs/FORMAT.md §7):
 * not sealed under an epoch that had ended by its cursor, opened under the
 * identity the relay claims, its header matching, following `last` in its
 * device's chain (`startAnywhere`: a reader that began after cursor 0), its
 * body decoded strictly. Any failure is thrown as its exit code
 * (changesetFailure: 6, or 4 for another key). A duplicate is not decoded.
 */
export function checkPulled(
  keys: VaultKeys,
  cs: PulledChangeset,
  last: ChainPoint | null,
  startAnywhere: boolean,
  server: string,
): { verdict: ChainStep; opened: OpenedBatch; changes: Change[] } {
  try {
    const mark = markOf(keys, cs.bytes);
    if (mark && cs.cursor > mark.cursor) throw new EpochMarkError(`it is sealed under an epoch that ended at changeset ${mark.cursor}`);
    const opened = openBatch(keys, { deviceId: cs.deviceId, seq: cs.seq }, cs.bytes, null);
    const verdict = checkChain(last, { deviceId: cs.deviceId, seq: cs.seq, prev: opened.header.prev, hash: opened.hash }, { startAnywhere });
    return { verdict, opened, changes: verdict === 'duplicate' ? [] : decodeChanges(opened.body) };
  } catch (err) {
    throw changesetFailure(err, `changeset ${cs.deviceId}/${cs.seq}`, server);
  }
}

/** Pulls and applies every changeset after the cursor; returns what it did. */
export async function pullRound(env: SyncEnv, db: Database.Database, schema: SyncSchema): Promise<Omit<SyncRound, 'pushedBatches' | 'pushedChanges' | 'pendingLocal'>> {
  const out = { pulledBatches: 0, pulledChanges: 0, applied: 0, conflicts: 0, pending: 0, cursor: 0, head: 0 };
  let st = loadSyncState(env);
  for (;;) {
    if (env.signal.aborted) throw new CancelledError();
    const page = await env.api.pull(st.cursor);
    checkClock(env);
    out.head = page.head;
    if (page.head < st.cursor) {
      throw new IntegrityError(`the relay's changeset head (${page.head}) is behind what this device applied (${st.cursor})`, {
        code: 'rollback',
        hints: [`the relay at ${env.server} rolled back or lost data; nothing was applied`],
      });
    }
    if (st.cursor < page.prunedThrough) {
      throw new ConflictError(`this device is behind the changesets the relay still keeps (it pruned up to ${page.prunedThrough}, this device is at ${st.cursor})`, {
        hints: ['run `casa pull` to catch up from the newest snapshot (local changes are pushed first)'],
      });
    }
    if (page.changesets.length === 0) break;

    const chains = { ...st.chains };
    const changes: Change[] = [];
    let cursor = st.cursor;
    for (const cs of page.changesets) {
      // Sealed under keys this device does not hold yet: a new epoch began; take it (src/keys/open.ts), once.
      if (env.refreshKeys && cs.bytes.length >= 16 && !knowsKeyId(env.keys, cs.bytes)) env.keys = await env.refreshKeys();
      if (cs.cursor <= cursor) {
        throw new IntegrityError(`the relay served changeset ${cs.cursor} out of order`, { hints: [`the relay at ${env.server} may be tampering; nothing was applied`] });
      }
      const { verdict, opened, changes: decoded } = checkPulled(env.keys, cs, chains[cs.deviceId] ?? null, st.baseCursor > 0, env.server);
      cursor = cs.cursor;
      if (verdict === 'duplicate') continue;
      chains[cs.deviceId] = { seq: cs.seq, hash: opened.hash };
      for (const c of decoded) changes.push(c);
      out.pulledBatches++;
      if (changes.length >= APPLY_LIMIT) break;
    }
    out.pulledChanges += changes.length;
    if (changes.length > 0) {
      try {
        const r = applyRemote(db, schema, changes, {
          now: env.now() + (env.clockOffsetMs() ?? 0),
          maxSkewMs: env.maxSkewMs ?? MAX_SKEW_MS,
          localDeviceId: env.deviceId,
        });
        out.applied += r.applied;
        out.conflicts += r.conflicts;
        out.pending += r.pending;
      } catch (err) {
        throw changesetFailure(err, `a changeset from ${changes.length} changes`, env.server);
      }
      for (const c of changes) {
        const h = parseHlc(c.hlc);
        st.hlc = maxState(st.hlc, { wall: h.wall, counter: h.counter });
      }
    }
    st = { ...st, cursor, chains, lastSyncAt: env.now(), clockOffsetMs: env.clockOffsetMs() };
    writeSyncState(env.home, env.keys, env.dbPath, st);
    env.trace?.(`pulled through ${cursor}`);
    if (!page.more && cursor >= page.changesets[page.changesets.length - 1]!.cursor) break;
  }
  out.cursor = st.cursor;
  return out;
}

/** Pushes the local change log (and a batch a killed run left in the outbox). */
export async function pushRound(env: SyncEnv, db: Database.Database, schema: SyncSchema): Promise<{ pushedBatches: number; pushedChanges: number }> {
  let st = loadSyncState(env);
  let pushedBatches = 0;
  let pushedChanges = 0;
  const finalize = (o: { seq: number; hash: string; uptoSeq: number; hlc: SyncState['hlc'] }, cursor: number | null) => {
    if (o.seq > st.pushed.seq) {
      st = { ...st, pushed: { seq: o.seq, hash: o.hash }, hlc: o.hlc, lastSyncAt: env.now(), clockOffsetMs: env.clockOffsetMs() };
      // Our own batch right after the cursor: the database already holds everything up to it,
      // so the cursor (and a snapshot's watermark) moves past it now, not at the next pull.
      const mine = st.chains[env.deviceId];
      if (cursor === st.cursor + 1 && (mine ? mine.seq === o.seq - 1 : st.baseCursor === 0 ? o.seq === 1 : true)) {
        st = { ...st, cursor, chains: { ...st.chains, [env.deviceId]: { seq: o.seq, hash: o.hash } } };
      }
      writeSyncState(env.home, env.keys, env.dbPath, st);
    }
    dropLocalChanges(db, o.uptoSeq);
    clearOutbox(env.home, env.keys, env.dbPath);
  };
  const send = async (seq: number, bytes: Uint8Array, hash: string): Promise<{ cursor: number; hash: string }> => {
    try {
      return { cursor: (await env.api.push(seq, bytes)).cursor, hash };
    } catch (err) {
      if (err instanceof StaleEpochError && env.refreshKeys) {
        // A new epoch began: the same batch sealed again under its keys (docs/SECURITY.md §3), once.
        const old = openBatch(env.keys, { deviceId: env.deviceId, seq }, bytes, null);
        env.keys = await env.refreshKeys();
        const again = sealBatch(env.keys, old.header, old.body, env.random);
        const o = readOutbox(env.home, env.keys, env.dbPath);
        if (o && o.seq === seq) writeOutbox(env.home, env.keys, env.dbPath, { ...o, hash: again.hash, bytes: again.bytes });
        return { cursor: (await env.api.push(seq, again.bytes)).cursor, hash: again.hash };
      }
      if (err instanceof SeqConflictError) {
        throw new FailureError(`the relay expects batch ${err.expectedSeq} from this device, not ${seq}`, {
          hints: [
            "this device's sync state is older than the relay's (CASA_HOME restored from a backup?), or the relay lost batches",
            'pair this machine again (`casa pair --code` or `--join`) to sync as a new device',
          ],
        });
      }
      throw err;
    }
  };

  const left = readOutbox(env.home, env.keys, env.dbPath);
  if (left) {
    let cursor: number | null = null;
    let sent = left;
    if (left.seq > st.pushed.seq) {
      const r = await send(left.seq, left.bytes, left.hash);
      cursor = r.cursor;
      sent = { ...left, hash: r.hash };
      pushedBatches++;
    }
    finalize(sent, cursor);
  }
  for (;;) {
    if (env.signal.aborted) throw new CancelledError();
    const taken = takeLocalChanges(db, { deviceId: env.deviceId, state: st.hlc, limit: PUSH_LIMIT });
    if (taken.changes.length === 0) break;
    checkClock(env);
    const seq = st.pushed.seq + 1;
    const sealed = sealBatch(
      env.keys,
      { deviceId: env.deviceId, seq, prev: st.pushed.hash, schema: schema.fingerprint, count: taken.changes.length, time: env.now() },
      encodeChanges(taken.changes),
      env.random,
    );
    const o = { seq, hash: sealed.hash, uptoSeq: taken.uptoSeq, hlc: taken.state, bytes: sealed.bytes };
    writeOutbox(env.home, env.keys, env.dbPath, o);
    const r = await send(seq, sealed.bytes, sealed.hash);
    finalize({ ...o, hash: r.hash }, r.cursor);
    pushedBatches++;
    pushedChanges += taken.changes.length;
    env.trace?.(`pushed batch ${seq} (${taken.changes.length} changes)`);
  }
  return { pushedBatches, pushedChanges };
}

/** A whole round: pull (and apply), then push. */
export async function syncRound(env: SyncEnv, db: Database.Database, schema: SyncSchema): Promise<SyncRound> {
  const pulled = await pullRound(env, db, schema);
  const pushed = await pushRound(env, db, schema);
  // A push right after the cursor moved it: report where this device stands now.
  const cursor = Math.max(pulled.cursor, loadSyncState(env).cursor);
  return { ...pulled, ...pushed, cursor, head: Math.max(pulled.head, cursor), pendingLocal: pendingCount(db) };
}

/** True when `object`'s header names a key id of an epoch these keys hold. */
export function knowsKeyId(keys: VaultKeys, object: Uint8Array): boolean {
  const hex = bytesToHex(object.subarray(8, 16));
  return hex === keys.keyIdHex || Boolean(keys.epochs?.[hex]);
}

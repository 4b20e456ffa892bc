/**
 * What the snapshot commands (snapshots, snapshot, restore, pull, verify)
 * share about the paired vault: opening its snapshot API and keys, listing
 * its snapshots with the rollback check (docs/ARCHITECTURE.md §3: a head
 * older than the highest seq this device has seen, authenticated, is exit
 * 6), and resolving `--snapshot ID`. Not a command: the commands import it.
 *
 * Invariant: only a seq whose manifest this device authenticated is ever
 * recorded as seen (noteVerifiedSeq); the relay's list is not. A head whose
 * manifest does not open is stepped over, never a dead end: the failure
 * names the newest snapshot that does open (openHead; docs/SECURITY.md §6).
 * Also the relay's device list, shape-checked (parseDevices: `casa devices`,
 * and the names `casa history` and `casa log` print).
 */
import { AuthError, CasaError, EXIT, FailureError, IntegrityError, UsageError } from '../errors.js';
import { noteSeenSeq } from '../state.js';
import { updateCompletionCache } from '../completion-cache.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { checkNotRolledBack, SnapshotApi, type SnapshotInfo } from '../relay/snapshots.js';
import { openVaultKeys } from '../keys/open.js';
import type { Manifest } from '../snapshots/manifest.js';
import { formatTime, sanitize } from '../ui/format.js';
import { deviceSession, loadPaired, type Context, type Paired } from './context.js';

export interface OpenVault {
  p: Paired;
  api: SnapshotApi;
  keys: VaultKeys;
}

/** The paired vault's snapshot API and keys (exit 7 unpaired). */
export async function openVault(ctx: Context): Promise<OpenVault> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const keys = await openVaultKeys(ctx, p, session);
  return { p, api: new SnapshotApi(session), keys };
}

/** The relay's snapshot list, checked against the highest seq this device has seen (exit 6 on a rollback). */
export async function listChecked(ctx: Context, v: { p: Paired; api: SnapshotApi }) {
  const list = await v.api.list();
  checkNotRolledBack(list.head, v.p.vault.highestSeq ?? 0, v.p.client.server);
  updateCompletionCache(ctx.globals.home, v.p.vault.vaultId, { snapshots: list.snapshots });
  return list;
}

/**
 * Records a snapshot seq as seen. Only seqs whose manifest this device
 * authenticated (restored, verified) count: the relay's list is not trusted,
 * and a relay that could raise the recorded seq at will could make every
 * honest answer after look like a rollback.
 */
export function noteVerifiedSeq(ctx: Context, seq: number): void {
  noteSeenSeq(ctx.globals.home, seq);
}

/** `--snapshot ID`: a full id or a unique prefix of 6+ characters. */
export function resolveSnapshot(snapshots: SnapshotInfo[], query: string): SnapshotInfo {
  const q = query.trim().toLowerCase();
  if (!/^[0-9a-f]{6,32}$/.test(q)) {
    throw new UsageError(`${JSON.stringify(query)} is not a snapshot id`, {
      hints: ['give the id or a unique prefix of at least 6 characters; `casa snapshots` lists them'],
    });
  }
  const exact = snapshots.find((s) => s.id === q);
  if (exact) return exact;
  const hits = snapshots.filter((s) => s.id.startsWith(q));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new UsageError(`${q} matches ${hits.length} snapshots`, { hints: ['give more characters of the id'] });
  throw new FailureError(`no snapshot ${q} in this vault`, { hints: ['`casa snapshots` lists the snapshots'] });
}

/** The vault has no snapshot to restore, pull or verify. */
export function noSnapshotError(): FailureError {
  return new FailureError('the vault has no snapshot yet', {
    hints: ['run `casa snapshot` on a machine that has the database'],
  });
}

/** A snapshot as the relay listed it, with its manifest fetched and authenticated. */
export interface OpenedSnapshot {
  snap: SnapshotInfo;
  manifest: Manifest;
  /** The manifest's ciphertext bytes (counted as downloaded). */
  bytes: number;
}

/** `snap`'s manifest, fetched and authenticated against its id and seq (src/snapshots/restore.ts fetchManifest: exit 6, or 4 for another key). */
export async function openSnapshot(v: OpenVault, snap: SnapshotInfo): Promise<OpenedSnapshot> {
  // Imported here: `casa snapshots` uses this module and never opens a manifest (nor loads SQLite).
  const { fetchManifest } = await import('../snapshots/restore.js');
  return { snap, ...(await fetchManifest(v.api, v.keys, { id: snap.id, seq: snap.seq })) };
}

/** A manifest that did not open: altered, malformed, lost (exit 6), or sealed under another key (exit 4). */
function unopened(err: unknown): err is CasaError {
  return err instanceof CasaError && err.code !== 'rollback' && (err.exitCode === EXIT.integrity || err.code === 'wrong_key');
}

/**
 * The head's manifest, authenticated. A head whose manifest does not open is
 * stepped over: the older snapshots are tried newest first, and the failure
 * — its exit code and reason unchanged (src/failures.ts: a path only adds
 * context) — names the newest one that does open, with the command that
 * restores it. When none opens, the head's failure is thrown as it was.
 */
export async function openHead(v: OpenVault, head: SnapshotInfo, snapshots: SnapshotInfo[]): Promise<OpenedSnapshot> {
  try {
    return await openSnapshot(v, head);
  } catch (err) {
    if (!unopened(err)) throw err;
    for (const s of [...snapshots].filter((x) => x.seq < head.seq).sort((a, b) => b.seq - a.seq)) {
      let found: OpenedSnapshot;
      try {
        found = await openSnapshot(v, s);
      } catch (e) {
        if (unopened(e)) continue;
        throw e;
      }
      const Class = err.exitCode === EXIT.auth ? AuthError : IntegrityError;
      throw new Class(
        `${err.message}; the newest snapshot that verifies is ${found.snap.id} (seq ${found.manifest.seq}, taken ${formatTime(found.manifest.time)})`,
        {
          code: err.code,
          hints: [`\`casa restore --snapshot ${found.snap.id}\` restores it`, ...err.hints],
          ...(err.relay ? { relay: err.relay } : {}),
          cause: err,
        },
      );
    }
    throw err;
  }
}

/**
 * What `restore` and `pull` say about the snapshot they are about to put in
 * place, from its authenticated manifest (seq, the time and device it was
 * taken on; the device's name is the relay's, shown only when the relay
 * lists that same device, and sanitized): a note on stderr, and a warning
 * when the seq is lower than the highest this device has authenticated.
 */
export function describeSnapshot(ctx: Context, v: OpenVault, o: OpenedSnapshot): void {
  const m = o.manifest;
  const name = o.snap.deviceId === m.deviceId && o.snap.deviceName ? `${sanitize(o.snap.deviceName)} (${m.deviceId})` : m.deviceId;
  const shortId = m.snapshotId.slice(0, 12);
  ctx.out.note(`snapshot ${shortId}: seq ${m.seq}, taken ${formatTime(m.time)} on ${name}`);
  const highest = v.p.vault.highestSeq ?? 0;
  if (m.seq < highest) {
    ctx.out.warn(`snapshot ${shortId} (seq ${m.seq}) is older than snapshot ${highest}, the newest this device has seen`);
  }
}

export interface DeviceInfo {
  id: string;
  name: string;
  created_at: number;
  last_seen_at: number | null;
  revoked_at: number | null;
  current: boolean;
  /** Who certified it: `recovery` (the phrase), another device's id, or null (a device of casa 0.1 not yet upgraded). */
  added_by: string | null;
}

/** The relay's `GET /devices` answer, shape-checked; names are the relay's (sanitize before printing). */
export function parseDevices(doc: Record<string, unknown>, currentId: string, server: string): DeviceInfo[] {
  const list = doc.devices;
  const bad = () => new FailureError(`the relay at ${server} sent a malformed device list`);
  if (!Array.isArray(list)) throw bad();
  return list.map((d: Record<string, unknown>) => {
    if (typeof d?.id !== 'string' || typeof d.name !== 'string' || typeof d.createdAt !== 'number') throw bad();
    return {
      id: d.id,
      name: d.name,
      created_at: d.createdAt,
      last_seen_at: typeof d.lastSeenAt === 'number' ? d.lastSeenAt : null,
      revoked_at: typeof d.revokedAt === 'number' ? d.revokedAt : null,
      current: d.id === currentId,
      added_by: typeof (d.cert as Record<string, unknown> | null)?.issuer === 'string' ? ((d.cert as Record<string, unknown>).issuer as string) : null,
    };
  });
}

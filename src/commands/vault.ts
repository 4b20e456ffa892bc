/**
 * What the snapshot commands (snapshots, snapshot, restore, pull, verify)
 * share about the paired vault: opening its snapshot API and keys, listing
 * its snapshots with the rollback check (docs/ARCHITECTURE.md §3: a head
 * older than the highest seq this device has seen, authenticated, is exit
 * 6), and resolving `--snapshot ID`. Not a command: the commands import it.
 *
 * Invariant: only a seq whose manifest this device authenticated is ever
 * recorded as seen (noteVerifiedSeq); the relay's list is not.
 */
import { FailureError, UsageError } from '../errors.js';
import { noteSeenSeq } from '../state.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { checkNotRolledBack, SnapshotApi, type SnapshotInfo } from '../relay/snapshots.js';
import { openVaultKeys } from '../keys/open.js';
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

/**
 * The relay's snapshot routes (docs/RELAY-API.md "Snapshots"), typed, with
 * every answer's shape checked: a relay that answers nonsense is reported,
 * never trusted. Interpreting *content* (manifests, packs) is the caller's
 * job, through src/snapshots/manifest.ts.
 */
import { IntegrityError } from '../errors.js';
import { isSnapshotId } from '../protocol/ids.js';
import { MAX_PACK_IDS, type SnapshotView } from '../protocol/messages.js';
import { malformedAnswer, mapRelayError, RelayHttpError, type DeviceSession } from './client.js';

/** A snapshot as the relay lists it (shape-checked on arrival). */
export type SnapshotInfo = SnapshotView;

export interface CommitRequest {
  snapshotId: string;
  seq: number;
  parentSeq: number;
  packs: string[];
  dbBytes: number;
  storedBytes: number;
  newBytes: number;
  /** The vault-wide changeset cursor the snapshot includes (the relay takes 0 when omitted). */
  changesetWatermark?: number;
}

export type CommitResult =
  | { ok: true; seq: number; time: number }
  | { ok: false; reason: 'conflict'; head: SnapshotInfo | null }
  | { ok: false; reason: 'missing_packs'; missing: string[] }
  /** The relay has no manifest for the snapshot (an upload lost, or expired): upload again and retry. */
  | { ok: false; reason: 'missing_manifest' };

/** packs/check takes at most this many ids at a time. */
const CHECK_BATCH = MAX_PACK_IDS;

export class SnapshotApi {
  constructor(readonly session: DeviceSession) {}

  private get server(): string {
    return this.session.client.server;
  }

  private malformed(what: string): IntegrityError {
    return malformedAnswer(this.server, what);
  }

  async putPack(id: string, object: Uint8Array): Promise<void> {
    try {
      await this.session.putBytes(`/packs/${id}`, object);
    } catch (err) {
      throw mapRelayError(this.server, err);
    }
  }

  /** The ids the relay does not have (and it touches the ones it has). */
  async missingPacks(ids: string[]): Promise<Set<string>> {
    const missing = new Set<string>();
    for (let i = 0; i < ids.length; i += CHECK_BATCH) {
      const batch = ids.slice(i, i + CHECK_BATCH);
      const d = await this.session.call('POST', '/packs/check', { ids: batch });
      if (!Array.isArray(d.missing) || !d.missing.every((x) => typeof x === 'string' && batch.includes(x))) {
        throw this.malformed('pack check answer');
      }
      for (const m of d.missing as string[]) missing.add(m);
    }
    return missing;
  }

  /**
   * A pack's bytes, into `into` (the result a view of it) when it is long
   * enough (see DeviceSession.getBytes); a pack the relay lost is an
   * integrity failure (the snapshot cannot be restored).
   */
  async getPack(id: string, into?: Uint8Array): Promise<Uint8Array> {
    return this.getBlob(`/packs/${id}`, `pack ${id.slice(0, 12)}`, into);
  }

  async putManifest(snapshotId: string, object: Uint8Array): Promise<void> {
    try {
      await this.session.putBytes(`/snapshots/${snapshotId}/manifest`, object);
    } catch (err) {
      throw mapRelayError(this.server, err);
    }
  }

  async getManifest(snapshotId: string): Promise<Uint8Array> {
    return this.getBlob(`/snapshots/${snapshotId}/manifest`, `the manifest of snapshot ${snapshotId.slice(0, 12)}`);
  }

  private async getBlob(path: string, what: string, into?: Uint8Array): Promise<Uint8Array> {
    try {
      return await this.session.getBytes(path, into);
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === 'not_found') {
        throw new IntegrityError(`the relay has lost ${what}`, {
          hints: ['an older snapshot may still be complete: `casa snapshots` lists them, `casa verify --all` checks them'],
        });
      }
      throw mapRelayError(this.server, err);
    }
  }

  async commit(req: CommitRequest): Promise<CommitResult> {
    try {
      const d = await this.session.request('POST', '/snapshots', req);
      if (d.seq !== req.seq || typeof d.time !== 'number') throw this.malformed('commit answer');
      return { ok: true, seq: req.seq, time: d.time };
    } catch (err) {
      if (err instanceof RelayHttpError && err.status === 409) {
        if (err.code === 'conflict') {
          const h = err.doc.head;
          return { ok: false, reason: 'conflict', head: h === null || h === undefined ? null : this.snapshot(h) };
        }
        if (err.code === 'missing_manifest') return { ok: false, reason: 'missing_manifest' };
        if (err.code === 'missing_packs') {
          const m = err.doc.missing;
          if (!Array.isArray(m) || !m.every((x) => typeof x === 'string')) throw this.malformed('commit answer');
          return { ok: false, reason: 'missing_packs', missing: m as string[] };
        }
      }
      throw mapRelayError(this.server, err);
    }
  }

  async list(): Promise<{ head: SnapshotInfo | null; snapshots: SnapshotInfo[] }> {
    const d = await this.session.call('GET', '/snapshots');
    if (!Array.isArray(d.snapshots)) throw this.malformed('snapshot list');
    const snapshots = d.snapshots.map((s) => this.snapshot(s));
    const head = d.head === null || d.head === undefined ? null : this.snapshot(d.head);
    return { head, snapshots };
  }

  async head(): Promise<SnapshotInfo | null> {
    return this.headOf(await this.session.call('GET', '/snapshots/head'));
  }

  /** The head in an answer that carries one (`/snapshots/head`, `/status`), checked. */
  headOf(d: Record<string, unknown>): SnapshotInfo | null {
    return d.head === null || d.head === undefined ? null : this.snapshot(d.head);
  }

  private snapshot(v: unknown): SnapshotInfo {
    const s = v as Record<string, unknown>;
    const uint = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
    if (
      typeof s !== 'object' ||
      s === null ||
      !isSnapshotId(s.id) ||
      !uint(s.seq) ||
      typeof s.deviceId !== 'string' ||
      !uint(s.time)
    ) {
      throw this.malformed('snapshot record');
    }
    return {
      id: s.id,
      seq: s.seq as number,
      deviceId: s.deviceId,
      deviceName: typeof s.deviceName === 'string' ? s.deviceName : null,
      time: s.time as number,
      dbBytes: uint(s.dbBytes) ? (s.dbBytes as number) : 0,
      storedBytes: uint(s.storedBytes) ? (s.storedBytes as number) : 0,
      newBytes: uint(s.newBytes) ? (s.newBytes as number) : 0,
      packCount: uint(s.packCount) ? (s.packCount as number) : 0,
      // Informational (the manifest carries the authenticated one); absent from relays before changesets.
      ...(uint(s.changesetWatermark) ? { changesetWatermark: s.changesetWatermark as number } : {}),
    };
  }
}

/** docs/ARCHITECTURE.md §3: a head older than the highest seq this device has seen is a rollback. */
export function checkNotRolledBack(head: SnapshotInfo | null, highestSeen: number, server: string): void {
  const seq = head?.seq ?? 0;
  if (seq < highestSeen) {
    throw new IntegrityError(
      `the relay at ${server} serves snapshot ${seq} as the newest, but this device has already seen snapshot ${highestSeen}`,
      {
        code: 'rollback',
        hints: ['the relay lost data or is replaying an old state; do not trust it until this is explained', 'nothing was changed here'],
      },
    );
  }
}

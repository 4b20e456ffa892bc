/**
 * The relay's changeset routes (docs/RELAY-API.md "Changesets"), typed, with
 * every answer checked: the relay is not trusted, so a malformed answer, or
 * one that breaks the cursor rules (cursors after `after`, consecutive from
 * the first one not pruned, none past the head), is an integrity failure
 * here. What a batch *says* is checked by src/changesets/batch.ts (openBatch,
 * checkChain), which is what catches a relay that moves, drops, reorders or
 * replays batches of one device.
 */
import { b64uDecode } from '../crypto/bytes.js';
import { sha256Hex } from '../crypto/sha256.js';
import { ConflictError, IntegrityError } from '../errors.js';
import { isDeviceId, isSha256Hex } from '../protocol/ids.js';
import { CHANGESET_MAX_BYTES, CHANGESET_PULL_MAX_LIMIT, SEQ_HEADER } from '../protocol/messages.js';
import { malformedAnswer, mapRelayError, RelayHttpError, type DeviceSession } from './client.js';

export interface PulledChangeset {
  cursor: number;
  deviceId: string;
  seq: number;
  /** Lowercase hex SHA-256 of `bytes` (checked). */
  sha256: string;
  bytes: Uint8Array;
}

export interface PullResult {
  /** In cursor order, consecutive. */
  changesets: PulledChangeset[];
  /** The vault's last cursor (0 before any batch). */
  head: number;
  /**
   * Every batch up to this cursor was pruned (a snapshot covers it). If it
   * is past the `after` asked for, the batches between are gone for good:
   * restore a snapshot whose changesetWatermark is at least this.
   */
  prunedThrough: number;
  /** More batches after the last one returned: pull again from it. */
  more: boolean;
}

export interface ChangesetHeads {
  head: number;
  prunedThrough: number;
  /** Every device that pushed: its last seq and that batch's cursor. */
  devices: { deviceId: string; seq: number; cursor: number }[];
}

/**
 * The relay refused a push because `seq` is not this device's next seq:
 * `expectedSeq` is the one it takes. The device's own record of its chain
 * is behind (or ahead of) the relay's; going on blindly could fork it.
 */
/** A push sealed under an epoch that is no longer the vault's (docs/RELAY-API.md): take the new keys, seal again. */
export class StaleEpochError extends Error {
  constructor() {
    super('the vault started a new key epoch');
    this.name = 'StaleEpochError';
  }
}

export class SeqConflictError extends ConflictError {
  constructor(
    readonly seq: number,
    readonly expectedSeq: number,
  ) {
    super(`the relay expects changeset ${expectedSeq} from this device, not ${seq}`, {
      hints: ["this device's sync state does not match the relay's; `casa status` shows both"],
    });
  }
}

const uint = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const positive = (x: unknown): x is number => uint(x) && x >= 1;

export class ChangesetApi {
  constructor(readonly session: DeviceSession) {}

  private get server(): string {
    return this.session.client.server;
  }

  private malformed(what: string): IntegrityError {
    return malformedAnswer(this.server, what);
  }

  /**
   * Pushes the sealed batch `bytes` as this device's `seq`. `duplicate`: the
   * relay already had exactly this batch at this seq (a retry whose answer
   * was lost). Throws SeqConflictError when the seq is not the next one.
   */
  async push(seq: number, bytes: Uint8Array): Promise<{ cursor: number; duplicate: boolean }> {
    if (!positive(seq)) throw new RangeError('seq must be a positive integer');
    if (bytes.length === 0 || bytes.length > CHANGESET_MAX_BYTES) throw new RangeError(`a batch is 1 to ${CHANGESET_MAX_BYTES} bytes`);
    let res: { status: number; doc: Record<string, unknown> };
    try {
      res = await this.session.uploadBytes('POST', '/changesets', bytes, { [SEQ_HEADER.toLowerCase()]: String(seq) });
    } catch (err) {
      if (err instanceof RelayHttpError && err.status === 409 && err.code === 'seq_conflict') {
        const expected = err.doc.expectedSeq;
        if (!positive(expected) || expected === seq) throw this.malformed('push answer');
        throw new SeqConflictError(seq, expected);
      }
      if (err instanceof RelayHttpError && err.status === 409 && err.code === 'stale_epoch') throw new StaleEpochError();
      throw mapRelayError(this.server, err);
    }
    const d = res.doc;
    const duplicate = res.status === 200;
    if (!positive(d.cursor) || d.seq !== seq || (duplicate ? d.duplicate !== true : res.status !== 201)) {
      throw this.malformed('push answer');
    }
    return { cursor: d.cursor, duplicate };
  }

  /** The batches after cursor `after`, at most `limit` (relay default 200, at most 500). */
  async pull(after: number, opts: { limit?: number } = {}): Promise<PullResult> {
    if (!uint(after)) throw new RangeError('after must be a non-negative integer');
    const limit = opts.limit;
    if (limit !== undefined && (!positive(limit) || limit > CHANGESET_PULL_MAX_LIMIT)) throw new RangeError(`limit must be 1 to ${CHANGESET_PULL_MAX_LIMIT}`);
    const d = await this.session.call('GET', `/changesets?after=${after}${limit === undefined ? '' : `&limit=${limit}`}`);
    const { head, prunedThrough, more, changesets: list } = d;
    if (!uint(head) || !uint(prunedThrough) || prunedThrough > head || typeof more !== 'boolean' || !Array.isArray(list)) {
      throw this.malformed('changeset list');
    }
    if (list.length > (limit ?? CHANGESET_PULL_MAX_LIMIT)) throw this.malformed('changeset list');
    const changesets: PulledChangeset[] = [];
    // Cursors are given consecutively and pruned from the oldest, so the
    // batches after `after` that the relay still has are exactly
    // max(after, prunedThrough) + 1 … head: a hole is a batch withheld.
    let expected = Math.max(after, prunedThrough) + 1;
    for (const item of list) {
      changesets.push(this.changeset(item, expected, head));
      expected++;
    }
    const next = expected - 1; // the last cursor returned, or where the list would have started
    if (more !== next < head || (list.length === 0 && next < head)) throw this.malformed('changeset list');
    return { changesets, head, prunedThrough, more };
  }

  private changeset(v: unknown, cursor: number, head: number): PulledChangeset {
    const c = v as Record<string, unknown>;
    if (
      typeof c !== 'object' ||
      c === null ||
      c.cursor !== cursor ||
      cursor > head ||
      !isDeviceId(c.deviceId) ||
      !positive(c.seq) ||
      !isSha256Hex(c.sha256) ||
      typeof c.data !== 'string'
    ) {
      throw this.malformed('changeset record');
    }
    let bytes: Uint8Array;
    try {
      bytes = b64uDecode(c.data);
    } catch {
      throw this.malformed('changeset record');
    }
    if (bytes.length === 0 || bytes.length > CHANGESET_MAX_BYTES || sha256Hex(bytes) !== c.sha256) throw this.malformed('changeset record');
    return { cursor, deviceId: c.deviceId, seq: c.seq, sha256: c.sha256, bytes };
  }

  /** The vault's head, what was pruned, and each device's last seq. */
  async heads(): Promise<ChangesetHeads> {
    return this.headsOf(await this.session.call('GET', '/changesets/heads'));
  }

  /** Changeset heads as `/changesets/heads` (or `/status`, under `changesets`) answers them, checked. */
  headsOf(d: Record<string, unknown>): ChangesetHeads {
    if (typeof d !== 'object' || d === null) throw this.malformed('changeset heads');
    const { head, prunedThrough, devices: list } = d;
    if (!uint(head) || !uint(prunedThrough) || prunedThrough > head || !Array.isArray(list)) throw this.malformed('changeset heads');
    const seen = new Set<string>();
    const devices = list.map((v: unknown) => {
      const x = v as Record<string, unknown>;
      if (
        typeof x !== 'object' ||
        x === null ||
        !isDeviceId(x.deviceId) ||
        seen.has(x.deviceId) ||
        !positive(x.seq) ||
        !positive(x.cursor) ||
        x.cursor > head
      ) {
        throw this.malformed('changeset heads');
      }
      seen.add(x.deviceId);
      return { deviceId: x.deviceId, seq: x.seq, cursor: x.cursor };
    });
    return { head, prunedThrough, devices };
  }
}

/**
 * Wire-level pieces shared by the CLI and the relay (worker/ bundles this
 * file too, so it imports nothing from Node): the byte strings that Ed25519
 * signatures cover (docs/FORMAT.md §4, docs/RELAY-API.md) and the error
 * codes the relay answers with.
 */

export type SignedPurpose = 'create-vault' | 'enroll' | 'token';

/** UTF-8("casa/v1/<purpose>\n" + JSON.stringify(fields)): the exact bytes a signature covers. */
export function signedMessage(purpose: SignedPurpose, fields: ReadonlyArray<string | number>): Uint8Array {
  for (const f of fields) {
    if (typeof f !== 'string' && !(typeof f === 'number' && Number.isSafeInteger(f))) {
      throw new TypeError('signed message fields must be strings or safe integers');
    }
  }
  return new TextEncoder().encode(`casa/v1/${purpose}\n${JSON.stringify(fields)}`);
}

/** How far a signed request's time may be from the relay's clock. */
export const SIGNED_TIME_WINDOW_MS = 10 * 60 * 1000;

export type RelayErrorCode =
  | 'missing_packs'
  | 'missing_manifest'
  | 'bad_request'
  | 'unauthorized'
  | 'device_revoked'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'rate_limited'
  /** A changeset push whose seq is not the device's next (docs/RELAY-API.md "Changesets"); the answer carries `expectedSeq`. */
  | 'seq_conflict'
  /** 503: a D1 row names a blob R2 no longer holds (the relay's own inconsistency; retry later). */
  | 'storage_inconsistent'
  | 'internal';

/** The largest sealed changeset batch the relay takes (413 beyond) and a client seals. */
export const CHANGESET_MAX_BYTES = 8 * 1024 * 1024;

export const RELAY_SERVICE = 'casa-relay';
export const TIME_HEADER = 'X-Casa-Time';

/** A snapshot as the relay's API shows it (docs/RELAY-API.md "Snapshots"); the client checks every field it reads. */
export interface SnapshotView {
  id: string;
  seq: number;
  deviceId: string;
  deviceName: string | null;
  time: number;
  dbBytes: number;
  storedBytes: number;
  newBytes: number;
  packCount: number;
  /** The vault-wide changeset cursor the snapshot includes (0: none); absent from relays before changesets. */
  changesetWatermark?: number;
}

/**
 * Wire-level pieces shared by the CLI and the relay (worker/ bundles this
 * file too, so it imports nothing from Node): the byte strings that Ed25519
 * signatures cover (docs/FORMAT.md §4, docs/RELAY-API.md), the error
 * codes the relay answers with, its headers, caps and close codes. The ids
 * both sides check live beside this, in ids.ts.
 */

export type SignedPurpose =
  | 'create-vault'
  | 'enroll'
  | 'token'
  /** A device certificate (docs/FORMAT.md §9): signed by the paper's recovery key or a member device. */
  | 'device-cert'
  /** A revocation statement (§9). */
  | 'revoke'
  /** An epoch record (§9): new keys, the members they were sealed to, the mark. */
  | 'epoch'
  /** A new paper replacing the old one (§9): signed by both. */
  | 'recovery';

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
  /** 409: an upload sealed under an epoch that is no longer the vault's current one (docs/SECURITY.md §3). */
  | 'stale_epoch'
  /** 409: a request's X-Casa-Expect-Epoch is not the vault's current epoch; nothing was done (the answer carries `epoch` and `keyId`). */
  | 'epoch_moved'
  /** 507: the vault reached one of its quotas (docs/RELAY-API.md "Quotas"); the answer carries `quota`, `limit` and `used`; nothing was stored. */
  | 'quota_exceeded'
  | 'internal';

/** The largest sealed changeset batch the relay takes (413 beyond) and a client seals. */
export const CHANGESET_MAX_BYTES = 8 * 1024 * 1024;
/** The most batches one changeset pull returns: the relay's cap on `limit` (docs/RELAY-API.md "Changesets"). */
export const CHANGESET_PULL_MAX_LIMIT = 500;
/** The most pack ids one `packs/check` or commit lists (docs/RELAY-API.md "Snapshots"). */
export const MAX_PACK_IDS = 10_000;
/** The largest sealed digest record: the relay's cap on a device's slot (413 beyond) and a client's on what it seals. */
export const DIGEST_MAX_BYTES = 16 * 1024;

/** The request header naming an upload's lowercase hex SHA-256, which the relay checks on arrival; answers carry it too. */
export const SHA256_HEADER = 'X-Casa-Sha256';
/** The request header naming a changeset push's seq (docs/RELAY-API.md "Changesets"). */
export const SEQ_HEADER = 'X-Casa-Seq';

/**
 * The close code (and reason) with which the vault's live WebSocket drops a
 * revoked device (docs/RELAY-API.md "Authenticated routes"): the client stops, it does
 * not reconnect.
 */
export const WS_CLOSE_DEVICE_REVOKED = 4003;
export const WS_CLOSE_DEVICE_REVOKED_REASON = 'device_revoked';
/**
 * The close code (and reason) of a live socket that did not authenticate: a
 * first message that is not `{"type":"auth","token"}` with a valid token of
 * the vault's, or none within LIVE_AUTH_TIMEOUT_MS (docs/RELAY-API.md).
 */
export const WS_CLOSE_UNAUTHORIZED = 4001;
export const WS_CLOSE_UNAUTHORIZED_REASON = 'unauthorized';
/** How long the relay waits for a live socket's auth message before closing it with 4001. */
export const LIVE_AUTH_TIMEOUT_MS = 10_000;

export const RELAY_SERVICE = 'casa-relay';
export const TIME_HEADER = 'X-Casa-Time';
/**
 * Every authenticated answer names the vault's current key epoch as
 * `EPOCH.KEYID` (KEYID empty at epoch 0), so a device that reuses a token
 * across commands still learns of a new epoch (docs/RELAY-API.md
 * "Authentication"). A request may carry the epoch its keys were opened
 * for in EXPECT_EPOCH_HEADER; the relay then answers 409 epoch_moved,
 * before doing anything, when the vault has moved on.
 */
export const EPOCH_HEADER = 'X-Casa-Epoch';
export const EXPECT_EPOCH_HEADER = 'X-Casa-Expect-Epoch';

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

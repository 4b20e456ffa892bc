/**
 * One failure, one exit code (docs/ARCHITECTURE.md §6, casa(1) EXIT STATUS):
 * each kind of failure is raised for real along every path that can meet it
 * — the command layer's mapping (a stored phrase, a pairing's canary), a
 * snapshot restore (src/snapshots/restore.ts), a sync round
 * (src/changesets/sync-run.ts), the relay client and its capability modules
 * (src/relay/) — and must come out with the same exit code and `--json`
 * reason from each; whether `casa sync --watch` retries it is read from the
 * error's data (src/failures.ts isTransient), never from its message.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { vaultKeysFromRoot, type VaultKeys } from '../../src/crypto/kdf.js';
import { Codec, ObjectType, openObject, sealObject } from '../../src/crypto/objects.js';
import { parsePhrase } from '../../src/crypto/phrase.js';
import { sealBatch } from '../../src/changesets/batch.js';
import { pullRound, type SyncEnv } from '../../src/changesets/sync-run.js';
import { openHistory, updateHistory } from '../../src/changesets/history.js';
import { fetchManifest } from '../../src/snapshots/restore.js';
import { DeviceSession, RelayClient } from '../../src/relay/client.js';
import { ChangesetApi, type PullResult } from '../../src/relay/changesets.js';
import { SnapshotApi } from '../../src/relay/snapshots.js';
import { CasaError, EXIT } from '../../src/errors.js';
import { deviceRevoked, FAILURES, isTransient, mapCryptoError } from '../../src/failures.js';
import { ROOT } from '../helpers/cli.js';

const keys: VaultKeys = vaultKeysFromRoot(new Uint8Array(32).fill(31));
const otherKeys: VaultKeys = vaultKeysFromRoot(new Uint8Array(32).fill(32));
const DEV = '0123456789abcdef';
const SNAPSHOT = 'a'.repeat(32);
const random = (n: number) => new Uint8Array(randomBytes(n));

/** What a path made of a failure. */
async function outcome(raise: () => unknown): Promise<CasaError> {
  let err: unknown;
  try {
    await raise();
  } catch (e) {
    err = e;
  }
  expect(err, 'the path raised nothing').toBeInstanceOf(CasaError);
  return err as CasaError;
}

// ---------------------------------------------------------------- sealed objects

type ObjectFault = 'wrong key' | 'tampered' | 'malformed header';

/** `plaintext` sealed as `type` under `identity`, then spoiled the way `fault` says. */
function spoiled(fault: ObjectFault, type: ObjectType, purpose: 'snapshotKey' | 'changesetKey', identity: string, plaintext: Uint8Array): Uint8Array {
  const k = fault === 'wrong key' ? otherKeys : keys;
  const object = sealObject({ type, codec: Codec.none, keyId: k.keyId, purposeKey: k[purpose], vaultId: keys.vaultId, identity, plaintext, salt: random(32) });
  if (fault === 'tampered') object[object.length - 3]! ^= 1;
  if (fault === 'malformed header') object[0] = 0x58; // not the magic
  return object;
}

const manifestIdentity = `manifest:${SNAPSHOT}:1`;
const batchIdentity = `changeset:${DEV}:1`;

/** The restore path: fetchManifest over an in-memory relay serving `object`. */
function restorePath(object: Uint8Array) {
  const api = { getManifest: async () => object } as unknown as SnapshotApi;
  return () => fetchManifest(api, keys, { id: SNAPSHOT, seq: 1 });
}

let home: string;
beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), 'casa-errors-unit-'));
});
afterAll(() => rmSync(home, { recursive: true, force: true }));

function syncEnv(api: Pick<ChangesetApi, 'pull'>, server = 'http://relay.test'): SyncEnv {
  return {
    home,
    dbPath: join(home, 'never-opened.db'),
    keys,
    deviceId: 'fedcba9876543210',
    api: api as ChangesetApi,
    token: async () => 'token',
    clockOffsetMs: () => null,
    now: Date.now,
    random,
    signal: new AbortController().signal,
    server,
  };
}

/** The sync path: one pull round over a relay serving `bytes` as DEV's batch `seq` (nothing is applied, so no database). */
function syncPath(bytes: Uint8Array, seq = 1) {
  const page: PullResult = { changesets: [{ cursor: 1, deviceId: DEV, seq, sha256: '0'.repeat(64), bytes }], head: 1, prunedThrough: 0, more: false };
  return () => pullRound(syncEnv({ pull: async () => page }), null as never, null as never);
}

/** The history path (`casa history`, `log`, `restore --at`): indexing the same batch into a fresh history index. */
function historyPath(bytes: Uint8Array, seq = 1) {
  const page: PullResult = { changesets: [{ cursor: 1, deviceId: DEV, seq, sha256: '0'.repeat(64), bytes }], head: 1, prunedThrough: 0, more: false };
  return async () => {
    const db = openHistory(join(home, `history-${Math.random().toString(36).slice(2)}.db`), keys.vaultId);
    try {
      await updateHistory(db, { keys, api: { pull: async () => page } as unknown as ChangesetApi, server: 'http://relay.test', signal: new AbortController().signal });
    } finally {
      db.close();
    }
  };
}

/** The command layer's path (a stored phrase, a pairing's canary): the crypto error as opening it throws, then mapCryptoError. */
function commandPath(open: () => unknown) {
  return () => {
    try {
      open();
    } catch (err) {
      throw mapCryptoError(err, 'the object');
    }
  };
}

const plain = new TextEncoder().encode('{"not": "what it should be"}');

interface Row {
  failure: string;
  exit: number;
  reason: string;
  transient: boolean;
  paths: Record<string, () => unknown>;
}

/** Sealed objects: each fault along each path that opens such objects. */
function objectRows(): Row[] {
  const row = (fault: ObjectFault, exit: number, reason: string): Row => ({
    failure: `an object: ${fault}`,
    exit,
    reason,
    transient: false,
    paths: {
      'command (mapCryptoError)': commandPath(() => {
        throw lastError(() => openSync(ObjectType.manifest, 'snapshotKey', manifestIdentity, spoiled(fault, ObjectType.manifest, 'snapshotKey', manifestIdentity, plain)));
      }),
      'restore (a manifest)': restorePath(spoiled(fault, ObjectType.manifest, 'snapshotKey', manifestIdentity, plain)),
      'sync (a pulled batch)': syncPath(spoiled(fault, ObjectType.changeset, 'changesetKey', batchIdentity, plain)),
      'history (a pulled batch)': historyPath(spoiled(fault, ObjectType.changeset, 'changesetKey', batchIdentity, plain)),
    },
  });
  return [
    // casa(1): 4 "wrong phrase, …"; casa-restore(1), casa-pull(1), casa-sync(1): 4 "an object sealed under another key" / "wrong key".
    row('wrong key', EXIT.auth, 'wrong_key'),
    // casa(1): 6 "integrity failure: tampering, corruption or rollback".
    row('tampered', EXIT.integrity, 'integrity'),
    row('malformed header', EXIT.integrity, 'integrity'),
  ];
}

/** Opens `object` as the command layer would any sealed object of this vault. */
function openSync(type: ObjectType, purpose: 'snapshotKey' | 'changesetKey', identity: string, object: Uint8Array): unknown {
  return openObject({ type, keyId: keys.keyId, purposeKey: keys[purpose], vaultId: keys.vaultId, identity, object, maxPlaintext: 1 << 20 });
}

function lastError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected the object not to open');
}

/** Objects that open but break what their room expects of them, and the chain. */
function engineRows(): Row[] {
  const sealedAs = (type: ObjectType, purpose: 'snapshotKey' | 'changesetKey', identity: string, plaintext: Uint8Array) =>
    sealObject({ type, codec: Codec.none, keyId: keys.keyId, purposeKey: keys[purpose], vaultId: keys.vaultId, identity, plaintext, salt: random(32) });
  const second = sealBatch(keys, { deviceId: DEV, seq: 2, prev: 'b'.repeat(64), schema: 'fp', count: 1, time: 1 }, plain, random);
  return [
    {
      failure: 'an authenticated object its room cannot read (ManifestError, BatchFormatError)',
      exit: EXIT.integrity,
      reason: 'integrity',
      transient: false,
      paths: {
        'restore (a manifest that is not JSON)': restorePath(sealedAs(ObjectType.manifest, 'snapshotKey', manifestIdentity, plain.subarray(0, 5))),
        'sync (a batch without a header)': syncPath(sealedAs(ObjectType.changeset, 'changesetKey', batchIdentity, plain.subarray(0, 2))),
        'history (a batch without a header)': historyPath(sealedAs(ObjectType.changeset, 'changesetKey', batchIdentity, plain.subarray(0, 2))),
      },
    },
    {
      failure: 'a dropped changeset (BatchChainError)',
      exit: EXIT.integrity,
      reason: 'integrity',
      transient: false,
      paths: { 'sync (batch 2 first)': syncPath(second.bytes, 2), 'history (batch 2 first)': historyPath(second.bytes, 2) },
    },
    {
      failure: 'a wrong phrase (PhraseError)',
      exit: EXIT.auth,
      reason: 'wrong_phrase',
      transient: false,
      paths: {
        'command (mapCryptoError)': commandPath(() => parsePhrase('abandon '.repeat(23) + 'zzzz')),
      },
    },
  ];
}

// ---------------------------------------------------------------- relay answers

/** What the test relay answers on the vault's routes (the token routes always work). */
let answer: { status: number; body: string; headers?: Record<string, string> } = { status: 200, body: '{}' };
let server: Server;
let url: string;
let downUrl: string;
const VAULT = 'c'.repeat(32);

beforeAll(async () => {
  server = createServer((req, res) => {
    const json = (status: number, doc: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(doc));
    if (req.url?.endsWith('/auth/challenge')) return json(200, { challenge: 'ch' });
    if (req.url?.endsWith('/auth/token')) return json(200, { token: 'tk', expiresAt: Date.now() + 300_000 });
    res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers }).end(answer.body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  // A port nothing listens on: taken, then given back.
  const gone = createServer();
  await new Promise<void>((r) => gone.listen(0, '127.0.0.1', r));
  downUrl = `http://127.0.0.1:${(gone.address() as { port: number }).port}`;
  await new Promise<void>((r) => gone.close(() => r()));
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

/** Every path a relay answer takes to a command: the client, a capability module (JSON, bytes), a sync round. */
function relayPaths(base: () => string): Record<string, () => unknown> {
  const session = () => new DeviceSession(new RelayClient(base()), VAULT, DEV, new Uint8Array(32).fill(5));
  return {
    'client (RelayClient.call)': () => new RelayClient(base()).call('GET', '/v1/health'),
    'changesets (ChangesetApi.pull)': () => new ChangesetApi(session()).pull(0),
    'snapshots (SnapshotApi.getManifest, bytes)': () => new SnapshotApi(session()).getManifest(SNAPSHOT),
    'sync round (pullRound)': () => pullRound(syncEnv(new ChangesetApi(session()), base()), null as never, null as never),
  };
}

const relayError = (status: number, code: string, headers?: Record<string, string>) => ({
  status,
  body: JSON.stringify({ error: { code, message: `${code} for the test` } }),
  headers,
});

interface RelayRow {
  failure: string;
  answer: typeof answer;
  exit: number;
  reason: string;
  transient: boolean;
  /** The relay's status kept on the error as data (undefined: no answer, or not a relay's). */
  status?: number;
  down?: boolean;
  /** The paths this answer means this on (default: all). */
  only?: string[];
}

const relayRows: RelayRow[] = [
  // casa(1): 1 "failure": the relay failed; --watch retries it.
  { failure: 'relay 500', answer: relayError(500, 'internal'), exit: EXIT.failure, reason: 'failure', transient: true, status: 500 },
  { failure: 'relay 503', answer: relayError(503, 'unavailable'), exit: EXIT.failure, reason: 'failure', transient: true, status: 503 },
  { failure: 'relay 429', answer: relayError(429, 'rate_limited', { 'retry-after': '7' }), exit: EXIT.failure, reason: 'rate_limited', transient: true, status: 429 },
  // A quota the operator set (docs/RELAY-API.md "Quotas"): 1, and never retried by --watch although its status is 5xx.
  { failure: 'relay 507 quota', answer: relayError(507, 'quota_exceeded'), exit: EXIT.failure, reason: 'quota_exceeded', transient: false, status: 507 },
  // casa(1): 4 "wrong phrase, unknown vault, revoked device".
  { failure: 'relay 401', answer: relayError(401, 'unauthorized'), exit: EXIT.auth, reason: 'auth_failed', transient: false, status: 401 },
  { failure: 'relay 403 revoked', answer: relayError(403, 'device_revoked'), exit: EXIT.auth, reason: 'device_revoked', transient: false, status: 403 },
  // A 404 on a vault route: the vault or the device is unknown (a 404 for a snapshot's blob means it was lost: below).
  { failure: 'relay 404', answer: relayError(404, 'not_found'), exit: EXIT.auth, reason: 'unknown_vault', transient: false, status: 404, only: ['client', 'changesets', 'sync round'] },
  // casa(1): 6: an answer without the shape the protocol says is treated as tampering.
  { failure: 'a malformed answer', answer: { status: 200, body: '{"head": -1}' }, exit: EXIT.integrity, reason: 'integrity', transient: false, only: ['changesets', 'sync round'] },
  // Any other refusal: 1.
  { failure: 'relay 400', answer: relayError(400, 'bad_request'), exit: EXIT.failure, reason: 'failure', transient: false, status: 400 },
  // casa(1): 5 "relay unreachable, or what answered is not a casa relay"; --watch retries only the first.
  { failure: 'a server that is not a casa relay', answer: { status: 502, body: '<html>bad gateway</html>' }, exit: EXIT.unreachable, reason: 'relay_protocol', transient: false },
  { failure: 'relay unreachable', answer: { status: 200, body: '{}' }, exit: EXIT.unreachable, reason: 'relay_unreachable', transient: true, down: true },
];

// ---------------------------------------------------------------- the table

describe('one failure, one exit code and reason, whichever path meets it', () => {
  for (const row of [...objectRows(), ...engineRows()]) {
    describe(row.failure, () => {
      for (const [path, raise] of Object.entries(row.paths)) {
        it(`${path}: exit ${row.exit} (${row.reason})`, async () => {
          const err = await outcome(raise);
          expect({ exit: err.exitCode, reason: err.code, transient: isTransient(err) }).toEqual({ exit: row.exit, reason: row.reason, transient: row.transient });
        });
      }
    });
  }

  for (const row of relayRows) {
    describe(row.failure, () => {
      for (const [path, raise] of Object.entries(relayPaths(() => (row.down ? downUrl : url)))) {
        if (row.only && !row.only.some((p) => path.startsWith(p))) continue;
        it(`${path}: exit ${row.exit} (${row.reason})${row.transient ? ', retried by --watch' : ''}`, async () => {
          answer = row.answer;
          const err = await outcome(raise);
          expect({ exit: err.exitCode, reason: err.code, transient: isTransient(err) }).toEqual({ exit: row.exit, reason: row.reason, transient: row.transient });
          expect(err.relay?.status).toBe(row.status);
        });
      }
    });
  }

  it("a 404 for a snapshot's manifest or pack: the relay lost it, exit 6 (casa-restore(1))", async () => {
    answer = relayError(404, 'not_found');
    const err = await outcome(relayPaths(() => url)['snapshots (SnapshotApi.getManifest, bytes)']!);
    expect({ exit: err.exitCode, reason: err.code }).toEqual({ exit: EXIT.integrity, reason: 'integrity' });
    expect(err.message).toMatch(/^the relay has lost the manifest of snapshot/);
  });

  it('a live socket closed as revoked means what a 403 revoked means', () => {
    const err = deviceRevoked();
    expect({ exit: err.exitCode, reason: err.code, transient: isTransient(err) }).toEqual({ exit: EXIT.auth, reason: 'device_revoked', transient: false });
  });

  it('the same wrong key says the same thing from a restore and from a sync', async () => {
    const a = await outcome(restorePath(spoiled('wrong key', ObjectType.manifest, 'snapshotKey', manifestIdentity, plain)));
    const b = await outcome(syncPath(spoiled('wrong key', ObjectType.changeset, 'changesetKey', batchIdentity, plain)));
    expect(a.message).toMatch(/^the manifest of snapshot a{12} was encrypted with another key$/);
    expect(b.message).toMatch(new RegExp(`^changeset ${DEV}/1 was encrypted with another key$`));
    expect(b.hints.join(' ')).toContain('http://relay.test');
  });
});

describe('retrying is decided from data, never from message text', () => {
  it('a failure whose message reads like a 5xx is not retried', () => {
    expect(isTransient(new CasaError(EXIT.failure, 'the relay failed (503 unavailable)'))).toBe(false);
  });

  it('neither are errors that are not CasaErrors', () => {
    expect(isTransient(new Error('cannot reach the relay'))).toBe(false);
    expect(isTransient(undefined)).toBe(false);
  });
});

describe('the table is casa(1)', () => {
  it('every exit code of FAILURES is documented in EXIT STATUS', () => {
    const man = readFileSync(join(ROOT, 'man/casa.1'), 'utf8');
    const section = man.slice(man.indexOf('.SH EXIT STATUS'), man.indexOf('.SH ENVIRONMENT'));
    const documented = new Set([...section.matchAll(/^\.B (\d+)$/gm)].map((m) => Number(m[1])));
    for (const [kind, { exit }] of Object.entries(FAILURES)) expect(documented.has(exit), kind).toBe(true);
  });
});

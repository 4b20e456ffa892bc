/**
 * The vault keys a command uses (docs/SECURITY.md §2): the keyring from the
 * keystore, brought up to the epoch the relay names (its records checked,
 * src/keys/epochs.ts), or made from the phrase once for a format-1 vault
 * (the upgrade, docs/FORMAT.md §9). A relay naming an older epoch than this
 * device verified is a rollback (exit 6).
 */
import { b64uEncode } from '../crypto/bytes.js';
import { deriveRoot, type VaultKeys } from '../crypto/kdf.js';
import { currentEpoch, deviceExchangeKey, legacyKeyring, recoveryKeys, type RecoveryKeys } from '../crypto/keyring.js';
import { FailureError, IntegrityError } from '../errors.js';
import { failure, mapCryptoError } from '../failures.js';
import { RECOVERY } from '../protocol/membership.js';
import type { DeviceSession } from '../relay/client.js';
import { readState, SECRET_PHRASE, SECRET_ROOT_KEY, writeState, type PairedPaper } from '../state.js';
import type { Keystore } from '../keystore/index.js';
import type { PairedVault } from '../state.js';

/** What these functions need of a command's context and paired home (src/commands/context.ts has both). */
interface Context {
  globals: { home: string };
  deps: { now: () => number };
  out: { note(line: string): void };
}
interface Paired {
  vault: PairedVault;
  keystore: Keystore;
}
import { EpochMovedError, keysOf, loadRing, makeCert, pickUp, postEpoch, saveRing, verifiedMembers, type KeyEnv, type StoredRing } from './epochs.js';

/** The key operations' environment; the device key is the session's (read from the keystore once per command). */
export async function keyEnv(ctx: Context, p: Paired, session: DeviceSession): Promise<KeyEnv> {
  const vault = readState(ctx.globals.home)?.vault ?? p.vault;
  return {
    home: ctx.globals.home,
    vaultId: p.vault.vaultId,
    deviceId: p.vault.deviceId,
    keystore: p.keystore,
    session,
    deviceSeed: session.deviceSeed,
    now: ctx.deps.now,
    note: (line) => ctx.out.note(line),
    ...(vault.paper ? { paper: vault.paper } : {}),
    knownRevoked: [...(vault.revoked ?? [])],
  };
}

/** The keys of the vault's current epoch (older epochs' by key id), picked up or upgraded as needed. */
export async function openVaultKeys(ctx: Context, p: Paired, session: DeviceSession): Promise<VaultKeys> {
  const env = await keyEnv(ctx, p, session);
  let stored = await loadRing(p.keystore);
  await session.getToken();
  const held0 = stored && env.paper ? currentEpoch(stored.ring) : null;
  const named = session.relayEpoch;
  // A token kept from an earlier command names the epoch the relay answered with then: decide from a fresh answer unless it is the one held.
  if (session.reusedToken && (held0 === null || named === null || named.epoch !== held0.epoch || named.keyId !== held0.keyIdHex)) {
    session.forgetToken();
    await session.getToken();
  }
  const relay = session.relayEpoch ?? { epoch: 0, keyId: '' };
  if (!stored || !env.paper || relay.epoch === 0) {
    stored = await upgrade(env, stored);
    return keysOf(stored);
  }
  // The keyring is the record of the newest epoch this device verified: an older one from the relay is a rollback.
  const held = currentEpoch(stored.ring);
  if (relay.epoch < held.epoch) {
    throw failure('rollback', `the relay names epoch ${relay.epoch}, but this device verified epoch ${held.epoch}`, {
      hints: ['the relay lost or rolled back its records; nothing was read or written'],
    });
  }
  if (relay.epoch === held.epoch) {
    if (relay.keyId !== held.keyIdHex) throw new IntegrityError(`the relay names other keys for epoch ${held.epoch} than this device holds`);
    return keysOf(stored);
  }
  const picked = await pickUp(env, stored, { id: env.deviceId, exchange: deviceExchangeKey(env.deviceSeed) }, env.paper);
  await saveRing(p.keystore, picked.stored);
  const by = picked.epoch.issuer === RECOVERY ? 'the recovery phrase' : (picked.members.certified.get(picked.epoch.issuer)?.name ?? picked.epoch.issuer);
  ctx.out.note(`picked up the vault's new keys (epoch ${picked.epoch.epoch}, started by ${by})`);
  return keysOf(picked.stored);
}

/**
 * openVaultKeys, and what a command that changes the vault's keys needs
 * with them (`casa devices revoke`, `casa rotate`): the key environment, the
 * keyring as stored, the paper this device trusts.
 */
export async function openKeyring(ctx: Context, p: Paired, session: DeviceSession): Promise<{ keys: VaultKeys; env: KeyEnv; held: StoredRing; paper: PairedPaper }> {
  const keys = await openVaultKeys(ctx, p, session);
  const env = await keyEnv(ctx, p, session);
  const held = await loadRing(p.keystore);
  // openVaultKeys leaves both in place (it upgrades a format-1 device first): their absence is a damaged home.
  if (!held || !env.paper) throw new FailureError(`this device's keyring or the recovery phrase's public keys are missing from ${ctx.globals.home}`, { hints: ['pair this device again (`casa pair --join`, or a code from another device)'] });
  return { keys, env, held, paper: env.paper };
}

/**
 * The vault's membership as this device verifies it now, from signed records
 * only (src/keys/verify.ts): the device ids it holds revoked (the records
 * that verify, and those it remembers) and its members. For the key view of
 * `casa verify --sync` (src/changesets/key-view.ts); call after
 * openVaultKeys (which records the paper of a format-1 device).
 */
export async function membershipView(ctx: Context, p: Paired, session: DeviceSession): Promise<{ revoked: string[]; members: string[] }> {
  const env = await keyEnv(ctx, p, session);
  if (!env.paper) throw new FailureError(`the recovery phrase's public keys are missing from ${ctx.globals.home}`, { hints: ['pair this device again (`casa pair --join`, or a code from another device)'] });
  const { m } = await verifiedMembers(env, env.paper);
  return { revoked: [...new Set([...m.revoked.keys(), ...env.knownRevoked])].sort(), members: [...m.members].sort() };
}

/**
 * A format-1 device (no keyring, or no paper recorded): from the phrase it
 * holds, certify itself and take the vault's epoch 1 (posting it when the
 * vault has none yet), then forget the phrase and its root key
 * (docs/SECURITY.md §8: a device that keeps the paper is the paper).
 */
async function upgrade(env: KeyEnv, stored: StoredRing | null): Promise<StoredRing> {
  const phrase = await env.keystore.get(SECRET_PHRASE);
  if (!phrase) {
    if (stored && env.paper) {
      throw new IntegrityError('the relay says this vault has no key epochs, but this device holds them', { hints: ['the relay lost its records; nothing was read or written'] });
    }
    await env.keystore.probe();
    throw new FailureError(`the vault's keyring is not in the ${env.keystore.kind} keystore`, {
      hints: ['pair this device again: `casa pair --join` with the recovery phrase, or a pairing code from another device'],
    });
  }
  let root: Uint8Array;
  try {
    root = deriveRoot(phrase);
  } catch (err) {
    throw mapCryptoError(err, 'the stored phrase');
  }
  const legacy = legacyKeyring(root);
  if (legacy.vaultId !== env.vaultId) {
    throw failure('wrong_key', 'the phrase in the keystore belongs to another vault', { hints: ['join the vault again with `casa pair --join`'] });
  }
  const paperKeys = recoveryKeys(root);
  const paper: PairedPaper = { authKey: b64uEncode(paperKeys.authPublicKey), exchangeKey: b64uEncode(paperKeys.exchange.publicKey), n: 0 };
  const { stored: result } = await joinWithPaper(env, paperKeys, { legacy: { ring: legacy, marks: {} }, name: readState(env.home)?.vault?.deviceName ?? 'device' });
  await env.keystore.delete(SECRET_ROOT_KEY);
  await env.keystore.delete(SECRET_PHRASE);
  const st = readState(env.home);
  if (st?.vault) writeState(env.home, { ...st, vault: { ...st.vault, paper, keyIdHex: currentEpoch(result.ring).keyIdHex } });
  env.note('this vault now uses key epochs: this device no longer keeps the recovery phrase (your paper is the copy; `casa rotate --phrase` replaces it)');
  return result;
}

/**
 * With the paper's keys: certify this device (already enrolled), then take
 * the vault's keys — epoch 1 posted from `legacy` when the vault has none
 * (a format-1 vault), else the newest epoch opened from the paper's wrap.
 */
export async function joinWithPaper(env: KeyEnv, paperKeys: RecoveryKeys, opts: { legacy?: StoredRing; name: string; certify?: boolean }): Promise<{ stored: StoredRing; paper: PairedPaper }> {
  const paper: PairedPaper = { authKey: b64uEncode(paperKeys.authPublicKey), exchangeKey: b64uEncode(paperKeys.exchange.publicKey), n: await paperNumber(env, b64uEncode(paperKeys.authPublicKey)) };
  const relayTime = () => env.now() + (env.session.client.clockOffsetMs ?? 0);
  if (opts.legacy && opts.certify !== false) {
    const cert = makeCert({ vaultId: env.vaultId, deviceSeed: env.deviceSeed, deviceId: env.deviceId, name: opts.name, issuedAt: relayTime(), issuer: RECOVERY, issuerSeed: paperKeys.authSeed });
    await env.session.call('PUT', `/devices/${env.deviceId}/cert`, { cert });
  }
  env.session.forgetToken();
  await env.session.getToken();
  const relay = env.session.relayEpoch ?? { epoch: 0, keyId: '' };
  if (relay.epoch === 0) {
    if (!opts.legacy) throw new IntegrityError('the relay says this vault has no keys yet');
    // Epoch 1 of a format-1 vault: its phrase-derived keys, posted by the paper (the first device to upgrade wins).
    try {
      return { stored: await postFirstEpoch(env, opts.legacy, paper, paperKeys), paper };
    } catch (err) {
      // Another device of the vault upgraded it first: take its epoch 1 from the paper's wrap.
      if (!(err instanceof EpochMovedError)) throw err;
      env.session.forgetToken();
    }
  }
  const picked = await pickUp(env, null, { id: RECOVERY, exchange: paperKeys.exchange }, paper);
  await saveRing(env.keystore, picked.stored);
  return { stored: picked.stored, paper };
}

/** How many times the paper was replaced before this one (0 for the vault's first paper): the replacement record naming its key. */
async function paperNumber(env: KeyEnv, authKey: string): Promise<number> {
  const doc = await env.session.call('GET', '/recovery');
  const records = Array.isArray(doc.records) ? (doc.records as Record<string, unknown>[]) : [];
  const mine = records.find((r) => r.authKey === authKey && typeof r.n === 'number');
  return mine ? (mine.n as number) : 0;
}

/** Epoch 1, signed by the paper, sealed to this device and the paper. */
export async function postFirstEpoch(env: KeyEnv, first: StoredRing, paper: PairedPaper, paperKeys: RecoveryKeys): Promise<StoredRing> {
  await postEpoch(env, first.ring, {
    prevKeyId: '',
    recipients: [
      { id: env.deviceId, exchangePublicKey: deviceExchangeKey(env.deviceSeed).publicKey },
      { id: RECOVERY, exchangePublicKey: paperKeys.exchange.publicKey },
    ],
    recoveryKey: paper.exchangeKey,
    issuer: RECOVERY,
    signerSeed: paperKeys.authSeed,
  });
  await saveRing(env.keystore, first);
  env.session.forgetToken();
  return first;
}

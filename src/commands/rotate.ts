/**
 * `casa rotate`: a new key epoch (docs/SECURITY.md §2): fresh data keys,
 * sealed to every verified member and to the paper; everything written from
 * then on is sealed under them. `casa rotate --phrase` replaces the paper:
 * it asks for the current phrase (a device does not hold it, so a thief
 * with an unlocked device cannot do this), shows the new one once, and in
 * one relay transaction records the replacement (signed by the old paper
 * and the new) and an epoch sealed to the new paper; the old paper's key
 * wraps are deleted, so it opens nothing on the relay any more. Every
 * member is then certified again by the new paper.
 */
import { existsSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { b64uEncode } from '../crypto/bytes.js';
import { deriveRoot } from '../crypto/kdf.js';
import { recoveryKeys } from '../crypto/keyring.js';
import { generatePhrase } from '../crypto/phrase.js';
import { signPurpose } from '../crypto/sign.js';
import { AuthError, UsageError } from '../errors.js';
import { startEpoch, verifiedMembers, vouchFor } from '../keys/epochs.js';
import { openKeyring } from '../keys/open.js';
import { RECOVERY, recoveryFields } from '../protocol/membership.js';
import { readState, SECRET_PHRASE, writeState } from '../state.js';
import { sanitize as printable } from '../ui/format.js';
import { deviceSession, loadPaired, type Context } from './context.js';
import { readPhrase, showAndConfirm, writePhraseFile } from './pair.js';

export interface RotateOptions {
  phrase?: boolean;
  phraseStdin?: boolean;
  phraseFile?: string;
  phraseOut?: string;
}

export async function runRotate(ctx: Context, o: RotateOptions): Promise<void> {
  if (!o.phrase && (o.phraseStdin || o.phraseFile !== undefined || o.phraseOut !== undefined)) {
    throw new UsageError('the phrase options go with --phrase');
  }
  if (o.phraseStdin && o.phraseFile !== undefined) throw new UsageError('--phrase-stdin and --phrase-file cannot be used together');
  const phraseOut = o.phraseOut === undefined ? undefined : resolve(o.phraseOut);
  if (phraseOut !== undefined && existsSync(phraseOut)) {
    throw new UsageError(`${phraseOut} already exists; casa never overwrites a file with the phrase`, { hints: ['give --phrase-out a path that does not exist yet'] });
  }
  if (o.phrase && phraseOut === undefined && !ctx.out.interactive) {
    throw new UsageError('without a terminal, `casa rotate --phrase` needs --phrase-out FILE', { hints: ['the new phrase is shown once on a terminal, or written (0600) to the file you name'] });
  }
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const { env, held, paper } = await openKeyring(ctx, p, session);

  if (!o.phrase) {
    const r = await startEpoch(env, held, paper);
    ctx.out.print(`new keys (epoch ${r.epoch}) sealed to ${r.sealedTo.map(printable).join(', ')}`);
    ctx.out.result({ message_type: 'rotated', vault_id: p.vault.vaultId, epoch: r.epoch, sealed_to: r.sealedTo });
    return;
  }

  // The current paper, proved by deriving its key.
  const current = await readPhrase(ctx, { phraseStdin: Boolean(o.phraseStdin), ...(o.phraseFile !== undefined ? { phraseFile: o.phraseFile } : {}) });
  const oldKeys = recoveryKeys(deriveRoot(current));
  if (b64uEncode(oldKeys.authPublicKey) !== paper.authKey) {
    throw new AuthError("that is not this vault's current recovery phrase", { code: 'wrong_phrase', hints: ['only the newest phrase can replace itself'] });
  }
  const phrase = generatePhrase(ctx.deps.random);
  if (phraseOut !== undefined) writePhraseFile(phraseOut, phrase);
  try {
    if (phraseOut === undefined) await showAndConfirm(ctx, phrase);
    const newKeys = recoveryKeys(deriveRoot(phrase));
    const { m } = await verifiedMembers(env, paper);
    const unsigned = {
      vaultId: p.vault.vaultId,
      n: paper.n + 1,
      recoveryId: newKeys.recoveryId,
      authKey: b64uEncode(newKeys.authPublicKey),
      exchangeKey: b64uEncode(newKeys.exchange.publicKey),
      members: [...m.members].sort().join(','),
      time: ctx.deps.now() + (p.client.clockOffsetMs ?? 0),
    };
    const recovery = {
      ...unsigned,
      signatureOld: b64uEncode(signPurpose(oldKeys.authSeed, 'recovery', recoveryFields(unsigned))),
      signatureNew: b64uEncode(signPurpose(newKeys.authSeed, 'recovery', recoveryFields(unsigned))),
    };
    const r = await startEpoch(env, held, paper, {
      recoveryExchangeKey: unsigned.exchangeKey,
      post: async (epoch) => {
        await session.request('POST', '/recovery', { recovery, epoch });
      },
    });
    const newPaper = { authKey: unsigned.authKey, exchangeKey: unsigned.exchangeKey, n: unsigned.n };
    const st = readState(ctx.globals.home);
    if (st?.vault) writeState(ctx.globals.home, { ...st, vault: { ...st.vault, paper: newPaper } });
    // Every member certified again by the new paper (the old paper's certificates count only for these members).
    for (const id of m.members) {
      const c = m.certified.get(id)!;
      const cert = vouchFor({ vaultId: c.vaultId, deviceId: c.deviceId, signingKey: c.signingKey, exchangeKey: c.exchangeKey, name: c.name, issuedAt: unsigned.time, issuer: RECOVERY, issuerSeed: newKeys.authSeed });
      await session.call('PUT', `/devices/${id}/cert`, { cert }).catch(() => ctx.out.warn(`could not certify ${printable(c.name)} (${id}) with the new phrase; its old certificate still counts`));
    }
    if (await p.keystore.get(SECRET_PHRASE)) await p.keystore.set(SECRET_PHRASE, phrase);
    ctx.out.print(
      [
        `recovery phrase replaced; new keys (epoch ${r.epoch}) sealed to ${r.sealedTo.map(printable).join(', ')}`,
        'the old phrase opens nothing on the relay any more: destroy it',
        ...(phraseOut !== undefined ? [`new recovery phrase written to ${phraseOut}: store it offline, then delete the file`] : []),
      ].join('\n'),
    );
    ctx.out.result({ message_type: 'phrase_replaced', vault_id: p.vault.vaultId, epoch: r.epoch, sealed_to: r.sealedTo, ...(phraseOut !== undefined ? { phrase_file: phraseOut } : {}) });
  } catch (err) {
    if (phraseOut !== undefined) rmSync(phraseOut, { force: true });
    throw err;
  }
}

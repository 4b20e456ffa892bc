/**
 * A lost or stolen device, tried as a user would (docs/SECURITY.md §4):
 * spawned CLIs, the real relay in workerd, file keystores. Revocation locks
 * the device out for good while the others carry on with nothing to type;
 * the relay cannot slip in a device of its own; one device's commits cannot
 * push the history out; a replaced phrase opens nothing; a vault of casa 0.1
 * upgrades in place; a relay that hides a revocation or an epoch from one
 * device, or forks the epochs, is caught by `casa verify --sync` there.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { sqlOn, storageText, useRelay, type RunResult } from '../helpers/cli.js';
import { b64u, fromB64u, post } from '../helpers/relay.js';
import { writeRows } from '../helpers/sqlite.js';
import { deriveRoot, vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { sealCanary } from '../../src/crypto/objects.js';
import { entropyToPhrase } from '../../src/crypto/phrase.js';
import { newDeviceSeed, publicKeyFromSeed, signPurpose } from '../../src/crypto/sign.js';
import { deviceExchangeKey, decodeKeyring, vaultKeysOf } from '../../src/crypto/keyring.js';
import { openBatch } from '../../src/changesets/batch.js';
import { certFields, deviceIdOf } from '../../src/protocol/membership.js';
import { WrongKeyError } from '../../src/crypto/objects.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;
const json = (r: RunResult) => JSON.parse(r.stdout) as Record<string, unknown>;
const d1 = () => relay.relay.vaults();

async function ok(m: Machine, args: string[], input?: string): Promise<RunResult> {
  const r = await m.run(args, input === undefined ? {} : { input });
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

function keystoreOf(home: string): Record<string, string> {
  return (JSON.parse(readFileSync(join(home, 'keystore.json'), 'utf8')) as { entries: Record<string, string> }).entries;
}

const txTable = (m: Machine) => sqlOn(m, 'CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, memo TEXT)');

describe('a lost or stolen device', () => {
  let a: Machine;
  let b: Machine;
  let c: Machine;
  let phrase: string;
  let phraseFile: string;
  let vaultId: string;

  beforeAll(async () => {
    a = relay.machine('sec-a');
    b = relay.machine('sec-b');
    c = relay.machine('sec-c');
    // The paper lives outside every device's home.
    const paperDir = relay.machine('sec-paper').home;
    phraseFile = join(paperDir, 'phrase.txt');
    vaultId = json(await ok(a, ['pair', '--new', '--phrase-out', phraseFile, '--device-name', 'desk', '--json'])).vault_id as string;
    phrase = readFileSync(phraseFile, 'utf8').trim();
    await ok(b, ['pair', '--join', '--phrase-file', phraseFile, '--device-name', 'laptop']);
    // C joins by code: the desk vouches for it.
    const { spawn } = await import('node:child_process');
    const { CASA, baseEnv } = await import('../helpers/cli.js');
    const offer = spawn(process.execPath, [CASA, 'pair', '--offer', '--yes', '--json'], { env: baseEnv(a.env), stdio: ['ignore', 'pipe', 'pipe'] });
    const code = await new Promise<string>((res) => offer.stdout!.once('data', (d) => res(String(JSON.parse(String(d).split('\n')[0]!).code))));
    await ok(c, ['pair', '--code', code, '--device-name', 'phone']);
    await new Promise((res) => offer.on('close', res));
    for (const m of [a, b, c]) txTable(m);
    for (const m of [a, b, c]) await ok(m, ['sync']);
    sqlOn(a, "INSERT INTO notes VALUES ('t1', 'before')");
    for (const m of [a, b, c]) await ok(m, ['sync']);
    expect(sqlOn<{ memo: string }>(c, "SELECT memo FROM notes WHERE id = 't1'")[0]!.memo).toBe('before');
  }, 60_000);

  it('no file under a joined device\'s CASA_HOME holds the phrase', () => {
    for (const m of [a, b, c]) expect(storageText(m.home)).not.toContain(phrase);
    for (const m of [a, b, c]) expect(Object.keys(keystoreOf(m.home)).sort()).toEqual(['device-key', 'keyring']);
  });

  it('revoked: every way back in exits 4, the others carry on with nothing to type, and the paper restores the new data', async () => {
    const cId = JSON.parse(readFileSync(join(c.home, 'state.json'), 'utf8')).vault.deviceId as string;
    // The thief's copy of the phone's home, taken before the revocation.
    const copy = relay.machine('sec-thief');
    cpSync(c.home, copy.home, { recursive: true });
    writeFileSync(join(copy.home, 'state.json'), readFileSync(join(c.home, 'state.json')));

    const r = json(await ok(a, ['devices', 'revoke', cId, '--json']));
    expect(r).toMatchObject({ message_type: 'device_revoked', device: { id: cId }, epoch: 2 });
    expect([...(r.sealed_to as string[])].sort()).toEqual(['desk', 'laptop', 'the recovery phrase']);

    for (const m of [c, copy]) {
      for (const args of [['sync'], ['snapshot'], ['pull'], ['devices'], ['restore', '--yes'], ['pair', '--offer', '--yes'], ['rotate']]) {
        const res = await m.run(args);
        expect(res.code, `casa ${args.join(' ')}: ${res.stderr}`).toBe(4);
        expect(res.stderr).toMatch(/^casa: error: /m);
      }
    }
    // Enrolling a new key with what the copy holds: vouched by itself, or claiming the paper: refused.
    const seed = fromB64u(keystoreOf(copy.home)['device-key']!);
    const fresh = newDeviceSeed((n) => new Uint8Array(randomBytes(n)));
    for (const issuer of [cId, 'recovery']) {
      const unsigned = {
        vaultId,
        deviceId: deviceIdOf(publicKeyFromSeed(fresh)),
        signingKey: b64u(publicKeyFromSeed(fresh)),
        exchangeKey: b64u(deviceExchangeKey(fresh).publicKey),
        name: 'back door',
        issuedAt: Date.now(),
        issuer,
      };
      const res = await post(`${relay.url}/v1/vaults/${vaultId}/devices`, { cert: { ...unsigned, signature: b64u(signPurpose(seed, 'device-cert', certFields(unsigned))) } });
      expect(res.status).toBe(401);
    }

    // The others: nothing to type.
    sqlOn(a, "UPDATE notes SET memo = 'after the revocation' WHERE id = 't1'");
    await ok(a, ['sync']);
    const picked = await ok(b, ['sync']);
    expect(picked.stderr).toMatch(/picked up the vault's new keys \(epoch 2, started by desk\)/);
    expect(sqlOn<{ memo: string }>(b, "SELECT memo FROM notes WHERE id = 't1'")[0]!.memo).toBe('after the revocation');
    await ok(b, ['snapshot', '--quiet']);
    expect((json(await ok(b, ['status', '--json'])).keys as Record<string, unknown>).epoch).toBe(2);

    // What the thief holds does not open what was written after.
    const ring = decodeKeyring(fromB64u(JSON.parse(keystoreOf(copy.home).keyring!).ring));
    const row = await d1().prepare('SELECT device_id, seq, r2_key FROM changesets WHERE vault_id = ? ORDER BY cursor DESC LIMIT 1').bind(vaultId).first<{ device_id: string; seq: number; r2_key: string }>();
    const bytes = new Uint8Array(await (await relay.relay.r2().get(row!.r2_key))!.arrayBuffer());
    expect(() => openBatch(vaultKeysOf(ring), { deviceId: row!.device_id, seq: row!.seq }, bytes, null)).toThrow(WrongKeyError);

    // The paper, on a fresh machine, restores the new data.
    const d = relay.machine('sec-fresh');
    await ok(d, ['restore', '--yes', '--phrase-file', phraseFile, '--device-name', 'fresh']);
    expect(sqlOn<{ memo: string }>(d, "SELECT memo FROM notes WHERE id = 't1'")[0]!.memo).toBe('after the revocation');
    const audit = json(await ok(a, ['devices', '--log', '--json'])).events as { event: string; device_id: string | null }[];
    expect(audit.some((e) => e.event === 'device_revoked' && e.device_id === cId)).toBe(true);
    expect(audit.some((e) => e.event === 'epoch_created')).toBe(true);
    const st = await ok(b, ['status']);
    expect(st.stdout).toMatch(/event: +phone revoked .* by desk/);
  }, 120_000);

  it('a relay that adds a device of its own gets nothing it can decrypt', async () => {
    // The relay writes a device row with a certificate nobody of the vault signed.
    const fake = newDeviceSeed((n) => new Uint8Array(randomBytes(n)));
    const signer = newDeviceSeed((n) => new Uint8Array(randomBytes(n)));
    const unsigned = {
      vaultId,
      deviceId: deviceIdOf(publicKeyFromSeed(fake)),
      signingKey: b64u(publicKeyFromSeed(fake)),
      exchangeKey: b64u(deviceExchangeKey(fake).publicKey),
      name: 'relay spy',
      issuedAt: Date.now(),
      issuer: 'recovery',
    };
    const cert = { ...unsigned, signature: b64u(signPurpose(signer, 'device-cert', certFields(unsigned))) };
    await d1()
      .prepare('INSERT INTO devices (id, vault_id, public_key, name, created_at, cert) VALUES (?, ?, ?, ?, ?, ?)')
      .bind(unsigned.deviceId, vaultId, unsigned.signingKey, unsigned.name, Date.now(), JSON.stringify(cert))
      .run();
    const r = json(await ok(a, ['rotate', '--json']));
    expect(r.sealed_to).not.toContain('relay spy');
    const wraps = await d1().prepare('SELECT recipient FROM epoch_wraps WHERE vault_id = ? AND epoch = ?').bind(vaultId, r.epoch).all<{ recipient: string }>();
    expect(wraps.results.map((w) => w.recipient)).not.toContain(unsigned.deviceId);
    await ok(b, ['sync']);
  }, 60_000);

  it('40 snapshots from one device inside the window, then retention, leave an older snapshot of another device restorable', async () => {
    sqlOn(b, "INSERT INTO notes VALUES ('t2', 'from the laptop')");
    const older = json(await ok(b, ['snapshot', '--json']));
    for (let i = 0; i < 40; i++) await ok(a, ['snapshot', '--force', '--quiet']);
    await relay.relay.runCron();
    const list = json(await ok(b, ['snapshots', '--json'])).snapshots as { snapshot_id: string }[];
    expect(list.length).toBeGreaterThan(40);
    expect(list.map((s) => s.snapshot_id)).toContain(older.snapshot_id);
    const restored = await b.run(['restore', '--snapshot', String(older.snapshot_id), '--yes']);
    expect(restored.code, restored.stderr).toBe(0);
    expect(sqlOn<{ memo: string }>(b, "SELECT memo FROM notes WHERE id = 't2'")[0]!.memo).toBe('from the laptop');
  }, 180_000);

  it('replacing the phrase: only the current one can, the old one then opens nothing, the new one restores', async () => {
    const wrong = entropyToPhrase(new Uint8Array(randomBytes(32)));
    const notIt = await b.run(['rotate', '--phrase', '--phrase-stdin', '--phrase-out', join(b.home, 'new.txt')], { input: wrong });
    expect(notIt.code).toBe(4);
    const newFile = join(phraseFile, '..', 'new-phrase.txt');
    const r = json(await ok(a, ['rotate', '--phrase', '--phrase-file', phraseFile, '--phrase-out', newFile, '--json']));
    expect(r.message_type).toBe('phrase_replaced');
    const e = relay.machine('sec-oldpaper');
    const old = await e.run(['pair', '--join', '--phrase-file', phraseFile]);
    expect(old.code).toBe(4);
    await ok(b, ['sync']);
    const f = relay.machine('sec-newpaper');
    await ok(f, ['restore', '--yes', '--phrase-file', newFile, '--device-name', 'after-paper']);
    expect(sqlOn<{ memo: string }>(f, "SELECT memo FROM notes WHERE id = 't1'")[0]!.memo).toBe('after the revocation');
    // The device joined with the new paper follows later epochs, and a later replacement.
    await ok(a, ['rotate']);
    await ok(f, ['sync']);
  }, 120_000);
});

describe('revoking the device that paired the others by code', () => {
  it('keeps the devices it added (and names them), and they carry on', async () => {
    const { spawn } = await import('node:child_process');
    const { CASA, baseEnv } = await import('../helpers/cli.js');
    const x = relay.machine('vx');
    const paper = join(relay.machine('vpaper').home, 'p.txt');
    await ok(x, ['pair', '--new', '--phrase-out', paper, '--device-name', 'first']);
    const byCode = async (m: Machine, name: string) => {
      const offer = spawn(process.execPath, [CASA, 'pair', '--offer', '--yes', '--json'], { env: baseEnv(x.env), stdio: ['ignore', 'pipe', 'pipe'] });
      const code = await new Promise<string>((res) => offer.stdout!.once('data', (d) => res(String(JSON.parse(String(d).split('\n')[0]!).code))));
      await ok(m, ['pair', '--code', code, '--device-name', name]);
      await new Promise((res) => offer.on('close', res));
    };
    const y = relay.machine('vy');
    const z = relay.machine('vz');
    await byCode(y, 'second');
    await byCode(z, 'third');
    for (const m of [x, y, z]) txTable(m);
    for (const m of [x, y, z]) await ok(m, ['sync']);
    const xId = JSON.parse(readFileSync(join(x.home, 'state.json'), 'utf8')).vault.deviceId as string;
    const r = await ok(y, ['devices', 'revoke', xId, '--json']);
    expect([...((json(r).sealed_to as string[]))].sort()).toEqual(['second', 'the recovery phrase', 'third']);
    expect(r.stderr).toMatch(/first had added third \([0-9a-f]{16}\), which stays: .*revoke it too/);
    sqlOn(z, "INSERT INTO notes VALUES ('z1', 'still here')");
    await ok(z, ['sync']);
    await ok(y, ['sync']);
    expect(sqlOn<{ memo: string }>(y, "SELECT memo FROM notes WHERE id = 'z1'")[0]!.memo).toBe('still here');
    expect((await x.run(['sync'])).code).toBe(4);
  }, 120_000);
});

describe('a vault made by casa 0.1 (format 1)', () => {
  it('upgrades in place the first time it is used: its keys become epoch 1, the phrase leaves the device, a second device follows', async () => {
    const phrase = entropyToPhrase(new Uint8Array(randomBytes(32)));
    const root = deriveRoot(phrase);
    const keys = vaultKeysFromRoot(root);
    // What casa 0.1 made: the vault, its canary, two devices enrolled with the phrase's key.
    const canary = sealCanary(keys, new Uint8Array(randomBytes(32)));
    const { createHash } = await import('node:crypto');
    const time = Date.now();
    const auth = b64u(keys.authPublicKey!);
    const created = await post(`${relay.url}/v1/vaults`, {
      vaultId: keys.vaultId,
      authPublicKey: auth,
      canary: b64u(canary),
      time,
      signature: b64u(signPurpose(keys.authSeed!, 'create-vault', [keys.vaultId, auth, createHash('sha256').update(canary).digest('hex'), time])),
    });
    expect(created.status).toBe(201);
    const homes: Machine[] = [];
    for (const name of ['old-desk', 'old-laptop']) {
      const m = relay.machine(name);
      const seed = newDeviceSeed((n) => new Uint8Array(randomBytes(n)));
      const deviceId = randomBytes(8).toString('hex');
      await d1()
        .prepare('INSERT INTO devices (id, vault_id, public_key, name, created_at) VALUES (?, ?, ?, ?, ?)')
        .bind(deviceId, keys.vaultId, b64u(publicKeyFromSeed(seed)), name, Date.now())
        .run();
      const homeId = randomBytes(8).toString('hex');
      mkdirSync(m.home, { recursive: true, mode: 0o700 });
      writeFileSync(
        join(m.home, 'state.json'),
        JSON.stringify({ version: 1, homeId, vault: { vaultId: keys.vaultId, keyIdHex: keys.keyIdHex, deviceId, deviceName: name, server: relay.url, keystore: 'file', pairedAt: Date.now() } }),
        { mode: 0o600 },
      );
      writeFileSync(
        join(m.home, 'keystore.json'),
        JSON.stringify({ version: 1, entries: { phrase, 'root-key': b64u(root), 'device-key': b64u(seed) } }),
        { mode: 0o600 },
      );
      homes.push(m);
    }
    const [desk, laptop] = homes as [Machine, Machine];
    const st = await ok(desk, ['status']);
    expect(st.stdout).toMatch(/keys: +format 1/);
    writeRows(desk.env.CASA_DB, 30, 'format one');
    const snap = await ok(desk, ['snapshot']);
    expect(snap.stderr).toMatch(/now uses key epochs/);
    expect(Object.keys(keystoreOf(desk.home)).sort()).toEqual(['device-key', 'keyring']);
    expect(storageText(desk.home)).not.toContain(phrase);
    const vault = await d1().prepare('SELECT epoch, epoch_key_id FROM vaults WHERE id = ?').bind(keys.vaultId).first<{ epoch: number; epoch_key_id: string }>();
    expect(vault).toEqual({ epoch: 1, epoch_key_id: keys.keyIdHex });
    // The second device certifies itself with the phrase it holds and opens epoch 1 from the paper's wrap.
    await ok(laptop, ['pull']);
    expect(Object.keys(keystoreOf(laptop.home)).sort()).toEqual(['device-key', 'keyring']);
    // And the phrase still joins a new device.
    const fresh = relay.machine('old-fresh');
    await ok(fresh, ['restore', '--yes', '--phrase-stdin', '--device-name', 'new'], phrase);
  }, 120_000);
});

describe('a relay that shows devices different key histories (casa verify --sync)', () => {
  interface KeyHistory {
    status: string;
    epoch: number | null;
    hidden_revocations: string[];
    missing_revocations: string[];
  }
  interface VerifySync {
    key_history: { epoch: number; history: string; revoked: string[] };
    devices: { device_id: string; name: string; status: string; key_history: KeyHistory }[];
  }
  const verify = async (m: Machine, code: number): Promise<{ doc: VerifySync; r: RunResult }> => {
    const r = await m.run(['verify', '--sync', '--json']);
    expect(r.code, r.stderr).toBe(code);
    return { doc: JSON.parse(r.stdout) as VerifySync, r };
  };
  const byName = (doc: VerifySync, name: string) => doc.devices.find((d) => d.name === name)!;
  const errorOf = (r: RunResult) => JSON.parse(r.stderr.trim().split('\n').pop()!) as { code: number; reason: string; message: string; hints: string[] };
  const idOf = (m: Machine) => JSON.parse(readFileSync(join(m.home, 'state.json'), 'utf8')).vault.deviceId as string;

  it('an honest relay: same key history everywhere; a hidden revocation, then a withheld epoch: exit 6 on the device kept apart, naming the other', async () => {
    const a = relay.machine('kh-desk');
    const b = relay.machine('kh-laptop');
    const c = relay.machine('kh-phone');
    const paper = join(relay.machine('kh-paper').home, 'phrase.txt');
    const vault = json(await ok(a, ['pair', '--new', '--phrase-out', paper, '--device-name', 'desk', '--json'])).vault_id as string;
    await ok(b, ['pair', '--join', '--phrase-file', paper, '--device-name', 'laptop']);
    await ok(c, ['pair', '--join', '--phrase-file', paper, '--device-name', 'phone']);
    for (const m of [a, b, c]) txTable(m);
    for (const m of [a, b, c]) await ok(m, ['sync']);
    const cId = idOf(c);

    // Honest: every device at epoch 1, the same history, no fork.
    await verify(a, 0);
    await verify(c, 0);
    const honest = await verify(b, 0);
    expect(honest.doc.key_history).toMatchObject({ epoch: 1, revoked: [] });
    expect(honest.doc.key_history.history).toMatch(/^[0-9a-f]{64}$/);
    for (const name of ['desk', 'phone']) {
      expect(byName(honest.doc, name).key_history).toEqual({ status: 'same', epoch: 1, hidden_revocations: [], missing_revocations: [] });
    }
    expect((await ok(b, ['verify', '--sync'])).stdout).toMatch(/^key history {2}epoch 1, 0 revocations verified; same as desk, phone$/m);

    // The desk revokes the phone (epoch 2); with an honest relay the laptop picks it up and agrees.
    await ok(a, ['devices', 'revoke', cId]);
    const fromA = await verify(a, 0);
    expect(fromA.doc.key_history).toMatchObject({ epoch: 2, revoked: [cId] });
    const afterRevoke = await verify(b, 0);
    expect(afterRevoke.doc.key_history).toMatchObject({ epoch: 2, revoked: [cId], history: fromA.doc.key_history.history });
    expect(byName(afterRevoke.doc, 'desk').key_history).toEqual({ status: 'same', epoch: 2, hidden_revocations: [], missing_revocations: [] });

    // The relay now hides the revocation (it shows the phone as a member again), still serving epoch 2:
    // the laptop would seal the next epoch to the phone. Its verify --sync names the desk, which verified it.
    await d1().prepare('UPDATE devices SET revoked_at = NULL, revocation = NULL WHERE vault_id = ? AND id = ?').bind(vault, cId).run();
    const hidden = await verify(b, 6);
    expect(byName(hidden.doc, 'desk').key_history).toEqual({ status: 'same', epoch: 2, hidden_revocations: [cId], missing_revocations: [] });
    expect(hidden.doc.key_history.revoked).toEqual([]);
    const e1 = errorOf(hidden.r);
    expect(e1).toMatchObject({ code: 6, reason: 'integrity' });
    expect(e1.message).toMatch(new RegExp(`^device desk \\([0-9a-f]{8}\\) verified the revocation of phone \\(${cId}\\), which the relay does not show this device$`));
    expect(e1.hints.join('\n')).toMatch(/casa devices revoke/);
    const human = await b.run(['verify', '--sync']);
    expect(human.code).toBe(6);
    expect(human.stdout).toMatch(/^key history {2}.*REVOCATIONS HIDDEN here: desk verified /m);
    expect(human.stderr).toMatch(/^casa: error: device desk \([0-9a-f]{8}\) verified the revocation of phone/m);
    // The desk remembers the revocation it verified: for it the laptop is only behind on it, not an error.
    expect(byName((await verify(a, 0)).doc, 'laptop').key_history).toMatchObject({ status: 'same', missing_revocations: [cId] });

    // The hint: revoking it here too makes the laptop remember it (and start epoch 3 without it); the desk is then behind, which is not an error.
    await ok(b, ['devices', 'revoke', cId]);
    const kept = await verify(b, 0);
    expect(kept.doc.key_history).toMatchObject({ epoch: 3, revoked: [cId] });
    expect(byName(kept.doc, 'desk').key_history).toEqual({ status: 'behind', epoch: 2, hidden_revocations: [], missing_revocations: [] });

    // The desk picks up epoch 3 and starts epoch 4; the relay withholds epoch 4 from the laptop.
    await ok(a, ['rotate']);
    expect((await verify(a, 0)).doc.key_history.epoch).toBe(4);
    const epoch3 = await d1().prepare("SELECT json_extract(record, '$.keyId') AS keyId FROM epochs WHERE vault_id = ? AND epoch = 3").bind(vault).first<{ keyId: string }>();
    const inVault = relay.relay.vault(vault);
    await inVault.batch([
      inVault.prepare('UPDATE vaults SET epoch = 3, epoch_key_id = ? WHERE id = ?').bind(epoch3!.keyId, vault),
      inVault.prepare('DELETE FROM epoch_wraps WHERE vault_id = ? AND epoch >= 4').bind(vault),
      inVault.prepare('DELETE FROM epochs WHERE vault_id = ? AND epoch >= 4').bind(vault),
    ]);
    const withheld = await verify(b, 6);
    expect(withheld.doc.key_history.epoch).toBe(3);
    expect(byName(withheld.doc, 'desk')).toMatchObject({ status: 'not_comparable', key_history: { status: 'unreadable', epoch: null } });
    const e2 = errorOf(withheld.r);
    expect(e2).toMatchObject({ code: 6, reason: 'integrity' });
    expect(e2.message).toMatch(/^the digest of device desk \([0-9a-f]{8}\) is sealed under keys the relay does not serve this device: the relay showed the two devices different key histories/);
  }, 180_000);

  it('a fork (the relay took two epoch-2 records and shows each device its own): exit 6 on both, the laptop naming the desk', async () => {
    const a = relay.machine('fk-desk');
    const b = relay.machine('fk-laptop');
    const paper = join(relay.machine('fk-paper').home, 'phrase.txt');
    const vault = json(await ok(a, ['pair', '--new', '--phrase-out', paper, '--device-name', 'desk', '--json'])).vault_id as string;
    await ok(b, ['pair', '--join', '--phrase-file', paper, '--device-name', 'laptop']);
    for (const m of [a, b]) txTable(m);
    for (const m of [a, b]) await ok(m, ['sync']);
    await verify(a, 0);
    await verify(b, 0);
    const epoch1 = await d1().prepare('SELECT epoch_key_id AS keyId FROM vaults WHERE id = ?').bind(vault).first<{ keyId: string }>();
    // The desk starts epoch 2 and publishes its digest under it; the relay then drops that epoch and takes the laptop's.
    await ok(a, ['rotate']);
    expect((await verify(a, 0)).doc.key_history.epoch).toBe(2);
    const inVault = relay.relay.vault(vault);
    await inVault.batch([
      inVault.prepare('UPDATE vaults SET epoch = 1, epoch_key_id = ? WHERE id = ?').bind(epoch1!.keyId, vault),
      inVault.prepare('DELETE FROM epoch_wraps WHERE vault_id = ? AND epoch >= 2').bind(vault),
      inVault.prepare('DELETE FROM epochs WHERE vault_id = ? AND epoch >= 2').bind(vault),
    ]);
    await ok(b, ['rotate']);
    const forked = await verify(b, 6);
    expect(forked.doc.key_history.epoch).toBe(2);
    expect(byName(forked.doc, 'desk').key_history.status).toBe('unreadable');
    expect(errorOf(forked.r).message).toMatch(/^the digest of device desk \([0-9a-f]{8}\) is sealed under keys the relay does not serve this device/);
    // The desk, shown the laptop's epoch 2, refuses it before it compares anything.
    const onA = await a.run(['verify', '--sync']);
    expect(onA.code, onA.stderr).toBe(6);
    expect(onA.stderr).toMatch(/^casa: error: the relay names other keys for epoch 2 than this device holds$/m);
  }, 120_000);
});
// The keychain keystore against a REAL Secret Service: `npm test`
// (scripts/test.mjs) runs vitest inside dbus-run-session with a throwaway,
// unlocked gnome-keyring under a temp HOME, so no user keyring is touched.
//
// Without a reachable Secret Service these tests FAIL (the beforeAll below
// throws); they are never skipped. Outside CI the runner leaves this file out
// when it cannot start a keyring, and says so.

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailureError } from '../../src/errors.js';
import { openKeystore, type Keystore } from '../../src/keystore/index.js';
import { KEYCHAIN_FILE_HINT } from '../../src/keystore/keychain.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SECRET = 'zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong';

const namespaces = [0, 1, 2].map(() => `test-${randomBytes(6).toString('hex')}`);
const stores = namespaces.map((namespace) => openKeystore('keychain', { home: '/nonexistent', namespace }));
const [a, b, c] = stores as [Keystore, Keystore, Keystore];

describe('keychain keystore (real Secret Service)', () => {
  beforeAll(async () => {
    try {
      await a.probe();
    } catch (err) {
      throw new Error(
        `no usable Secret Service (${err instanceof Error ? err.message : String(err)}): ` +
          'run the tests with `npm test`, which starts a throwaway gnome-keyring under dbus-run-session ' +
          '(apt-get install dbus gnome-keyring)',
      );
    }
  });

  afterAll(async () => {
    for (const ks of stores) for (const name of ['phrase', 'device-key']) await ks.delete(name).catch(() => undefined);
  });

  it('sets, gets and deletes', async () => {
    expect(a.kind).toBe('keychain');
    expect(await a.get('phrase')).toBeNull();
    await a.set('phrase', SECRET);
    expect(await a.get('phrase')).toBe(SECRET);
    await a.set('phrase', 'replaced');
    expect(await a.get('phrase')).toBe('replaced');
    await a.delete('phrase');
    expect(await a.get('phrase')).toBeNull();
    await a.delete('phrase'); // absent: no error
  });

  it('keeps two namespaces apart', async () => {
    await a.set('device-key', 'for-a');
    await b.set('device-key', 'for-b');
    expect(await a.get('device-key')).toBe('for-a');
    expect(await b.get('device-key')).toBe('for-b');
    expect(await c.get('device-key')).toBeNull();
    await a.delete('device-key');
    expect(await a.get('device-key')).toBeNull();
    expect(await b.get('device-key')).toBe('for-b');
  });

  it('probes without leaving an entry behind', async () => {
    await c.probe();
    expect(await c.get('keychain-probe')).toBeNull();
  });
});

// Needs no Secret Service, so it sits outside the describe above and runs even
// when that one fails. The D-Bus address only means something on Linux;
// elsewhere the OS keychain does not go through it, hence runIf.
describe.runIf(process.platform === 'linux')('keychain keystore without a reachable session bus', () => {
  const dist = path.join(root, 'dist/keystore/index.js');
  // A separate process, because the bus address is read when the keyring connects.
  const script = `
    const { openKeystore } = await import(${JSON.stringify(pathToFileURL(dist).href)});
    const ks = openKeystore('keychain', { home: '/nonexistent', namespace: 'test-unreachable' });
    const out = [];
    for (const op of [() => ks.probe(), () => ks.set('phrase', ${JSON.stringify(SECRET)}), () => ks.get('phrase')]) {
      try { await op(); out.push(null); }
      catch (e) { out.push({ name: e.name, code: e.code, exitCode: e.exitCode, message: e.message, hints: e.hints }); }
    }
    process.stdout.write(JSON.stringify(out));
  `;

  it.each([
    ['pointing nowhere', 'unix:path=/nonexistent/casa-test-bus', 'no D-Bus session bus answers at DBUS_SESSION_BUS_ADDRESS'],
    ['unset', undefined, 'no D-Bus session bus: DBUS_SESSION_BUS_ADDRESS is not set'],
  ])('fails with keystore_unavailable and the file-keystore hint (address %s)', (_label, address, reason) => {
    expect(existsSync(dist), `${dist} is missing: run \`npm run build\` (npm test does)`).toBe(true);
    const env = { ...process.env };
    if (address === undefined) delete env.DBUS_SESSION_BUS_ADDRESS;
    else env.DBUS_SESSION_BUS_ADDRESS = address;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).not.toContain(SECRET);
    const expected = {
      name: FailureError.name,
      code: 'keystore_unavailable',
      exitCode: 1,
      message: `cannot reach the OS keychain (${reason})`,
      hints: [KEYCHAIN_FILE_HINT],
    };
    expect(JSON.parse(r.stdout)).toEqual([expected, expected, expected]);
  });
});

describe('the CLI with the real keychain (the default keystore)', async () => {
  const { useRelay } = await import('../helpers/cli.js');
  const { readFileSync } = await import('node:fs');
  const relay = useRelay();

  it('pairs two homes on one machine, keeps their secrets apart, and never writes a keystore file', async () => {
    const keychain = { CASA_KEYSTORE: undefined };
    const a = relay.machine('kc-a');
    const b = relay.machine('kc-b');
    const phraseFile = path.join(a.home, 'phrase.txt');
    const r = await a.run(['pair', '--new', '--phrase-out', phraseFile, '--json'], { env: keychain });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ message_type: 'paired', keystore: 'keychain' });
    const phrase = readFileSync(phraseFile, 'utf8').trim();
    const j = await b.run(['pair', '--join', '--phrase-file', phraseFile], { env: keychain });
    expect(j.code).toBe(0);
    expect(existsSync(path.join(a.home, 'keystore.json'))).toBe(false);
    expect(existsSync(path.join(b.home, 'keystore.json'))).toBe(false);
    // later commands find the keychain from state.json, no flag needed; the keyring is there, the phrase is not
    const s = await b.run(['status', '--json'], { env: keychain });
    expect(s.code).toBe(0);
    expect(JSON.parse(s.stdout).keys).toMatchObject({ epoch: 1, phrase_held: false });
    expect(s.stdout).not.toContain(phrase);
    const d = await a.run(['devices', '--json'], { env: keychain });
    expect(d.code).toBe(0);
    expect(JSON.parse(d.stdout).devices).toHaveLength(2);
    // asking for the file keystore explicitly finds nothing there: a clear error, no fallback
    const f = await a.run(['devices'], { env: { CASA_KEYSTORE: 'file' } });
    expect(f.code).toBe(1);
    expect(f.stderr).toMatch(/not in the file keystore/);
    expect(f.stderr).toMatch(/paired with the keychain keystore/);
  });
});

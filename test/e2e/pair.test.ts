/**
 * The foundation as a user meets it: the spawned CLI against a real relay in
 * workerd (D1, R2, migrations), two simulated machines with their own
 * CASA_HOME, every bad input with its exit code, and no secret in any output.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { runCasa, tempDir, useRelay } from '../helpers/cli.js';

const relay = useRelay();
const newMachine = (name: string, server?: string) => relay.machine(name, server);

/** Asserts the words of a phrase appear nowhere in the given outputs. */
function expectNoPhrase(phrase: string, ...outputs: string[]) {
  const words = phrase.trim().split(/\s+/);
  expect(words).toHaveLength(24);
  for (const o of outputs) {
    // Any 3 consecutive phrase words would be a leak; single common words may appear in prose.
    for (let i = 0; i + 3 <= words.length; i++) expect(o).not.toContain(words.slice(i, i + 3).join(' '));
  }
}

function pairedState(home: string) {
  const p = join(home, 'state.json');
  if (!existsSync(p)) return undefined;
  return JSON.parse(readFileSync(p, 'utf8')).vault as Record<string, string> | undefined;
}

describe('casa basics', () => {
  it('prints its version', async () => {
    const r = await runCasa(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('documents commands, exit codes and environment in --help', async () => {
    const r = await runCasa(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['relay', 'pair', 'status', 'show-phrase', 'devices']) expect(r.stdout).toContain(c);
    expect(r.stdout).toMatch(/Exit status:[\s\S]*130\s+cancelled/);
    expect(r.stdout).toContain('CASA_KEYSTORE');
    const p = await runCasa(['pair', '--help']);
    expect(p.code).toBe(0);
    expect(p.stdout).toContain('--phrase-stdin');
  });

  it('rejects an unknown command or flag with exit 2', async () => {
    const r = await runCasa(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^casa: error: unknown command 'frobnicate'/m);
    const f = await runCasa(['status', '--bogus']);
    expect(f.code).toBe(2);
    expect(f.stderr).toContain("casa: error: unknown option '--bogus'");
    const k = await runCasa(['status', '--keystore', 'vault']);
    expect(k.code).toBe(2);
  });
});

describe('an unpaired machine', () => {
  it('status tells, exit 0, human and --json', async () => {
    const m = newMachine('unpaired');
    const r = await m.run(['status']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/paired:\s+no/);
    expect(r.stdout).toContain(`${relay.url} (reachable`);
    const j = await m.run(['status', '--json']);
    expect(j.code).toBe(0);
    const doc = JSON.parse(j.stdout);
    expect(doc).toMatchObject({ message_type: 'status', paired: false, server: relay.url, relay: { reachable: true } });
    expect(doc.database.path).toBe(m.env.CASA_DB);
  });

  it('devices and show-phrase exit 7 with a hint; JSON errors on stderr', async () => {
    const m = newMachine('unpaired2');
    const d = await m.run(['devices']);
    expect(d.code).toBe(7);
    expect(d.stderr).toMatch(/^casa: error: this device is not paired/m);
    expect(d.stderr).toMatch(/^casa: hint: run `casa pair`/m);
    const s = await m.run(['show-phrase', '--yes']);
    expect(s.code).toBe(7);
    const j = await m.run(['devices', '--json']);
    expect(j.code).toBe(7);
    expect(j.stdout).toBe('');
    expect(JSON.parse(j.stderr)).toMatchObject({ message_type: 'exit_error', code: 7, reason: 'not_paired' });
  });

  it('bare `casa pair` without a terminal asks for flags (exit 2)', async () => {
    const m = newMachine('bare');
    const r = await m.run(['pair']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/casa: hint: use `casa pair --new --phrase-out FILE`/);
  });
});

/** Every file under a directory, as text (to show a secret is in none of them). */
function storageOf(dir: string): string {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(readFileSync(p, 'latin1'));
    }
  };
  walk(dir);
  return out.join('\n');
}

describe('two machines share a vault', () => {
  let a: ReturnType<typeof newMachine>;
  let b: ReturnType<typeof newMachine>;
  let phrase: string;
  let phraseFile: string;
  let vaultId: string;

  beforeAll(async () => {
    a = newMachine('a');
    b = newMachine('b');
    phraseFile = join(a.home, 'phrase.txt');
  });

  it('`pair --new` without a terminal needs --phrase-out (exit 2, nothing created)', async () => {
    const r = await a.run(['pair', '--new']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--phrase-out');
    expect(pairedState(a.home)).toBeUndefined();
  });

  it('`--phrase-out` never overwrites an existing file (exit 2)', async () => {
    const f = join(a.home, 'existing.txt');
    mkdirSync(a.home, { recursive: true });
    writeFileSync(f, 'keep me');
    const r = await a.run(['pair', '--new', '--phrase-out', f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/already exists/);
    expect(readFileSync(f, 'utf8')).toBe('keep me');
    expect(pairedState(a.home)).toBeUndefined();
  });

  it('creates the vault: phrase only in the 0600 file, keys in the keystore', async () => {
    const r = await a.run(['pair', '--new', '--phrase-out', phraseFile, '--device-name', 'laptop']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(statSync(phraseFile).mode & 0o777).toBe(0o600);
    phrase = readFileSync(phraseFile, 'utf8').trim();
    expect(phrase.split(' ')).toHaveLength(24);
    expect(r.stdout).toMatch(/^created vault [0-9a-f]{32} on /m);
    expect(r.stdout).toContain('this device: laptop (');
    const st = pairedState(a.home)!;
    vaultId = st.vaultId!;
    expect(st.deviceName).toBe('laptop');
    expectNoPhrase(phrase, r.stdout, r.stderr, readFileSync(join(a.home, 'state.json'), 'utf8'));
    // the file keystore is 0600 and holds the phrase (that is its job)
    expect(statSync(join(a.home, 'keystore.json')).mode & 0o777).toBe(0o600);
  });

  it('refuses to pair an already paired home (exit 1)', async () => {
    const r = await a.run(['pair', '--new', '--phrase-out', join(a.home, 'other.txt')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/already paired with vault/);
    expect(existsSync(join(a.home, 'other.txt'))).toBe(false);
  });

  it('status shows the vault, device and an active device', async () => {
    const r = await a.run(['status', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ paired: true, vault_id: vaultId, device_name: 'laptop', device_status: 'active', keystore: 'file' });
  });

  it('wrong phrases: unknown word by position, checksum, wrong vault — exit 4, home untouched', async () => {
    const words = phrase.split(' ');
    const typo = [...words];
    typo[6] = 'xylophonez';
    const r1 = await b.run(['pair', '--join', '--phrase-stdin'], { input: typo.join(' ') });
    expect(r1.code).toBe(4);
    expect(r1.stderr).toMatch(/word 7 of the phrase is not in the BIP-39 English word list/);
    expect(r1.stderr).not.toContain('xylophonez');
    expectNoPhrase(phrase, r1.stdout, r1.stderr);

    const swapped = [...words];
    [swapped[0], swapped[1]] = [swapped[1]!, swapped[0]!];
    if (swapped.join(' ') !== phrase) {
      const r2 = await b.run(['pair', '--join', '--phrase-stdin'], { input: swapped.join(' ') });
      // a swap nearly always breaks the checksum; if it happens to pass, it names another vault
      expect(r2.code).toBe(4);
      expect(r2.stderr).toMatch(/checksum does not match|no vault for this phrase/);
    }

    const short = await b.run(['pair', '--join', '--phrase-stdin'], { input: words.slice(0, 12).join(' ') });
    expect(short.code).toBe(4);
    expect(short.stderr).toMatch(/has 12 words, not 24/);

    const other = 'abandon '.repeat(23) + 'art';
    const r3 = await b.run(['pair', '--join', '--phrase-stdin'], { input: other });
    expect(r3.code).toBe(4);
    expect(r3.stderr).toMatch(/no vault for this phrase on http:\/\/127\.0\.0\.1:\d+/);
    expect(pairedState(b.home)).toBeUndefined();
  });

  it('joins with a messy phrase (case, spaces, 4-letter prefixes) from a file', async () => {
    const messy = phrase
      .split(' ')
      .map((w, i) => (i % 3 === 0 ? w.toUpperCase() : i % 3 === 1 && w.length > 4 ? w.slice(0, 4) : w))
      .join('   \t ');
    const f = join(b.home, 'p.txt');
    mkdirSync(b.home, { recursive: true });
    writeFileSync(f, `\n  ${messy}\n`, { mode: 0o600 });
    const r = await b.run(['pair', '--join', '--phrase-file', f, '--device-name', 'desktop']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^joined vault ${vaultId}`, 'm'));
    expect(pairedState(b.home)?.vaultId).toBe(vaultId);
  });

  it('lists both devices, marking the current one', async () => {
    const r = await a.run(['devices']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\*\s+[0-9a-f]{16}\s+laptop\s/m);
    expect(r.stdout).toMatch(/^\s+[0-9a-f]{16}\s+desktop\s/m);
    const j = JSON.parse((await b.run(['devices', '--json'])).stdout);
    expect(j.devices).toHaveLength(2);
    expect(j.devices.filter((d: { current: boolean }) => d.current).map((d: { name: string }) => d.name)).toEqual(['desktop']);
  });

  it('show-phrase: a device keeps the phrase only with --keep-phrase; refuses without a terminal or --yes, shows with --yes, forgets', async () => {
    // b joined without --keep-phrase: it says so, and no file of its home holds the phrase.
    const none = await b.run(['show-phrase', '--yes']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^casa: error: this device does not keep the recovery phrase/m);
    expect(none.stderr).toMatch(/^casa: hint: /m);
    expect(storageOf(b.home)).not.toContain(phrase);
    const c = newMachine('keeps');
    const j = await c.run(['pair', '--join', '--phrase-file', phraseFile, '--keep-phrase', '--device-name', 'keeper']);
    expect(j.code, j.stderr).toBe(0);
    expect(JSON.parse((await c.run(['status', '--json'])).stdout).keys.phrase_held).toBe(true);
    const r = await c.run(['show-phrase']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/hint: run it in a terminal, or pass --yes/);
    const y = await c.run(['show-phrase', '--yes']);
    expect(y.code).toBe(0);
    expect(y.stdout.trim()).toBe(phrase);
    expect((await c.run(['show-phrase', '--forget'])).code).toBe(0);
    expect((await c.run(['show-phrase', '--yes'])).code).toBe(1);
    expect(JSON.parse((await c.run(['status', '--json'])).stdout).keys.phrase_held).toBe(false);
    const cid = pairedState(c.home)!.deviceId!;
    expect((await a.run(['devices', 'revoke', cid])).code).toBe(0);
  });

  it('revokes a device: refused on its next request (exit 4), status says so', async () => {
    const bId = pairedState(b.home)!.deviceId!;
    const r = await a.run(['devices', 'revoke', bId.slice(0, 6), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ message_type: 'device_revoked', device: { id: bId }, epoch: 3 });
    const d = await b.run(['devices']);
    expect(d.code).toBe(4);
    expect(d.stderr).toMatch(/^casa: error: this device was revoked from the vault/m);
    const s = await b.run(['status', '--json']);
    expect(s.code).toBe(0);
    expect(JSON.parse(s.stdout).device_status).toBe('revoked');
    const bad = await a.run(['devices', 'revoke', 'ffffffff']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/no device ffffffff in this vault/);
  });
});

describe('failures that must be clear and leave nothing behind', () => {
  it('relay down: exit 5 naming the URL; status still exit 0', async () => {
    const m = newMachine('down', 'http://127.0.0.1:9');
    const r = await m.run(['pair', '--join', '--phrase-stdin'], { input: 'abandon '.repeat(23) + 'art' });
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/^casa: error: cannot reach the relay at http:\/\/127\.0\.0\.1:9/m);
    expect(r.stderr).toMatch(/^casa: hint: /m);
    const s = await m.run(['status']);
    expect(s.code).toBe(0);
    expect(s.stdout).toMatch(/unreachable/);
  });

  it('a server answering garbage is not a casa relay: exit 5', async () => {
    const srv: Server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>hello</html>');
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    try {
      const m = newMachine('garbage', `http://127.0.0.1:${port}`);
      const r = await m.run(['pair', '--new', '--phrase-out', join(m.home, 'p.txt')]);
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/did not answer|not a casa relay|not JSON/);
      expect(existsSync(join(m.home, 'p.txt'))).toBe(false);
      expect(pairedState(m.home)).toBeUndefined();
    } finally {
      srv.close();
    }
  });

  it('CASA_HOME unwritable: exit 1 with a hint, no phrase file left', async () => {
    const t = tempDir();
    relay.onCleanup(t.cleanup);
    const file = join(t.dir, 'a-file');
    writeFileSync(file, 'x');
    const out = join(t.dir, 'phrase.txt');
    const r = await runCasa(['pair', '--new', '--phrase-out', out], {
      env: { CASA_HOME: join(file, 'home'), CASA_SERVER: relay.url, CASA_KEYSTORE: 'file' },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^casa: error: (cannot write to |CASA_HOME )/m);
    expect(r.stderr).toMatch(/^casa: hint: .*--home/m);
    expect(existsSync(out)).toBe(false);
  });

  it('no keychain reachable: a clear error naming the file keystore, never a fallback', async () => {
    const m = newMachine('nokeychain');
    const out = join(m.home, 'p.txt');
    const r = await m.run(['pair', '--new', '--phrase-out', out], {
      env: { CASA_KEYSTORE: 'keychain', DBUS_SESSION_BUS_ADDRESS: 'unix:path=/nonexistent/bus' },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/keychain/);
    expect(r.stderr).toMatch(/--keystore file/);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(join(m.home, 'keystore.json'))).toBe(false);
    expect(pairedState(m.home)).toBeUndefined();
  });
});

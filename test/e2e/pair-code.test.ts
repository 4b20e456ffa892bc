/**
 * Pairing by code as users do it: two (or three) spawned CLIs with their own
 * CASA_HOME against a real relay in workerd. `casa pair --offer --json` on a
 * paired machine prints the code as its first JSON line and waits; `casa pair
 * --code` on a fresh machine joins; then the new machine works without the
 * phrase. A wrong code fails both sides (exit 4) and burns the session; the
 * words never reach the relay's storage; the terminal path runs on a pty.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { baseEnv, CASA, storageText, useRelay, type RunResult } from '../helpers/cli.js';
import { KEY, Pty } from '../helpers/pty.js';
import { cpaceShare } from '../../src/crypto/pake.js';
import { PAIR_CI } from '../../src/crypto/pairing.js';
import { consistentCopy, sha256, writeRows } from '../helpers/sqlite.js';

const relay = useRelay();

type Machine = ReturnType<typeof relay.machine>;

interface Running {
  /** Resolves with the first JSON line printed on stdout. */
  firstLine: Promise<Record<string, unknown>>;
  done: Promise<RunResult>;
  signal(sig: NodeJS.Signals): void;
}

/** Starts casa in the background (the offering side waits for the other device). */
function start(m: Machine, args: string[]): Running {
  const child = spawn(process.execPath, [CASA, ...args], { env: baseEnv(m.env), stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let gotLine: (v: Record<string, unknown>) => void;
  let noLine: (e: Error) => void;
  const firstLine = new Promise<Record<string, unknown>>((res, rej) => {
    gotLine = res;
    noLine = rej;
  });
  child.stdout.on('data', (d) => {
    stdout += d;
    const nl = stdout.indexOf('\n');
    if (nl >= 0) gotLine(JSON.parse(stdout.slice(0, nl)));
  });
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const done = new Promise<RunResult>((res) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      noLine(new Error(`exited (${code}) before a JSON line; stderr:\n${stderr}`));
      res({ code, signal, stdout, stderr });
    }),
  );
  child.stdin.end();
  return { firstLine, done, signal: (s) => child.kill(s) };
}

async function pairedPair(name: string): Promise<{ a: Machine; phrase: string; vaultId: string }> {
  const a = relay.machine(`${name}-a`);
  const phraseFile = join(a.home, 'phrase.txt');
  const r = await a.run(['pair', '--new', '--phrase-out', phraseFile, '--device-name', `${name}-desk`, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return { a, phrase: readFileSync(phraseFile, 'utf8').trim(), vaultId: JSON.parse(r.stdout).vault_id };
}


const wordsOf = (code: string) => code.split('-').slice(1);

describe('casa pair --offer / --code', () => {
  it('adds a device without the phrase: same vault, confirmation on both sides, and the new device works', async () => {
    const { a, phrase, vaultId } = await pairedPair('happy');
    const offer = start(a, ['pair', '--offer', '--yes', '--json']);
    const first = await offer.firstLine;
    expect(first).toMatchObject({ message_type: 'pairing_code', relay: relay.url });
    const code = String(first.code);
    expect(code).toMatch(/^[1-9]\d{0,3}-[a-z]+-[a-z]+-[a-z]+$/);
    expect(String(first.qr)).toBe(`casa://pair/${code}?relay=${encodeURIComponent(relay.url)}`);

    const b = relay.machine('happy-b');
    const joined = await b.run(['pair', '--code', code, '--device-name', 'happy-laptop', '--json']);
    expect(joined.code, joined.stderr).toBe(0);
    const jb = JSON.parse(joined.stdout);
    expect(jb).toMatchObject({ message_type: 'paired', created: false, vault_id: vaultId, device_name: 'happy-laptop', via: 'code', offered_by: 'happy-desk' });
    expect(jb.confirmation).toMatch(/^\d{3} \d{3}$/);

    const offered = await offer.done;
    expect(offered.code, offered.stderr).toBe(0);
    const lines = offered.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ message_type: 'paired_device', vault_id: vaultId, device_id: jb.device_id, device_name: 'happy-laptop', confirmation: jb.confirmation });

    // No phrase in any output; the words of the code never reached the relay's storage.
    for (const out of [joined.stdout, joined.stderr, offered.stdout, offered.stderr]) expect(out).not.toContain(phrase.split(' ').slice(0, 3).join(' '));
    const stored = storageText(relay.relay.dataDir);
    const w = wordsOf(code);
    for (const form of [w.join('-'), w.join(' '), w.join('')]) expect(stored).not.toContain(form);

    // Exactly as if joined by phrase: status, devices, snapshot/pull across the two.
    const st = await b.run(['status', '--json']);
    expect(JSON.parse(st.stdout)).toMatchObject({ paired: true, vault_id: vaultId });
    const devs = JSON.parse((await a.run(['devices', '--json'])).stdout).devices as { id: string; name: string }[];
    expect(devs.map((d) => d.name).sort()).toEqual(['happy-desk', 'happy-laptop']);
    writeRows(a.env.CASA_DB, 50, 'paired-by-code');
    expect((await a.run(['snapshot', '--quiet'])).code).toBe(0);
    const pulled = await b.run(['pull', '--json']);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(sha256(readFileSync(b.env.CASA_DB))).toBe(sha256(await consistentCopy(a.env.CASA_DB)));
    const restored = await b.run(['restore', '--yes', '--json']);
    expect(restored.code, restored.stderr).toBe(0);
    // The new device was given the vault's keys and a vouch, never the phrase: no file of its home holds it.
    const shown = await b.run(['show-phrase', '--yes']);
    expect(shown.code).toBe(1);
    expect(shown.stderr).toMatch(/does not keep the recovery phrase/);
    expect(storageText(b.home)).not.toContain(phrase);
    expect(devs.length).toBe(2);
  });

  it('a wrong code fails both sides with exit 4, and the right code after that fails too', async () => {
    const { a } = await pairedPair('wrong');
    const offer = start(a, ['pair', '--offer', '--yes', '--json']);
    const code = String((await offer.firstLine).code);
    const [nameplate, w1, w2, w3] = code.split('-');
    const other = w3 === 'abandon' ? 'ability' : 'abandon';
    const b = relay.machine('wrong-b');
    const bad = await b.run(['pair', '--code', `${nameplate}-${w1}-${w2}-${other}`, '--device-name', 'intruder']);
    expect(bad.code, bad.stderr).toBe(4);
    expect(bad.stderr).toMatch(/^casa: error: the code is wrong/m);
    expect(bad.stderr).toMatch(/^casa: hint: /m);
    const offered = await offer.done;
    expect(offered.code).toBe(4);
    expect(offered.stderr).toMatch(/wrong code; this pairing session is closed/);

    const c = relay.machine('wrong-c');
    const late = await c.run(['pair', '--code', code]);
    expect(late.code).toBe(4);
    expect(late.stderr).toMatch(/no open pairing session/);
    // Nothing half-written on the failed sides.
    for (const m of [b, c]) expect((await m.run(['status', '--json'])).stdout).toMatch(/"paired":false/);
  });

  it('joins from the QR code text, which names the relay (no --server needed)', async () => {
    const { a, vaultId } = await pairedPair('qr');
    const offer = start(a, ['pair', '--offer', '--yes', '--json', '--timeout', '2m']);
    const first = await offer.firstLine;
    const b = relay.machine('qr-b');
    const r = await b.run(['pair', '--code', String(first.qr).toUpperCase().replace(/^CASA:\/\/PAIR/, 'casa://pair').replace(/\?RELAY=.*$/, `?relay=${encodeURIComponent(relay.url)}`), '--json'], {
      env: { CASA_SERVER: undefined },
    });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).vault_id).toBe(vaultId);
    expect(JSON.parse(r.stdout).server).toBe(relay.url);
    expect((await offer.done).code).toBe(0);
  });

  it('Ctrl-C on the offering side cancels the session (exit 130); the code no longer works', async () => {
    const { a } = await pairedPair('cancel');
    const offer = start(a, ['pair', '--offer', '--yes', '--json']);
    const code = String((await offer.firstLine).code);
    offer.signal('SIGINT');
    const r = await offer.done;
    expect(r.code).toBe(130);
    const b = relay.machine('cancel-b');
    const late = await b.run(['pair', '--code', code]);
    expect(late.code).toBe(4);
  });

  it('refuses bad input with the documented exit codes', async () => {
    const { a } = await pairedPair('bad');
    const b = relay.machine('bad-b');
    const cases: [Machine, string[], number, RegExp][] = [
      [b, ['pair', '--code', 'hello'], 2, /starts with its session number/],
      [b, ['pair', '--code', '12-ocean-permit'], 2, /not a pairing code/],
      [b, ['pair', '--code', '12-ocean-permit-zzzz'], 2, /word 3/],
      [b, ['pair', '--code'], 2, /casa pair --code CODE/],
      [b, ['pair', '--offer'], 7, /not paired/],
      [b, ['pair', '--code', '12-a-b-c', '--join'], 2, /cannot be used together/],
      [a, ['pair', '--offer', '--timeout', '5s'], 2, /--timeout takes/],
      [a, ['pair', '--offer', '--device-name', 'x'], 2, /give it on the new device/],
      [b, ['pair', '--code', '9999999-ocean-permit-silver'], 4, /no open pairing session/],
      [a, ['pair', '--code', '12-ocean-permit-silver'], 1, /already paired/],
    ];
    for (const [m, args, code, msg] of cases) {
      const r = await m.run(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr).not.toMatch(/\n\s+at /); // never a stack trace
    }
  });

  it('on a terminal: bare `casa pair` offers a code with a QR code and countdown; the new device picks "pairing code" and types it', async () => {
    const { a } = await pairedPair('tty');
    const p = new Pty(['pair'], a.env);
    const m = await p.expect(/pairing code: ([1-9]\d*-[a-z]+-[a-z]+-[a-z]+)/);
    await p.expect(/left \(Ctrl-C stops\)/);
    expect(p.screen).toMatch(/[▀▄█]/); // the QR code
    const b = relay.machine('tty-b');
    const q = new Pty(['pair', '--device-name', 'tty-new'], b.env);
    await q.expect(/What do you want to do\?/);
    q.write(KEY.down + KEY.down + KEY.enter);
    await q.expect(/Pairing code/);
    q.write(m[1]!.replace(/-/g, ' ') + KEY.enter);
    // Both show the confirmation before anything leaves; the offering side asks.
    const conf = (await q.expect(/confirmation: (\d{3} \d{3})/))[1]!;
    await p.expect(/Add "tty-new" to this vault\?/);
    expect(p.screen).toContain(conf);
    p.write('y' + KEY.enter);
    await q.expect(/joined vault [0-9a-f]{32}/);
    expect((await q.done).code).toBe(0);
    await p.expect(/"tty-new" joined vault/);
    expect((await p.done).code).toBe(0);
  });

  it('a pairing declined at the confirmation releases nothing: the offering side exits 130, the new device stays unpaired', async () => {
    const { a } = await pairedPair('decline');
    const p = new Pty(['pair', '--offer'], a.env);
    const m = await p.expect(/pairing code: ([1-9]\d*-[a-z]+-[a-z]+-[a-z]+)/);
    const b = relay.machine('decline-b');
    const joined = b.run(['pair', '--code', m[1]!, '--device-name', 'stranger']);
    await p.expect(/Add "stranger" to this vault\?/);
    p.write('n' + KEY.enter);
    expect((await p.done).code).toBe(130);
    const j = await joined;
    expect(j.code).toBe(4);
    expect(existsSync(join(b.home, 'state.json')) ? JSON.parse(readFileSync(join(b.home, 'state.json'), 'utf8')).vault : undefined).toBeUndefined();
    const devs = JSON.parse((await a.run(['devices', '--json'])).stdout).devices as { name: string }[];
    expect(devs.map((d) => d.name)).not.toContain('stranger');
  });

  describe('a relay that tampers with the PAKE messages: pairing fails, never succeeds with a wrong key', () => {
    /**
     * A man in the middle between the new device and the real relay: it
     * rewrites the JSON answers of the join-side routes as `edit` says.
     */
    async function mitm(edit: (path: string, doc: Record<string, unknown>) => Record<string, unknown> | 'drop'): Promise<{ url: string; server: Server }> {
      const target = new URL(relay.url);
      const server = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
          const up = request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
            const body: Buffer[] = [];
            r.on('data', (c) => body.push(c));
            r.on('end', () => {
              let out = Buffer.concat(body);
              if (r.statusCode && r.statusCode < 300 && /^\/v1\/pairings\//.test(req.url ?? '')) {
                const doc = edit(req.url!, JSON.parse(out.toString()));
                if (doc === 'drop') {
                  res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'not_found', message: 'not found' } }));
                  return;
                }
                out = Buffer.from(JSON.stringify(doc));
              }
              const headers = { ...r.headers, 'content-length': String(out.length) };
              res.writeHead(r.statusCode ?? 502, headers).end(out);
            });
          });
          up.end(Buffer.concat(chunks));
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      relay.onCleanup(() => server.close());
      return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
    }
    const flip = (b64: string, at: number) => {
      const b = Buffer.from(b64, 'base64url');
      b[at % b.length]! ^= 0x01;
      return b.toString('base64url');
    };

    async function attempt(name: string, edit: Parameters<typeof mitm>[0]) {
      const { a } = await pairedPair(name);
      const offer = start(a, ['pair', '--offer', '--yes', '--json', '--timeout', '60s']);
      const code = String((await offer.firstLine).code);
      const proxy = await mitm(edit);
      const b = relay.machine(`${name}-b`, proxy.url);
      const joined = await b.run(['pair', '--code', code, '--device-name', 'victim']);
      const status = await b.run(['status', '--json']);
      return { joined, offer, paired: JSON.parse(status.stdout).paired as boolean };
    }

    it("swapping the offer's message (a relay guessing the code): both sides fail with exit 4", async () => {
      // The relay puts its own CPace share, made with a guessed password, in place of the offer's Ya.
      const { joined, offer, paired } = await attempt('swap-a', (path, doc) => {
        if (!/^\/v1\/pairings\/\d+$/.test(path)) return doc;
        const msgA = Buffer.from(String(doc.msgA), 'base64url');
        const guess = cpaceShare({ prs: Buffer.from('abandon-ability-able'), ci: Buffer.from(PAIR_CI), sid: Buffer.from(String(doc.sid), 'hex'), random: (n) => randomBytes(n) });
        Buffer.from(guess.Y).copy(msgA, 0);
        return { ...doc, msgA: msgA.toString('base64url') };
      });
      expect(joined.code, joined.stderr).toBe(4);
      expect(joined.stderr).toMatch(/the code is wrong/);
      expect(paired).toBe(false);
      const o = await offer.done;
      expect(o.code).toBe(4);
      expect(o.stderr).toMatch(/wrong code/);
    });

    it("a malformed offer: the new device refuses it (exit 6) before answering", async () => {
      const { joined, offer, paired } = await attempt('bad-a', (path, doc) =>
        /^\/v1\/pairings\/\d+$/.test(path) ? { ...doc, msgA: flip(String(doc.msgA), 40) } : doc,
      );
      expect(joined.code, joined.stderr).toBe(6);
      expect(joined.stderr).toMatch(/malformed pairing offer/);
      expect(paired).toBe(false);
      offer.signal('SIGINT');
      expect((await offer.done).code).toBe(130);
    });

    it("altering the offering side's answer in flight: the new device refuses it (exit 6) and stores nothing", async () => {
      const { joined, offer, paired } = await attempt('flip-final', (path, doc) =>
        /\/result/.test(path) && typeof doc.msgFinal === 'string' ? { ...doc, msgFinal: flip(doc.msgFinal, 100) } : doc,
      );
      expect(joined.code, joined.stderr).toBe(6);
      expect(joined.stderr).toMatch(/changed on the way/);
      expect(paired).toBe(false);
      offer.signal('SIGINT');
      await offer.done;
    });

    it('flipping the confirmation tag: exit 6, nothing stored', async () => {
      const { joined, offer, paired } = await attempt('flip-tag', (path, doc) =>
        /\/result/.test(path) && typeof doc.msgFinal === 'string' ? { ...doc, msgFinal: flip(doc.msgFinal, 3) } : doc,
      );
      expect(joined.code).toBe(6);
      expect(paired).toBe(false);
      offer.signal('SIGINT');
      await offer.done;
    });

    it('dropping the join: the new device fails with exit 4 and stays unpaired', async () => {
      const { joined, offer, paired } = await attempt('drop', (path, doc) => (/\/join$/.test(path) ? 'drop' : doc));
      expect(joined.code).toBe(4);
      expect(paired).toBe(false);
      offer.signal('SIGINT');
      expect((await offer.done).code).toBe(130);
    });
  });
});

#!/usr/bin/env node
// The relay under load (the relay-at-scale issue), measured in one run,
// never as a timed unit test:
//
//   --devices (200) simulated devices over --vaults (50) vaults against one
//   local relay (`casa relay` on 127.0.0.1, wrangler.jsonc's default rate
//   limits) for --seconds (60). Each vault is a household at its own
//   address (CF-Connecting-IP from 198.51.100.0/24, TEST-NET-2, which a local
//   relay takes as the client's: the per-address limits then apply per
//   household as they would on the internet). Each device loops, with
//   50–250 ms between steps, over a mix of:
//     push      POST changesets, its next seq (opaque random bytes, 0.2–4 KiB)
//     pull      GET changesets after its cursor, page by page
//     snapshot  PUT a pack (4–64 KiB) and a manifest, commit on the head it
//               read (a lost race reads the head again, up to 5 times)
//     head      GET snapshots/head
//   (45 / 30 / 10 / 15 %). Devices speak the relay's HTTP API directly
//   (docs/RELAY-API.md), with a token each: no client crypto is timed.
//
// Checked at the end, from every device's own view: every changeset a device
// was told was stored is in the vault exactly once, at consecutive cursors,
// and nothing else is; every snapshot commit answered 201 is in the vault's
// list once, seqs strictly increasing, the head the newest; no answer was a
// 5xx. Printed: requests and p50/p99 latency per route, totals, the checks.
//
// Everything runs on 127.0.0.1 in a temp directory, removed at the end; the
// run stops by itself after --seconds, and every process is killed on exit.
//
//   node bench/load.mjs [--devices 200] [--vaults 50] [--seconds 60] [--json]

import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import { certMessage, deviceIdOf, RECOVERY } from '../dist/protocol/membership.js';
import { signedMessage } from '../dist/protocol/messages.js';
import { startRelay } from './sync.mjs';

export function parseLoadArgs(argv) {
  const o = { devices: 200, vaults: 50, seconds: 60, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--devices') o.devices = Number(argv[++i]);
    else if (a === '--vaults') o.vaults = Number(argv[++i]);
    else if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a === '--json') o.json = true;
    else throw new Error(`load bench: unknown option ${a}`);
  }
  if (!(Number.isInteger(o.vaults) && o.vaults >= 1 && o.vaults <= 250)) throw new Error('--vaults takes 1..250');
  if (!(Number.isInteger(o.devices) && o.devices >= o.vaults && o.devices <= 2000)) throw new Error('--devices takes --vaults..2000');
  if (!(Number.isFinite(o.seconds) && o.seconds >= 1 && o.seconds <= 600)) throw new Error('--seconds takes 1..600');
  return o;
}

const b64u = (b) => Buffer.from(b).toString('base64url');
const sha256Hex = (b) => createHash('sha256').update(b).digest('hex');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Latency samples per route, and every status seen. */
class Recorder {
  constructor() {
    this.routes = new Map();
    this.status5xx = 0;
    this.statuses = new Map();
    this.transportErrors = new Map();
  }
  transport(code) {
    this.transportErrors.set(code, (this.transportErrors.get(code) ?? 0) + 1);
  }
  add(route, ms, status) {
    let r = this.routes.get(route);
    if (!r) this.routes.set(route, (r = []));
    r.push(ms);
    this.statuses.set(status, (this.statuses.get(status) ?? 0) + 1);
    if (status >= 500) this.status5xx++;
  }
  summary() {
    const q = (s, p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
    return [...this.routes.entries()]
      .map(([route, xs]) => {
        const s = [...xs].sort((a, b) => a - b);
        return { route, requests: s.length, p50: q(s, 0.5), p99: q(s, 0.99), max: s[s.length - 1] };
      })
      .sort((a, b) => b.requests - a.requests);
  }
}

/** One request to the relay, timed under its route's name; the answer's status and JSON (or null). */
async function call(rec, base, route, method, p, { ip, token, json, bytes, headers = {} } = {}) {
  const h = { 'CF-Connecting-IP': ip, ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (bytes !== undefined) {
    h['content-type'] = 'application/octet-stream';
    h['X-Casa-Sha256'] = sha256Hex(bytes);
    body = bytes;
  }
  const t0 = performance.now();
  let res;
  let text;
  for (let attempt = 1; ; attempt++) {
    try {
      res = await fetch(base + p, { method, headers: h, body, signal: AbortSignal.timeout(60_000) });
      text = await res.text();
      break;
    } catch (err) {
      // A connection the server closed as it was reused, or reset: retried as casa's client retries (every request here is safe to repeat: a push of the same seq and bytes, a commit of the same snapshot, are answered as the first was).
      rec.transport(err?.cause?.code ?? err?.name ?? 'error');
      if (attempt === 3) throw err;
      await sleep(50 * attempt);
    }
  }
  rec.add(route, performance.now() - t0, res.status);
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = null;
  }
  return { status: res.status, doc };
}

function expect(ok, what) {
  if (!ok) throw new Error(`load bench: ${what}`);
}

async function newVault(rec, base, ip) {
  const authSecret = ed25519.utils.randomSecretKey();
  const v = { vaultId: randomBytes(16).toString('hex'), authSecret, authPublicKey: b64u(ed25519.getPublicKey(authSecret)), ip };
  const canary = randomBytes(60);
  const time = Date.now();
  const sig = ed25519.sign(signedMessage('create-vault', [v.vaultId, v.authPublicKey, sha256Hex(canary), time]), authSecret);
  const r = await call(rec, base, 'POST vaults', 'POST', '/v1/vaults', { ip, json: { vaultId: v.vaultId, authPublicKey: v.authPublicKey, canary: b64u(canary), time, signature: b64u(sig) } });
  expect(r.status === 201, `create vault: ${r.status} ${JSON.stringify(r.doc)}`);
  return v;
}

async function newDevice(rec, base, v, name) {
  const secret = ed25519.utils.randomSecretKey();
  const pub = ed25519.getPublicKey(secret);
  const d = { vault: v, deviceId: deviceIdOf(pub), secret, name };
  const unsigned = {
    vaultId: v.vaultId,
    deviceId: d.deviceId,
    signingKey: b64u(pub),
    exchangeKey: b64u(x25519.getPublicKey(x25519.utils.randomSecretKey())),
    name,
    issuedAt: Date.now(),
    issuer: RECOVERY,
  };
  const cert = { ...unsigned, signature: b64u(ed25519.sign(certMessage(unsigned), v.authSecret)) };
  const r = await call(rec, base, 'POST devices (enrol)', 'POST', `/v1/vaults/${v.vaultId}/devices`, { ip: v.ip, json: { cert } });
  expect(r.status === 201, `enrol: ${r.status} ${JSON.stringify(r.doc)}`);
  const ch = await call(rec, base, 'POST auth/challenge', 'POST', `/v1/vaults/${v.vaultId}/auth/challenge`, { ip: v.ip, json: { deviceId: d.deviceId } });
  expect(ch.status === 200, `challenge: ${ch.status}`);
  const signature = b64u(ed25519.sign(signedMessage('token', [v.vaultId, d.deviceId, ch.doc.challenge]), secret));
  const tk = await call(rec, base, 'POST auth/token', 'POST', `/v1/vaults/${v.vaultId}/auth/token`, { ip: v.ip, json: { deviceId: d.deviceId, challenge: ch.doc.challenge, signature } });
  expect(tk.status === 200, `token: ${tk.status}`);
  d.token = tk.doc.token;
  d.seq = 0;
  d.cursor = 0;
  d.pushed = []; // { seq, cursor, sha256 }
  d.committed = []; // { snapshotId, seq }
  d.seen = new Map(); // cursor → { deviceId, seq, sha256 }
  d.counts = { push: 0, pull: 0, snapshot: 0, head: 0, rebases: 0, gaveUp: 0 };
  return d;
}

async function push(rec, base, d) {
  const bytes = randomBytes(200 + Math.floor(Math.random() * 3900));
  const seq = d.seq + 1;
  const r = await call(rec, base, 'POST changesets', 'POST', `/v1/vaults/${d.vault.vaultId}/changesets`, { ip: d.vault.ip, token: d.token, bytes, headers: { 'X-Casa-Seq': String(seq) } });
  expect(r.status === 201 || (r.status === 200 && r.doc.duplicate === true), `push: ${r.status} ${JSON.stringify(r.doc)}`);
  expect(r.doc.seq === seq, 'push answered another seq');
  d.seq = seq;
  d.pushed.push({ seq, cursor: r.doc.cursor, sha256: sha256Hex(bytes) });
}

async function pull(rec, base, d) {
  for (;;) {
    const r = await call(rec, base, 'GET changesets', 'GET', `/v1/vaults/${d.vault.vaultId}/changesets?after=${d.cursor}&limit=200`, { ip: d.vault.ip, token: d.token });
    expect(r.status === 200, `pull: ${r.status}`);
    for (const c of r.doc.changesets) {
      expect(c.cursor === d.cursor + 1, `pull: cursor ${c.cursor} after ${d.cursor} (a hole or a repeat)`);
      expect(sha256Hex(Buffer.from(c.data, 'base64url')) === c.sha256, 'pull: bytes and their SHA-256 differ');
      expect(!d.seen.has(c.cursor), `pull: cursor ${c.cursor} twice`);
      d.seen.set(c.cursor, { deviceId: c.deviceId, seq: c.seq, sha256: c.sha256 });
      d.cursor = c.cursor;
    }
    if (!r.doc.more) return;
  }
}

async function snapshot(rec, base, d) {
  const v = d.vault;
  const pack = randomBytes(4096 + Math.floor(Math.random() * 61440));
  const packId = randomBytes(32).toString('hex');
  const pk = await call(rec, base, 'PUT packs', 'PUT', `/v1/vaults/${v.vaultId}/packs/${packId}`, { ip: v.ip, token: d.token, bytes: pack });
  expect(pk.status === 201 || pk.status === 200, `pack: ${pk.status}`);
  const snapshotId = randomBytes(16).toString('hex');
  const mf = await call(rec, base, 'PUT manifest', 'PUT', `/v1/vaults/${v.vaultId}/snapshots/${snapshotId}/manifest`, { ip: v.ip, token: d.token, bytes: randomBytes(200) });
  expect(mf.status === 201 || mf.status === 200, `manifest: ${mf.status}`);
  for (let attempt = 0; attempt < 5; attempt++) {
    const h = await call(rec, base, 'GET snapshots/head', 'GET', `/v1/vaults/${v.vaultId}/snapshots/head`, { ip: v.ip, token: d.token });
    expect(h.status === 200, `head: ${h.status}`);
    const parentSeq = h.doc.head?.seq ?? 0;
    const body = { snapshotId, seq: parentSeq + 1, parentSeq, packs: [packId], dbBytes: pack.length, storedBytes: pack.length, newBytes: pack.length };
    const c = await call(rec, base, 'POST snapshots (commit)', 'POST', `/v1/vaults/${v.vaultId}/snapshots`, { ip: v.ip, token: d.token, json: body });
    if (c.status === 201) {
      d.committed.push({ snapshotId, seq: c.doc.seq });
      return;
    }
    expect(c.status === 409 && c.doc?.error?.code === 'conflict', `commit: ${c.status} ${JSON.stringify(c.doc)}`);
    d.counts.rebases++;
  }
  d.counts.gaveUp++;
}

async function head(rec, base, d) {
  const r = await call(rec, base, 'GET snapshots/head', 'GET', `/v1/vaults/${d.vault.vaultId}/snapshots/head`, { ip: d.vault.ip, token: d.token });
  expect(r.status === 200, `head: ${r.status}`);
}

/** Tokens live 5 minutes: a device renews its own when the run is long. */
async function renew(rec, base, d) {
  const v = d.vault;
  const ch = await call(rec, base, 'POST auth/challenge', 'POST', `/v1/vaults/${v.vaultId}/auth/challenge`, { ip: v.ip, json: { deviceId: d.deviceId } });
  expect(ch.status === 200, `challenge: ${ch.status}`);
  const signature = b64u(ed25519.sign(signedMessage('token', [v.vaultId, d.deviceId, ch.doc.challenge]), d.secret));
  const tk = await call(rec, base, 'POST auth/token', 'POST', `/v1/vaults/${v.vaultId}/auth/token`, { ip: v.ip, json: { deviceId: d.deviceId, challenge: ch.doc.challenge, signature } });
  expect(tk.status === 200, `token: ${tk.status}`);
  d.token = tk.doc.token;
}

async function loop(rec, base, d, until) {
  let renewAt = Date.now() + 4 * 60_000;
  while (Date.now() < until) {
    if (Date.now() > renewAt) {
      await renew(rec, base, d);
      renewAt = Date.now() + 4 * 60_000;
    }
    const x = Math.random();
    if (x < 0.45) {
      await push(rec, base, d);
      d.counts.push++;
    } else if (x < 0.75) {
      await pull(rec, base, d);
      d.counts.pull++;
    } else if (x < 0.85) {
      await snapshot(rec, base, d);
      d.counts.snapshot++;
    } else {
      await head(rec, base, d);
      d.counts.head++;
    }
    await sleep(50 + Math.random() * 200);
  }
}

/** Every device's view at the end, against what every device was told. */
async function check(rec, base, vaults) {
  let changesets = 0;
  let snapshots = 0;
  for (const { devices } of vaults) {
    const told = new Map(); // cursor → { deviceId, seq, sha256 }
    for (const d of devices) for (const p of d.pushed) told.set(p.cursor, { deviceId: d.deviceId, seq: p.seq, sha256: p.sha256 });
    changesets += told.size;
    for (const d of devices) {
      await pull(rec, base, d);
      expect(d.seen.size === told.size, `device ${d.name}: sees ${d.seen.size} changesets, ${told.size} were stored`);
      for (const [cursor, t] of told) {
        const s = d.seen.get(cursor);
        expect(s && s.deviceId === t.deviceId && s.seq === t.seq && s.sha256 === t.sha256, `device ${d.name}: cursor ${cursor} is not what was stored there`);
      }
      for (let c = 1; c <= told.size; c++) expect(d.seen.has(c), `device ${d.name}: cursor ${c} missing`);
    }
    const committed = devices.flatMap((d) => d.committed);
    snapshots += committed.length;
    for (const d of devices) {
      const r = await call(rec, base, 'GET snapshots', 'GET', `/v1/vaults/${d.vault.vaultId}/snapshots`, { ip: d.vault.ip, token: d.token });
      expect(r.status === 200, `list: ${r.status}`);
      const list = r.doc.snapshots;
      const ids = new Map(list.map((s) => [s.id, s.seq]));
      expect(ids.size === list.length, `device ${d.name}: a snapshot listed twice`);
      for (const c of committed) expect(ids.get(c.snapshotId) === c.seq, `device ${d.name}: committed snapshot ${c.seq} missing or moved`);
      expect(list.length === committed.length, `device ${d.name}: ${list.length} snapshots listed, ${committed.length} committed`);
      const seqs = list.map((s) => s.seq).sort((a, b) => a - b);
      for (let i = 1; i < seqs.length; i++) expect(seqs[i] > seqs[i - 1], 'a seq twice');
      expect((r.doc.head?.seq ?? 0) === (seqs[seqs.length - 1] ?? 0), 'the head is not the newest');
    }
  }
  return { changesets, snapshots };
}

export async function runLoad(o) {
  const w = mkdtempSync(path.join(os.tmpdir(), 'casa-bench-load-'));
  const relay = await startRelay(w);
  const base = relay.url;
  const rec = new Recorder();
  try {
    const t0 = Date.now();
    const vaults = [];
    for (let i = 0; i < o.vaults; i++) vaults.push({ vault: await newVault(rec, base, `198.51.100.${(i % 250) + 1}`), devices: [] });
    for (let i = 0; i < o.devices; i++) {
      const v = vaults[i % o.vaults];
      v.devices.push(await newDevice(rec, base, v.vault, `v${i % o.vaults}-d${v.devices.length}`));
    }
    const setupMs = Date.now() - t0;
    const setup = rec.summary();
    rec.routes.clear();
    const all = vaults.flatMap((v) => v.devices);
    const start = Date.now();
    await Promise.all(all.map((d) => loop(rec, base, d, start + o.seconds * 1000)));
    const runMs = Date.now() - start;
    const routes = rec.summary();
    const requests = routes.reduce((n, r) => n + r.requests, 0);
    const checked = await check(rec, base, vaults);
    const sum = (k) => all.reduce((n, d) => n + d.counts[k], 0);
    return {
      devices: o.devices,
      vaults: o.vaults,
      seconds: o.seconds,
      setupMs,
      setup,
      runMs,
      requests,
      rps: requests / (runMs / 1000),
      routes,
      steps: { push: sum('push'), pull: sum('pull'), snapshot: sum('snapshot'), head: sum('head'), rebases: sum('rebases'), gaveUp: sum('gaveUp') },
      checked,
      status5xx: rec.status5xx,
      statuses: Object.fromEntries(rec.statuses),
      transportErrors: Object.fromEntries(rec.transportErrors),
    };
  } finally {
    await relay.stop();
    rmSync(w, { recursive: true, force: true });
  }
}

export function loadResults(r) {
  const rows = [
    { name: 'load: 5xx answers', measured: r.status5xx, unit: '', target: 0, detail: `${r.requests} requests in ${(r.runMs / 1000).toFixed(0)} s` },
    { name: 'load: changesets lost or duplicated', measured: 0, unit: '', target: 0, detail: `${r.checked.changesets} stored, every device's view checked` },
    { name: 'load: snapshots lost or duplicated', measured: 0, unit: '', target: 0, detail: `${r.checked.snapshots} committed, every device's view checked` },
  ];
  return rows.map((x) => ({ ...x, ratio: x.target === 0 ? (x.measured === 0 ? 0 : Infinity) : x.measured / x.target, ok: x.measured <= x.target }));
}

export function formatLoad(r) {
  const ms = (x) => `${x.toFixed(1)} ms`;
  const lines = [
    `${r.devices} devices over ${r.vaults} vaults, ${r.seconds} s against one local relay (set-up: ${(r.setupMs / 1000).toFixed(1)} s)`,
    `  ${r.requests} requests, ${r.rps.toFixed(0)}/s; 5xx: ${r.status5xx}; statuses: ${JSON.stringify(r.statuses)}; connections reset and retried: ${JSON.stringify(r.transportErrors)}`,
    `  steps: ${r.steps.push} pushes, ${r.steps.pull} pulls, ${r.steps.snapshot} snapshots (${r.steps.rebases} lost races re-read the head, ${r.steps.gaveUp} gave up), ${r.steps.head} head reads`,
    `  checked: ${r.checked.changesets} changesets and ${r.checked.snapshots} snapshots, each once, in every device's view`,
    `  ${'route'.padEnd(26)} ${'requests'.padStart(8)} ${'p50'.padStart(10)} ${'p99'.padStart(10)} ${'max'.padStart(10)}`,
  ];
  for (const x of r.routes) lines.push(`  ${x.route.padEnd(26)} ${String(x.requests).padStart(8)} ${ms(x.p50).padStart(10)} ${ms(x.p99).padStart(10)} ${ms(x.max).padStart(10)}`);
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const o = parseLoadArgs(process.argv.slice(2));
  const r = await runLoad(o);
  process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatLoad(r)}\n`);
  process.exit(0);
}

#!/usr/bin/env node
// npm run demo — casa end to end on a throwaway local relay: simulated
// machines (one CASA_HOME each) share one vault; a tablet joins with a
// one-time pairing code instead of the phrase; the laptop snapshots its
// finance database, the desktop pulls it, a week of edits goes up as an
// incremental snapshot, a fresh machine restores it with the phrase, and a
// revoked device is refused; day to day, `casa sync` merges edits made in
// the sqlite3 shell field by field. Everything lives in a temp directory that is
// removed at the end; the phrase is never printed (it goes to a 0600 file,
// as on a headless machine). Later capabilities add steps here.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const casa = join(root, 'bin', 'casa');
const work = mkdtempSync(join(tmpdir(), 'casa-demo-'));
const bold = (s) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);

function step(title) {
  console.log(`\n${bold('== ' + title)}`);
}

const dbOf = (machine) => join(work, machine, 'casaconomy.db');

function run(machine, args, { input, expect = 0 } = {}) {
  const env = { ...process.env, CASA_HOME: join(work, machine), CASA_KEYSTORE: 'file', CASA_SERVER: server, CASA_DB: dbOf(machine) };
  console.log(`${bold(`[${machine}]$`)} casa ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [casa, ...args], { env, input, stdio: ['pipe', 'inherit', 'inherit'] });
  if (r.status !== expect) throw new Error(`casa ${args.join(' ')} exited ${r.status}`);
}

/** The bench's generator and editor make a realistic finance database (text UUID keys, tags, WAL). */
function tool(script, args, what) {
  console.log(`${bold('[app]')} ${what}`);
  const r = spawnSync(process.execPath, [join(root, 'bench', 'lib', script), ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${script} exited ${r.status}`);
}

/**
 * `casa pair --offer` on `from` (in the background: it waits), then `casa
 * pair --code` on `to` with the code it printed. The code is single use and
 * expires: it is shown here as it is on the offering machine's screen.
 */
async function offerAndJoin(from, to) {
  const env = { ...process.env, CASA_HOME: join(work, from), CASA_KEYSTORE: 'file', CASA_SERVER: server, CASA_DB: dbOf(from) };
  console.log(`${bold(`[${from}]$`)} casa pair --offer &`);
  const offer = spawn(process.execPath, [casa, 'pair', '--offer'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const exited = new Promise((r) => offer.on('exit', r));
  const code = await new Promise((resolve, reject) => {
    offer.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/pairing code: (\S+)/);
      if (m) resolve(m[1]);
    });
    offer.on('exit', (c) => reject(new Error(`casa pair --offer exited ${c}`)));
  });
  process.stdout.write(out);
  out = '';
  run(to, ['pair', '--code', code, '--device-name', to]);
  const status = await exited;
  process.stdout.write(out);
  if (status !== 0) throw new Error(`casa pair --offer exited ${status}`);
}

/** The sqlite3 shell on a machine's database: another program than casa. */
function sqlite(machine, statement, what) {
  console.log(`${bold('[app]')} ${what}`);
  const r = spawnSync('sqlite3', [dbOf(machine), statement], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sqlite3 exited ${r.status}: ${r.stderr}`);
  if (r.stdout) process.stdout.write(r.stdout);
}

let relay;
let server;
async function startRelay() {
  relay = spawn(process.execPath, [casa, 'relay', '--port', '0', '--data', join(work, 'relay-data')], {
    env: { ...process.env, CASA_HOME: join(work, 'relay-home') },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  server = await new Promise((resolve, reject) => {
    let buf = '';
    relay.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(/http:\/\/[\d.]+:\d+/);
      if (m) resolve(m[0]);
    });
    relay.on('exit', (c) => reject(new Error(`relay exited ${c}`)));
  });
}

try {
  step('start a throwaway relay (workerd via Miniflare, D1 and R2 on disk)');
  await startRelay();
  console.log(`relay at ${server}`);

  step('machine "laptop" creates the vault; the phrase goes to a 0600 file');
  run('laptop', ['pair', '--new', '--phrase-out', join(work, 'phrase.txt'), '--device-name', 'laptop']);

  step('machine "desktop" joins with the recovery phrase');
  run('desktop', ['pair', '--join', '--phrase-file', join(work, 'phrase.txt'), '--device-name', 'desktop']);

  step('machine "tablet" joins with a one-time pairing code from the laptop: no phrase typed');
  await offerAndJoin('laptop', 'tablet');

  step('both see the same vault');
  run('laptop', ['status']);
  run('desktop', ['devices']);

  step('the laptop backs up its finance database');
  tool('make-db.mjs', ['--out', dbOf('laptop'), '--size-mb', '8', '--seed', '7'], 'Casaconomy writes ~15,000 transactions (8 MiB)');
  run('laptop', ['snapshot']);
  run('laptop', ['snapshot']);

  step('the desktop pulls it');
  run('desktop', ['pull']);

  step('a week of edits on the laptop: only the changed pages go up');
  tool('mutate.mjs', ['--db', dbOf('laptop'), '--update-pct', '1', '--seed', '8'], 'Casaconomy edits 1% of the transactions and adds some');
  run('laptop', ['snapshot']);
  run('desktop', ['status']);
  run('desktop', ['pull']);
  run('laptop', ['snapshots']);

  step('day to day: casa sync sets up capture, then edits travel field by field');
  run('laptop', ['sync']);
  run('desktop', ['sync']);
  const first = "(SELECT id FROM transactions ORDER BY id LIMIT 1)";
  sqlite('laptop', `UPDATE transactions SET memo = 'paid back by Sam' WHERE id = ${first}`, 'the app on the laptop edits a memo (casa is not running)');
  sqlite('desktop', `UPDATE transactions SET amount = -1999 WHERE id = ${first}`, 'meanwhile, the desktop edits the amount of the same transaction');
  run('laptop', ['sync']);
  run('desktop', ['sync']);
  run('laptop', ['sync']);
  sqlite('laptop', `SELECT memo, amount FROM transactions WHERE id = ${first}`, 'the laptop has both edits');
  sqlite('desktop', `SELECT memo, amount FROM transactions WHERE id = ${first}`, 'so has the desktop');
  sqlite('laptop', `UPDATE transactions SET memo = 'lunch (laptop)' WHERE id = ${first}`, 'both edit the same field');
  sqlite('desktop', `UPDATE transactions SET memo = 'lunch with Sam (desktop, later)' WHERE id = ${first}`, '...the desktop a moment later');
  run('desktop', ['sync']);
  run('laptop', ['sync']);
  run('laptop', ['sync', '--conflicts']);

  step('disaster: a fresh machine restores with the recovery phrase, then drills a restore');
  run('phoenix', ['restore', '--phrase-file', join(work, 'phrase.txt'), '--device-name', 'phoenix']);
  run('phoenix', ['verify', '--all']);

  step('the laptop revokes the desktop; the desktop is refused at once');
  const list = spawnSync(process.execPath, [casa, 'devices', '--json'], {
    env: { ...process.env, CASA_HOME: join(work, 'laptop'), CASA_KEYSTORE: 'file', CASA_SERVER: server },
  });
  const desktop = JSON.parse(list.stdout).devices.find((d) => d.name === 'desktop');
  run('laptop', ['devices', 'revoke', desktop.id, '--yes']);
  run('desktop', ['devices'], { expect: 4 });
  console.log('(exit status 4: a revoked device)');

  step('done');
} catch (err) {
  console.error(`demo failed: ${err.message}`);
  process.exitCode = 1;
} finally {
  relay?.kill('SIGTERM');
  await new Promise((r) => (relay && relay.exitCode === null ? relay.on('exit', r) : r()));
  rmSync(work, { recursive: true, force: true });
}

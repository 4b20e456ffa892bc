/**
 * Runs the real CLI (`node bin/casa`, the compiled entry point) as a child
 * process, the way a user or a cron job does: own CASA_HOME, the file
 * keystore unless a test asks for the keychain, stdin from a string, ANSI
 * stripped from what it printed.
 */
import { spawn } from 'node:child_process';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, expect } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CASA = join(ROOT, 'bin', 'casa');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  input?: string;
  timeoutMs?: number;
  /** A command to run casa under (e.g. nsenter into a namespace: test/helpers/systemd.ts). */
  wrap?: string[];
}

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

export function baseEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CASA_')) env[k] = v;
  env.NO_COLOR = '1';
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

export function runCasa(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const argv = [...(opts.wrap ?? []), process.execPath, CASA, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      env: baseEnv(opts.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: stdout.replace(ANSI, ''), stderr: stderr.replace(ANSI, '') });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** A temporary CASA_HOME (or any dir), removed by the returned cleanup. */
export function tempDir(prefix = 'casa-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A simulated machine: its own CASA_HOME, the file keystore, one relay. */
export function machine(server: string, name: string) {
  const home = tempDir(`casa-${name}-`);
  // CASA_TMPDIR pins the working copy inside the home, so tests can see it come and go.
  const env = {
    CASA_HOME: home.dir,
    CASA_SERVER: server,
    CASA_KEYSTORE: 'file',
    CASA_DB: join(home.dir, 'casaconomy.db'),
    CASA_TMPDIR: join(home.dir, 'tmp'),
  };
  return {
    home: home.dir,
    env,
    run: (args: string[], o: RunOptions = {}) => runCasa(args, { ...o, env: { ...env, ...o.env } }),
    cleanup: home.cleanup,
  };
}

/**
 * For an e2e test file: one real relay for the file (started in beforeAll,
 * stopped in afterAll) and simulated machines on it, all cleaned up after.
 */
export function useRelay(opts: Parameters<typeof import('./relay.js').startTestRelay>[0] = {}) {
  let relay: import('./relay.js').TestRelay | undefined;
  const cleanups: (() => void)[] = [];
  beforeAll(async () => {
    const { startTestRelay } = await import('./relay.js');
    relay = await startTestRelay(opts);
  });
  afterAll(async () => {
    for (const c of cleanups) c();
    await relay?.stop();
  });
  return {
    get relay() {
      if (!relay) throw new Error('useRelay: the relay starts in beforeAll');
      return relay;
    },
    get url() {
      return this.relay.url;
    },
    machine(name: string, server?: string) {
      const m = machine(server ?? this.url, name);
      cleanups.push(m.cleanup);
      return m;
    },
    onCleanup(f: () => void) {
      cleanups.push(f);
    },
  };
}

/** Every file under `dir` as latin1 text (binary-safe), to search a relay's storage for what must not be there. */
export function storageText(dir: string): string {
  let all = '';
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && statSync(p).size < 64 * 1024 * 1024) all += readFileSync(p).toString('latin1');
    }
  };
  walk(dir);
  return all;
}


/** A statement on a machine's database through a plain connection (another program, not casa): rows for a query, [] otherwise. */
export function sqlOn<T = Record<string, unknown>>(m: { env: { CASA_DB?: string } }, query: string, ...params: unknown[]): T[] {
  const db = new Database(m.env.CASA_DB!);
  try {
    db.pragma('busy_timeout = 5000');
    const st = db.prepare(query);
    return (st.reader ? st.all(...params) : (st.run(...params), [])) as T[];
  } finally {
    db.close();
  }
}

type Machine = ReturnType<typeof machine>;

/** Runs casa on `m` and requires exit 0 (its stderr in the failure message). */
export async function okOn(m: Pick<Machine, 'run'>, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

/**
 * A vault on A (device `NAME-a`) with the bench's realistic 1 MiB database,
 * sync set up, a snapshot; B (`NAME-b`) restored from it. Their vault and
 * device ids, from `casa status --json`.
 */
export async function pairedDevices(relay: ReturnType<typeof useRelay>, name: string): Promise<{ a: Machine; b: Machine; vaultId: string; ids: { a: string; b: string } }> {
  const { makeDb } = await import('../../bench/lib/make-db.mjs');
  const a = relay.machine(`${name}-a`);
  const phraseFile = join(a.home, 'phrase.txt');
  await okOn(a, ['pair', '--new', '--phrase-out', phraseFile, '--device-name', `${name}-a`]);
  makeDb({ out: a.env.CASA_DB, sizeMb: 1, seed: 5 });
  await okOn(a, ['sync']);
  await okOn(a, ['snapshot', '--quiet']);
  const b = relay.machine(`${name}-b`);
  await okOn(b, ['restore', '--yes', '--phrase-file', phraseFile, '--device-name', `${name}-b`]);
  const st = async (m: Machine) => JSON.parse((await okOn(m, ['status', '--json'])).stdout) as { vault_id: string; device_id: string };
  const sa = await st(a);
  return { a, b, vaultId: sa.vault_id, ids: { a: sa.device_id, b: (await st(b)).device_id } };
}

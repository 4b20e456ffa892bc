/**
 * Runs the relay (dist/worker/index.js, bundled by scripts/build-worker.mjs)
 * locally in workerd through Miniflare: `casa relay`, `npm start` and the
 * worker/e2e tests all start it here (docs/ARCHITECTURE.md §7, docs/RELAY-API.md).
 *
 * - Bindings and the compatibility date come from wrangler.jsonc (top level),
 *   so the config has one source.
 * - State lives under dataDir in wrangler's layout (v3/d1, v3/r2, v3/do), and
 *   D1 is keyed by the config's database_id, so `wrangler d1 ... --local
 *   --persist-to DIR` sees the same database. Each vault's state is in its
 *   own Durable Object (v3/do/<name>-Vault/<object id>.sqlite), which
 *   migrates its own schema (migrations/*.sql, worker/schema.ts); D1 holds
 *   only the global index.
 * - The index's migrations (the config's migrations_dir, migrations/d1) are
 *   applied at start with wrangler's own d1_migrations bookkeeping (one
 *   batch, i.e. one transaction, per file), so files already applied — by
 *   us or by wrangler — are skipped.
 * - JWT_SECRET is generated once into dataDir/jwt-secret (0600) and reused,
 *   so tokens survive a restart.
 * - Retention runs in each vault's object by its alarm every
 *   cronIntervalMs (`casa relay --retention-every`: the var
 *   RETENTION_EVERY_MS; 0 disables the alarms). Miniflare never fires cron
 *   triggers, so a timer calls the worker's scheduled() handler (it trims
 *   the global index) at the same interval, skipping a tick while the
 *   previous run is still going; it is unref'd and cleared by stop().
 *   runCron() does both at once: the scheduled handler, then every vault's
 *   retention (each object on disk is poked).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Log, LogLevel, Miniflare } from 'miniflare';
import { splitSql } from '../protocol/sql-split.js';

export { splitSql };

export type LimiterName =
  | 'CREATE_LIMITER'
  | 'ENROLL_LIMITER'
  | 'AUTH_LIMITER'
  | 'API_LIMITER'
  | 'PAIR_LIMITER'
  | 'PAIR_JOIN_LIMITER';
export interface LimitSpec {
  limit: number;
  period: 10 | 60;
}

export interface StartRelayOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8787; 0 picks a free port. */
  port?: number;
  /** D1, R2, Durable Object storage and the JWT secret live here. */
  dataDir: string;
  /** Overrides of wrangler.jsonc's rate limits (tests use small or large ones). */
  rateLimits?: Partial<Record<LimiterName, LimitSpec>>;
  /** Overrides of wrangler.jsonc's vars (`casa relay --retention-window` sets RETENTION_WINDOW; tests set PACK_GRACE_MS small). */
  vars?: Record<string, string>;
  /** How often the scheduled handler runs; default 15 minutes, 0 disables the timer. */
  cronIntervalMs?: number;
  /** Receives the launcher's lines (migrations applied, cron failures) and workerd's output. Default: silent. */
  log?: (line: string) => void;
}

export interface RunningRelay {
  /** http://HOST:PORT, without a trailing slash. */
  url: string;
  stop(): Promise<void>;
  mf: Miniflare;
  /** Runs the scheduled handler and every vault's retention job once, now. */
  runCron(): Promise<void>;
  /** The ids (hex) of the vault objects on disk. */
  vaultObjectIds(): Promise<string[]>;
}

export type D1 = Awaited<ReturnType<Miniflare['getD1Database']>>;

/** The package root: this file is src/local-relay/launcher.ts or dist/local-relay/launcher.js. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const WORKER_BUNDLE = join(PACKAGE_ROOT, 'dist', 'worker', 'index.js');
/** The global index's migrations (wrangler.jsonc migrations_dir); the vault schema, migrations/*.sql, is applied inside each vault's object. */
const MIGRATIONS_DIR = join(PACKAGE_ROOT, 'migrations', 'd1');
const WRANGLER_CONFIG = join(PACKAGE_ROOT, 'wrangler.jsonc');
const MIGRATIONS_TABLE = 'd1_migrations';
const DEFAULT_CRON_MS = 15 * 60 * 1000;
/** setInterval's longest delay (a longer one would fire at once, every millisecond). */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface WranglerConfig {
  name: string;
  compatibility_date: string;
  compatibility_flags?: string[];
  vars?: Record<string, string>;
  d1_databases: { binding: string; database_id: string; migrations_dir?: string }[];
  r2_buckets: { binding: string; bucket_name: string }[];
  durable_objects: { bindings: { name: string; class_name: string }[] };
  migrations?: { new_sqlite_classes?: string[]; renamed_classes?: { from: string; to: string }[] }[];
  triggers?: { crons?: string[] };
  ratelimits?: { name: string; namespace_id: string; simple: { limit: number; period: number } }[];
}

/** JSONC → JSON: drops // and /* *\/ comments and trailing commas, leaving strings alone. */
export function stripJsonc(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const ch = text[i]!;
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (ch === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (ch === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      i = end < 0 ? text.length : end + 2;
    } else if (ch === ',') {
      let j = i + 1;
      while (j < text.length && /\s/.test(text[j]!)) j++;
      // A comment between the comma and the bracket is handled by the next pass.
      if (text[j] !== '}' && text[j] !== ']') out += ch;
      i++;
    } else {
      out += ch;
      i++;
    }
  }
  return out;
}

async function readWranglerConfig(path = WRANGLER_CONFIG): Promise<WranglerConfig> {
  // Twice: the first pass removes comments, the second the commas they hid.
  return JSON.parse(stripJsonc(stripJsonc(await readFile(path, 'utf8')))) as WranglerConfig;
}

/**
 * Applies migrations/*.sql not yet listed in d1_migrations, in name order,
 * each file with its bookkeeping row in one batch (all or nothing), exactly
 * the table wrangler's `d1 migrations apply` keeps. Returns the names applied.
 */
export async function applyMigrations(d1: D1, dir = MIGRATIONS_DIR): Promise<string[]> {
  await d1
    .prepare(
      `CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE}(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)`,
    )
    .run();
  const { results } = await d1.prepare(`SELECT name FROM ${MIGRATIONS_TABLE}`).all<{ name: string }>();
  const done = new Set(results.map((r) => r.name));
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const applied: string[] = [];
  for (const name of files) {
    if (done.has(name)) continue;
    const statements = splitSql(await readFile(join(dir, name), 'utf8')).map((s) => d1.prepare(s));
    statements.push(d1.prepare(`INSERT INTO ${MIGRATIONS_TABLE} (name) VALUES (?1)`).bind(name));
    await d1.batch(statements);
    applied.push(name);
  }
  return applied;
}

/** The HS256 secret for device tokens: created once (0600), then reused. */
async function jwtSecret(dataDir: string): Promise<string> {
  const path = join(dataDir, 'jwt-secret');
  try {
    const existing = (await readFile(path, 'utf8')).trim();
    if (existing.length >= 32) return existing;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const secret = randomBytes(48).toString('base64url');
  await writeFile(path, `${secret}\n`, { mode: 0o600 });
  await chmod(path, 0o600);
  return secret;
}

/*
 * Signals. Constructing a Miniflare adds SIGINT/SIGTERM listeners that call
 * `process` exit (130/143) at once, which would cut short a host's own graceful
 * stop (`casa relay` aborts, then awaits stop()). The launcher removes them
 * and, only if the process has no handler of its own, installs one that stops
 * every running relay and then re-raises the signal (exit status 128 + its number).
 */
const SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;
type SignalName = keyof typeof SIGNALS;
type Listener = (...args: unknown[]) => void;
const running = new Set<() => Promise<void>>();
const fallbackHandlers = new Map<SignalName, () => void>();

function listenersNow(): Record<SignalName, Listener[]> {
  return { SIGINT: process.listeners('SIGINT') as Listener[], SIGTERM: process.listeners('SIGTERM') as Listener[] };
}

function takeOverSignals(before: Record<SignalName, Listener[]>): void {
  for (const sig of Object.keys(SIGNALS) as SignalName[]) {
    for (const l of process.listeners(sig) as Listener[]) {
      if (!before[sig].includes(l)) process.removeListener(sig, l);
    }
    if (process.listenerCount(sig) === 0 && !fallbackHandlers.has(sig)) {
      const handler = (): void => {
        // Stop cleanly, then let the signal's default action end the process (status 128 + n).
        void Promise.allSettled([...running].map((stop) => stop())).finally(() => {
          fallbackHandlers.delete(sig);
          process.kill(process.pid, sig);
        });
      };
      fallbackHandlers.set(sig, handler);
      process.once(sig, handler);
    }
  }
}

function releaseSignals(): void {
  if (running.size > 0) return;
  for (const [sig, handler] of fallbackHandlers) process.removeListener(sig, handler);
  fallbackHandlers.clear();
}

export async function startRelay(opts: StartRelayOptions): Promise<RunningRelay> {
  if (!existsSync(WORKER_BUNDLE)) {
    throw new Error(`the relay worker is not built (${WORKER_BUNDLE} is missing): run \`npm run build\``);
  }
  // The runtime's last lines are kept so a failed start can say why.
  const recent: string[] = [];
  const userLog = opts.log ?? (() => {});
  const log = (line: string) => {
    recent.push(line);
    if (recent.length > 20) recent.shift();
    userLog(line);
  };
  const host = opts.host ?? '127.0.0.1';
  const cfg = await readWranglerConfig();
  const db = cfg.d1_databases.find((d) => d.binding === 'DB');
  const bucket = cfg.r2_buckets.find((b) => b.binding === 'BLOBS');
  if (!db || !bucket) throw new Error('wrangler.jsonc lacks the DB or BLOBS binding');
  // The SQLite-backed classes after every migration, in order (a renamed class keeps its backend).
  const sqliteClasses = new Set<string>();
  for (const m of cfg.migrations ?? []) {
    for (const c of m.new_sqlite_classes ?? []) sqliteClasses.add(c);
    for (const r of m.renamed_classes ?? []) if (sqliteClasses.delete(r.from)) sqliteClasses.add(r.to);
  }

  const ratelimits: Record<string, { simple: { limit: number; period: 10 | 60 } }> = {};
  for (const r of cfg.ratelimits ?? []) {
    const o = opts.rateLimits?.[r.name as LimiterName];
    ratelimits[r.name] = { simple: { limit: o?.limit ?? r.simple.limit, period: o?.period ?? (r.simple.period as 10 | 60) } };
  }

  // The data directory holds the JWT secret: private to its owner when we create it.
  await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const v3 = join(opts.dataDir, 'v3');
  await mkdir(v3, { recursive: true });
  const secret = await jwtSecret(opts.dataDir);

  const signalsBefore = listenersNow();
  const mf = new Miniflare({
    name: cfg.name, // names the Durable Object storage as wrangler does (v3/do/<name>-<Class>)
    host,
    port: opts.port ?? 8787,
    cf: false, // else Miniflare fetches cf.json from the network at every start
    log: new Log(LogLevel.WARN),
    // workerd's own output (the worker's console, fatal bind errors with a
    // native stack) goes to `log`, not straight to our stderr; the streams
    // are always drained so workerd never blocks on a full pipe.
    handleRuntimeStdio: (stdout: Readable, stderr: Readable) => {
      for (const stream of [stdout, stderr]) createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => log(line));
    },
    modules: true,
    scriptPath: WORKER_BUNDLE,
    // Module names are relative to modulesRoot (default: the cwd); the bundle
    // must not depend on where `casa relay` was started from.
    modulesRoot: dirname(WORKER_BUNDLE),
    compatibilityDate: cfg.compatibility_date,
    compatibilityFlags: cfg.compatibility_flags ?? [],
    bindings: {
      ...(cfg.vars ?? {}),
      RETENTION_EVERY_MS: String(Math.min(opts.cronIntervalMs ?? DEFAULT_CRON_MS, MAX_TIMER_MS)),
      ...(opts.vars ?? {}),
      JWT_SECRET: secret,
    },
    d1Databases: { [db.binding]: db.database_id },
    r2Buckets: { [bucket.binding]: bucket.bucket_name },
    durableObjects: Object.fromEntries(
      cfg.durable_objects.bindings.map((b) => [b.name, { className: b.class_name, useSQLite: sqliteClasses.has(b.class_name) }]),
    ),
    ratelimits,
    d1Persist: join(v3, 'd1'),
    r2Persist: join(v3, 'r2'),
    durableObjectsPersist: join(v3, 'do'),
  });

  let timer: NodeJS.Timeout | undefined;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (timer) clearInterval(timer);
      running.delete(stop);
      try {
        await mf.dispose();
      } finally {
        releaseSignals();
      }
    })();
    return stopped;
  };
  running.add(stop);
  takeOverSignals(signalsBefore);

  let url: URL;
  try {
    url = await mf.ready;
    const applied = await applyMigrations(await mf.getD1Database(db.binding), join(PACKAGE_ROOT, db.migrations_dir ?? 'migrations/d1'));
    for (const name of applied) log(`applied migration ${name}`);
  } catch (err) {
    await stop().catch(() => {});
    const detail = recent.filter((l) => l.trim() !== '').slice(-8);
    if (detail.length > 0 && err instanceof Error) err.message += `\n${detail.join('\n')}`;
    throw err;
  }

  const cron = cfg.triggers?.crons?.[0] ?? '17 * * * *';
  const vaultBinding = cfg.durable_objects.bindings[0]!;
  const vaultDir = join(v3, 'do', `${cfg.name}-${vaultBinding.class_name}`);
  const vaultObjectIds = async (): Promise<string[]> => {
    const names = await readdir(vaultDir).catch(() => [] as string[]);
    return names.filter((n) => /^[0-9a-f]{64}\.sqlite$/.test(n)).map((n) => n.slice(0, 64));
  };
  const runScheduled = async (): Promise<void> => {
    const worker = await mf.getWorker();
    await worker.scheduled({ cron, scheduledTime: new Date() });
  };
  const runCron = async (): Promise<void> => {
    await runScheduled();
    const ns = await mf.getDurableObjectNamespace(vaultBinding.name);
    for (const id of await vaultObjectIds()) {
      const res = await ns.get(ns.idFromString(id)).fetch('http://vault.internal/_relay/retention', { method: 'POST' });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`retention of vault object ${id}: ${res.status} ${text}`);
    }
  };
  const every = opts.cronIntervalMs ?? DEFAULT_CRON_MS;
  if (every > 0) {
    let busy = false;
    timer = setInterval(() => {
      if (busy) return;
      busy = true;
      runScheduled()
        .catch((err: unknown) => log(`cron failed: ${err instanceof Error ? err.message : String(err)}`))
        .finally(() => (busy = false));
    }, Math.min(every, MAX_TIMER_MS));
    timer.unref();
  }

  return { url: url.origin, stop, mf, runCron, vaultObjectIds };
}

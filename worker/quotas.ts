/**
 * Per-vault quotas (docs/RELAY-API.md "Quotas"): the operator's settings in
 * wrangler.jsonc `vars`, with the defaults below. A request that would pass
 * one is answered `507 quota_exceeded` (with `quota`, `limit` and `used`)
 * before anything is stored, so nothing is half-written; `GET status`
 * reports the vault's usage beside its quotas.
 *
 * - stored bytes: the vault's packs, changesets and pending manifests as
 *   stored (ciphertext sizes), kept as a counter by triggers in the vault's
 *   object (migrations/0008_usage.sql), checked before a pack, manifest or
 *   changeset is written; concurrent uploads may pass it by at most their
 *   own sizes;
 * - devices: certified devices not revoked, checked at enrolment;
 * - live pairing sessions: checked when a session is opened;
 * - commits and changeset pushes per day: those the relay received in the
 *   last 24 hours (its own clock);
 * - audit rows kept: the retention job keeps the newest this many per vault.
 */
import type { Context } from 'hono';
import type { AppEnv, Env } from './env.js';
import { ApiError } from './http.js';
import { countLivePairings } from './pairing-db.js';

export interface Quotas {
  storedBytes: number;
  devices: number;
  pairings: number;
  commitsPerDay: number;
  pushesPerDay: number;
  auditRows: number;
}

export const DEFAULT_QUOTAS: Readonly<Quotas> = {
  storedBytes: 10 * 1024 ** 3,
  devices: 20,
  pairings: 3,
  commitsPerDay: 2_000,
  pushesPerDay: 50_000,
  auditRows: 10_000,
};

const VARS: Record<keyof Quotas, keyof Env> = {
  storedBytes: 'QUOTA_STORED_BYTES',
  devices: 'QUOTA_DEVICES',
  pairings: 'QUOTA_PAIRINGS',
  commitsPerDay: 'QUOTA_COMMITS_PER_DAY',
  pushesPerDay: 'QUOTA_PUSHES_PER_DAY',
  auditRows: 'QUOTA_AUDIT_ROWS',
};

/** The quotas in force: each var a positive integer, else its default (a bad setting never lifts a quota). */
export function quotasOf(env: Env): Quotas {
  const q = { ...DEFAULT_QUOTAS };
  for (const k of Object.keys(VARS) as (keyof Quotas)[]) {
    const raw = env[VARS[k]];
    const n = typeof raw === 'string' && /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
    if (Number.isSafeInteger(n) && n > 0) q[k] = n;
  }
  return q;
}

const DAY_MS = 86_400_000;

/** How much of each quota the vault uses (status, and the checks below). */
export interface Usage {
  storedBytes: number;
  devices: number;
  pairings: number;
  commitsToday: number;
  pushesToday: number;
}

/** One statement per count, so a check reads only what it checks (a push does not count devices). */
const COUNTS = {
  // Kept by triggers in the vault's object (migrations/0008_usage.sql): one row read, however big the vault.
  storedBytes: "SELECT value AS n FROM usage WHERE name = 'stored_bytes'",
  devices: 'SELECT count(*) AS n FROM devices WHERE vault_id = ?1 AND revoked_at IS NULL',
  commitsToday: 'SELECT count(*) AS n FROM snapshots WHERE vault_id = ?1 AND time > ?2',
  pushesToday: 'SELECT count(*) AS n FROM changesets WHERE vault_id = ?1 AND created_at > ?2',
} as const;

async function count(db: D1Database, what: keyof typeof COUNTS, vaultId: string, now: number): Promise<number> {
  const sql = COUNTS[what];
  const params = sql.includes('?2') ? [vaultId, now - DAY_MS] : sql.includes('?1') ? [vaultId] : [];
  const row = await db.prepare(sql).bind(...params).first<{ n: number }>();
  return row?.n ?? 0;
}

export async function usageOf(db: D1Database, vaultId: string, now: number): Promise<Usage> {
  const [storedBytes, devices, commitsToday, pushesToday, pairings] = await Promise.all([
    count(db, 'storedBytes', vaultId, now),
    count(db, 'devices', vaultId, now),
    count(db, 'commitsToday', vaultId, now),
    count(db, 'pushesToday', vaultId, now),
    countLivePairings(db, vaultId, now),
  ]);
  return { storedBytes, devices, pairings, commitsToday, pushesToday };
}

const WHAT: Record<keyof Quotas, string> = {
  storedBytes: 'stored bytes',
  devices: 'devices',
  pairings: 'live pairing sessions',
  commitsPerDay: 'snapshot commits per day',
  pushesPerDay: 'changeset pushes per day',
  auditRows: 'audit rows kept',
};

const SNAKE: Record<keyof Quotas, string> = {
  storedBytes: 'stored_bytes',
  devices: 'devices',
  pairings: 'pairings',
  commitsPerDay: 'commits_per_day',
  pushesPerDay: 'pushes_per_day',
  auditRows: 'audit_rows',
};

export function quotaExceeded(quota: keyof Quotas, limit: number, used: number): ApiError {
  return new ApiError(507, 'quota_exceeded', `this vault has reached its quota of ${WHAT[quota]} (${used} of ${limit})`, {}, {
    quota: SNAKE[quota],
    limit,
    used,
  });
}

type Check = { stored?: number; device?: true; commit?: true; push?: true };

/**
 * 507 unless the vault has room for what the request adds: `stored` bytes,
 * one more device, commit or push (live pairing sessions are counted where
 * a session is opened, in its own statement: worker/pairing-db.ts).
 */
export async function checkQuota(c: Context<AppEnv>, vaultId: string, add: Check): Promise<void> {
  const q = quotasOf(c.env);
  const db = c.env.DB;
  const now = Date.now();
  const over = async (what: keyof typeof COUNTS, quota: keyof Quotas, adding: number) => {
    const used = await count(db, what, vaultId, now);
    if (used + adding > q[quota]) throw quotaExceeded(quota, q[quota], used);
  };
  if (add.stored !== undefined) await over('storedBytes', 'storedBytes', add.stored);
  if (add.device) await over('devices', 'devices', 1);
  if (add.commit) await over('commitsToday', 'commitsPerDay', 1);
  if (add.push) await over('pushesToday', 'pushesPerDay', 1);
}

/** The size an upload will store: its declared length, or the bytes read. */
export const uploadSize = (u: { body: ReadableStream | Uint8Array; length?: number }): number =>
  u.body instanceof Uint8Array ? u.body.length : (u.length ?? 0);

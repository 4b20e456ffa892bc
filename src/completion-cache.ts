/**
 * What shell completion may offer without asking the relay: the snapshot ids
 * and device names this device last listed, in CASA_HOME/completion.json.
 *
 * Commands that list snapshots (snapshots, restore, verify, pull) or devices
 * (devices) write it as a side effect; `casa complete` only reads it, so a
 * Tab press never opens the keystore or the network. Nothing in it is
 * secret (ids and names the relay holds anyway), but every value came from
 * the relay: only ids of lower-case hex and names of a plain character set
 * are kept and offered, because bash expands the words it is given to
 * complete ($(…) included, `compgen -W`) and a hostile relay's device name
 * must never reach a shell as code. A cache that cannot be written is
 * skipped silently: it is never a command's failure.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CompletionCache {
  vault: string;
  snapshots: { id: string; time: number }[];
  devices: { id: string; name: string }[];
}

const FILE = 'completion.json';
/** Completions offered per kind: enough for a Tab, bounded for a file read on every press. */
const MAX = 200;

/** A word every shell passes through untouched: no quoting, expansion or separator characters. */
export const SHELL_SAFE = /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$/;
const HEX_ID = /^[0-9a-f]{6,64}$/;

export function completionCachePath(home: string): string {
  return join(home, FILE);
}

export function readCompletionCache(home: string, vault?: string): CompletionCache | null {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(completionCachePath(home), 'utf8'));
  } catch {
    return null;
  }
  if (typeof doc !== 'object' || doc === null) return null;
  const d = doc as Partial<CompletionCache>;
  if (typeof d.vault !== 'string' || (vault !== undefined && d.vault !== vault)) return null;
  return {
    vault: d.vault,
    snapshots: (Array.isArray(d.snapshots) ? d.snapshots : []).filter((s) => typeof s?.id === 'string' && HEX_ID.test(s.id) && Number.isFinite(s.time)).slice(0, MAX),
    devices: (Array.isArray(d.devices) ? d.devices : []).filter((x) => typeof x?.id === 'string' && HEX_ID.test(x.id) && typeof x.name === 'string').slice(0, MAX),
  };
}

/** Replaces one kind's list (the other kept if it belongs to the same vault); atomic, 0600, errors ignored. */
export function updateCompletionCache(home: string, vault: string, part: Partial<Pick<CompletionCache, 'snapshots' | 'devices'>>): void {
  const old = readCompletionCache(home, vault);
  const next: CompletionCache = {
    vault,
    snapshots: (part.snapshots ?? old?.snapshots ?? []).filter((s) => HEX_ID.test(s.id)).slice(0, MAX).map((s) => ({ id: s.id, time: s.time })),
    devices: (part.devices ?? old?.devices ?? []).filter((d) => HEX_ID.test(d.id)).slice(0, MAX).map((d) => ({ id: d.id, name: d.name })),
  };
  const tmp = join(home, `.${FILE}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, JSON.stringify(next) + '\n', { mode: 0o600, flag: 'wx' });
    renameSync(tmp, completionCachePath(home));
  } catch {
    rmSync(tmp, { force: true });
  }
}

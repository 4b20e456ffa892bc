/**
 * CASA_HOME/service.json: what `casa service install` wrote (each file's
 * path and SHA-256), the directories it created, and the units or agents it
 * enabled, so `casa service uninstall` stops and removes exactly that and
 * leaves the directories as they were. A file whose digest no longer
 * matches was changed by the user since: uninstall keeps it (see
 * src/commands/service.ts). Written atomically, 0600; holds no secret.
 */
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { FailureError } from '../errors.js';
import { writeFileAtomic } from '../state.js';

export type Manager = 'systemd' | 'launchd';

export interface ServiceManifest {
  version: 1;
  manager: Manager;
  installed_at: number;
  snapshot_every_ms: number;
  sync: 'watch' | 'off';
  /** The files written, in the order written. */
  files: { path: string; sha256: string }[];
  /** Directories that did not exist before install (deepest last): removed again if empty. */
  created_dirs: string[];
  /** What was enabled and started (systemd units, launchd labels), to stop first on uninstall. */
  enabled: string[];
}

export function manifestPath(home: string): string {
  return join(home, 'service.json');
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The manifest, or null if nothing is installed from this CASA_HOME. A damaged one is exit 1 (uninstall must not guess). */
export function readManifest(home: string): ServiceManifest | null {
  let raw: string;
  try {
    raw = readFileSync(manifestPath(home), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new FailureError(`cannot read ${manifestPath(home)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const d = JSON.parse(raw) as ServiceManifest;
    const strings = (a: unknown) => Array.isArray(a) && a.every((x) => typeof x === 'string');
    if (
      d.version === 1 &&
      (d.manager === 'systemd' || d.manager === 'launchd') &&
      typeof d.snapshot_every_ms === 'number' &&
      (d.sync === 'watch' || d.sync === 'off') &&
      Array.isArray(d.files) &&
      d.files.every((f) => typeof f?.path === 'string' && typeof f.sha256 === 'string') &&
      strings(d.created_dirs) &&
      strings(d.enabled)
    ) {
      return d;
    }
  } catch {
    // falls through
  }
  throw new FailureError(`${manifestPath(home)} is not a casa service manifest`, {
    hints: ['it may be damaged: remove the casa-* units (or org.casa.* agents) by hand, then the file'],
  });
}

export function writeManifest(home: string, m: ServiceManifest): void {
  writeFileAtomic(manifestPath(home), JSON.stringify(m, null, 2) + '\n', 0o600);
}

export function removeManifest(home: string): void {
  rmSync(manifestPath(home), { force: true });
}

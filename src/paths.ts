/**
 * Default locations (docs/ARCHITECTURE.md §6): CASA_HOME in the OS config dir, the
 * Casaconomy database in the OS data dir. Only commands call these, with the
 * environment passed in, so tests control every path.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

type Env = Record<string, string | undefined>;

export function defaultHome(env: Env, platform: NodeJS.Platform = process.platform): string {
  const home = env.HOME ?? homedir();
  if (platform === 'darwin') return join(home, 'Library', 'Application Support', 'casa');
  if (platform === 'win32') return join(env.APPDATA ?? join(home, 'AppData', 'Roaming'), 'casa');
  return join(env.XDG_CONFIG_HOME || join(home, '.config'), 'casa');
}

export function defaultDatabase(env: Env, platform: NodeJS.Platform = process.platform): string {
  const home = env.HOME ?? homedir();
  if (platform === 'darwin') return join(home, 'Library', 'Application Support', 'Casaconomy', 'casaconomy.db');
  if (platform === 'win32') return join(env.APPDATA ?? join(home, 'AppData', 'Roaming'), 'Casaconomy', 'casaconomy.db');
  return join(env.XDG_DATA_HOME || join(home, '.local', 'share'), 'casaconomy', 'casaconomy.db');
}

export const DEFAULT_SERVER = 'http://127.0.0.1:8787';

/** A flag's value, else the environment's, else the default (an empty flag or variable counts as unset): flags win. */
function chosen(flag: string | undefined, fromEnv: string | undefined): string | undefined {
  return flag !== undefined && flag !== '' ? flag : fromEnv || undefined;
}

/** CASA_HOME as a command uses it: --home, else CASA_HOME, else the OS default; absolute. */
export function resolveHome(flag: string | undefined, env: Env): string {
  return resolve(chosen(flag, env.CASA_HOME) ?? defaultHome(env));
}

/** The database as a command uses it: --db, else CASA_DB, else the OS default; absolute. */
export function resolveDatabase(flag: string | undefined, env: Env): string {
  return resolve(chosen(flag, env.CASA_DB) ?? defaultDatabase(env));
}

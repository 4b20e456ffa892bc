/**
 * Default locations (docs/ARCHITECTURE.md §6): CASA_HOME in the OS config dir, the
 * Casaconomy database in the OS data dir. Only commands call these, with the
 * environment passed in, so tests control every path.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

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

/**
 * The device token kept between commands (docs/RELAY-API.md
 * "Authentication"): CASA_HOME/token.json, 0600, written atomically. It
 * saves each command the two round trips of challenge and token while the
 * token lives (5 minutes at most, on this machine's clock).
 *
 * Invariants:
 * - It is only ever used for the server, vault and device it was issued to,
 *   and not within 30 s of its expiry.
 * - It names the key epoch the relay last answered with; the first request
 *   made with it carries that epoch (X-Casa-Expect-Epoch), so a relay that
 *   has moved on answers 409 before doing anything, and the command starts
 *   again with a new token (RestartCommand).
 * - It is removed on a 401 or a 403 (revoked) and whenever a new token is
 *   fetched for another reason; a damaged file reads as no token.
 * - A token opens nothing: it is a 5-minute credential for the relay's
 *   routes, checked against the device's row on every request, so a
 *   revoked device's token is refused at once.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../state.js';

export interface CachedToken {
  server: string;
  vaultId: string;
  deviceId: string;
  token: string;
  /** Local clock, ms. */
  expiresAt: number;
  /** The vault's epoch as the relay last named it: `EPOCH.KEYID`. */
  epoch: string;
}

/** Where a home keeps its token. */
export const tokenCachePath = (home: string): string => join(home, 'token.json');

export class TokenCache {
  constructor(readonly path: string) {}

  /** The token for this server, vault and device, if it has at least 30 s to live. */
  read(server: string, vaultId: string, deviceId: string, now: number): CachedToken | null {
    let t: CachedToken;
    try {
      t = JSON.parse(readFileSync(this.path, 'utf8')) as CachedToken;
    } catch {
      return null;
    }
    const ok =
      t !== null &&
      typeof t === 'object' &&
      t.server === server &&
      t.vaultId === vaultId &&
      t.deviceId === deviceId &&
      typeof t.token === 'string' &&
      /^[A-Za-z0-9_.-]+$/.test(t.token) &&
      typeof t.expiresAt === 'number' &&
      typeof t.epoch === 'string' &&
      /^\d+\.[0-9a-f]*$/.test(t.epoch);
    return ok && now < t.expiresAt - 30_000 ? t : null;
  }

  write(t: CachedToken): void {
    try {
      writeFileAtomic(this.path, JSON.stringify(t), 0o600);
    } catch {
      // Best effort: without the file the next command asks for a token again.
    }
  }

  drop(): void {
    rmSync(this.path, { force: true });
  }
}

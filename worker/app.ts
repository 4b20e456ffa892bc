/**
 * casa-relay's route tree (docs/RELAY-API.md is the contract), run by the
 * Worker (worker/index.ts) for what names no vault and by each vault's
 * object (worker/vault.ts) for the rest. Stores only ciphertext and public
 * keys. Every response carries X-Casa-Time; every error is
 * {"error":{"code","message"}} rendered in one place (app.onError), and
 * anything unexpected is a bare 500.
 */
import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { RELAY_SERVICE, TIME_HEADER, type RelayErrorCode } from '../src/protocol/messages.js';
import type { AppEnv } from './env.js';
import { ApiError, errorBody } from './http.js';
import { changesetRoutes } from './routes/changesets.js';
import { deviceRoutes } from './routes/devices.js';
import { digestRoutes } from './routes/digests.js';
import { keyRoutes, recoveryRoutes } from './routes/keys.js';
import { pairingRoutes, pairingVaultRoutes } from './routes/pairing.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { statusRoutes } from './routes/status.js';
import { vaultRoutes } from './routes/vaults.js';

export const app = new Hono<AppEnv>();

app.use('*', async (c, next) => {
  await next();
  // A 101 from the hub carries its own header (its headers are immutable).
  if (c.res.status !== 101) c.res.headers.set(TIME_HEADER, String(Date.now()));
});

app.get('/v1/health', (c) =>
  c.json({ ok: true, service: RELAY_SERVICE, version: c.env.RELAY_VERSION, time: Date.now() }),
);
app.route('/v1/vaults', vaultRoutes);
app.route('/v1/vaults', deviceRoutes);
app.route('/v1/vaults', keyRoutes);
app.route('/v1/vaults', snapshotRoutes);
app.route('/v1/vaults', changesetRoutes);
app.route('/v1/vaults', digestRoutes);
app.route('/v1/vaults', pairingVaultRoutes);
app.route('/v1/vaults', statusRoutes);
app.route('/v1/pairings', pairingRoutes);
app.route('/v1/recovery', recoveryRoutes);

app.notFound((c) => c.json(errorBody('not_found', 'not found'), 404));

const CODE_FOR_STATUS: Partial<Record<number, RelayErrorCode>> = {
  400: 'bad_request',
  401: 'unauthorized',
  404: 'not_found',
  413: 'too_large',
};

app.onError((err, c) => {
  if (err instanceof ApiError) {
    return c.json({ ...errorBody(err.code, err.message), ...err.extra }, err.status, err.headers);
  }
  const code = err instanceof HTTPException ? CODE_FOR_STATUS[err.status] : undefined;
  if (err instanceof HTTPException && code !== undefined) {
    return c.json(errorBody(code, code.replace('_', ' ')), err.status);
  }
  console.error('casa-relay: internal error:', err instanceof Error ? `${err.name}: ${err.message}` : 'non-error thrown');
  return c.json(errorBody('internal', 'internal error'), 500);
});

/**
 * casa-relay: the Worker entry (docs/RELAY-API.md is the contract; the
 * route tree is worker/app.ts).
 *
 * Each vault's state lives in its own Durable Object (worker/vault.ts), so
 * the Worker mostly routes:
 * - /v1/vaults/{vaultId}/... (a well-formed id) → the vault's object, as is
 *   (headers, body, a WebSocket upgrade): it runs the routes on its own SQLite;
 * - /v1/pairings/{nameplate}/... → the object of the vault whose session
 *   holds the nameplate (the global index in D1, worker/index-db.ts);
 * - everything else runs here, on a DB that holds no vault: health, POST
 *   /v1/vaults (validated here, then created in its object by RPC),
 *   GET /v1/recovery/{id} (index, then the object), a malformed vault id or
 *   an unknown nameplate (the same answers as for a vault with no rows).
 * The cron touches no vault: it only trims the global index. Retention runs
 * in each vault's object, by its alarm.
 */
import { TIME_HEADER } from '../src/protocol/messages.js';
import { app } from './app.js';
import { DoDatabase } from './do-sql.js';
import { vaultStub, type Env, type RouteEnv } from './env.js';
import { JSON_BODY_LIMIT, errorBody } from './http.js';
import { deleteOldNameplates, vaultOfNameplate } from './index-db.js';
import { PAIRING_KEEP_MS } from './cron.js';
import { dropLegacyTables, legacyVaultIds } from './legacy.js';

export { Vault } from './vault.js';

/** How many vaults the cron moves out of an older relay's D1 per run (worker/legacy.ts); requests move theirs at once. */
const LEGACY_PER_RUN = 500;

const VAULT_PATH = /^\/v1\/vaults\/([0-9a-f]{32})\//;
const PAIRING_PATH = /^\/v1\/pairings\/([1-9][0-9]{0,8})(?:\/|$)/;

/** A DB with no vault in it: every read finds nothing, every write changes nothing. */
const NO_VAULT = new DoDatabase(null as unknown as DurableObjectStorage, () => false).asD1();

function workerEnv(env: Env): RouteEnv {
  return { ...env, DB: NO_VAULT, INDEX: env.DB };
}

/**
 * Sends the request to the vault's object. A small declared body (a JSON
 * request) is teed: once the object has answered, whatever of it the
 * object did not read (an answer before the body: a 401 on a bad token) is
 * still read here, so the client's connection is not reset for unread
 * bytes. Uploads and chunked bodies go through as they are.
 */
async function toVault(env: Env, vaultId: string, request: Request, ctx: ExecutionContext): Promise<Response> {
  const length = Number(request.headers.get('content-length') ?? NaN);
  if (request.body === null || !Number.isSafeInteger(length) || length > JSON_BODY_LIMIT) {
    return vaultStub(env, vaultId).fetch(request);
  }
  const [body, rest] = request.body.tee();
  try {
    return await vaultStub(env, vaultId).fetch(new Request(request, { body }));
  } finally {
    ctx.waitUntil(rest.pipeTo(new WritableStream()).catch(() => undefined));
  }
}

async function route(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
  const path = new URL(request.url).pathname;
  const vault = VAULT_PATH.exec(path);
  if (vault) return toVault(env, vault[1]!, request, ctx);
  const pairing = PAIRING_PATH.exec(path);
  if (pairing) {
    let vaultId: string | null;
    try {
      vaultId = await vaultOfNameplate(env.DB, pairing[1]!);
    } catch (err) {
      console.error('casa-relay: internal error:', err instanceof Error ? `${err.name}: ${err.message}` : 'non-error thrown');
      return Response.json(errorBody('internal', 'internal error'), { status: 500, headers: { [TIME_HEADER]: String(Date.now()) } });
    }
    if (vaultId !== null) return toVault(env, vaultId, request, ctx);
  }
  return app.fetch(request, workerEnv(env), ctx);
}

export default {
  fetch: route,
  async scheduled(_controller: ScheduledController, env: Env, _ctx: ExecutionContext): Promise<void> {
    // Vaults still in an older relay's D1 move into their objects, LEGACY_PER_RUN a run (worker/legacy.ts);
    // when none is left, the old tables go.
    const legacy = await legacyVaultIds(env.DB, LEGACY_PER_RUN);
    if (legacy.length === 0 && (await dropLegacyTables(env.DB))) console.log('casa-relay: every vault has moved out of D1; its old tables are dropped');
    for (const vaultId of legacy) {
      try {
        await vaultStub(env, vaultId).adoptLegacy(vaultId);
      } catch (err) {
        console.error(`casa-relay: moving vault ${vaultId} out of D1 failed:`, err instanceof Error ? err.message : 'non-error thrown');
      }
    }
    // Nameplates an hour past their session's expiry (their sessions are gone from the vaults by then too).
    for (let round = 0; round < 4; round++) {
      if ((await deleteOldNameplates(env.DB, Date.now() - PAIRING_KEEP_MS, 500)) < 500) break;
    }
  },
} satisfies ExportedHandler<Env>;

/**
 * Digest routes (docs/RELAY-API.md "Digests"), all authenticated. Each
 * device keeps one slot: its latest digest record, an opaque sealed object
 * (docs/FORMAT.md §8) of at most 16 KiB that the relay never opens. The
 * slot lives in D1 (schema: migrations/0005_digests.sql), so storing it is
 * one statement that replaces the device's previous slot: no blob, no
 * orphan. The body is checked against X-Casa-Sha256 on arrival, as every
 * binary upload is; a revoked device or another vault's token is refused by
 * requireDevice like on every route.
 */
import { Hono, type Context } from 'hono';
import { requireDevice } from '../auth.js';
import type { AppEnv } from '../env.js';
import { DIGEST_MAX_BYTES } from '../../src/protocol/messages.js';
import { badRequest, b64uEncode, hex, sha256 } from '../http.js';
import { checksumMismatch, readUpload } from '../uploads.js';

export const digestRoutes = new Hono<AppEnv>();

interface DigestRow {
  device_id: string;
  data: string;
  updated_at: number;
}

/** The upload's bytes (at most DIGEST_MAX_BYTES: readUpload answers 413 past it), checked against X-Casa-Sha256. */
async function readDigest(c: Context<AppEnv>): Promise<Uint8Array> {
  const upload = await readUpload(c, DIGEST_MAX_BYTES);
  // A declared length is enforced by the runtime, so reading the stream stays under the cap.
  const bytes = upload.body instanceof Uint8Array ? upload.body : new Uint8Array(await new Response(upload.body).arrayBuffer());
  if (bytes.length === 0) throw badRequest('body must not be empty');
  if (hex(await sha256(bytes)) !== upload.sha256) throw checksumMismatch();
  return bytes;
}

digestRoutes.put('/:vaultId/digest', requireDevice(), async (c) => {
  const vaultId = c.var.vaultId;
  const deviceId = c.var.deviceId;
  const bytes = await readDigest(c);
  const now = Date.now();
  await c.env.DB.prepare(
    `INSERT INTO digests (vault_id, device_id, data, bytes, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (vault_id, device_id) DO UPDATE SET data = excluded.data, bytes = excluded.bytes, updated_at = excluded.updated_at`,
  )
    .bind(vaultId, deviceId, b64uEncode(bytes), bytes.length, now)
    .run();
  return c.json({ deviceId, bytes: bytes.length, updatedAt: now }, 200);
});

digestRoutes.get('/:vaultId/digests', requireDevice(), async (c) => {
  const { results } = await c.env.DB.prepare('SELECT device_id, data, updated_at FROM digests WHERE vault_id = ?1 ORDER BY device_id')
    .bind(c.var.vaultId)
    .all<DigestRow>();
  return c.json({ digests: results.map((r) => ({ deviceId: r.device_id, data: r.data, updatedAt: r.updated_at })) });
});

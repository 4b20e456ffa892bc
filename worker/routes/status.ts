/**
 * GET /v1/vaults/{vaultId}/status (docs/RELAY-API.md "Status"): what `casa
 * status` shows from the relay, in one answer — the devices, the recent
 * audit events, the snapshot head and the changeset heads, each exactly as
 * its own route answers it (GET devices, log, snapshots/head,
 * changesets/heads), and the vault's usage beside its quotas (worker/quotas.ts),
 * so a device that reuses its token spends one round trip.
 */
import { Hono } from 'hono';
import { requireDevice } from '../auth.js';
import { changesetHeads } from '../changeset-db.js';
import type { AppEnv } from '../env.js';
import { listMembers, readLog } from '../membership-db.js';
import { getHead } from '../snapshot-db.js';
import { quotasOf, usageOf } from '../quotas.js';
import { memberView } from './keys.js';

/** The audit events the status answer carries (newest first). */
export const STATUS_LOG_LIMIT = 20;

export const statusRoutes = new Hono<AppEnv>();

statusRoutes.get('/:vaultId/status', requireDevice(), async (c) => {
  const vaultId = c.var.vaultId;
  const [members, log, head, heads, usage] = await Promise.all([
    listMembers(c.env.DB, vaultId),
    readLog(c.env.DB, vaultId, STATUS_LOG_LIMIT),
    getHead(c.env.DB, vaultId),
    changesetHeads(c.env.DB, vaultId),
    usageOf(c.env.DB, vaultId, Date.now()),
  ]);
  return c.json({
    version: c.env.RELAY_VERSION,
    devices: members.map(memberView),
    events: log.map((r) => ({ at: r.at, event: r.event, deviceId: r.device_id, actorId: r.actor_id })),
    head,
    changesets: {
      head: heads.head,
      prunedThrough: heads.prunedThrough,
      devices: heads.devices.map((d) => ({ deviceId: d.device_id, seq: d.seq, cursor: d.cursor })),
    },
    usage,
    quotas: quotasOf(c.env),
  });
});

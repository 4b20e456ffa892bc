/**
 * `casa devices` lists the vault's devices (this one marked `*`, and who
 * added each); `casa devices revoke ID` revokes one (an id or a unique
 * prefix of 4+ chars) with a signed revocation, and starts a key epoch
 * sealed to every other member and the paper (docs/SECURITY.md §4.2): the
 * relay refuses the device at once, and nothing written after opens with
 * what it holds. `casa devices --log` prints the vault's audit trail.
 */
import { FailureError, UsageError, CancelledError } from '../errors.js';
import { RECOVERY } from '../protocol/membership.js';
import { makeRevocation, revokeAndRotate } from '../keys/epochs.js';
import { openKeyring } from '../keys/open.js';
import { sanitize as printable } from '../ui/format.js';
import { confirm } from '../ui/prompts.js';
import { deviceSession, loadPaired, type Context } from './context.js';
import { parseDevices, type DeviceInfo } from './vault.js';
import { updateCompletionCache } from '../completion-cache.js';

export type { DeviceInfo };


export async function runDevicesList(ctx: Context): Promise<DeviceInfo[]> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const devices = parseDevices(await session.call('GET', '/devices'), p.vault.deviceId, p.client.server);
  updateCompletionCache(ctx.globals.home, p.vault.vaultId, { devices: devices.filter((d) => d.revoked_at === null) });
  ctx.out.print(formatDevices(devices));
  ctx.out.result({ message_type: 'devices', vault_id: p.vault.vaultId, devices });
  return devices;
}

export async function runDevicesRevoke(ctx: Context, idOrPrefix: string): Promise<DeviceInfo> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  // The keyring up to date first: the new epoch follows the newest one.
  const { env, held, paper } = await openKeyring(ctx, p, session);
  const devices = parseDevices(await session.call('GET', '/devices'), p.vault.deviceId, p.client.server);
  const target = findDevice(devices, idOrPrefix);
  if (!ctx.globals.yes && ctx.out.interactive) {
    const ok = await confirm(
      ctx.out,
      target.current
        ? `Revoke THIS device (${printable(target.name)}, ${target.id})? It will no longer reach the vault.`
        : `Revoke ${printable(target.name)} (${target.id})? It will no longer reach the vault, and the vault gets new keys it never sees.`,
      'pass --yes',
    );
    if (!ok) throw new CancelledError('not revoked');
  }
  if (target.current) {
    // This device itself: the signed revocation only (a device that is no longer a member starts no epoch).
    const revocation = makeRevocation({ vaultId: p.vault.vaultId, deviceId: target.id, revokedAt: ctx.deps.now() + (p.client.clockOffsetMs ?? 0), issuer: env.deviceId, issuerSeed: env.deviceSeed });
    const res = await session.call('POST', `/devices/${target.id}/revoke`, { revocation });
    target.revoked_at = typeof res.revokedAt === 'number' ? res.revokedAt : revocation.revokedAt;
    ctx.out.print(`revoked ${printable(target.name)} (${target.id})`);
    ctx.out.warn('this device is revoked: pair it again to use it; run `casa rotate` on another device so new data uses keys it never had');
    ctx.out.result({ message_type: 'device_revoked', vault_id: p.vault.vaultId, device: target });
    return target;
  }
  const r = await revokeAndRotate(env, held, paper, target.id);
  target.revoked_at = r.revokedAt;
  const vouched = devices.filter((d) => d.added_by === target.id && d.revoked_at === null && !d.current);
  ctx.out.print(`revoked ${printable(target.name)} (${target.id}); new keys (epoch ${r.epoch}) sealed to ${r.sealedTo.map(printable).join(', ')}`);
  if (vouched.length > 0) {
    ctx.out.warn(`${printable(target.name)} had added ${vouched.map((d) => `${printable(d.name)} (${d.id})`).join(', ')}, which stay${vouched.length === 1 ? 's' : ''}: if you do not know ${vouched.length === 1 ? 'it' : 'them'}, revoke ${vouched.length === 1 ? 'it' : 'them'} too`);
  }
  ctx.out.result({ message_type: 'device_revoked', vault_id: p.vault.vaultId, device: target, epoch: r.epoch, sealed_to: r.sealedTo });
  return target;
}

export interface LogEvent {
  at: number;
  event: string;
  device_id: string | null;
  actor_id: string | null;
}

/** `casa devices --log`: the relay's audit trail of the vault, newest first, with device names. */
export async function runDevicesLog(ctx: Context, o: { limit?: string }): Promise<LogEvent[]> {
  const limit = o.limit === undefined ? 50 : Number(o.limit);
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > 500) throw new UsageError('--limit is a whole number from 1 to 500');
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const [doc, devs] = await Promise.all([session.call('GET', `/log?limit=${limit}`), session.call('GET', '/devices')]);
  const names = new Map(parseDevices(devs, p.vault.deviceId, p.client.server).map((d) => [d.id, d.name]));
  const list = Array.isArray(doc.events) ? (doc.events as Record<string, unknown>[]) : null;
  if (!list) throw new FailureError(`the relay at ${p.client.server} sent a malformed audit log`);
  const events: LogEvent[] = list
    .filter((e) => typeof e.at === 'number' && typeof e.event === 'string')
    .map((e) => ({ at: e.at as number, event: e.event as string, device_id: typeof e.deviceId === 'string' ? e.deviceId : null, actor_id: typeof e.actorId === 'string' ? e.actorId : null }));
  const who = (id: string | null) => (id === null ? '' : id === RECOVERY ? 'the recovery phrase' : `${printable(names.get(id) ?? '?')} (${id})`);
  const lines = events.map((e) => `${new Date(e.at).toISOString().replace(/\.\d+Z$/, 'Z')}  ${describe(e, who)}`);
  ctx.out.print(lines.length ? lines.join('\n') : 'no events');
  ctx.out.result({ message_type: 'device_log', vault_id: p.vault.vaultId, events });
  return events;
}

function describe(e: LogEvent, who: (id: string | null) => string): string {
  const by = e.actor_id ? ` by ${who(e.actor_id)}` : '';
  switch (e.event) {
    case 'device_enrolled':
      return `${who(e.device_id)} joined${e.actor_id ? `, added${by}` : ' with the recovery phrase'}`;
    case 'device_revoked':
      return `${who(e.device_id)} revoked${by}`;
    case 'device_certified':
      return `${who(e.device_id)} certified${by || ' by the recovery phrase'}`;
    case 'epoch_created':
      return `new keys (key epoch)${by}`;
    case 'paper_replaced':
      return `recovery phrase replaced${by}`;
    case 'vault_created':
      return 'vault created';
    default:
      return `${e.event.replace(/_/g, ' ')}${e.device_id ? ` ${who(e.device_id)}` : ''}${by}`;
  }
}

function findDevice(devices: DeviceInfo[], q: string): DeviceInfo {
  const id = q.trim().toLowerCase();
  if (!/^[0-9a-f]{4,16}$/.test(id)) {
    throw new UsageError(`${JSON.stringify(q)} is not a device id`, { hints: ['`casa devices` lists the ids'] });
  }
  const exact = devices.find((d) => d.id === id);
  if (exact) return exact;
  const hits = devices.filter((d) => d.id.startsWith(id));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) {
    throw new UsageError(`${id} matches ${hits.length} devices`, { hints: ['give more characters of the id'] });
  }
  throw new FailureError(`no device ${id} in this vault`, { hints: ['`casa devices` lists the ids'] });
}


function formatDevices(devices: DeviceInfo[]): string {
  const iso = (t: number | null) => (t === null ? '-' : new Date(t).toISOString().replace(/\.\d+Z$/, 'Z'));
  const rows = [['', 'ID', 'NAME', 'ENROLLED', 'ADDED BY', 'LAST SEEN', 'STATUS']];
  const names = new Map(devices.map((d) => [d.id, d.name]));
  const by = (d: DeviceInfo) => (d.added_by === null ? '-' : d.added_by === RECOVERY ? 'phrase' : printable(names.get(d.added_by) ?? d.added_by));
  for (const d of devices) {
    rows.push([d.current ? '*' : '', d.id, printable(d.name), iso(d.created_at), by(d), iso(d.last_seen_at), d.revoked_at === null ? 'active' : `revoked ${iso(d.revoked_at)}`]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

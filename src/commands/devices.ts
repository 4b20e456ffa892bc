/**
 * `casa devices` lists the vault's devices (this one marked `*`);
 * `casa devices revoke ID` revokes one (an id or a unique prefix of 4+ chars).
 * The relay checks revocation on every request, so a revoked device is
 * refused from its next request on.
 */
import { FailureError, UsageError, CancelledError } from '../errors.js';
import { confirm } from '../ui/prompts.js';
import { deviceSession, loadPaired, type Context } from './context.js';

export interface DeviceInfo {
  id: string;
  name: string;
  created_at: number;
  last_seen_at: number | null;
  revoked_at: number | null;
  current: boolean;
}

export async function runDevicesList(ctx: Context): Promise<DeviceInfo[]> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const devices = parseDevices(await session.call('GET', '/devices'), p.vault.deviceId, p.client.server);
  ctx.out.print(formatDevices(devices));
  ctx.out.result({ message_type: 'devices', vault_id: p.vault.vaultId, devices });
  return devices;
}

export async function runDevicesRevoke(ctx: Context, idOrPrefix: string): Promise<DeviceInfo> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const devices = parseDevices(await session.call('GET', '/devices'), p.vault.deviceId, p.client.server);
  const target = findDevice(devices, idOrPrefix);
  const self = target.current;
  if (!ctx.globals.yes && ctx.out.interactive) {
    const ok = await confirm(
      ctx.out,
      self
        ? `Revoke THIS device (${target.name}, ${target.id})? It will no longer reach the vault.`
        : `Revoke ${target.name} (${target.id})? It will no longer reach the vault.`,
      'pass --yes',
    );
    if (!ok) throw new CancelledError('not revoked');
  }
  if (target.revoked_at === null) {
    const res = await session.call('POST', `/devices/${target.id}/revoke`);
    target.revoked_at = typeof res.revokedAt === 'number' ? res.revokedAt : ctx.deps.now();
  }
  ctx.out.print(`revoked ${target.name} (${target.id})`);
  if (self) ctx.out.warn('this device is revoked: join the vault again with `casa pair --join` to use it');
  ctx.out.result({ message_type: 'device_revoked', vault_id: p.vault.vaultId, device: target });
  return target;
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

function parseDevices(doc: Record<string, unknown>, currentId: string, server: string): DeviceInfo[] {
  const list = doc.devices;
  const bad = () => new FailureError(`the relay at ${server} sent a malformed device list`);
  if (!Array.isArray(list)) throw bad();
  return list.map((d: Record<string, unknown>) => {
    if (typeof d?.id !== 'string' || typeof d.name !== 'string' || typeof d.createdAt !== 'number') throw bad();
    return {
      id: d.id,
      name: d.name,
      created_at: d.createdAt,
      last_seen_at: typeof d.lastSeenAt === 'number' ? d.lastSeenAt : null,
      revoked_at: typeof d.revokedAt === 'number' ? d.revokedAt : null,
      current: d.id === currentId,
    };
  });
}

function formatDevices(devices: DeviceInfo[]): string {
  const iso = (t: number | null) => (t === null ? '-' : new Date(t).toISOString().replace(/\.\d+Z$/, 'Z'));
  const rows = [['', 'ID', 'NAME', 'ENROLLED', 'LAST SEEN', 'STATUS']];
  for (const d of devices) {
    rows.push([d.current ? '*' : '', d.id, d.name, iso(d.created_at), iso(d.last_seen_at), d.revoked_at === null ? 'active' : `revoked ${iso(d.revoked_at)}`]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

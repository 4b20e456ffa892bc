/**
 * `casa status`: what this device knows and what the relay says, without
 * changing anything. Exit 0 whenever it could tell — an unreachable relay or
 * a revoked device is part of the answer, not a failure of the command.
 */
import { statSync } from 'node:fs';
import { readState } from '../state.js';
import { RelayHttpError } from '../sync/relay-client.js';
import { CasaError } from '../errors.js';
import { deviceSession, loadPaired, type Context } from './context.js';

export interface StatusReport {
  message_type: 'status';
  paired: boolean;
  home: string;
  vault_id: string | null;
  device_id: string | null;
  device_name: string | null;
  device_status: 'active' | 'revoked' | 'unknown' | null;
  keystore: string | null;
  server: string;
  relay: { reachable: boolean; version: string | null; error: string | null };
  clock_offset_ms: number | null;
  database: { path: string; exists: boolean; size: number | null };
}

export async function runStatus(ctx: Context): Promise<StatusReport> {
  const state = readState(ctx.globals.home);
  const server = ctx.server(state);
  const db = databaseInfo(ctx.globals.db);
  const report: StatusReport = {
    message_type: 'status',
    paired: Boolean(state?.vault),
    home: ctx.globals.home,
    vault_id: state?.vault?.vaultId ?? null,
    device_id: state?.vault?.deviceId ?? null,
    device_name: state?.vault?.deviceName ?? null,
    device_status: null,
    keystore: state?.vault ? (ctx.globals.keystore ?? state.vault.keystore) : null,
    server,
    relay: { reachable: false, version: null, error: null },
    clock_offset_ms: null,
    database: db,
  };

  const client = ctx.client(server, 5_000);
  try {
    const h = await client.health();
    report.relay = { reachable: true, version: h.version, error: null };
    report.clock_offset_ms = client.clockOffsetMs;
  } catch (err) {
    if (err instanceof CasaError && err.exitCode === 130) throw err;
    report.relay.error = err instanceof Error ? err.message : String(err);
  }

  if (state?.vault && report.relay.reachable) {
    report.device_status = 'unknown';
    try {
      const session = await deviceSession({ ...loadPaired(ctx), client });
      await session.getToken();
      report.device_status = 'active';
    } catch (err) {
      if (err instanceof RelayHttpError && err.code === 'device_revoked') report.device_status = 'revoked';
      else if (err instanceof CasaError && err.code === 'device_revoked') report.device_status = 'revoked';
      else if (err instanceof CasaError && err.exitCode === 130) throw err;
    }
  }

  ctx.out.print(formatStatus(report));
  ctx.out.result(report as unknown as Record<string, unknown>);
  return report;
}

function databaseInfo(path: string): StatusReport['database'] {
  try {
    const st = statSync(path);
    return { path, exists: st.isFile(), size: st.isFile() ? st.size : null };
  } catch {
    return { path, exists: false, size: null };
  }
}

export function formatStatus(r: StatusReport): string {
  const lines: string[] = [];
  const row = (k: string, v: string) => lines.push(`${(k + ':').padEnd(10)} ${v}`);
  if (!r.paired) {
    row('paired', 'no (run `casa pair` to create a vault or join one)');
  } else {
    row('paired', 'yes');
    row('vault', r.vault_id!);
    const st = r.device_status === 'revoked' ? ' — REVOKED: join again with `casa pair --join`' : r.device_status === 'active' ? '' : '';
    row('device', `${r.device_name} (${r.device_id})${st}`);
    row('keystore', r.keystore!);
  }
  const relay = r.relay.reachable
    ? `reachable, casa-relay ${r.relay.version}${r.clock_offset_ms === null ? '' : `, clock offset ${formatOffset(r.clock_offset_ms)}`}`
    : `unreachable (${r.relay.error})`;
  row('server', `${r.server} (${relay})`);
  row('database', `${r.database.path} (${r.database.exists ? `${r.database.size} bytes` : 'not found'})`);
  row('home', r.home);
  return lines.join('\n');
}

function formatOffset(ms: number): string {
  const sign = ms >= 0 ? '+' : '-';
  const a = Math.abs(ms);
  return a < 1000 ? `${sign}${a} ms` : `${sign}${(a / 1000).toFixed(1)} s`;
}

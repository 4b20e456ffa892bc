/**
 * `casa relay`: runs the relay Worker in workerd (Miniflare) with its D1
 * index, R2 and one Durable Object per vault persisted under --data (default
 * CASA_HOME/relay), the index's migrations applied at start (each vault's
 * object migrates its own). The first stdout line holds the URL; SIGINT or
 * SIGTERM stops it cleanly (exit 0). --retention-every sets how often each
 * vault's object runs the retention job by its alarm (RETENTION_EVERY_MS),
 * --retention-window its protection window (RETENTION_WINDOW,
 * docs/RELAY-API.md "Retention").
 */
import { join, resolve } from 'node:path';
import { FailureError, UsageError } from '../errors.js';
import type { Context } from './context.js';
import { parseDuration, UNIT_MS } from '../ui/format.js';

export interface RelayOptions {
  port?: string;
  host?: string;
  data?: string;
  retentionEvery?: string;
  retentionWindow?: string;
}

const MS_PER_DAY = UNIT_MS.d;
/** The retention job's default period on a local relay (a deployed one: RETENTION_EVERY_MS in wrangler.jsonc, 6 hours). */
const DEFAULT_RETENTION_EVERY_MS = 15 * UNIT_MS.m;
const MAX_RETENTION_EVERY_MS = UNIT_MS.d;
const MAX_RETENTION_WINDOW_MS = 36_500 * MS_PER_DAY;


/** --retention-every: 1s to 24h (default 15m). */
export function parseRetentionEvery(v: string | undefined): number {
  if (v === undefined) return DEFAULT_RETENTION_EVERY_MS;
  const ms = parseDuration(v);
  if (ms === null || ms < 1000 || ms > MAX_RETENTION_EVERY_MS) {
    throw new UsageError(`--retention-every takes a duration from 1s to 24h, not ${JSON.stringify(v)}`, {
      hints: ['a whole number with s, m or h, e.g. --retention-every 30s, 15m or 1h'],
    });
  }
  return ms;
}

/** --retention-window: 0s to 36500d; undefined keeps wrangler.jsonc's RETENTION_WINDOW. */
export function parseRetentionWindow(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const ms = parseDuration(v);
  if (ms === null || ms > MAX_RETENTION_WINDOW_MS) {
    throw new UsageError(`--retention-window takes a duration such as 30d, not ${JSON.stringify(v)}`, {
      hints: ['a whole number with s, m, h or d, e.g. --retention-window 30d or 12h (with 0s only the thinning applies)'],
    });
  }
  return ms;
}

function parsePort(v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (!/^\d{1,5}$/.test(v) || Number(v) > 65535) {
    throw new UsageError(`--port takes a number from 0 to 65535, not ${JSON.stringify(v)}`, {
      hints: ['--port 0 picks a free port'],
    });
  }
  return Number(v);
}

export async function runRelay(ctx: Context, opts: RelayOptions): Promise<void> {
  const port = parsePort(opts.port, 8787);
  const cronIntervalMs = parseRetentionEvery(opts.retentionEvery);
  const windowMs = parseRetentionWindow(opts.retentionWindow);
  const host = opts.host ?? '127.0.0.1';
  const dataDir = resolve(opts.data ?? join(ctx.globals.home, 'relay'));
  const { startRelay } = await import('../local-relay/launcher.js');
  let relay;
  try {
    relay = await startRelay({
      host,
      port,
      dataDir,
      cronIntervalMs,
      ...(windowMs === undefined ? {} : { vars: { RETENTION_WINDOW: String(windowMs) } }),
    });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    if (/EADDRINUSE|address already in use/i.test(msg)) {
      throw new FailureError(`port ${port} on ${host} is already in use`, {
        hints: ['another relay may be running; pass --port N, or --port 0 for a free port'],
      });
    }
    if (/EACCES|EPERM|EROFS|ENOTDIR/.test(msg)) {
      throw new FailureError(`cannot use ${dataDir} for the relay's data (${msg})`, {
        hints: ['pass --data DIR with a writable directory'],
      });
    }
    if (/ERR_RUNTIME_FAILURE|Workers runtime failed/.test(`${(err as { code?: string }).code ?? ''} ${msg}`)) {
      const [first, ...detail] = msg.split('\n');
      throw new FailureError(`the relay runtime (workerd) failed to start: ${first}`, {
        hints: [...detail.map((l) => `workerd: ${l}`), 'check --host, --port and --data, then try again'],
      });
    }
    throw err;
  }
  if (ctx.globals.json) {
    ctx.deps.term.stdout.write(JSON.stringify({ message_type: 'relay_started', url: relay.url, data_dir: dataDir }) + '\n');
  } else {
    ctx.deps.term.stdout.write(`casa relay listening on ${relay.url}\n`);
  }
  ctx.out.note(`data in ${dataDir}; Ctrl-C stops it`);
  await new Promise<void>((res) => {
    if (ctx.deps.signal.aborted) res();
    else ctx.deps.signal.addEventListener('abort', () => res(), { once: true });
  });
  await relay.stop();
  ctx.out.note('relay stopped');
}

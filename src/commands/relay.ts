/**
 * `casa relay`: runs the relay Worker in workerd (Miniflare) with D1, R2 and
 * the Durable Object persisted under --data (default CASA_HOME/relay), the
 * migrations applied at start. The first stdout line holds the URL; SIGINT or
 * SIGTERM stops it cleanly (exit 0).
 */
import { join, resolve } from 'node:path';
import { FailureError, UsageError } from '../errors.js';
import type { Context } from './context.js';

export interface RelayOptions {
  port?: string;
  host?: string;
  data?: string;
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
  const host = opts.host ?? '127.0.0.1';
  const dataDir = resolve(opts.data ?? join(ctx.globals.home, 'relay'));
  const { startRelay } = await import('../local-relay/launcher.js');
  let relay;
  try {
    relay = await startRelay({ host, port, dataDir });
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

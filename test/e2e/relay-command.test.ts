/**
 * `casa relay` as a user runs it: first stdout line holds the URL, --port 0
 * picks a free port, the data persists across restarts, SIGTERM/SIGINT stop
 * it cleanly with exit 0, and bad flags are usage errors.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { baseEnv, CASA, runCasa, tempDir } from '../helpers/cli.js';

function startRelayProcess(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, [CASA, 'relay', ...args], { env: baseEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const firstLine = new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`relay did not start: ${stderr}`)), 30_000);
    child.stdout.on('data', () => {
      const nl = stdout.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(t);
        resolve(stdout.slice(0, nl));
      }
    });
  });
  const exit = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  return { child, firstLine, exit, output: () => ({ stdout, stderr }) };
}

describe('casa relay', () => {
  it('prints its URL first, serves /v1/health, persists, and stops cleanly on SIGTERM and SIGINT', async () => {
    const home = tempDir();
    try {
      const r = startRelayProcess(['--port', '0'], { CASA_HOME: home.dir });
      const line = await r.firstLine;
      const url = line.match(/http:\/\/127\.0\.0\.1:(\d+)/)?.[0];
      expect(url).toBeDefined();
      const h = await fetch(`${url}/v1/health`);
      expect(h.status).toBe(200);
      expect(await h.json()).toMatchObject({ ok: true, service: 'casa-relay' });
      r.child.kill('SIGTERM');
      expect(await r.exit).toBe(0);
      expect(existsSync(join(home.dir, 'relay'))).toBe(true);

      // Same data directory again, stopped by SIGINT this time.
      const r2 = startRelayProcess(['--port', '0', '--json'], { CASA_HOME: home.dir });
      const doc = JSON.parse(await r2.firstLine);
      expect(doc).toMatchObject({ message_type: 'relay_started', data_dir: join(home.dir, 'relay') });
      expect((await fetch(`${doc.url}/v1/health`)).status).toBe(200);
      r2.child.kill('SIGINT');
      expect(await r2.exit).toBe(0);
    } finally {
      home.cleanup();
    }
  });

  it('rejects a bad --port with exit 2', async () => {
    const r = await runCasa(['relay', '--port', 'eighty']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^casa: error: --port takes a number from 0 to 65535/m);
  });
});

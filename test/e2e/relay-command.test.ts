/**
 * `casa relay` as a user runs it: first stdout line holds the URL, --port 0
 * picks a free port, the data persists across restarts, SIGTERM/SIGINT stop
 * it cleanly with exit 0, --retention-every and --retention-window drive the
 * retention job, and bad flags are usage errors.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { baseEnv, CASA, runCasa, tempDir } from '../helpers/cli.js';
import { bearer, commit, commitBody, randomHex, setupVault, sha256Hex, uploadManifest } from '../helpers/relay.js';

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

  it('runs the retention job every --retention-every, with the --retention-window given', async () => {
    const home = tempDir();
    try {
      // A window of 0s: only the thinning protects anything, so the job's work shows within seconds.
      const r = startRelayProcess(['--port', '0', '--retention-every', '1s', '--retention-window', '0s'], { CASA_HOME: home.dir });
      const url = (await r.firstLine).match(/http:\/\/127\.0\.0\.1:\d+/)?.[0];
      expect(url).toBeDefined();
      const { vault, token } = await setupVault(url!);
      const v = vault.vaultId;
      for (const seq of [1, 2]) {
        const body = new Uint8Array([seq, 2, 3]);
        const res = await fetch(`${url}/v1/vaults/${v}/changesets`, {
          method: 'POST',
          headers: { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha256Hex(body), 'X-Casa-Seq': String(seq) },
          body,
        });
        expect(res.status).toBe(201);
      }
      for (const seq of [1, 2]) {
        const sid = randomHex(16);
        await uploadManifest(url!, v, token, sid);
        expect((await commit(url!, v, token, { ...commitBody(sid, seq, []), changesetWatermark: 2 })).status).toBe(201);
      }
      // Without a run of the job both snapshots and both changesets would stay (the default window is 30 days).
      const seen = async () => ({
        seqs: ((await (await fetch(`${url}/v1/vaults/${v}/snapshots`, { headers: bearer(token) })).json()) as { snapshots: { seq: number }[] }).snapshots.map((s) => s.seq),
        prunedThrough: ((await (await fetch(`${url}/v1/vaults/${v}/changesets/heads`, { headers: bearer(token) })).json()) as { prunedThrough: number }).prunedThrough,
      });
      const deadline = Date.now() + 15_000;
      let now = await seen();
      while (now.prunedThrough !== 2 && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 250));
        now = await seen();
      }
      // Both snapshots on one day past a 0s window: the head alone stays; it covers both changesets.
      expect(now).toEqual({ seqs: [2], prunedThrough: 2 });
      r.child.kill('SIGTERM');
      expect(await r.exit).toBe(0);
    } finally {
      home.cleanup();
    }
  });

  it('rejects a bad --retention-every or --retention-window with exit 2 and a hint', async () => {
    for (const bad of ['soon', '0s', '15', '2d', '-1m', '1.5h']) {
      const r = await runCasa(['relay', '--port', '0', '--retention-every', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toMatch(/^casa: error: --retention-every takes a duration from 1s to 24h/m);
      expect(r.stderr).toMatch(/^casa: hint: .*--retention-every 30s/m);
      expect(r.stdout).toBe('');
    }
    for (const bad of ['30days', 'forever', '1w']) {
      const r = await runCasa(['relay', '--port', '0', '--retention-window', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toMatch(/^casa: error: --retention-window takes a duration such as 30d/m);
      expect(r.stderr).toMatch(/^casa: hint: /m);
    }
    const help = await runCasa(['relay', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--retention-every <duration>/);
    expect(help.stdout).toMatch(/--retention-window <duration>/);
  });
});

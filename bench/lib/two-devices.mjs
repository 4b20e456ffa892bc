// Shared by bench/latency.mjs and bench/detector.mjs: a casa command run
// without blocking the event loop (those benches run a proxy in their own
// process), a median, and the two devices both start from — A holds a
// make-db.mjs database, synced and snapshotted; B restored it.

import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeDb } from './make-db.mjs';

const CASA = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'casa');

/** One casa command, timed (ms) with its stdout; a non-zero exit rejects with its stderr; 10 minutes at most. */
export function casa(env, args) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [CASA, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      if (err.length < 65536) err += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 600_000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`casa ${args.join(' ')} exited ${code}: ${err}`));
      else resolve({ ms: performance.now() - t0, stdout: out });
    });
  });
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Devices A and B under `w` on `server` (file keystore): A's --mb database synced and snapshotted, B restored from it. */
export async function twoDevices(w, server, { mb, seed }) {
  const base = { ...process.env, CASA_KEYSTORE: 'file', CASA_SERVER: server };
  for (const k of ['CASA_HOME', 'CASA_DB', 'CASA_TMPDIR']) delete base[k];
  const dev = (n) => {
    const home = path.join(w, n);
    mkdirSync(home, { recursive: true, mode: 0o700 });
    return { ...base, CASA_HOME: home, CASA_DB: path.join(home, 'casa.db') };
  };
  const [A, B] = ['a', 'b'].map(dev);
  const phrase = path.join(w, 'phrase.txt');
  await casa(A, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'bench-a']);
  makeDb({ out: A.CASA_DB, sizeMb: mb, seed });
  await casa(A, ['sync', '--quiet']);
  await casa(A, ['snapshot', '--quiet']);
  await casa(B, ['restore', '--yes', '--quiet', '--phrase-file', phrase, '--device-name', 'bench-b']);
  rmSync(phrase);
  return { A, B };
}

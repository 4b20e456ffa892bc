#!/usr/bin/env node
// Bundles the relay (worker/index.ts) into dist/worker/index.js, one ESM file
// that `casa relay` runs in workerd through Miniflare (src/local-relay/launcher.ts).
// wrangler bundles worker/index.ts itself for deploys, with the same esbuild
// and the same resolution conditions, so both run the same code.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

await build({
  absWorkingDir: root,
  entryPoints: ['worker/index.ts'],
  outfile: 'dist/worker/index.js',
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  target: 'es2022',
  conditions: ['workerd', 'worker', 'browser'],
  mainFields: ['module', 'main'],
  external: ['cloudflare:*'],
  sourcemap: true,
  legalComments: 'none',
  // migrations/*.sql are the vault object's schema (worker/schema.ts), bundled as text as wrangler's default Text rule does.
  loader: { '.sql': 'text' },
  logLevel: 'warning',
});

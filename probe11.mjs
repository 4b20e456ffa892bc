import { deriveVaultKeys } from './dist/crypto/kdf.js';
import { generatePhrase } from './dist/crypto/phrase.js';
import { sealPack } from './dist/sync/manifest.js';
import { WorkerPool } from './dist/sync/pool.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
const keys = deriveVaultKeys(generatePhrase((n) => crypto.randomBytes(n)));
const fd = fs.openSync('/tmp/prof/db1g.db', 'r');
const packs = [];
for (let i = 0; i < 20; i++) { const plain = Buffer.alloc(8 << 20); fs.readSync(fd, plain, 0, plain.length, (100 + 8 * i) << 20); packs.push({ ...sealPack(keys, plain, crypto.randomBytes(32)), bytes: plain.length }); }
const pool = new WorkerPool(keys, Number(process.env.W ?? 2));
await pool.run({ kind: 'open', id: packs[0].id, object: packs[0].object.slice(), bytes: packs[0].bytes, pageSize: 4096, withHashes: true });
const t = Date.now();
await Promise.all(packs.map((p) => pool.run({ kind: 'open', id: p.id, object: p.object.slice(), bytes: p.bytes, pageSize: 4096, withHashes: true })));
console.log(`W=${process.env.W ?? 2} open 20 packs: ${Date.now() - t} ms`);
await pool.close();

#!/usr/bin/env node
// bench/lib/pagediff.mjs — which 4 KiB pages differ between two versions of a
// database, and the floor for an incremental snapshot of that change.
//
//   node bench/lib/pagediff.mjs OLD NEW [--page 4096]     (one JSON line)
//
// A page of NEW is "changed" when its bytes differ from the page at the same
// offset in OLD or lie past OLD's end (SQLite's in-place writes and its backup
// API keep unchanged pages at the same page number; VACUUM does not). The
// floor is the changed pages, in page order, compressed together as ONE zstd
// level-3 stream (zstd-napi, the project's binding): what a perfect page-level
// delta would weigh; no page-level tool sends less without a finer delta.
// Also: comparePages() — used to check a restored file against the original.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { Compressor } from 'zstd-napi';

const BLOCK_PAGES = 256; // read 1 MiB at a time

/**
 * Page-by-page comparison of two files: { size_a, size_b, pages_a, pages_b,
 * changed: [page index of B, 0-based] }; onChanged(buf, index) is called with
 * each changed page of B (a copy). Identical files give changed = [] and equal sizes.
 */
export function comparePages(pathA, pathB, { page = 4096, onChanged } = {}) {
  const fa = openSync(pathA, 'r');
  try {
    const fb = openSync(pathB, 'r');
    try {
      const sizeA = fstatSync(fa).size;
      const sizeB = fstatSync(fb).size;
      const block = BLOCK_PAGES * page;
      const ba = Buffer.alloc(block);
      const bb = Buffer.alloc(block);
      const changed = [];
      for (let off = 0; off < sizeB; off += block) {
        const nb = readSync(fb, bb, 0, block, off);
        const na = off < sizeA ? readSync(fa, ba, 0, block, off) : 0;
        for (let s = 0; s < nb; s += page) {
          const e = Math.min(s + page, nb);
          if (e <= na && ba.compare(bb, s, e, s, e) === 0) continue;
          const index = (off + s) / page;
          changed.push(index);
          if (onChanged) onChanged(Buffer.from(bb.subarray(s, e)), index);
        }
      }
      return { size_a: sizeA, size_b: sizeB, pages_a: Math.ceil(sizeA / page), pages_b: Math.ceil(sizeB / page), changed };
    } finally {
      closeSync(fb);
    }
  } finally {
    closeSync(fa);
  }
}

// Header fields SQLite rewrites in any copy made through its backup API
// (`.backup`, better-sqlite3 backup()): file change counter (24..27), schema
// cookie (40..43), version-valid-for (92..95), SQLite version number (96..99).
const COPY_HEADER_FIELDS = [[24, 28], [40, 44], [92, 100]];

/**
 * Byte-for-byte comparison: { identical, header_only, detail }. header_only =
 * the files differ only in the header counters a backup-API copy rewrites
 * (same pages, same content; detail says so).
 */
export function sameBytes(pathA, pathB) {
  const d = comparePages(pathA, pathB);
  if (d.size_a === d.size_b && d.changed.length === 0) return { identical: true, header_only: false, detail: 'identical' };
  if (d.size_a === d.size_b && d.changed.length === 1 && d.changed[0] === 0) {
    const [a, b] = [pathA, pathB].map((p) => {
      const buf = Buffer.alloc(4096);
      const fd = openSync(p, 'r');
      try { readSync(fd, buf, 0, buf.length, 0); } finally { closeSync(fd); }
      return buf;
    });
    let onlyCounters = a.compare(b, 100, 4096, 100, 4096) === 0; // past byte 100, page 1 is b-tree content
    for (let i = 0; i < 100 && onlyCounters; i++) {
      if (a[i] !== b[i] && !COPY_HEADER_FIELDS.some(([s0, e]) => i >= s0 && i < e)) onlyCounters = false;
    }
    if (onlyCounters) return { identical: false, header_only: true, detail: 'same pages; header counters differ (backup-API copy)' };
  }
  const first = d.changed.slice(0, 5).map((p) => p + 1).join(',');
  const sizes = d.size_a === d.size_b ? '' : `, sizes ${d.size_a} vs ${d.size_b}`;
  return { identical: false, header_only: false, detail: `DIFFERS: ${d.changed.length} page(s) (1-based: ${first}${d.changed.length > 5 ? ',…' : ''})${sizes}` };
}

/**
 * Changed pages of NEW vs OLD and the floor: { pages_old, pages_new,
 * changed_pages, changed_pct, raw_bytes, floor_bytes } (bytes as numbers).
 */
export function pageDiff(oldPath, newPath, { page = 4096, level = 3 } = {}) {
  const parts = [];
  const d = comparePages(oldPath, newPath, { page, onChanged: (buf) => parts.push(buf) });
  const raw = Buffer.concat(parts);
  parts.length = 0;
  const z = new Compressor();
  z.setParameters({ compressionLevel: level });
  const floor = raw.length ? z.compress(raw).length : 0;
  return {
    page,
    pages_old: d.pages_a,
    pages_new: d.pages_b,
    changed_pages: d.changed.length,
    changed_pct: d.pages_b ? (100 * d.changed.length) / d.pages_b : 0,
    raw_bytes: raw.length,
    floor_bytes: floor,
    floor_codec: `zstd-${level} one stream (zstd-napi)`,
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const pos = args.filter((x, i) => !x.startsWith('--') && !(i > 0 && args[i - 1].startsWith('--')));
  const pi = args.indexOf('--page');
  if (pos.length !== 2) {
    process.stderr.write('usage: node bench/lib/pagediff.mjs OLD NEW [--page 4096]\n');
    process.exitCode = 2;
  } else {
    try {
      const out = pageDiff(pos[0], pos[1], { page: pi >= 0 ? Number(args[pi + 1]) : 4096 });
      process.stdout.write(`${JSON.stringify({ old: pos[0], new: pos[1], ...out })}\n`);
    } catch (err) {
      process.stderr.write(`pagediff: ${err.message}\n`);
      process.exitCode = 1;
    }
  }
}

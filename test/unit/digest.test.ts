/**
 * The synced tables' digest (src/changesets/digest.ts, docs/FORMAT.md §8) on real
 * SQLite databases: the same rows in any insertion order give the same
 * digest; every SQLite type is its own (1, 1.0, '1', x'01', NULL; 64-bit
 * integers beyond a double); a changed field, an extra row or a missing row
 * changes that table's digest and no other; casa_* tables never count; the
 * bytes hashed are exactly the documented encoding (checked against an
 * independent encoder here). And the sealed record: round trip, bound to its
 * device, padded, a fresh salt each time; with and without the key view
 * (format 2 and 1), a record sealed by casa before key views opening as it
 * did, and a malformed key view refused.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hkdfSha256, vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { AuthenticationError, Codec, ObjectType, SALT_BYTES, sealObject } from '../../src/crypto/objects.js';
import {
  DIGEST_KEY_LABEL,
  differingTables,
  openRecord,
  recordMac,
  RecordFormatError,
  sealRecord,
  syncDigest,
  tableDigest,
  type DigestRecord,
} from '../../src/changesets/digest.js';
import { deriveSyncSchema, type SyncSchema } from '../../src/changesets/rules.js';

const RUNS = process.env.SLOW === '1' ? 300 : 30;

function open(sql: string): Database.Database {
  const db = new Database(':memory:');
  db.exec(sql);
  return db;
}

const digestOf = (db: Database.Database, schema: SyncSchema = deriveSyncSchema(db)) => syncDigest(db, schema).tables;

const ACCOUNTS = 'CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER, rate REAL, icon BLOB, note)';
const TAGS = 'CREATE TABLE tags (tx TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (tx, tag)) WITHOUT ROWID';

/** An account row without its id: name, balance, rate, icon, note. */
type Rest = [string, bigint | null, number | null, Buffer | null, unknown];
type Row = [string, ...Rest];

const rowArb: fc.Arbitrary<Rest> = fc.tuple(
  fc.string(),
  fc.option(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })),
  fc.option(fc.double({ noNaN: true })),
  fc.option(fc.uint8Array({ maxLength: 20 }).map((b) => Buffer.from(b))),
  fc.oneof(fc.constant(null), fc.integer(), fc.string(), fc.double({ noNaN: true })),
);

function fill(db: Database.Database, rows: Row[], tags: [string, string][]): void {
  const ins = db.prepare('INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?)');
  const tag = db.prepare('INSERT INTO tags VALUES (?, ?)');
  db.transaction(() => {
    for (const r of rows) ins.run(...r);
    for (const t of tags) tag.run(...t);
  })();
}

function shuffled<T>(xs: T[], seed: number): T[] {
  const out = [...xs];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe('syncDigest', () => {
  it('the same rows in any insertion order (and after deletes and re-inserts) give the same digests', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 12 }), rowArb), { selector: (r) => r[0], maxLength: 25 }),
        fc.uniqueArray(fc.tuple(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 })), { selector: (t) => t.join('\u0000'), maxLength: 15 }),
        fc.integer({ min: 1, max: 1e6 }),
        (accounts, tags, seed) => {
          const rows = accounts.map(([id, rest]) => [id, ...rest] as Row);
          const a = open(ACCOUNTS + ';' + TAGS);
          const b = open(ACCOUNTS + ';' + TAGS);
          fill(a, rows, tags);
          // b: another order, with a row written, deleted and written again (other rowids, other pages).
          fill(b, shuffled(rows, seed), shuffled(tags, seed + 1));
          if (rows.length > 0) {
            b.prepare('DELETE FROM accounts WHERE id = ?').run(rows[0]![0]);
            b.prepare('INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?)').run(...rows[0]!);
          }
          expect(digestOf(b)).toEqual(digestOf(a));
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('tells every SQLite type apart: 1, 1.0, \'1\', x\'01\', NULL; and 64-bit integers a double cannot hold', () => {
    const seen = new Map<string, string>();
    const values: [string, string, string][] = [
      ['integer 1', '1', 'integer'],
      ['real 1.0', '1.0', 'real'],
      ["text '1'", "'1'", 'text'],
      ["blob x'01'", "x'01'", 'blob'],
      ['NULL', 'NULL', 'null'],
      ['2^63-1', '9223372036854775807', 'integer'],
      ['2^63-2', '9223372036854775806', 'integer'],
      ["text ''", "''", 'text'],
      ["blob x''", "x''", 'blob'],
      ['real 0.5', '0.5', 'real'],
    ];
    for (const [what, literal, type] of values) {
      // `note` has no type affinity: SQLite keeps each value as written.
      const db = open(ACCOUNTS);
      db.exec(`INSERT INTO accounts (id, name, note) VALUES ('k', 'n', ${literal})`);
      expect(db.prepare('SELECT typeof(note) AS t FROM accounts').get(), what).toEqual({ t: type });
      const d = digestOf(db).accounts!;
      expect(seen.get(d), `${what} collides with ${seen.get(d)}`).toBeUndefined();
      seen.set(d, what);
    }
    expect(seen.size).toBe(values.length);
  });

  it('a changed field, an extra row, a missing row each change that table\'s digest, and no other', () => {
    const base = () => {
      const db = open(ACCOUNTS + ';' + TAGS);
      fill(db, [['a1', 'Giro', 1200n, 0.5, Buffer.from([1]), null], ['a2', 'Savings', null, null, null, 'x']], [['t1', 'food']]);
      return db;
    };
    const ref = digestOf(base());
    const edits: [string, string, string][] = [
      ['changed field', "UPDATE accounts SET name = 'Giro ' WHERE id = 'a1'", 'accounts'],
      ['NULL to a value', "UPDATE accounts SET balance = 0 WHERE id = 'a2'", 'accounts'],
      ['a value to NULL', "UPDATE accounts SET icon = NULL WHERE id = 'a1'", 'accounts'],
      ['an integer field to its real', "UPDATE accounts SET note = 1.0 WHERE id = 'a2'", 'accounts'],
      ['extra row', "INSERT INTO accounts (id, name) VALUES ('a3', 'New')", 'accounts'],
      ['missing row', "DELETE FROM accounts WHERE id = 'a2'", 'accounts'],
      ['extra element', "INSERT INTO tags VALUES ('t1', 'rent')", 'tags'],
      ['missing element', "DELETE FROM tags WHERE tx = 't1'", 'tags'],
      ['a key changed', "UPDATE accounts SET id = 'a0' WHERE id = 'a1'", 'accounts'],
    ];
    for (const [what, sql, table] of edits) {
      const db = base();
      db.exec(sql);
      expect(differingTables(ref, digestOf(db)), what).toEqual([table]);
    }
    // Values moving between rows or columns are not the same content either.
    const swapped = base();
    swapped.exec("UPDATE accounts SET name = CASE id WHEN 'a1' THEN 'Savings' ELSE 'Giro' END");
    expect(differingTables(ref, digestOf(swapped))).toEqual(['accounts']);
  });

  it('ignores casa_* tables, whatever they hold, and counts rows', () => {
    const db = open(ACCOUNTS + ';' + TAGS);
    fill(db, [['a1', 'Giro', 1n, null, null, null]], [['t', 'x']]);
    const before = syncDigest(db, deriveSyncSchema(db));
    expect(Object.keys(before.tables)).toEqual(['accounts', 'tags']);
    expect(before.rows).toBe(2);
    db.exec("CREATE TABLE casa_changes (seq INTEGER PRIMARY KEY, tbl, pk TEXT); INSERT INTO casa_changes (tbl, pk) VALUES ('accounts', 'a1')");
    db.exec("CREATE TABLE casa_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID; INSERT INTO casa_meta VALUES ('applying', 0)");
    const schema = deriveSyncSchema(db);
    expect(schema.tables.map((t) => t.name)).toEqual(['accounts', 'tags']);
    expect(syncDigest(db, schema).tables).toEqual(before.tables);
    db.exec("UPDATE casa_meta SET value = 1; DELETE FROM casa_changes");
    expect(syncDigest(db, schema).tables).toEqual(before.tables);
  });

  it('does not depend on the physical column order (the fingerprint does not either)', () => {
    const a = open('CREATE TABLE p (id TEXT PRIMARY KEY, x INTEGER, y TEXT)');
    const b = open('CREATE TABLE p (y TEXT, id TEXT PRIMARY KEY, x INTEGER)');
    for (const db of [a, b]) db.exec("INSERT INTO p (id, x, y) VALUES ('k1', 1, 'one'), ('k2', 2, 'two')");
    expect(deriveSyncSchema(b).fingerprint).toBe(deriveSyncSchema(a).fingerprint);
    expect(digestOf(b)).toEqual(digestOf(a));
  });

  it('orders rows whose key holds a NULL (a rowid table allows it) by their encoding, whatever the insertion order', () => {
    const make = (order: string[]) => {
      const db = open('CREATE TABLE m (a TEXT, b TEXT, v, PRIMARY KEY (a, b))');
      for (const sql of order) db.exec(sql);
      return db;
    };
    const inserts = [
      "INSERT INTO m VALUES (NULL, 'x', 1)",
      "INSERT INTO m VALUES (NULL, 'x', 2)",
      "INSERT INTO m VALUES ('k', NULL, 3)",
      "INSERT INTO m VALUES ('k', 'y', 4)",
      "INSERT INTO m VALUES (NULL, NULL, 5)",
    ];
    const ref = digestOf(make(inserts));
    for (let seed = 1; seed < 20; seed++) expect(digestOf(make(shuffled(inserts, seed)))).toEqual(ref);
    const other = make(inserts);
    other.exec('UPDATE m SET v = 6 WHERE v = 5');
    expect(differingTables(ref, digestOf(other))).toEqual(['m']);
  });

  it('streams values larger than its buffer (text and blobs over 64 KiB)', () => {
    const big = 'é'.repeat(70_000);
    const blob = randomBytes(200_000);
    const a = open(ACCOUNTS);
    a.prepare("INSERT INTO accounts (id, name, icon) VALUES ('k', ?, ?)").run(big, blob);
    const b = open(ACCOUNTS);
    b.prepare("INSERT INTO accounts (id, name, icon) VALUES ('k', ?, ?)").run(big, blob);
    expect(digestOf(b)).toEqual(digestOf(a));
    blob[123_456]! ^= 1;
    b.prepare("UPDATE accounts SET icon = ? WHERE id = 'k'").run(blob);
    expect(differingTables(digestOf(a), digestOf(b))).toEqual(['accounts']);
  });

  it('hashes exactly the encoding docs/FORMAT.md §8 describes (an independent encoder)', () => {
    const db = open('CREATE TABLE "t x" (k TEXT, n INTEGER, z, r REAL, PRIMARY KEY (n, k))');
    db.exec(`INSERT INTO "t x" VALUES ('b', 2, x'00ff', 2.5), ('a', 2, NULL, -1.0), ('ü', -1, 'txt', NULL), (NULL, 7, 1, 0.0)`);
    const t = deriveSyncSchema(db).tables[0]!;
    expect(t).toMatchObject({ pk: ['n', 'k'], columns: ['z', 'r'] });

    const parts: Buffer[] = [];
    const u32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(n);
      return b;
    };
    const u64 = (n: number) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(n));
      return b;
    };
    const lv = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s, 'utf8')]);
    const int = (n: bigint) => {
      const b = Buffer.alloc(9);
      b[0] = 1;
      b.writeBigInt64BE(n, 1);
      return b;
    };
    const real = (x: number) => {
      const b = Buffer.alloc(9);
      b[0] = 2;
      b.writeDoubleBE(x, 1);
      return b;
    };
    const text = (s: string) => Buffer.concat([Buffer.of(3), lv(s)]);
    const blob = (b: Buffer) => Buffer.concat([Buffer.of(4), u32(b.length), b]);
    const nul = Buffer.of(0);
    // Header: label, table, key columns (key order), other columns (sorted).
    parts.push(lv('casa/v1/table-digest'), lv('t x'), u32(2), lv('n'), lv('k'), u32(2), lv('r'), lv('z'));
    // Rows by key (n, k): (-1,'ü'), (2,'a'), (2,'b'); values n, k, r, z.
    parts.push(int(-1n), text('ü'), nul, text('txt'));
    parts.push(int(2n), text('a'), real(-1), nul);
    parts.push(int(2n), text('b'), real(2.5), blob(Buffer.from([0, 0xff])));
    // The row whose key holds a NULL, after the others (sorted by encoding), then the two counts.
    parts.push(Buffer.concat([int(7n), nul, real(0), int(1n)]));
    parts.push(u64(3), u64(1));
    const expected = createHash('sha256').update(Buffer.concat(parts)).digest('hex').slice(0, 32);
    expect(tableDigest(db, t)).toEqual({ digest: expected, rows: 4 });
  });
});

describe('the digest record', () => {
  const keys = vaultKeysFromRoot(new Uint8Array(32).fill(3));
  const random = (n: number) => new Uint8Array(randomBytes(n));
  const record: DigestRecord = { deviceId: 'a1b2c3d4e5f60718', seq: 3, cursor: 120, fingerprint: '0123456789abcdef', tables: { accounts: 'ab'.repeat(16), tags: 'cd'.repeat(16) }, at: 1_795_000_000_000 };

  it('round-trips, padded to 1 KiB steps, a fresh salt each time', () => {
    const a = sealRecord(keys, record, random);
    const b = sealRecord(keys, record, random);
    expect(a.length).toBe(48 + 1024 + 16);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
    expect(a[5]).toBe(7); // object type: digest
    expect(openRecord(keys, record.deviceId, a)).toEqual(record);
  });

  it('is bound to its device and vault: moved or altered, it does not open', () => {
    const sealed = sealRecord(keys, record, random);
    expect(() => openRecord(keys, 'ffffffffffffffff', sealed)).toThrow(AuthenticationError);
    expect(() => openRecord({ ...keys, vaultId: 'f'.repeat(32) }, record.deviceId, sealed)).toThrow(AuthenticationError);
    const bad = Uint8Array.from(sealed);
    bad[100]! ^= 1;
    expect(() => openRecord(keys, record.deviceId, bad)).toThrow(AuthenticationError);
  });

  it('refuses what does not fit a slot, and bad fields', () => {
    const many = Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`table_number_${i}`, 'ab'.repeat(16)]));
    expect(() => sealRecord(keys, { ...record, tables: many }, random)).toThrow(RangeError);
    expect(() => sealRecord(keys, { ...record, seq: 0 }, random)).toThrow(RangeError);
    expect(() => sealRecord(keys, { ...record, tables: { a: 'xyz' } }, random)).toThrow(RangeError);
  });

  it('the local MAC changes with the cursor, the schema or a digest, not with seq or time', () => {
    const m = recordMac(keys, record);
    expect(recordMac(keys, { ...record, seq: 9, at: 1 } as DigestRecord)).toBe(m);
    expect(recordMac(keys, { ...record, cursor: 121 })).not.toBe(m);
    expect(recordMac(keys, { ...record, fingerprint: 'x' })).not.toBe(m);
    expect(recordMac(keys, { ...record, tables: { ...record.tables, tags: 'ce'.repeat(16) } })).not.toBe(m);
    expect(recordMac(vaultKeysFromRoot(new Uint8Array(32).fill(4)), record)).not.toBe(m);
  });
});

describe('the digest record with a key view (format 2)', () => {
  const keys = vaultKeysFromRoot(new Uint8Array(32).fill(3));
  const random = (n: number) => new Uint8Array(randomBytes(n));
  const fixedSalt = (n: number) => new Uint8Array(n).fill(0x5a);
  const record: DigestRecord = { deviceId: 'a1b2c3d4e5f60718', seq: 3, cursor: 120, fingerprint: '0123456789abcdef', tables: { accounts: 'ab'.repeat(16), tags: 'cd'.repeat(16) }, at: 1_795_000_000_000 };
  const view = { epoch: 4, history: 'e0'.repeat(32), revoked: ['0000000000000001', 'fedcba9876543210'] };

  /** Seals `json` as a record's plaintext would be, under the digest key: what a device holding the keys could make. */
  function sealJson(json: unknown, deviceId = record.deviceId): Uint8Array {
    const body = Buffer.from(JSON.stringify(json), 'utf8');
    const plaintext = new Uint8Array(1024);
    new DataView(plaintext.buffer).setUint32(0, body.length, false);
    plaintext.set(body, 4);
    return sealObject({
      type: ObjectType.digest,
      codec: Codec.none,
      keyId: keys.keyId,
      purposeKey: hkdfSha256(keys.changesetKey, new Uint8Array(0), new TextEncoder().encode(DIGEST_KEY_LABEL), 32),
      vaultId: keys.vaultId,
      identity: `digest:v1:${deviceId}`,
      plaintext,
      salt: random(SALT_BYTES),
    });
  }

  it('a record sealed by casa before key views (frozen bytes) still opens, to the record without a view; sealing it again gives the same bytes', () => {
    const frozen = new Uint8Array(Buffer.from(readFileSync(new URL('../fixtures/digest-record-v1.hex', import.meta.url), 'utf8').trim(), 'hex'));
    const opened = openRecord(keys, record.deviceId, frozen);
    expect(opened).toEqual(record);
    expect(opened.keys).toBeUndefined();
    expect(Buffer.from(sealRecord(keys, record, fixedSalt)).equals(Buffer.from(frozen))).toBe(true);
  });

  it('round-trips the view inside the encryption (the relay sees neither it nor its size beyond 1 KiB steps)', () => {
    const sealed = sealRecord(keys, { ...record, keys: view }, random);
    expect(sealed.length).toBe(48 + 1024 + 16);
    expect(openRecord(keys, record.deviceId, sealed)).toEqual({ ...record, keys: view });
    expect(Buffer.from(sealed).includes(Buffer.from(view.history))).toBe(false);
    expect(Buffer.from(sealed).includes(Buffer.from(view.revoked[1]!))).toBe(false);
    // No revocation verified: an empty list.
    const none = { ...view, revoked: [] };
    expect(openRecord(keys, record.deviceId, sealRecord(keys, { ...record, keys: none }, random)).keys).toEqual(none);
  });

  it('the plaintext is format 2 with the view between tables and at, and format 1 without', () => {
    const json = (r: DigestRecord) => {
      const plain = JSON.stringify({ format: r.keys ? 2 : 1, vaultId: keys.vaultId, deviceId: r.deviceId, seq: r.seq, cursor: r.cursor, fingerprint: r.fingerprint, tables: r.tables, ...(r.keys ? { keys: r.keys } : {}), at: r.at });
      return plain;
    };
    // Sealed by hand from the documented JSON, each opens to the record sealRecord would make.
    expect(openRecord(keys, record.deviceId, sealJson(JSON.parse(json({ ...record, keys: view }))))).toEqual({ ...record, keys: view });
    expect(openRecord(keys, record.deviceId, sealJson(JSON.parse(json(record))))).toEqual(record);
  });

  it('refuses a malformed view, a view in format 1, and format 2 without one (RecordFormatError); sealRecord refuses a bad view', () => {
    const base = { format: 2, vaultId: keys.vaultId, deviceId: record.deviceId, seq: 1, cursor: 0, fingerprint: 'f', tables: {} };
    const bad: [string, unknown][] = [
      ['format 2 without keys', { ...base, at: 1 }],
      ['format 1 with keys', { ...base, format: 1, keys: view, at: 1 }],
      ['format 3', { ...base, format: 3, keys: view, at: 1 }],
      ['epoch 0', { ...base, keys: { ...view, epoch: 0 }, at: 1 }],
      ['short history', { ...base, keys: { ...view, history: 'ab'.repeat(16) }, at: 1 }],
      ['uppercase history', { ...base, keys: { ...view, history: 'AB'.repeat(32) }, at: 1 }],
      ['unsorted revoked', { ...base, keys: { ...view, revoked: [...view.revoked].reverse() }, at: 1 }],
      ['a revoked id twice', { ...base, keys: { ...view, revoked: [view.revoked[0], view.revoked[0]] }, at: 1 }],
      ['not a device id', { ...base, keys: { ...view, revoked: ['recovery'] }, at: 1 }],
      ['an extra field in keys', { ...base, keys: { ...view, members: [] }, at: 1 }],
      ['keys not an object', { ...base, keys: [4], at: 1 }],
    ];
    for (const [what, json] of bad) expect(() => openRecord(keys, record.deviceId, sealJson(json)), what).toThrow(RecordFormatError);
    expect(() => sealRecord(keys, { ...record, keys: { ...view, revoked: ['zz'] } }, random)).toThrow(RangeError);
    expect(() => sealRecord(keys, { ...record, keys: { ...view, epoch: 0 } }, random)).toThrow(RangeError);
  });

  it('the local MAC changes with the view (so a device publishes again when its keys change), and stays as before without one', () => {
    const m = recordMac(keys, record);
    const withView = recordMac(keys, { ...record, keys: view });
    expect(withView).not.toBe(m);
    expect(recordMac(keys, { ...record, keys: { ...view, epoch: 5 } })).not.toBe(withView);
    expect(recordMac(keys, { ...record, keys: { ...view, history: 'e1'.repeat(32) } })).not.toBe(withView);
    expect(recordMac(keys, { ...record, keys: { ...view, revoked: [] } })).not.toBe(withView);
    // Without a view: the MAC casa before key views kept.
    const macKey = hkdfSha256(keys.changesetKey, new Uint8Array(0), new TextEncoder().encode('casa/v1/digest-local-mac'), 32);
    const tables = Object.keys(record.tables).sort().map((k) => [k, record.tables[k]]);
    expect(m).toBe(createHmac('sha256', macKey).update(JSON.stringify(['casa/v1/digest-published', record.cursor, record.fingerprint, tables])).digest('hex'));
  });
});

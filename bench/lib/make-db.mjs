#!/usr/bin/env node
// bench/lib/make-db.mjs — generate a Casaconomy-like personal-finance SQLite
// database of a target size, deterministically from a seed (same file bytes
// for the same seed, size and SQLite version).
//
//   node bench/lib/make-db.mjs --out FILE --size-mb 100 [--seed 1]
//
// What matters for a page-level snapshot tool, and what this reproduces:
// - text UUID primary keys (36 chars): the PK and FK indexes receive inserts at
//   random positions, so their pages are partly full and scattered, as in a
//   database an app filled over years (no VACUUM at the end);
// - transactions inserted in date order over ~20 years (rowid ≈ date),
//   amounts in cents, memos partly templated bank lines, partly free words,
//   25% NULL; ~0.6 tags per transaction in transaction_tags (composite PK);
// - rules with JSON text conditions/actions; accounts, categories, payees;
// - indexes on transactions (account_id, date), (date), (payee_id),
//   (category_id) and transaction_tags (tag);
// - page size 4096, WAL journal mode, checkpointed (TRUNCATE) and closed, so
//   the main file holds everything and no -wal is left.
// About 570 bytes per transaction including indexes (100 MiB ≈ 185,000 rows).
// Prints one JSON line with what it made. Uses the project's better-sqlite3.

import { existsSync, rmSync, statSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';

export const PAGE_SIZE = 4096;

/** --key value pairs → object; a bare --flag becomes true. */
export function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument: ${a}`);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) o[a.slice(2)] = true;
    else o[a.slice(2)] = argv[++i];
  }
  return o;
}

/**
 * A small deterministic PRNG (mulberry32) with the helpers the generator
 * needs. Data only: never use it for anything secret.
 */
export function makeRandom(seed) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n) => Math.floor(next() * n);
  const pick = (arr) => arr[int(arr.length)];
  const hex = (n) => {
    let out = '';
    while (out.length < n) out += (Math.floor(next() * 4294967296) >>> 0).toString(16).padStart(8, '0');
    return out.slice(0, n);
  };
  // RFC 4122 version-4 layout (random hex, version and variant nibbles set).
  const uuid = () => {
    const h = hex(32);
    const variant = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
  };
  return { next, int, pick, hex, uuid };
}

export const SCHEMA = `
CREATE TABLE accounts (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
  currency TEXT NOT NULL DEFAULT 'EUR', opening_balance INTEGER NOT NULL DEFAULT 0,
  iban TEXT, closed INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE categories (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, parent_id TEXT REFERENCES categories(id),
  kind TEXT NOT NULL CHECK (kind IN ('income','expense','transfer')),
  sort_order INTEGER NOT NULL DEFAULT 0, hidden INTEGER NOT NULL DEFAULT 0);
CREATE TABLE payees (
  id TEXT PRIMARY KEY, name TEXT NOT NULL,
  default_category_id TEXT REFERENCES categories(id), notes TEXT, created_at TEXT NOT NULL);
CREATE TABLE rules (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  conditions TEXT NOT NULL,
  actions TEXT NOT NULL,
  enabled INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL);
CREATE TABLE transactions (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts(id),
  date TEXT NOT NULL,
  amount INTEGER NOT NULL,
  payee_id TEXT REFERENCES payees(id),
  category_id TEXT REFERENCES categories(id),
  memo TEXT,
  cleared INTEGER NOT NULL DEFAULT 0,
  transfer_id TEXT,
  imported_id TEXT,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE transaction_tags (
  transaction_id TEXT NOT NULL REFERENCES transactions(id) ON DELETE CASCADE,
  tag TEXT NOT NULL,
  PRIMARY KEY (transaction_id, tag));
CREATE INDEX idx_transactions_account_date ON transactions(account_id, date);
CREATE INDEX idx_transactions_date ON transactions(date);
CREATE INDEX idx_transactions_payee ON transactions(payee_id);
CREATE INDEX idx_transactions_category ON transactions(category_id);
CREATE INDEX idx_transaction_tags_tag ON transaction_tags(tag);
`;

const MERCHANTS = ['REWE', 'Lidl', 'Aldi Sued', 'Edeka', 'Netto', 'Kaufland', 'Penny', 'Amazon', 'Netflix',
  'Spotify', 'Deutsche Bahn', 'BVG', 'Shell', 'Aral', 'Esso', 'IKEA', 'dm-drogerie', 'Rossmann', 'MediaMarkt',
  'Saturn', 'Zalando', 'Lieferando', 'Uber', 'Stadtwerke', 'Vodafone', 'Telekom', 'O2', 'Allianz', 'HUK-Coburg',
  'Apotheke am Markt', 'Baeckerei Kamps', 'Starbucks', 'McDonalds', 'Decathlon', 'H&M', 'Tchibo', 'OBI',
  'Hornbach', 'Thalia', 'Fressnapf'];
const CITIES = ['Berlin', 'Hamburg', 'Muenchen', 'Koeln', 'Frankfurt', 'Stuttgart', 'Leipzig', 'Dresden',
  'Bremen', 'Hannover', 'Nuernberg', 'Bonn', 'Mainz', 'Freiburg', 'Muenster', 'Online'];
const FIRST_NAMES = ['Anna', 'Ben', 'Clara', 'David', 'Eva', 'Felix', 'Greta', 'Jonas', 'Lena', 'Max', 'Mia',
  'Paul', 'Sophie', 'Tim'];
const LAST_NAMES = ['Mueller', 'Schmidt', 'Schneider', 'Fischer', 'Weber', 'Meyer', 'Wagner', 'Becker',
  'Hoffmann', 'Schulz'];
const WORDS = ['groceries', 'weekly', 'shop', 'dinner', 'lunch', 'with', 'friends', 'birthday', 'gift', 'for',
  'mum', 'dad', 'kids', 'school', 'trip', 'fuel', 'train', 'ticket', 'monthly', 'subscription', 'rent',
  'deposit', 'refund', 'return', 'split', 'bill', 'coffee', 'books', 'repair', 'bike', 'car', 'insurance',
  'doctor', 'pharmacy', 'holiday', 'hotel', 'flight', 'taxi', 'cinema', 'concert', 'gym', 'electricity',
  'water', 'internet', 'phone', 'tax', 'office', 'supplies', 'garden', 'furniture', 'clothes', 'shoes',
  'haircut', 'parking', 'toll', 'ferry'];
export const TAGS = ['vacation', 'business', 'reimbursable', 'tax-deductible', 'kids', 'shared', 'gift',
  'health', 'car', 'home', 'subscription', 'cash', 'work-trip', 'wedding', 'renovation', 'pet', 'education',
  'charity', 'review', 'recurring', 'vacation-2019', 'vacation-2021', 'vacation-2023', 'xmas', 'birthday',
  'emergency', 'investment', 'side-project', 'moving', 'garden'];
const ACCOUNTS = [['Girokonto', 'checking'], ['Tagesgeld', 'savings'], ['Visa', 'credit'],
  ['Mastercard', 'credit'], ['Cash', 'cash'], ['Depot', 'investment'], ['PayPal', 'wallet'],
  ['Joint account', 'checking'], ['Bausparvertrag', 'savings'], ['Old Girokonto', 'checking'],
  ['Amex', 'credit'], ['Kids savings', 'savings']];
const CATEGORY_TREE = {
  Income: ['Salary', 'Bonus', 'Interest', 'Dividends', 'Refunds', 'Gifts received', 'Side income'],
  Housing: ['Rent', 'Electricity', 'Heating', 'Water', 'Internet', 'Furniture', 'Repairs', 'Household'],
  Food: ['Groceries', 'Restaurants', 'Coffee', 'Takeaway', 'Bakery'],
  Transport: ['Fuel', 'Public transport', 'Train', 'Taxi', 'Car insurance', 'Car repair', 'Parking'],
  Health: ['Pharmacy', 'Doctor', 'Dentist', 'Gym', 'Health insurance'],
  Leisure: ['Cinema', 'Concerts', 'Books', 'Games', 'Hobbies', 'Streaming', 'Holidays', 'Hotels'],
  Shopping: ['Clothes', 'Shoes', 'Electronics', 'Gifts', 'Drugstore'],
  Family: ['Kids', 'School', 'Childcare', 'Pets'],
  Finance: ['Fees', 'Taxes', 'Savings transfer', 'Investments', 'Loan repayment'],
};

export const DAY_MS = 86_400_000;
const pad = (n, w = 2) => String(n).padStart(w, '0');
export const isoDate = (ms) => {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
};
export const isoStamp = (ms) => new Date(ms).toISOString();

/** A memo: 25% NULL, else a bank-style line or a few free words. */
export function makeMemo(r, payeeName) {
  const x = r.next();
  if (x < 0.25) return null;
  const name = payeeName ?? r.pick(MERCHANTS);
  if (x < 0.45) return `Card payment ${name} ${r.pick(CITIES)} ${pad(r.int(10000), 4)}`;
  if (x < 0.55) return `SEPA direct debit ${name} ref ${r.hex(10).toUpperCase()} mandate M-${r.int(1e6)}`;
  if (x < 0.62) return `Invoice ${r.int(2e6)} ${r.pick(WORDS)}`;
  if (x < 0.7) return `Transfer ${r.pick(FIRST_NAMES)} ${r.pick(LAST_NAMES)} ${r.pick(WORDS)}`;
  const words = [];
  for (let k = 1 + r.int(7); k > 0; k--) words.push(r.pick(WORDS));
  return words.join(' ');
}

/** A spending amount in cents (negative), log-distributed: mostly small, sometimes large. */
export function spendCents(r) {
  const u = r.next();
  return -Math.max(1, Math.round(Math.exp(5 + u * u * 6) * (0.5 + r.next())));
}

/**
 * One transaction row and its tags. `ref` = { payees: [{id, name, cat}],
 * categories: [id], accountsWeighted: [id] } (from the database or the generator).
 */
export function makeTransaction(r, ref, dayMs) {
  const payee = r.next() < 0.92 ? r.pick(ref.payees) : null;
  const income = r.next() < 0.06;
  const amount = income ? 50000 + r.int(450000) : spendCents(r);
  const memo = makeMemo(r, payee?.name);
  const created = dayMs + r.int(DAY_MS);
  const updated = r.next() < 0.2 ? created + r.int(30 * DAY_MS) : created;
  const tx = {
    id: r.uuid(),
    account_id: r.pick(ref.accountsWeighted),
    date: isoDate(dayMs),
    amount,
    payee_id: payee ? payee.id : null,
    category_id: r.next() < 0.85 ? (payee && r.next() < 0.7 ? payee.cat : r.pick(ref.categories)) : null,
    memo,
    cleared: r.next() < 0.95 ? 1 : 0,
    transfer_id: r.next() < 0.03 ? r.uuid() : null,
    imported_id: r.next() < 0.6 ? `${isoDate(dayMs).replace(/-/g, '')}-${r.hex(12)}` : null,
    created_at: isoStamp(created),
    updated_at: isoStamp(updated),
  };
  const tags = [];
  const n = r.next() < 0.55 ? 0 : 1 + r.int(r.next() < 0.7 ? 1 : 3);
  for (let k = 0; k < n; k++) {
    const t = r.pick(TAGS);
    if (!tags.includes(t)) tags.push(t);
  }
  return { tx, tags };
}

export function insertStatements(db) {
  return {
    tx: db.prepare(`INSERT INTO transactions (id, account_id, date, amount, payee_id, category_id, memo,
      cleared, transfer_id, imported_id, created_at, updated_at) VALUES (@id, @account_id, @date, @amount,
      @payee_id, @category_id, @memo, @cleared, @transfer_id, @imported_id, @created_at, @updated_at)`),
    tag: db.prepare('INSERT OR IGNORE INTO transaction_tags (transaction_id, tag) VALUES (?, ?)'),
  };
}

/** The reference rows the transactions point at, read back from a database (used by mutate.mjs). */
export function readReference(db) {
  const accounts = db.prepare('SELECT id FROM accounts ORDER BY rowid').pluck().all();
  const accountsWeighted = [];
  accounts.forEach((id, i) => { for (let k = 0; k < (i < 3 ? 10 : 1); k++) accountsWeighted.push(id); });
  return {
    accountsWeighted,
    categories: db.prepare('SELECT id FROM categories ORDER BY rowid').pluck().all(),
    payees: db.prepare('SELECT id, name, default_category_id AS cat FROM payees ORDER BY rowid').all(),
  };
}

function insertReference(db, r, baseMs) {
  const stamp = () => isoStamp(baseMs + r.int(30 * DAY_MS));
  const ia = db.prepare('INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)');
  ACCOUNTS.forEach(([name, type], i) => {
    const iban = type === 'checking' || type === 'savings' ? `DE${pad(r.int(100))}${r.int(1e9)}${r.int(1e9)}` : null;
    ia.run(r.uuid(), name, type, i === 10 ? 'USD' : 'EUR', r.int(500000), iban, name.startsWith('Old') ? 1 : 0, stamp(), stamp());
  });
  const ic = db.prepare('INSERT INTO categories VALUES (?, ?, ?, ?, ?, ?)');
  const categories = [];
  let order = 0;
  for (const [group, children] of Object.entries(CATEGORY_TREE)) {
    const gid = r.uuid();
    const kind = group === 'Income' ? 'income' : 'expense';
    ic.run(gid, group, null, kind, order++, 0);
    categories.push(gid);
    for (const child of children) {
      const id = r.uuid();
      ic.run(id, child, gid, kind, order++, r.next() < 0.05 ? 1 : 0);
      categories.push(id);
    }
  }
  const ip = db.prepare('INSERT INTO payees VALUES (?, ?, ?, ?, ?)');
  const payees = [];
  for (let i = 0; i < 3000; i++) {
    const name = r.next() < 0.7
      ? `${r.pick(MERCHANTS)} ${r.pick(CITIES)}${r.next() < 0.3 ? ` ${r.int(200)}` : ''}`
      : `${r.pick(FIRST_NAMES)} ${r.pick(LAST_NAMES)}`;
    const id = r.uuid();
    const cat = r.pick(categories);
    ip.run(id, name, cat, r.next() < 0.1 ? `${r.pick(WORDS)} ${r.pick(WORDS)}` : null, stamp());
    payees.push({ id, name, cat });
  }
  const accountIds = db.prepare('SELECT id FROM accounts ORDER BY rowid').pluck().all();
  const ir = db.prepare('INSERT INTO rules VALUES (?, ?, ?, ?, ?, ?, ?)');
  for (let i = 0; i < 300; i++) {
    const p = r.pick(payees);
    const conditions = { op: 'and', conditions: [{ field: 'payee', op: 'contains', value: p.name.split(' ')[0] }] };
    if (r.next() < 0.4) conditions.conditions.push({ field: 'amount', op: r.next() < 0.5 ? 'lt' : 'gt', value: -r.int(20000) });
    if (r.next() < 0.3) conditions.conditions.push({ field: 'account', op: 'is', value: r.pick(accountIds) });
    const actions = [{ set: 'category', value: r.pick(categories) }];
    if (r.next() < 0.5) actions.push({ addTag: r.pick(TAGS) });
    if (r.next() < 0.2) actions.push({ set: 'memo', value: `${r.pick(WORDS)} ${r.pick(WORDS)}` });
    ir.run(r.uuid(), `Rule ${i + 1}: ${p.name}`, r.int(100), JSON.stringify(conditions), JSON.stringify(actions),
      r.next() < 0.9 ? 1 : 0, stamp());
  }
}

// Bytes per transaction including its tags and index entries, only to spread
// the dates over ~20 years whatever the target size.
const EST_BYTES_PER_TX = 580;
const BATCH = 5000;

/** Generates the database; returns what it made. */
export function makeDb({ out, sizeMb, seed = 1 }) {
  if (!out) throw new Error('--out FILE is required');
  if (!(sizeMb > 0)) throw new Error(`--size-mb must be a positive number, not ${sizeMb}`);
  for (const f of [out, `${out}-wal`, `${out}-shm`, `${out}-journal`]) if (existsSync(f)) rmSync(f);
  const t0 = Date.now();
  const target = sizeMb * 1024 * 1024;
  const r = makeRandom(seed);
  const baseMs = Date.UTC(2005, 0, 1);
  const db = new Database(out);
  try {
    db.pragma(`page_size = ${PAGE_SIZE}`);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = OFF');
    db.pragma('cache_size = -262144'); // 256 MiB
    db.exec(SCHEMA);
    db.transaction(() => insertReference(db, r, baseMs))();
    const ref = readReference(db);
    const ins = insertStatements(db);
    const txPerDay = Math.max(1, target / EST_BYTES_PER_TX / (20 * 365));
    const pageCount = db.prepare('PRAGMA page_count').pluck();
    let i = 0;
    const batch = db.transaction(() => {
      for (let k = 0; k < BATCH; k++, i++) {
        const { tx, tags } = makeTransaction(r, ref, baseMs + Math.floor(i / txPerDay) * DAY_MS);
        ins.tx.run(tx);
        for (const t of tags) ins.tag.run(tx.id, t);
      }
    });
    while (pageCount.get() * PAGE_SIZE < target) batch();
    db.pragma('wal_checkpoint(TRUNCATE)');
    const stats = {
      out, seed, size_mb: sizeMb, transactions: i,
      tags: db.prepare('SELECT count(*) FROM transaction_tags').pluck().get(),
      pages: pageCount.get(),
      last_date: db.prepare('SELECT max(date) FROM transactions').pluck().get(),
    };
    db.close();
    return { ...stats, bytes: statSync(out).size, seconds: (Date.now() - t0) / 1000 };
  } catch (err) {
    if (db.open) db.close();
    throw err;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const a = parseArgs(process.argv.slice(2));
    const stats = makeDb({ out: a.out, sizeMb: Number(a['size-mb'] ?? 100), seed: Number(a.seed ?? 1) });
    process.stdout.write(`${JSON.stringify(stats)}\n`);
  } catch (err) {
    process.stderr.write(`make-db: ${err.message}\n`);
    process.exitCode = 1;
  }
}

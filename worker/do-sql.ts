/**
 * A D1-shaped adapter over a Durable Object's own SQLite (ctx.storage.sql),
 * so the routes' SQL (written for D1: prepare/bind/first/all/run/batch,
 * numbered parameters ?1, ?2, RETURNING, meta.changes) runs unchanged inside
 * the vault's object (worker/vault.ts).
 *
 * - batch() runs its statements in one ctx.storage.transactionSync, all or
 *   nothing, as D1's batch does;
 * - a single statement is its own implicit transaction (the object's writes
 *   are atomic per turn of its event loop);
 * - until the vault exists (`ready()` false: no schema yet, see
 *   worker/vault.ts), every statement finds no row and changes nothing, so
 *   a request for an unknown vault id answers exactly as D1 answered for an
 *   id it had no rows for, and leaves no storage behind.
 */

type Value = string | number | null | ArrayBuffer;

export interface SqlResult<T = Record<string, unknown>> {
  results: T[];
  success: true;
  meta: { changes: number; last_row_id: number; rows_read: number; rows_written: number; duration: number };
}

const EMPTY_META = { changes: 0, last_row_id: 0, rows_read: 0, rows_written: 0, duration: 0 };

export class DoStatement {
  constructor(
    private readonly db: DoDatabase,
    readonly sql: string,
    readonly params: Value[] = [],
  ) {}

  bind(...values: unknown[]): DoStatement {
    return new DoStatement(
      this.db,
      this.sql,
      values.map((v) => (v === undefined ? null : typeof v === 'boolean' ? (v ? 1 : 0) : (v as Value))),
    );
  }

  /** Runs now (synchronously, inside whatever transaction is open). */
  execNow<T>(): SqlResult<T> {
    if (!this.db.ready()) return { results: [], success: true, meta: { ...EMPTY_META } };
    const cursor = this.db.sql.exec(this.sql, ...this.params);
    const results = cursor.toArray() as T[];
    this.db.rowsRead += cursor.rowsRead;
    // A statement that wrote nothing (every read) changed nothing: no second statement to ask SQLite.
    const { n, id } =
      cursor.rowsWritten === 0 ? { n: 0, id: 0 } : (this.db.sql.exec('SELECT changes() AS n, last_insert_rowid() AS id').one() as { n: number; id: number });
    return {
      results,
      success: true,
      meta: { changes: n, last_row_id: id, rows_read: cursor.rowsRead, rows_written: cursor.rowsWritten, duration: 0 },
    };
  }

  async first<T = Record<string, unknown>>(column?: string): Promise<T | null> {
    const row = this.execNow<Record<string, unknown>>().results[0];
    if (row === undefined) return null;
    return (column === undefined ? row : row[column]) as T;
  }

  async all<T = Record<string, unknown>>(): Promise<SqlResult<T>> {
    return this.execNow<T>();
  }

  async run<T = Record<string, unknown>>(): Promise<SqlResult<T>> {
    return this.execNow<T>();
  }

  async raw<T = unknown[]>(): Promise<T[]> {
    return this.execNow<Record<string, unknown>>().results.map((r) => Object.values(r) as T);
  }
}

export class DoDatabase {
  /** Rows read by every statement so far (SqlStorageCursor.rowsRead, what Durable Object SQL bills). */
  rowsRead = 0;

  constructor(
    readonly storage: DurableObjectStorage,
    readonly ready: () => boolean,
  ) {}

  get sql(): SqlStorage {
    return this.storage.sql;
  }

  prepare(sql: string): DoStatement {
    return new DoStatement(this, sql);
  }

  async batch<T = Record<string, unknown>>(statements: DoStatement[]): Promise<SqlResult<T>[]> {
    if (!this.ready()) return statements.map(() => ({ results: [], success: true as const, meta: { ...EMPTY_META } }));
    return this.storage.transactionSync(() => statements.map((s) => s.execNow<T>()));
  }

  async exec(sql: string): Promise<{ count: number; duration: number }> {
    if (!this.ready()) return { count: 0, duration: 0 };
    this.sql.exec(sql);
    return { count: 1, duration: 0 };
  }

  /** The adapter where the routes expect D1 (the subset they use is implemented). */
  asD1(): D1Database {
    return this as unknown as D1Database;
  }
}

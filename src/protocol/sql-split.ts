/** Shared by the launcher (D1 migrations) and the vault object (its own schema, worker/schema.ts): the one SQL splitter. */

/**
 * Splits a migration file into statements on `;` outside strings, comments and
 * CREATE TRIGGER ... BEGIN ... END bodies (D1's prepare() takes one statement).
 */
export function splitSql(sql: string): string[] {
  const out: string[] = [];
  let cur = '';
  let depth = 0; // BEGIN ... END nesting inside a trigger body
  let i = 0;
  const word = (at: number): string => /^[A-Za-z_]+/.exec(sql.slice(at))?.[0]?.toUpperCase() ?? '';
  while (i < sql.length) {
    const ch = sql[i]!;
    if (ch === "'" || ch === '"' || ch === '`') {
      let j = i + 1;
      while (j < sql.length) {
        if (sql[j] === ch) {
          if (sql[j + 1] === ch) j += 2;
          else break;
        } else j++;
      }
      cur += sql.slice(i, j + 1);
      i = j + 1;
    } else if (ch === '-' && sql[i + 1] === '-') {
      while (i < sql.length && sql[i] !== '\n') i++;
    } else if (ch === '/' && sql[i + 1] === '*') {
      const end = sql.indexOf('*/', i + 2);
      i = end < 0 ? sql.length : end + 2;
    } else if (/[A-Za-z_]/.test(ch) && (i === 0 || !/[A-Za-z0-9_]/.test(sql[i - 1]!))) {
      const w = word(i);
      if (w === 'BEGIN' && /\bTRIGGER\b/i.test(cur)) depth++;
      else if (w === 'END' && depth > 0) depth--;
      cur += sql.slice(i, i + w.length);
      i += w.length;
    } else if (ch === ';' && depth === 0) {
      if (cur.trim()) out.push(cur.trim());
      cur = '';
      i++;
    } else {
      cur += ch;
      i++;
    }
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}


/**
 * How the commands write numbers and words for people: counts with
 * thousands separators, byte sizes in binary units, plurals, and the
 * recovery phrase as a numbered grid. Pure: values in, text out, the same
 * text on every machine (no locale, no ICU).
 */

/**
 * An integer with thousands separators ("1,234,567"). Not toLocaleString:
 * its first call loads ICU's number formatting, ~5 MB of resident memory
 * measured at the end of a 1 GiB snapshot, for a comma.
 */
export function formatCount(n: number): string {
  const s = String(Math.trunc(Math.abs(n)));
  let out = '';
  for (let i = 0; i < s.length; i++) out += (i > 0 && (s.length - i) % 3 === 0 ? ',' : '') + s[i];
  return (n < 0 ? '-' : '') + out;
}

/** A byte size in binary units: "512 B", "1.5 KiB", "53 MiB" (one decimal below 10). */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

/** `n` and the noun, plural unless n is 1: "1 change", "3 changes". */
export function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** The recovery phrase as four numbered columns, read top to bottom, for writing down. */
export function formatPhraseGrid(words: string[]): string {
  const rows: string[] = [];
  const cols = 4;
  const per = Math.ceil(words.length / cols);
  for (let r = 0; r < per; r++) {
    const cells: string[] = [];
    for (let c = 0; c < cols; c++) {
      const i = c * per + r;
      if (i < words.length) cells.push(`${String(i + 1).padStart(2)}. ${words[i]!.padEnd(9)}`);
    }
    rows.push('  ' + cells.join('  '));
  }
  return rows.join('\n');
}

/**
 * How the commands write numbers and words for people: counts with
 * thousands separators, byte sizes in binary units, plurals, the
 * recovery phrase as a numbered grid; and text from outside made safe for a
 * terminal (sanitize). Pure: values in, text out, the same text on every
 * machine (no locale, no ICU).
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

/**
 * Terminal escape sequences: CSI (`ESC [` … final byte), OSC, DCS, SOS, PM
 * and APC strings (`ESC ]`, `ESC P`, `ESC X`, `ESC ^`, `ESC _` … up to BEL
 * or `ESC \`, or to the end of the text), and the two-byte `ESC x` forms; a
 * lone ESC too.
 */
const ESCAPE_SEQUENCE = /\x1b(?:\[[0-?]*[ -/]*[@-~]?|[\]PX^_][\s\S]*?(?:\x07|\x1b\\|$)|[ -/]*[0-~])?/g;
/** C0 controls, DEL and C1 controls. */
const CONTROL = /[\x00-\x1f\x7f-\x9f]/g;
const CONTROL_BUT_NEWLINE = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/g;
/** What a control character left in a text becomes: visible, and inert on any terminal. */
export const REPLACED = '\uFFFD';

/**
 * A text that came from outside (the relay: a device name, an error
 * message) made safe for a terminal (docs/SECURITY.md §7): escape sequences
 * removed, every other control character (C0 including newline and tab,
 * DEL, C1) replaced by U+FFFD. One line in, one line out.
 */
export function sanitize(text: string): string {
  return text.replace(ESCAPE_SEQUENCE, '').replace(CONTROL, REPLACED);
}

/**
 * sanitize() for casa's own multi-line output, which may quote text from
 * outside: newlines stay, everything else as sanitize(). What every line
 * casa prints goes through (src/ui/terminal.ts Output, reportError,
 * src/ui/prompts.ts): the one place.
 */
export function sanitizeLines(text: string): string {
  return text.replace(ESCAPE_SEQUENCE, '').replace(CONTROL_BUT_NEWLINE, REPLACED);
}

/**
 * A JSON document on one line, with DEL and C1 controls escaped as well
 * (JSON.stringify escapes C0 but leaves U+007F–U+009F raw, which some
 * terminals obey): the same value to a parser, inert on a terminal.
 */
export function jsonLine(doc: unknown): string {
  return JSON.stringify(doc).replace(/[\x7f-\x9f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A time for people: UTC, to the second ("2026-11-23T10:04:05Z"). */
export function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

export const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** A duration: a whole number with s, m, h or d (30s, 15m, 1h, 30d); its ms, or null if malformed. */
export function parseDuration(text: string): number | null {
  const m = /^(\d{1,9})(s|m|h|d)$/.exec(text.trim());
  return m ? Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS] : null;
}

/**
 * A moment as a user types it (`--since`, `--at`): a duration ago (`3h`,
 * `1d`: parseDuration), or ISO 8601 with a date (`2026-12-01`, midnight
 * UTC) and optionally a time (`2026-12-01T10:04`, `...:05.250Z`, an
 * offset; without a zone, UTC). Its ms since 1970, or null if malformed.
 */
export function parseMoment(text: string, now: number): number | null {
  const ago = parseDuration(text);
  if (ago !== null) return now - ago;
  const m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/.exec(text.trim());
  if (!m) return null;
  const zone = m[3] === undefined || m[3] === 'Z' ? 'Z' : m[3].length === 5 ? `${m[3].slice(0, 3)}:${m[3].slice(3)}` : m[3];
  const ms = Date.parse(`${m[1]}T${m[2] ?? '00:00'}${zone}`);
  return Number.isNaN(ms) ? null : ms;
}

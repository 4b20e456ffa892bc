/** The CLI's number formatting (src/ui/format.ts): the same text Intl gives, without loading ICU. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PassThrough } from 'node:stream';
import { formatBytes, formatCount, jsonLine, REPLACED, sanitize, sanitizeLines } from '../../src/ui/format.js';
import { Output, reportError, type Terminal } from '../../src/ui/terminal.js';
import { FailureError } from '../../src/errors.js';

describe('formatCount', () => {
  it('writes any safe integer as en-US does', () => {
    fc.assert(fc.property(fc.maxSafeInteger(), (n) => formatCount(n) === n.toLocaleString('en-US')));
    for (const n of [0, 5, 999, 1000, 262_144, 1_000_000, -1234]) expect(formatCount(n)).toBe(n.toLocaleString('en-US'));
  });
});

describe('formatBytes', () => {
  it('uses binary units with one decimal below 10', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(52.6 * 1024 * 1024)).toBe('53 MiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });
});

/** Any byte a terminal acts on: C0, DEL, C1. */
const CONTROLS = /[\x00-\x1f\x7f-\x9f]/;

describe('sanitize: text from the relay on a terminal (docs/SECURITY.md §7)', () => {
  it('removes escape sequences whole and replaces every other control character', () => {
    expect(sanitize('phone\x1b[2J\x1b[H')).toBe('phone');
    expect(sanitize('\x1b[31mred\x1b[0m name')).toBe('red name');
    expect(sanitize('a\x1b]0;owned title\x07b')).toBe('ab');
    expect(sanitize('a\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\b')).toBe('alinkb');
    expect(sanitize('a\x1bPq#0;2;0;0;0\x1b\\b')).toBe('ab');
    expect(sanitize('a\x1bcb')).toBe('ab');
    expect(sanitize('a\x1b(Bb')).toBe('ab');
    expect(sanitize('a\x1b]52;c;ZXZpbA==')).toBe('a'); // unterminated OSC: to the end
    expect(sanitize('tail\x1b')).toBe('tail');
    expect(sanitize('a\rb\nc\td\x00e\x07f\x08g\x7fh\u009b2Ji\u0085j')).toBe(
      `a${REPLACED}b${REPLACED}c${REPLACED}d${REPLACED}e${REPLACED}f${REPLACED}g${REPLACED}h${REPLACED}2Ji${REPLACED}j`,
    );
  });

  it('leaves printable text alone, in any script', () => {
    for (const t of ['laptop', "Ana's MacBook Pro", 'ノートPC', 'ordinateur — bureau', '📱 phone', '']) expect(sanitize(t)).toBe(t);
  });

  it('never lets a control character through, whatever the input', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary' }), (s) => !CONTROLS.test(sanitize(s)) && !/[\x00-\x09\x0b-\x1f\x7f-\x9f]/.test(sanitizeLines(s))));
    fc.assert(fc.property(fc.string({ unit: 'binary' }), (s) => JSON.parse(jsonLine({ s })).s === s && !/[\x7f-\x9f]/.test(jsonLine({ s }))));
  });

  it('sanitizeLines keeps the newlines of casa\'s own multi-line text', () => {
    expect(sanitizeLines('one\ntwo \x1b[2Jthree\r\n')).toBe(`one\ntwo three${REPLACED}\n`);
  });

  it('is what Output and reportError print: notes, warnings, results, errors and hints', () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const term: Terminal = { stdin: new PassThrough(), stdout, stderr, env: {} };
    const out = new Output(term, { json: false, quiet: false });
    const hostile = 'evil\x1b[2J\x1b]0;x\x07\u009b1;1H\x7f';
    out.print(`device ${hostile}\nsecond line`);
    out.note(hostile);
    out.warn(hostile);
    reportError(term, new FailureError(`the relay refused the request (${hostile})`, { hints: [hostile] }), false);
    const json = new Output(term, { json: true, quiet: false });
    json.result({ name: hostile });
    reportError(term, new FailureError(hostile), true);
    const o = String(stdout.read());
    const e = String(stderr.read());
    expect(o).toContain('device evil');
    expect(o).toContain('\nsecond line\n');
    for (const text of [o, e]) expect(text.replace(/\n/g, '')).not.toMatch(CONTROLS);
    expect(e).toContain('casa: error: the relay refused the request (evil');
    expect(e).toContain('casa: hint: evil');
    // The JSON documents keep the value: a parser gets the relay's text back as it was.
    expect(JSON.parse(o.trim().split('\n').pop()!)).toEqual({ name: hostile });
  });
});

/** The CLI's number formatting (src/ui/format.ts): the same text Intl gives, without loading ICU. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { formatBytes, formatCount } from '../../src/ui/format.js';

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

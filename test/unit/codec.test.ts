import * as zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { _zstdBackends, Codec, CodecError, compress, compressStream, compressTransient, decompress, decompressReader, zstdBackendName } from '../../src/codec.js';

const hasZlibZstd = typeof (zlib as unknown as { zstdCompressSync?: unknown }).zstdCompressSync === 'function';

function sample(n: number): Uint8Array {
  // Compressible but not trivial: a repeating ledger-ish text with a counter.
  let s = '';
  for (let i = 0; s.length < n; i++) s += `2024-01-${(i % 28) + 1},groceries,${(i * 7919) % 10000},EUR\n`;
  return new TextEncoder().encode(s.slice(0, n));
}

function codecError(fn: () => unknown): CodecError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CodecError);
    return err as CodecError;
  }
  throw new Error('no error');
}

describe('codec none', () => {
  it('passes data through and enforces the limit', () => {
    const data = sample(1000);
    expect(compress(Codec.none, data)).toEqual(data);
    expect(decompress(Codec.none, data, 1000)).toEqual(data);
    expect(codecError(() => decompress(Codec.none, data, 999)).reason).toBe('too_large');
  });
});

describe('codec zstd', () => {
  it('uses node:zlib when the runtime has zstd, else zstd-napi', () => {
    expect(zstdBackendName()).toBe(hasZlibZstd ? 'node:zlib' : 'zstd-napi');
  });

  it.each([0, 1, 100, 65_536, 1_000_000])('round trips %i bytes', (n) => {
    const data = sample(n);
    const packed = compress(Codec.zstd, data);
    if (n >= 65_536) expect(packed.length).toBeLessThan(n / 2);
    expect(Buffer.compare(decompress(Codec.zstd, packed, n), data)).toBe(0);
  });

  it('round trips incompressible data', () => {
    const data = Uint8Array.from({ length: 200_000 }, (_, i) => (i * 2654435761) >>> 24);
    expect(Buffer.compare(decompress(Codec.zstd, compress(Codec.zstd, data), data.length), data)).toBe(0);
  });

  it('refuses output over the limit, by one byte', () => {
    const data = sample(300_000);
    const packed = compress(Codec.zstd, data);
    expect(codecError(() => decompress(Codec.zstd, packed, data.length - 1)).reason).toBe('too_large');
    expect(codecError(() => decompress(Codec.zstd, compress(Codec.zstd, sample(1)), 0)).reason).toBe('too_large');
  });

  it('refuses a bomb without inflating it', () => {
    // 256 MiB of zeros compress to a few KiB; the frame header declares the full size.
    const bomb = compress(Codec.zstd, new Uint8Array(256 * 1024 * 1024));
    expect(bomb.length).toBeLessThan(64 * 1024);
    const before = process.memoryUsage().arrayBuffers;
    expect(codecError(() => decompress(Codec.zstd, bomb, 1024 * 1024)).reason).toBe('too_large');
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 * 1024 * 1024);
  });

  it('refuses corrupt, truncated and empty input', () => {
    const packed = compress(Codec.zstd, sample(10_000));
    expect(codecError(() => decompress(Codec.zstd, packed.subarray(0, packed.length - 3), 1e6)).reason).toBe('corrupt');
    expect(codecError(() => decompress(Codec.zstd, new Uint8Array(0), 1e6)).reason).toBe('corrupt');
    expect(codecError(() => decompress(Codec.zstd, new TextEncoder().encode('not zstd at all'), 1e6)).reason).toBe('corrupt');
  });

  it('refuses an unknown codec and bad limits', () => {
    expect(codecError(() => compress(7 as Codec, new Uint8Array(1))).reason).toBe('unknown_codec');
    expect(() => decompress(Codec.zstd, new Uint8Array(1), -1)).toThrow(RangeError);
  });

  describe.runIf(hasZlibZstd)('node:zlib and zstd-napi agree (Node ≥ 22.15 only)', () => {
    it('each decodes the other', () => {
      const { zlib: z, napi } = _zstdBackends();
      const data = sample(500_000);
      expect(Buffer.compare(z!.decompress(napi.compress(data, 1), data.length), data)).toBe(0);
      expect(Buffer.compare(napi.decompress(z!.compress(data, 1), data.length), data)).toBe(0);
    });
  });
});

describe('compressStream and compressTransient', () => {
  it.each([0, 1, 4096, 1 << 20, 3 * (1 << 20) + 17])('a frame fed in pieces decompresses to the whole input (%i bytes)', (n) => {
    const data = sample(n);
    const frame = compressStream(n);
    for (let at = 0; at < n; at += 300_001) frame.write(data.subarray(at, Math.min(n, at + 300_001)));
    const out = Uint8Array.from(frame.end()); // a view of a reused buffer: copied before the next compression
    expect(Buffer.from(decompress(Codec.zstd, out, n))).toEqual(Buffer.from(data));
    if (n > 4096) expect(out.length).toBeLessThan(n / 2);
    // The one-shot transient form reads the same, and its buffer is reused by the next call.
    const once = compressTransient(Codec.zstd, data);
    expect(Buffer.from(decompress(Codec.zstd, Uint8Array.from(once), n))).toEqual(Buffer.from(data));
  });

  it('refuses input longer than it was told (zstd checks the pledged size)', () => {
    const frame = compressStream(10);
    expect(() => {
      frame.write(sample(11));
      frame.end();
    }).toThrow();
  });

  it('codec none hands the data back as it is', () => {
    const data = sample(100);
    expect(compressTransient(Codec.none, data)).toBe(data);
  });
});

describe('decompressReader', () => {
  /** Reads everything through windows of the given sizes (cycled), then end(). */
  const readAll = (codec: Codec, frame: Uint8Array, max: number, windows: number[]) => {
    const r = decompressReader(codec, frame, max);
    const pieces: Uint8Array[] = [];
    for (let k = 0; ; k++) {
      const win = new Uint8Array(windows[k % windows.length]!);
      const n = r.read(win);
      pieces.push(win.slice(0, n));
      if (n < win.length) break;
    }
    r.end();
    return Buffer.concat(pieces);
  };

  it('hands out exactly the frame\'s output, whatever the windows (fast-check)', () => {
    const data = sample(300_000);
    const frame = Uint8Array.from(compress(Codec.zstd, data));
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 200_000 }), { minLength: 1, maxLength: 6 }), (windows) => {
        expect(readAll(Codec.zstd, frame, data.length, windows).equals(Buffer.from(data))).toBe(true);
        expect(readAll(Codec.none, data, data.length, windows).equals(Buffer.from(data))).toBe(true);
      }),
      { numRuns: 40 },
    );
  });

  it('a window filled to the last byte of the frame, then end(), passes', () => {
    const data = sample(1 << 20);
    const r = decompressReader(Codec.zstd, compress(Codec.zstd, data), data.length);
    const win = new Uint8Array(1 << 19);
    expect(r.read(win)).toBe(win.length);
    expect(r.read(win)).toBe(win.length);
    expect(() => r.end()).not.toThrow();
  });

  it('end() refuses output left unread, as past the limit', () => {
    const data = sample(100_000);
    for (const codec of [Codec.zstd, Codec.none] as const) {
      const r = decompressReader(codec, codec === Codec.none ? data : compress(codec, data), data.length);
      r.read(new Uint8Array(99_999));
      expect(codecError(() => r.end()).reason).toBe('too_large');
    }
  });

  it('refuses output over the limit while reading, without producing it', () => {
    const data = sample(100_000);
    const r = decompressReader(Codec.zstd, compress(Codec.zstd, data), 50_000);
    expect(codecError(() => r.read(new Uint8Array(100_000))).reason).toBe('too_large');
    expect(codecError(() => decompressReader(Codec.none, data, 99_999)).reason).toBe('too_large');
  });

  it('a cut frame reads short and end() calls it corrupt; garbage is corrupt', () => {
    const data = sample(200_000);
    const frame = compress(Codec.zstd, data);
    const r = decompressReader(Codec.zstd, frame.subarray(0, frame.length - 10), data.length);
    expect(r.read(new Uint8Array(data.length))).toBeLessThan(data.length);
    expect(codecError(() => r.end()).reason).toBe('corrupt');
    const g = decompressReader(Codec.zstd, Uint8Array.from({ length: 1000 }, (_, i) => (i * 37) & 0xff), 1 << 20);
    expect(codecError(() => g.read(new Uint8Array(1 << 20))).reason).toBe('corrupt');
  });
});

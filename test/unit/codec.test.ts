import * as zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { _zstdBackends, Codec, CodecError, compress, compressStream, compressTransient, decompress, decompressReader, frameShape, zstdBackendName, type DecompressReader } from '../../src/codec.js';

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
  it('uses zstd-napi (node:zlib only where it cannot load), on every Node', () => {
    expect(zstdBackendName()).toBe('zstd-napi');
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

});

describe('compressStream and compressTransient', () => {
  it.each([0, 1, 4096, 1 << 20, 3 * (1 << 20) + 17])('a frame fed in pieces decompresses to the whole input (%i bytes)', (n) => {
    const data = sample(n);
    const frame = compressStream(n);
    for (let at = 0; at < n; at += 300_001) frame.write(data.subarray(at, Math.min(n, at + 300_001)));
    const out = Uint8Array.from(frame.end()); // a view of a reused buffer: copied before the next compression
    expect(Buffer.compare(decompress(Codec.zstd, out, n), data)).toBe(0); // toEqual walks a Buffer byte by byte: seconds per MiB
    if (n > 4096) expect(out.length).toBeLessThan(n / 2);
    // The one-shot transient form reads the same, and its buffer is reused by the next call.
    const once = compressTransient(Codec.zstd, data);
    expect(Buffer.compare(decompress(Codec.zstd, Uint8Array.from(once), n), data)).toBe(0);
  });

  it('refuses input longer than it was told, and an end before all of it came', () => {
    const over = compressStream(10);
    over.write(sample(6));
    expect(() => over.write(sample(5))).toThrow(RangeError);
    const short = compressStream(10);
    short.write(sample(9));
    expect(() => short.end()).toThrow(RangeError);
    // Refused in the shared wrapper: the same for both implementations, whichever runs.
    for (const b of backends()) {
      const frame = b.compressStream(1, 10);
      frame.write(sample(10));
      expect(Buffer.from(decompress(Codec.zstd, Uint8Array.from(frame.end()), 10))).toEqual(Buffer.from(sample(10)));
    }
  });

  it('codec none hands the data back as it is', () => {
    const data = sample(100);
    expect(compressTransient(Codec.none, data)).toBe(data);
  });
});

describe('decompressReader', () => {
  const readAll = (codec: Codec, frame: Uint8Array, max: number, windows: number[]) => drain(decompressReader(codec, frame, max), windows);

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

describe('frameShape (RFC 8878 frame layout)', () => {
  it('whole frames, one after another, with a skippable frame between', () => {
    const a = compress(Codec.zstd, sample(300_000));
    const b = compress(Codec.zstd, sample(10));
    const skip = Uint8Array.from([0x53, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
    expect(frameShape(a)).toBe('whole');
    expect(frameShape(Buffer.concat([a, skip, b]))).toBe('whole');
  });

  it('every strict prefix is cut; a byte more is cut or bad', () => {
    const a = compress(Codec.zstd, sample(300_000));
    for (let n = 0; n < a.length; n++) expect(frameShape(a.subarray(0, n))).toBe('cut');
    expect(['cut', 'bad']).toContain(frameShape(Buffer.concat([a, Uint8Array.of(1)])));
  });

  it('a wrong magic, the reserved header bit or the reserved block type is bad', () => {
    const a = Uint8Array.from(compress(Codec.zstd, sample(1000)));
    expect(frameShape(Uint8Array.from([1, 2, 3, 4, 5]))).toBe('bad');
    const reserved = Uint8Array.from(a);
    reserved[4]! |= 0x08;
    expect(frameShape(reserved)).toBe('bad');
    // magic, header (single segment, 1-byte size), then a block header of type 3.
    expect(frameShape(Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd, 0x20, 5, 0b111, 0, 0]))).toBe('bad');
  });
});

/**
 * One behaviour whichever zstd runs: the same frames (valid, cut, flipped,
 * with trailing bytes, oversized for the limit, garbage) fed to each
 * implementation this runtime has — zstd-napi always, node:zlib from Node
 * 22.15 — through decompress() and through a reader with random windows.
 * Each must land in the outcome class the frame was made for; where the
 * class depends on where a flip or cut fell, every implementation and both
 * calls must agree.
 */
describe('both zstd implementations: one outcome for the same frame (fast-check)', () => {
  type Outcome = { kind: 'ok'; hex: string } | { kind: 'too_large' } | { kind: 'corrupt' };
  type Backend = ReturnType<typeof backends>[number];

  const classify = (fn: () => Uint8Array): Outcome => {
    try {
      return { kind: 'ok', hex: Buffer.from(fn()).toString('hex') };
    } catch (err) {
      if (!(err instanceof CodecError) || err.reason === 'unknown_codec') throw err;
      return { kind: err.reason };
    }
  };
  const viaReader = (b: Backend, frame: Uint8Array, max: number, windows: number[]) => classify(() => drain(b.decompressReader(frame, max), windows));

  const kinds = ['valid', 'over', 'cut', 'flip', 'trailing', 'garbage'] as const;
  const arb = fc.record({
    kind: fc.constantFrom(...kinds),
    size: fc.integer({ min: 0, max: 400_000 }),
    noise: fc.integer({ min: 0, max: 3 }), // 0: a ledger text; 3: mostly random bytes
    maker: fc.nat(),
    at: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
    bit: fc.integer({ min: 0, max: 7 }),
    extra: fc.uint8Array({ minLength: 1, maxLength: 12 }),
    windows: fc.array(fc.integer({ min: 1, max: 150_000 }), { minLength: 1, maxLength: 4 }),
  });

  it('lands every case in its class, and every implementation agrees', () => {
    const all = backends();
    let compared = 0;
    fc.assert(
      fc.property(arb, (c) => {
        const data = sample(c.size);
        for (let i = 0; i < data.length; i += 1 + 4 * (4 - c.noise) ** 3) data[i] = (i * 2654435761) >>> 24;
        const maker = all[c.maker % all.length]!;
        const valid = Uint8Array.from(maker.compress(data, 1));
        let frame = valid;
        let max = data.length;
        let allowed: Outcome['kind'][];
        switch (c.kind) {
          case 'valid':
            allowed = ['ok'];
            break;
          case 'over':
            if (data.length === 0) return;
            max = Math.floor(c.at * data.length);
            allowed = ['too_large'];
            break;
          case 'cut':
            frame = valid.subarray(0, Math.floor(c.at * valid.length));
            allowed = ['corrupt'];
            break;
          case 'flip':
            frame = Uint8Array.from(valid);
            frame[Math.floor(c.at * valid.length)]! ^= 1 << c.bit;
            allowed = ['ok', 'too_large', 'corrupt']; // zstd frames carry no checksum by default
            break;
          case 'trailing':
            frame = Buffer.concat([valid, c.extra]);
            allowed = ['corrupt'];
            break;
          case 'garbage':
            frame = Uint8Array.from(c.extra);
            allowed = frame[0] === 0x28 ? ['ok', 'too_large', 'corrupt'] : ['corrupt'];
            break;
        }
        const outcomes = all.flatMap((b) => [classify(() => b.decompress(frame, max)), viaReader(b, frame, max, c.windows)]);
        if (outcomes.length > 2) compared++;
        expect(allowed).toContain(outcomes[0]!.kind);
        for (const o of outcomes) expect(o).toEqual(outcomes[0]);
        if (c.kind === 'valid') expect(outcomes[0]).toEqual({ kind: 'ok', hex: Buffer.from(data).toString('hex') });
      }),
      { numRuns: process.env.SLOW === '1' ? 2000 : 200, seed: Number(process.env.FC_SEED ?? 20_261_205) },
    );
    // Where the runtime has node:zlib's zstd, the two were really compared.
    expect(compared > 0).toBe(hasZlibZstd);
  });
});

/** Reads a reader's whole output through windows of the given sizes (cycled), then end(). */
function drain(r: DecompressReader, windows: number[]): Buffer {
  const pieces: Uint8Array[] = [];
  for (let k = 0; ; k++) {
    const win = new Uint8Array(windows[k % windows.length]!);
    const n = r.read(win);
    pieces.push(win.slice(0, n));
    if (n < win.length) break;
  }
  r.end();
  return Buffer.concat(pieces);
}

/** The zstd implementations this runtime has: zstd-napi always, node:zlib's from Node 22.15. */
function backends() {
  const { zlib: z, napi } = _zstdBackends();
  return z ? [napi, z] : [napi];
}

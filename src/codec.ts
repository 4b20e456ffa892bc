/**
 * The one compression module: plaintext is compressed before encryption
 * (docs/FORMAT.md §3, the header's codec byte). Codecs: 0 none, 1 zstd
 * (RFC 8878 frames).
 *
 * zstd comes from zstd-napi (a dependency, built on install), loaded lazily so
 * start-up never pays for the native module; node:zlib's zstd (Node ≥ 22.15)
 * only where zstd-napi cannot load. zstd-napi streams with reused contexts
 * and buffers; node:zlib has only one-shot synchronous calls, which hold a
 * whole pack's input and output: measured on Node 24 (bench/snapshot.mjs
 * --node 24, 100 MiB), casa's peak RSS was 1.27-1.45× higher with it.
 * Level 1 by default (~390 MB/s at ratio 3.46 on a finance database, as
 * measured on the project's machines).
 *
 * One behaviour whichever implementation runs (test/unit/codec.test.ts feeds
 * both the same valid, cut, flipped and oversized frames):
 * - decompression enforces the caller's `maxOutput` while it runs, so a small
 *   bomb cannot make us allocate what its frame header claims ('too_large');
 * - input that is not whole frames to its last byte (cut short, trailing
 *   bytes, garbage) is 'corrupt'; a reader hands out what could be decoded
 *   and its end() says so;
 * - a stream compression refuses input beyond the size it pledged, and ends
 *   only at exactly that size.
 * This file lives outside src/crypto because it loads a native module.
 */
import { createRequire } from 'node:module';
import * as zlib from 'node:zlib';

export const Codec = { none: 0, zstd: 1 } as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

export const ZSTD_DEFAULT_LEVEL = 1;

export type CodecErrorReason = 'unknown_codec' | 'too_large' | 'corrupt';

/** Compressed data that cannot be decoded within the limit. Never carries the data. */
export class CodecError extends Error {
  readonly reason: CodecErrorReason;
  constructor(reason: CodecErrorReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CodecError';
    this.reason = reason;
  }
}

export function isCodec(value: number): value is Codec {
  return value === Codec.none || value === Codec.zstd;
}

interface ZstdBackend {
  readonly name: 'node:zlib' | 'zstd-napi';
  compress(data: Uint8Array, level: number): Uint8Array;
  /** Like compress, but the result may be a view of a buffer this thread reuses: valid until the next call. */
  compressTransient(data: Uint8Array, level: number): Uint8Array;
  /** One frame fed piece by piece; end() returns it as compressTransient does. */
  compressStream(level: number, totalBytes: number): CompressStream;
  /** Throws CodecError('too_large') past maxOutput, CodecError('corrupt') on bad input. */
  decompress(data: Uint8Array, maxOutput: number): Uint8Array;
  /** The output of `data` piece by piece (see decompressReader). */
  decompressReader(data: Uint8Array, maxOutput: number): DecompressReader;
}

// node:zlib's zstd (Node ≥ 22.15) is newer than @types/node 20, hence the local types.
interface ZlibZstd {
  zstdCompressSync(data: Uint8Array, options: { params: Record<number, number> }): Buffer;
  zstdDecompressSync(data: Uint8Array, options: { maxOutputLength: number; finishFlush: number; chunkSize: number }): Buffer;
  constants: { ZSTD_c_compressionLevel: number; ZSTD_e_continue: number };
}

/** Output pieces node:zlib's decompression grows by (its default is 16 KiB). */
const ZLIB_CHUNK = 128 * 1024;

/**
 * node:zlib's zstd has only one-shot synchronous calls, so this backend
 * keeps zstd-napi's behaviour by other means: decompression runs with
 * `maxOutputLength` (it stops as soon as the output passes the limit) and
 * with `ZSTD_e_continue` as the final flush, so a frame cut short gives the
 * output decodable so far instead of an error, like a streaming context; then
 * frameShape says whether the input was whole frames to the last byte.
 * node:zlib alone would accept trailing bytes after a frame and call a cut
 * frame a buffer error.
 */
function zlibBackend(): ZstdBackend | undefined {
  const z = zlib as unknown as Partial<ZlibZstd>;
  if (typeof z.zstdCompressSync !== 'function' || typeof z.zstdDecompressSync !== 'function') return undefined;
  const level = z.constants?.ZSTD_c_compressionLevel;
  const keepGoing = z.constants?.ZSTD_e_continue;
  if (level === undefined || keepGoing === undefined) return undefined;
  const compressSync = z.zstdCompressSync;
  const decompressSync = z.zstdDecompressSync;
  const compress = (data: Uint8Array, lvl: number) => toUint8(compressSync(data, { params: { [level]: lvl } }));
  // compressStream's input, gathered in one buffer this thread reuses (no synchronous streaming here).
  let gather = new Uint8Array(0);
  /** What the data decodes to within the limit, and whether it ended exactly at the end of a frame. */
  const decode = (data: Uint8Array, maxOutput: number): { out: Uint8Array; whole: boolean } => {
    let out: Buffer;
    try {
      out = decompressSync(data, { maxOutputLength: Math.max(1, maxOutput), finishFlush: keepGoing, chunkSize: ZLIB_CHUNK });
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') throw tooLarge(maxOutput);
      throw new CodecError('corrupt', 'zstd data is corrupt', { cause: err });
    }
    if (out.length > maxOutput) throw tooLarge(maxOutput);
    return { out: toUint8(out), whole: frameShape(data) === 'whole' };
  };
  return {
    name: 'node:zlib',
    compress,
    compressTransient: compress,
    compressStream(lvl, totalBytes) {
      if (gather.length < totalBytes) gather = new Uint8Array(totalBytes);
      let at = 0;
      return {
        write(piece) {
          gather.set(piece, at); // past totalBytes, set() throws (compressStream checks first)
          at += piece.length;
        },
        end: () => compress(gather.subarray(0, at), lvl),
      };
    },
    decompress(data, maxOutput) {
      const { out, whole } = decode(data, maxOutput);
      if (!whole) throw new CodecError('corrupt', 'zstd data is truncated');
      return out;
    },
    decompressReader(data, maxOutput) {
      // Decoded at the first read, so that creating a reader never throws (as zstd-napi's does not).
      let decoded: { out: Uint8Array; whole: boolean } | undefined;
      let over: DecompressReader | undefined;
      const reader = (): DecompressReader => {
        if (over) return over;
        decoded = decode(data, maxOutput);
        over = readerOver(decoded.out);
        return over;
      };
      return {
        read: (into) => reader().read(into),
        end() {
          reader().end();
          if (!decoded!.whole) throw new CodecError('corrupt', 'zstd data is truncated');
        },
      };
    },
  };
}

// ---------------------------------------------------------------- frame shape

/** RFC 8878 §3.1.1: a zstd frame starts with 28 b5 2f fd (0xFD2FB528, little-endian). */
const ZSTD_MAGIC = 0xfd2fb528;
/** RFC 8878 §3.1.2: a skippable frame's magic is 0x184D2A5?; a 4-byte size and that many bytes follow. */
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;

/**
 * Whether `data` is a sequence of whole frames to its last byte ('whole'),
 * ends inside one ('cut': nothing, a header, a block or a checksum short),
 * or has a frame header or block no frame can have ('bad'). Only the layout
 * is walked (magic, frame header, block headers, checksum), never the
 * content: decoding is zstd's. node:zlib tells neither where its input
 * ended nor whether it finished a frame; zstd-napi's context does.
 */
export function frameShape(data: Uint8Array): 'whole' | 'cut' | 'bad' {
  const u32 = (at: number) => (data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16) | (data[at + 3]! << 24)) >>> 0;
  let at = 0;
  if (data.length === 0) return 'cut';
  while (at < data.length) {
    if (data.length - at < 4) return 'cut';
    const magic = u32(at);
    at += 4;
    if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) {
      if (data.length - at < 4) return 'cut';
      at += 4 + u32(at);
      if (at > data.length) return 'cut';
      continue;
    }
    if (magic !== ZSTD_MAGIC) return 'bad';
    if (at >= data.length) return 'cut';
    const fhd = data[at]!;
    if (fhd & 0x08) return 'bad'; // the reserved bit
    const single = (fhd >> 5) & 1;
    const fcs = fhd >> 6;
    at += 1 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + (fcs === 0 ? single : [0, 2, 4, 8][fcs]!);
    for (let last = 0; !last; ) {
      if (data.length - at < 3) return 'cut';
      const header = data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16);
      last = header & 1;
      const type = (header >> 1) & 3;
      if (type === 3) return 'bad'; // reserved block type
      at += 3 + (type === 1 ? 1 : header >>> 3); // an RLE block holds one byte
    }
    if (fhd & 0x04) at += 4; // the content checksum
    if (at > data.length) return 'cut';
  }
  return 'whole';
}

/** A DecompressReader over output already at hand. */
function readerOver(out: Uint8Array): DecompressReader {
  let at = 0;
  return {
    read(into) {
      const n = Math.min(into.length, out.length - at);
      into.set(out.subarray(at, at + n));
      at += n;
      return n;
    },
    end() {
      if (at !== out.length) throw new CodecError('too_large', 'more output than was read');
    },
  };
}

// The slice of zstd-napi's API used here (zstd-napi/binding.d.ts).
interface NapiDCtx {
  decompressStream(dst: Uint8Array, src: Uint8Array): [returnValue: number, produced: number, consumed: number];
  /** 1 = ZSTD_reset_session_only: forget any frame in progress, keep the parameters. */
  reset(directive: 1): void;
}
interface Napi {
  compress(data: Uint8Array, parameters: { compressionLevel: number }): Buffer;
}
interface NapiCCtx {
  compress(dst: Uint8Array, src: Uint8Array, level: number): number;
  setParameter(param: number, value: number): void;
  setPledgedSrcSize(size: number): void;
  reset(directive: number): void;
  compressStream2(dst: Uint8Array, src: Uint8Array, endOp: number): [remaining: number, produced: number, consumed: number];
}
interface NapiBinding {
  CCtx: new () => NapiCCtx;
  CParameter: { compressionLevel: number };
  EndDirective: { continue: number; end: number };
  ResetDirective: { sessionAndParameters: number };
  compressBound(size: number): number;
  DCtx: new () => NapiDCtx;
  dStreamOutSize(): number;
}

/** Largest first output buffer of a decompression: a whole pack (8 MiB) and a little. */
const INITIAL_OUTPUT = 9 * 1024 * 1024;

function napiBackend(): ZstdBackend {
  const require = createRequire(import.meta.url);
  const napi = require('zstd-napi') as Napi;
  const binding = require('zstd-napi/binding') as NapiBinding;
  const step = binding.dStreamOutSize(); // 128 KiB: zstd's recommended output block
  // One decompression context per thread, reset before each use: a context
  // holds ~1 MiB of native memory that V8 does not see, so a fresh one per
  // object piled up between garbage collections (a restore's memory grew with
  // the number of packs).
  let shared: NapiDCtx | undefined;
  // Sealing a pack compresses 8 MiB at a time: one context and one output buffer per thread, reused,
  // instead of a fresh context and a compressBound-sized buffer of garbage per pack.
  let cctx: NapiCCtx | undefined;
  let dest = new Uint8Array(0);
  // A reader's own context: a reader lives across the caller's reads, which may interleave with decompress().
  let readerCtx: NapiDCtx | undefined;
  return {
    name: 'zstd-napi',
    compress: (data, level) => toUint8(napi.compress(data, { compressionLevel: level })),
    compressTransient(data, level) {
      cctx ??= new binding.CCtx();
      const bound = binding.compressBound(data.length);
      if (dest.length < bound) dest = new Uint8Array(bound);
      return dest.subarray(0, cctx.compress(dest, data, level));
    },
    compressStream(level, totalBytes) {
      const ctx = (cctx ??= new binding.CCtx());
      ctx.reset(binding.ResetDirective.sessionAndParameters);
      ctx.setParameter(binding.CParameter.compressionLevel, level);
      ctx.setPledgedSrcSize(totalBytes); // the frame header says the size, as a one-shot frame's does
      // The output grows in the reused buffer; only the bytes written are touched (resident).
      const bound = binding.compressBound(totalBytes);
      if (dest.length < bound) dest = new Uint8Array(bound);
      let at = 0;
      const pump = (src: Uint8Array, op: number) => {
        for (;;) {
          const [remaining, produced, consumed] = ctx.compressStream2(dest.subarray(at), src, op);
          at += produced;
          src = src.subarray(consumed);
          if (op === binding.EndDirective.end ? remaining === 0 : src.length === 0) return;
          if (at === dest.length) throw new CodecError('too_large', 'zstd output over its bound');
        }
      };
      return {
        write: (piece) => pump(piece, binding.EndDirective.continue),
        end() {
          pump(new Uint8Array(0), binding.EndDirective.end);
          return dest.subarray(0, at);
        },
      };
    },
    decompress(data, maxOutput) {
      // zstd-napi's high-level decompress allocates the frame's declared content
      // size up front; the streaming context lets us stop at the limit instead.
      shared ??= new binding.DCtx();
      const dctx = shared;
      dctx.reset(1);
      // One output buffer, grown by doubling only if needed: a pack's exact size
      // is the caller's limit, so it decompresses into a single allocation (128 KiB
      // steps and a final concat cost ~2× the output in short-lived memory).
      let out = new Uint8Array(Math.max(1, Math.min(maxOutput + 1, INITIAL_OUTPUT, Math.max(64 * 1024, 4 * data.length))));
      let total = 0;
      let input = data;
      let frameDone = false;
      try {
        for (;;) {
          if (total === out.length) {
            if (out.length > maxOutput) throw tooLarge(maxOutput);
            const bigger = new Uint8Array(Math.min(maxOutput + 1, out.length * 2));
            bigger.set(out);
            out = bigger;
          }
          const [ret, produced, consumed] = dctx.decompressStream(out.subarray(total, Math.min(out.length, total + step)), input);
          input = input.subarray(consumed);
          total += produced;
          if (total > maxOutput) throw tooLarge(maxOutput);
          frameDone = ret === 0;
          if (frameDone && input.length === 0) break;
          // No input left, nothing produced, frame unfinished: the data is cut short.
          if (input.length === 0 && produced === 0) break;
        }
      } catch (err) {
        if (err instanceof CodecError) throw err;
        throw new CodecError('corrupt', 'zstd data is corrupt', { cause: err });
      }
      if (!frameDone) throw new CodecError('corrupt', 'zstd data is truncated');
      // Hand back no more memory than the data needs.
      if (total > out.length / 2) return out.subarray(0, total);
      return total === out.length ? out : out.slice(0, total);
    },
    decompressReader(data, maxOutput) {
      const dctx = (readerCtx ??= new binding.DCtx());
      dctx.reset(1);
      let input = data;
      let total = 0;
      let frameDone = false;
      // After the input is used up with the frame finished, or cut short: nothing more comes.
      let exhausted = false;
      const read = (into: Uint8Array): number => {
        let n = 0;
        try {
          while (n < into.length && !exhausted) {
            const [ret, produced, consumed] = dctx.decompressStream(into.subarray(n), input);
            input = input.subarray(consumed);
            n += produced;
            total += produced;
            if (total > maxOutput) throw tooLarge(maxOutput);
            frameDone = ret === 0;
            // Done (frame finished, no input left), or no progress possible (the data is cut short).
            if (input.length === 0 && (frameDone || produced === 0)) exhausted = true;
          }
        } catch (err) {
          exhausted = true;
          if (err instanceof CodecError) throw err;
          throw new CodecError('corrupt', 'zstd data is corrupt', { cause: err });
        }
        return n;
      };
      return {
        read,
        end() {
          // Anything still to come is more output than the caller read: past its limit.
          if (read(new Uint8Array(1)) > 0) throw new CodecError('too_large', 'more output than expected');
          if (!frameDone) throw new CodecError('corrupt', 'zstd data is truncated');
        },
      };
    },
  };
}

/**
 * A zstd frame's output taken piece by piece into the caller's buffer: a
 * restore decompresses an 8 MiB pack through a 1 MiB window. Not safe to
 * use two readers at once on one thread (they share a context).
 */
export interface DecompressReader {
  /** Fills `into` as far as the data goes; returns the bytes written (fewer than asked only at the end). */
  read(into: Uint8Array): number;
  /**
   * After the caller has read all it expects: throws CodecError('too_large')
   * if the data holds more output, CodecError('corrupt') if it is cut short.
   */
  end(): void;
}

/** A zstd frame compressed piece by piece (see compressStream). */
export interface CompressStream {
  write(piece: Uint8Array): void;
  /** The whole frame: a view of a buffer this thread reuses, valid until its next compression. */
  end(): Uint8Array;
}

let backend: ZstdBackend | undefined;

function zstd(): ZstdBackend {
  if (backend === undefined) {
    try {
      backend = napiBackend();
    } catch (err) {
      backend = zlibBackend();
      if (backend === undefined) throw err;
    }
  }
  return backend;
}

/** Which zstd implementation this runtime uses. */
export function zstdBackendName(): 'node:zlib' | 'zstd-napi' {
  return zstd().name;
}

/** For tests: both implementations, where present, to check they read each other's frames. */
export function _zstdBackends(): { zlib: ZstdBackend | undefined; napi: ZstdBackend } {
  return { zlib: zlibBackend(), napi: napiBackend() };
}

function assertCodec(codec: unknown): asserts codec is Codec {
  if (typeof codec !== 'number' || !isCodec(codec)) throw new CodecError('unknown_codec', 'unknown codec');
}

export function compress(codec: Codec, data: Uint8Array, level: number = ZSTD_DEFAULT_LEVEL): Uint8Array {
  assertCodec(codec);
  if (!(data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
  if (!Number.isSafeInteger(level)) throw new TypeError('level must be an integer');
  return codec === Codec.none ? data : zstd().compress(data, level);
}

/**
 * Like compress, but the result may be a view of a buffer this thread reuses:
 * use it before the next call (sealObject encrypts it into the object at once).
 */
export function compressTransient(codec: Codec, data: Uint8Array, level: number = ZSTD_DEFAULT_LEVEL): Uint8Array {
  assertCodec(codec);
  if (!(data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
  if (!Number.isSafeInteger(level)) throw new TypeError('level must be an integer');
  return codec === Codec.none ? data : zstd().compressTransient(data, level);
}

/**
 * A zstd frame of exactly `totalBytes` of input, fed piece by piece: the
 * caller never holds the whole input (a pack is read and compressed 1 MiB at
 * a time). The result, like compressTransient's, is valid until this
 * thread's next compression.
 */
export function compressStream(totalBytes: number, level: number = ZSTD_DEFAULT_LEVEL): CompressStream {
  if (!Number.isSafeInteger(totalBytes) || totalBytes < 0) throw new RangeError('totalBytes must be a non-negative integer');
  if (!Number.isSafeInteger(level)) throw new TypeError('level must be an integer');
  const frame = zstd().compressStream(level, totalBytes);
  // The pledge is checked here, the same for both implementations (zstd-napi's zstd checks it too).
  let fed = 0;
  return {
    write(piece) {
      if (fed + piece.length > totalBytes) throw new RangeError(`more input than the ${totalBytes} bytes pledged`);
      fed += piece.length;
      frame.write(piece);
    },
    end() {
      if (fed !== totalBytes) throw new RangeError(`${fed} bytes of the ${totalBytes} pledged`);
      return frame.end();
    },
  };
}

/** Inverse of compress; refuses output over `maxOutput` bytes without producing it. */
export function decompress(codec: Codec, data: Uint8Array, maxOutput: number): Uint8Array {
  if (checkDecompress(codec, data, maxOutput)) return data;
  return zstd().decompress(data, maxOutput);
}

/**
 * decompress, piece by piece: the output never exists whole. The reader
 * refuses output past `maxOutput` like decompress does. A later
 * decompressReader call on this thread invalidates it.
 */
export function decompressReader(codec: Codec, data: Uint8Array, maxOutput: number): DecompressReader {
  if (checkDecompress(codec, data, maxOutput)) return readerOver(data);
  return zstd().decompressReader(data, maxOutput);
}

/** The arguments of decompress and decompressReader checked; true for codec none (the data is the output). */
function checkDecompress(codec: Codec, data: Uint8Array, maxOutput: number): boolean {
  assertCodec(codec);
  if (!(data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
  if (!Number.isSafeInteger(maxOutput) || maxOutput < 0) throw new RangeError('maxOutput must be a non-negative integer');
  if (codec !== Codec.none) return false;
  if (data.length > maxOutput) throw tooLarge(maxOutput);
  return true;
}

function tooLarge(maxOutput: number): CodecError {
  return new CodecError('too_large', `decompressed data is over the limit of ${maxOutput} bytes`);
}

function toUint8(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}

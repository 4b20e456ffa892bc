/**
 * The hybrid logical clock (src/changesets/hlc.ts): format, order, and the clock
 * cases named after Actual's `timestamp.test.ts` (monotonic, stuttering,
 * regressing, counter overflow, drift). Time is always passed in.
 */
import { describe, expect, it } from 'vitest';
import {
  ClockSkewError,
  compareHlc,
  formatHlc,
  MAX_COUNTER,
  MAX_SKEW_MS,
  parseHlc,
  receive,
  tick,
  ZERO_HLC,
  type HlcState,
} from '../../src/changesets/hlc.js';

const DEV_A = '00000000000000aa';
const DEV_B = '00000000000000bb';
const T0 = 1_795_000_000_000;
const hlc = (s: HlcState, d = DEV_A) => formatHlc({ ...s, deviceId: d });

describe('hlc format', () => {
  it('is wall(12) counter(4) device(16), lowercase hex, and round-trips', () => {
    const s = formatHlc({ wall: T0, counter: 0x1f, deviceId: DEV_A });
    expect(s).toBe(`${T0.toString(16).padStart(12, '0')}001f${DEV_A}`);
    expect(s).toHaveLength(32);
    expect(parseHlc(s)).toEqual({ wall: T0, counter: 0x1f, deviceId: DEV_A });
    expect(ZERO_HLC).toBe('0'.repeat(32));
  });

  it('orders by wall, then counter, then device id (string order)', () => {
    const a = formatHlc({ wall: T0, counter: 5, deviceId: DEV_B });
    const b = formatHlc({ wall: T0 + 1, counter: 0, deviceId: DEV_A });
    const c = formatHlc({ wall: T0 + 1, counter: 1, deviceId: DEV_A });
    const d = formatHlc({ wall: T0 + 1, counter: 1, deviceId: DEV_B });
    expect([d, c, b, a].sort()).toEqual([a, b, c, d]);
    expect(compareHlc(a, b)).toBe(-1);
    expect(compareHlc(d, c)).toBe(1);
    expect(compareHlc(c, c)).toBe(0);
    expect(compareHlc(ZERO_HLC, a)).toBe(-1);
  });

  it('rejects malformed timestamps', () => {
    for (const bad of ['', 'x'.repeat(32), ZERO_HLC.toUpperCase().replace(/0/g, 'A'), `${ZERO_HLC}0`, ZERO_HLC.slice(1)]) {
      expect(() => parseHlc(bad)).toThrow(RangeError);
    }
    expect(() => formatHlc({ wall: -1, counter: 0, deviceId: DEV_A })).toThrow(RangeError);
    expect(() => formatHlc({ wall: 2 ** 48, counter: 0, deviceId: DEV_A })).toThrow(RangeError);
    expect(() => formatHlc({ wall: 0, counter: MAX_COUNTER + 1, deviceId: DEV_A })).toThrow(RangeError);
    expect(() => formatHlc({ wall: 0, counter: 0, deviceId: 'AB' })).toThrow(RangeError);
  });
});

describe('hlc tick', () => {
  it('monotonic: a later wall time resets the counter', () => {
    expect(tick({ wall: T0, counter: 7 }, T0 + 1)).toEqual({ wall: T0 + 1, counter: 0 });
  });

  it('stuttering: the same wall time bumps the counter', () => {
    let s: HlcState = { wall: 0, counter: 0 };
    const seen: string[] = [];
    for (let i = 0; i < 5; i++) {
      s = tick(s, T0);
      seen.push(hlc(s));
    }
    expect(s).toEqual({ wall: T0, counter: 4 });
    expect([...seen].sort()).toEqual(seen);
    expect(new Set(seen).size).toBe(5);
  });

  it('regressing: a wall clock that goes back never moves the HLC back', () => {
    const s = tick({ wall: T0, counter: 3 }, T0 - 60_000);
    expect(s).toEqual({ wall: T0, counter: 4 });
  });

  it('counter overflow: a full counter carries into the wall', () => {
    expect(tick({ wall: T0, counter: MAX_COUNTER }, T0)).toEqual({ wall: T0 + 1, counter: 0 });
  });
});

describe('hlc receive', () => {
  it('moves past both the local state and the remote timestamp', () => {
    const remote = hlc({ wall: T0 + 100, counter: 9 }, DEV_B);
    expect(receive({ wall: T0, counter: 0 }, remote, T0 + 50)).toEqual({ wall: T0 + 100, counter: 10 });
    expect(receive({ wall: T0 + 100, counter: 20 }, remote, T0 + 50)).toEqual({ wall: T0 + 100, counter: 21 });
    expect(receive({ wall: T0, counter: 0 }, remote, T0 + 500)).toEqual({ wall: T0 + 500, counter: 0 });
  });

  it('drift: a remote wall more than maxSkewMs ahead is refused with ClockSkewError', () => {
    const now = T0;
    const ok = hlc({ wall: now + MAX_SKEW_MS, counter: 0 }, DEV_B);
    expect(receive({ wall: 0, counter: 0 }, ok, now).wall).toBe(now + MAX_SKEW_MS);
    const far = hlc({ wall: now + MAX_SKEW_MS + 1, counter: 0 }, DEV_B);
    let err: unknown;
    try {
      receive({ wall: 0, counter: 0 }, far, now);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ClockSkewError);
    expect(err).toMatchObject({ remoteWall: now + MAX_SKEW_MS + 1, now, skewMs: MAX_SKEW_MS + 1, code: 'clock_skew' });
    expect(() => receive({ wall: 0, counter: 0 }, far, now, 10 * MAX_SKEW_MS)).not.toThrow();
  });

  it('counter overflow on receive carries into the wall', () => {
    const remote = hlc({ wall: T0, counter: MAX_COUNTER }, DEV_B);
    expect(receive({ wall: T0, counter: 1 }, remote, T0)).toEqual({ wall: T0 + 1, counter: 0 });
  });
});

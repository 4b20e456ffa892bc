/**
 * Hybrid logical clock (docs/MERGE.md §1), pure: the wall
 * time always comes in as a parameter (after Evolu's `Timestamp.ts`; no
 * module-level clock, unlike Actual's).
 *
 * An HLC is a fixed-width lowercase hex string of 32 characters:
 *
 *     wall (12 hex, ms since the Unix epoch) || counter (4 hex) || device id (16 hex)
 *
 * so plain string comparison is the total order: wall, then counter, then
 * the device id as tie-break. Two devices never issue the same HLC.
 *
 * Invariants: `tick` and `receive` return a state strictly greater than the
 * one they were given (a counter that would overflow carries into the wall);
 * `receive` refuses a remote wall more than `maxSkewMs` ahead of `now`.
 */
import { FailureError } from '../errors.js';
import { isDeviceId, isLowerHex } from '../protocol/ids.js';

/** A remote time this far ahead of ours is refused (docs/ARCHITECTURE.md §4). */
export const MAX_SKEW_MS = 5 * 60_000;
export const HLC_LENGTH = 32;
export const MAX_WALL = 2 ** 48 - 1;
export const MAX_COUNTER = 0xffff;
/** Older than any change: the clock of a field nobody changed since the baseline. */
export const ZERO_HLC = '0'.repeat(HLC_LENGTH);

export interface Hlc {
  wall: number;
  counter: number;
  deviceId: string;
}

/** A device's clock: the highest (wall, counter) it issued or received. */
export interface HlcState {
  wall: number;
  counter: number;
}

/** A remote timestamp too far ahead of this device's clock. */
export class ClockSkewError extends FailureError {
  readonly remoteWall: number;
  readonly now: number;
  readonly skewMs: number;

  constructor(remoteWall: number, now: number) {
    const skewMs = remoteWall - now;
    super(`a remote clock is ${Math.round(skewMs / 1000)} s ahead of this device's`, { code: 'clock_skew' });
    this.remoteWall = remoteWall;
    this.now = now;
    this.skewMs = skewMs;
  }
}

/** The device id check, from src/protocol/ids.ts (merge.ts takes it from here). */

/** True if `value` is an HLC: 32 lowercase hex characters. */
export function isHlc(value: unknown): value is string {
  return isLowerHex(value, HLC_LENGTH);
}

export function parseHlc(hlc: string): Hlc {
  if (!isHlc(hlc)) throw new RangeError('hlc must be 32 lowercase hex characters');
  return {
    wall: parseInt(hlc.slice(0, 12), 16),
    counter: parseInt(hlc.slice(12, 16), 16),
    deviceId: hlc.slice(16),
  };
}

function checkState(s: HlcState, name: string): void {
  if (!Number.isSafeInteger(s.wall) || s.wall < 0 || s.wall > MAX_WALL) {
    throw new RangeError(`${name}.wall must be an integer in [0, 2^48)`);
  }
  if (!Number.isSafeInteger(s.counter) || s.counter < 0 || s.counter > MAX_COUNTER) {
    throw new RangeError(`${name}.counter must be an integer in [0, 65535]`);
  }
}

export function formatHlc(h: Hlc): string {
  checkState(h, 'hlc');
  if (!isDeviceId(h.deviceId)) throw new RangeError('hlc.deviceId must be 16 lowercase hex characters');
  return h.wall.toString(16).padStart(12, '0') + h.counter.toString(16).padStart(4, '0') + h.deviceId;
}

/** -1, 0 or 1: the total order (string order of the canonical form). */
export function compareHlc(a: string, b: string): -1 | 0 | 1 {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** -1, 0 or 1 on (wall, counter). */
export function compareState(a: HlcState, b: HlcState): -1 | 0 | 1 {
  if (a.wall !== b.wall) return a.wall < b.wall ? -1 : 1;
  return a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : 0;
}

export function maxState(a: HlcState, b: HlcState): HlcState {
  return compareState(a, b) >= 0 ? a : b;
}

/** The successor of (wall, counter): a full counter carries into the wall. */
function next(wall: number, counter: number): HlcState {
  if (counter < MAX_COUNTER) return { wall, counter: counter + 1 };
  if (wall >= MAX_WALL) throw new RangeError('hlc wall overflow');
  return { wall: wall + 1, counter: 0 };
}

/** A local event at `wallNow`: the wall moves forward with time, the counter orders events within one ms. */
export function tick(state: HlcState, wallNow: number): HlcState {
  checkState(state, 'state');
  awall(wallNow);
  if (wallNow > state.wall) return { wall: wallNow, counter: 0 };
  return next(state.wall, state.counter);
}

/**
 * A remote HLC seen at local time `now`: the result is above both the state
 * and the remote timestamp. Throws ClockSkewError when the remote wall is
 * more than `maxSkewMs` ahead of `now` (the state is not moved).
 */
export function receive(state: HlcState, remoteHlc: string, now: number, maxSkewMs = MAX_SKEW_MS): HlcState {
  checkState(state, 'state');
  awall(now);
  const r = parseHlc(remoteHlc);
  if (r.wall - now > maxSkewMs) throw new ClockSkewError(r.wall, now);
  const wall = Math.max(state.wall, r.wall, now);
  if (wall === state.wall && wall === r.wall) return next(wall, Math.max(state.counter, r.counter));
  if (wall === state.wall) return next(wall, state.counter);
  if (wall === r.wall) return next(wall, r.counter);
  return { wall, counter: 0 };
}

function awall(wall: number): void {
  if (!Number.isSafeInteger(wall) || wall < 0 || wall > MAX_WALL) throw new RangeError('wall time must be an integer ms in [0, 2^48)');
}

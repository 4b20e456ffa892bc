/**
 * Device-local state in CASA_HOME (docs/ARCHITECTURE.md §4: never in the synced database).
 *
 * `state.json` holds no secret: the phrase and the device's private key live
 * in the keystore under this home's random `homeId`, so two CASA_HOMEs on one
 * machine never share keychain entries. The file is replaced atomically
 * (temp file, fsync, rename, fsync dir): a kill leaves the old state or the
 * new one. A device is paired exactly when `vault` is present, and that is
 * written last, after the relay and the keystore hold everything it needs.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync, constants } from 'node:fs';
import { dirname, join } from 'node:path';
import { FailureError } from './errors.js';
import type { KeystoreKind } from './keystore/index.js';
import { isLowerHex } from './protocol/ids.js';

export interface PairedVault {
  vaultId: string;
  keyIdHex: string;
  deviceId: string;
  deviceName: string;
  server: string;
  keystore: KeystoreKind;
  pairedAt: number;
  /** The highest snapshot seq this device has seen on the relay (docs/ARCHITECTURE.md §3: a lower head is a rollback). */
  highestSeq?: number;
  /** The paper's public keys this device trusts (docs/SECURITY.md §3); absent on a format-1 device before its upgrade. */
  paper?: PairedPaper;
  /** Device ids this device verified revoked: they stay revoked whatever the relay shows later. */
  revoked?: string[];
}

/** The recovery phrase's public keys (b64u), and how many times the paper was replaced before them. */
export interface PairedPaper {
  authKey: string;
  exchangeKey: string;
  n: number;
}

export interface HomeState {
  version: 1;
  homeId: string;
  vault?: PairedVault;
}

const STATE_FILE = 'state.json';

/** Keystore entry names (namespaced by homeId inside the keystore). */
export const SECRET_PHRASE = 'phrase';
export const SECRET_DEVICE_KEY = 'device-key';
/**
 * The root key derived from the phrase, kept beside it in the same keystore
 * (it is no more secret than the phrase it comes from): commands derive
 * their keys with HKDF in microseconds instead of 600,000 PBKDF2 rounds
 * (~140 ms) each time.
 */
export const SECRET_ROOT_KEY = 'root-key';
/** The vault's keyring (docs/FORMAT.md §9 "What a device keeps"). */
export const SECRET_KEYRING = 'keyring';

export function statePath(home: string): string {
  return join(home, STATE_FILE);
}

export function readState(home: string): HomeState | null {
  let raw: string;
  try {
    raw = readFileSync(statePath(home), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw new FailureError(`cannot read ${statePath(home)}: ${(err as Error).message}`, {
      hints: ['check the permissions of CASA_HOME (--home)'],
    });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(raw);
  } catch {
    throw corrupt(home);
  }
  if (!isState(doc)) throw corrupt(home);
  return doc;
}

function corrupt(home: string): FailureError {
  return new FailureError(`${statePath(home)} is not a casa state file`, {
    hints: ['it may be damaged; move it aside and pair this device again'],
  });
}

function isState(d: unknown): d is HomeState {
  if (typeof d !== 'object' || d === null) return false;
  const s = d as Record<string, unknown>;
  if (s.version !== 1 || !isLowerHex(s.homeId, 16)) return false;
  if (s.vault === undefined) return true;
  const v = s.vault as Record<string, unknown>;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.vaultId === 'string' &&
    typeof v.deviceId === 'string' &&
    typeof v.deviceName === 'string' &&
    typeof v.server === 'string' &&
    typeof v.keyIdHex === 'string' &&
    (v.keystore === 'keychain' || v.keystore === 'file') &&
    typeof v.pairedAt === 'number'
  );
}

/**
 * Records a snapshot seq this device authenticated (a manifest it opened:
 * restored, verified, or sealed and committed itself); the highest one is
 * kept. Never a seq the relay merely listed (docs/SECURITY.md §7).
 */
export function noteSeenSeq(home: string, seq: number): void {
  const st = readState(home);
  if (!st?.vault || (st.vault.highestSeq ?? 0) >= seq) return;
  writeState(home, { ...st, vault: { ...st.vault, highestSeq: seq } });
}

/** The home's state, creating CASA_HOME and a fresh homeId if there is none yet. */
export function ensureState(home: string): HomeState {
  const existing = readState(home);
  if (existing) return existing;
  const state: HomeState = { version: 1, homeId: randomBytes(8).toString('hex') };
  writeState(home, state);
  return state;
}

export function writeState(home: string, state: HomeState): void {
  writeFileAtomic(statePath(home), JSON.stringify(state, null, 2) + '\n', 0o600);
}

/**
 * Creates CASA_HOME (0700) if needed and replaces `path` atomically. Failures
 * become a FailureError naming the directory, with a hint.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): void {
  writeFileAtomicWith(path, mode, (fd) => {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  });
}

/** writeFileAtomic, with the content written by `fill` into the temp file's descriptor (for content made piece by piece). */
export function writeFileAtomicWith(path: string, mode: number, fill: (fd: number) => void): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${Date.now().toString(36)}-${randomBytes(4).toString('hex')}.tmp`);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
    try {
      fill(fd);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    fsyncDir(dir);
  } catch (err) {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // The directory itself is unusable; there is no temp file to remove.
    }
    throw new FailureError(`cannot write to ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      hints: ['casa keeps its state in CASA_HOME; point --home (or CASA_HOME) at a writable directory'],
    });
  }
}

/** fsyncs a directory (after a rename in it); a no-op where directories cannot be opened. */
export function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, constants.O_RDONLY);
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Directories cannot be opened for fsync on every platform; the rename is still atomic.
  }
}

/** Writes a new file that must not exist yet, 0600 from the start (never chmod after). */
export function writeNewSecretFile(path: string, data: string): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    writeSync(fd, Buffer.from(data, 'utf8'));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Where casa keeps this device's secrets (the recovery phrase, the device
 * key): the OS keychain by default, or — only when the user asks for it with
 * `--keystore file` / `CASA_KEYSTORE=file` — a 0600 JSON file in CASA_HOME
 * (docs/ARCHITECTURE.md §5). There is never a silent fallback from one to the other: a
 * keychain that cannot be reached is a `keystore_unavailable` FailureError
 * whose hint names the file keystore.
 *
 * Invariants for both stores: names are short identifiers chosen by casa
 * (never user input), values are strings, and no error message or hint ever
 * contains a value.
 */

import { UsageError } from '../errors.js';
import { FileKeystore } from './file.js';
import { KeychainKeystore } from './keychain.js';

export type KeystoreKind = 'keychain' | 'file';

export interface Keystore {
  readonly kind: KeystoreKind;
  /** The stored value, or null if there is none. */
  get(name: string): Promise<string | null>;
  set(name: string, value: string): Promise<void>;
  /** Removes the entry; no error if it is absent. */
  delete(name: string): Promise<void>;
  /** Throws the `keystore_unavailable` (keychain) or a FailureError (file) if the store cannot be used. */
  probe(): Promise<void>;
}

export interface KeystoreOptions {
  /** CASA_HOME: the file keystore lives here. */
  home: string;
  /** A random id per CASA_HOME, so two homes on one machine never share keychain entries. */
  namespace: string;
}

export const KEYSTORE_KINDS: readonly KeystoreKind[] = ['keychain', 'file'];

export function openKeystore(kind: KeystoreKind, opts: KeystoreOptions): Keystore {
  switch (kind) {
    case 'keychain':
      return new KeychainKeystore(opts.namespace);
    case 'file':
      return new FileKeystore(opts.home);
    default: {
      const never: never = kind;
      throw new TypeError(`openKeystore: unknown kind ${String(never)}`);
    }
  }
}

/** Parses `--keystore` / `CASA_KEYSTORE`. */
export function parseKeystoreKind(value: string): KeystoreKind {
  const kind = KEYSTORE_KINDS.find((k) => k === value);
  if (kind === undefined) {
    throw new UsageError(`unknown keystore ${JSON.stringify(value)}`, {
      hints: ['use --keystore keychain (the default) or --keystore file'],
    });
  }
  return kind;
}

/**
 * Entry names are chosen by casa, not by users; checking them at the boundary
 * keeps them safe as JSON keys and keychain account names. A bad name is a
 * bug, hence TypeError/RangeError rather than a CasaError.
 */
export function assertEntryName(name: unknown, param = 'name'): asserts name is string {
  if (typeof name !== 'string') throw new TypeError(`${param} must be a string`);
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
    throw new RangeError(`${param} must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`);
  }
}

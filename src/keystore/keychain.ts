/**
 * The OS keychain through @napi-rs/keyring (keyring-rs): macOS Keychain,
 * Windows Credential Manager, or the freedesktop Secret Service on Linux.
 *
 * Every entry is service `casa`, account `<namespace>:<name>`; the namespace
 * is a random id per CASA_HOME so two homes on one machine never collide.
 *
 * casa's choices:
 * - On Linux the entry is pinned to the Secret Service. keyring-rs would
 *   otherwise fall back to the kernel keyring (keyutils), which forgets
 *   everything at reboot — a silent fallback docs/ARCHITECTURE.md §5 rules out.
 * - The native module is loaded on first use, so commands that never touch
 *   the keychain do not pay for it at start-up.
 * - AsyncEntry keeps the Secret Service round trips (which may wait on an
 *   unlock prompt) off the main thread. Note that constructing an entry
 *   connects to D-Bus synchronously: a bus that accepts the connection and
 *   never answers blocks the process (observed with keyring 2.1.2).
 * - Every failure becomes one FailureError with code `keystore_unavailable`,
 *   a short reason, and a hint naming the file keystore. No value is ever
 *   part of a message.
 */

import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { FailureError } from '../errors.js';
import { assertEntryName, type Keystore } from './index.js';

type KeyringModule = typeof import('@napi-rs/keyring');
type AsyncEntry = InstanceType<KeyringModule['AsyncEntry']>;

const SERVICE = 'casa';
const PROBE_NAME = 'keychain-probe';

export const KEYCHAIN_FILE_HINT =
  'use --keystore file (or CASA_KEYSTORE=file) to keep the secrets in a 0600 file under CASA_HOME instead';

let keyring: KeyringModule | undefined;

function loadKeyring(): KeyringModule {
  if (keyring === undefined) {
    try {
      keyring = createRequire(import.meta.url)('@napi-rs/keyring') as KeyringModule;
    } catch (err) {
      throw unavailable(err, 'the keychain module does not load on this platform');
    }
  }
  return keyring;
}

export class KeychainKeystore implements Keystore {
  readonly kind = 'keychain' as const;
  readonly #namespace: string;

  constructor(namespace: string) {
    if (typeof namespace !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(namespace)) {
      throw new RangeError('namespace must be 1-64 characters of A-Z a-z 0-9 _ -');
    }
    this.#namespace = namespace;
  }

  async get(name: string): Promise<string | null> {
    assertEntryName(name);
    return this.#run((entry) => entry.getPassword(), name);
  }

  async set(name: string, value: string): Promise<void> {
    assertEntryName(name);
    if (typeof value !== 'string') throw new TypeError('value must be a string');
    await this.#run((entry) => entry.setPassword(value), name, value);
  }

  async delete(name: string): Promise<void> {
    assertEntryName(name);
    // deletePassword resolves false when the entry is absent; only a real failure rejects.
    await this.#run((entry) => entry.deletePassword(), name);
  }

  /**
   * A read alone proves little (a locked or missing collection still answers
   * "no such entry"), so the probe writes, reads back and removes a throwaway
   * entry.
   */
  async probe(): Promise<void> {
    const token = randomBytes(16).toString('hex');
    await this.set(PROBE_NAME, token);
    const back = await this.get(PROBE_NAME);
    await this.delete(PROBE_NAME);
    if (back !== token) {
      throw unavailable(undefined, 'a test entry written to it did not read back');
    }
  }

  async #run<T>(op: (entry: AsyncEntry) => Promise<T>, name: string, secret?: string): Promise<T> {
    const { AsyncEntry } = loadKeyring();
    try {
      const entry = new AsyncEntry(SERVICE, `${this.#namespace}:${name}`, {
        linux: { store: 'secret-service' },
      });
      return await op(entry);
    } catch (err) {
      throw unavailable(err, undefined, secret);
    }
  }
}

/** The one error every keychain failure becomes. */
function unavailable(err: unknown, reason?: string, secret?: string): FailureError {
  let why = reason ?? describeKeychainFailure(err);
  // keyring-rs does not echo values, but a message must never carry one even if it did.
  if (secret !== undefined && secret.length > 0 && why.includes(secret)) {
    why = why.split(secret).join('**redacted**');
  }
  return new FailureError(`cannot reach the OS keychain (${why})`, {
    code: 'keystore_unavailable',
    hints: [KEYCHAIN_FILE_HINT],
  });
}

/**
 * Turns keyring-rs/D-Bus error text into a short reason. Known shapes get a
 * plain-words reason; anything else passes through, trimmed to one short line.
 */
function describeKeychainFailure(err: unknown): string {
  const text = errorText(err);
  const rules: [RegExp, string][] = [
    [/autolaunch|DBUS_SESSION_BUS_ADDRESS/i, 'no D-Bus session bus: DBUS_SESSION_BUS_ADDRESS is not set'],
    [/failed to connect to socket|connection refused|no such file or directory/i, 'no D-Bus session bus answers at DBUS_SESSION_BUS_ADDRESS'],
    [/ServiceUnknown|org\.freedesktop\.secrets|not provided by any \.service/i, 'no Secret Service (such as gnome-keyring or KeePassXC) is running'],
    [/prompt was dismissed|dismissed/i, 'the keyring is locked and the unlock prompt was dismissed'],
    [/no result found/i, 'the Secret Service has no default keyring to store into'],
    [/locked/i, 'the keyring is locked'],
    [/access ?denied|not permitted|permission/i, 'access was denied'],
    [/ambiguous/i, 'more than one keychain entry matches'],
  ];
  for (const [pattern, reason] of rules) if (pattern.test(text)) return reason;
  const line = (text.split('\n')[0] ?? '').trim();
  if (line === '') return 'unknown error';
  return line.length > 120 ? `${line.slice(0, 117)}...` : line;
}

function errorText(err: unknown): string {
  if (!(err instanceof Error)) return String(err ?? '');
  const cause = err.cause instanceof Error ? ` ${err.cause.message}` : '';
  return `${err.message}${cause}`;
}

/**
 * Where a failure the engine meets becomes the CasaError the user sees
 * (docs/ARCHITECTURE.md §6): one table from each kind of failure to its exit
 * code (casa(1) EXIT STATUS) and its `--json` reason, and the builders every
 * path uses, so the same failure gets the same code whichever command meets
 * it: a restore, a pull, a sync round, a pairing.
 *
 * Invariants:
 * - A kind has one exit code and one reason, whatever the path; a path may
 *   only add context to the message and hints (what failed, which relay
 *   served it, what was left untouched).
 * - An object sealed under another key is exit 4 (`wrong_key`); one that
 *   fails authentication or its format, a broken changeset chain, a
 *   malformed relay answer are exit 6 (`integrity`).
 * - A relay's error answer keeps its HTTP status and error code as data on
 *   the CasaError it becomes; whether to retry (isTransient) is read from
 *   that data and from the reason, never from message text.
 * - Below the commands and the engine: it imports leaves and src/crypto/
 *   only; errors of an engine room's own (a manifest, a batch) are named as
 *   a kind by that room where it catches them (objectFailure).
 *
 * Messages never carry a secret or ciphertext.
 */
import { EpochMarkError } from './crypto/keyring.js';
import { CodecError } from './codec.js';
import { AuthenticationError, ObjectFormatError, WrongKeyError } from './crypto/objects.js';
import { PhraseError } from './crypto/phrase.js';
import {
  AuthError,
  CasaError,
  EXIT,
  FailureError,
  IntegrityError,
  UnreachableError,
  type CasaErrorOptions,
  type ErrorCode,
  type ExitCode,
} from './errors.js';
import type { RelayErrorCode } from './protocol/messages.js';
import { formatBytes } from './ui/format.js';

/** Every kind of failure casa tells apart, whichever path meets it. */
export type FailureKind =
  /** A recovery phrase that cannot be right (word count, unknown word, checksum). */
  | 'wrong_phrase'
  /** An object sealed under another key id: another vault's data, or another phrase. */
  | 'wrong_key'
  /** An object whose AEAD tag fails: altered, truncated, moved or swapped. */
  | 'tampered'
  /** An object (or a relay answer) that breaks its format. */
  | 'malformed'
  /** A changeset batch that breaks its device's hash chain: dropped, reordered, replayed. */
  | 'broken_chain'
  /** The relay's head went back behind what this device saw. */
  | 'rollback'
  /** The relay says this device was revoked (403 `device_revoked`, WebSocket close 4003). */
  | 'device_revoked'
  /** The relay refused the device's or the vault's credentials (401). */
  | 'unauthorized'
  /** The relay knows no such vault or device (404). */
  | 'unknown_vault'
  /** The relay asks to slow down (429). */
  | 'rate_limited'
  /** The vault reached a quota the relay's operator set (507 `quota_exceeded`); nothing was stored. */
  | 'quota_exceeded'
  /** The relay failed (5xx). */
  | 'relay_failed'
  /** Any other refusal (4xx). */
  | 'relay_refused'
  /** No answer: connection refused, reset, timed out. */
  | 'unreachable'
  /** Something answered, but not as a casa relay does. */
  | 'not_a_relay'
  /** A working directory (CASA_HOME, CASA_TMPDIR) another user owns or may write to (src/private-dir.ts). */
  | 'unsafe_directory';

/** The one table: each kind's exit code (casa(1) EXIT STATUS) and `--json` reason. */
export const FAILURES: Readonly<Record<FailureKind, { exit: ExitCode; reason: ErrorCode }>> = {
  wrong_phrase: { exit: EXIT.auth, reason: 'wrong_phrase' },
  wrong_key: { exit: EXIT.auth, reason: 'wrong_key' },
  tampered: { exit: EXIT.integrity, reason: 'integrity' },
  malformed: { exit: EXIT.integrity, reason: 'integrity' },
  broken_chain: { exit: EXIT.integrity, reason: 'integrity' },
  rollback: { exit: EXIT.integrity, reason: 'rollback' },
  device_revoked: { exit: EXIT.auth, reason: 'device_revoked' },
  unauthorized: { exit: EXIT.auth, reason: 'auth_failed' },
  unknown_vault: { exit: EXIT.auth, reason: 'unknown_vault' },
  rate_limited: { exit: EXIT.failure, reason: 'rate_limited' },
  quota_exceeded: { exit: EXIT.failure, reason: 'quota_exceeded' },
  relay_failed: { exit: EXIT.failure, reason: 'failure' },
  relay_refused: { exit: EXIT.failure, reason: 'failure' },
  unreachable: { exit: EXIT.unreachable, reason: 'relay_unreachable' },
  not_a_relay: { exit: EXIT.unreachable, reason: 'relay_protocol' },
  unsafe_directory: { exit: EXIT.failure, reason: 'unsafe_directory' },
};

/** The CasaError of a kind, of the class its exit code has (AuthError for 4, IntegrityError for 6, …). */
export function failure(kind: FailureKind, message: string, opts: Omit<CasaErrorOptions, 'code'> = {}): CasaError {
  const { exit, reason } = FAILURES[kind];
  const o = { ...opts, code: reason };
  switch (exit) {
    case EXIT.auth:
      return new AuthError(message, o);
    case EXIT.unreachable:
      return new UnreachableError(message, o);
    case EXIT.integrity:
      return new IntegrityError(message, o);
    default:
      return new FailureError(message, o);
  }
}

// ---------------------------------------------------------------- sealed objects

/** Where a sealed object came from and what its failure left alone, for the hints. */
export interface Source {
  /** The relay that served it (default: "the relay", unnamed). */
  server?: string;
  /** What stayed as it was (default "nothing was changed here"; a sync round says "nothing was applied"). */
  untouched?: string;
}

/**
 * A sealed object that did not open, as its kind says: `what` names it
 * ("pack 0123… of snapshot 4567…", "changeset DEVICE/SEQ"); `detail` is the
 * engine's own account (a broken chain says which link).
 */
export function objectFailure(
  kind: 'wrong_key' | 'tampered' | 'malformed' | 'broken_chain',
  what: string,
  source: Source = {},
  detail?: string,
): CasaError {
  const from = source.server ? `the relay at ${source.server}` : 'the relay';
  const untouched = source.untouched ?? 'nothing was changed here';
  switch (kind) {
    case 'wrong_key':
      return failure(kind, `${what} was encrypted with another key`, {
        hints: [`the phrase does not belong to this vault, or ${from} served another vault's data; ${untouched}`],
      });
    case 'broken_chain':
      return failure(kind, `${what}: ${detail ?? 'it breaks its device\'s chain'}`, {
        hints: [`${from} dropped, reordered or replayed changesets; ${untouched}`],
      });
    default:
      return failure(kind, `${what} failed its integrity check`, {
        hints: [`${from} served damaged or tampered data; ${untouched}`],
      });
  }
}

/**
 * Maps the crypto core's typed errors (src/crypto/objects.ts, phrase.ts, and
 * a codec failure) onto casa's exit codes, with hints (age's pattern); any
 * other error is returned as it is. `what` names the object or input.
 */
export function mapCryptoError(err: unknown, what: string, source: Source = {}): unknown {
  if (err instanceof PhraseError) {
    const hints = ['a recovery phrase is 24 words; the first four letters of each word are enough'];
    switch (err.kind) {
      case 'unknown_word':
        return failure('wrong_phrase', `word ${err.position} of the phrase is not in the BIP-39 English word list`, { hints });
      case 'word_count':
        return failure('wrong_phrase', `the phrase has ${err.count} words, not 24`, { hints });
      case 'checksum':
        return failure('wrong_phrase', 'the phrase\'s checksum does not match: a word is wrong, or two are swapped', {
          hints: ['check each word against where you wrote the phrase down'],
        });
    }
  }
  if (err instanceof WrongKeyError) return objectFailure('wrong_key', what, source);
  if (err instanceof EpochMarkError) {
    return failure('tampered', `${what}: ${err.message}`, {
      hints: [`only a revoked device's keys could have made it, and ${source.server ? `the relay at ${source.server}` : 'the relay'} placed it; ${source.untouched ?? 'nothing was changed here'}`],
    });
  }
  if (err instanceof AuthenticationError) return objectFailure('tampered', what, source);
  if (err instanceof ObjectFormatError || err instanceof CodecError) return objectFailure('malformed', what, source);
  return err;
}

// ---------------------------------------------------------------- relay answers

/** An error answer from the relay, before it is given a user-facing meaning (mapRelayError). */
export class RelayHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: RelayErrorCode | string,
    message: string,
    readonly retryAfter: number | null,
    /** The relay's whole error document (a 409 carries the head or the missing packs). */
    readonly doc: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/** The kind of a relay's error answer, from its code and status. */
export function relayKind(err: { status: number; code: string }): FailureKind {
  switch (err.code) {
    case 'device_revoked':
      return 'device_revoked';
    case 'unauthorized':
      return 'unauthorized';
    case 'not_found':
      return 'unknown_vault';
    case 'rate_limited':
      return 'rate_limited';
    case 'quota_exceeded':
      return 'quota_exceeded';
    default:
      return err.status >= 500 ? 'relay_failed' : 'relay_refused';
  }
}

/** This device was revoked: the relay said so (403) or closed the live socket with 4003. */
export function deviceRevoked(relay?: RelayHttpError): CasaError {
  return failure('device_revoked', 'this device was revoked from the vault', {
    hints: ['join the vault again with `casa pair --join` (it gets a new device id)'],
    ...(relay ? { relay: answerOf(relay) } : {}),
  });
}

function answerOf(err: RelayHttpError): { status: number; code: string; retryAfter: number | null } {
  return { status: err.status, code: err.code, retryAfter: err.retryAfter };
}

/**
 * Generic meaning of a relay error answer (anything else is returned as it
 * is); callers catch RelayHttpError first where a status means more (a 404
 * as absence, a 409's document). The answer stays on the result as data.
 */
export function mapRelayError(server: string, err: unknown): unknown {
  if (!(err instanceof RelayHttpError)) return err;
  const relay = answerOf(err);
  const kind = relayKind(err);
  switch (kind) {
    case 'device_revoked':
      return deviceRevoked(err);
    case 'unauthorized':
      return failure(kind, 'the relay refused this device\'s credentials', {
        relay,
        hints: ['the keys in the keystore may not belong to this vault; run `casa status`'],
      });
    case 'unknown_vault':
      return failure(kind, 'the relay does not know this vault or device', {
        relay,
        hints: [`check that ${server} is the relay this vault was created on`],
      });
    case 'rate_limited':
      return failure(kind, `the relay is rate limiting requests${err.retryAfter ? `; retry in ${err.retryAfter} s` : ''}`, {
        relay,
        hints: ['wait a little and run the command again'],
      });
    case 'quota_exceeded':
      return failure(kind, `the relay refused: ${quotaText(err)}; nothing was stored`, {
        relay,
        hints: [
          '`casa status` shows the vault\'s usage against its quotas',
          'stored bytes fall as the relay\'s retention thins old snapshots; a device quota frees up with `casa devices revoke`; the daily ones reset within 24 hours; the relay\'s operator sets them (wrangler.jsonc)',
        ],
      });
    case 'relay_failed':
      return failure(kind, `the relay failed (${err.status} ${err.code})`, { relay, hints: ['try again later'] });
    default:
      if (err.code === 'too_large') return failure(kind, 'the relay refused a request as too large', { relay });
      return failure(kind, `the relay refused the request (${err.status} ${err.code}: ${err.message})`, { relay });
  }
}

const QUOTA_WORDS: Record<string, string> = {
  stored_bytes: 'stored bytes',
  devices: 'devices',
  pairings: 'live pairing sessions',
  commits_per_day: 'snapshot commits per day',
  pushes_per_day: 'changeset pushes per day',
};

/** "this vault's quota of stored bytes is reached (10.0 GiB of 10.0 GiB)", from the 507 answer's data. */
function quotaText(err: RelayHttpError): string {
  const d = err.doc;
  const name = typeof d.quota === 'string' && Object.hasOwn(QUOTA_WORDS, d.quota) ? d.quota : null;
  const n = (x: unknown) => (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 ? x : null);
  const limit = n(d.limit);
  const used = n(d.used);
  if (name === null) return "this vault reached one of the relay's quotas";
  const fmt = (x: number) => (name === 'stored_bytes' ? formatBytes(x) : String(x));
  return `this vault's quota of ${QUOTA_WORDS[name]} is reached${limit !== null && used !== null ? ` (${fmt(used)} of ${fmt(limit)})` : ''}`;
}


/** No answer from the relay (refused, reset, timed out): exit 5, naming the URL and the system's code. */
export function unreachable(server: string, err: unknown): CasaError {
  const cause = err as { cause?: { code?: string }; code?: string; name?: string };
  const code = cause?.cause?.code ?? cause?.code ?? (cause?.name === 'TimeoutError' ? 'timed out' : undefined);
  return failure('unreachable', `cannot reach the relay at ${server}${code ? ` (${code})` : ''}`, {
    hints: [
      'check that the relay is running (`casa relay` starts a local one) and that --server (or CASA_SERVER) is right',
    ],
  });
}

/** What answered at `server` is not a casa relay (`what` says how): exit 5. */
export function notARelay(server: string, what: string): CasaError {
  return failure('not_a_relay', `the server at ${server} ${what}`, {
    hints: ['check that --server (or CASA_SERVER) points at a casa relay'],
  });
}

/** A relay answer that does not have the shape the protocol says: treated as tampering (exit 6). */
export function malformedAnswer(server: string, what: string): IntegrityError {
  return failure('malformed', `the relay at ${server} sent a malformed ${what}`, {
    hints: ['the relay may be damaged or tampered with; nothing was changed here'],
  }) as IntegrityError;
}

/**
 * Whether a failure may pass by itself (the relay or the network away for a
 * while), so a watcher retries instead of stopping: no answer at all, a
 * rate limit, or a relay's 5xx, read from the error's data.
 */
export function isTransient(err: unknown): boolean {
  if (!(err instanceof CasaError)) return false;
  if (err.code === 'relay_unreachable' || err.code === 'rate_limited') return true;
  return err.relay !== undefined && err.relay.status < 600 && relayKind(err.relay) === 'relay_failed';
}

/**
 * casa's error hierarchy: every user-facing failure is a CasaError carrying
 * the documented exit code (docs/ARCHITECTURE.md §6, casa(1) EXIT STATUS) and optional hint
 * lines. src/cli.ts is the one place that turns these into output and an exit
 * status; anything that is not a CasaError is a bug and prints its stack.
 * Which engine failure becomes which of these is decided once, in
 * src/failures.ts; this module imports nothing.
 *
 * Messages are lowercase, without a final period, and never contain a secret
 * (phrase, key, token) or ciphertext.
 */

export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  conflict: 3,
  auth: 4,
  unreachable: 5,
  integrity: 6,
  notPaired: 7,
  busy: 8,
  cancelled: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** A machine-readable reason, stable across releases (it appears in `--json` errors). */
export type ErrorCode =
  | 'failure'
  | 'usage'
  | 'conflict'
  | 'wrong_phrase'
  | 'unknown_vault'
  | 'device_revoked'
  | 'auth_failed'
  | 'relay_unreachable'
  | 'relay_protocol'
  | 'integrity'
  | 'wrong_key'
  | 'rollback'
  | 'not_paired'
  | 'busy'
  | 'cancelled'
  | 'keystore_unavailable'
  | 'rate_limited'
  | 'quota_exceeded'
  | 'clock_skew'
  | 'wrong_code'
  | 'pairing_closed'
  | 'unsafe_directory';

/** A relay's error answer, kept as data on the CasaError it became (whether to retry is read from it). */
export interface RelayAnswer {
  /** The HTTP status. */
  status: number;
  /** The relay's error code (docs/RELAY-API.md). */
  code: string;
  /** Seconds, from Retry-After, when the relay sent one. */
  retryAfter: number | null;
}

export interface CasaErrorOptions {
  hints?: string[];
  code?: ErrorCode;
  cause?: unknown;
  relay?: RelayAnswer;
}

export class CasaError extends Error {
  readonly exitCode: ExitCode;
  readonly hints: string[];
  readonly code: ErrorCode;
  /** Set when this error is a relay's error answer (src/failures.ts mapRelayError). */
  readonly relay: RelayAnswer | undefined;

  constructor(exitCode: ExitCode, message: string, opts: CasaErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.exitCode = exitCode;
    this.hints = opts.hints ?? [];
    this.code = opts.code ?? 'failure';
    this.relay = opts.relay;
  }
}

/** Exit 1: the job failed for a reason that is not one of the specific classes below. */
export class FailureError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.failure, message, { code: 'failure', ...opts });
  }
}

/** Exit 2: the command line is wrong. */
export class UsageError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.usage, message, { code: 'usage', ...opts });
  }
}

/** Exit 3: going on would lose local changes. */
export class ConflictError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.conflict, message, { code: 'conflict', ...opts });
  }
}

/** Exit 4: wrong phrase, unknown vault, revoked device, failed authentication, an object sealed under another key. */
export class AuthError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.auth, message, { code: 'auth_failed', ...opts });
  }
}

/** Exit 5: the relay could not be reached, or what answered is not a casa relay. */
export class UnreachableError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.unreachable, message, { code: 'relay_unreachable', ...opts });
  }
}

/** Exit 6: tampering, corruption, or a rollback (an object sealed under another key is exit 4: src/failures.ts). */
export class IntegrityError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.integrity, message, { code: 'integrity', ...opts });
  }
}

/** Exit 7: this CASA_HOME has no vault yet. */
export class NotPairedError extends CasaError {
  constructor(message = 'this device is not paired', opts: CasaErrorOptions = {}) {
    super(EXIT.notPaired, message, {
      code: 'not_paired',
      hints: ['run `casa pair` to create a vault or join one'],
      ...opts,
    });
  }
}

/** Exit 8: another casa holds this database's lock. */
export class BusyError extends CasaError {
  constructor(message: string, opts: CasaErrorOptions = {}) {
    super(EXIT.busy, message, { code: 'busy', ...opts });
  }
}

/** Exit 130: the user cancelled (Ctrl-C at a prompt, SIGINT). */
export class CancelledError extends CasaError {
  constructor(message = 'cancelled', opts: CasaErrorOptions = {}) {
    super(EXIT.cancelled, message, { code: 'cancelled', ...opts });
  }
}

/**
 * Not a failure: the command's first request, made with a token kept from
 * an earlier command, found the relay at another key epoch (409
 * epoch_moved) or the token refused (401) before anything was done. The
 * entry point (src/cli.ts) runs the command once more, with a new token
 * (src/relay/token-cache.ts).
 */
export class RestartCommand extends Error {
  constructor(readonly why: string) {
    super(`the command starts again: ${why}`);
    this.name = 'RestartCommand';
  }
}

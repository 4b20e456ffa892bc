/**
 * The terminal rulebook (after age's cmd/age/tui.go):
 * - results a script may read go to stdout: human text, or with --json exactly
 *   one JSON document;
 * - notes, warnings and errors go to stderr, prefixed `casa:`, lowercase, no
 *   final period; `--quiet` silences notes but never errors;
 * - prompts and anything secret shown on purpose (the phrase) go to the
 *   terminal only, and only when stdin and stderr are TTYs;
 * - progress bars go to stderr, only on a TTY;
 * - every line of text goes through sanitizeLines (src/ui/format.ts) and
 *   every JSON document through jsonLine: text from the relay (a device
 *   name, an error message) never reaches the terminal with a control
 *   character in it (docs/SECURITY.md §7). Only tty() writes raw, for casa's
 *   own escape sequences (clearing the phrase from the screen).
 * Commands receive a Terminal, so tests pass their own streams.
 */
import type { Readable, Writable } from 'node:stream';
import { CasaError } from '../errors.js';
import { jsonLine, sanitizeLines } from './format.js';

export interface Terminal {
  stdin: Readable & { isTTY?: boolean };
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean; columns?: number };
  env: Record<string, string | undefined>;
}

export function processTerminal(): Terminal {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env };
}

export interface OutputOptions {
  json: boolean;
  quiet: boolean;
}

export class Output {
  constructor(
    readonly term: Terminal,
    readonly opts: OutputOptions,
  ) {}

  /** True when casa may prompt: both stdin and stderr are terminals. */
  get interactive(): boolean {
    return Boolean(this.term.stdin.isTTY && this.term.stderr.isTTY);
  }

  /** A note for people: stderr, `casa: ` prefixed, silenced by --quiet and --json. */
  note(line: string): void {
    if (this.opts.quiet || this.opts.json) return;
    this.term.stderr.write(`casa: ${sanitizeLines(line)}\n`);
  }

  warn(line: string): void {
    if (this.opts.json) {
      this.term.stderr.write(jsonLine({ message_type: 'warning', message: line }) + '\n');
      return;
    }
    this.term.stderr.write(`casa: warning: ${sanitizeLines(line)}\n`);
  }

  /** The human result on stdout (skipped with --json, where result() carries it). */
  print(text: string): void {
    if (this.opts.json || this.opts.quiet) return;
    const clean = sanitizeLines(text);
    this.term.stdout.write(clean.endsWith('\n') ? clean : clean + '\n');
  }

  /** The command's result: with --json, one document on stdout. */
  result(doc: Record<string, unknown>): void {
    if (!this.opts.json) return;
    this.term.stdout.write(jsonLine(doc) + '\n');
  }

  /** Direct to the terminal (stderr on a TTY), unsanitized: casa's own text only (prompts' companions, the phrase display). */
  tty(text: string): void {
    this.term.stderr.write(text);
  }
}

/** Prints an error the documented way; returns the exit code. */
export function reportError(term: Terminal, err: unknown, json: boolean): number {
  if (err instanceof CasaError) {
    if (json) {
      term.stderr.write(
        jsonLine({
          message_type: 'exit_error',
          code: err.exitCode,
          reason: err.code,
          message: err.message,
          hints: err.hints,
        }) + '\n',
      );
    } else {
      term.stderr.write(`casa: error: ${sanitizeLines(err.message)}\n`);
      for (const h of err.hints) term.stderr.write(`casa: hint: ${sanitizeLines(h)}\n`);
    }
    return err.exitCode;
  }
  // Anything else is a bug: say so, with the stack, so it can be reported.
  const e = err instanceof Error ? err : new Error(String(err));
  if (json) {
    term.stderr.write(
      jsonLine({ message_type: 'exit_error', code: 1, reason: 'internal', message: e.message }) + '\n',
    );
  } else {
    term.stderr.write(`casa: error: internal error: ${sanitizeLines(e.message)}\n`);
    term.stderr.write(`casa: hint: this is a bug in casa; please report it with the lines below\n`);
    term.stderr.write(`${sanitizeLines(e.stack ?? '')}\n`);
  }
  return 1;
}

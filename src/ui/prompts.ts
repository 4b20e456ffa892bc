/**
 * Every interactive question casa asks, wrapped once (after create-cloudflare's
 * cli-utilities): Ctrl-C or Escape at any prompt is a CancelledError (exit 130),
 * and asking without a terminal is a UsageError naming the flag that avoids it.
 * @clack/prompts is imported lazily so commands that never prompt stay fast.
 * Questions and choices are sanitized (src/ui/format.ts): they may quote
 * text from the relay, such as a device name.
 */
import { CancelledError, UsageError } from '../errors.js';
import { sanitize, sanitizeLines } from './format.js';
import type { Output } from './terminal.js';

async function clack() {
  return import('@clack/prompts');
}

function requireTty(out: Output, what: string, instead: string): void {
  if (!out.interactive) {
    throw new UsageError(`${what} needs a terminal to ask`, { hints: [instead] });
  }
}

async function unwrap<T>(p: Promise<T | symbol>): Promise<T> {
  const c = await clack();
  const v = await p;
  if (c.isCancel(v) || typeof v === 'symbol') throw new CancelledError();
  return v as T;
}

export async function select<T extends string>(
  out: Output,
  message: string,
  options: { value: T; label: string; hint?: string }[],
  instead: string,
): Promise<T> {
  requireTty(out, 'this', instead);
  const c = await clack();
  return unwrap<T>(
    c.select<T>({
      message: sanitizeLines(message),
      options: options.map((o) => ({ ...o, label: sanitize(o.label), ...(o.hint === undefined ? {} : { hint: sanitize(o.hint) }) })) as never,
      input: out.term.stdin,
      output: out.term.stderr,
    }) as Promise<T | symbol>,
  );
}

/** Yes or no; `initial` is what Enter alone answers (yes unless given: pass false for "[y/N]" questions). */
export async function confirm(out: Output, message: string, instead: string, opts: { initial?: boolean } = {}): Promise<boolean> {
  requireTty(out, 'confirmation', instead);
  const c = await clack();
  return unwrap<boolean>(
    c.confirm({ message: sanitizeLines(message), input: out.term.stdin, output: out.term.stderr, ...(opts.initial !== undefined ? { initialValue: opts.initial } : {}) }),
  );
}

export async function text(
  out: Output,
  message: string,
  instead: string,
  validate?: (v: string) => string | undefined,
): Promise<string> {
  requireTty(out, 'this', instead);
  const c = await clack();
  return unwrap<string>(
    c.text({
      message: sanitizeLines(message),
      input: out.term.stdin,
      output: out.term.stderr,
      validate: validate ? (v) => validate(v ?? '') : undefined,
    }),
  );
}

/** A secret answer: masked on screen, never echoed back. */
export async function secret(out: Output, message: string, instead: string): Promise<string> {
  requireTty(out, 'this', instead);
  const c = await clack();
  return unwrap<string>(c.password({ message: sanitizeLines(message), input: out.term.stdin, output: out.term.stderr }));
}

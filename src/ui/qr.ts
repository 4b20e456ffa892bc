/**
 * A QR code drawn with text, for a terminal: the recovery phrase when a
 * vault is created (src/commands/pair.ts) and the pairing code's text when
 * one is offered (src/commands/pair-code.ts).
 *
 * Invariants: pure text out, nothing written; what goes in is often a
 * secret, so callers show the result only on a terminal (`out.tty`), never
 * in --json output or a log. The drawing library is loaded on first use, so
 * commands that draw nothing never pay for it.
 */

/** `data` as a QR code in half-height block characters (qrcode-terminal's small form), one string of lines. */
export async function renderQr(data: string): Promise<string> {
  const qrcode = (await import('qrcode-terminal')).default;
  return new Promise((res) => qrcode.generate(data, { small: true }, res));
}

/**
 * Text from the relay (device names, error messages) as it may reach a
 * terminal: control characters (C0, DEL, C1) and escape sequences removed
 * (docs/SECURITY.md §7), so a hostile relay cannot move the cursor, clear
 * the screen or rewrite what was printed.
 */
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])|[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

export function printable(text: string): string {
  return text.replace(ESCAPES, '');
}

/**
 * A pseudo-terminal for the interactive paths (prompts, the phrase display):
 * util-linux `script` (Debian's essential bsdutils) runs casa on a pty, so
 * casa sees a real terminal; the test reads the screen and types keys.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { baseEnv, CASA } from './cli.js';

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\r/g;

export class Pty {
  private child: ChildProcessWithoutNullStreams;
  private raw = '';
  readonly done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[], env: Record<string, string | undefined>) {
    const quoted = [process.execPath, CASA, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    this.child = spawn('script', ['-qfec', `stty cols 120 rows 50; exec ${quoted}`, '/dev/null'], {
      env: baseEnv({ ...env, TERM: 'xterm-256color' }),
    });
    this.child.stdout.on('data', (d) => (this.raw += d.toString()));
    this.child.stderr.on('data', (d) => (this.raw += d.toString()));
    this.done = new Promise((res) => this.child.on('close', (code, signal) => res({ code, signal })));
  }

  /** Everything shown so far, without escape sequences. */
  get screen(): string {
    return this.raw.replace(ANSI, '');
  }

  async expect(pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    const start = Date.now();
    for (;;) {
      const m = this.screen.match(pattern);
      if (m) return m;
      if (Date.now() - start > timeoutMs) {
        throw new Error(`timed out waiting for ${pattern}; screen so far:\n${this.screen.slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  write(keys: string): void {
    this.child.stdin.write(keys);
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

export const KEY = { enter: '\r', ctrlC: '\x03', down: '\x1b[B', up: '\x1b[A' };

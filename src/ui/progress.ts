/**
 * Progress on long work: one line on stderr, redrawn at most 10 times a
 * second, with bytes, rate and ETA — only on a terminal, and never with
 * --quiet or --json (cron and scripts see nothing).
 */
import type { Output } from './terminal.js';

const MiB = 1024 * 1024;

export interface ProgressBar {
  add(bytes: number): void;
  done(): void;
}

const NONE: ProgressBar = { add() {}, done() {} };

export function progress(out: Output, label: string, total: number): ProgressBar {
  if (!out.term.stderr.isTTY || out.opts.quiet || out.opts.json || total <= 0) return NONE;
  const start = Date.now();
  let done = 0;
  let last = 0;
  let finished = false;
  const draw = (force: boolean) => {
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const secs = Math.max((now - start) / 1000, 0.001);
    const rate = done / secs;
    const frac = Math.min(1, done / total);
    const width = 24;
    const fill = Math.round(frac * width);
    const eta = rate > 0 ? Math.max(0, Math.round((total - done) / rate)) : 0;
    const line =
      `casa: ${label} [${'='.repeat(fill)}${' '.repeat(width - fill)}] ${String(Math.floor(frac * 100)).padStart(3)}%` +
      `  ${(done / MiB).toFixed(1)}/${(total / MiB).toFixed(1)} MiB  ${(rate / MiB).toFixed(1)} MiB/s  ETA ${eta}s`;
    out.term.stderr.write(`\r\x1b[2K${line}`);
  };
  return {
    add(bytes: number) {
      if (finished) return;
      done += bytes;
      draw(false);
    },
    done() {
      if (finished) return;
      finished = true;
      out.term.stderr.write('\r\x1b[2K');
    },
  };
}

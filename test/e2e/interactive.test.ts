/**
 * The terminal paths, through a real pseudo-terminal: the phrase shown once
 * with its QR code and two words asked back; joining by a masked prompt;
 * Ctrl-C at any prompt exits 130 with nothing half-written.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useRelay } from '../helpers/cli.js';
import { KEY, Pty } from '../helpers/pty.js';

const relay = useRelay();
const m = (name: string) => relay.machine(name);

const vaultOf = (home: string) =>
  existsSync(join(home, 'state.json')) ? JSON.parse(readFileSync(join(home, 'state.json'), 'utf8')).vault : undefined;

describe('interactive pairing on a terminal', () => {
  it('shows the phrase once, asks two words back, then joins from a second machine by prompt', async () => {
    const a = m('tty-a');
    const p = new Pty(['pair', '--new', '--device-name', 'tty-laptop'], a.env);
    await p.expect(/Your recovery phrase/);
    const grid = await p.expect(/24\.\s+[a-z]+/);
    expect(grid).toBeTruthy();
    const words: string[] = [];
    for (let i = 1; i <= 24; i++) {
      const w = p.screen.match(new RegExp(`(?:^|\\s)${i}\\. ([a-z]+)`))?.[1];
      expect(w, `word ${i} on screen`).toBeDefined();
      words.push(w!);
    }
    for (let k = 0; k < 2; k++) {
      const ask = await p.expect(new RegExp(`word #(\\d+)\\?(?![\\s\\S]*word #)`));
      const n = Number(ask[1]);
      const before = p.screen.length;
      p.write(words[n - 1]!.slice(0, 4) + KEY.enter);
      // wait until the prompt moved on (next question or the result)
      for (let t = 0; t < 200 && p.screen.length === before; t++) await new Promise((r) => setTimeout(r, 25));
      await new Promise((r) => setTimeout(r, 200));
      if (k === 0) await p.expect(/word #\d+\?[\s\S]*word #\d+\?/);
    }
    await p.expect(/created vault [0-9a-f]{32}/);
    const done = await p.done;
    expect(done.code).toBe(0);
    expect(vaultOf(a.home)?.deviceName).toBe('tty-laptop');

    const b = m('tty-b');
    const q = new Pty(['pair', '--device-name', 'tty-desktop'], b.env);
    await q.expect(/What do you want to do\?/);
    q.write(KEY.down + KEY.enter);
    await q.expect(/Recovery phrase/);
    q.write(words.join(' ') + KEY.enter);
    await q.expect(/joined vault [0-9a-f]{32}/);
    expect((await q.done).code).toBe(0);
    // the masked prompt never echoed the words
    expect(q.screen).not.toContain(words.slice(0, 3).join(' '));
    expect(vaultOf(b.home)?.vaultId).toBe(vaultOf(a.home)?.vaultId);
  });

  it('Ctrl-C at the first question exits 130 and leaves the home unpaired', async () => {
    const a = m('tty-cancel');
    const p = new Pty(['pair'], a.env);
    await p.expect(/What do you want to do\?/);
    p.write(KEY.ctrlC);
    const done = await p.done;
    expect(done.code).toBe(130);
    expect(vaultOf(a.home)).toBeUndefined();
  });

  it('Ctrl-C while confirming the new phrase exits 130: no vault on this device, no keystore entry', async () => {
    const a = m('tty-cancel2');
    const p = new Pty(['pair', '--new'], a.env);
    await p.expect(/word #\d+\?/);
    p.write(KEY.ctrlC);
    const done = await p.done;
    expect(done.code).toBe(130);
    expect(vaultOf(a.home)).toBeUndefined();
    expect(existsSync(join(a.home, 'keystore.json')) ? JSON.parse(readFileSync(join(a.home, 'keystore.json'), 'utf8')).entries : {}).toEqual({});
  });

  it('Ctrl-C at the phrase prompt exits 130', async () => {
    const b = m('tty-cancel3');
    const p = new Pty(['pair', '--join'], b.env);
    await p.expect(/Recovery phrase/);
    p.write('abandon aban' + KEY.ctrlC);
    expect((await p.done).code).toBe(130);
    expect(vaultOf(b.home)).toBeUndefined();
  });
});

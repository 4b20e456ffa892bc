/**
 * argv → options, for every command, without running anything (the
 * changesets CLI pattern): the program is built with a runner that records
 * what the command would receive. Plus: --help, the man pages and package.json
 * agree with what the code declares.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { buildProgram, EXIT_CODES } from '../../src/program.js';
import { resolveGlobals } from '../../src/commands/context.js';
import { EXIT } from '../../src/errors.js';
import { VERSION } from '../../src/version.js';
import { ROOT } from '../helpers/cli.js';

async function parse(argv: string[]) {
  let seen: { name: string; globals: Record<string, unknown>; opts: Record<string, unknown>; args: unknown[] } | undefined;
  const program = buildProgram(async (cmd, _action, args) => {
    seen = { name: cmd.name(), globals: cmd.optsWithGlobals(), opts: cmd.opts(), args };
  });
  program.exitOverride();
  const silence = (c: Command) => {
    c.exitOverride().configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
    c.commands.forEach(silence);
  };
  silence(program);
  await program.parseAsync(argv, { from: 'user' });
  return seen!;
}

describe('argv → options', () => {
  const cases: [string[], string, Record<string, unknown>][] = [
    [['status'], 'status', {}],
    [['status', '--json'], 'status', { json: true }],
    [['--home', '/h', 'status'], 'status', { home: '/h' }],
    [['pair', '--new', '--phrase-out', 'f.txt'], 'pair', { new: true, phraseOut: 'f.txt' }],
    [['pair', '--join', '--phrase-stdin', '--device-name', 'nas'], 'pair', { join: true, phraseStdin: true, deviceName: 'nas' }],
    [['pair', '--join', '--phrase-file', 'p'], 'pair', { join: true, phraseFile: 'p' }],
    [['relay', '--port', '0', '--host', '0.0.0.0', '--data', 'd'], 'relay', { port: '0', host: '0.0.0.0', data: 'd' }],
    [['relay'], 'relay', { port: '8787', host: '127.0.0.1' }],
    [['show-phrase', '--yes'], 'show-phrase', { yes: true }],
    [['snapshot', '--force', '--quiet'], 'snapshot', { force: true, quiet: true }],
    [['--db', '/x.db', 'snapshot', '--json'], 'snapshot', { db: '/x.db', json: true }],
    [['devices', '-q'], 'devices', { quiet: true }],
    [['--keystore', 'file', 'devices', 'revoke', 'abcd'], 'revoke', { keystore: 'file' }],
    [['service', 'install'], 'install', { sync: 'watch', enable: true }],
    [['service', 'install', '--snapshot-every', '1h', '--sync', 'off', '--dry-run', '--no-enable'], 'install', { snapshotEvery: '1h', sync: 'off', dryRun: true, enable: false }],
    [['service', 'uninstall', '--yes'], 'uninstall', { yes: true }],
    [['service', 'status', '--json'], 'status', { json: true }],
  ];
  for (const [argv, name, expected] of cases) {
    it(argv.join(' '), async () => {
      const s = await parse(argv);
      expect(s.name).toBe(name);
      expect(s.globals).toMatchObject(expected);
      if (name === 'revoke') expect(s.args).toEqual(['abcd']);
    });
  }

  it('rejects a keystore kind it does not know', async () => {
    await expect(parse(['--keystore', 'vault', 'status'])).rejects.toThrow();
  });
});

describe('global options resolve flags over environment over defaults', () => {
  it('flags win', () => {
    const g = resolveGlobals({ home: '/a', server: 'http://x', keystore: 'file' }, { CASA_HOME: '/b', CASA_SERVER: 'http://y', CASA_KEYSTORE: 'keychain' });
    expect(g).toMatchObject({ home: '/a', serverOverride: 'http://x', keystore: 'file' });
  });
  it('environment next, then defaults', () => {
    const g = resolveGlobals({}, { CASA_HOME: '/b', CASA_DB: '/d.db', HOME: '/home/u' });
    expect(g.home).toBe('/b');
    expect(g.db).toBe('/d.db');
    expect(g.serverOverride).toBeUndefined();
    expect(g.keystore).toBeUndefined();
    const d = resolveGlobals({}, { HOME: '/home/u' });
    if (process.platform === 'linux') {
      expect(d.home).toBe('/home/u/.config/casa');
      expect(d.db).toBe('/home/u/.local/share/casaconomy/casaconomy.db');
    }
  });
});

describe('documentation matches the code', () => {
  const program = buildProgram(async () => undefined);
  const man = (name: string) => readFileSync(join(ROOT, 'man', `${name}.1`), 'utf8').replace(/\\-/g, '-');

  it('package.json and the version agree', () => {
    expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version).toBe(VERSION);
  });

  it('every command has a man page naming each of its flags, and no page is orphaned', () => {
    const pages = readdirSync(join(ROOT, 'man')).filter((f) => f.endsWith('.1')).sort();
    // Hidden commands (the completion scripts' `casa complete`) are not for people: casa-completion(1) describes it.
    const documented = program.commands.filter((c) => !(c as unknown as { _hidden: boolean })._hidden);
    expect(documented.map((c) => c.name())).not.toContain('complete');
    const expected = ['casa.1', ...documented.map((c) => `casa-${c.name()}.1`)].sort();
    expect(pages).toEqual(expected);
    for (const c of documented) {
      const text = man(`casa-${c.name()}`);
      for (const sect of ['EXIT STATUS', 'ENVIRONMENT', 'FILES', 'EXAMPLES']) expect(text, `${c.name()}: ${sect}`).toContain(`.SH ${sect}`);
      for (const o of c.options) expect(text, `casa-${c.name()}.1 mentions ${o.long}`).toContain(o.long!);
      for (const sub of c.commands) for (const o of sub.options) expect(text, `casa-${c.name()}.1 mentions ${sub.name()} ${o.long}`).toContain(o.long!);
    }
    const top = man('casa');
    for (const o of program.options) if (o.long) expect(top, `casa.1 mentions ${o.long}`).toContain(o.long);
  });

  it('--help, casa(1) and the EXIT table list the same exit codes', () => {
    const top = man('casa');
    for (const code of Object.values(EXIT)) {
      expect(EXIT_CODES).toMatch(new RegExp(`^\\s+${code}\\s`, 'm'));
      expect(top).toContain(`.B ${code}\n`);
    }
  });
});

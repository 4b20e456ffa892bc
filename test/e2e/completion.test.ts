/**
 * `casa completion bash|zsh|fish` as a user loads it: the printed script
 * sourced into a real bash (with and without the bash-completion package),
 * a real fish (`complete -C`) and a real zsh (an interactive zsh in a
 * pseudo-terminal via zsh/zpty, Tab pressed), with `casa` on PATH, asked for
 * `casa sn` and `casa pair --`. Flag values: keystore kinds, the rules of
 * `tables set`, table names from the database, snapshot ids and device
 * names from what casa last listed (a real relay), file names for path flags;
 * a hostile device name in the cache never reaches the shell. Bad input:
 * an unknown shell, no shell.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CASA, baseEnv, okOn, runCasa, tempDir, useRelay } from '../helpers/cli.js';

const relay = useRelay();
const work = tempDir('casa-completion-');
const bin = join(work.dir, 'bin');
const home = join(work.dir, 'home');
const db = join(work.dir, 'finance.db');

const has = (shell: string) => spawnSync('sh', ['-c', `command -v ${shell}`]).status === 0;
const BASH_COMPLETION = '/usr/share/bash-completion/bash_completion';

beforeAll(() => {
  mkdirSync(bin, { recursive: true });
  mkdirSync(home, { recursive: true, mode: 0o700 });
  // `casa` on PATH, as after `npm install -g`: the scripts run it by name on Tab.
  writeFileSync(join(bin, 'casa'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(CASA)} "$@"\n`);
  chmodSync(join(bin, 'casa'), 0o755);
  const d = new Database(db);
  d.exec('CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT); CREATE TABLE payees (id TEXT PRIMARY KEY, name TEXT);');
  d.close();
  return work.cleanup;
});

function shellEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = baseEnv({ CASA_HOME: home, CASA_DB: db, CASA_KEYSTORE: 'file', ...extra });
  env.PATH = `${bin}:${env.PATH}`;
  return env;
}

const scripts = new Map<string, string>();
function scriptFile(shell: string): string {
  const known = scripts.get(shell);
  if (known) return known;
  const r = spawnSync(process.execPath, [CASA, 'completion', shell], { env: shellEnv(), encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const f = join(work.dir, `casa.${shell}`);
  writeFileSync(f, r.stdout);
  scripts.set(shell, f);
  return f;
}

/** COMPREPLY of bash's completion function for the words typed (the last one is completed; '' = after a space). */
function bashComplete(words: string[], opts: { bashCompletion: boolean; env?: Record<string, string> }): string[] {
  const script = scriptFile('bash');
  const prelude = opts.bashCompletion ? `source ${BASH_COMPLETION}\n` : '';
  // COMP_WORDS as readline splits them: at blanks and at COMP_WORDBREAKS' = (--flag=value is three words).
  const program = `${prelude}source ${script}
COMP_LINE="$*"; COMP_POINT=\${#COMP_LINE}; COMP_WORDS=()
for w in "$@"; do if [[ $w == *=* ]]; then COMP_WORDS+=("\${w%%=*}" "=" "\${w#*=}"); else COMP_WORDS+=("$w"); fi; done
COMP_CWORD=$((\${#COMP_WORDS[@]} - 1))
__casa_complete 2>/dev/null
printf '%s\\n' "\${COMPREPLY[@]}"
complete -p casa >&2`;
  const r = spawnSync('bash', ['--norc', '--noprofile', '-c', program, 'bash', 'casa', ...words], { env: shellEnv(opts.env), encoding: 'utf8', timeout: 20_000 });
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toContain('complete -o default -F __casa_complete casa');
  return r.stdout.split('\n').filter(Boolean);
}

function fishComplete(line: string): string[] {
  const script = scriptFile('fish');
  const r = spawnSync('fish', ['--no-config', '-c', `source ${script}; complete -C ${JSON.stringify(line)}`], { env: shellEnv(), encoding: 'utf8', timeout: 20_000 });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.split('\n').filter(Boolean).map((l) => l.split('\t')[0]!);
}

/**
 * An interactive zsh in a pseudo-terminal (zsh/zpty), compinit, the script
 * sourced, LINE typed and Tab pressed; compadd wrapped to print what the
 * completion system was given.
 */
function zshComplete(line: string): string[] {
  const script = scriptFile('zsh');
  const driver = join(work.dir, 'drive.zsh');
  writeFileSync(
    driver,
    `zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "PROMPT='> '"
zpty -w z "autoload -U compinit; compinit -u -D"
zpty -w z "source \${(q)1}"
zpty -w z 'compadd () { typeset -a __hits; builtin compadd -A __hits "$@"; (( $#__hits )) && print -l -- "H""IT:"\${^__hits}; builtin compadd "$@" }'
zpty -n -w z "$2"$'\\t'
# Read until a second of silence after the first candidate (at most 15 s).
integer i quiet seen
for i in {1..150}; do
  if zpty -r -t z out; then
    print -r -- "$out"; quiet=0; [[ $out == *HIT:* ]] && seen=1
  else
    (( seen && ++quiet >= 10 )) && break; sleep 0.1
  fi
done
zpty -d z
`,
  );
  const r = spawnSync('zsh', ['-f', driver, script, line], { env: shellEnv(), encoding: 'utf8', timeout: 30_000 });
  expect(r.status, r.stderr).toBe(0);
  return [...new Set([...r.stdout.matchAll(/HIT:([^\s\r]+)/g)].map((m) => m[1]!))];
}

describe('bash', () => {
  for (const bashCompletion of [false, true]) {
    const label = bashCompletion ? 'with bash-completion loaded' : 'without bash-completion';
    it(`completes commands, flags and their values (${label})`, () => {
      if (bashCompletion) expect(existsSync(BASH_COMPLETION), 'apt-get install bash-completion').toBe(true);
      expect(bashComplete(['sn'], { bashCompletion }).sort()).toEqual(['snapshot', 'snapshots']);
      const pair = bashComplete(['pair', '--'], { bashCompletion });
      for (const f of ['--new', '--join', '--offer', '--code', '--phrase-out', '--phrase-file', '--device-name', '--keep-phrase', '--db', '--keystore', '--help']) {
        expect(pair).toContain(f);
      }
      expect(pair).not.toContain('--force');
      expect(bashComplete(['snapshot', '--keystore', ''], { bashCompletion }).sort()).toEqual(['file', 'keychain']);
      expect(bashComplete(['--keystore=k'], { bashCompletion })).toEqual(['keychain']);
      expect(bashComplete(['service', 'install', '--sync', ''], { bashCompletion }).sort()).toEqual(['off', 'watch']);
      expect(bashComplete(['tables', 'set', 'accounts', ''], { bashCompletion }).sort()).toEqual(['default', 'lww', 'set', 'snapshot-only']);
      expect(bashComplete(['history', ''], { bashCompletion }).sort()).toEqual(['accounts', 'payees']);
      expect(bashComplete(['completion', ''], { bashCompletion }).sort()).toEqual(['bash', 'fish', 'zsh']);
      expect(bashComplete(['dev'], { bashCompletion })).toEqual(['devices']);
      expect(bashComplete(['devices', ''], { bashCompletion })).toEqual(['revoke']);
    });
  }

  it('leaves path flags to file completion; `complete` is not offered', async () => {
    // casa offers nothing and says so with directive 0: bash's `-o default` then lists files.
    const r = await runCasa(['complete', '--', 'restore', '--to', ''], { env: { CASA_HOME: home } });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(':0');
    const k = await runCasa(['complete', '--', 'restore', '--snapshot', ''], { env: { CASA_HOME: home } });
    expect(k.stdout.trim().split('\n').at(-1)).toBe(':4');
    expect(bashComplete([''], { bashCompletion: false })).not.toContain('complete');
    const help = await runCasa(['--help']);
    expect(help.stdout).toContain('completion');
    expect(help.stdout).not.toMatch(/^\s+complete\b/m);
  });
});

describe.skipIf(!has('fish'))('fish', () => {
  it('completes `casa sn`, `casa pair --` and keystore kinds', () => {
    expect(fishComplete('casa sn').sort()).toEqual(['snapshot', 'snapshots']);
    const pair = fishComplete('casa pair --');
    for (const f of ['--new', '--join', '--phrase-out', '--device-name']) expect(pair).toContain(f);
    expect(fishComplete('casa --keystore ').sort()).toEqual(['file', 'keychain']);
  });
});

describe.skipIf(!has('zsh'))('zsh', () => {
  it('completes `casa sn` and `casa pair --` in an interactive zsh', () => {
    expect(zshComplete('casa sn').sort()).toEqual(['snapshot', 'snapshots']);
    const pair = zshComplete('casa pair --');
    for (const f of ['--new', '--join', '--phrase-out', '--device-name']) expect(pair).toContain(f);
  });
});

describe('values from what casa last listed', () => {
  it('offers the snapshot ids `casa snapshots` listed and the device names `casa devices` listed', async () => {
    const a = relay.machine('complete-a');
    await okOn(a, ['pair', '--new', '--phrase-out', join(a.home, 'phrase.txt'), '--device-name', 'laptop']);
    const d = new Database(a.env.CASA_DB);
    d.exec("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT); INSERT INTO notes VALUES ('n1', 'x');");
    d.close();
    await okOn(a, ['snapshot']);
    // Before anything was listed: nothing to offer, and no relay asked on a Tab.
    const before = bashComplete(['restore', '--snapshot', ''], { bashCompletion: false, env: { CASA_HOME: a.home } });
    expect(before).toEqual([]);
    const list = JSON.parse((await okOn(a, ['snapshots', '--json'])).stdout) as { snapshots: { snapshot_id: string }[] };
    await okOn(a, ['devices']);
    const ids = list.snapshots.map((s) => s.snapshot_id.slice(0, 12));
    expect(ids.length).toBe(1);
    expect(bashComplete(['restore', '--snapshot', ''], { bashCompletion: false, env: { CASA_HOME: a.home } })).toEqual(ids);
    expect(bashComplete(['verify', '--snapshot', ids[0]!.slice(0, 3)], { bashCompletion: false, env: { CASA_HOME: a.home } })).toEqual(ids);
    expect(bashComplete(['log', '--device', ''], { bashCompletion: false, env: { CASA_HOME: a.home } })).toEqual(['laptop']);
    expect(bashComplete(['--home', a.home, 'devices', 'revoke', ''], { bashCompletion: false })).toHaveLength(1);
    // The cache holds no secret, and is the user's alone.
    const cache = readFileSync(join(a.home, 'completion.json'), 'utf8');
    expect(cache).not.toMatch(/phrase|key/i);
    expect(spawnSync('stat', ['-c', '%a', join(a.home, 'completion.json')], { encoding: 'utf8' }).stdout.trim()).toBe('600');
  });

  it("never hands a hostile relay's device name to the shell", async () => {
    const h = tempDir('casa-completion-hostile-');
    try {
      const marker = join(h.dir, 'pwned');
      writeFileSync(
        join(h.dir, 'completion.json'),
        JSON.stringify({
          vault: 'v',
          snapshots: [{ id: '$(touch x)', time: 0 }],
          devices: [
            { id: 'a'.repeat(32), name: `$(touch ${marker})` },
            { id: 'b'.repeat(32), name: '`touch ${marker}`' },
            { id: 'c'.repeat(32), name: 'desk top' },
            { id: 'd'.repeat(32), name: 'phone' },
          ],
        }),
      );
      expect(bashComplete(['log', '--device', ''], { bashCompletion: false, env: { CASA_HOME: h.dir } })).toEqual(['phone']);
      expect(bashComplete(['restore', '--snapshot', ''], { bashCompletion: false, env: { CASA_HOME: h.dir } })).toEqual([]);
      expect(existsSync(marker)).toBe(false);
    } finally {
      h.cleanup();
    }
  });
});

describe('bad input', () => {
  it('an unknown shell or none is a usage error (exit 2) with a hint', async () => {
    const r = await runCasa(['completion', 'tcsh']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('casa: error: no completion for shell "tcsh"');
    expect(r.stderr).toContain('casa: hint: one of bash, zsh, fish');
    expect(r.stdout).toBe('');
    const none = await runCasa(['completion']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/casa: error: missing required argument 'shell'/);
  });

  it('a Tab that fails prints only the error directive, never a message into the command line', async () => {
    const r = await runCasa(['complete', '--', '--home', '/nonexistent/x', 'log', '--device', '']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n').at(-1)).toMatch(/^:\d+$/);
  });
});

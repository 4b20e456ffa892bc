/**
 * `casa completion bash|zsh|fish` and the hidden `casa complete -- WORDS`.
 *
 * The scripts and the completion engine are @bomb.sh/tab's (Bombshell, the
 * authors of the @clack/prompts casa already uses), fed by its commander
 * adapter from the same program `casa --help` describes, so a new command or
 * flag completes without anyone editing a script. The script a shell loads
 * is small and static: on Tab it runs `casa complete -- WORDS…`, which
 * prints one candidate per line and a last `:DIRECTIVE` line (cobra's
 * protocol). Values the adapter cannot know are added here: file names for
 * path flags (the shell's own file completion), snapshot ids and device
 * names from CASA_HOME/completion.json (src/completion-cache.ts: never the
 * relay or the keystore on a Tab), table names from the database, and the
 * rules of `casa tables set`.
 *
 * Three things are changed in the bash script tab prints: bash falls back
 * to file names when casa offers none (`complete -o default`, which the
 * directive of a non-path value turns off again); the script works without
 * the bash-completion package (its word splitting where loaded, the line
 * split on blanks otherwise); and `--flag=value` completes the value.
 */
import { createRequire } from 'node:module';
import type { Command as CommanderCommand } from 'commander';
import { UsageError } from '../errors.js';
import { readCompletionCache, SHELL_SAFE } from '../completion-cache.js';
import { resolveDatabase, resolveHome } from '../paths.js';
import { appTableNames, RULE_NAMES } from '../changesets/settings.js';
import type { Context } from './context.js';

export const SHELLS = ['bash', 'zsh', 'fish'] as const;

/** cobra's directives, as tab's scripts read them. */
const DIRECTIVE_DEFAULT = 0;
const DIRECTIVE_NO_FILES = 4;

type Handler = (complete: (value: string, description: string) => void) => void;

interface TabOption {
  handler?: Handler;
}
interface TabCommand {
  options: Map<string, TabOption>;
  arguments: Map<string, { handler?: Handler }>;
}
interface TabRoot extends TabCommand {
  commands: Map<string, TabCommand>;
  parse(args: string[]): void;
  setup(name: string, executable: string, shell: string): void;
}

/** Runs `fn` with console.log collected (tab prints its scripts and candidates with it). */
function collect(fn: () => void): string[] {
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => void lines.push(a.map(String).join(' '));
  try {
    fn();
  } finally {
    console.log = log;
  }
  return lines;
}

/** The completion tree of casa's program, by tab's commander adapter. */
async function tabTree(): Promise<TabRoot> {
  const { buildProgram } = await import('../program.js');
  const program = buildProgram(async () => {});
  // The adapter adds its own `completion` and hidden `complete` commands: ours go first.
  for (const name of ['completion', 'complete']) {
    const i = program.commands.findIndex((c: CommanderCommand) => c.name() === name);
    if (i >= 0) (program.commands as CommanderCommand[]).splice(i, 1);
  }
  const tab = (await import('@bomb.sh/tab/commander')).default as unknown as (p: CommanderCommand, o: { completionCommandName: string }) => TabRoot;
  return tab(program, { completionCommandName: 'completion' });
}

/** `casa completion SHELL`: the script for SHELL on stdout. */
export async function runCompletionScript(ctx: Context, shell: string): Promise<void> {
  if (!(SHELLS as readonly string[]).includes(shell)) {
    throw new UsageError(`no completion for shell ${JSON.stringify(shell)}`, { hints: [`one of ${SHELLS.join(', ')}: casa completion bash`] });
  }
  const root = await tabTree();
  let script = collect(() => root.setup('casa', 'casa', shell)).join('\n');
  if (shell === 'bash') script = patchBash(script);
  ctx.deps.term.stdout.write(script.endsWith('\n') ? script : script + '\n');
}

/** The three changes to tab's bash script (see the header); each must apply, or the script is not the one this was written for. */
export function patchBash(script: string): string {
  const words = '_get_comp_words_by_ref -n "=:" cur prev words cword';
  const register = 'complete -F __casa_complete casa';
  const match = 'COMPREPLY=( $(compgen -W "${completions[*]}" -- "$cur") )';
  if (!script.includes(words) || !script.includes(register) || !script.includes(match)) throw new Error('bash completion script of @bomb.sh/tab changed: update patchBash');
  const fallback = [
    '# Word splitting: bash-completion\'s where it is loaded, plain COMP_WORDS otherwise.',
    '__casa_words() {',
    '    if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then',
    '        _get_comp_words_by_ref -n "=:" cur prev words cword',
    '    else',
    '        # The line up to the cursor, split on blanks only (COMP_WORDS splits --flag=value at the =).',
    '        local line=${COMP_LINE:0:COMP_POINT}',
    '        read -ra words <<< "$line"',
    '        [[ $line =~ [[:space:]]$ ]] && words+=("")',
    '        cword=$((${#words[@]} - 1))',
    '        cur=${words[cword]}',
    '        prev=${words[cword-1]}',
    '    fi',
    '}',
    '',
  ].join('\n');
  return script
    .replace(words, '__casa_words')
    .replace('# Function to handle completions', fallback + '\n# Function to handle completions')
    .replace(register, 'complete -o default -F __casa_complete casa')
    // --flag=value: the shell completes the part after the = (it is in COMP_WORDBREAKS), so match that part.
    .replace(match, 'COMPREPLY=( $(compgen -W "${completions[*]}" -- "${cur#--*=}") )');
}

/** The value of a flag among the typed words (`--db X` or `--db=X`), the last one winning. */
function typedFlag(words: string[], flag: string): string | undefined {
  let v: string | undefined;
  words.forEach((w, i) => {
    if (w === flag && i + 1 < words.length) v = words[i + 1];
    else if (w.startsWith(flag + '=')) v = w.slice(flag.length + 1);
  });
  return v === '' ? undefined : v;
}

function tablesOf(dbPath: string): string[] {
  const req = createRequire(import.meta.url);
  const Database = req('better-sqlite3') as typeof import('better-sqlite3');
  const db = new Database(dbPath, { readonly: true, fileMustExist: true, timeout: 200 });
  try {
    return appTableNames(db);
  } finally {
    db.close();
  }
}

/**
 * `casa complete -- WORDS`: the candidates for the last word. Never fails
 * loudly: a Tab must not print errors into the user's command line, so
 * anything that goes wrong ends in tab's error directive and nothing else.
 */
export async function runComplete(words: string[], env: Record<string, string | undefined>, out: NodeJS.WritableStream): Promise<void> {
  let lines: string[];
  try {
    const root = await tabTree();
    const home = resolveHome(typedFlag(words, '--home'), env);
    const dbPath = resolveDatabase(typedFlag(words, '--db'), env);
    let files = false;
    const pathValue: Handler = () => {
      files = true;
    };
    const safe = (complete: (v: string, d: string) => void, value: string, description: string) => {
      if (SHELL_SAFE.test(value)) complete(value, description.replace(/[^\x20-\x7e]|[`$\\"'\t]/g, ' '));
    };
    const snapshots: Handler = (complete) => {
      for (const s of readCompletionCache(home)?.snapshots ?? []) safe(complete, s.id.slice(0, 12), new Date(s.time).toISOString().replace(/\.\d+Z$/, 'Z'));
    };
    const tables: Handler = (complete) => {
      try {
        for (const t of tablesOf(dbPath)) safe(complete, t, 'table');
      } catch {
        // No database there (yet): nothing to offer.
      }
    };
    const deviceIds: Handler = (complete) => {
      for (const d of readCompletionCache(home)?.devices ?? []) safe(complete, d.id, SHELL_SAFE.test(d.name) ? d.name : 'device');
    };
    const deviceNames: Handler = (complete) => {
      for (const d of readCompletionCache(home)?.devices ?? []) safe(complete, d.name, d.id.slice(0, 8));
    };
    const rules: Handler = (complete) => {
      for (const r of [...RULE_NAMES, 'default']) complete(r, 'rule');
    };
    const shells: Handler = (complete) => {
      for (const s of SHELLS) complete(s, 'shell');
    };

    const set = (path: string, what: 'option' | 'argument', name: string, handler: Handler) => {
      const cmd = path === '' ? root : root.commands.get(path);
      const target = what === 'option' ? cmd?.options.get(name) : cmd?.arguments.get(name);
      if (target) target.handler = handler;
    };
    set('', 'option', 'home', pathValue);
    set('', 'option', 'db', pathValue);
    for (const [cmd, flag] of [
      ['pair', 'phrase-out'],
      ['pair', 'phrase-file'],
      ['rotate', 'phrase-out'],
      ['rotate', 'phrase-file'],
      ['restore', 'phrase-file'],
      ['restore', 'to'],
      ['relay', 'data'],
    ] as const) {
      set(cmd, 'option', flag, pathValue);
    }
    set('restore', 'option', 'snapshot', snapshots);
    set('verify', 'option', 'snapshot', snapshots);
    set('log', 'option', 'table', tables);
    set('log', 'option', 'device', deviceNames);
    set('history', 'argument', 'table', tables);
    set('tables set', 'argument', 'table', tables);
    set('tables set', 'argument', 'rule', rules);
    set('devices revoke', 'argument', 'id', deviceIds);
    set('completion', 'argument', 'shell', shells);

    lines = collect(() => root.parse([...words]));
    const last = lines.length - 1;
    // A path flag with nothing offered: the shell completes file names.
    if (files && last >= 0 && lines[last] === `:${DIRECTIVE_NO_FILES}`) lines[last] = `:${DIRECTIVE_DEFAULT}`;
  } catch {
    lines = [':1'];
  }
  out.write(lines.join('\n') + '\n');
}

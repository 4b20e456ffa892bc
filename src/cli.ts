/**
 * casa's entry point and the only place that exits the process.
 *
 * It parses argv with the program of src/program.ts, builds the command's
 * Context (SIGINT/SIGTERM abort its signal; a second signal exits at once),
 * and one top-level catch decides the exit status: a CasaError
 * exits with its documented code and hints, anything else is a bug and
 * prints its stack (restic's fatal/bug split).
 */
import { createRequire } from 'node:module';
import type * as CommanderModule from 'commander';
import type { Command } from 'commander';
const { CommanderError } = createRequire(import.meta.url)('commander') as typeof CommanderModule;
import { buildProgram } from './program.js';
import { reportError, processTerminal } from './ui/terminal.js';
import type { RawGlobals } from './commands/context.js';

function commandPath(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

export async function main(argv: string[]): Promise<number> {
  const term = processTerminal();
  const controller = new AbortController();
  let signals = 0;
  const onSignal = () => {
    signals++;
    if (signals > 1) process.exit(130);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let json = argv.includes('--json');
  let exitCode = 0;
  const program = buildProgram(async (cmd, action, args) => {
    const raw = cmd.optsWithGlobals() as RawGlobals & Record<string, unknown>;
    json = Boolean(raw.json);
    const { Context, resolveGlobals, defaultDeps } = await import('./commands/context.js');
    const { RestartCommand } = await import('./errors.js');
    const once = () => action(new Context(resolveGlobals(raw, term.env), defaultDeps(term, controller.signal)), args, cmd.opts());
    try {
      await once();
    } catch (err) {
      // A token kept from an earlier command met a relay that moved on, before anything was done: once more, with a new token.
      if (!(err instanceof RestartCommand)) throw err;
      await once();
    }
  });
  const configure = (c: Command) => {
    c.exitOverride();
    c.showHelpAfterError(`casa: hint: run \`${commandPath(c)} --help\` for usage`);
    c.configureOutput({
      writeOut: (s) => term.stdout.write(s),
      writeErr: (s) => term.stderr.write(s),
      outputError: (s, write) => write(`casa: ${s}`),
    });
    c.commands.forEach(configure);
  };
  configure(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') {
        exitCode = 0;
      } else {
        exitCode = 2;
      }
    } else {
      exitCode = reportError(term, err, json);
    }
  }
  return exitCode;
}

/**
 * Resolves once what was written to `s` is handed to the OS: a pipe takes
 * writes asynchronously, and process.exit drops what it has not taken yet
 * (a `casa log` of 100,000 changes into a pipe lost all but its first part).
 */
function drained(s: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => (s.writableLength === 0 ? resolve() : s.write('', () => resolve())));
}

const code = await main(process.argv.slice(2));
await Promise.all([drained(process.stdout), drained(process.stderr)]);
process.exit(code);

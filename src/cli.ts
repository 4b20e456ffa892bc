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
import type { Context, RawGlobals } from './commands/context.js';
import type { Job } from './last-run.js';

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
  /** An unattended job's run (snapshot, sync): recorded with its exit status once that is decided (src/last-run.ts). */
  let run: { job: Job; command: string; startedAt: number; ctx: Context } | undefined;
  const program = buildProgram(async (cmd, action, args) => {
    const raw = cmd.optsWithGlobals() as RawGlobals & Record<string, unknown>;
    json = Boolean(raw.json);
    const { Context, resolveGlobals, defaultDeps } = await import('./commands/context.js');
    const { RestartCommand } = await import('./errors.js');
    const { jobOf } = await import('./last-run.js');
    const globals = resolveGlobals(raw, term.env);
    const deps = defaultDeps(term, controller.signal);
    const job = jobOf(commandPath(cmd), cmd.opts());
    const once = () => {
      const ctx = new Context(globals, deps);
      if (job) run = { ...job, startedAt: run?.startedAt ?? deps.now(), ctx };
      return action(ctx, args, cmd.opts());
    };
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
      if (run) run.ctx.summary = err instanceof Error ? err.message : String(err);
    }
  }
  if (run) await recordOutcome(run, exitCode);
  return exitCode;
}

/** Writes the last-run record; a record that cannot be written is a warning, never the job's failure. */
async function recordOutcome(run: { job: Job; command: string; startedAt: number; ctx: Context }, exit: number): Promise<void> {
  const { recordRun } = await import('./last-run.js');
  const at = run.ctx.deps.now();
  try {
    recordRun(run.ctx.globals.home, {
      job: run.job,
      command: run.command,
      startedAt: run.startedAt,
      at,
      exit,
      ok: exit === 0,
      summary: run.ctx.summary ?? (exit === 0 ? 'done' : `exit ${exit}`),
    });
  } catch (err) {
    run.ctx.out.warn(`the last-run record was not written: ${(err as Error).message}`);
  }
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

/**
 * casa's commands and flags (commander), declared without importing any
 * command's module: each action imports its module only when it runs, so
 * `casa --help` stays close to a bare `node` start. Tests build the program
 * with their own runner to check argv → options.
 */
import { createRequire } from 'node:module';
import type * as CommanderModule from 'commander';
import type { Command as CommandType } from 'commander';
// commander is CommonJS: require() skips the ESM wrapper (measured: a few ms of every start-up).
const { Command, Option } = createRequire(import.meta.url)('commander') as typeof CommanderModule;
type Command = CommandType;
import { VERSION } from './version.js';
import type { Context } from './commands/context.js';

export const EXIT_CODES = `
Exit status:
  0    ok
  1    failure
  2    usage error
  3    conflict: local changes would be lost
  4    wrong phrase or pairing code, unknown vault, revoked device
  5    relay unreachable, or not a casa relay
  6    integrity failure (tampering, corruption, rollback)
  7    not paired
  8    busy: another casa holds this database's lock
  130  cancelled`;

export const ENVIRONMENT = `
Environment (flags win):
  CASA_HOME      casa's state directory (--home)
  CASA_SERVER    relay URL (--server), default http://127.0.0.1:8787
  CASA_DB        the Casaconomy database (--db)
  CASA_KEYSTORE  keychain | file (--keystore)
  CASA_TMPDIR    where snapshot and pull put a working copy, if they need one (private: 0700, yours)
  CASA_INSECURE_HTTP  1 = --insecure-http
  CASA_TRACE     1 = timing marks on stderr; mem = also the peak RSS`;

export type Action = (ctx: Context, args: unknown[], opts: Record<string, unknown>) => Promise<void>;

export function buildProgram(run: (cmd: Command, action: Action, args: unknown[]) => Promise<void>): Command {
  const program = new Command('casa')
    .description("Keep your Casaconomy database in step across your machines, end-to-end encrypted.")
    .version(VERSION, '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .addOption(new Option('--home <dir>', "casa's state directory").env('CASA_HOME'))
    .addOption(new Option('--server <url>', 'relay URL (default http://127.0.0.1:8787)').env('CASA_SERVER'))
    .addOption(new Option('--db <path>', 'the Casaconomy database').env('CASA_DB'))
    .addOption(new Option('--keystore <kind>', 'where secrets live').choices(['keychain', 'file']).env('CASA_KEYSTORE'))
    .option('--json', 'one JSON document on stdout; errors as JSON on stderr')
    .option('-q, --quiet', 'print nothing on success')
    .option('-y, --yes', 'never prompt: assume yes to confirmations')
    .option('--insecure-http', 'allow a relay over plain http that is not on this machine (CASA_INSECURE_HTTP=1)')
    .addHelpText('after', EXIT_CODES + '\n' + ENVIRONMENT + '\n\nSee casa(1) and casa-COMMAND(1).');

  const wire = (cmd: Command, action: Action) =>
    cmd.action(async (...a: unknown[]) => {
      const self = a[a.length - 1] as Command;
      await run(self, action, a.slice(0, -2));
    });

  wire(
    program
      .command('relay')
      .description('run the relay locally in workerd (D1, R2 and the Durable Object on disk)')
      .option('--port <n>', 'port to listen on; 0 picks a free one', '8787')
      .option('--host <host>', 'address to listen on', '127.0.0.1')
      .option('--data <dir>', "the relay's data directory (default CASA_HOME/relay)")
      .option('--retention-every <duration>', 'how often the retention job runs, 1s to 24h (default 15m)')
      .option('--retention-window <duration>', 'keep everything committed within it, e.g. 30d (default RETENTION_WINDOW in wrangler.jsonc: 30d)')
      .addHelpText('after', '\nThe first line on stdout holds the URL. SIGINT or SIGTERM stops it cleanly.'),
    async (ctx, _args, o) => (await import('./commands/relay.js')).runRelay(ctx, o),
  );

  wire(
    program
      .command('pair')
      .description('create a vault, join one (recovery phrase or pairing code), or offer a pairing code')
      .option('--new', 'create a new vault and its 24-word recovery phrase')
      .option('--join', 'join an existing vault with its recovery phrase')
      .option('--offer', 'on a paired device: show a pairing code and QR code, and wait for the new device')
      .option('--code [code]', 'join with a pairing code from `casa pair --offer` (asked for if not given)')
      .option('--timeout <duration>', 'with --offer: how long the code stays valid, 60s to 30m (default 10m)')
      .option('-y, --yes', 'with --offer: add the device that answers with the right code without asking (needed without a terminal)')
      .option('--phrase-out <file>', 'with --new: write the phrase to FILE (0600, never overwritten); needed without a terminal')
      .option('--phrase-stdin', 'with --join: read the phrase from standard input')
      .option('--phrase-file <file>', 'with --join: read the phrase from FILE')
      .option('--device-name <name>', 'name of this device (default the host name)')
      .option('--keep-phrase', 'with --new or --join: keep the recovery phrase in this device\'s keystore (it then is the paper: see casa-pair(1))')
      .addHelpText(
        'after',
        '\nUnpaired, without --new, --join or --code, casa asks (on a terminal); paired, `casa pair` offers a code.\n' +
          'The phrase is never taken from the command line. A pairing code works once: a wrong try closes it.\n' +
          'With --json, --offer prints the code as its first JSON line. --offer asks before it adds the device that answered.',
      ),
    async (ctx, _args, o) => {
      await (await import('./commands/pair.js')).runPairCommand(ctx, o);
    },
  );

  wire(
    program.command('status').description('show pairing, vault, device, relay and database state'),
    async (ctx) => {
      await (await import('./commands/status.js')).runStatus(ctx);
    },
  );

  wire(
    program
      .command('show-phrase')
      .description('reveal the recovery phrase, where this device keeps it (asks first; --yes without a terminal)')
      .option('--forget', 'remove the recovery phrase from this device (the paper is then the only copy)'),
    async (ctx, _args, o) => (await import('./commands/show-phrase.js')).runShowPhrase(ctx, o),
  );

  const devices = program
    .command('devices')
    .description("list the vault's devices, or revoke one")
    .option('--log', "the vault's audit trail: enrolments, revocations, key epochs, paper replacements")
    .option('--limit <n>', 'with --log: how many events, newest first (default 50, at most 500)')
    .addHelpText('after', '\nSubcommand:\n  revoke ID   revoke a device (its id or a unique prefix of 4+ characters) and start a key epoch without it');
  wire(devices, async (ctx, _args, o) => {
    const d = await import('./commands/devices.js');
    if (o.log) await d.runDevicesLog(ctx, o);
    else await d.runDevicesList(ctx);
  });
  wire(
    devices
      .command('revoke')
      .description('revoke a device: refused by the relay at once, and new keys (a key epoch) it never sees')
      .argument('<id>', 'device id or unique prefix'),
    async (ctx, args) => {
      await (await import('./commands/devices.js')).runDevicesRevoke(ctx, String(args[0]));
    },
  );

  wire(
    program
      .command('rotate')
      .description('start a new key epoch (new data keys for every member); --phrase: replace the recovery phrase')
      .option('--phrase', 'replace the recovery phrase: asks for the current one, shows the new one once')
      .option('--phrase-stdin', 'with --phrase: read the current phrase from standard input')
      .option('--phrase-file <file>', 'with --phrase: read the current phrase from FILE')
      .option('--phrase-out <file>', 'with --phrase: write the new phrase to FILE (0600, never overwritten); needed without a terminal')
      .addHelpText(
        'after',
        '\nA revocation starts an epoch by itself. After --phrase the old phrase opens nothing on the relay\n' +
          '(a vault made by casa 0.1 keeps its first epoch readable by it until retention removes it).',
      ),
    async (ctx, _args, o) => {
      await (await import('./commands/rotate.js')).runRotate(ctx, o);
    },
  );

  wire(
    program
      .command('snapshot')
      .description('push a snapshot of the database to the relay if it changed since the last one')
      .option('--force', 'commit a new snapshot even if the database did not change')
      .addHelpText(
        'after',
        '\nOnly changed pages are uploaded. Made for cron and timers: --quiet prints nothing on success, --json one document.',
      ),
    async (ctx, _args, o) => {
      await (await import('./commands/snapshot.js')).runSnapshot(ctx, o);
    },
  );

  wire(
    program
      .command('restore')
      .description('put the newest snapshot (or --snapshot ID) in place of the database; pairs a fresh machine first')
      .option('--phrase-stdin', 'unpaired: read the recovery phrase from standard input')
      .option('--phrase-file <file>', 'unpaired: read the recovery phrase from FILE')
      .option('--snapshot <id>', 'restore this snapshot (its id or a unique prefix of 6+ characters)')
      .option('--thorough', "run SQLite's full integrity_check (about 18 s per GB) instead of quick_check")
      .option('--device-name <name>', 'unpaired: name of this device (default the host name)')
      .option('--at <time>', 'the database as it was at TIME (ISO 8601, or 3h, 1d ago), written to --to; the current one untouched')
      .option('--to <file>', 'with --at: the new file to write (refused if it exists)')
      .addHelpText(
        'after',
        '\nAn existing database is replaced only after confirmation (--yes without a terminal) and kept as a backup.\n' +
          '--at takes the newest snapshot at or before TIME plus the changes written up to TIME; it reaches back as far as\n' +
          'the relay keeps changesets after a snapshot (its retention window).',
      ),
    async (ctx, _args, o) => {
      await (await import('./commands/restore.js')).runRestore(ctx, o);
    },
  );

  wire(
    program
      .command('pull')
      .description("replace the database with the relay's newest snapshot if it is newer")
      .option('--force', 'replace the database even if it changed locally (the old file is kept as a backup)'),
    async (ctx, _args, o) => {
      await (await import('./commands/pull.js')).runPull(ctx, o);
    },
  );

  wire(
    program
      .command('verify')
      .description("restore drill: restore snapshots into a temp directory and check them, touching nothing; --sync: compare the devices' synced tables")
      .option('--all', 'verify every snapshot, not only the newest')
      .option('--snapshot <id>', 'verify this snapshot (its id or a unique prefix of 6+ characters)')
      .option('--thorough', "run SQLite's full integrity_check instead of quick_check")
      .option('--sync', "sync, then compare this device's synced tables with the other devices' (by digest; exit 6 if they differ)"),
    async (ctx, _args, o) => {
      await (await import('./commands/verify.js')).runVerify(ctx, o);
    },
  );

  wire(
    program
      .command('sync')
      .description("push this device's changes and merge the other devices', field by field")
      .option('--watch', 'stay connected: apply remote changes as they arrive, push local ones as they happen')
      .option('--conflicts', 'list the conflicts merging decided (field, both values, winner, rule)')
      .option('--limit <n>', 'with --conflicts: how many, newest first (default 50)')
      .option('--detach', 'before an app update that drops or rebuilds a synced column: copy the synced tables, remove the triggers')
      .option('--attach', 'after it: triggers back, every write made meanwhile caught up (any `casa sync` does this too)')
      .addHelpText(
        'after',
        "\nTables sync by the vault's rules (`casa tables`; default: every table with a non-integer primary\n" +
          'key, last writer wins per field; link tables as sets). --watch stops on Ctrl-C (exit 0).',
      ),
    async (ctx, _args, o) => {
      await (await import('./commands/sync.js')).runSync(ctx, o);
    },
  );

  const tables = program
    .command('tables')
    .description("show each table of the database with the vault's rule for it (lww, set, snapshot-only) and why")
    .addHelpText(
      'after',
      '\nSubcommand:\n  set TABLE RULE   declare RULE (lww, set, snapshot-only, or default) for TABLE, for the whole vault\n\n' +
        "The rules are the vault's settings: synced to every device with the next `casa sync`, kept in snapshots,\n" +
        'so a restored device uses them too.',
    );
  wire(tables, async (ctx) => {
    await (await import('./commands/tables.js')).runTables(ctx);
  });
  wire(
    tables
      .command('set')
      .description("declare how TABLE syncs, for the whole vault (carried by the next `casa sync`)")
      .argument('<table>', 'a table of the database')
      .argument('<rule>', 'lww, set, snapshot-only, or default (take the declaration back)'),
    async (ctx, args) => {
      await (await import('./commands/tables.js')).runTablesSet(ctx, String(args[0]), String(args[1]));
    },
  );

  wire(
    program
      .command('history')
      .description("every value a row's fields had within the relay's window: when, and which device wrote it")
      .argument('<table>', 'a synced table')
      .argument('<key>', 'the row\'s key: its value, or a JSON array of its values for a composite key')
      .argument('[column]', 'only this field')
      .addHelpText(
        'after',
        '\nOldest first, deletes included. Times are the writes\' own (their HLC), in UTC. Everything is decrypted here;\n' +
          'the changesets are fetched once into CASA_HOME/history.db, then only new ones.',
      ),
    async (ctx, args) => {
      await (await import('./commands/history.js')).runHistory(ctx, { table: String(args[0]), key: String(args[1]), column: args[2] === undefined ? undefined : String(args[2]) });
    },
  );

  wire(
    program
      .command('log')
      .description("what changed within the relay's window, newest first, as old → new per field")
      .option('--since <time>', 'only changes written since TIME (ISO 8601, or 30m, 3h, 1d ago)')
      .option('--device <name>', 'only changes written by this device (its name, id, or an id prefix)')
      .option('--table <table>', 'only changes to this table')
      .option('--limit <n>', 'at most N field changes')
      .addHelpText('after', '\nAn old value shown as ? was written before the window (the relay pruned it); (none): the row did not exist.'),
    async (ctx, _args, o) => {
      await (await import('./commands/log.js')).runLog(ctx, o);
    },
  );

  wire(
    program.command('snapshots').description("list the vault's snapshots, newest first"),
    async (ctx) => {
      await (await import('./commands/snapshots.js')).runSnapshots(ctx);
    },
  );

  const service = program
    .command('service')
    .description('run snapshot and sync in the background: systemd user units (Linux), launchd agents (macOS)')
    .addHelpText(
      'after',
      '\nInstall again to change the settings (updated in place). Windows: `casa service install --dry-run` prints the Task Scheduler commands (untested). See casa-service(1).',
    );
  wire(
    service
      .command('install')
      .description('write, enable and start the background jobs for this CASA_HOME, database and relay')
      .option('--snapshot-every <duration>', 'how often `casa snapshot --quiet` runs, 1m to 24h (default 15m)')
      .addOption(new Option('--sync <mode>', '`casa sync --watch` kept running, or no sync job').choices(['watch', 'off']).default('watch'))
      .option('--dry-run', 'print the files and commands instead of writing and running them')
      .option('--no-enable', 'write the files, but do not enable or start the jobs'),
    async (ctx, _args, o) => (await import('./commands/service.js')).runServiceInstall(ctx, o),
  );
  wire(
    service.command('status').description('each job: installed, enabled, active, and its last run (exit status, when, summary)'),
    async (ctx) => (await import('./commands/service.js')).runServiceStatus(ctx),
  );
  wire(
    service
      .command('uninstall')
      .description('stop and disable the jobs, and remove the files install wrote (one you changed since: only with --yes)')
      .option('-y, --yes', 'also remove files changed since install'),
    async (ctx) => (await import('./commands/service.js')).runServiceUninstall(ctx),
  );

  wire(
    program
      .command('completion')
      .description('print the shell completion script for bash, zsh or fish (commands, flags, their values)')
      .argument('<shell>', 'bash, zsh or fish')
      .addHelpText(
        'after',
        '\nbash:  casa completion bash > ~/.local/share/bash-completion/completions/casa\n' +
          'zsh:   casa completion zsh > "${fpath[1]}/_casa"   (or: source <(casa completion zsh) in ~/.zshrc)\n' +
          'fish:  casa completion fish > ~/.config/fish/completions/casa.fish\n' +
          'On Tab the script runs `casa complete -- WORDS`; snapshot ids and device names come from what casa last listed. See casa-completion(1).',
      ),
    async (ctx, args) => (await import('./commands/completion.js')).runCompletionScript(ctx, String(args[0])),
  );
  // What the completion scripts run on Tab (not for people: hidden from --help).
  program
    .command('complete', { hidden: true })
    .description('print the completions of WORDS (the protocol of the scripts `casa completion` prints)')
    .argument('[words...]')
    .helpOption(false)
    .allowUnknownOption()
    .action(async (words: string[]) => (await import('./commands/completion.js')).runComplete(words ?? [], process.env, process.stdout));

  return program;
}

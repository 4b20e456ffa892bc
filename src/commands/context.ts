/**
 * What every command receives: the resolved global options (flags win over
 * the environment, which wins over defaults: casa(1) GLOBAL OPTIONS), the terminal, and
 * the injectable clock, randomness and cancellation signal. Commands read
 * flags and environment only through here; the crypto and sync cores never do.
 */
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { FailureError, NotPairedError } from '../errors.js';
import { parseKeystoreKind, openKeystore, type Keystore, type KeystoreKind } from '../keystore/index.js';
import { DEFAULT_SERVER, resolveDatabase, resolveHome } from '../paths.js';
import { readState, SECRET_DEVICE_KEY, SECRET_PHRASE, SECRET_ROOT_KEY, type HomeState, type PairedVault } from '../state.js';
import { deriveRoot, vaultKeysFromRoot, type VaultKeys } from '../crypto/kdf.js';
import { checkRelayTransport, DeviceSession, RelayClient } from '../relay/client.js';
import { TokenCache, tokenCachePath } from '../relay/token-cache.js';
import { guardPrivateDir } from '../private-dir.js';
import { Output, type Terminal } from '../ui/terminal.js';
import { b64uDecode } from '../crypto/bytes.js';
import { failure, mapCryptoError } from '../failures.js';

export interface RawGlobals {
  home?: string;
  server?: string;
  db?: string;
  keystore?: string;
  json?: boolean;
  quiet?: boolean;
  yes?: boolean;
  insecureHttp?: boolean;
}

export interface GlobalOptions {
  home: string;
  /** The server given by --server or CASA_SERVER, if any (it wins over the paired one). */
  serverOverride: string | undefined;
  db: string;
  /** The keystore given by --keystore or CASA_KEYSTORE, if any. */
  keystore: KeystoreKind | undefined;
  json: boolean;
  quiet: boolean;
  yes: boolean;
  /** CASA_TMPDIR, if set: where a working copy of the database goes (src/snapshots/db-copy.ts scratchDir). */
  tmpDir: string | undefined;
  /** --insecure-http or CASA_INSECURE_HTTP=1: a relay over plain http off this machine is allowed. */
  insecureHttp: boolean;
}

/**
 * The global options, flags over environment over defaults. CASA_HOME and
 * CASA_TMPDIR, when they exist, are checked here, before any command runs
 * (src/private-dir.ts: another user's or a group/world-writable one is
 * refused, exit 1; one of the user's own is tightened to 0700).
 */
export function resolveGlobals(raw: RawGlobals, env: Record<string, string | undefined>): GlobalOptions {
  const pick = (flag: string | undefined, name: string) => (flag !== undefined && flag !== '' ? flag : env[name] || undefined);
  const ks = pick(raw.keystore, 'CASA_KEYSTORE');
  const home = resolveHome(raw.home, env);
  const tmp = env.CASA_TMPDIR ? resolve(env.CASA_TMPDIR) : undefined;
  guardPrivateDir(home, 'CASA_HOME');
  if (tmp !== undefined) guardPrivateDir(tmp, 'CASA_TMPDIR');
  return {
    home,
    serverOverride: pick(raw.server, 'CASA_SERVER'),
    db: resolveDatabase(raw.db, env),
    keystore: ks === undefined ? undefined : parseKeystoreKind(ks),
    json: Boolean(raw.json),
    quiet: Boolean(raw.quiet),
    yes: Boolean(raw.yes),
    tmpDir: tmp,
    insecureHttp: Boolean(raw.insecureHttp) || env.CASA_INSECURE_HTTP === '1',
  };
}

export interface Deps {
  term: Terminal;
  now: () => number;
  random: (n: number) => Uint8Array;
  /** Aborted on SIGINT/SIGTERM: long operations stop and clean up. */
  signal: AbortSignal;
}

export function defaultDeps(term: Terminal, signal: AbortSignal): Deps {
  return { term, now: Date.now, random: (n) => new Uint8Array(randomBytes(n)), signal };
}

export class Context {
  readonly out: Output;
  /**
   * The command's outcome in one line, for the last-run record (src/last-run.ts):
   * set by the commands cron and timers run (snapshot, sync); src/cli.ts writes it.
   */
  summary: string | undefined;
  constructor(
    readonly globals: GlobalOptions,
    readonly deps: Deps,
  ) {
    this.out = new Output(deps.term, { json: globals.json, quiet: globals.quiet });
  }

  /** The relay to talk to: --server / CASA_SERVER, else the paired vault's, else the default. */
  server(state?: HomeState | null): string {
    return this.globals.serverOverride ?? state?.vault?.server ?? DEFAULT_SERVER;
  }

  /** A client for `server`; plain http off this machine is refused (exit 2) unless --insecure-http (src/relay/client.ts checkRelayTransport). */
  client(server: string, timeoutMs?: number): RelayClient {
    checkRelayTransport(server, this.globals.insecureHttp);
    return new RelayClient(server, { signal: this.deps.signal, timeoutMs, now: this.deps.now });
  }
}

export interface Paired {
  /** CASA_HOME (the kept token lives there: src/relay/token-cache.ts). */
  home: string;
  state: HomeState;
  vault: PairedVault;
  keystore: Keystore;
  client: RelayClient;
}

/** The paired vault of this home, or exit 7. */
export function loadPaired(ctx: Context): Paired {
  const state = readState(ctx.globals.home);
  if (!state?.vault) throw new NotPairedError(`this device is not paired (no vault in ${ctx.globals.home})`);
  const vault = state.vault;
  const keystore = openKeystore(ctx.globals.keystore ?? vault.keystore, { home: ctx.globals.home, namespace: state.homeId });
  return { home: ctx.globals.home, state, vault, keystore, client: ctx.client(ctx.server(state)) };
}

/** The device's authenticated session; reads the device key from the keystore. */
export async function deviceSession(p: Paired): Promise<DeviceSession> {
  const seed = await p.keystore.get(SECRET_DEVICE_KEY);
  if (!seed) {
    // A locked keychain answers "nothing here" too: tell that apart first.
    await p.keystore.probe();
    throw new FailureError(`this device's key is not in the ${p.keystore.kind} keystore`, {
      hints: [
        p.keystore.kind === p.vault.keystore
          ? 'the keystore entry was removed; join the vault again with `casa pair --join`'
          : `this device was paired with the ${p.vault.keystore} keystore; drop --keystore / CASA_KEYSTORE`,
      ],
    });
  }
  return new DeviceSession(p.client, p.vault.vaultId, p.vault.deviceId, b64uDecode(seed), new TokenCache(tokenCachePath(p.home)));
}

/**
 * The vault's keys as this device holds them, without asking the relay
 * (`casa status`, which also runs offline): the keyring's current epoch, or
 * a format-1 device's phrase-derived keys. Commands that talk to the relay
 * use openVaultKeys (src/keys/open.ts), which brings the keyring up to date.
 */
export async function vaultKeys(p: Paired): Promise<VaultKeys> {
  const { loadRing, keysOf } = await import('../keys/epochs.js');
  const stored = await loadRing(p.keystore);
  if (stored) return keysOf(stored);
  const phrase = await p.keystore.get(SECRET_PHRASE);
  if (!phrase) {
    await p.keystore.probe();
    throw new FailureError(`the vault's keyring is not in the ${p.keystore.kind} keystore`, {
      hints: ['join the vault again with `casa pair --join` (or a pairing code) to store it'],
    });
  }
  let keys: VaultKeys;
  try {
    const cached = await p.keystore.get(SECRET_ROOT_KEY);
    keys = vaultKeysFromRoot(cached ? b64uDecode(cached) : deriveRoot(phrase));
  } catch (err) {
    throw mapCryptoError(err, 'the stored phrase');
  }
  if (keys.vaultId !== p.vault.vaultId) {
    throw failure('wrong_key', 'the phrase in the keystore belongs to another vault', {
      hints: ['the keystore entry was replaced; join the vault again with `casa pair --join`'],
    });
  }
  return keys;
}

/**
 * `CASA_TRACE=1`: timing marks on stderr (milliseconds since the process
 * started, and a phase name; never data), for finding where time goes.
 */
export function tracer(ctx: Context): ((label: string) => void) | undefined {
  if (ctx.deps.term.env.CASA_TRACE !== '1' && ctx.deps.term.env.CASA_TRACE !== 'mem') return undefined;
  const mb = (n: number) => String(Math.round(n / 1048576)).padStart(4);
  const line = (label: string) => {
    const m = process.memoryUsage();
    return `casa: trace: ${performance.now().toFixed(0).padStart(6)} ms ${mb(m.rss)} MB (heap ${mb(m.heapUsed)}/${mb(m.heapTotal)}, buffers ${mb(m.arrayBuffers)}, external ${mb(m.external)})  ${label}\n`;
  };
  if (ctx.deps.term.env.CASA_TRACE === 'mem') {
    // Every 20 ms: the largest RSS so far, with its breakdown, printed when the process ends.
    let peak = 0;
    let at = '';
    const timer = setInterval(() => {
      const r = process.memoryUsage.rss();
      if (r > peak) {
        peak = r;
        at = line('peak so far');
      }
    }, 20);
    timer.unref();
    process.once('exit', () => ctx.deps.term.stderr.write(at));
  }
  return (label) => ctx.deps.term.stderr.write(line(label));
}

/**
 * The crypto core's errors as exit codes and hints: src/failures.ts, the one
 * mapping. Re-exported for the command files that still import it from here
 * (src/commands/pair.ts); new code imports it from src/failures.ts.
 */

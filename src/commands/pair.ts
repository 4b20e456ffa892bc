/**
 * `casa pair`: create a vault (`--new`), join one with the recovery phrase
 * (`--join`) or with a pairing code from a paired device (`--code`,
 * src/commands/pair-code.ts); bare `casa pair` asks which, or, on a paired
 * device, offers a code (`--offer`).
 *
 * All or nothing: the device is paired when state.json names the vault, and
 * that is written last, after the relay enrolled this device and the keystore
 * holds the phrase and the device key. Any failure or Ctrl-C before that
 * removes what this run wrote (keystore entries, the --phrase-out file), so
 * the home is exactly as it was. The phrase is never on argv, never logged,
 * and shown only on a terminal.
 *
 * `pairDevice` does the pairing and prints nothing but prompts and warnings;
 * `runPair` is it plus the report (`casa restore` uses the first and reports
 * on its own).
 */
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { AuthError, CancelledError, CasaError, EXIT, FailureError, IntegrityError, UsageError } from '../errors.js';
import { b64uDecode, b64uEncode } from '../crypto/bytes.js';
import { deriveRoot, vaultKeysFromRoot, type VaultKeys } from '../crypto/kdf.js';
import { openCanary, sealCanary } from '../crypto/objects.js';
import { generatePhrase, parsePhrase } from '../crypto/phrase.js';
import { newDeviceSeed, publicKeyFromSeed, signPurpose } from '../crypto/sign.js';
import { openKeystore, type Keystore } from '../keystore/index.js';
import {
  ensureState,
  readState,
  SECRET_DEVICE_KEY,
  SECRET_PHRASE,
  SECRET_ROOT_KEY,
  writeNewSecretFile,
  writeState,
  type HomeState,
  type PairedVault,
} from '../state.js';
import { DeviceSession, RelayClient, RelayHttpError, mapRelayError } from '../relay/client.js';
import { formatPhraseGrid } from '../ui/format.js';
import { secret, select, text } from '../ui/prompts.js';
import { renderQr } from '../ui/qr.js';
import { wordlist as englishWords } from '@scure/bip39/wordlists/english.js';
import type { Context } from './context.js';
import { isDeviceId } from '../protocol/ids.js';
import { sha256Hex } from '../crypto/sha256.js';
import { mapCryptoError } from '../failures.js';
import type { PairingCode, Received } from './pair-code.js';

export interface PairOptions {
  new?: boolean;
  join?: boolean;
  phraseOut?: string;
  phraseStdin?: boolean;
  phraseFile?: string;
  deviceName?: string;
  /** Join with a pairing code: the code, or true to be asked for it. */
  code?: string | boolean;
  /** Offer a pairing code (this device must be paired). */
  offer?: boolean;
  /** With --offer: how long the code stays valid. */
  timeout?: string;
}

export interface PairResult {
  created: boolean;
  /** How the device joined: a new vault, the phrase, or a pairing code. */
  mode: 'new' | 'join' | 'code';
  vault: PairedVault;
  phraseFile?: string;
  /** With a pairing code: the device that offered it. */
  offeredBy?: string;
  /** With a pairing code: the words both devices show (src/commands/pair-code.ts). */
  confirmation?: string;
}

const MAX_PHRASE_INPUT = 4096;

/**
 * `casa pair` as typed: `--offer`, or bare on a paired device, offers a
 * pairing code (src/commands/pair-code.ts); everything else pairs this home.
 */
export async function runPairCommand(ctx: Context, opts: PairOptions): Promise<void> {
  validate(opts);
  const modeless = !opts.new && !opts.join && opts.code === undefined;
  if (opts.offer || (modeless && readState(ctx.globals.home)?.vault)) {
    const { runOffer } = await import('./pair-code.js');
    await runOffer(ctx, { timeout: opts.timeout });
    return;
  }
  if (opts.timeout !== undefined) throw new UsageError('--timeout goes with --offer');
  await runPair(ctx, opts);
}

/** Pairs this home (`casa pair --new | --join | --code`), then says so. */
export async function runPair(ctx: Context, opts: PairOptions): Promise<PairResult> {
  const paired = await pairDevice(ctx, opts);
  reportPaired(ctx, paired);
  return paired;
}

/**
 * Pairs this home and prints nothing but prompts and warnings: what to
 * report is the caller's (`casa restore` pairs a fresh machine first and
 * prints one result of its own). The steps: what was asked → a home and a
 * relay that answer → the phrase → the vault's keys → create the vault
 * (`--new`) → enroll this device → keep the secrets → record the vault in
 * state.json, last. A failure or Ctrl-C once something is written undoes it
 * (the module header).
 */
export async function pairDevice(ctx: Context, opts: PairOptions): Promise<PairResult> {
  const req = await pairingRequest(ctx, opts);
  // Everything that can fail cheaply fails before anything is created.
  const home = await openHome(ctx, req.code);
  const undo: Undo[] = [];
  try {
    const seed = newDeviceSeed(ctx.deps.random);
    const { phrase, received } = await obtainPhrase(ctx, opts, req, home.client, seed, undo);
    const { root, keys } = vaultKeysOf(phrase, received);
    if (req.mode === 'new') await createVault(ctx, home.client, keys);
    const enrolled = await enroll(ctx, home.client, keys, req.deviceName, req.mode === 'new' ? 'new' : 'join', seed);
    await keepSecrets(home.keystore, phrase, root, enrolled.seed, undo);
    ctx.deps.signal.throwIfAborted();

    const vault = recordVault(ctx, home, keys, enrolled.deviceId, req.deviceName);
    undo.length = 0;
    if (received) {
      // The offering side waits for this to name the device; this device is paired either way.
      await received.done(vault.deviceId).catch(() => ctx.out.warn('could not tell the other device that this one enrolled; `casa devices` there shows it'));
    }
    return {
      created: req.mode === 'new',
      mode: req.mode,
      vault,
      ...(req.phraseOut ? { phraseFile: req.phraseOut } : {}),
      ...(received ? { offeredBy: received.offer.deviceName, confirmation: received.confirmation } : {}),
    };
  } catch (err) {
    await undoAll(undo);
    if (ctx.deps.signal.aborted && !(err instanceof CasaError && err.exitCode === EXIT.cancelled)) {
      throw new CancelledError();
    }
    throw err;
  }
}

/** Prints a pairing's outcome: lines for people, and the `paired` result for --json. */
function reportPaired(ctx: Context, r: PairResult): void {
  const { vault } = r;
  ctx.out.print(
    [
      r.created
        ? `created vault ${vault.vaultId} on ${vault.server}`
        : `joined vault ${vault.vaultId} on ${vault.server}${r.offeredBy !== undefined ? ` with a pairing code from "${r.offeredBy}"` : ''}`,
      `this device: ${vault.deviceName} (${vault.deviceId})`,
      ...(r.confirmation !== undefined ? [`confirmation: ${r.confirmation} (the other device shows the same)`] : []),
      `secrets kept in the ${vault.keystore} keystore`,
      ...(r.phraseFile ? [`recovery phrase written to ${r.phraseFile}: store it offline, then delete the file`] : []),
    ].join('\n'),
  );
  ctx.out.result({
    message_type: 'paired',
    created: r.created,
    vault_id: vault.vaultId,
    device_id: vault.deviceId,
    device_name: vault.deviceName,
    server: vault.server,
    keystore: vault.keystore,
    ...(r.phraseFile ? { phrase_file: r.phraseFile } : {}),
    ...(r.offeredBy !== undefined ? { via: 'code', offered_by: r.offeredBy, confirmation: r.confirmation } : {}),
  });
}

// ---------------------------------------------------------------- the steps

/** What this run was asked to do, checked before anything is touched. */
interface PairingRequest {
  mode: 'new' | 'join' | 'code';
  deviceName: string;
  /** --phrase-out, resolved: a path that did not exist. */
  phraseOut?: string;
  /** With mode 'code': the code (its QR text may name the relay). */
  code?: PairingCode;
}

/**
 * The options checked, the device name, --phrase-out, the mode (asked on a
 * terminal when no option gives it) and, for 'code', the code itself: it
 * comes first, as a QR code's text names the relay to use.
 */
async function pairingRequest(ctx: Context, opts: PairOptions): Promise<PairingRequest> {
  validate(opts);
  const deviceName = checkDeviceName(opts.deviceName ?? hostname());
  const phraseOut = opts.phraseOut === undefined ? undefined : resolve(opts.phraseOut);
  if (phraseOut !== undefined && existsSync(phraseOut)) throw phraseFileExists(phraseOut);
  refuseIfPaired(ctx);
  const mode = await chooseMode(ctx, opts);
  let code: PairingCode | undefined;
  if (mode === 'code') {
    const pc = await import('./pair-code.js');
    code = typeof opts.code === 'string' ? pc.parseCode(opts.code) : await pc.promptCode(ctx);
  }
  if (mode === 'new' && phraseOut === undefined && !ctx.out.interactive) {
    throw new UsageError('without a terminal, `casa pair --new` needs --phrase-out FILE', {
      hints: ['the phrase is shown once on a terminal, or written (0600) to the file you name'],
    });
  }
  return { mode, deviceName, ...(phraseOut !== undefined ? { phraseOut } : {}), ...(code ? { code } : {}) };
}

function refuseIfPaired(ctx: Context): void {
  const before = readState(ctx.globals.home);
  if (before?.vault) {
    throw new FailureError(`this device is already paired with vault ${before.vault.vaultId}`, {
      hints: [
        'to add another machine, run `casa pair` here for a pairing code, or `casa pair --join` there with the recovery phrase',
        'to pair a second vault, use another --home (or CASA_HOME)',
      ],
    });
  }
}

/** The mode the options name, or the one picked from a menu on a terminal. */
async function chooseMode(ctx: Context, opts: PairOptions): Promise<PairingRequest['mode']> {
  if (opts.new) return 'new';
  if (opts.join) return 'join';
  if (opts.code !== undefined) return 'code';
  return select(
    ctx.out,
    'This device is not paired yet. What do you want to do?',
    [
      { value: 'new', label: 'Create a new vault', hint: 'first machine: you get a 24-word recovery phrase' },
      { value: 'join', label: 'Join a vault with its recovery phrase', hint: 'another machine already has it' },
      { value: 'code', label: 'Join a vault with a pairing code', hint: 'run `casa pair` on a paired machine to get one' },
    ],
    'use `casa pair --new --phrase-out FILE`, `casa pair --join --phrase-stdin` or `casa pair --code CODE`',
  );
}

/** The home and the relay this pairing uses, each shown to work: state.json, a keystore that answers, a relay that does. */
interface PairingHome {
  state: HomeState;
  keystore: Keystore;
  server: string;
  client: RelayClient;
}

async function openHome(ctx: Context, code: PairingCode | undefined): Promise<PairingHome> {
  const state = ensureState(ctx.globals.home);
  const keystore = openKeystore(ctx.globals.keystore ?? 'keychain', { home: ctx.globals.home, namespace: state.homeId });
  await keystore.probe();
  const server = code?.relay !== undefined && ctx.globals.serverOverride === undefined ? code.relay : ctx.server(state);
  const client = ctx.client(server);
  await client.health();
  return { state, keystore, server, client };
}

/** Something this run wrote, and how to remove it if the pairing fails. */
type Undo = () => void | Promise<void>;

/** Runs the undos, newest first, each best effort: the original error is what the user needs to see. */
async function undoAll(undo: Undo[]): Promise<void> {
  for (const u of undo.reverse()) {
    try {
      await u();
    } catch {
      // Best effort.
    }
  }
}

/**
 * The vault's recovery phrase: a new one (`--new`: written to --phrase-out,
 * or shown and confirmed on the terminal), typed or read (`--join`), or
 * received from the offering device (`--code`, which proves this device's
 * key to it).
 */
async function obtainPhrase(
  ctx: Context,
  opts: PairOptions,
  req: PairingRequest,
  client: RelayClient,
  seed: Uint8Array,
  undo: Undo[],
): Promise<{ phrase: string; received?: Received }> {
  if (req.mode === 'code') {
    const { receivePhrase } = await import('./pair-code.js');
    const received = await receivePhrase(ctx, client, req.code!, publicKeyFromSeed(seed), req.deviceName);
    return { phrase: received.phrase, received };
  }
  if (req.mode === 'join') return { phrase: await readPhrase(ctx, opts) };
  const phrase = generatePhrase(ctx.deps.random);
  const file = req.phraseOut;
  if (file !== undefined) {
    writePhraseFile(file, phrase);
    undo.push(() => rmSync(file, { force: true }));
  } else {
    await showAndConfirm(ctx, phrase);
  }
  return { phrase };
}

/** The root and vault keys of a phrase; a phrase received by pairing must be valid and be the offered vault's. */
function vaultKeysOf(phrase: string, received: Received | undefined): { root: Uint8Array; keys: VaultKeys } {
  let root: Uint8Array;
  try {
    root = deriveRoot(phrase);
  } catch (err) {
    if (received) throw new IntegrityError('the phrase received by pairing is not a valid recovery phrase');
    throw err;
  }
  const keys = vaultKeysFromRoot(root);
  if (received && keys.vaultId !== received.offer.vaultId) {
    throw new IntegrityError(`the phrase received by pairing is not the phrase of vault ${received.offer.vaultId}`);
  }
  return { root, keys };
}

/** The phrase, the root key and the device key into the keystore, each removed again if the pairing fails. */
async function keepSecrets(keystore: Keystore, phrase: string, root: Uint8Array, deviceSeed: Uint8Array, undo: Undo[]): Promise<void> {
  undo.push(
    () => keystore.delete(SECRET_PHRASE),
    () => keystore.delete(SECRET_ROOT_KEY),
    () => keystore.delete(SECRET_DEVICE_KEY),
  );
  await keystore.set(SECRET_PHRASE, phrase);
  await keystore.set(SECRET_ROOT_KEY, b64uEncode(root));
  await keystore.set(SECRET_DEVICE_KEY, b64uEncode(deviceSeed));
}

/** Writes the vault into state.json: from here on the device is paired. */
function recordVault(ctx: Context, home: PairingHome, keys: VaultKeys, deviceId: string, deviceName: string): PairedVault {
  const vault: PairedVault = {
    vaultId: keys.vaultId,
    keyIdHex: keys.keyIdHex,
    deviceId,
    deviceName,
    server: home.server,
    keystore: home.keystore.kind,
    pairedAt: ctx.deps.now(),
  };
  writeState(ctx.globals.home, { ...home.state, vault });
  return vault;
}

// ---------------------------------------------------------------- options and the phrase

/** Refuses options that do not go together (before anything is asked or touched). */
function validate(o: PairOptions): void {
  const modes = [o.new && '--new', o.join && '--join', o.code !== undefined && '--code', o.offer && '--offer'].filter(Boolean);
  if (modes.length > 1) throw new UsageError(`${modes.join(' and ')} cannot be used together`);
  if (o.timeout !== undefined && o.code !== undefined) throw new UsageError('--timeout goes with --offer');
  if ((o.offer || o.code !== undefined) && (o.phraseStdin || o.phraseFile !== undefined || o.phraseOut !== undefined)) {
    throw new UsageError('the phrase options go with --new and --join');
  }
  if (o.offer && o.deviceName !== undefined) throw new UsageError('--device-name names the device being paired; give it on the new device');
  if (o.phraseStdin && o.phraseFile) throw new UsageError('--phrase-stdin and --phrase-file cannot be used together');
  if (o.phraseOut !== undefined && !o.new) throw new UsageError('--phrase-out goes with --new');
  if ((o.phraseStdin || o.phraseFile !== undefined) && o.new) {
    throw new UsageError('--phrase-stdin and --phrase-file go with --join (a new vault gets a new phrase)');
  }
}

/** A device name as the relay keeps it: trimmed, 1 to 64 characters, no control characters. */
export function checkDeviceName(name: string): string {
  const n = name.trim();
  // eslint-disable-next-line no-control-regex
  if (n.length < 1 || n.length > 64 || /[\u0000-\u001f\u007f]/.test(n)) {
    throw new UsageError('a device name is 1 to 64 printable characters', { hints: ['pass --device-name NAME'] });
  }
  return n;
}

function phraseFileExists(path: string): UsageError {
  return new UsageError(`${path} already exists; casa never overwrites a file with the phrase`, {
    hints: ['give --phrase-out a path that does not exist yet'],
  });
}

/** Writes the new phrase to --phrase-out: a new 0600 file, never over an existing one. */
function writePhraseFile(path: string, phrase: string): void {
  try {
    writeNewSecretFile(path, phrase + '\n');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw phraseFileExists(path);
    throw new FailureError(`cannot write the phrase to ${path} (${code ?? 'error'})`, {
      hints: ['give --phrase-out a writable path'],
    });
  }
}

/** The phrase for `--join`: from stdin, a file (at most MAX_PHRASE_INPUT bytes) or a hidden prompt. */
async function readPhrase(ctx: Context, opts: PairOptions): Promise<string> {
  let raw: string;
  if (opts.phraseStdin) {
    raw = await readAll(ctx.deps.term.stdin);
  } else if (opts.phraseFile !== undefined) {
    const f = resolve(opts.phraseFile);
    let st;
    try {
      st = statSync(f);
    } catch {
      throw new UsageError(`cannot read the phrase file ${f}`, { hints: ['check the path given to --phrase-file'] });
    }
    if (st.size > MAX_PHRASE_INPUT) throw new UsageError(`${f} is too large to be a recovery phrase`);
    if ((st.mode & 0o077) !== 0) ctx.out.warn(`${f} can be read by other users; keep phrase files 0600`);
    raw = readFileSync(f, 'utf8');
  } else {
    raw = await secret(
      ctx.out,
      'Recovery phrase (24 words; the first four letters of each are enough)',
      'pass the phrase with --phrase-stdin or --phrase-file FILE',
    );
  }
  try {
    return parsePhrase(raw);
  } catch (err) {
    throw mapCryptoError(err, 'the phrase');
  }
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of stream) {
    const b = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
    size += b.length;
    if (size > MAX_PHRASE_INPUT) throw new UsageError('standard input is too large to be a recovery phrase');
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Shows the new phrase once on the terminal (words + QR), asks two words back, then clears the screen. */
async function showAndConfirm(ctx: Context, phrase: string): Promise<void> {
  const { out } = ctx;
  const words = phrase.split(' ');
  const grid = formatPhraseGrid(words);
  const qr = await renderQr(phrase);
  out.tty(
    '\nYour recovery phrase. Write it down and keep it offline: it is the only way back into your\n' +
      'vault if every device is lost, and anyone who has it can read your finances.\n\n' +
      grid +
      '\n\n' +
      qr +
      '\n',
  );
  const picks = pickTwo(ctx.deps.random, words.length);
  for (const i of picks) {
    await text(
      out,
      `To confirm you wrote it down: word #${i + 1}?`,
      'pass --phrase-out FILE to write the phrase to a file instead',
      (v) => (normaliseWord(v) === words[i] ? undefined : 'that is not the word at that position; check what you wrote'),
    );
  }
  // Remove the phrase from the screen and the scrollback.
  out.tty('\x1b[2J\x1b[3J\x1b[H');
  out.note('phrase confirmed and cleared from the screen');
}

/** One word typed back: the same forgiving rules as the phrase parser (NFKD, case, unique 4-letter prefix). */
function normaliseWord(v: string): string {
  const w = v.normalize('NFKD').trim().toLowerCase();
  return englishWords.find((x) => x === w || (w.length >= 4 && x.startsWith(w) && x.slice(0, 4) === w.slice(0, 4))) ?? w;
}


function pickTwo(random: (n: number) => Uint8Array, n: number): [number, number] {
  const r = random(4);
  const a = ((r[0]! << 8) | r[1]!) % n;
  let b = ((r[2]! << 8) | r[3]!) % (n - 1);
  if (b >= a) b++;
  return a < b ? [a, b] : [b, a];
}

async function createVault(ctx: Context, client: RelayClient, keys: VaultKeys): Promise<void> {
  const canary = sealCanary(keys, ctx.deps.random(32));
  const authPublicKey = b64uEncode(keys.authPublicKey!);
  const time = relayTime(ctx, client);
  const digest = sha256Hex(canary);
  const signature = b64uEncode(signPurpose(keys.authSeed!, 'create-vault', [keys.vaultId, authPublicKey, digest, time]));
  try {
    await client.request('POST', '/v1/vaults', {
      vaultId: keys.vaultId,
      authPublicKey,
      canary: b64uEncode(canary),
      time,
      signature,
    });
  } catch (err) {
    if (err instanceof RelayHttpError && err.code === 'conflict') {
      throw new FailureError('the relay already has a vault with this id', {
        hints: ['run `casa pair --new` again: a new phrase gives a new vault id'],
      });
    }
    throw mapRelayError(client.server, err);
  }
}

/** The time to put in a signed request: the relay's clock as last seen, so local skew does not matter. */
function relayTime(ctx: Context, client: RelayClient): number {
  return ctx.deps.now() + (client.clockOffsetMs ?? 0);
}

async function enroll(
  ctx: Context,
  client: RelayClient,
  keys: VaultKeys,
  name: string,
  mode: 'new' | 'join',
  seed: Uint8Array,
): Promise<{ deviceId: string; seed: Uint8Array }> {
  const devicePublicKey = b64uEncode(publicKeyFromSeed(seed));
  const time = relayTime(ctx, client);
  const signature = b64uEncode(signPurpose(keys.authSeed!, 'enroll', [keys.vaultId, devicePublicKey, name, time]));
  let res: Record<string, unknown>;
  try {
    res = await client.request('POST', `/v1/vaults/${keys.vaultId}/devices`, { devicePublicKey, name, time, signature });
  } catch (err) {
    if (err instanceof RelayHttpError && err.code === 'not_found' && mode === 'join') {
      throw new AuthError(`no vault for this phrase on ${client.server}`, {
        code: 'unknown_vault',
        hints: [
          'check the phrase (a valid but different phrase names a different vault)',
          'check that --server (or CASA_SERVER) is the relay the vault was created on',
        ],
      });
    }
    if (err instanceof RelayHttpError && err.code === 'unauthorized') {
      throw new AuthError('the relay refused this phrase for the vault', { code: 'wrong_phrase' });
    }
    throw mapRelayError(client.server, err);
  }
  if (typeof res.deviceId !== 'string' || !isDeviceId(res.deviceId) || typeof res.canary !== 'string') {
    throw new IntegrityError(`the relay at ${client.server} sent a malformed enrollment answer`);
  }
  const deviceId = res.deviceId;
  // The canary proves the phrase's keys are the vault's keys before anything is written here.
  try {
    openCanary(keys, keys.vaultId, b64uDecode(res.canary));
  } catch (err) {
    await new DeviceSession(client, keys.vaultId, deviceId, seed)
      .call('POST', `/devices/${deviceId}/revoke`)
      .catch(() => undefined);
    throw mapCryptoError(err, "the vault's key check (canary)");
  }
  return { deviceId, seed };
}


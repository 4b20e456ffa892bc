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
import { TokenCache, tokenCachePath } from '../relay/token-cache.js';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { AuthError, CancelledError, CasaError, EXIT, FailureError, IntegrityError, UsageError } from '../errors.js';
import { b64uEncode } from '../crypto/bytes.js';
import { deriveRoot, type VaultKeys } from '../crypto/kdf.js';
import { currentEpoch, deviceExchangeKey, legacyKeyring, newKeyring, recoveryKeys, vaultKeysOf, type RecoveryKeys } from '../crypto/keyring.js';
import { sealCanary } from '../crypto/objects.js';
import { deviceIdOf, RECOVERY, type DeviceCert } from '../protocol/membership.js';
import { makeCert, saveRing, type KeyEnv, type StoredRing } from '../keys/epochs.js';
import { joinWithPaper, postFirstEpoch } from '../keys/open.js';
import { generatePhrase, parsePhrase } from '../crypto/phrase.js';
import { newDeviceSeed, publicKeyFromSeed, signPurpose } from '../crypto/sign.js';
import { openKeystore, type Keystore } from '../keystore/index.js';
import {
  ensureState,
  readState,
  SECRET_DEVICE_KEY,
  SECRET_KEYRING,
  SECRET_PHRASE,
  writeNewSecretFile,
  writeState,
  type HomeState,
  type PairedPaper,
  type PairedVault,
} from '../state.js';
import { DeviceSession, RelayClient, RelayHttpError, mapRelayError } from '../relay/client.js';
import { formatPhraseGrid } from '../ui/format.js';
import { secret, select, text } from '../ui/prompts.js';
import { renderQr } from '../ui/qr.js';
import { wordlist as englishWords } from '@scure/bip39/wordlists/english.js';
import type { Context } from './context.js';
import { isDeviceId, isVaultId } from '../protocol/ids.js';
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
  /** With --offer: add the joining device without asking (no terminal). */
  yes?: boolean;
  /** Keep the recovery phrase in this device's keystore (docs/SECURITY.md §2: a device that keeps it is the paper). */
  keepPhrase?: boolean;
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
  /** Whether this device keeps the recovery phrase (--keep-phrase). */
  phraseHeld: boolean;
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
    undo.push(
      () => home.keystore.delete(SECRET_DEVICE_KEY),
      () => home.keystore.delete(SECRET_KEYRING),
      () => home.keystore.delete(SECRET_PHRASE),
    );
    let joined: Joined;
    let received: Received | undefined;
    if (req.mode === 'code') {
      const { receiveKeys } = await import('./pair-code.js');
      received = await receiveKeys(ctx, home.client, req.code!, {
        signingPublicKey: publicKeyFromSeed(seed),
        exchangePublicKey: deviceExchangeKey(seed).publicKey,
        deviceName: req.deviceName,
      });
      joined = await joinVouched(ctx, home, seed, received);
    } else {
      const { phrase } = await obtainPhrase(ctx, opts, req, undo);
      joined = req.mode === 'new' ? await createWithPaper(ctx, home, seed, phrase, req.deviceName) : await joinWithPhrase(ctx, home, seed, phrase, req.deviceName);
      if (opts.keepPhrase) await home.keystore.set(SECRET_PHRASE, phrase);
    }
    await home.keystore.set(SECRET_DEVICE_KEY, b64uEncode(seed));
    await saveRing(home.keystore, joined.stored);
    ctx.deps.signal.throwIfAborted();

    const vault = recordVault(ctx, home, joined, req.deviceName);
    undo.length = 0;
    if (received) {
      // The offering side waits for this to name the device; this device is paired either way.
      await received.done(vault.deviceId).catch(() => ctx.out.warn('could not tell the other device that this one enrolled; `casa devices` there shows it'));
    }
    return {
      created: req.mode === 'new',
      mode: req.mode,
      vault,
      phraseHeld: Boolean(opts.keepPhrase) && req.mode !== 'code',
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
 * or shown and confirmed on the terminal), or typed or read (`--join`).
 */
async function obtainPhrase(ctx: Context, opts: PairOptions, req: PairingRequest, undo: Undo[]): Promise<{ phrase: string }> {
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

/** What a pairing leaves: the vault, this device's id, the keyring, and the paper this device trusts. */
interface Joined {
  vaultId: string;
  deviceId: string;
  stored: StoredRing;
  paper: PairedPaper;
}

function paperOf(k: RecoveryKeys): PairedPaper {
  return { authKey: b64uEncode(k.authPublicKey), exchangeKey: b64uEncode(k.exchange.publicKey), n: 0 };
}

function keyEnvOf(ctx: Context, home: PairingHome, vaultId: string, deviceId: string, seed: Uint8Array, paper: PairedPaper): KeyEnv {
  return {
    home: ctx.globals.home,
    vaultId,
    deviceId,
    keystore: home.keystore,
    session: new DeviceSession(home.client, vaultId, deviceId, seed, new TokenCache(tokenCachePath(ctx.globals.home))),
    deviceSeed: seed,
    now: ctx.deps.now,
    note: (line) => ctx.out.note(line),
    paper,
    knownRevoked: [],
  };
}

function paperKeysOf(phrase: string): { root: Uint8Array; paperKeys: RecoveryKeys } {
  const root = deriveRoot(phrase);
  return { root, paperKeys: recoveryKeys(root) };
}

/**
 * `--new`: the vault (its id from the paper), this device certified by the
 * paper, and epoch 1 (random keys) sealed to this device and the paper.
 */
async function createWithPaper(ctx: Context, home: PairingHome, seed: Uint8Array, phrase: string, name: string): Promise<Joined> {
  const { paperKeys } = paperKeysOf(phrase);
  const vaultId = paperKeys.recoveryId;
  const stored: StoredRing = { ring: newKeyring(vaultId, ctx.deps.random), marks: {} };
  await createVault(ctx, home.client, vaultId, paperKeys, vaultKeysOf(stored.ring));
  const deviceId = await enroll(home.client, vaultId, paperCert(ctx, home.client, vaultId, seed, name, paperKeys), 'new');
  const paper = paperOf(paperKeys);
  const env = keyEnvOf(ctx, home, vaultId, deviceId, seed, paper);
  await postFirstEpoch(env, stored, paper, paperKeys);
  return { vaultId, deviceId, stored, paper };
}

/**
 * `--join`: the vault the paper opens, this device certified by the paper,
 * and the keyring from the paper's wrap of the newest epoch (a format-1
 * vault: its phrase-derived keys become epoch 1). The phrase is not kept.
 */
async function joinWithPhrase(ctx: Context, home: PairingHome, seed: Uint8Array, phrase: string, name: string): Promise<Joined> {
  const { root, paperKeys } = paperKeysOf(phrase);
  const vaultId = await findVault(home.client, paperKeys.recoveryId);
  const deviceId = await enroll(home.client, vaultId, paperCert(ctx, home.client, vaultId, seed, name, paperKeys), 'join');
  const env = keyEnvOf(ctx, home, vaultId, deviceId, seed, paperOf(paperKeys));
  const legacy = vaultId === paperKeys.recoveryId ? legacyKeyring(root) : null;
  const { stored, paper } = await joinWithPaper(env, paperKeys, { ...(legacy ? { legacy: { ring: legacy, marks: {} } } : {}), name, certify: false });
  return { vaultId, deviceId, stored, paper };
}

/** `--code`: the keyring and the vouch the offering device sent; this device enrolls with the vouch. */
async function joinVouched(ctx: Context, home: PairingHome, seed: Uint8Array, r: Received): Promise<Joined> {
  const deviceId = await enroll(home.client, r.vaultId, r.cert, 'join');
  return { vaultId: r.vaultId, deviceId, stored: r.stored, paper: r.paper };
}

/** The vault a paper opens (a replaced paper's id resolves to its vault). */
async function findVault(client: RelayClient, recoveryId: string): Promise<string> {
  try {
    const d = await client.request('GET', `/v1/recovery/${recoveryId}`);
    if (!isVaultId(d.vaultId)) throw new IntegrityError(`the relay at ${client.server} sent a malformed vault lookup`);
    return d.vaultId;
  } catch (err) {
    if (err instanceof RelayHttpError && err.code === 'not_found') {
      throw new AuthError(`no vault for this phrase on ${client.server}`, {
        code: 'unknown_vault',
        hints: [
          'check the phrase (a valid but different phrase names a different vault; a replaced phrase opens nothing)',
          'check that --server (or CASA_SERVER) is the relay the vault was created on',
        ],
      });
    }
    throw err instanceof CasaError ? err : mapRelayError(client.server, err);
  }
}

/** Writes the vault into state.json: from here on the device is paired. */
function recordVault(ctx: Context, home: PairingHome, j: Joined, deviceName: string): PairedVault {
  const cur = currentEpoch(j.stored.ring);
  const vault: PairedVault = {
    vaultId: j.vaultId,
    keyIdHex: cur.keyIdHex,
    deviceId: j.deviceId,
    deviceName,
    server: home.server,
    keystore: home.keystore.kind,
    pairedAt: ctx.deps.now(),
    paper: j.paper,
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
export function writePhraseFile(path: string, phrase: string): void {
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
export async function readPhrase(ctx: Context, opts: PairOptions): Promise<string> {
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
export async function showAndConfirm(ctx: Context, phrase: string): Promise<void> {
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

async function createVault(ctx: Context, client: RelayClient, vaultId: string, paperKeys: RecoveryKeys, keys: VaultKeys): Promise<void> {
  const canary = sealCanary(keys, ctx.deps.random(32));
  const authPublicKey = b64uEncode(paperKeys.authPublicKey);
  const time = relayTime(ctx, client);
  const digest = sha256Hex(canary);
  const signature = b64uEncode(signPurpose(paperKeys.authSeed, 'create-vault', [vaultId, authPublicKey, digest, time]));
  try {
    await client.request('POST', '/v1/vaults', { vaultId, authPublicKey, canary: b64uEncode(canary), time, signature });
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

/** This device's certificate, signed by the paper (pairing by phrase, and a new vault). */
function paperCert(ctx: Context, client: RelayClient, vaultId: string, seed: Uint8Array, name: string, paperKeys: RecoveryKeys): DeviceCert {
  return makeCert({ vaultId, deviceSeed: seed, deviceId: deviceIdOf(publicKeyFromSeed(seed)), name, issuedAt: relayTime(ctx, client), issuer: RECOVERY, issuerSeed: paperKeys.authSeed });
}

/** Enrolls this device with its certificate (signed by the paper, or vouched by a member); its id. */
async function enroll(client: RelayClient, vaultId: string, cert: DeviceCert, mode: 'new' | 'join'): Promise<string> {
  let res: Record<string, unknown>;
  try {
    res = await client.request('POST', `/v1/vaults/${vaultId}/devices`, { cert });
  } catch (err) {
    if (err instanceof RelayHttpError && err.code === 'not_found' && mode === 'join') {
      throw new AuthError(`no vault ${vaultId} on ${client.server}`, {
        code: 'unknown_vault',
        hints: ['check that --server (or CASA_SERVER) is the relay the vault was created on'],
      });
    }
    if (err instanceof RelayHttpError && err.code === 'unauthorized') {
      throw new AuthError(cert.issuer === RECOVERY ? 'the relay refused this phrase for the vault' : 'the relay refused the vouch of the offering device', {
        code: 'wrong_phrase',
        ...(cert.issuer === RECOVERY ? { hints: ['a replaced recovery phrase opens nothing: use the newest one'] } : {}),
      });
    }
    throw mapRelayError(client.server, err);
  }
  if (res.deviceId !== cert.deviceId || !isDeviceId(res.deviceId)) {
    throw new IntegrityError(`the relay at ${client.server} sent a malformed enrollment answer`);
  }
  return cert.deviceId;
}

/**
 * Pairing by code (docs/FORMAT.md §6, docs/RELAY-API.md "Pairing by code").
 *
 * `casa pair --offer` on a paired device: a short code — the relay's session
 * number plus three words — and a QR code carrying the relay URL and the
 * code; then it waits for the other device. `casa pair --code` on the new
 * device: both sides run CPace (src/crypto/pairing.ts) through the relay's
 * mailbox and each proves it has the key. Both then show the same
 * confirmation string; the person at the offering device compares it and
 * accepts the new device by name (or passed --yes). Only then does the
 * offering device vouch for the new device's keys (a device certificate it
 * signs) and send the vault's keyring and the paper's public keys, sealed
 * under the PAKE key. The new device enrolls with that certificate
 * (src/commands/pair.ts does that part). Never the recovery phrase.
 *
 * The words never reach the relay: it sees the session number and three
 * opaque messages, and msgA names neither the vault nor the device. One
 * answer per session: a wrong code burns it on both sides (exit 4), and the
 * right code after that finds nothing to join; declining burns it too (exit
 * 130 on the offering side).
 */
import { b64uDecode, b64uEncode, bytesToUtf8, utf8ToBytes } from '../crypto/bytes.js';
import { decodeKeyring, encodeKeyring, type EpochMark } from '../crypto/keyring.js';
import {
  answerOffer,
  checkAnswer,
  discardConfirmed,
  generatePairingWords,
  isPairingDeviceName,
  normalisePairingWords,
  openFinal,
  PAIR_MAX_FINAL_BYTES,
  pairingFinalBytes,
  PairingError,
  PairingTooLargeError,
  PAIR_WORDS,
  sealFinal,
  startOffer,
  type JoinIdentity,
  type JoinState,
} from '../crypto/pairing.js';
import { AuthError, CancelledError, CasaError, EXIT, FailureError, IntegrityError, UsageError } from '../errors.js';
import { loadRing, vouchFor, type StoredRing } from '../keys/epochs.js';
import { openVaultKeys } from '../keys/open.js';
import { isDeviceId, isVaultId } from '../protocol/ids.js';
import { certOf, deviceIdOf, isDeviceCert, type DeviceCert } from '../protocol/membership.js';
import { readState, SECRET_DEVICE_KEY, type PairedPaper } from '../state.js';
import { JoinMailbox, NAMEPLATE, OfferMailbox, type OfferStatus, type PairingState } from '../relay/pairing.js';
import { normaliseServer, RelayClient, type DeviceSession } from '../relay/client.js';
import { sanitize as printable } from '../ui/format.js';
import { renderQr } from '../ui/qr.js';
import { deviceSession, loadPaired, type Context, type Paired } from './context.js';

/** How long an offered code stays valid unless --timeout says otherwise (the 10 minutes). */
export const DEFAULT_OFFER_SECONDS = 600;
export const MIN_OFFER_SECONDS = 60;
export const MAX_OFFER_SECONDS = 1800;
/** How long the offering side waits for the new device to enroll once it has the keys. */
const ENROLL_WAIT_MS = 120_000;
/** How long the new device waits, after joining, for the person on the offering side to compare and accept it. */
const ANSWER_WAIT_MS = 300_000;

// ---------------------------------------------------------------- the code

export interface PairingCode {
  nameplate: string;
  words: string[];
  /** The relay named by a QR code's text, when the code came in that form. */
  relay?: string;
}

export function formatCode(nameplate: string, words: string[]): string {
  return [nameplate, ...words].join('-');
}

/** What the QR code holds: the code and the relay, as one string `casa pair --code` also accepts. */
export function qrText(relay: string, code: string): string {
  return `casa://pair/${code}?relay=${encodeURIComponent(relay)}`;
}

const CODE_HINTS = ['a pairing code looks like 4821-ocean-permit-silver: the number, then three words'];

/** Parses "4821-ocean-permit-silver" (spaces or hyphens, any case, 4-letter prefixes) or the QR text. */
export function parseCode(input: string): PairingCode {
  let text = input.normalize('NFKD').trim();
  let relay: string | undefined;
  if (/^casa:\/\//i.test(text)) {
    let u: URL;
    try {
      u = new URL(text);
    } catch {
      throw new UsageError('not a pairing code', { hints: CODE_HINTS });
    }
    if (u.hostname !== 'pair') throw new UsageError('not a pairing code', { hints: CODE_HINTS });
    const r = u.searchParams.get('relay');
    if (r !== null) relay = normaliseServer(r);
    text = decodeURIComponent(u.pathname.replace(/^\/+/, ''));
  }
  const parts = text.toLowerCase().split(/[\s-]+/).filter(Boolean);
  const nameplate = parts.shift();
  if (nameplate === undefined || !NAMEPLATE.test(nameplate)) {
    throw new UsageError('a pairing code starts with its session number', { hints: CODE_HINTS });
  }
  let words: string[];
  try {
    words = normalisePairingWords(parts.join(' '));
  } catch (err) {
    if (err instanceof PairingError) throw new UsageError(`not a pairing code: ${err.message}`, { hints: CODE_HINTS });
    throw err;
  }
  return { nameplate, words, ...(relay ? { relay } : {}) };
}

/** --timeout: seconds, or a number with s / m (default 10m). */
export function parseOfferTimeout(text: string | undefined): number {
  if (text === undefined) return DEFAULT_OFFER_SECONDS;
  const m = /^(\d{1,5})\s*(s|m)?$/i.exec(text.trim());
  const secs = m ? Number(m[1]) * (m[2]?.toLowerCase() === 'm' ? 60 : 1) : NaN;
  if (!(secs >= MIN_OFFER_SECONDS && secs <= MAX_OFFER_SECONDS)) {
    throw new UsageError(`--timeout takes ${MIN_OFFER_SECONDS} s to ${MAX_OFFER_SECONDS / 60} min, e.g. 10m or 300s`);
  }
  return secs;
}

// ---------------------------------------------------------------- the payload

/** What the offering device sends (docs/FORMAT.md §6), as either side holds it. */
export interface PairingPayload {
  vaultId: string;
  /** The offering device: it signed `cert`. */
  offerer: { deviceId: string; name: string };
  /** The paper's public keys the offering device trusts. */
  paper: PairedPaper;
  /** The new device's certificate, vouched for by `offerer`. */
  cert: DeviceCert;
  /** The vault's keyring (every epoch) and where each older epoch stopped. */
  stored: StoredRing;
}

const PAYLOAD_VERSION = 2;
const PAYLOAD_FIELDS = ['v', 'vaultId', 'offerer', 'paper', 'cert', 'ring', 'marks'];
const SIGNATURE_BYTES = 64;

/** The payload's plaintext: UTF-8 JSON, fields in the order of docs/FORMAT.md §6. */
export function encodePairingPayload(p: PairingPayload): Uint8Array {
  const c = p.cert;
  const marks: Record<string, EpochMark> = {};
  for (const [k, v] of Object.entries(p.stored.marks).sort(([a], [b]) => Number(a) - Number(b))) marks[k] = { cursor: v.cursor, seq: v.seq };
  return utf8ToBytes(
    JSON.stringify({
      v: PAYLOAD_VERSION,
      vaultId: p.vaultId,
      offerer: { deviceId: p.offerer.deviceId, name: p.offerer.name },
      paper: { authKey: p.paper.authKey, exchangeKey: p.paper.exchangeKey, n: p.paper.n },
      cert: certOf(c),
      ring: b64uEncode(encodeKeyring(p.stored.ring)),
      marks,
    }),
  );
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function b64uOf(v: unknown, bytes: number): boolean {
  if (typeof v !== 'string') return false;
  try {
    return b64uDecode(v).length === bytes;
  } catch {
    return false;
  }
}

/**
 * The payload the new device received, checked whole: the documented shape,
 * a certificate for exactly this device's keys and name in the payload's
 * vault, issued by the offering device, a keyring of that vault, marks of
 * its older epochs only, and the paper's keys. The certificate's signature
 * is the relay's to check when the device enrolls with it (and every
 * device's, through the membership records). IntegrityError names the field
 * that failed, never a value.
 */
export function decodePairingPayload(bytes: Uint8Array, joiner: JoinIdentity): PairingPayload {
  const bad = (what: string) =>
    new IntegrityError(`the other device's pairing payload is not usable (${what})`, {
      hints: ['nothing was stored; update casa on both devices, or pair with the recovery phrase (`casa pair --join`)'],
    });
  let d: unknown;
  try {
    d = JSON.parse(bytesToUtf8(bytes));
  } catch {
    throw bad('not JSON');
  }
  if (!isObj(d)) throw bad('not a JSON object');
  if (d.v !== PAYLOAD_VERSION) throw bad('version');
  const keys = Object.keys(d);
  if (keys.length !== PAYLOAD_FIELDS.length || !PAYLOAD_FIELDS.every((f) => keys.includes(f))) throw bad('fields');
  const vaultId = d.vaultId;
  if (!isVaultId(vaultId)) throw bad('vaultId');

  const o = d.offerer;
  if (!isObj(o) || Object.keys(o).length !== 2 || !isDeviceId(o.deviceId) || !isPairingDeviceName(o.name)) throw bad('offerer');
  const offerer = { deviceId: o.deviceId, name: o.name };

  const pp = d.paper;
  if (!isObj(pp) || Object.keys(pp).length !== 3 || !b64uOf(pp.authKey, 32) || !b64uOf(pp.exchangeKey, 32) || !isCount(pp.n)) throw bad('paper');
  const paper: PairedPaper = { authKey: pp.authKey as string, exchangeKey: pp.exchangeKey as string, n: pp.n };

  const c = d.cert;
  if (!isDeviceCert(c) || Object.keys(c).length !== 8) throw bad('cert');
  if (c.vaultId !== vaultId) throw bad('cert: another vault');
  if (c.signingKey !== b64uEncode(joiner.signingPublicKey) || c.deviceId !== deviceIdOf(joiner.signingPublicKey)) throw bad('cert: another signing key');
  if (c.exchangeKey !== b64uEncode(joiner.exchangePublicKey)) throw bad('cert: another exchange key');
  if (c.name !== joiner.deviceName) throw bad('cert: another name');
  if (c.issuer !== offerer.deviceId) throw bad('cert: issuer');
  if (!b64uOf(c.signature, SIGNATURE_BYTES)) throw bad('cert: signature');
  const cert = certOf(c);

  if (typeof d.ring !== 'string') throw bad('ring');
  let ring: StoredRing['ring'];
  try {
    ring = decodeKeyring(b64uDecode(d.ring));
  } catch {
    throw bad('ring');
  }
  if (ring.vaultId !== vaultId) throw bad('ring: another vault');

  if (!isObj(d.marks)) throw bad('marks');
  const marks: Record<number, EpochMark> = {};
  for (const [k, v] of Object.entries(d.marks)) {
    // Where an older epoch stopped: never the current one.
    if (!/^[1-9][0-9]{0,8}$/.test(k) || Number(k) >= ring.epochs.length) throw bad('marks: epoch');
    if (!isObj(v) || Object.keys(v).length !== 2 || !isCount(v.cursor) || !isCount(v.seq)) throw bad('marks');
    marks[Number(k)] = { cursor: v.cursor, seq: v.seq };
  }
  return { vaultId, offerer, paper, cert, stored: { ring, marks } };
}

// ---------------------------------------------------------------- offer

export interface OfferOptions {
  timeout?: string;
  /** Add the device that answers with the right code without asking (also the global --yes). */
  yes?: boolean;
}

export interface OfferResult {
  deviceId: string;
  deviceName: string;
  confirmation: string;
}

function clock(ms: number): string {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** A one-line countdown on stderr, on a terminal only; stop() erases it. */
function countdown(ctx: Context, until: number, label: string): { stop(): void } {
  const out = ctx.out;
  if (!out.term.stderr.isTTY || out.opts.json || out.opts.quiet) return { stop() {} };
  const draw = () => out.term.stderr.write(`\r\x1b[2Kcasa: ${label}, ${clock(until - ctx.deps.now())} left (Ctrl-C stops)`);
  draw();
  const t = setInterval(draw, 1000);
  return {
    stop() {
      clearInterval(t);
      out.term.stderr.write('\r\x1b[2K');
    },
  };
}

/** Polls until the session leaves `since` or `deadline` passes (then 'expired'). */
async function waitOffer(ctx: Context, box: OfferMailbox, nameplate: string, since: PairingState, deadline: number): Promise<OfferStatus> {
  for (;;) {
    const left = deadline - ctx.deps.now();
    if (left <= 0) return { state: 'expired', expiresAt: deadline };
    const st = await box.status(nameplate, since, Math.min(10_000, Math.max(0, left)));
    if (st.state !== since) return st;
  }
}

function tooLarge(epochs: number): FailureError {
  return new FailureError(`the vault's keyring (${epochs} key epochs) is too large to send with a pairing code`, {
    hints: ['pair the new device with the recovery phrase instead: `casa pair --join` on it'],
  });
}

/** What this device hands on: its keyring (brought up to the relay's epoch) and the paper it trusts. */
async function keysToOffer(ctx: Context, p: Paired, session: DeviceSession): Promise<{ stored: StoredRing; paper: PairedPaper }> {
  // Upgrades a format-1 device (it records the paper) and picks up a newer epoch: the new device
  // must get the vault's current keys, as later epochs are sealed to it only once it is a member.
  await openVaultKeys(ctx, p, session);
  const paper = readState(ctx.globals.home)?.vault?.paper;
  const stored = await loadRing(p.keystore);
  if (!paper || !stored) {
    throw new FailureError("this device holds no keyring to hand on", {
      hints: ['run `casa status` here; or pair the new device with the recovery phrase (`casa pair --join`)'],
    });
  }
  return { stored, paper };
}

/** Refuses, before a code is shown, a keyring whose payload cannot fit (a stand-in certificate of the largest name). */
function checkFits(ctx: Context, p: Paired, stored: StoredRing, paper: PairedPaper): void {
  const b64 = (n: number) => b64uEncode(ctx.deps.random(n));
  const standIn: DeviceCert = {
    vaultId: p.vault.vaultId,
    deviceId: p.vault.deviceId,
    signingKey: b64(32),
    exchangeKey: b64(32),
    name: '\u{1F3E0}'.repeat(64),
    issuedAt: ctx.deps.now(),
    issuer: p.vault.deviceId,
    signature: b64(64),
  };
  const trial = encodePairingPayload({ vaultId: p.vault.vaultId, offerer: { deviceId: p.vault.deviceId, name: p.vault.deviceName }, paper, cert: standIn, stored });
  let size: number;
  try {
    size = pairingFinalBytes(trial);
  } catch (err) {
    if (err instanceof PairingTooLargeError) throw tooLarge(stored.ring.epochs.length);
    throw err;
  }
  if (size > PAIR_MAX_FINAL_BYTES) throw tooLarge(stored.ring.epochs.length);
}

/**
 * `casa pair --offer` (and bare `casa pair` on a paired device). Nothing
 * leaves this device for the new one before the person accepted it (or
 * --yes): a "no" burns the session (exit 130).
 */
export async function runOffer(ctx: Context, opts: OfferOptions): Promise<OfferResult> {
  const { out } = ctx;
  const ttl = parseOfferTimeout(opts.timeout);
  const p = loadPaired(ctx);
  const yes = Boolean(opts.yes ?? ctx.globals.yes);
  if (!yes && !out.interactive) {
    // Refused before anything is asked of the relay: no session is made.
    throw new UsageError('`casa pair --offer` asks before it adds the new device, and there is no terminal to ask on', {
      hints: ['run it on a terminal, or pass --yes to add the device that answers with the right code without asking (compare the confirmation on both screens yourself)'],
    });
  }
  const session = await deviceSession(p);
  const seedText = await p.keystore.get(SECRET_DEVICE_KEY);
  if (!seedText) throw new FailureError(`this device's key is not in the ${p.keystore.kind} keystore`, { hints: ['join the vault again with `casa pair --join`'] });
  const { stored: atStart, paper } = await keysToOffer(ctx, p, session);
  checkFits(ctx, p, atStart, paper);

  const box = new OfferMailbox(session);
  const words = generatePairingWords(ctx.deps.random);
  const offer = startOffer({ words, random: ctx.deps.random });
  const created = await box.create(offer.sid, offer.msgA, ttl);
  const nameplate = created.nameplate;
  const relay = p.client.server;
  const code = formatCode(nameplate, words);
  const qr = qrText(relay, code);
  // Our own clock for the countdown: the relay's expiry shifted by the measured offset.
  const expiresAt = created.expiresAt - (p.client.clockOffsetMs ?? 0);

  let finished = false;
  try {
    out.result({ message_type: 'pairing_code', code, nameplate, relay, qr, expires_at: created.expiresAt });
    if (!out.opts.json) {
      if (out.term.stderr.isTTY && !out.opts.quiet) out.tty(`\n${await renderQr(qr)}\n`);
      out.print(`pairing code: ${code}`);
      out.note(`on the new device run \`casa pair --code\` (relay ${relay}) and type the code, or scan the QR code`);
    }

    const cd = countdown(ctx, expiresAt, 'waiting for the other device');
    let st: OfferStatus;
    try {
      st = await waitOffer(ctx, box, nameplate, 'open', expiresAt);
    } finally {
      cd.stop();
    }
    if (st.state !== 'joined' || !st.msgB) throw closed(st.state, 'no device joined');

    const answer = checkAnswer(offer.state, st.msgB);
    if (!answer.ok) {
      await box.finish(nameplate, null);
      finished = true;
      throw new AuthError('the other device answered with a wrong code; this pairing session is closed', {
        code: 'wrong_code',
        hints: [
          'run `casa pair --offer` again for a new code, and type it carefully on the other device',
          'if it was typed right, something between the devices (the relay?) tampered with the pairing: nothing was sent',
        ],
      });
    }
    const confirmed = answer.state;
    try {
      const joiner = answer.joiner;
      const name = joiner.deviceName;
      const shown = printable(name);
      const joinerId = deviceIdOf(joiner.signingPublicKey);
      const sas = answer.sas;

      if (!(await accept(ctx, yes, shown, joinerId, sas))) {
        discardConfirmed(confirmed);
        try {
          await box.finish(nameplate, null);
          finished = true;
        } catch {
          // Not burned (expired meanwhile, or the relay failed): cancelled below instead.
        }
        throw new CancelledError(`"${shown}" was not added: nothing was sent to it, and this pairing session is closed`, {
          hints: ['run `casa pair --offer` again for a new code'],
        });
      }

      // Accepted: vouch for exactly the keys the PAKE bound, and hand on the keyring as it is now.
      const stored = (await loadRing(p.keystore)) ?? atStart;
      const trusted = readState(ctx.globals.home)?.vault?.paper ?? paper;
      const seed = b64uDecode(seedText);
      let cert: DeviceCert;
      try {
        cert = vouchFor({
          vaultId: p.vault.vaultId,
          deviceId: joinerId,
          signingKey: b64uEncode(joiner.signingPublicKey),
          exchangeKey: b64uEncode(joiner.exchangePublicKey),
          name,
          issuedAt: ctx.deps.now() + (p.client.clockOffsetMs ?? 0),
          issuer: p.vault.deviceId,
          issuerSeed: seed,
        });
      } finally {
        seed.fill(0);
      }
      const payload = encodePairingPayload({
        vaultId: p.vault.vaultId,
        offerer: { deviceId: p.vault.deviceId, name: p.vault.deviceName },
        paper: trusted,
        cert,
        stored,
      });
      let msgFinal: Uint8Array;
      try {
        msgFinal = sealFinal(confirmed, payload, ctx.deps.random);
      } catch (err) {
        // The keyring grew since the check at the start: the session is cancelled, nothing was sent.
        if (err instanceof PairingTooLargeError) throw tooLarge(stored.ring.epochs.length);
        throw err;
      } finally {
        payload.fill(0);
      }
      await box.finish(nameplate, msgFinal);
      finished = true;
      out.note(`sent the vault's keys to "${shown}"; waiting for it to enroll`);

      const done = await waitOffer(ctx, box, nameplate, 'confirmed', Math.min(expiresAt + ENROLL_WAIT_MS, ctx.deps.now() + ENROLL_WAIT_MS));
      if (done.state !== 'done' || !done.deviceId) {
        throw new FailureError(`"${shown}" received the vault's keys but has not finished joining`, {
          hints: ['run `casa devices` in a minute to see whether it enrolled; on the other device, `casa status` tells'],
        });
      }
      if (done.deviceId !== joinerId) {
        throw new IntegrityError(`the relay names device ${done.deviceId} as the one that joined, not ${joinerId}, the one this device vouched for`, {
          hints: ['run `casa devices` and revoke any device you do not recognise'],
        });
      }
      await checkEnrolled(session, cert);
      out.print(`"${shown}" joined vault ${p.vault.vaultId} as device ${joinerId}\nconfirmation: ${sas} (the other device shows the same)`);
      out.result({
        message_type: 'paired_device',
        vault_id: p.vault.vaultId,
        device_id: joinerId,
        device_name: name,
        confirmation: sas,
      });
      return { deviceId: joinerId, deviceName: name, confirmation: sas };
    } finally {
      discardConfirmed(confirmed);
    }
  } catch (err) {
    if (!finished) await cancelQuietly(session, nameplate);
    if (ctx.deps.signal.aborted && !(err instanceof CasaError && err.exitCode === EXIT.cancelled)) throw new CancelledError();
    throw err;
  }
}

/** The person's yes: the joiner's name and the confirmation to compare, then "Add it?" (default no). --yes says it for them. */
async function accept(ctx: Context, yes: boolean, shown: string, deviceId: string, sas: string): Promise<boolean> {
  if (yes) {
    ctx.out.note(`"${shown}" (device ${deviceId}) answered with the right code; confirmation ${sas}; adding it (--yes)`);
    return true;
  }
  const { confirm } = await import('../ui/prompts.js');
  ctx.out.tty(`casa: "${shown}" (device ${deviceId}) answered with the right code\ncasa: confirmation: ${sas} — "${shown}" must show the same\n`);
  return confirm(ctx.out, `Add "${shown}" to this vault? [y/N]`, 'pass --yes to add it without asking', { initial: false });
}

/** The relay says which device enrolled; its list must agree: the id, name and keys this device vouched for, not revoked. */
async function checkEnrolled(session: DeviceSession, cert: DeviceCert): Promise<void> {
  const d = await session.call('GET', '/devices');
  const list = Array.isArray(d.devices) ? (d.devices as Record<string, unknown>[]) : [];
  const dev = list.find((x) => x.id === cert.deviceId);
  const listed = dev?.cert;
  if (
    !dev ||
    dev.name !== cert.name ||
    typeof dev.revokedAt === 'number' ||
    !isDeviceCert(listed) ||
    listed.signingKey !== cert.signingKey ||
    listed.exchangeKey !== cert.exchangeKey
  ) {
    throw new IntegrityError(`the relay names device ${cert.deviceId} as the one that joined, but its device list disagrees`, {
      hints: ['run `casa devices` and revoke any device you do not recognise'],
    });
  }
}

/** Closes the session on the relay with a client of its own (the command's may already be cancelled). */
async function cancelQuietly(session: DeviceSession, nameplate: string): Promise<void> {
  try {
    const token = await Promise.race([session.getToken(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('slow')), 2000))]);
    const c = new RelayClient(session.client.server, { timeoutMs: 3000 });
    await c.request('DELETE', `/v1/vaults/${session.vaultId}/pairings/${nameplate}`, undefined, token);
  } catch {
    // It expires on its own.
  }
}

function closed(state: PairingState, what: string): CasaError {
  switch (state) {
    case 'cancelled':
      return new FailureError(`${what}: the pairing session was cancelled`, { code: 'pairing_closed' });
    case 'failed':
      return new AuthError(`${what}: the pairing session was closed after a wrong code`, { code: 'wrong_code' });
    default:
      return new FailureError(`${what} before the code expired`, {
        code: 'pairing_closed',
        hints: ['run `casa pair --offer` again; `--timeout 20m` gives more time'],
      });
  }
}

// ---------------------------------------------------------------- join

/** What the new device received: everything it needs to enroll (pair.ts), checked (decodePairingPayload). */
export interface Received {
  vaultId: string;
  /** The offering device (it vouched for this one). */
  offer: { deviceId: string; deviceName: string };
  /** The paper's public keys the offering device trusts: record them as `vault.paper`. */
  paper: PairedPaper;
  /** This device's certificate, for `POST /v1/vaults/{vaultId}/devices`. */
  cert: DeviceCert;
  /** The vault's keyring and its marks, to save with saveRing. */
  stored: StoredRing;
  /** The string both screens show. */
  confirmation: string;
  /** Tells the offering side which device enrolled (best effort). */
  done(deviceId: string): Promise<void>;
}

const WRONG_CODE_HINTS = [
  'check the code on the other device, or ask it for a new one (`casa pair --offer`)',
  'a code works once, and only until it expires',
];

/**
 * The new device's half: joins session `code.nameplate` on `client`'s relay
 * as `identity` (its signing and exchange public keys and name, bound by the
 * PAKE), shows the confirmation while the person at the other device
 * compares and accepts, and returns what that device sent once both sides
 * have proved they share the key.
 */
export async function receiveKeys(
  ctx: Context,
  client: RelayClient,
  code: PairingCode,
  identity: { signingPublicKey: Uint8Array; exchangePublicKey: Uint8Array; deviceName: string },
): Promise<Received> {
  const box = new JoinMailbox(client);
  const offered = await box.offer(code.nameplate);
  if (!offered) {
    throw new AuthError(`no open pairing session ${code.nameplate} on ${client.server}`, { code: 'wrong_code', hints: WRONG_CODE_HINTS });
  }
  const joiner: JoinIdentity = { signingPublicKey: identity.signingPublicKey, exchangePublicKey: identity.exchangePublicKey, deviceName: identity.deviceName };
  let answer: { msgB: Uint8Array; sas: string; state: JoinState };
  try {
    answer = answerOffer({ words: code.words, sid: offered.sid, msgA: offered.msgA, identity: joiner, random: ctx.deps.random });
  } catch (err) {
    if (err instanceof PairingError && err.reason === 'version') {
      throw new FailureError(err.message, { hints: ['update casa on the other device and offer a new code, or pair with the recovery phrase (`casa pair --join`)'] });
    }
    if (err instanceof PairingError) {
      throw new IntegrityError(`the relay at ${client.server} sent a malformed pairing offer`, {
        hints: ['ask the other device for a new code; if it happens again, the relay may be tampering with pairing'],
      });
    }
    throw err;
  }
  const token = await box.join(code.nameplate, answer.msgB);
  if (token === null) {
    throw new AuthError(`pairing session ${code.nameplate} was taken or closed meanwhile`, { code: 'wrong_code', hints: WRONG_CODE_HINTS });
  }
  ctx.out.note(`confirmation: ${answer.sas} — check the other device shows the same`);

  const deadline = ctx.deps.now() + ANSWER_WAIT_MS;
  const cd = countdown(ctx, deadline, 'waiting for the other device to accept this one');
  let res: { state: PairingState; msgFinal?: Uint8Array };
  try {
    for (;;) {
      const left = deadline - ctx.deps.now();
      if (left <= 0) {
        res = { state: 'expired' };
        break;
      }
      res = await box.result(code.nameplate, token, Math.min(10_000, left));
      if (res.state !== 'joined') break;
    }
  } finally {
    cd.stop();
  }
  if (res.state === 'failed') {
    throw new AuthError('the code is wrong, or the person at the other device declined this one: it refused, and this pairing session is now closed', {
      code: 'wrong_code',
      hints: WRONG_CODE_HINTS,
    });
  }
  if ((res.state !== 'confirmed' && res.state !== 'done') || !res.msgFinal) {
    throw new AuthError(
      res.state === 'expired' ? 'the other device did not answer in time' : `the pairing session was ${res.state === 'cancelled' ? 'cancelled on the other device' : 'closed'}`,
      { code: 'pairing_closed', hints: ['ask the other device for a new code (`casa pair --offer`)'] },
    );
  }
  let opened: { payload: Uint8Array; sas: string };
  try {
    opened = openFinal(answer.state, res.msgFinal);
  } catch (err) {
    if (err instanceof PairingError) {
      // The other side accepted our proof, so the code was right: the answer was changed on the way.
      throw new IntegrityError("the other device's answer failed its check: it was changed on the way", {
        hints: ['nothing was stored; ask for a new code, and if it happens again suspect the relay'],
      });
    }
    throw err;
  }
  let got: PairingPayload;
  try {
    got = decodePairingPayload(opened.payload, joiner);
  } finally {
    opened.payload.fill(0);
  }
  return {
    vaultId: got.vaultId,
    offer: { deviceId: got.offerer.deviceId, deviceName: got.offerer.name },
    paper: got.paper,
    cert: got.cert,
    stored: got.stored,
    confirmation: opened.sas,
    done: async (deviceId) => {
      await box.done(code.nameplate, token, deviceId);
    },
  };
}

/** Asks for the code on a terminal. */
export async function promptCode(ctx: Context): Promise<PairingCode> {
  const { text } = await import('../ui/prompts.js');
  const raw = await text(ctx.out, `Pairing code (the number and ${PAIR_WORDS} words shown on the other device)`, 'pass the code: `casa pair --code CODE`', (v) => {
    try {
      parseCode(v);
      return undefined;
    } catch (err) {
      return (err as Error).message;
    }
  });
  return parseCode(raw);
}

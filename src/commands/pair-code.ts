/**
 * Pairing by code (docs/RELAY-API.md, docs/RELAY-API.md "Pairing by code").
 *
 * `casa pair --offer` on a paired device: a short code — the relay's session
 * number plus three words — and a QR code carrying the relay URL and the
 * code; then it waits for the other device. `casa pair --code` on the new
 * device: both sides run CPace (src/crypto/pairing.ts) through the relay's
 * mailbox, each proves it has the key, and the offering side sends the
 * recovery phrase sealed under it. The new device then enrolls exactly as
 * `casa pair --join` would (src/commands/pair.ts does that part).
 *
 * The words never reach the relay: it sees the session number and three
 * opaque messages. One answer per session: a wrong code burns it on both
 * sides (exit 4), and the right code after that finds nothing to join.
 */
import { bytesToUtf8, utf8ToBytes } from '../crypto/bytes.js';
import {
  answerOffer,
  checkAnswer,
  generatePairingWords,
  normalisePairingWords,
  openFinal,
  PairingError,
  PAIR_WORDS,
  startOffer,
  type JoinState,
  type OfferIdentity,
} from '../crypto/pairing.js';
import { AuthError, CancelledError, CasaError, EXIT, FailureError, IntegrityError, UsageError } from '../errors.js';
import { SECRET_PHRASE } from '../state.js';
import { JoinMailbox, NAMEPLATE, OfferMailbox, type OfferStatus, type PairingState } from '../relay/pairing.js';
import { normaliseServer, RelayClient, type DeviceSession } from '../relay/client.js';
import { renderQr } from '../ui/qr.js';
import { deviceSession, loadPaired, type Context } from './context.js';

/** How long an offered code stays valid unless --timeout says otherwise (the 10 minutes). */
export const DEFAULT_OFFER_SECONDS = 600;
export const MIN_OFFER_SECONDS = 60;
export const MAX_OFFER_SECONDS = 1800;
/** How long the offering side waits for the new device to enroll once it has the phrase. */
const ENROLL_WAIT_MS = 120_000;
/** How long the new device waits for the offering side's answer after joining. */
const ANSWER_WAIT_MS = 120_000;

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

// ---------------------------------------------------------------- offer

export interface OfferOptions {
  timeout?: string;
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

/** `casa pair --offer` (and bare `casa pair` on a paired device). */
export async function runOffer(ctx: Context, opts: OfferOptions): Promise<OfferResult> {
  const { out } = ctx;
  const ttl = parseOfferTimeout(opts.timeout);
  const p = loadPaired(ctx);
  const phrase = await p.keystore.get(SECRET_PHRASE);
  if (!phrase) {
    await p.keystore.probe();
    throw new FailureError(`the recovery phrase is not in the ${p.keystore.kind} keystore`, {
      hints: ['pair the new device with `casa pair --join` and the phrase written down when the vault was made'],
    });
  }
  const session = await deviceSession(p);
  const box = new OfferMailbox(session);
  const words = generatePairingWords(ctx.deps.random);
  const identity: OfferIdentity = { vaultId: p.vault.vaultId, deviceId: p.vault.deviceId, deviceName: p.vault.deviceName };
  const offer = startOffer({ words, identity, random: ctx.deps.random });
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

    const answer = checkAnswer(offer.state, st.msgB, utf8ToBytes(phrase), ctx.deps.random);
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
    await box.finish(nameplate, answer.msgFinal);
    finished = true;
    const name = answer.joiner.deviceName;
    out.note(`confirmation ${answer.sas}: "${name}" must show the same; waiting for it to enroll`);

    const done = await waitOffer(ctx, box, nameplate, 'confirmed', Math.min(expiresAt + ENROLL_WAIT_MS, ctx.deps.now() + ENROLL_WAIT_MS));
    if (done.state !== 'done' || !done.deviceId) {
      throw new FailureError(`"${name}" received the vault key but has not finished joining`, {
        hints: ['run `casa devices` in a minute to see whether it enrolled; on the other device, `casa status` tells'],
      });
    }
    await checkEnrolled(session, done.deviceId, name);
    out.print(`"${name}" joined vault ${p.vault.vaultId} as device ${done.deviceId}\nconfirmation: ${answer.sas} (the other device shows the same)`);
    out.result({
      message_type: 'paired_device',
      vault_id: p.vault.vaultId,
      device_id: done.deviceId,
      device_name: name,
      confirmation: answer.sas,
    });
    return { deviceId: done.deviceId, deviceName: name, confirmation: answer.sas };
  } catch (err) {
    if (!finished) await cancelQuietly(session, nameplate);
    if (ctx.deps.signal.aborted && !(err instanceof CasaError && err.exitCode === EXIT.cancelled)) throw new CancelledError();
    throw err;
  }
}

/** The relay says which device enrolled; its list must agree, by id and name. */
async function checkEnrolled(session: DeviceSession, deviceId: string, name: string): Promise<void> {
  const d = await session.call('GET', '/devices');
  const list = Array.isArray(d.devices) ? (d.devices as Record<string, unknown>[]) : [];
  const dev = list.find((x) => x.id === deviceId);
  if (!dev || dev.name !== name || typeof dev.revokedAt === "number") {
    throw new IntegrityError(`the relay names device ${deviceId} as the one that joined, but its device list disagrees`, {
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

export interface Received {
  phrase: string;
  offer: OfferIdentity;
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
 * with the device key whose public half is `devicePublicKey`, and returns the
 * vault's phrase once both sides have proved they share the key.
 */
export async function receivePhrase(
  ctx: Context,
  client: RelayClient,
  code: PairingCode,
  devicePublicKey: Uint8Array,
  deviceName: string,
): Promise<Received> {
  const box = new JoinMailbox(client);
  const offered = await box.offer(code.nameplate);
  if (!offered) {
    throw new AuthError(`no open pairing session ${code.nameplate} on ${client.server}`, { code: 'wrong_code', hints: WRONG_CODE_HINTS });
  }
  let answer: { msgB: Uint8Array; offer: OfferIdentity; state: JoinState };
  try {
    answer = answerOffer({ words: code.words, sid: offered.sid, msgA: offered.msgA, identity: { devicePublicKey, deviceName }, random: ctx.deps.random });
  } catch (err) {
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

  const deadline = ctx.deps.now() + ANSWER_WAIT_MS;
  const cd = countdown(ctx, deadline, `waiting for "${answer.offer.deviceName}" to answer`);
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
    throw new AuthError('the code is wrong: the other device refused it, and this pairing session is now closed', {
      code: 'wrong_code',
      hints: WRONG_CODE_HINTS,
    });
  }
  if ((res.state !== 'confirmed' && res.state !== 'done') || !res.msgFinal) {
    throw new AuthError(
      res.state === 'expired'
        ? `"${answer.offer.deviceName}" did not answer in time`
        : `the pairing session was ${res.state === 'cancelled' ? 'cancelled on the other device' : 'closed'}`,
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
  return {
    phrase: bytesToUtf8(opened.payload),
    offer: answer.offer,
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

/**
 * HTTP plumbing shared by the routes: the one error type the app renders
 * (docs/RELAY-API.md "Every response"), JSON body parsing under the 64 KiB
 * cap, and boundary checks for request fields. A check names the field and
 * what it expects, never the value.
 */
import type { Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { isDeviceId, isVaultId } from '../src/protocol/ids.js';
import type { RelayErrorCode } from '../src/protocol/messages.js';

/**
 * The codes the relay answers: the protocol's, plus the commit's 409 reasons
 * (docs/RELAY-API.md "Snapshots"), which belong in RelayErrorCode.
 */
export type ErrorCode = RelayErrorCode;

/**
 * An error the client is meant to see: status + stable code + short message,
 * and `extra` top-level fields beside `error` (a 409's `head` or `missing`).
 */
export class ApiError extends HTTPException {
  readonly code: ErrorCode;
  readonly headers: Record<string, string>;
  readonly extra: Record<string, unknown>;

  constructor(
    status: ContentfulStatusCode,
    code: ErrorCode,
    message: string,
    headers: Record<string, string> = {},
    extra: Record<string, unknown> = {},
  ) {
    super(status, { message });
    this.code = code;
    this.headers = headers;
    this.extra = extra;
  }
}

export const badRequest = (message: string): ApiError => new ApiError(400, 'bad_request', message);
export const unauthorized = (message = 'unauthorized'): ApiError => new ApiError(401, 'unauthorized', message);
/** One answer for every "not yours or not there", so existence never leaks. */
export const notFound = (): ApiError => new ApiError(404, 'not_found', 'not found');
export const revoked = (): ApiError => new ApiError(403, 'device_revoked', 'this device was revoked');

export function errorBody(code: ErrorCode, message: string): { error: { code: ErrorCode; message: string } } {
  return { error: { code, message } };
}

/** Cap for every JSON route (RELAY-API: 64 KiB → 413 too_large). */
export const JSON_BODY_LIMIT = 64 * 1024;
/** Cap for the JSON routes that list up to 10,000 pack ids (packs/check, the commit). */
export const LARGE_JSON_BODY_LIMIT = 1024 * 1024;
/** Cap for binary uploads (packs, manifests). */
export const BLOB_BODY_LIMIT = 16 * 1024 * 1024;

/** Middleware: 413 too_large once the body passes `maxSize` (Content-Length or counted while reading). */
export function jsonBodyLimitOf(maxSize: number) {
  return bodyLimit({
    maxSize,
    onError: () => {
      throw tooLarge(maxSize);
    },
  });
}

export const tooLarge = (maxSize: number): ApiError => new ApiError(413, 'too_large', `body over ${maxSize} bytes`);

export const jsonBodyLimit = jsonBodyLimitOf(JSON_BODY_LIMIT);

/** The parsed JSON object of the request body; 400 unless it is an object. */
export async function readJson(c: Context): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = await c.req.json();
  } catch (err) {
    if (err instanceof HTTPException) throw err; // the body limit fired while reading
    throw badRequest('body is not valid JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('body must be a JSON object');
  return body as Record<string, unknown>;
}

const B64U = /^[A-Za-z0-9_-]*$/;

export function vaultIdParam(c: Context): string {
  const id = c.req.param('vaultId');
  if (!isVaultId(id)) throw badRequest('vaultId must be 32 lowercase hex characters');
  return id;
}

/** The body's device id field (16 lowercase hex characters); 400 otherwise. */
export function deviceIdField(body: Record<string, unknown>, field = 'deviceId'): string {
  const v = body[field];
  if (!isDeviceId(v)) throw badRequest(`${field} must be 16 lowercase hex characters`);
  return v;
}

export function str(body: Record<string, unknown>, field: string): string {
  const v = body[field];
  if (typeof v !== 'string') throw badRequest(`${field} must be a string`);
  return v;
}

export function int(body: Record<string, unknown>, field: string): number {
  const v = body[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw badRequest(`${field} must be a non-negative integer`);
  return v;
}

/** base64url (no padding) → bytes; `length` when the field has a fixed size. */
export function b64uField(body: Record<string, unknown>, field: string, length?: number): Uint8Array {
  const text = str(body, field);
  const bytes = b64uDecode(text);
  if (bytes === null) throw badRequest(`${field} must be base64url without padding`);
  if (length !== undefined && bytes.length !== length) throw badRequest(`${field} must encode ${length} bytes`);
  return bytes;
}

export function b64uDecode(text: string): Uint8Array | null {
  if (!B64U.test(text) || text.length % 4 === 1) return null;
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  let bin: string;
  try {
    bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  // Canonical only: one string per byte sequence (no stray low bits in the last char).
  return b64uEncode(out) === text ? out : null;
}

export function b64uEncode(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function hex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

export async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

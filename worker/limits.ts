/**
 * Rate limits through the Workers `ratelimits` bindings (wrangler.jsonc):
 * CREATE_LIMITER and ENROLL_LIMITER keyed by client IP, AUTH_LIMITER by
 * IP + device id, API_LIMITER by device id (and by client IP for the join
 * side's long poll of a pairing session), PAIR_LIMITER (opening pairing
 * sessions) by device id, PAIR_JOIN_LIMITER (the join side of pairing, no
 * credentials) by client IP. Over the limit → 429 `rate_limited` with
 * Retry-After.
 *
 * The binding only says yes or no, not when the window ends, so Retry-After
 * is the longest period a binding may have (60 s): never too early.
 */
import type { Context, MiddlewareHandler } from 'hono';
import type { AppEnv } from './env.js';
import { ApiError } from './http.js';

export const RETRY_AFTER_SECONDS = 60;

export async function limit(limiter: RateLimit, key: string): Promise<void> {
  const { success } = await limiter.limit({ key });
  if (!success) {
    throw new ApiError(429, 'rate_limited', 'too many requests', { 'Retry-After': String(RETRY_AFTER_SECONDS) });
  }
}

/** The client's address as Cloudflare (or Miniflare locally) reports it. */
export function clientIp(c: Context): string {
  return c.req.header('CF-Connecting-IP') ?? 'unknown';
}

/** Middleware: the named limiter, keyed by client IP, before the body is read. */
export function limitByIp(
  name: 'CREATE_LIMITER' | 'ENROLL_LIMITER' | 'PAIR_JOIN_LIMITER' | 'API_LIMITER',
): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    await limit(c.env[name], `ip:${clientIp(c)}`);
    await next();
  };
}

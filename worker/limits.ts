/**
 * Rate limits through the Workers `ratelimits` bindings (wrangler.jsonc):
 * CREATE_LIMITER and ENROLL_LIMITER keyed by client network (an IPv4
 * address, an IPv6 /64: clientNetwork), AUTH_LIMITER by
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

/**
 * What a per-address limit counts by: an IPv4 address as it is, an IPv6
 * address by its /64 (one subscriber's network: a host picks any address
 * in it), spelled as 4 hextets without leading zeros. Anything else is
 * counted as given.
 */
export function clientNetwork(ip: string): string {
  if (!ip.includes(':')) return ip;
  const bare = ip.replace(/^\[|\]$/g, '').split('%')[0]!.toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(bare);
  if (mapped) return mapped[1]!;
  const [head, tail] = bare.includes('::') ? bare.split('::', 2) as [string, string] : [bare, null];
  const left = head === '' ? [] : head.split(':');
  const right = tail === null || tail === '' ? [] : tail.split(':');
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two hextets.
  const last = right.length > 0 ? right : left;
  if (last.length > 0 && last[last.length - 1]!.includes('.')) last.splice(last.length - 1, 1, '0', '0');
  const fill = tail === null ? 0 : 8 - left.length - right.length;
  if (fill < 0 || left.length + right.length + fill !== 8) return bare;
  const all = [...left, ...Array<string>(fill).fill('0'), ...right];
  if (!all.every((h) => /^[0-9a-f]{1,4}$/.test(h))) return bare;
  return `${all.slice(0, 4).map((h) => h.replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

/** Middleware: the named limiter, keyed by client IP, before the body is read. */
export function limitByIp(
  name: 'CREATE_LIMITER' | 'ENROLL_LIMITER' | 'PAIR_JOIN_LIMITER' | 'API_LIMITER',
): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    await limit(c.env[name], `ip:${clientNetwork(clientIp(c))}`);
    await next();
  };
}

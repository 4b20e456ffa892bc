/**
 * The scheduled handler (wrangler.jsonc `triggers.crons`; locally the
 * launcher's own timer). Each step is idempotent and safe to run twice or
 * concurrently: it deletes only what is already past its expiry.
 * Later versions add retention here (DESIGN §8).
 */
import { deleteExpiredChallenges } from './db.js';
import type { Env } from './env.js';

export interface CronReport {
  expiredChallenges: number;
}

export async function runCron(env: Env, now: number): Promise<CronReport> {
  const expiredChallenges = await deleteExpiredChallenges(env.DB, now);
  return { expiredChallenges };
}

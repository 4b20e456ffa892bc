import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

// One config for every kind of test (test/unit, test/vectors, test/worker, test/e2e).
// Worker and e2e tests start their own relay in workerd (Miniflare) on a free
// 127.0.0.1 port per file; slow property/fault runs are gated by SLOW=1.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // Vitest's default (one fewer than the CPUs) is one worker on CI's 2 cores: the files then run
    // one after another (711 s). Two workers there: 447 s, every timing-bounded test still green.
    maxWorkers: Math.max(2, availableParallelism() - 1),
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});

import { defineConfig } from 'vitest/config';

// One config for every kind of test (test/unit, test/vectors, test/worker, test/e2e).
// Worker and e2e tests start their own relay in workerd (Miniflare) on a free
// 127.0.0.1 port per file; slow property/fault runs are gated by SLOW=1.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});

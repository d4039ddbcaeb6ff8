import { defineConfig } from 'vitest/config';
import SlowFilesFirst from './test/slow-files-first.js';

// Integration tests start real processes (Temporal dev server, Python worker): generous timeouts, and at
// most two test files at once on a 2-core machine.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
    sequence: { sequencer: SlowFilesFirst },
  },
});

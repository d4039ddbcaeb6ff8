/** Helpers for tests on the Temporal dev server. */
import { DefaultLogger, Runtime } from '@temporalio/worker';

/** The SDK's own logger, at WARN, so test output shows problems rather than worker state changes. */
export const quietLogger = new DefaultLogger('WARN');

/** Installs the quiet logger for the workers of this test file (once per process). */
export function quietTemporalLogs(): void {
  try {
    Runtime.install({ logger: quietLogger });
  } catch {
    // Already installed in this process.
  }
}

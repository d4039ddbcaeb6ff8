/**
 * Routes the Temporal SDK's own logs (worker state changes, task failures) into pino, at WARN unless
 * VLMFLOW_TEMPORAL_LOG_LEVEL says otherwise, so the CLI's output stays readable and logs stay JSON.
 * Must run before the first Worker or NativeConnection is created.
 */
import { DefaultLogger, Runtime, type LogEntry, type LogLevel } from '@temporalio/worker';
import { logger } from '../logger.js';

const pinoLevel: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

// Workflows and activities run on separate task queues by design, so each worker's note that it has
// no activities (or no workflows, or no Nexus services) to poll is expected, not a warning.
const expected = /^No (activities|workflows|Nexus services) registered/;

let installed = false;

export function installTemporalRuntime(
  level: LogLevel = (process.env.VLMFLOW_TEMPORAL_LOG_LEVEL as LogLevel) ?? 'WARN',
) {
  if (installed) return;
  installed = true;
  const sdkLogger = logger.child({ component: 'temporal-sdk' });
  Runtime.install({
    logger: new DefaultLogger(level, (entry: LogEntry) => {
      if (!expected.test(entry.message)) sdkLogger[pinoLevel[entry.level]](entry.meta ?? {}, entry.message);
    }),
  });
}

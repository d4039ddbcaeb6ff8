/**
 * The process's Temporal runtime, installed once before the first Worker or NativeConnection is created:
 * - routes the Temporal SDK's own logs (worker state changes, task failures) into pino, at WARN unless
 *   VLMFLOW_TEMPORAL_LOG_LEVEL says otherwise, so the CLI's output stays readable and logs stay JSON;
 * - serves the SDK's metrics (workflow and activity task latencies, slots, polls, outcomes) on a Prometheus
 *   endpoint when given an address (VLMFLOW_TEMPORAL_METRICS_ADDRESS or `vlmflow worker --metrics-address`):
 *   seconds for durations and `_total` on counters, as Prometheus names things (docker/grafana reads them so).
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

export interface TemporalRuntimeOptions {
  level?: LogLevel;
  /** ip:port for the Prometheus endpoint (validated by `metricsAddressSchema` in env.ts); unset serves none. */
  metricsAddress?: string;
}

let installed = false;

export function installTemporalRuntime(opts: TemporalRuntimeOptions = {}) {
  if (installed) return;
  const level = opts.level ?? (process.env.VLMFLOW_TEMPORAL_LOG_LEVEL as LogLevel | undefined) ?? 'WARN';
  const sdkLogger = logger.child({ component: 'temporal-sdk' });
  const metrics = opts.metricsAddress
    ? {
        prometheus: {
          bindAddress: opts.metricsAddress,
          countersTotalSuffix: true,
          unitSuffix: true,
          useSecondsForDurations: true,
        },
      }
    : undefined;
  try {
    Runtime.install({
      logger: new DefaultLogger(level, (entry: LogEntry) => {
        if (!expected.test(entry.message)) sdkLogger[pinoLevel[entry.level]](entry.meta ?? {}, entry.message);
      }),
      ...(metrics ? { telemetryOptions: { metrics } } : {}),
    });
  } catch (err) {
    if (!metrics) throw err;
    // The SDK says "Failed to start prometheus metrics exporter: Address already in use (os error 98)".
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(
      `cannot serve Temporal metrics on ${opts.metricsAddress} (${why}): choose a free port with ` +
        'VLMFLOW_TEMPORAL_METRICS_ADDRESS or --metrics-address, or unset it to serve none',
    );
  }
  installed = true;
  if (metrics) logger.info({ metricsAddress: opts.metricsAddress }, 'serving Temporal metrics at /metrics');
}

/**
 * Activity schedule-to-start latency on the project's Temporal dev server: 200 no-op activities run one
 * after another on a separate activity task queue (as the GPU queue is), measured inside each activity as
 * now - currentAttemptScheduledTimestampMs (one machine, one clock).
 *
 *   npx tsx bench/schedule-to-start.ts [--count 200]
 */
import { Client, Connection } from '@temporalio/client';
import { activityInfo } from '@temporalio/activity';
import { NativeConnection, Worker } from '@temporalio/worker';
import { fileURLToPath } from 'node:url';
import { startDevServer } from '../src/stack/temporal-dev-server.js';
import { installTemporalRuntime } from '../src/stack/temporal-runtime.js';
import { freePort, tempDir } from '../test/helpers.js';
import { percentile, writeResult } from './machine.js';
import { noopActivities } from './noop-workflow.js';

const count = Number(process.argv[process.argv.indexOf('--count') + 1] || 200) || 200;

installTemporalRuntime();
const server = await startDevServer({
  stateDir: tempDir('bench-temporal'),
  port: await freePort(),
  uiPort: await freePort(),
});
try {
  const native = await NativeConnection.connect({ address: server.address });
  const workflows = await Worker.create({
    connection: native,
    taskQueue: 'bench',
    workflowsPath: fileURLToPath(new URL('./noop-workflow.ts', import.meta.url)),
  });
  const activities = await Worker.create({
    connection: native,
    taskQueue: 'bench-activities',
    activities: { noop: () => Promise.resolve(Date.now() - activityInfo().currentAttemptScheduledTimestampMs) },
  });
  const client = new Client({ connection: await Connection.connect({ address: server.address }) });
  const started = Date.now();
  const latencies = await workflows.runUntil(
    activities.runUntil(
      client.workflow.execute(noopActivities, {
        taskQueue: 'bench',
        workflowId: `bench-${started}`,
        args: [count, 'bench-activities'],
      }),
    ),
  );
  const wallMs = Date.now() - started;
  const sorted = [...latencies].sort((a, b) => a - b);
  const summary = {
    activities: count,
    p50Ms: percentile(sorted, 50),
    p95Ms: percentile(sorted, 95),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted.at(-1),
    meanMs: latencies.reduce((a, b) => a + b, 0) / count,
    perActivityRoundTripMs: wallMs / count,
  };
  console.table({ 'schedule-to-start': summary });
  console.log(`written ${writeResult('schedule-to-start', { summary, latenciesMs: latencies })}`);
  await native.close();
} finally {
  await server.stop();
}

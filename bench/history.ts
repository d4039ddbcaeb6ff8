/**
 * History events per training hour (issue 14; goal ≤ 10): one pipeline through the whole stack (dev server, Python
 * worker, TS workers) whose SFT stage runs --seconds with the workflow's history check every --tick seconds, so an
 * hour is compressed into ticks. Reads the run's history: the SFT stage's events, split into its fixed cost (the
 * activity's own events) and the cost per tick (a timer and a workflow task), then projects an hour of training at
 * the default tick (1 hour) and at this run's tick. Before issue 14 a stage signalled its progress every 15 s:
 * 4 events each, 960 an hour.
 *
 *   npx tsx bench/history.ts [--seconds 60] [--tick 5]
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { loadavg } from 'node:os';
import path from 'node:path';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';
import { stateDir } from '../src/paths.js';
import { createPythonWorkerClient } from '../src/python-worker-client.js';
import { startPythonWorker } from '../src/stack/python-worker-process.js';
import { startDevServer } from '../src/stack/temporal-dev-server.js';
import { installTemporalRuntime } from '../src/stack/temporal-runtime.js';
import { createTemporalWorkers } from '../src/temporal-worker.js';
import { pipelineConfig } from '../test/durability-helpers.js';
import { freePort, tempDir } from '../test/helpers.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { writeResult } from './machine.js';

const arg = (name: string, fallback: number) => {
  const at = process.argv.indexOf(name);
  return at > 0 ? Number(process.argv[at + 1]) : fallback;
};
const seconds = arg('--seconds', 60);
const tick = arg('--tick', 5);
const STEP_SECONDS = 1;

installTemporalRuntime();
const artifacts = tempDir('bench-history');
const dataDir = path.join(artifacts, 'data', 'shapes');
const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');
await Promise.all([
  buildTinyModel(tinyModel),
  generateSyntheticTask({ task: 'shape_colour', rows: 40, seed: 0, out: dataDir }),
]);
const server = await startDevServer({
  stateDir: tempDir('bench-history-temporal'),
  port: await freePort(),
  uiPort: await freePort(),
});
const python = await startPythonWorker({
  port: await freePort(),
  artifactRoot: artifacts,
  dataRoots: [path.dirname(tinyModel)],
  env: { HF_HUB_OFFLINE: '1', VLMFLOW_FAULT_STEP_SECONDS: String(STEP_SECONDS), VLMFLOW_TORCH_THREADS: '1' },
});
const client = createPythonWorkerClient(python.address);
const connection = await NativeConnection.connect({ address: server.address });
const temporal = await Connection.connect({ address: server.address });
try {
  const { workflows, activities } = await createTemporalWorkers({
    connection,
    client,
    workflowTaskQueue: 'bench',
    gpuTaskQueue: 'bench-gpu',
  });
  const handle = await workflows.runUntil(
    activities.runUntil(async () => {
      const h = await new Client({ connection: temporal }).workflow.start(fineTunePipeline, {
        taskQueue: 'bench',
        workflowId: `bench-history-${Date.now()}`,
        args: [
          { ...pipelineConfig(path.join(dataDir, 'data.jsonl'), Math.ceil(seconds / STEP_SECONDS)), reuse: false },
          { gpuTaskQueue: 'bench-gpu', historyCheckIntervalMs: tick * 1000 },
        ],
      });
      await h.result();
      return h;
    }),
  );
  const events = (await handle.fetchHistory()).events ?? [];
  const time = (e: (typeof events)[number]) => Number(e.eventTime?.seconds ?? 0) + (e.eventTime?.nanos ?? 0) / 1e9;
  const start = events.findIndex((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'train');
  const startId = String(events[start]?.eventId);
  const end = events.findIndex((e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === startId);
  const stage = events.slice(start, end + 1);
  const ticks = stage.filter((e) => e.timerFiredEventAttributes).length;
  const sftSeconds = time(events[end]!) - time(events[start]!);
  const perTick = ticks ? (stage.length - 4) / ticks : 0; // 4: scheduled, timer started, started, completed
  const result = {
    sftSeconds: Number(sftSeconds.toFixed(1)),
    tickSeconds: tick,
    sftStageEvents: stage.length,
    ticks,
    eventsPerTick: Number(perTick.toFixed(2)),
    fixedEventsPerStage: stage.length - Math.round(perTick * ticks),
    projected: {
      eventsPerTrainingHourDefaultTick: Number(perTick.toFixed(2)), // one tick an hour
      eventsForA30DayStage: Math.round(4 + perTick * 24 * 30),
      eventsPerTrainingHourBeforeIssue14: 960,
    },
    goal: { eventsPerTrainingHour: 10, met: perTick <= 10 },
    loadAverage: loadavg()[0],
  };
  console.table(result.projected);
  console.log(JSON.stringify(result, null, 2));
  writeResult('history', result);
} finally {
  await temporal.close();
  await connection.close();
  client.close();
  await Promise.all([python.stop(), server.stop()]);
}

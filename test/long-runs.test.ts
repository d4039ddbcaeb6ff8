/**
 * Runs that last weeks, compressed (issue 14), with real processes: the Temporal dev server, Python workers and the
 * tiny model, TS workers in this process.
 *
 * 1. A stage that reports 20,000+ progress updates (VLMFLOW_FAULT_PROGRESS_REPEAT) adds a handful of history
 *    events; on a server that suggests continue-as-new after a few dozen events, a run continues as new in the
 *    middle of SFT, attaches to the same job, and ends with the losses and metrics of the uninterrupted run.
 * 2. Two pipelines on one GPU slot: the second waits (phase "waiting for a GPU") far longer than the old retry
 *    budget, shown with shrunk retry intervals, and completes.
 * 3. A job that hangs (VLMFLOW_FAULT_HANG_AT_STEP) is declared stuck within the configured time; the stage's retry
 *    resumes it from its checkpoint and the run completes.
 * 4. A deploy mid-run: a run started on workers of code version A, whose workers stop mid-SFT, completes on workers
 *    of version B (a changed workflow and a changed schema default) as A would have; a run started afterwards
 *    takes B's.
 *
 * Every number is printed on a `durability:` line; docs/durability.md tabulates them.
 *
 *   npx vitest run test/long-runs.test.ts
 */
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { NativeConnection, Worker } from '@temporalio/worker';
import { randomUUID } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WAITING_FOR_GPU } from '../activities/job-runner.js';
import { createActivities } from '../activities/index.js';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';
import type { PipelineConfigInput } from '../src/config/pipeline-config.js';
import { projectRoot, stateDir } from '../src/paths.js';
import { createPythonWorkerClient, type PythonWorkerClient } from '../src/python-worker-client.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import type { DevServer } from '../src/stack/temporal-dev-server.js';
import { installTemporalRuntime } from '../src/stack/temporal-runtime.js';
import { createTemporalWorkers, heartbeatThrottle } from '../src/temporal-worker.js';
import { fineTunePipeline, type PipelineResult } from '../workflows/fine-tune-pipeline.js';
import {
  jobIdOf,
  jobLogs,
  lossesByStep,
  pipelineConfig,
  processesStarted,
  sleep,
  startDevServerOnFreePorts,
  tinyModel,
  untilProgress,
} from './durability-helpers.js';
import { freePort, tempDir } from './helpers.js';
import { recordHistory } from './history-fixtures.js';
import { workflowBundlePath } from './workflow-bundle.js';

/** Events a finished stage may have written between its activity's scheduling and its completion. */
const STAGE_EVENT_BUDGET = 12;

interface Pair {
  python: PythonWorker;
  client: PythonWorkerClient;
}

describe('long runs, compressed', () => {
  let artifacts: string;
  let dataFile: string;
  let dev: DevServer;
  let shortHistoryDev: DevServer;
  const pairs: Pair[] = [];
  const connections: { close(): Promise<void> }[] = [];

  async function startPair(env: Record<string, string>): Promise<Pair> {
    const python = await startPythonWorker({
      port: await freePort(),
      artifactRoot: artifacts,
      dataRoots: [path.dirname(tinyModel)],
      env: { HF_HUB_OFFLINE: '1', ...env },
    });
    const pair = { python, client: createPythonWorkerClient(python.address) };
    pairs.push(pair);
    return pair;
  }

  async function clientOf(server: DevServer): Promise<Client> {
    const connection = await Connection.connect({ address: server.address });
    connections.push(connection);
    return new Client({ connection });
  }

  /** The project's TS workers (as `vlmflow worker` builds them) on unique task queues, until `stop` is called. */
  async function startWorkers(server: DevServer, pair: Pair, queues = uniqueQueues()) {
    const connection = await NativeConnection.connect({ address: server.address });
    connections.push(connection);
    const { workflows, activities } = await createTemporalWorkers({
      connection,
      client: pair.client,
      workflowTaskQueue: queues.workflows,
      gpuTaskQueue: queues.gpu,
      workflowBundlePath: workflowBundlePath(),
    });
    const running = Promise.all([workflows.run(), activities.run()]);
    return {
      queues,
      stop: async () => {
        workflows.shutdown();
        activities.shutdown();
        await running;
      },
    };
  }

  beforeAll(async () => {
    installTemporalRuntime();
    artifacts = tempDir('long-artifacts');
    const dataDir = path.join(artifacts, 'data', 'shapes');
    dataFile = path.join(dataDir, 'data.jsonl');
    await Promise.all([
      buildTinyModel(tinyModel),
      generateSyntheticTask({ task: 'shape_colour', rows: 40, seed: 0, out: dataDir }),
    ]);
    // One after the other: each picks ports of its own besides these, which a second server starting at the
    // same time could take.
    dev = await startDevServerOnFreePorts({ stateDir: tempDir('long-temporal') });
    // Suggests continue-as-new after 40 events, so a run of minutes shows what a run of weeks does.
    shortHistoryDev = await startDevServerOnFreePorts({
      stateDir: tempDir('long-temporal-short'),
      dynamicConfig: { 'limit.historyCount.suggestContinueAsNew': 40 },
    });
  }, 600_000);

  afterAll(async () => {
    for (const c of connections) await c.close().catch(() => undefined);
    for (const p of pairs) p.client.close();
    await Promise.all([...pairs.map((p) => p.python.stop()), dev?.stop(), shortHistoryDev?.stop()]);
  });

  it('keeps history bounded by work: 20,000 progress updates, and continue-as-new mid-SFT losing nothing', async () => {
    // Every progress report written 1,000 times: 2 reports per step (step end, log) over 12 steps, and more.
    const pair = await startPair({ VLMFLOW_FAULT_PROGRESS_REPEAT: '1000', VLMFLOW_FAULT_STEP_SECONDS: '0.5' });
    const config: PipelineConfigInput = { ...pipelineConfig(dataFile, 12), reuse: false };

    // The flood, on a server with the usual limits.
    const workers = await startWorkers(dev, pair);
    const client = await clientOf(dev);
    let flood: PipelineResult;
    let floodHandle: WorkflowHandle<typeof fineTunePipeline>;
    try {
      floodHandle = await client.workflow.start(fineTunePipeline, {
        taskQueue: workers.queues.workflows,
        workflowId: `flood-${randomUUID()}`,
        args: [config, { gpuTaskQueue: workers.queues.gpu }],
      });
      flood = await floodHandle.result();
    } finally {
      await workers.stop();
    }
    expect(flood.status).toBe('completed');
    const sftJob = jobIdOf(flood, 'sft');
    const updates = jobLogs(artifacts, sftJob)
      .flat()
      .filter((e) => 'progress' in e).length;
    expect(updates).toBeGreaterThanOrEqual(20_000);
    const events = (await floodHandle.fetchHistory()).events ?? [];
    const sftEvents = stageEvents(events, 'train');
    expect(sftEvents).toBeLessThanOrEqual(STAGE_EVENT_BUDGET);
    const before = signalCostOfTheOldCode();

    // The same run on a server that suggests continue-as-new after 40 events; the stage checks every second.
    const shortWorkers = await startWorkers(shortHistoryDev, pair);
    const shortClient = await clientOf(shortHistoryDev);
    let continued: PipelineResult;
    let runs: number;
    const workflowId = `continued-${randomUUID()}`;
    try {
      const handle = await shortClient.workflow.start(fineTunePipeline, {
        taskQueue: shortWorkers.queues.workflows,
        workflowId,
        args: [config, { gpuTaskQueue: shortWorkers.queues.gpu, historyCheckIntervalMs: 1_000 }],
      });
      continued = await shortClient.workflow.getHandle<typeof fineTunePipeline>(workflowId).result();
      runs = await chainLength(shortClient, workflowId, handle.firstExecutionRunId);
      // The first run (it ends continued as new, mid-SFT) and the last (it picks up the carried state).
      await recordHistory(
        shortClient.workflow.getHandle(workflowId, handle.firstExecutionRunId),
        'continued-as-new-v2',
      );
      await recordHistory(handle, 'continued-as-new-last-run-v2');
    } finally {
      await shortWorkers.stop();
    }
    expect(continued.status).toBe('completed');
    expect(runs).toBeGreaterThan(1);
    const continuedSft = continued.stages.find((s) => s.name === 'sft')!;
    expect(continuedSft.jobId).toContain('/sft'); // one run's job: every run of the chain attached to it
    expect(processesStarted(artifacts, continuedSft.jobId!)).toBe(1); // attached across continue-as-new
    // Nothing lost: the same loss at every step and the same evaluation as the uninterrupted flood run.
    const a = lossesByStep(flood.stages.find((s) => s.name === 'sft')!.artifacts!.training_log!);
    const b = lossesByStep(continuedSft.artifacts!.training_log!);
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [step, loss] of a)
      expect(Math.abs(b.get(step)! - loss), `step ${step}`).toBeLessThanOrEqual(1e-3 * loss);
    for (const metric of ['base/vqa_accuracy', 'sft/vqa_accuracy']) {
      expect(continued.metrics[metric], metric).toBe(flood.metrics[metric]);
    }
    console.log(
      `durability: ${JSON.stringify({
        test: 'history-bounded',
        progressUpdates: updates,
        historyEvents: events.length,
        sftStageEvents: sftEvents,
        eventsPer1000UpdatesAfter: Number(((1000 * sftEvents) / updates).toFixed(3)),
        oldCodeRecordedSignalEvents: before.events,
        oldCodeRecordedSeconds: before.seconds,
        continuedAsNewRuns: runs,
        sftProcessesAcrossRuns: 1,
      })}`,
    );
  }, 600_000);

  it('queues a run behind a busy GPU for longer than the old retry budget, then completes it', async () => {
    const pair = await startPair({ VLMFLOW_FAULT_STEP_SECONDS: '0.5' });
    // Two TS workers on one Python worker with one job slot (a rolling deploy's overlap, or a scaled TS service):
    // the second takes the queued run's stage and hears WorkerBusy until the GPU is free.
    const first = await startWorkers(dev, pair);
    const second = await startWorkers(dev, pair, first.queues);
    const client = await clientOf(dev);
    // 5 s and 1 minute in production: with 50-100 ms the old budget (20 attempts) is gone in about 2 seconds.
    const options = { gpuTaskQueue: first.queues.gpu, retryIntervalsMs: { initial: 50, maximum: 100 } };
    try {
      const long = await client.workflow.start(fineTunePipeline, {
        taskQueue: first.queues.workflows,
        workflowId: `gpu-holder-${randomUUID()}`,
        args: [{ ...pipelineConfig(dataFile, 60), reuse: false }, options],
      });
      await untilProgress(long, 'long', (p) => p.stage === 'sft' && p.step >= 1);
      const queued = await client.workflow.start(fineTunePipeline, {
        taskQueue: first.queues.workflows,
        workflowId: `queued-${randomUUID()}`,
        args: [{ ...pipelineConfig(dataFile, 4), reuse: false }, options],
      });
      const waitStarted = Date.now();
      const waiting = await untilProgress(queued, 'queued', (p) => p.phase === WAITING_FOR_GPU);
      let attempts = 0;
      while ((await long.describe()).status.name === 'RUNNING') {
        const pending = (await queued.describe()).raw.pendingActivities ?? [];
        attempts = Math.max(attempts, ...pending.map((a) => a.attempt ?? 0));
        await sleep(500);
      }
      const [longResult, queuedResult] = await Promise.all([long.result(), queued.result()]);
      expect(longResult.status).toBe('completed');
      expect(queuedResult.status).toBe('completed');
      expect(waiting.stage).toBe('prepare');
      expect(attempts).toBeGreaterThan(20); // past the old budget, and still waiting, not failed
      console.log(
        `durability: ${JSON.stringify({
          test: 'queue',
          waitedSeconds: (Date.now() - waitStarted) / 1000,
          attemptsWhileWaiting: attempts,
          oldBudgetAttempts: 20,
          both: 'completed',
        })}`,
      );
    } finally {
      await Promise.all([first.stop(), second.stop()]);
    }
  }, 600_000);

  it('declares a hung job stuck within the configured time, and the run completes from its checkpoint', async () => {
    const pair = await startPair({
      VLMFLOW_FAULT_HANG_AT_STEP: '5',
      VLMFLOW_JOB_STUCK_SECONDS: '20',
      VLMFLOW_JOB_CANCEL_GRACE_SECONDS: '2',
    });
    const workers = await startWorkers(dev, pair);
    const client = await clientOf(dev);
    try {
      const started = Date.now();
      const result = await client.workflow.execute(fineTunePipeline, {
        taskQueue: workers.queues.workflows,
        workflowId: `hang-${randomUUID()}`,
        args: [{ ...pipelineConfig(dataFile, 9), reuse: false }, { gpuTaskQueue: workers.queues.gpu }],
      });
      expect(result.status).toBe('completed');
      const sft = result.stages.find((s) => s.name === 'sft')!;
      const logs = jobLogs(artifacts, sft.jobId!);
      expect(logs).toHaveLength(2); // the hung process, then the one that resumed
      const stuck = logs[0]!.at(-1)!.failed as { reason: string; message: string; lastCheckpointUri: string };
      expect(stuck.reason).toBe('FAILURE_REASON_STUCK');
      expect(sft.resumedFromStep).toBe(3); // the newest checkpoint before the hang at step 5 (saves every 3)
      const hungAt = Date.parse(String([...logs[0]!].reverse().find((e) => 'progress' in e)!.time));
      const declaredAt = Date.parse(String(logs[0]!.at(-1)!.time));
      const secondsToStuck = (declaredAt - hungAt) / 1000;
      expect(secondsToStuck).toBeGreaterThanOrEqual(20);
      expect(secondsToStuck).toBeLessThan(20 + 2 + 10);
      console.log(
        `durability: ${JSON.stringify({
          test: 'stuck',
          limitSeconds: 20,
          secondsToStuck,
          resumedFrom: sft.resumedFromStep,
          totalSeconds: (Date.now() - started) / 1000,
        })}`,
      );
    } finally {
      await workers.stop();
    }
  }, 600_000);

  it('deploys new code mid-run: the run in flight finishes as version A would, a new run takes version B', async () => {
    const pair = await startPair({ VLMFLOW_FAULT_STEP_SECONDS: '0.5' });
    const client = await clientOf(dev);
    const versionB = buildVersionB();
    const config: PipelineConfigInput = { ...pipelineConfig(dataFile, 12), reuse: false };
    delete config.evaluate!.bootstrapSamples; // A's default is 200, B's 7

    // Version A: the repository's code.
    const a = await startWorkers(dev, pair);
    const queues = a.queues;
    const inFlight = await client.workflow.start(fineTunePipeline, {
      taskQueue: queues.workflows,
      workflowId: `deploy-${randomUUID()}`,
      args: [config, { gpuTaskQueue: queues.gpu }],
    });
    await untilProgress(inFlight, 'inFlight', (p) => p.stage === 'sft' && p.lastCheckpoint !== '');
    await a.stop(); // the deploy: A's workers go away mid-SFT; the job runs on

    // Version B: its workflows (changed behind a patch) and its schema (a changed default).
    const connection = await NativeConnection.connect({ address: dev.address });
    connections.push(connection);
    const { parseInputActivities: parseB } = (await import(
      versionB.parseInput
    )) as typeof import('../activities/parse-input.js');
    const workflowsB = await Worker.create({
      connection,
      taskQueue: queues.workflows,
      workflowsPath: versionB.workflows,
      activities: parseB,
    });
    const activitiesB = await Worker.create({
      connection,
      taskQueue: queues.gpu,
      activities: createActivities(pair.client),
      maxConcurrentActivityTaskExecutions: 1,
      ...heartbeatThrottle,
    });
    const running = Promise.all([workflowsB.run(), activitiesB.run()]);
    try {
      const oldRun = (await inFlight.result()) as PipelineResult & { deployedVersion?: string };
      const after = await client.workflow.start(fineTunePipeline, {
        taskQueue: queues.workflows,
        workflowId: `deploy-after-${randomUUID()}`,
        args: [
          { ...config, sft: { ...config.sft, training: { ...config.sft!.training, maxSteps: 2 } } },
          { gpuTaskQueue: queues.gpu },
        ],
      });
      const newRun = (await after.result()) as PipelineResult & { deployedVersion?: string };

      expect(oldRun.status).toBe('completed');
      expect(oldRun.deployedVersion).toBeUndefined(); // B's workflow change did not reach the run in flight
      expect(await bootstrapSamplesOf(inFlight)).toBe(200); // nor did B's default: A parsed it, history kept it
      expect(processesStarted(artifacts, jobIdOf(oldRun, 'sft'))).toBe(1); // the job ran on through the deploy
      expect(newRun.deployedVersion).toBe('B');
      expect(await bootstrapSamplesOf(after)).toBe(7);
      console.log(
        `durability: ${JSON.stringify({ test: 'deploy-mid-run', inFlight: 'A', after: 'B', sftProcesses: 1 })}`,
      );
    } finally {
      workflowsB.shutdown();
      activitiesB.shutdown();
      await running;
    }
  }, 600_000);

  /** The evaluate activity's bootstrapSamples, as the run scheduled it (from its history). */
  async function bootstrapSamplesOf(handle: WorkflowHandle): Promise<number | undefined> {
    for (const e of (await handle.fetchHistory()).events ?? []) {
      const scheduled = e.activityTaskScheduledEventAttributes;
      if (scheduled?.activityType?.name !== 'evaluate') continue;
      const input = defaultPayloadConverter.fromPayload<{ evaluate: { bootstrapSamples: number } }>(
        scheduled.input!.payloads![0]!,
      );
      return input.evaluate.bootstrapSamples;
    }
    return undefined;
  }
});

/** Fresh task queues, so tests never take each other's tasks. */
function uniqueQueues() {
  const id = randomUUID();
  return { workflows: `long-${id}`, gpu: `long-${id}-gpu` };
}

/** History events between a stage activity's scheduling and its completion (the stage's cost). */
function stageEvents(
  events: {
    eventId?: unknown;
    activityTaskScheduledEventAttributes?: { activityType?: { name?: string | null } | null } | null;
    activityTaskCompletedEventAttributes?: { scheduledEventId?: unknown } | null;
  }[],
  activityType: string,
): number {
  const scheduled = events.findIndex(
    (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activityType,
  );
  const scheduledId = String(events[scheduled]?.eventId);
  const completed = events.findIndex(
    (e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === scheduledId,
  );
  return completed - scheduled + 1;
}

/**
 * What the code before issue 14 paid, from a history it recorded: `stageProgress` signals (each one event plus a
 * workflow task's three), and over how long. In steady state it signalled every 15 s: 960 events an hour.
 */
function signalCostOfTheOldCode(): { events: number; seconds: number } {
  const file = path.join(import.meta.dirname, 'fixtures', 'histories', 'pipeline-e2e.json');
  const history = JSON.parse(readFileSync(file, 'utf8')) as {
    events: {
      eventTime?: { seconds: string; nanos?: number };
      workflowExecutionSignaledEventAttributes?: { signalName?: string };
    }[];
  };
  const signals = history.events.filter(
    (e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'stageProgress',
  );
  const times = signals.map((e) => Number(e.eventTime!.seconds) * 1000 + (e.eventTime!.nanos ?? 0) / 1e6);
  return { events: 4 * signals.length, seconds: (Math.max(...times) - Math.min(...times)) / 1000 };
}

/** Runs in a continue-as-new chain: follows each run's successor from the first. */
async function chainLength(client: Client, workflowId: string, firstRunId: string): Promise<number> {
  let runs = 1;
  let runId: string | undefined = firstRunId;
  for (;;) {
    const description = await client.workflow.getHandle(workflowId, runId).describe();
    if (description.status.name !== 'CONTINUED_AS_NEW') return runs;
    const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const last = history.events?.at(-1);
    runId = last?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
    if (!runId) return runs;
    runs++;
  }
}

/**
 * Version B of the code: the workflows and config schemas copied beside the repository (so they resolve its
 * node_modules), with a workflow change behind a patch (the result says `deployedVersion: 'B'`) and a changed
 * schema default (evaluate.bootstrapSamples 200 → 7).
 */
function buildVersionB(): { workflows: string; parseInput: string } {
  const root = path.join(stateDir, 'versions', `B-${randomUUID()}`);
  rmSync(root, { recursive: true, force: true });
  for (const dir of ['workflows', 'src/config', 'activities']) {
    mkdirSync(path.join(root, dir), { recursive: true });
    cpSync(path.join(projectRoot, dir), path.join(root, dir), { recursive: true });
  }
  const pipeline = path.join(root, 'workflows', 'fine-tune-pipeline.ts');
  const code = readFileSync(pipeline, 'utf8');
  const patchedCode = code
    .replace(
      'const recorded = patched(Patches.recordedInput);',
      "const recorded = patched(Patches.recordedInput);\n  const deployB = patched('test-deploy-b');",
    )
    .replace('      gate,\n    };', "      gate,\n      ...(deployB ? { deployedVersion: 'B' } : {}),\n    };");
  if (patchedCode === code || !patchedCode.includes("deployedVersion: 'B'"))
    throw new Error('version B: the workflow edit did not apply');
  writeFileSync(pipeline, patchedCode);
  const schema = path.join(root, 'src', 'config', 'pipeline-config.ts');
  const schemaCode = readFileSync(schema, 'utf8');
  const changed = schemaCode.replace(
    'bootstrapSamples: positiveInt.default(200)',
    'bootstrapSamples: positiveInt.default(7)',
  );
  if (changed === schemaCode) throw new Error('version B: the schema edit did not apply');
  writeFileSync(schema, changed);
  return {
    workflows: path.join(root, 'workflows', 'index.ts'),
    parseInput: path.join(root, 'activities', 'parse-input.ts'),
  };
}

/**
 * Orchestration overhead: the same SFT job (tiny model, fixed steps) run
 *   (a) through the whole stack: `node bin/vlmflow.js run <config>` → Temporal → train activity → gRPC → the
 *       Python worker's job child process, and
 *   (b) by calling the worker's training module directly (bench/train_direct.py, same Train request),
 * alternately, --runs times each. Reports the ratio of the SFT stage's wall times (a: the train activity from
 * scheduled to completed in the workflow history; b: train_sft() from call to return) and where the difference
 * goes: schedule-to-start, activity start → job child spawned (gRPC, validation), spawn → job accepted (interpreter
 * and imports), and the end of training → activity completed.
 *
 *   npx tsx bench/orchestration.ts [--runs 2] [--steps 400] [--threads 1] [--forkserver 1|0]
 *
 * The pipeline also runs prepare and evaluate (it cannot run SFT alone; export is off); only SFT is compared.
 */
import { Client, Connection } from '@temporalio/client';
import type { google } from '@temporalio/proto';
import { NativeConnection, type Worker } from '@temporalio/worker';
import { execa } from 'execa';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { projectRoot, stateDir, workerPython } from '../src/paths.js';
import type { PipelineConfigInput } from '../src/config/pipeline-config.js';
import { startPythonWorker } from '../src/stack/python-worker-process.js';
import { startDevServer } from '../src/stack/temporal-dev-server.js';
import { installTemporalRuntime } from '../src/stack/temporal-runtime.js';
import { createPythonWorkerClient, waitForReady } from '../src/python-worker-client.js';
import { createTemporalWorkers } from '../src/temporal-worker.js';
import { freePort, tempDir } from '../test/helpers.js';
import { writeResult } from './machine.js';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';

const arg = (name: string, fallback: number) => {
  const at = process.argv.indexOf(name);
  return at > 0 ? Number(process.argv[at + 1]) : fallback;
};
const runs = arg('--runs', 2);
const steps = arg('--steps', 400); // about a minute at one thread on the 2-core CPU
// One torch thread in the job child and in the direct run alike: on a small shared CPU more threads only spin, and
// make both timings swing with the load.
const threads = String(arg('--threads', 1));
// The worker's fork server (VLMFLOW_JOB_FORKSERVER, python-worker/src/vlmflow_worker/jobs/forkserver.py): 1 on (its
// default), 0 off (each job a fresh interpreter).
const forkServer = String(arg('--forkserver', 1));

const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');
const artifacts = tempDir('bench-orchestration');
const dataDir = path.join(artifacts, 'data', 'shape_colour');

function config(): PipelineConfigInput {
  return {
    name: 'bench-orchestration',
    model: { id: tinyModel, dtype: 'float32' },
    dataset: {
      sources: [{ uri: path.join(dataDir, 'data.jsonl'), layout: 'messages' }],
      evalFraction: 0.2,
      maxLength: 256,
    },
    sft: {
      lora: { r: 16, alpha: 32, dropout: 0 },
      training: {
        learningRate: 3e-3,
        maxSteps: steps,
        microBatchSize: 8,
        gradientAccumulationSteps: 1,
        warmupRatio: 0,
        lrScheduler: 'constant',
        gradientCheckpointing: false,
        saveSteps: steps,
        evalSteps: steps,
        loggingSteps: 5,
      },
    },
    evaluate: {
      metrics: ['vqa_accuracy'],
      batchSize: 16,
      maxSamples: 16,
      bootstrapSamples: 10,
      generation: { maxNewTokens: 4 },
    },
    export: { enabled: false },
    reuse: false,
  };
}

const ms = (t: google.protobuf.ITimestamp | null | undefined) =>
  Number(t?.seconds ?? 0) * 1000 + Math.round((t?.nanos ?? 0) / 1e6);
const protoMs = (iso: string) => Date.parse(iso);

/** Timings of the SFT stage from the workflow history and the job's folder. */
async function stackTimings(client: Client, workflowId: string) {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const events = history.events ?? [];
  const scheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'train');
  if (!scheduled) throw new Error(`${workflowId}: no train activity in the history`);
  const id = Number(scheduled.eventId);
  const started = events.find((e) => Number(e.activityTaskStartedEventAttributes?.scheduledEventId ?? -1) === id);
  const completed = events.find((e) => Number(e.activityTaskCompletedEventAttributes?.scheduledEventId ?? -1) === id);
  if (!started || !completed) throw new Error(`${workflowId}: the train activity did not complete`);

  const jobs = path.join(artifacts, 'jobs');
  const folder = readdirSync(jobs)
    .map((name) => path.join(jobs, name))
    .find(
      (f) =>
        f.includes(encodeURIComponent(workflowId)) &&
        readFileSync(path.join(f, 'job.json'), 'utf8').includes('TrainRequest'),
    );
  if (!folder) throw new Error(`${workflowId}: no train job folder`);
  const jobEvents = readFileSync(path.join(folder, 'events.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map(
      (l) => JSON.parse(l) as { time: string; accepted?: unknown; progress?: { phase?: string }; completed?: unknown },
    );
  const accepted = jobEvents.find((e) => e.accepted);
  const training = jobEvents.find((e) => e.progress?.phase === 'training');
  const done = jobEvents.find((e) => e.completed);
  if (!accepted || !done) throw new Error(`${folder}: no accepted/completed event`);
  const t = {
    scheduled: ms(scheduled.eventTime),
    started: ms(started.eventTime),
    completed: ms(completed.eventTime),
    spawned: statSync(path.join(folder, 'job.json')).mtimeMs,
    accepted: protoMs(accepted.time),
    training: training ? protoMs(training.time) : NaN,
    done: protoMs(done.time),
  };
  return {
    folder,
    stageS: (t.completed - t.scheduled) / 1000,
    scheduleToStartS: (t.started - t.scheduled) / 1000,
    activityToSpawnS: (t.spawned - t.started) / 1000,
    spawnToAcceptedS: (t.accepted - t.spawned) / 1000,
    acceptedToTrainingBeginS: (t.training - t.accepted) / 1000,
    jobS: (t.done - t.accepted) / 1000,
    jobEndToActivityCompletedS: (t.completed - t.done) / 1000,
  };
}

async function main() {
  // 0. The tiny model and a synthetic task it can learn.
  await buildTinyModel(tinyModel);
  await generateSyntheticTask({ task: 'shape_colour', rows: 160, seed: 0, out: dataDir });
  const configFile = path.join(artifacts, 'bench-orchestration.json');
  writeFileSync(configFile, JSON.stringify(config(), null, 2));

  // 1. The stack: a private dev server, the Python worker, the TS workers (as `vlmflow dev` starts them).
  installTemporalRuntime();
  const server = await startDevServer({
    stateDir: tempDir('bench-temporal'),
    port: await freePort(),
    uiPort: await freePort(),
  });
  const python = await startPythonWorker({
    artifactRoot: artifacts,
    dataRoots: [path.dirname(tinyModel)],
    env: { HF_HUB_OFFLINE: '1', VLMFLOW_TORCH_THREADS: threads, VLMFLOW_JOB_FORKSERVER: forkServer },
  });
  const workerClient = createPythonWorkerClient(python.address);
  const native = await NativeConnection.connect({ address: server.address });
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection });
  const rows: Record<string, number | string>[] = [];
  let running: Promise<void>[] = [];
  let workers: Worker[] = [];
  try {
    await waitForReady(workerClient);
    const created = await createTemporalWorkers({ connection: native, client: workerClient });
    workers = [created.workflows, created.activities];
    running = workers.map((w) => w.run());

    for (let i = 1; i <= runs; i++) {
      // (a) the whole stack, started by the CLI as a person would.
      const workflowId = `bench-orchestration-${Date.now()}-${i}`;
      const cliStarted = Date.now();
      const cli = await execa(
        'node',
        [path.join(projectRoot, 'bin', 'vlmflow.js'), 'run', configFile, '--id', workflowId],
        {
          env: { TEMPORAL_ADDRESS: server.address },
          reject: false,
          all: true,
        },
      );
      if (cli.exitCode !== 0) throw new Error(`vlmflow run exited with ${cli.exitCode}:\n${cli.all?.slice(-3000)}`);
      const stack = await stackTimings(client, workflowId);
      // (b) the same Train request, straight into the training module.
      const direct = await execa(
        workerPython,
        [path.join(projectRoot, 'bench', 'train_direct.py'), stack.folder, artifacts, `bench-direct/${i}`],
        {
          env: { HF_HUB_OFFLINE: '1', VLMFLOW_TORCH_THREADS: threads },
        },
      );
      const b = JSON.parse(direct.stdout.trim().split('\n').at(-1)!) as { import_s: number; train_s: number };
      const row = {
        run: i,
        cliWallS: (Date.now() - cliStarted) / 1000,
        ...Object.fromEntries(Object.entries(stack).filter(([k]) => k !== 'folder')),
        directImportS: b.import_s,
        directTrainS: b.train_s,
        ratio: stack.stageS / b.train_s,
        fixedCostS: stack.stageS - b.train_s,
        // The same split inside the stack run (immune to load swings between a and b): the job from accepted to
        // completed is what a direct call does; the rest is orchestration.
        inRunRatio: stack.stageS / stack.jobS,
        inRunOverheadS: stack.stageS - stack.jobS,
        loadAverage1m: loadavg()[0]!,
      };
      rows.push(
        Object.fromEntries(
          Object.entries(row).map(([k, v]) => [k, typeof v === 'number' ? Math.round(v * 1000) / 1000 : v]),
        ),
      );
      console.log(
        `run ${i}: stack ${stack.stageS.toFixed(2)} s, direct ${b.train_s.toFixed(2)} s, ratio ${row.ratio.toFixed(3)}`,
      );
    }
  } finally {
    for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    await Promise.allSettled(running);
    await native.close();
    await connection.close();
    workerClient.close();
    await python.stop();
    await server.stop();
  }
  console.table(rows);
  const range = (key: string) => {
    const values = rows.map((r) => r[key] as number);
    return [Math.min(...values), Math.max(...values)];
  };
  const summary = {
    jobForkServer: forkServer,
    steps,
    runs,
    ratio: range('ratio'),
    fixedCostS: range('fixedCostS'),
    inRunRatio: range('inRunRatio'),
    inRunOverheadS: range('inRunOverheadS'),
    scheduleToStartS: range('scheduleToStartS'),
    jobStartS: range('spawnToAcceptedS'),
    goal: 'ratio <= 1.03 and <= 1 s fixed cost per stage',
  };
  console.table({ summary });
  console.log(`written ${writeResult(`orchestration-forkserver-${forkServer}`, { summary, rows })}`);
}

await main();

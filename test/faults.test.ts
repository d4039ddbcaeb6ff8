/**
 * Durability with real processes, broken for real (issue 7): the Temporal dev server (persistent SQLite, from
 * src/stack/temporal-dev-server.ts), the Python worker (src/stack/python-worker-process.ts) and the TS workers as child processes
 * (`node bin/vlmflow.js worker`, the deployment's entry), so each can be SIGKILLed. The tiny model trains on
 * synthetic shapes; checkpoints every 3 steps.
 *
 * 1. One run goes through three faults during SFT: the dev server stopped and started again, the Python worker
 *    SIGKILLed and restarted, the TS worker SIGKILLed and replaced. It completes; the job resumed from its newest
 *    checkpoint (at most one checkpoint interval redone) after the Python worker died, and was attached (not
 *    started again) after the TS worker died.
 * 2. `vlmflow cancel` mid-SFT: the run ends cancelled, the checkpoint is on disk, the job's process is gone;
 *    `vlmflow retry` resumes from that checkpoint and completes.
 * 3. Two Python workers on one artifact store, each with its TS worker on the same task queues: two runs train
 *    one on each; SIGKILLing one pair moves its run to the other, which resumes from the shared checkpoint.
 *    Then a training run and a batch inference run at once: one pair trains while the other answers shards;
 *    SIGKILLing the pair answering shards moves the rest of the batch to the trainer's pair, and the shards it
 *    finished (files in the shared store) are not answered again.
 * 4. A Python worker whose steps run out of memory above micro-batch 2 (VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH): SFT
 *    fails typed OUT_OF_MEMORY and the pipeline's retry with half the micro-batch completes.
 *
 * Every number these tests see is printed on a `durability:` line; docs/durability.md tabulates them.
 *
 *   npx vitest run test/faults.test.ts
 */
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { CancelledFailure, defaultPayloadConverter } from '@temporalio/common';
import { execa } from 'execa';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../src/paths.js';
import { readPipelineProgress } from '../src/run-progress.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { startDevServer, type DevServer } from '../src/stack/temporal-dev-server.js';
import type { PipelineProgress } from '../workflows/definitions.js';
import { shardFile, type ShardResult } from '../activities/inference.js';
import { batchInference } from '../workflows/batch-inference.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { freePort, tempDir } from './helpers.js';
import { runChaos } from './chaos.js';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';
import {
  childPid,
  isAlive,
  jobIdOf,
  jobLogs,
  lastStep,
  parentOf,
  pipelineConfig,
  processesStarted,
  SAVE_STEPS,
  sleep,
  startTsWorker,
  tinyModel,
  tsWorkerEnv,
  type TsWorker,
  untilProgress,
} from './durability-helpers.js';
import { workflowBundlePath } from './workflow-bundle.js';

/** A TS worker's Temporal identity: the SDK's default, `<pid>@<hostname>`, which history events record. */
function workerIdentity(worker: TsWorker): string {
  return `${worker.process.pid}@${hostname()}`;
}

interface ShardCompletion {
  shard: number;
  /** Identity of the TS worker that completed it. */
  by: string;
  attempt: number;
  /** Why the attempt before the last one failed (type and message), when there was one. */
  lastFailure?: string;
}

/** Every inferShard activity completed so far in a batchInference run, from its history. */
async function completedShards(handle: WorkflowHandle): Promise<ShardCompletion[]> {
  const events = (await handle.fetchHistory()).events ?? [];
  const attempts = new Map<number, { attempt: number; lastFailure?: string }>(); // started event id -> attempt
  for (const e of events) {
    const started = e.activityTaskStartedEventAttributes;
    if (!started) continue;
    const failure = started.lastFailure;
    attempts.set(Number(e.eventId), {
      attempt: started.attempt ?? 1,
      ...(failure ? { lastFailure: `${failure.applicationFailureInfo?.type ?? ''} ${failure.message ?? ''}` } : {}),
    });
  }
  const shards: ShardCompletion[] = [];
  for (const e of events) {
    const done = e.activityTaskCompletedEventAttributes;
    const payload = done?.result?.payloads?.[0];
    if (!done || !payload) continue;
    const result = defaultPayloadConverter.fromPayload<Partial<ShardResult>>(payload);
    if (typeof result.shard !== 'number' || typeof result.skipped !== 'boolean') continue; // not a shard
    shards.push({
      shard: result.shard,
      by: done.identity ?? '',
      attempt: 1,
      ...attempts.get(Number(done.startedEventId)),
    });
  }
  return shards;
}

describe('durability with real processes', () => {
  let artifacts: string;
  let dataFile: string;
  let temporalState: string;
  let temporalPort: number;
  let uiPort: number;
  let pythonPort: number;
  let dev: DevServer;
  let python: PythonWorker;
  let tsWorker: TsWorker;
  let connection: Connection;
  let client: Client;
  const taskQueue = `faults-${randomUUID()}`;
  const gpuTaskQueue = `${taskQueue}-gpu`;
  let workerEnv: Record<string, string>;

  const startPython = (port: number) =>
    startPythonWorker({
      port,
      artifactRoot: artifacts,
      dataRoots: [path.dirname(tinyModel)],
      // One second per training step, so each fault lands mid-SFT however fast this machine trains the tiny model.
      // One second per Generate call too, so an inference batch is still running when a worker pair is killed.
      env: { HF_HUB_OFFLINE: '1', VLMFLOW_FAULT_STEP_SECONDS: '1', VLMFLOW_FAULT_GENERATE_SECONDS: '1' },
    });

  beforeAll(async () => {
    artifacts = tempDir('faults-artifacts');
    temporalState = tempDir('faults-temporal');
    const dataDir = path.join(artifacts, 'data', 'shapes');
    dataFile = path.join(dataDir, 'data.jsonl');
    [temporalPort, uiPort, pythonPort] = await Promise.all([freePort(), freePort(), freePort()]);
    await Promise.all([
      buildTinyModel(tinyModel),
      generateSyntheticTask({ task: 'shape_colour', rows: 40, seed: 0, out: dataDir }),
    ]);
    [dev, python] = await Promise.all([
      startDevServer({ stateDir: temporalState, port: temporalPort, uiPort }),
      startPython(pythonPort),
    ]);
    // The run's one workflow bundle, as a deployed worker loads its image's (test/global-setup.ts).
    workerEnv = {
      ...tsWorkerEnv(dev.address, python.address, taskQueue),
      VLMFLOW_WORKFLOW_BUNDLE: workflowBundlePath(),
    };
    tsWorker = await startTsWorker(workerEnv);
    connection = await Connection.connect({ address: dev.address });
    client = new Client({ connection });
  }, 600_000);

  afterAll(async () => {
    await connection?.close();
    await tsWorker?.stop();
    await Promise.all([python?.stop(), dev?.stop()]);
  });

  const until = (what: string, workflowId: string, ok: (p: PipelineProgress) => boolean) =>
    untilProgress(client.workflow.getHandle(workflowId), what, ok);

  const stepOfCheckpoint = (uri: string) => Number(/checkpoint-(\d+)$/.exec(uri)?.[1] ?? 0);

  it('completes through a dev server restart, a SIGKILLed Python worker and a SIGKILLed TS worker mid-SFT', async () => {
    await runChaos({
      label: 'chaos',
      client,
      taskQueue,
      gpuTaskQueue,
      artifacts,
      dataFile,
      restartServer: async () => {
        await dev.stop();
        await sleep(2_000);
        dev = await startDevServer({ stateDir: temporalState, port: temporalPort, uiPort });
      },
      killPython: async () => {
        python.process.kill('SIGKILL');
        await python.process;
      },
      startPython: async () => {
        python = await startPython(pythonPort);
      },
      killTs: () => tsWorker.kill(),
      startTs: async () => {
        tsWorker = await startTsWorker(workerEnv);
      },
    });
  }, 600_000);

  it('vlmflow cancel mid-SFT leaves a checkpoint and no process; vlmflow retry resumes from it', async () => {
    const workflowId = `cancel-${randomUUID()}`;
    const cli = (...args: string[]) =>
      execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), ...args], { env: workerEnv, reject: false });
    const handle = await client.workflow.start(fineTunePipeline, {
      taskQueue,
      workflowId,
      args: [pipelineConfig(dataFile, 24), { gpuTaskQueue }],
    });
    const running = await until('a checkpoint', workflowId, (p) => p.stage === 'sft' && p.lastCheckpoint !== '');
    const sftJob = jobIdOf(running, 'sft');
    const jobPid = childPid(artifacts, sftJob);

    const cancelled = await cli('cancel', workflowId);
    expect(cancelled.exitCode, cancelled.stderr).toBe(0);
    expect(cancelled.stdout).toContain('saves a checkpoint and stops');
    const err = await handle.result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
    expect((await handle.describe()).status.name).toBe('CANCELLED');

    const checkpoints = path.dirname(running.lastCheckpoint);
    const saved = readdirSync(checkpoints)
      .filter((f) => /^checkpoint-\d+$/.test(f))
      .map((f) => Number(f.split('-')[1]));
    expect(saved.length).toBeGreaterThan(0);
    expect(readdirSync(checkpoints).filter((f) => f.startsWith('.tmp'))).toEqual([]);
    const savedStep = Math.max(...saved);
    expect(isAlive(jobPid)).toBe(false);
    const log = jobLogs(artifacts, sftJob).at(-1)!;
    expect(log.at(-1)).toMatchObject({ failed: { reason: 'FAILURE_REASON_CANCELLED' } });
    const stoppedAt = lastStep(log);

    const retryId = `${workflowId}-retry`;
    const retried = await cli('retry', workflowId, '--id', retryId, '--detach');
    expect(retried.exitCode, retried.stderr).toBe(0);
    expect(retried.stdout).toContain('reusing prepare');
    const result = await client.workflow.getHandle<typeof fineTunePipeline>(retryId).result();
    expect(result.status).toBe('completed');
    const sft = result.stages.find((s) => s.name === 'sft')!;
    expect(sft.resumedFromStep).toBe(savedStep);
    expect(processesStarted(artifacts, jobIdOf(result, 'prepare'))).toBe(1);
    console.log(
      `durability: ${JSON.stringify({ test: 'cancel-retry', savedStep, stoppedAt, redone: stoppedAt - savedStep, resumedFrom: sft.resumedFromStep })}`,
    );
  }, 300_000);
  it('cancels a run whose TS worker is dead: the cleanup activity stops the job, its checkpoint kept', async () => {
    const workflowId = `cancel-dead-${randomUUID()}`;
    const handle = await client.workflow.start(fineTunePipeline, {
      taskQueue,
      workflowId,
      args: [pipelineConfig(dataFile, 30, 5), { gpuTaskQueue, heartbeatTimeoutMs: 10_000 }],
    });
    const running = await until('a checkpoint', workflowId, (p) => p.stage === 'sft' && p.lastCheckpoint !== '');
    const sftJob = jobIdOf(running, 'sft');
    const jobPid = childPid(artifacts, sftJob);

    // The TS worker running the stage dies; the run is cancelled while no worker is there to hear it.
    await tsWorker.kill();
    await handle.cancel();
    expect(isAlive(jobPid)).toBe(true); // nothing has reached the job yet
    const restartedAt = Date.now();
    tsWorker = await startTsWorker(workerEnv);

    const err = await handle.result().catch((e: unknown) => e);
    const secondsToCancelled = (Date.now() - restartedAt) / 1000;
    expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
    const described = await handle.describe();
    expect(described.status.name).toBe('CANCELLED');
    // The job stopped (the cleanup waited for it), with a checkpoint on disk.
    expect(isAlive(jobPid)).toBe(false);
    const log = jobLogs(artifacts, sftJob).at(-1)!;
    expect(log.at(-1)).toMatchObject({ failed: { reason: 'FAILURE_REASON_CANCELLED' } });
    const checkpoint = (log.at(-1)!.failed as { lastCheckpointUri: string }).lastCheckpointUri;
    expect(checkpoint).toMatch(/checkpoint-\d+$/);
    expect(existsSync(checkpoint)).toBe(true);
    const stages = (await readPipelineProgress(handle)).stages;
    expect(stages.find((s) => s.name === 'sft')?.status).toBe('cancelled');
    console.log(
      `durability: ${JSON.stringify({ test: 'cancel-ts-dead', secondsToCancelled, checkpoint: path.basename(checkpoint), jobStopped: true })}`,
    );
  }, 300_000);
  it('spreads two runs over two worker pairs; killing one pair moves its run to the other through the shared store', async () => {
    // Pair B: another Python worker on the same artifact store, and its own TS worker on the same task queues.
    const pythonB = await startPython(await freePort());
    const tsB = await startTsWorker({ ...workerEnv, VLMFLOW_WORKER_ADDRESS: pythonB.address });
    try {
      // Different seeds, so stage reuse does not fold the two runs into one job.
      const ids = [`spread-1-${randomUUID()}`, `spread-2-${randomUUID()}`];
      const handles = await Promise.all(
        ids.map((workflowId, i) =>
          client.workflow.start(fineTunePipeline, {
            taskQueue,
            workflowId,
            args: [pipelineConfig(dataFile, 15, i + 1), { gpuTaskQueue, heartbeatTimeoutMs: 10_000 }],
          }),
        ),
      );
      const running = await Promise.all(
        ids.map((id) => until('sft with a checkpoint', id, (p) => p.stage === 'sft' && p.lastCheckpoint !== '')),
      );
      const sftJobs = running.map((p) => jobIdOf(p, 'sft'));
      // Which Python worker runs each training: the parent of the job's process.
      const owners = sftJobs.map((job) => parentOf(childPid(artifacts, job)));
      expect(new Set(owners)).toEqual(new Set([python.pid, pythonB.pid]));

      // Pair B dies (both processes SIGKILLed); its run moves to pair A and resumes from the shared checkpoint.
      const victim = owners.indexOf(pythonB.pid);
      const before = await until('victim checkpoint', ids[victim]!, (p) => p.lastCheckpoint !== '');
      pythonB.process.kill('SIGKILL');
      await Promise.all([tsB.kill(), pythonB.process]);
      const killedAt = Date.now();
      const results = await Promise.all(handles.map((h) => h.result()));
      expect(results.map((r) => r.status)).toEqual(['completed', 'completed']);
      const moved = results[victim]!.stages.find((s) => s.name === 'sft')!;
      expect(moved.resumedFromStep).toBeGreaterThanOrEqual(stepOfCheckpoint(before.lastCheckpoint));
      const logs = jobLogs(artifacts, sftJobs[victim]!);
      expect(logs).toHaveLength(2); // one process on pair B, one on pair A
      const redone = lastStep(logs[0]!) - (moved.resumedFromStep ?? 0);
      expect(redone).toBeLessThanOrEqual(SAVE_STEPS);
      console.log(
        `durability: ${JSON.stringify({
          test: 'scale-out',
          owners: owners.map((o) => (o === python.pid ? 'A' : 'B')),
          reachedBeforeKill: lastStep(logs[0]!),
          resumedFrom: moved.resumedFromStep,
          redone,
          secondsToFinishBoth: (Date.now() - killedAt) / 1000,
        })}`,
      );
    } finally {
      await tsB.kill();
      await pythonB.stop();
    }
  }, 420_000);
  it('spreads inference and training over two worker pairs; killing the pair answering shards moves them to the other', async () => {
    // Pair B beside pair A, as in the test above. Each pair has one activity slot (one job at a time), so while the
    // training holds one pair's slot the other pair answers the inference shards.
    const pythonB = await startPython(await freePort());
    const tsB = await startTsWorker({ ...workerEnv, VLMFLOW_WORKER_ADDRESS: pythonB.address });
    const pairs = [
      { name: 'A', python, ts: tsWorker },
      { name: 'B', python: pythonB, ts: tsB },
    ];
    const pairOfIdentity = (identity: string) => pairs.find((p) => identity === workerIdentity(p.ts))?.name ?? identity;
    let victim: (typeof pairs)[number] | undefined;
    try {
      const trainId = `mixed-train-${randomUUID()}`;
      const inferId = `mixed-infer-${randomUUID()}`;
      const train = await client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId: trainId,
        args: [pipelineConfig(dataFile, 15, 3), { gpuTaskQueue, heartbeatTimeoutMs: 10_000 }],
      });
      // 40 images (the synthetic task's), one per shard: each takes a second longer on the worker (the Generate
      // hook), so the batch is still running when a pair is killed.
      const images = path.join(path.dirname(dataFile), 'images');
      const imageNames = readdirSync(images).sort();
      const imageCount = imageNames.length;
      const infer = await client.workflow.start(batchInference, {
        taskQueue,
        workflowId: inferId,
        args: [
          {
            model: { id: tinyModel },
            task: 'caption',
            input: images,
            outputUri: `runs/${inferId}`,
            shardSize: 1,
            parallelism: 2,
            generation: { maxNewTokens: 4 },
          },
          { gpuTaskQueue, heartbeatTimeoutMs: 10_000 },
        ],
      });

      const running = await until(
        'sft with a checkpoint',
        trainId,
        (p) => p.stage === 'sft' && p.lastCheckpoint !== '',
      );
      const sftJob = jobIdOf(running, 'sft');
      const trainer = pairs.find((p) => p.python.pid === parentOf(childPid(artifacts, sftJob)))!;
      const answerer = pairs.find((p) => p !== trainer)!;
      // The work is spread: the pair that is not training has answered shards.
      const deadline = Date.now() + 120_000;
      while ((await completedShards(infer)).filter((s) => pairOfIdentity(s.by) === answerer.name).length < 2) {
        if (Date.now() > deadline) throw new Error(`pair ${answerer.name} answered no shards`);
        await sleep(300);
      }

      // The pair answering shards dies (Python and TS worker SIGKILLed). Its in-flight shard is retried on the other
      // pair; the shards it finished are files in the shared store and are not answered again.
      victim = answerer;
      victim.python.process.kill('SIGKILL');
      await Promise.all([victim.ts.kill(), victim.python.process]);
      const killedAt = Date.now();
      const doneBeforeKill = await completedShards(infer);

      const [trained, inferred] = await Promise.all([train.result(), infer.result()]);
      expect(trained.status).toBe('completed');
      expect(processesStarted(artifacts, sftJob)).toBe(1); // the training pair was untouched: one process
      expect(inferred).toMatchObject({ items: imageCount, shards: imageCount });

      const shards = await completedShards(infer);
      // Every shard completed exactly once; those completed after the kill by the surviving pair, at least one.
      expect(shards.map((s) => s.shard).sort((a, b) => a - b)).toEqual([...Array(imageCount).keys()]);
      const afterKill = shards.filter((s) => !doneBeforeKill.some((d) => d.shard === s.shard));
      expect(afterKill.length).toBeGreaterThan(0);
      expect(new Set(afterKill.map((s) => pairOfIdentity(s.by)))).toEqual(new Set([trainer.name]));
      // Work redone: at most the one shard the victim was answering (a second attempt); nothing it finished.
      const redone = shards.filter((s) => s.attempt > 1);
      expect(redone.length, JSON.stringify(redone)).toBeLessThanOrEqual(1);
      const finishedByVictim = doneBeforeKill.filter((s) => pairOfIdentity(s.by) === victim!.name);
      for (const s of finishedByVictim) {
        expect(statSync(shardFile(path.dirname(inferred.resultsUri), s.shard)).mtimeMs).toBeLessThanOrEqual(killedAt); // written once, before the kill
      }
      // Nothing lost: one answer per image, in order.
      const rows = readFileSync(inferred.resultsUri, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { id: string; answer: unknown });
      expect(rows.map((r) => r.id)).toEqual(imageNames);
      expect(rows.every((r) => typeof r.answer === 'string')).toBe(true);
      console.log(
        `durability: ${JSON.stringify({
          test: 'scale-out-mixed',
          trainer: trainer.name,
          killed: victim.name,
          shards: imageCount,
          doneBeforeKill: doneBeforeKill.length,
          byVictim: finishedByVictim.length,
          movedToSurvivor: afterKill.length,
          shardsRedone: redone.length,
          whyRedone: redone.map((s) => s.lastFailure),
          secondsToFinishBoth: (Date.now() - killedAt) / 1000,
        })}`,
      );
    } finally {
      // Pair A serves the tests below: started again if it was the one killed; pair B goes.
      if (victim?.name === 'A') {
        python = await startPython(pythonPort);
        tsWorker = await startTsWorker(workerEnv);
      }
      await tsB.kill();
      await pythonB.stop();
    }
  }, 420_000);
  it('an injected out-of-memory fails SFT typed, and the pipeline retry with half the micro-batch completes', async () => {
    // Pair C: a Python worker whose training steps run out of memory above micro-batch 2, on its own queues.
    const pythonC = await startPythonWorker({
      port: await freePort(),
      artifactRoot: artifacts,
      dataRoots: [path.dirname(tinyModel)],
      env: { HF_HUB_OFFLINE: '1', VLMFLOW_FAULT_OOM_ABOVE_MICRO_BATCH: '2' },
    });
    const queues = { workflows: `oom-${randomUUID()}`, gpu: `oom-${randomUUID()}-gpu` };
    const tsC = await startTsWorker({
      ...workerEnv,
      VLMFLOW_WORKER_ADDRESS: pythonC.address,
      VLMFLOW_WORKFLOW_TASK_QUEUE: queues.workflows,
      VLMFLOW_GPU_TASK_QUEUE: queues.gpu,
    });
    try {
      const config = pipelineConfig(dataFile, 6, 7); // micro-batch 4: over the limit
      const result = await client.workflow.execute(fineTunePipeline, {
        taskQueue: queues.workflows,
        workflowId: `oom-${randomUUID()}`,
        args: [config, { gpuTaskQueue: queues.gpu }],
      });
      expect(result.status).toBe('completed');
      const sft = result.stages.find((s) => s.name === 'sft')!;
      expect(sft.status).toBe('completed');
      expect(sft.message).toContain('out of memory; retrying with micro-batch 2');
      expect(sft.metrics?.global_step).toBe(6);
      const settings = JSON.parse(readFileSync(path.join(sft.artifacts!.adapter!, 'training_config.json'), 'utf8')) as {
        micro_batch_size: number;
        gradient_accumulation_steps: number;
      };
      expect([settings.micro_batch_size, settings.gradient_accumulation_steps]).toEqual([2, 2]);
      // The first attempt's job ended typed OUT_OF_MEMORY, saying what to change.
      const oomJobs = readdirSync(path.join(artifacts, 'jobs'))
        .flatMap((folder) => jobLogs(artifacts, decodeURIComponent(folder)).flat())
        .filter((e) => (e.failed as { reason?: string } | undefined)?.reason === 'FAILURE_REASON_OUT_OF_MEMORY');
      expect(oomJobs.length).toBeGreaterThanOrEqual(1);
      expect(JSON.stringify(oomJobs[0])).toContain('micro_batch_size 4');
      console.log(`durability: ${JSON.stringify({ test: 'oom-retry', message: sft.message, steps: 6 })}`);
    } finally {
      await tsC.kill();
      await pythonC.stop();
    }
  }, 300_000);
});

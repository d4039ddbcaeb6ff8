/**
 * The chaos run, shared by the dev-server suite (test/faults.test.ts) and the cluster suite (test/cluster.test.ts):
 * one SFT run through three faults (the Temporal service restarted, the Python worker SIGKILLed and restarted, the
 * TS worker SIGKILLed and replaced); it completes, at most one checkpoint interval redone, and then matches an
 * uninterrupted run of the same config and seed step for step.
 */
import type { Client } from '@temporalio/client';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { fineTunePipeline, type PipelineResult } from '../workflows/fine-tune-pipeline.js';
import type { PipelineProgress } from '../workflows/definitions.js';
import {
  childPid,
  isAlive,
  jobIdOf,
  jobLogs,
  lastStep,
  lossesByStep,
  pipelineConfig,
  processesStarted,
  SAVE_STEPS,
  sleep,
  untilProgress,
} from './durability-helpers.js';

export interface ChaosContext {
  label: string;
  client: Client;
  taskQueue: string;
  gpuTaskQueue: string;
  artifacts: string;
  dataFile: string;
  /** Stops the Temporal service (the dev server, or cluster services) and starts it again on the same data. */
  restartServer(): Promise<void>;
  killPython(): Promise<void>;
  startPython(): Promise<void>;
  killTs(): Promise<void>;
  startTs(): Promise<void>;
}

const stepOfCheckpoint = (uri: string) => Number(/checkpoint-(\d+)$/.exec(uri)?.[1] ?? 0);

export async function runChaos(ctx: ChaosContext): Promise<void> {
  const until = (what: string, workflowId: string, ok: (p: PipelineProgress) => boolean) =>
    untilProgress(ctx.client.workflow.getHandle(workflowId), what, ok);

  const workflowId = `chaos-${randomUUID()}`;
  const handle = await ctx.client.workflow.start(fineTunePipeline, {
    taskQueue: ctx.taskQueue,
    workflowId,
    args: [pipelineConfig(ctx.dataFile, 36), { gpuTaskQueue: ctx.gpuTaskQueue, heartbeatTimeoutMs: 10_000 }],
  });
  const started = Date.now();

  // 1. The Temporal service stops while SFT runs, and starts again on the same database.
  await until('sft running', workflowId, (p) => p.stage === 'sft' && p.step >= 1);
  await ctx.restartServer();
  const afterServer = await until('progress after the server restart', workflowId, (p) => p.stage === 'sft');

  // 2. The Python worker dies mid-SFT (its job process with it); it starts again on the same port. Early in the
  //    stage, so the resumed training still runs when the TS worker is killed below.
  const beforePython = await until(
    'a checkpoint',
    workflowId,
    (p) => p.stage === 'sft' && p.lastCheckpoint !== '' && p.step > afterServer.step,
  );
  // The stage's job id (a content key when stage reuse is on): the worker keeps its records under it.
  const sftJob = jobIdOf(beforePython, 'sft');
  const jobPid = childPid(ctx.artifacts, sftJob);
  await ctx.killPython();
  const pythonKilledAt = Date.now();
  await ctx.startPython();
  await sleep(500);
  expect(isAlive(jobPid)).toBe(false); // the training process died with its worker
  // Resumed means a second training process: progress alone can show a newer checkpoint that the killed process
  // wrote before it died (heartbeats lag the job), while the new process has not started yet.
  const resumed = await until(
    'training resumed',
    workflowId,
    (p) =>
      p.stage !== 'sft' ||
      (processesStarted(ctx.artifacts, sftJob) === 2 &&
        stepOfCheckpoint(p.lastCheckpoint) > stepOfCheckpoint(beforePython.lastCheckpoint)),
  );
  const pythonRecoverySeconds = (Date.now() - pythonKilledAt) / 1000;
  expect(resumed.stage).toBe('sft');

  // 3. The TS worker dies mid-stage (SIGKILL: no goodbye to Temporal); another one starts.
  const processesBeforeTsKill = processesStarted(ctx.artifacts, sftJob);
  await ctx.killTs();
  const tsKilledAt = Date.now();
  await ctx.startTs();
  // The new attempt relays the job's progress (or its recorded result, if it finished meanwhile).
  await until(
    'the new TS worker relays the same job',
    workflowId,
    (p) => p.stage !== 'sft' || p.step > resumed.step + 1,
  );
  const tsRecoverySeconds = (Date.now() - tsKilledAt) / 1000;
  expect(processesStarted(ctx.artifacts, sftJob)).toBe(processesBeforeTsKill); // attached, not started again

  const result: PipelineResult = await handle.result();
  const totalSeconds = (Date.now() - started) / 1000;
  expect(result.status).toBe('completed');
  const sft = result.stages.find((s) => s.name === 'sft')!;
  expect(sft.status).toBe('completed');

  // Resumed from the newest checkpoint on disk: at most one checkpoint interval redone.
  const logs = jobLogs(ctx.artifacts, sftJob);
  expect(logs).toHaveLength(2); // one process before the Python worker died, one after
  const reachedBeforeKill = lastStep(logs[0]!);
  const resumedFrom = sft.resumedFromStep ?? 0;
  expect(resumedFrom).toBeGreaterThanOrEqual(stepOfCheckpoint(beforePython.lastCheckpoint));
  const redone = reachedBeforeKill - resumedFrom;
  expect(redone).toBeLessThanOrEqual(SAVE_STEPS);
  expect(processesStarted(ctx.artifacts, sftJob)).toBe(2);
  expect(processesStarted(ctx.artifacts, jobIdOf(result, 'prepare'))).toBe(1);
  expect(existsSync(path.join(sft.artifacts!.adapter!, 'adapter_model.safetensors'))).toBe(true);

  // Nothing lost to the faults: an uninterrupted run of the same config and seed (reuse off, so it really
  // trains) has the same loss at every step and the same evaluation.
  const reference: PipelineResult = await ctx.client.workflow.execute(fineTunePipeline, {
    taskQueue: ctx.taskQueue,
    workflowId: `reference-${randomUUID()}`,
    args: [{ ...pipelineConfig(ctx.dataFile, 36), reuse: false }, { gpuTaskQueue: ctx.gpuTaskQueue }],
  });
  expect(reference.status).toBe('completed');
  const referenceSft = reference.stages.find((s) => s.name === 'sft')!;
  const chaosLosses = lossesByStep(sft.artifacts!.training_log!);
  const referenceLosses = lossesByStep(referenceSft.artifacts!.training_log!);
  expect([...chaosLosses.keys()]).toEqual([...referenceLosses.keys()]);
  for (const [step, loss] of referenceLosses) {
    expect(Math.abs(chaosLosses.get(step)! - loss), `loss at step ${step}`).toBeLessThanOrEqual(1e-3 * Math.abs(loss));
  }
  expect(result.metrics['sft/vqa_accuracy']).toBe(reference.metrics['sft/vqa_accuracy']);

  console.log(
    `durability: ${JSON.stringify({
      test: ctx.label,
      totalSeconds,
      pythonRecoverySeconds,
      tsRecoverySeconds,
      reachedBeforeKill,
      resumedFrom,
      redone,
      sftProcesses: processesStarted(ctx.artifacts, sftJob),
    })}`,
  );
}

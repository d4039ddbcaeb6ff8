/**
 * fineTunePipeline on the real Temporal dev server (the CLI built by setup), with scripted stage activities
 * on the GPU task queue so every workflow path is reached in seconds: bad UI-typed input, progress query,
 * pause / resume, cancel, the out-of-memory retry and the gate. The stage activities themselves are tested in
 * job-runner.test.ts, and the whole thing against the real Python worker in pipeline-e2e.test.ts.
 */
import { WorkflowFailedError } from '@temporalio/client';
import { parseInputActivities } from '../activities/parse-input.js';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import {
  newCalls,
  result,
  scriptedActivities,
  trainUntilCancelled,
  type Calls,
  type TrainScript,
} from './scripted-activities.js';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker, type WorkflowBundlePath } from '@temporalio/worker';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailureType } from '../src/config/failure-types.js';
import { temporalCli } from '../src/paths.js';
import type { PipelineConfigInput } from '../src/config/pipeline-config.js';
import { searchAttributes, VlmflowStage, VlmflowStatus } from '../src/config/search-attributes.js';
import { heartbeatThrottle } from '../src/temporal-worker.js';
import { recordHistory } from './history-fixtures.js';
import { progressQuery, pauseSignal, resumeSignal } from '../workflows/definitions.js';
import { readPipelineProgress } from '../src/run-progress.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { sharedWorkflowBundle } from './workflow-bundle.js';

const config: PipelineConfigInput = {
  name: 'test',
  model: { id: 'tiny' },
  dataset: { sources: [{ uri: 'synthetic/shape_colour' }] },
  sft: { training: { microBatchSize: 4, gradientAccumulationSteps: 2 } },
  gate: { metric: 'vqa_accuracy', margin: 0.1 },
};

describe('fineTunePipeline on the real dev server', () => {
  let env: TestWorkflowEnvironment;
  let workflowBundle: WorkflowBundlePath;

  beforeAll(async () => {
    workflowBundle = sharedWorkflowBundle();
    env = await TestWorkflowEnvironment.createLocal({
      server: { executable: { type: 'existing-path', path: temporalCli }, searchAttributes },
    });
  });

  afterAll(async () => {
    await env?.teardown();
  });

  /** Runs `body` while a workflow worker and a scripted GPU activity worker poll unique task queues. */
  async function withWorkers<T>(
    calls: Calls,
    train: TrainScript,
    body: (taskQueue: string, gpuTaskQueue: string) => Promise<T>,
  ): Promise<T> {
    const taskQueue = `test-${randomUUID()}`;
    const gpuTaskQueue = `${taskQueue}-gpu`;
    const workflows = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle,
      activities: parseInputActivities,
    });
    const activities = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: gpuTaskQueue,
      activities: scriptedActivities(calls, train),
      ...heartbeatThrottle,
    });
    return workflows.runUntil(activities.runUntil(body(taskQueue, gpuTaskQueue)));
  }

  async function waitFor<T>(fn: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = await fn();
      if (ok(value)) return value;
      if (Date.now() > deadline) throw new Error(`condition not met; last value: ${JSON.stringify(value)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  it('rejects UI-style raw JSON with wrong fields before any activity runs, listing every field', async () => {
    const calls = newCalls();
    const raw = JSON.parse(
      '{"model": {"id": 5, "quantisation": "nf4"}, "dataset": {"sources": []}, "sft": {"training": {"learningRate": -1, "lrScheduler": "exp"}}}',
    ) as unknown;
    const err = await withWorkers(
      calls,
      () => Promise.reject(new Error('unreachable')),
      async (taskQueue) => {
        const handle = await env.client.workflow.start('fineTunePipeline', {
          taskQueue,
          workflowId: `bad-${randomUUID()}`,
          args: [raw],
        });
        const failure: unknown = await handle.result().catch((e: unknown) => e);
        await recordHistory(handle, 'invalid-config-v3');
        const history = await handle.fetchHistory();
        expect(history.events?.some((e) => e.activityTaskScheduledEventAttributes)).toBe(false);
        // The list shows why it failed without opening the run (README: the VlmflowStatus column).
        expect((await handle.describe()).typedSearchAttributes.get(VlmflowStatus)).toBe('invalid-config');
        return failure;
      },
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect(cause).toMatchObject({ type: FailureType.InvalidConfig, nonRetryable: true });
    const message = (cause as ApplicationFailure).message;
    expect(message).toContain('5 fields');
    expect(message).toMatch(/model\.id: must be a string, not 5/);
    expect(message).toMatch(
      /model\.quantisation: unknown field; accepted fields here: id, revision, quantization, dtype, trustRemoteCode/,
    );
    expect(message).toMatch(/dataset\.sources: needs at least 1 item/);
    expect(message).toMatch(/sft\.training\.learningRate: must be more than 0/);
    expect(message).toMatch(/sft\.training\.lrScheduler: must be one of "linear", "cosine"/);
    expect(calls.prepare + calls.train.length).toBe(0);
  });

  it('answers the progress query, pauses (stage cancelled, checkpoint kept) and resumes from the checkpoint', async () => {
    const calls = newCalls();
    const train: TrainScript = (input, n) =>
      n === 1
        ? trainUntilCancelled(input, calls)
        : Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` }));
    const outcome = await withWorkers(calls, train, async (taskQueue, gpuTaskQueue) => {
      const handle = await env.client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId: `pause-${randomUUID()}`,
        args: [config, { gpuTaskQueue }],
      });
      const running = await waitFor(
        () => readPipelineProgress(handle),
        (p) => p.stage === 'sft' && p.step === 20,
      );
      expect(running).toMatchObject({
        status: 'running',
        stage: 'sft',
        step: 20,
        totalSteps: 100,
        loss: 1.5,
        etaSeconds: 80,
      });
      expect(running.lastCheckpoint).toMatch(/checkpoint-20$/);
      expect(running.details).toContain('stage sft');
      expect(running.phase).toBe('training');
      const described = await handle.describe();
      expect(described.typedSearchAttributes.get(VlmflowStage)).toBe('sft');
      expect(described.typedSearchAttributes.get(VlmflowStatus)).toBe('running');

      await handle.signal(pauseSignal, 'test');
      const paused = await waitFor(
        () => handle.query(progressQuery),
        (p) => p.status === 'paused',
      );
      expect(paused.stages.find((s) => s.name === 'sft')?.status).toBe('paused');
      // The cleanup stopped the job for this run; the attempt itself is told too.
      expect(calls.stopJob).toEqual([
        expect.objectContaining({ jobId: calls.train[0]!.jobId, watcher: calls.train[0]!.watcher, reason: 'paused' }),
      ]);
      await waitFor(
        () => Promise.resolve(calls.trainCancelled),
        (n) => n === 1,
      );
      expect(calls.train).toHaveLength(1);
      expect((await handle.describe()).typedSearchAttributes.get(VlmflowStatus)).toBe('paused');

      await handle.signal(resumeSignal);
      const done = await handle.result();
      await recordHistory(handle, 'pause-resume-v3');
      return done;
    });
    expect(calls.train).toHaveLength(2);
    expect(calls.train[1]!.jobId).toBe(calls.train[0]!.jobId);
    expect(calls.train[1]!.resumeFromCheckpoint).toMatch(/checkpoint-20$/);
    expect(calls.train[1]!.outputUri).toBe(calls.train[0]!.outputUri);
    expect(outcome).toMatchObject({ status: 'completed', gate: { passed: true, base: 0.3, tuned: 0.9 } });
    expect(outcome.reportUri).toMatch(/report\.html$/);
    expect(outcome.modelUri).toMatch(/model$/);
  });

  it('ends as cancelled when cancelled mid-stage, after the cleanup confirmed the job stopped', async () => {
    const calls = newCalls();
    await withWorkers(
      calls,
      (input) => trainUntilCancelled(input, calls),
      async (taskQueue, gpuTaskQueue) => {
        const handle = await env.client.workflow.start(fineTunePipeline, {
          taskQueue,
          workflowId: `cancel-${randomUUID()}`,
          args: [config, { gpuTaskQueue }],
        });
        await waitFor(
          () => readPipelineProgress(handle),
          (p) => p.stage === 'sft' && p.step === 20,
        );
        await handle.cancel();
        const err = await handle.result().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(WorkflowFailedError);
        expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
        expect(calls.stopJob).toEqual([
          expect.objectContaining({
            jobId: calls.train[0]!.jobId,
            watcher: calls.train[0]!.watcher,
            reason: 'cancelled',
          }),
        ]);
        const described = await handle.describe();
        expect(described.status.name).toBe('CANCELLED');
        expect(described.typedSearchAttributes.get(VlmflowStatus)).toBe('cancelled');
        expect((await handle.query(progressQuery)).stages.find((s) => s.name === 'sft')?.status).toBe('cancelled');
        await recordHistory(handle, 'cancel-v3');
      },
    );
    expect(calls.evaluate).toBe(0);
  });

  it('retries training once with half the micro-batch and twice the accumulation after running out of memory', async () => {
    const calls = newCalls();
    const train: TrainScript = (input, n) =>
      n === 1
        ? Promise.reject(
            ApplicationFailure.create({
              type: FailureType.OutOfMemory,
              message: 'CUDA out of memory',
              nonRetryable: true,
            }),
          )
        : Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` }));
    const outcome = await withWorkers(calls, train, (taskQueue, gpuTaskQueue) =>
      env.client.workflow.execute(fineTunePipeline, {
        taskQueue,
        workflowId: `oom-${randomUUID()}`,
        args: [config, { gpuTaskQueue }],
      }),
    );
    expect(calls.train.map((t) => [t.training.microBatchSize, t.training.gradientAccumulationSteps])).toEqual([
      [4, 2],
      [2, 4],
    ]);
    expect(outcome.status).toBe('completed');
  });

  it('fails at the gate without exporting when the tuned model does not beat the base by the margin', async () => {
    const calls = newCalls();
    const strict = { ...config, gate: { metric: 'vqa_accuracy', margin: 0.7 } } as const;
    const err = await withWorkers(
      calls,
      (input) => Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` })),
      async (taskQueue, gpuTaskQueue) => {
        const handle = await env.client.workflow.start(fineTunePipeline, {
          taskQueue,
          workflowId: `gate-${randomUUID()}`,
          args: [strict, { gpuTaskQueue }],
        });
        const failure = await handle.result().catch((e: unknown) => e);
        await recordHistory(handle, 'gate-failed-v3');
        return failure;
      },
    );
    expect((err as WorkflowFailedError).cause).toMatchObject({ type: FailureType.GateFailed });
    expect((err as WorkflowFailedError).cause?.message).toContain(
      'sft does not beat base on vqa_accuracy by the margin 0.7: 0.9000 vs 0.3000',
    );
    expect(calls.exported).toBe(0);
  });

  it('runs SFT then preference prep and DPO from the SFT adapter, evaluates base, SFT and DPO, and exports the DPO adapter', async () => {
    const calls = newCalls();
    const withDpo = {
      ...config,
      dpo: { dataset: { sources: [{ uri: 'synthetic/shape_colour_pref', layout: 'preference' }] }, beta: 0.2 },
      tracking: { mlflow: { trackingUri: 'http://mlflow:5000', registeredModelName: 'tiny-dpo' } },
    } as const;
    const outcome = await withWorkers(
      calls,
      (input) => Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` })),
      async (taskQueue, gpuTaskQueue) => {
        const handle = await env.client.workflow.start(fineTunePipeline, {
          taskQueue,
          workflowId: `dpo-${randomUUID()}`,
          args: [withDpo, { gpuTaskQueue }],
        });
        const done = await handle.result();
        await recordHistory(handle, 'sft-dpo-v3');
        return done;
      },
    );
    expect(outcome.stages.map((s) => s.name)).toEqual([
      'prepare',
      'sft',
      'prepare-preference',
      'dpo',
      'evaluate',
      'gate',
      'export',
    ]);
    const [sft, dpo] = calls.train;
    expect(sft).toMatchObject({ kind: 'sft', adapterUri: '' });
    expect(dpo).toMatchObject({
      kind: 'dpo',
      adapterUri: `${sft!.outputUri}/adapter`,
      dpo: { beta: 0.2, lossType: 'sigmoid' },
    });
    expect(dpo!.datasetUri).toContain(calls.prepareInputs[1]!.outputUri);
    expect(calls.evaluateInputs[0]!.variants.map((v) => [v.name, v.adapterUri])).toEqual([
      ['base', ''],
      ['sft', `${sft!.outputUri}/adapter`],
      ['dpo', `${dpo!.outputUri}/adapter`],
    ]);
    expect(outcome.gate).toMatchObject({ tuned: 0.95, passed: true });
    expect(calls.exportInputs[0]!.adapterUri).toBe(`${dpo!.outputUri}/adapter`);
    // Every stage that reports to MLflow is given the run's tracking section (the worker logs into one run).
    const tracking = { mlflow: { trackingUri: 'http://mlflow:5000', registeredModelName: 'tiny-dpo' } };
    for (const input of [sft, dpo, calls.evaluateInputs[0], calls.exportInputs[0]]) {
      expect(input).toMatchObject({ tracking });
    }
  });

  it('runs GRPO after SFT on its own prompts, evaluates base, SFT and GRPO side by side, and exports the GRPO adapter', async () => {
    const calls = newCalls();
    const withGrpo = {
      ...config,
      grpo: {
        dataset: { sources: [{ uri: 'synthetic/bar_value' }], maxLength: 512 },
        training: { microBatchSize: 4, gradientAccumulationSteps: 2 },
        numGenerations: 4,
        beta: 0.04,
        lossType: 'grpo',
        rewards: [
          { kind: 'numeric', relativeTolerance: 0.05 },
          { kind: 'format', tag: 'answer', weight: 0 },
        ],
      },
      evaluate: { on: 'grpo' },
    } as const;
    const outcome = await withWorkers(
      calls,
      (input) => Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` })),
      async (taskQueue, gpuTaskQueue) => {
        const handle = await env.client.workflow.start(fineTunePipeline, {
          taskQueue,
          workflowId: `grpo-${randomUUID()}`,
          args: [withGrpo, { gpuTaskQueue }],
        });
        const done = await handle.result();
        await recordHistory(handle, 'sft-grpo-v3');
        return done;
      },
    );
    expect(outcome.stages.map((s) => s.name)).toEqual([
      'prepare',
      'sft',
      'prepare-grpo',
      'grpo',
      'evaluate',
      'gate',
      'export',
    ]);
    const [sft, grpo] = calls.train;
    expect(grpo).toMatchObject({
      kind: 'grpo',
      adapterUri: `${sft!.outputUri}/adapter`,
      maxLength: 512,
      grpo: { numGenerations: 4, beta: 0.04, lossType: 'grpo', maxCompletionLength: 256 },
    });
    expect(grpo!.grpo!.rewards.map((r) => [r.kind, r.weight])).toEqual([
      ['numeric', 1],
      ['format', 0],
    ]);
    expect(grpo!.datasetUri).toContain(calls.prepareInputs[1]!.outputUri);
    expect(calls.evaluateInputs[0]!.datasetUri).toBe(grpo!.datasetUri);
    expect(calls.evaluateInputs[0]!.variants.map((v) => [v.name, v.adapterUri])).toEqual([
      ['base', ''],
      ['sft', `${sft!.outputUri}/adapter`],
      ['grpo', `${grpo!.outputUri}/adapter`],
    ]);
    expect(calls.exportInputs[0]!.adapterUri).toBe(`${grpo!.outputUri}/adapter`);
  });

  it('runs GRPO from the base model on the SFT rows when told to', async () => {
    const calls = newCalls();
    const fromBase = {
      ...config,
      grpo: { from: 'base', training: { microBatchSize: 8, gradientAccumulationSteps: 1 } },
    } as const;
    const outcome = await withWorkers(
      calls,
      (input) => Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` })),
      async (taskQueue, gpuTaskQueue) =>
        (
          await env.client.workflow.start(fineTunePipeline, {
            taskQueue,
            workflowId: `grpo-base-${randomUUID()}`,
            args: [fromBase, { gpuTaskQueue }],
          })
        ).result(),
    );
    expect(outcome.stages.map((s) => s.name)).toEqual(['prepare', 'sft', 'grpo', 'evaluate', 'gate', 'export']);
    const [sft, grpo] = calls.train;
    expect(grpo).toMatchObject({ kind: 'grpo', adapterUri: '', datasetUri: sft!.datasetUri });
    expect(grpo!.grpo!.rewards).toEqual([expect.objectContaining({ kind: 'vqa_accuracy', weight: 1 })]);
  });

  it('does not run again the stages it is given as finished (continue-as-new and retry carry them)', async () => {
    const calls = newCalls();
    const done = (name: string, artifacts: Record<string, string>) => ({
      ...result(`earlier/${name}`, artifacts),
      fingerprint: `fp-${name}`,
    });
    const state = {
      outputRoot: 'runs/earlier',
      completed: {
        prepare: done('prepare', { dataset: 'datasets/abc' }),
        sft: done('sft', { adapter: 'stages/sft/adapter' }),
      },
    };
    const outcome = await withWorkers(
      calls,
      () => Promise.reject(new Error('training must not run again')),
      (taskQueue, gpuTaskQueue) =>
        env.client.workflow.execute(fineTunePipeline, {
          taskQueue,
          workflowId: `carried-${randomUUID()}`,
          args: [config, { gpuTaskQueue, state }],
        }),
    );
    expect(calls.prepare + calls.train.length).toBe(0);
    expect(calls.evaluateInputs[0]).toMatchObject({ datasetUri: 'datasets/abc' });
    expect(calls.evaluateInputs[0]!.variants[1]).toMatchObject({ name: 'sft', adapterUri: 'stages/sft/adapter' });
    expect(outcome.adapterUri).toBe('stages/sft/adapter');
  });

  it('starts paused when the run it continues was paused, and runs once resumed (pause survives continue-as-new)', async () => {
    const calls = newCalls();
    const outcome = await withWorkers(
      calls,
      (input) => Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` })),
      async (taskQueue, gpuTaskQueue) => {
        const handle = await env.client.workflow.start(fineTunePipeline, {
          taskQueue,
          workflowId: `paused-carried-${randomUUID()}`,
          args: [config, { gpuTaskQueue, paused: true }],
        });
        const paused = await waitFor(
          () => handle.query(progressQuery),
          (p) => p.status === 'paused',
        );
        expect(paused.stage).toBe('prepare');
        await new Promise((r) => setTimeout(r, 500));
        expect(calls.prepare).toBe(0); // nothing runs while paused
        await handle.signal(resumeSignal);
        return handle.result();
      },
    );
    expect(outcome.status).toBe('completed');
    expect(calls.prepare).toBe(1);
  });
});

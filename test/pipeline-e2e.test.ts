/**
 * The whole product on one machine: the real Temporal dev server, the TS workers, the real Python worker and
 * the tiny random-weight Idefics3 model, on a synthetic task it can learn on CPU in a minute or two.
 * The pipeline prepares the data, trains (SFT), evaluates base against tuned, gates on the result and exports;
 * cancelling mid-training ends cleanly with a checkpoint on disk, and a retry resumes from it.
 */
import { WorkflowFailedError } from '@temporalio/client';
import { parseInputActivities } from '../activities/parse-input.js';
import { CancelledFailure } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker, type WorkflowBundlePath } from '@temporalio/worker';
import { execa } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../activities/index.js';
import { planRetry } from '../src/cli/retry-plan.js';
import { projectRoot, stateDir, temporalCli } from '../src/paths.js';
import type { PipelineConfigInput } from '../src/config/pipeline-config.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { searchAttributes } from '../src/config/search-attributes.js';
import { createPythonWorkerClient, type PythonWorkerClient } from '../src/python-worker-client.js';
import { heartbeatThrottle } from '../src/temporal-worker.js';
import { readPipelineProgress } from '../src/run-progress.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { tempDir } from './helpers.js';
import { recordHistory } from './history-fixtures.js';
import { lossesByStep } from './durability-helpers.js';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';
import { sharedWorkflowBundle } from './workflow-bundle.js';

const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');

/** The offline demo's recipe, shortened: the tiny model learns shape colours. */
function demoConfig(dataDir: string, overrides: Partial<PipelineConfigInput> = {}): PipelineConfigInput {
  return {
    name: 'e2e',
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
        maxSteps: 30,
        microBatchSize: 8,
        gradientAccumulationSteps: 1,
        warmupRatio: 0,
        lrScheduler: 'constant',
        gradientCheckpointing: false,
        saveSteps: 5,
        evalSteps: 30,
        loggingSteps: 1,
      },
    },
    evaluate: { metrics: ['vqa_accuracy'], batchSize: 16, bootstrapSamples: 100, generation: { maxNewTokens: 8 } },
    gate: { metric: 'vqa_accuracy', margin: 0.2 },
    ...overrides,
  };
}

describe('fineTunePipeline end to end (real Temporal, real Python worker, tiny model)', () => {
  let env: TestWorkflowEnvironment;
  let python: PythonWorker;
  let client: PythonWorkerClient;
  let workflowBundle: WorkflowBundlePath;
  let artifacts: string;
  let dataDir: string;
  let prefDir: string;
  /** Runs the tests here finished, for `vlmflow compare` to read. */
  const finished: string[] = [];

  beforeAll(async () => {
    artifacts = tempDir('e2e-artifacts');
    dataDir = path.join(artifacts, 'data', 'shape_colour');
    prefDir = path.join(artifacts, 'data', 'shape_colour_pref');
    const build = async () => {
      await buildTinyModel(tinyModel);
      await generateSyntheticTask({ task: 'shape_colour', rows: 160, seed: 0, out: dataDir });
      await generateSyntheticTask({ task: 'shape_colour', rows: 96, seed: 1, out: prefDir, preference: true });
    };
    workflowBundle = sharedWorkflowBundle();
    [env] = await Promise.all([
      TestWorkflowEnvironment.createLocal({
        server: { executable: { type: 'existing-path', path: temporalCli }, searchAttributes },
      }),
      build(),
    ]);
    python = await startPythonWorker({
      artifactRoot: artifacts,
      dataRoots: [path.dirname(tinyModel)],
      // A third of a second per training step (a slower device), so the cancel lands mid-SFT however fast this
      // machine trains the tiny model; at full speed SFT can end, and rotate its checkpoints, before it arrives.
      env: { HF_HUB_OFFLINE: '1', VLMFLOW_FAULT_STEP_SECONDS: '0.3' },
    });
    client = createPythonWorkerClient(python.address);
  }, 600_000);

  afterAll(async () => {
    client?.close();
    await Promise.all([env?.teardown(), python?.stop()]);
  });

  async function withWorkers<T>(body: (taskQueue: string, gpuTaskQueue: string) => Promise<T>): Promise<T> {
    const taskQueue = `e2e-${randomUUID()}`;
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
      activities: createActivities(client),
      maxConcurrentActivityTaskExecutions: 1,
      ...heartbeatThrottle,
    });
    return workflows.runUntil(activities.runUntil(body(taskQueue, gpuTaskQueue)));
  }

  it('runs prepare → SFT → evaluate → gate → export; a cancel mid-SFT keeps a checkpoint, retry resumes from it, and the tuned model beats the base', async () => {
    const config = demoConfig(dataDir);
    const workflowId = `e2e-${randomUUID()}`;
    const checkpoint = await withWorkers(async (taskQueue, gpuTaskQueue) => {
      const handle = await env.client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId,
        args: [config, { gpuTaskQueue }],
      });
      const p = await waitFor(
        () => readPipelineProgress(handle),
        (q) => q.stage === 'sft' && q.lastCheckpoint !== '',
        600_000,
      );
      await handle.cancel();
      const err = await handle.result().catch((e: unknown) => e);
      expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
      await recordHistory(handle, 'pipeline-e2e-cancel-v2');
      // The checkpoint the cancelled stage left: the newest on disk. The first one the query showed may have been
      // rotated away (the stage keeps only its newest checkpoints) by the time the cancel landed.
      const folder = path.dirname(p.lastCheckpoint);
      const stepOf = (name: string) => Number(/^checkpoint-(\d+)$/.exec(name)?.[1] ?? -1);
      const newest = readdirSync(folder)
        .filter((name) => stepOf(name) >= 0)
        .sort((a, b) => stepOf(a) - stepOf(b))
        .at(-1);
      return newest ? path.join(folder, newest) : p.lastCheckpoint;
    });
    expect(existsSync(checkpoint)).toBe(true);
    const savedStep = Number(/checkpoint-(\d+)$/.exec(checkpoint)?.[1]);

    const result = await withWorkers(async (taskQueue, gpuTaskQueue) => {
      const plan = await planRetry(env.client, workflowId, gpuTaskQueue);
      expect(plan.reused).toEqual(['prepare']);
      const handle = await env.client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId: `${workflowId}-retry`,
        args: [plan.config, plan.options],
      });
      const outcome = await handle.result();
      await recordHistory(handle, 'pipeline-e2e-v2');
      finished.push(handle.workflowId);
      return outcome;
    });
    expect(result.status).toBe('completed');
    expect(result.stages.map((s) => s.name)).toEqual(['prepare', 'sft', 'evaluate', 'gate', 'export']);
    expect(result.stages.every((s) => s.status === 'completed')).toBe(true);
    expect(result.stages.find((s) => s.name === 'sft')?.resumedFromStep).toBeGreaterThanOrEqual(savedStep);
    expect(result.gate?.passed).toBe(true);
    expect(result.metrics['sft/vqa_accuracy']).toBeGreaterThan(result.metrics['base/vqa_accuracy']! + 0.2);
    expect(existsSync(result.reportUri)).toBe(true);
    expect(readdirSync(result.modelUri).some((f) => f.endsWith('.safetensors'))).toBe(true);

    // Same inputs again: every stage comes back from the earlier work instead of running.
    const started = Date.now();
    const again = await withWorkers((taskQueue, gpuTaskQueue) =>
      env.client.workflow.execute(fineTunePipeline, {
        taskQueue,
        workflowId: `${workflowId}-again`,
        args: [config, { gpuTaskQueue }],
      }),
    );
    expect(again.stages.map((s) => [s.name, s.status])).toEqual([
      ['prepare', 'reused'],
      ['sft', 'reused'],
      ['evaluate', 'reused'],
      ['gate', 'completed'],
      ['export', 'reused'],
    ]);
    expect(again.reportUri).toBe(result.reportUri);
    expect(Date.now() - started).toBeLessThan(120_000);
  }, 1_800_000);

  it('runs SFT then DPO from the SFT adapter, and DPO beats the base on held-out preference pairs', async () => {
    const config = demoConfig(dataDir, {
      dpo: {
        dataset: {
          sources: [{ uri: path.join(prefDir, 'data.jsonl'), layout: 'preference' }],
          evalFraction: 0.25,
          maxLength: 256,
        },
        lora: { r: 16, alpha: 32, dropout: 0 },
        training: {
          learningRate: 2e-3,
          maxSteps: 12,
          microBatchSize: 8,
          gradientAccumulationSteps: 1,
          warmupRatio: 0,
          lrScheduler: 'constant',
          gradientCheckpointing: false,
          saveSteps: 12,
          evalSteps: 12,
          loggingSteps: 1,
        },
        beta: 0.1,
      },
      evaluate: { on: 'preference', batchSize: 16, bootstrapSamples: 100, generation: { maxNewTokens: 8 } },
      gate: { metric: 'preference_accuracy', margin: 0.2 },
    });
    const result = await withWorkers(async (taskQueue, gpuTaskQueue) => {
      const handle = await env.client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId: `e2e-dpo-${randomUUID()}`,
        args: [config, { gpuTaskQueue }],
      });
      const outcome = await handle.result();
      await recordHistory(handle, 'pipeline-e2e-dpo-v2');
      finished.push(handle.workflowId);
      return outcome;
    });
    // prepare and sft come back from the test above when it ran first (same inputs, same content keys).
    expect(result.stages.map((s) => [s.name, s.name === 'prepare' || s.name === 'sft' ? 'done' : s.status])).toEqual([
      ['prepare', 'done'],
      ['sft', 'done'],
      ['prepare-preference', 'completed'],
      ['dpo', 'completed'],
      ['evaluate', 'completed'],
      ['gate', 'completed'],
      ['export', 'completed'],
    ]);
    expect(result.metrics['dpo/preference_accuracy']).toBeGreaterThanOrEqual(
      result.metrics['base/preference_accuracy']! + 0.2,
    );
    expect(result.adapterUri).toContain('stages/dpo-');
    expect(existsSync(result.reportUri)).toBe(true);
  }, 1_800_000);

  it('runs SFT then GRPO from the SFT adapter on the real worker: a reward curve per step, base, SFT and GRPO evaluated side by side, the GRPO adapter exported', async () => {
    const config = demoConfig(dataDir, {
      grpo: {
        from: 'sft',
        lora: { r: 16, alpha: 32, dropout: 0 },
        training: {
          learningRate: 2e-4,
          maxSteps: 6,
          // 8 completions a step: 2 prompts × 4 generations.
          microBatchSize: 8,
          gradientAccumulationSteps: 1,
          warmupRatio: 0,
          lrScheduler: 'constant',
          gradientCheckpointing: false,
          saveSteps: 3,
          evalSteps: 0,
          loggingSteps: 1,
        },
        numGenerations: 4,
        maxCompletionLength: 3,
        // The tiny model's logits are small (a random 128-wide output layer): at 1.0 its samples are mostly noise,
        // at 0.15 mostly colour words (python-worker/tests/test_grpo.py).
        temperature: 0.15,
        beta: 0.04,
        rewards: [{ kind: 'exact_match' }, { kind: 'anls', weight: 0 }],
      },
    });
    const result = await withWorkers(async (taskQueue, gpuTaskQueue) => {
      const handle = await env.client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId: `e2e-grpo-${randomUUID()}`,
        args: [config, { gpuTaskQueue }],
      });
      const outcome = await handle.result();
      finished.push(handle.workflowId);
      return outcome;
    });
    // prepare and sft come back from the first test when it ran first (same inputs, same content keys).
    expect(result.stages.map((s) => [s.name, s.name === 'prepare' || s.name === 'sft' ? 'done' : s.status])).toEqual([
      ['prepare', 'done'],
      ['sft', 'done'],
      ['grpo', 'completed'],
      ['evaluate', 'completed'],
      ['gate', 'completed'],
      ['export', 'completed'],
    ]);
    const grpo = result.stages.find((s) => s.name === 'grpo')!;
    const log = readFileSync(grpo.artifacts!.training_log!, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, number>);
    const rewards = log.filter((e) => 'reward' in e);
    expect(rewards.map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
    for (const e of rewards) {
      expect(e.reward).toBeGreaterThanOrEqual(0);
      expect(e.reward).toBeLessThanOrEqual(1);
      expect(e['rewards/exact_match/mean']).toBe(e.reward); // anls has weight 0: logged, not summed
      expect(e['rewards/anls/mean']).toBeGreaterThanOrEqual(e['rewards/exact_match/mean']!);
      expect(e.kl).toBeGreaterThanOrEqual(0);
    }
    for (const variant of ['base', 'sft', 'grpo']) {
      expect(result.metrics[`${variant}/vqa_accuracy`], variant).toBeGreaterThanOrEqual(0);
    }
    expect(result.adapterUri).toContain('stages/grpo-');
    expect(readdirSync(result.modelUri).some((f) => f.endsWith('.safetensors'))).toBe(true);
    const report = readFileSync(result.reportUri, 'utf8');
    for (const chart of ['GRPO mean reward', 'GRPO reward: exact_match', 'GRPO KL to the reference']) {
      expect(report).toContain(chart);
    }
  }, 1_800_000);

  it('vlmflow compare writes one self-contained page with two runs’ metrics side by side and their loss curves overlaid', async () => {
    // The two runs the tests above finished, or two short ones (different learning rates) when this one runs alone.
    const [a, b] =
      finished.length >= 2
        ? finished.slice(-2)
        : await withWorkers(async (taskQueue, gpuTaskQueue) => {
            const ids = [`e2e-cmp-a-${randomUUID()}`, `e2e-cmp-b-${randomUUID()}`];
            for (const [i, workflowId] of ids.entries()) {
              // Four steps do not teach the task: no gate, and no export (the page needs neither).
              const config = demoConfig(dataDir, { gate: undefined, export: { enabled: false } });
              config.sft!.training = { ...config.sft!.training, maxSteps: 4, learningRate: 1e-3 * (i + 1) };
              await env.client.workflow.execute(fineTunePipeline, {
                taskQueue,
                workflowId,
                args: [config, { gpuTaskQueue }],
              });
            }
            return ids;
          });
    const results = await Promise.all(
      [a!, b!].map((id) => env.client.workflow.getHandle<typeof fineTunePipeline>(id).result()),
    );
    const out = path.join(tempDir('compare'), 'page.html');
    const r = await execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), 'compare', a!, b!, '--out', out], {
      reject: false,
      all: true,
      env: { TEMPORAL_ADDRESS: env.address },
    });
    expect(r.exitCode, r.all).toBe(0);
    const page = readFileSync(out, 'utf8');

    // Every metric of each run's evaluation, in its column (the other run's cell empty when it lacks it).
    for (const [column, result] of results.entries()) {
      for (const [name, value] of Object.entries(result.metrics)) {
        if (name.endsWith('/better')) continue;
        const row = new RegExp(
          `<td class="metric">${name}</td><td class="num">([^<]*)</td><td class="num">([^<]*)</td>`,
        ).exec(page);
        expect(row, name).not.toBeNull();
        // The page prints 4 significant digits (2 decimals from 100 up): equal within half its last digit.
        const lastDigit = Math.abs(value) >= 100 ? 0.01 : 10 ** (Math.floor(Math.log10(Math.abs(value) || 1)) - 3);
        expect(
          Math.abs(Number(row![column + 1]) - value),
          `${name}: ${row![column + 1]} vs ${value}`,
        ).toBeLessThanOrEqual(lastDigit / 2 + 1e-12);
      }
    }
    // The SFT loss of both runs in one chart, a polyline each with every step their training logs hold.
    const chart = /<svg [^>]*aria-label="sft loss".*?<\/svg>/s.exec(page)?.[0] ?? '';
    const polylines = [...chart.matchAll(/<polyline points="([^"]+)"/g)].map((m) => m[1]!.split(' ').length);
    const logged = results.map((result) => {
      const log = result.stages.find((s) => s.name === 'sft')!.artifacts!.training_log!;
      return lossesByStep(log).size;
    });
    expect(polylines).toEqual(logged);
    expect(Math.min(...logged)).toBeGreaterThanOrEqual(2);
    // Self-contained: no script, nothing loaded; the only links are to the runs' own reports.
    expect(page).not.toMatch(/<script|src="/);
    expect([...page.matchAll(/href="([^"]+)"/g)].map((m) => m[1])).toEqual(
      results.map((result) => `file://${encodeURI(result.reportUri)}`),
    );
  }, 1_800_000);
});

async function waitFor<T>(fn: () => Promise<T>, ok: (value: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value !== undefined && ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`condition not met in time; last value: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

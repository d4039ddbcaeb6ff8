/**
 * Both workers' Prometheus endpoints during a real run: the real Temporal dev server, the TS workers as
 * `vlmflow worker` builds them (runtime installed with a metrics address), the real Python worker serving
 * /metrics, and a fineTunePipeline whose SFT trains the tiny model. The Python worker's series move while it
 * trains (jobs running, the steps counter, samples/s) and end where the run did (jobs ended by outcome, steps =
 * the stage's steps); a Generate call moves the latency histogram; the TS endpoint carries the Temporal SDK's
 * task and workflow series. Then docker/grafana's dashboard is checked against the series both workers export.
 */
import { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { execa } from 'execa';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';
import type { PipelineConfigInput } from '../src/config/pipeline-config.js';
import { searchAttributes } from '../src/config/search-attributes.js';
import { Task } from '../src/gen/vlmflow/v1/generate.js';
import { projectRoot, stateDir, temporalCli, workerPython } from '../src/paths.js';
import { createPythonWorkerClient, generate, type PythonWorkerClient } from '../src/python-worker-client.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { installTemporalRuntime } from '../src/stack/temporal-runtime.js';
import { createTemporalWorkers } from '../src/temporal-worker.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { freePort, tempDir } from './helpers.js';
import { workflowBundlePath } from './workflow-bundle.js';

const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');
const demoImage = path.resolve(
  projectRoot,
  '..',
  'shared',
  'data',
  'llamafactory-mllm-demo',
  'mllm_demo_data',
  '1.jpg',
);
const SFT_STEPS = 20;

/** One sample of a /metrics page: name, labels, value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The Prometheus text format's sample lines (`name{a="b",...} value`); comments and blank lines skipped. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** Every series name any scrape of this file saw (a running job's speed is gone once it ends). */
const scrapedNames = new Set<string>();

async function scrape(address: string): Promise<Sample[]> {
  const response = await fetch(`http://${address}/metrics`);
  expect(response.ok).toBe(true);
  const samples = parseExposition(await response.text());
  for (const s of samples) scrapedNames.add(s.name);
  return samples;
}

/** The sum of the samples named `name` whose labels include `labels`. */
function total(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

async function waitFor<T>(fn: () => Promise<T>, ok: (value: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * The metric names a PromQL expression reads: what is left once strings, label matchers, ranges, grouping
 * clauses, Grafana variables, numbers, keywords and function calls are taken out.
 */
function promqlMetricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ')
    .replace(/\b\d+(\.\d+)?(e[+-]?\d+)?\b/gi, ' ');
  const keywords = new Set(['by', 'without', 'on', 'ignoring', 'offset', 'bool', 'and', 'or', 'unless', 'inf', 'nan']);
  return [...stripped.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?/g)]
    .filter((m) => !m[2] && !keywords.has(m[1]!.toLowerCase()))
    .map((m) => m[1]!);
}

describe('Prometheus metrics of both workers during a real run', () => {
  let env: TestWorkflowEnvironment;
  let python: PythonWorker;
  let client: PythonWorkerClient;
  let workers: { workflows: Worker; activities: Worker };
  let running: Promise<unknown>;
  let tsMetrics: string;
  let pythonMetrics: string;
  let dataDir: string;
  const taskQueue = `metrics-${randomUUID()}`;
  const gpuTaskQueue = `${taskQueue}-gpu`;

  beforeAll(async () => {
    // Before anything makes the Temporal runtime: the endpoint is the runtime's.
    tsMetrics = `127.0.0.1:${await freePort()}`;
    installTemporalRuntime({ metricsAddress: tsMetrics });
    const artifacts = tempDir('metrics-artifacts');
    dataDir = path.join(artifacts, 'data', 'shape_colour');
    [env] = await Promise.all([
      TestWorkflowEnvironment.createLocal({
        server: { executable: { type: 'existing-path', path: temporalCli }, searchAttributes },
      }),
      buildTinyModel(tinyModel),
      generateSyntheticTask({ task: 'shape_colour', rows: 48, seed: 0, out: dataDir }),
    ]);
    python = await startPythonWorker({
      artifactRoot: artifacts,
      dataRoots: [path.dirname(tinyModel), path.dirname(demoImage)],
      metricsAddress: '127.0.0.1:0',
      // A third of a second per step (a slower device: six seconds of training at least), so the scrapes below
      // land while SFT trains.
      env: { HF_HUB_OFFLINE: '1', VLMFLOW_FAULT_STEP_SECONDS: '0.3' },
    });
    pythonMetrics = python.metricsAddress!;
    client = createPythonWorkerClient(python.address);
    workers = await createTemporalWorkers({
      connection: env.nativeConnection,
      client,
      workflowTaskQueue: taskQueue,
      gpuTaskQueue,
      workflowBundlePath: workflowBundlePath(),
    });
    running = Promise.all([workers.workflows.run(), workers.activities.run()]);
  }, 600_000);

  afterAll(async () => {
    for (const w of [workers?.workflows, workers?.activities]) if (w?.getState() === 'RUNNING') w.shutdown();
    await running;
    client?.close();
    await Promise.all([env?.teardown(), python?.stop()]);
  });

  it('moves the Python series while SFT trains and ends them with the run; Temporal series appear on the TS endpoint', async () => {
    expect(pythonMetrics).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
    const config: PipelineConfigInput = {
      name: 'metrics',
      model: { id: tinyModel, dtype: 'float32' },
      dataset: { sources: [{ uri: path.join(dataDir, 'data.jsonl'), layout: 'messages' }], evalFraction: 0.25 },
      sft: {
        lora: { r: 8, alpha: 16, dropout: 0 },
        training: {
          maxSteps: SFT_STEPS,
          microBatchSize: 4,
          gradientAccumulationSteps: 1,
          gradientCheckpointing: false,
          saveSteps: SFT_STEPS,
          evalSteps: SFT_STEPS,
          loggingSteps: 1,
        },
      },
      evaluate: { metrics: ['vqa_accuracy'], batchSize: 16, bootstrapSamples: 10, generation: { maxNewTokens: 4 } },
    };
    const handle = await env.client.workflow.start(fineTunePipeline, {
      taskQueue,
      workflowId: `metrics-${randomUUID()}`,
      args: [config, { gpuTaskQueue }],
    });

    // While SFT trains: one SFT job running, the steps counter climbing, a samples/s figure for the job.
    const training = { name: 'vlmflow_jobs_running', labels: { kind: 'train_sft' } };
    const first = await waitFor(
      () => scrape(pythonMetrics),
      (s) => total(s, training.name, training.labels) === 1 && total(s, 'vlmflow_train_samples_per_second') > 0,
      600_000,
    );
    const stepsAt = total(first, 'vlmflow_train_steps_total', { kind: 'train_sft' });
    const later = await waitFor(
      () => scrape(pythonMetrics),
      (s) => total(s, 'vlmflow_train_steps_total', { kind: 'train_sft' }) > stepsAt,
      60_000,
    );
    expect(total(later, 'vlmflow_jobs_started_total', { kind: 'prepare_dataset' })).toBe(1);
    expect(total(later, 'vlmflow_jobs_ended_total', { kind: 'prepare_dataset', outcome: 'succeeded' })).toBe(1);

    const outcome = await handle.result();
    expect(outcome.status).toBe('completed');

    // A Generate call moves the latency histogram and the items counter.
    const before = await scrape(pythonMetrics);
    const reply = await generate(client, {
      model: { modelId: tinyModel },
      items: [1, 2, 3].map((i) => ({
        id: `i${i}`,
        task: Task.TASK_CAPTION,
        images: [{ source: { $case: 'uri', value: demoImage } }],
      })),
      generation: { maxNewTokens: 4 },
    });
    expect(reply.results).toHaveLength(3);
    const py = await scrape(pythonMetrics);
    const moved = (name: string) => total(py, name) - total(before, name);
    expect(moved('vlmflow_generate_request_seconds_count')).toBe(1);
    expect(moved('vlmflow_generate_items_total')).toBe(3);
    expect(total(py, 'vlmflow_generate_request_seconds_bucket', { le: '+Inf' })).toBe(
      total(py, 'vlmflow_generate_request_seconds_count'),
    );

    // After the run: every stage's job ended successfully, nothing runs, SFT trained exactly its steps.
    for (const kind of ['prepare_dataset', 'train_sft', 'evaluate', 'export']) {
      expect(total(py, 'vlmflow_jobs_ended_total', { kind, outcome: 'succeeded' }), kind).toBe(1);
      expect(total(py, 'vlmflow_jobs_running', { kind }), kind).toBe(0);
    }
    expect(total(py, 'vlmflow_train_steps_total', { kind: 'train_sft' })).toBe(SFT_STEPS);
    expect(py.some((s) => s.name === 'vlmflow_train_samples_per_second')).toBe(false); // ended: no stale speed

    // A config the workflow refuses, so the failure series exist too (the dashboard plots them).
    const refused = await env.client.workflow.start('fineTunePipeline', {
      taskQueue,
      workflowId: `metrics-bad-${randomUUID()}`,
      args: [{ model: { id: 5 } }],
    });
    await expect(refused.result()).rejects.toThrow();

    const ts = await waitFor(
      () => scrape(tsMetrics),
      (s) => total(s, 'temporal_workflow_failed_total') >= 1,
      30_000,
    );
    expect(total(ts, 'temporal_workflow_completed_total', { workflow_type: 'fineTunePipeline' })).toBe(1);
    expect(
      total(ts, 'temporal_workflow_task_execution_latency_seconds_count', { task_queue: taskQueue }),
    ).toBeGreaterThan(0);
    expect(total(ts, 'temporal_activity_execution_latency_seconds_count', { activity_type: 'train' })).toBeGreaterThan(
      0,
    );
    expect(
      total(ts, 'temporal_activity_schedule_to_start_latency_seconds_count', { task_queue: gpuTaskQueue }),
    ).toBeGreaterThan(0);
    const slots = ts.filter((s) => s.name === 'temporal_worker_task_slots_available').map((s) => s.labels.worker_type);
    expect(new Set(slots)).toEqual(new Set(['WorkflowWorker', 'ActivityWorker', 'LocalActivityWorker']));
    expect(ts.some((s) => /_task_/.test(s.name))).toBe(true);
  }, 1_200_000);

  it("docker/grafana's dashboard parses and reads only series the two workers export", async () => {
    expect(scrapedNames, 'runs after the scrapes above').toContain('temporal_workflow_failed_total');
    const exported = new Set(scrapedNames);
    // GPU series exist only on a worker with GPUs: those names come from the worker's own registry.
    const listed = await execa(workerPython, [
      '-c',
      'from vlmflow_worker.serve.metrics import WorkerMetrics\n' +
        'for f in WorkerMetrics().registry.collect(): print(f.name, f.type)',
    ]);
    const suffixes: Record<string, string[]> = { counter: ['_total'], histogram: ['_bucket', '_sum', '_count'] };
    for (const line of listed.stdout.split('\n').filter(Boolean)) {
      const [name, type] = line.split(' ') as [string, string];
      if (name.startsWith('vlmflow_gpu_')) for (const s of suffixes[type] ?? ['']) exported.add(name + s);
    }

    const dashboard = JSON.parse(
      readFileSync(path.join(projectRoot, 'docker/grafana/dashboards/vlmflow.json'), 'utf8'),
    ) as {
      uid: string;
      title: string;
      panels: { title: string; type: string; datasource?: { uid: string }; targets?: { expr: string }[] }[];
    };
    expect(dashboard.uid).toBe('vlmflow');
    const queries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
    expect(queries.length).toBeGreaterThan(10);
    const read = new Set<string>();
    for (const { panel, expr } of queries) {
      const names = promqlMetricNames(expr);
      expect(names.length, `${panel}: ${expr}`).toBeGreaterThan(0);
      for (const name of names) {
        read.add(name);
        expect(exported.has(name), `${panel}: ${name} is not a series the workers export`).toBe(true);
      }
    }
    // Both workers are on it: jobs, training, Generate, GPU memory, and Temporal task latencies and slots.
    for (const needed of [
      'vlmflow_jobs_ended_total',
      'vlmflow_train_steps_total',
      'vlmflow_gpu_memory_used_bytes',
      'vlmflow_generate_request_seconds_bucket',
      'temporal_worker_task_slots_available',
    ]) {
      expect(read, needed).toContain(needed);
    }
    expect([...read].some((n) => /^temporal_.*_task_.*latency_seconds_bucket$/.test(n))).toBe(true);
    // Every panel reads the data source the compose stack provisions.
    const provisioned = readFileSync(
      path.join(projectRoot, 'docker/grafana/provisioning/datasources/prometheus.yaml'),
      'utf8',
    );
    const uid = /uid:\s*(\S+)/.exec(provisioned)![1]!;
    for (const p of dashboard.panels.filter((panel) => panel.type !== 'row'))
      expect(p.datasource?.uid, p.title).toBe(uid);
  });

  it('refuses a taken TS metrics port with a sentence before dialling anything', async () => {
    // The runtime above holds tsMetrics: `vlmflow worker` given the same address must say so and exit.
    const result = await execa('node', ['bin/vlmflow.js', 'worker', '--metrics-address', tsMetrics], {
      cwd: projectRoot,
      env: { TEMPORAL_ADDRESS: '127.0.0.1:1', VLMFLOW_WORKER_ADDRESS: '127.0.0.1:1' },
      reject: false,
      timeout: 60_000,
    });
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toContain(`cannot serve Temporal metrics on ${tsMetrics}`);
    expect(result.stderr).toMatch(/Address already in use/);
    const bad = await execa('node', ['bin/vlmflow.js', 'worker', '--metrics-address', 'localhost:9464'], {
      cwd: projectRoot,
      reject: false,
    });
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr).toMatch(/--metrics-address.*must be ip:port/s);
  });
});

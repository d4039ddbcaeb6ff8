/**
 * The vlmflow CLI as a person runs it (a child process, `node bin/vlmflow.js ...`) against the real dev
 * server, with scripted stage activities on the GPU task queue: validation before anything starts, run with
 * its result and exit code, status and list, pause / resume / cancel, and schedules that start runs.
 */
import { ApplicationFailure } from '@temporalio/common';
import { parseInputActivities } from '../activities/parse-input.js';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker, type WorkflowBundlePath } from '@temporalio/worker';
import { execa, type ResultPromise } from 'execa';
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot, stateDir, temporalCli } from '../src/paths.js';
import { searchAttributes } from '../src/config/search-attributes.js';
import { heartbeatThrottle } from '../src/temporal-worker.js';
import { progressQuery } from '../workflows/definitions.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { readPipelineProgress } from '../src/run-progress.js';
import { tempDir } from './helpers.js';
import { newCalls, result, scriptedActivities, trainUntilCancelled, type TrainScript } from './scripted-activities.js';
import { buildTinyModel } from '../src/cli/demo-assets.js';
import { sharedWorkflowBundle } from './workflow-bundle.js';

const dir = tempDir('cli');
const goodConfig = path.join(dir, 'good.yaml');
writeFileSync(
  goodConfig,
  [
    'name: cli-test',
    'model: { id: tiny }',
    'dataset:',
    '  sources:',
    '    - uri: synthetic/shape_colour',
    'gate: { metric: vqa_accuracy, margin: 0.1 }',
    '',
  ].join('\n'),
);
const badConfig = path.join(dir, 'bad.json');
writeFileSync(badConfig, JSON.stringify({ model: { id: 'x', quantisation: 'nf4' }, dataset: { sources: [] } }));

describe('the vlmflow CLI against the real dev server', () => {
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

  /**
   * Workers on fresh task queues while `body` runs; `cli` runs the CLI pointed at them, `start` starts it and
   * hands back the running process.
   */
  async function withStack<T>(
    train: TrainScript,
    body: (
      cli: (...args: string[]) => Promise<{ exitCode: number; out: string }>,
      start: (...args: string[]) => ResultPromise<{ all: true; reject: false }>,
    ) => Promise<T>,
  ): Promise<T> {
    const taskQueue = `cli-${randomUUID()}`;
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
      activities: scriptedActivities(newCalls(), train),
      ...heartbeatThrottle,
    });
    const start = (...args: string[]) =>
      execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), ...args], {
        reject: false,
        all: true,
        env: {
          TEMPORAL_ADDRESS: env.address,
          VLMFLOW_WORKFLOW_TASK_QUEUE: taskQueue,
          VLMFLOW_GPU_TASK_QUEUE: gpuTaskQueue,
          VLMFLOW_LOG_LEVEL: 'warn',
        },
      });
    const cli = async (...args: string[]) => {
      const r = await start(...args);
      return { exitCode: r.exitCode ?? -1, out: r.all };
    };
    return workflows.runUntil(activities.runUntil(body(cli, start)));
  }

  const quickTrain: TrainScript = (input) =>
    Promise.resolve(result(input.jobId, { adapter: `${input.outputUri}/adapter` }));

  it('refuses a bad config before starting anything, naming every field, with exit code 2', async () => {
    const r = await execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), 'run', badConfig], {
      reject: false,
      all: true,
      env: { TEMPORAL_ADDRESS: '127.0.0.1:1' },
    });
    expect(r.exitCode).toBe(2);
    expect(r.all).toContain('model.quantisation: unknown field; accepted fields here: id, revision, quantization');
    expect(r.all).toContain('dataset.sources: needs at least 1 item');
    expect(r.all).not.toMatch(/\n\s+at /); // a sentence, not a stack trace
  });

  it('runs a pipeline to the end, prints the result and the report path, and status and list show it', async () => {
    await withStack(quickTrain, async (cli) => {
      const id = `cli-run-${randomUUID()}`;
      const run = await cli('run', goodConfig, '--id', id);
      expect(run.exitCode).toBe(0);
      expect(run.out).toContain(`Run ${id} completed`);
      expect(run.out).toMatch(/Report: +\S*report\.html/);
      expect(run.out).toContain('Gate: sft beats base on vqa_accuracy');

      const status = await cli('status', id);
      expect(status.exitCode).toBe(0);
      expect(status.out).toContain(`${id}: completed`);

      const list = await cli('list', '--status', 'completed', '--model', 'tiny');
      expect(list.out).toContain(id);

      const missing = await cli('status', 'no-such-run');
      expect(missing.exitCode).toBe(1);
      expect(missing.out).toContain('there is no run with id no-such-run');
    });
  });

  it('pauses, resumes and cancels a running pipeline from the command line', async () => {
    // Odd calls train until cancelled (paused or cancelled); even ones finish at once (after resume).
    const calls = newCalls();
    const train: TrainScript = (input, n) => (n % 2 === 1 ? trainUntilCancelled(input, calls) : quickTrain(input, n));
    await withStack(train, async (cli) => {
      const id = `cli-steer-${randomUUID()}`;
      expect((await cli('run', goodConfig, '--id', id, '--detach')).exitCode).toBe(0);
      const handle = env.client.workflow.getHandle(id);
      await until(async () => (await readPipelineProgress(handle)).step === 20);

      expect((await cli('pause', id)).out).toContain(`Asked ${id} to pause`);
      await until(async () => (await handle.query(progressQuery)).status === 'paused');
      const paused = await cli('status', id);
      expect(paused.out).toMatch(/stage sft \(paused\) step 20\/100/);
      expect(paused.out).toMatch(/last checkpoint: \S+checkpoint-20/);

      expect((await cli('resume', id)).exitCode).toBe(0);
      await handle.result();

      const second = `cli-cancel-${randomUUID()}`;
      expect((await cli('run', goodConfig, '--id', second, '--detach')).exitCode).toBe(0);
      await until(async () => (await readPipelineProgress(env.client.workflow.getHandle(second))).step === 20);
      expect((await cli('cancel', second)).out).toContain('the running stage saves a checkpoint and stops');
      await env.client.workflow
        .getHandle(second)
        .result()
        .catch(() => undefined);
      const status = await cli('status', second);
      expect(status.exitCode).toBe(3);
      expect(status.out).toContain(`${second}: cancelled`);
    });
  });

  it('Ctrl-C while following detaches with exit 130 and a sentence; the run goes on and completes', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    await withStack(
      (input) => trainUntilCancelled(input, newCalls(), released),
      async (cli, start) => {
        const id = `cli-detach-${randomUUID()}`;
        const following = start('run', goodConfig, '--id', id);
        let out = '';
        following.all.on('data', (chunk: Buffer) => (out += chunk.toString()));
        const handle = env.client.workflow.getHandle<typeof fineTunePipeline>(id);
        await until(
          async () => out.includes('Ctrl-C stops following') && (await readPipelineProgress(handle)).step === 20,
        );

        following.kill('SIGINT');
        const detached = await following;
        expect(detached.exitCode).toBe(130);
        expect(detached.all).toContain(`Detached from ${id}; the run goes on without this terminal.`);
        expect(detached.all).toContain(`vlmflow follow ${id}`);
        expect((await handle.describe()).status.name).toBe('RUNNING');

        // Following again picks the run up where it is and sees it to the end.
        const again = start('follow', id);
        let againOut = '';
        again.all.on('data', (chunk: Buffer) => (againOut += chunk.toString()));
        await until(() => Promise.resolve(againOut.includes(`Following ${id}`)));
        release();
        const followed = await again;
        expect(followed.exitCode).toBe(0);
        expect(followed.all).toContain(`Run ${id} completed`);
        expect((await cli('status', id)).exitCode).toBe(0);
      },
    );
  });

  it('status and follow exit 4 for a terminated run and 5 for a timed-out one; compare refuses runs without results', async () => {
    await withStack(
      (input) => trainUntilCancelled(input, newCalls()),
      async (cli) => {
        const terminated = `cli-terminated-${randomUUID()}`;
        expect((await cli('run', goodConfig, '--id', terminated, '--detach')).exitCode).toBe(0);
        const handle = env.client.workflow.getHandle(terminated);
        await until(async () => (await readPipelineProgress(handle)).step === 20);
        const running = await cli('compare', terminated, 'no-such-run');
        expect(running.exitCode).toBe(1);
        expect(running.out).toContain(`${terminated} has no results yet: it is still running (\`vlmflow follow`);

        await handle.terminate('operator stopped it');
        const status = await cli('status', terminated);
        expect(status.exitCode).toBe(4);
        expect(status.out).toContain(`${terminated}: terminated`);
        expect(status.out).toContain('ended: it was terminated');
        const followed = await cli('follow', terminated);
        expect(followed.exitCode).toBe(4);
        expect(followed.out).toContain(`Run ${terminated} ended: it was terminated`);
        const compared = await cli('compare', terminated, terminated);
        expect(compared.exitCode).toBe(1);
        expect(compared.out).toContain(`${terminated} has no results: it ended terminated before finishing`);
        const unknown = await cli('compare', 'no-such-run', terminated);
        expect(unknown.exitCode).toBe(1);
        expect(unknown.out).toContain('there is no run with id no-such-run');

        const timedOut = `cli-timeout-${randomUUID()}`;
        const taskQueue = (await handle.describe()).taskQueue;
        const slow = await env.client.workflow.start(fineTunePipeline, {
          taskQueue,
          workflowId: timedOut,
          args: [
            { name: 'cli-test', model: { id: 'tiny' }, dataset: { sources: [{ uri: 'synthetic/shape_colour' }] } },
            { gpuTaskQueue: `${taskQueue}-gpu` },
          ],
          workflowExecutionTimeout: '3s',
        });
        await slow.result().catch(() => undefined);
        const timedOutStatus = await cli('status', timedOut);
        expect(timedOutStatus.exitCode).toBe(5);
        expect(timedOutStatus.out).toContain(`${timedOut}: timed_out`);
      },
    );
  });

  it('compare puts two completed runs on one self-contained page', async () => {
    await withStack(quickTrain, async (cli) => {
      const [a, b] = [`cli-cmp-a-${randomUUID()}`, `cli-cmp-b-${randomUUID()}`];
      expect((await cli('run', goodConfig, '--id', a)).exitCode).toBe(0);
      expect((await cli('run', goodConfig, '--id', b)).exitCode).toBe(0);
      const file = path.join(dir, 'compare.html');
      const r = await cli('compare', a, b, '--out', file);
      expect(r.exitCode).toBe(0);
      expect(r.out).toContain(`Wrote ${file}: ${a} and ${b} side by side`);
      const page = readFileSync(file, 'utf8');
      // The scripted evaluation's figures, one row each with both runs' values and their difference.
      expect(page).toContain(
        '<td class="metric">sft/vqa_accuracy</td><td class="num">0.9000</td><td class="num">0.9000</td><td class="num">0</td>',
      );
      expect(page).not.toMatch(/<script|src="/);
      // The scripted stages name no training log: the page says so instead of drawing empty charts.
      expect(page).toContain('Neither run has a training log with figures.');
      expect(page).not.toContain('<svg');
    });
  });

  it('retries a failed run: finished stages are reused and the failed stage runs again', async () => {
    // The first training fails for good; the retry's training succeeds.
    const train: TrainScript = (input, n) =>
      n === 1
        ? Promise.reject(
            ApplicationFailure.create({ type: 'BadData', message: 'the dataset has no rows', nonRetryable: true }),
          )
        : quickTrain(input, n);
    await withStack(train, async (cli) => {
      const id = `cli-retry-${randomUUID()}`;
      const failed = await cli('run', goodConfig, '--id', id);
      expect(failed.exitCode).toBe(1);
      expect(failed.out).toContain(`Run ${id} failed: train activity: the dataset has no rows [BadData]`);
      expect(failed.out).toContain(`vlmflow retry ${id}`);

      const retried = await cli('retry', id, '--id', `${id}-again`);
      expect(retried.exitCode).toBe(0);
      expect(retried.out).toContain(`Started ${id}-again, reusing prepare`);
      expect(retried.out).toContain(`Run ${id}-again completed`);
    });
  });

  it('creates a schedule that starts runs, and triggers, describes, pauses and deletes it', async () => {
    await withStack(quickTrain, async (cli) => {
      const id = `nightly-${randomUUID().slice(0, 8)}`;
      const created = await cli('schedule', 'create', id, goodConfig, '--cron', '0 2 * * *', '--overlap', 'skip');
      expect(created.exitCode).toBe(0);
      expect(created.out).toContain(`Schedule ${id} created (cron "0 2 * * *", overlap skip)`);

      expect((await cli('schedule', 'trigger', id)).exitCode).toBe(0);
      const schedule = env.client.schedule.getHandle(id);
      await until(async () => (await schedule.describe()).info.recentActions.length > 0);
      const runId = (await schedule.describe()).info.recentActions[0]!.action.workflow.workflowId;
      const outcome = (await env.client.workflow.getHandle(runId).result()) as { status: string };
      expect(outcome.status).toBe('completed');

      const described = await cli('schedule', 'describe', id);
      expect(described.out).toContain('runs started: 1');
      expect(described.out).toContain(runId);
      expect((await cli('schedule', 'list')).out).toContain(id);
      expect((await cli('schedule', 'pause', id)).exitCode).toBe(0);
      expect((await schedule.describe()).state.paused).toBe(true);
      expect((await cli('schedule', 'delete', id)).exitCode).toBe(0);
      const gone = await cli('schedule', 'describe', id);
      expect(gone.exitCode).toBe(1);
      expect(gone.out).toContain(`there is no schedule ${id}`);
    });
  });
});

describe('vlmflow infer and doctor', () => {
  const cli = (args: string[], env: Record<string, string> = {}) =>
    execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), ...args], { reject: false, all: true, env });
  const photo = path.resolve(projectRoot, '..', 'shared', 'data', 'llamafactory-mllm-demo', 'mllm_demo_data', '1.jpg');
  const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');

  it('answers about a local image with a worker it starts for the command', async () => {
    await buildTinyModel(tinyModel);
    const r = await cli(['infer', 'caption', photo, '--model', tinyModel, '--max-new-tokens', '3'], {
      VLMFLOW_ARTIFACT_ROOT: tempDir('infer'),
    });
    expect(r.exitCode).toBe(0);
    expect(r.all).toMatch(new RegExp(`^${photo}: .+$`, 'm'));
  });

  it('exits 2 on usage errors and bad numbers, naming the option, without touching Temporal', async () => {
    const usage: [string[], string][] = [
      [['stauts', 'x'], "unknown command 'stauts'"],
      [['run', goodConfig, '--bogus'], "unknown option '--bogus'"],
      [['status'], "missing required argument 'workflowId'"],
      [['compare', 'one-run'], "missing required argument 'runB'"],
      [['list', '--limit', 'abc'], '--limit takes a whole number of at least 1, e.g. --limit 20.'],
      [['list', '--limit', '3x'], "option '--limit <n>' argument '3x' is invalid"],
      [['infer', 'caption', photo, '--frames', '0'], '--frames takes a whole number of at least 1'],
      [['infer', 'caption', photo, '--max-new-tokens', 'NaN'], '--max-new-tokens takes a whole number'],
      [[], 'Usage: vlmflow'],
    ];
    // Side by side: each is a process that starts the CLI (seconds) and stops at its command line.
    const results = await Promise.all(usage.map(([args]) => cli(args, { TEMPORAL_ADDRESS: '127.0.0.1:1' })));
    for (const [i, [args, message]] of usage.entries()) {
      expect({ args, exitCode: results[i]!.exitCode }).toEqual({ args, exitCode: 2 });
      expect(results[i]!.all).toContain(message);
    }
    expect((await cli(['--help'])).exitCode).toBe(0);
  });

  it('says what is wrong instead of failing obscurely', async () => {
    const vqa = await cli(['infer', 'vqa', photo]);
    expect(vqa.exitCode).toBe(1);
    expect(vqa.all).toContain('vqa needs a question: pass --prompt');
    const doctor = await cli(['doctor'], { TEMPORAL_ADDRESS: '127.0.0.1:1' });
    expect(doctor.exitCode).toBe(1);
    expect(doctor.all).toContain('✗ Temporal at 127.0.0.1:1 — nothing answers; check TEMPORAL_ADDRESS');
  });
});

async function until(predicate: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 200));
  }
}

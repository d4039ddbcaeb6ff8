/**
 * What the durability tests share (test/faults.test.ts, test/long-runs.test.ts): the tiny pipeline config, TS
 * workers as child processes (`node bin/vlmflow.js worker`, the deployment's entry) so they can be SIGKILLed, and
 * readers of the Python worker's job folders (event logs, pids, losses).
 */
import { execa, type ResultPromise } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { PipelineConfigInput } from '../src/config/pipeline-config.js';
import { projectRoot, stateDir } from '../src/paths.js';
import type { WorkflowHandle } from '@temporalio/client';
import { readPipelineProgress } from '../src/run-progress.js';
import { startDevServer, type DevServer, type DevServerOptions } from '../src/stack/temporal-dev-server.js';
import { freePort } from './helpers.js';
import type { PipelineProgress, StageName, StageSummary } from '../workflows/definitions.js';

export const tinyModel = path.join(stateDir, 'models', 'tiny-idefics3');
export const SAVE_STEPS = 3;

export function pipelineConfig(dataFile: string, maxSteps: number, seed = 42): PipelineConfigInput {
  return {
    name: 'faults',
    model: { id: tinyModel, dtype: 'float32' },
    dataset: { sources: [{ uri: dataFile, layout: 'messages' }], evalFraction: 0.2, maxLength: 256 },
    sft: {
      lora: { r: 8, alpha: 16, dropout: 0 },
      training: {
        learningRate: 1e-3,
        maxSteps,
        microBatchSize: 4,
        gradientAccumulationSteps: 1,
        warmupRatio: 0,
        lrScheduler: 'constant',
        gradientCheckpointing: false,
        saveSteps: SAVE_STEPS,
        evalSteps: 1000,
        loggingSteps: 1,
        saveTotalLimit: 0,
        seed,
      },
    },
    evaluate: {
      metrics: ['vqa_accuracy'],
      maxSamples: 4,
      batchSize: 4,
      bootstrapSamples: 10,
      generation: { maxNewTokens: 2 },
    },
    export: { enabled: false },
  };
}

/** `node bin/vlmflow.js worker`, ready once it logs 'workers running'. */
export interface TsWorker {
  process: ResultPromise;
  kill(): Promise<void>;
  stop(): Promise<void>;
}

export async function startTsWorker(env: Record<string, string>): Promise<TsWorker> {
  const child = execa('node', [path.join(projectRoot, 'bin', 'vlmflow.js'), 'worker'], {
    env: { ...env, VLMFLOW_LOG_LEVEL: 'info' },
    reject: false,
    stdout: 'ignore',
    stderr: 'pipe',
    forceKillAfterDelay: false,
  });
  const tail: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`TS worker not ready:\n${tail.join('\n')}`)), 120_000);
    createInterface({ input: child.stderr }).on('line', (line) => {
      tail.push(line);
      if (tail.length > 30) tail.shift();
      if (line.includes('"workers running"')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void child.then((r) => {
      clearTimeout(timer);
      reject(new Error(`TS worker exited (${r.exitCode ?? r.signal}):\n${tail.join('\n')}`));
    });
  });
  const ended = () => child.exitCode !== null || child.signalCode !== null;
  return {
    process: child,
    async kill() {
      if (!ended()) child.kill('SIGKILL');
      await child;
    },
    async stop() {
      if (!ended()) child.kill('SIGTERM');
      await child;
    },
  };
}

/** Event logs of one job (`events.jsonl` plus the rotated `events.<n>.jsonl` of earlier attempts), oldest first. */
export function jobLogs(artifacts: string, jobId: string): Record<string, unknown>[][] {
  const folder = path.join(artifacts, 'jobs', encodeURIComponent(jobId));
  if (!existsSync(folder)) return [];
  const names = readdirSync(folder).filter((f) => /^events(\.\d+)?\.jsonl$/.test(f));
  const order = (f: string) => (f === 'events.jsonl' ? Infinity : Number(f.split('.')[1]));
  return names
    .sort((a, b) => order(a) - order(b))
    .map((f) =>
      readFileSync(path.join(folder, f), 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    );
}

/** How many processes the worker started for a job: one `accepted` event per attempt. */
export function processesStarted(artifacts: string, jobId: string): number {
  return jobLogs(artifacts, jobId)
    .flat()
    .filter((e) => 'accepted' in e).length;
}

/** Highest training step an attempt reported. */
export function lastStep(log: Record<string, unknown>[]): number {
  const steps = log.map((e) => Number((e.progress as { step?: string } | undefined)?.step ?? 0));
  return Math.max(0, ...steps);
}

export function jobIdOf(progress: { stages: StageSummary[] }, stage: StageName): string {
  const jobId = progress.stages.find((s) => s.name === stage)?.jobId;
  if (!jobId) throw new Error(`no job id for stage ${stage} yet: ${JSON.stringify(progress.stages)}`);
  return jobId;
}

export function childPid(artifacts: string, jobId: string): number {
  return Number(readFileSync(path.join(artifacts, 'jobs', encodeURIComponent(jobId), 'child.pid'), 'utf8'));
}

/** The parent process id (Linux /proc). */
export function parentOf(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
}

/** Running (a zombie is not: it has exited and waits for a reaper, which this sandbox's PID 1 can be slow to be). */
export function isAlive(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The last logged loss of every step in a trainer's training_log.jsonl (a resumed run logs redone steps again). */
export function lossesByStep(logFile: string): Map<number, number> {
  const losses = new Map<number, number>();
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const entry = JSON.parse(line) as { step?: number; loss?: number };
    if (entry.step !== undefined && entry.loss !== undefined) losses.set(entry.step, entry.loss);
  }
  return new Map([...losses].sort(([a], [b]) => a - b));
}

/** A run's progress (query and heartbeat details) once `ok` holds; while nobody answers (a worker or the server is
 * down) the last answer stands. */
export async function untilProgress(
  handle: WorkflowHandle,
  what: string,
  ok: (p: PipelineProgress) => boolean,
  timeoutMs = 300_000,
): Promise<PipelineProgress> {
  const deadline = Date.now() + timeoutMs;
  let last: PipelineProgress | undefined;
  for (;;) {
    last = (await readPipelineProgress(handle).catch(() => undefined)) ?? last;
    if (last && ok(last)) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not reached; last progress ${JSON.stringify(last)}`);
    await sleep(300);
  }
}

/**
 * A dev server on free ports. A port found free can be taken before the server binds it (by the ports the server
 * picks for itself, or another test file's), so a clash is retried on new ports, twice at most.
 */
export async function startDevServerOnFreePorts(opts: Omit<DevServerOptions, 'port' | 'uiPort'>): Promise<DevServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDevServer({ ...opts, port: await freePort(), uiPort: await freePort() });
    } catch (err) {
      if (attempt >= 3 || !String(err).includes('address already in use')) throw err;
    }
  }
}

/** Job processes running for a job (their command line names its folder), from /proc; zombies do not count. */
export function jobProcesses(artifacts: string, jobId: string): number[] {
  const folder = path.join(artifacts, 'jobs', encodeURIComponent(jobId));
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      // Forked job processes name their job in a title (argv joined by spaces), fresh ones in their argv.
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').split(/[\0 ]+/);
      if (!cmdline.includes('vlmflow_worker.jobs.child') || !cmdline.includes(folder)) continue;
      if (isAlive(Number(name))) found.push(Number(name));
    } catch {
      // exited while we looked
    }
  }
  return found;
}

/** The environment of a `vlmflow worker` child process: where Temporal and its Python worker are, its queues. */
export function tsWorkerEnv(temporalAddress: string, pythonAddress: string, taskQueue: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '',
    TEMPORAL_ADDRESS: temporalAddress,
    VLMFLOW_WORKER_ADDRESS: pythonAddress,
    VLMFLOW_WORKFLOW_TASK_QUEUE: taskQueue,
    VLMFLOW_GPU_TASK_QUEUE: `${taskQueue}-gpu`,
  };
}

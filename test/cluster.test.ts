/**
 * The production path (issue 15): a real Temporal cluster on PostgreSQL (frontend, history, matching and worker as
 * four `temporal-server` v1.29.1 processes, src/stack/temporal-cluster.ts), Python workers on one shared artifact
 * store, and TS workers as `vlmflow worker` child processes, the deployment's entry.
 *
 * 1. SFT through a SIGKILLed history service (restarted) and a PostgreSQL restart: the run completes, one training
 *    process, every step trained once.
 * 2. The chaos run of test/chaos.ts, the Temporal service being the cluster's frontend and history.
 * 3. Two worker pairs; only the TS worker of the pair that trains is SIGKILLed: the retried activity lands on the
 *    other pair, whose Python worker attaches to the job through the store; never two trainings.
 *
 *   npx vitest run test/cluster.test.ts
 */
import { Client, Connection } from '@temporalio/client';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTinyModel, generateSyntheticTask } from '../src/cli/demo-assets.js';
import { startPythonWorker, type PythonWorker } from '../src/stack/python-worker-process.js';
import { startTemporalCluster, type TemporalCluster } from '../src/stack/temporal-cluster.js';
import { fineTunePipeline } from '../workflows/fine-tune-pipeline.js';
import { runChaos } from './chaos.js';
import {
  childPid,
  jobIdOf,
  jobLogs,
  jobProcesses,
  lossesByStep,
  parentOf,
  pipelineConfig,
  processesStarted,
  sleep,
  startTsWorker,
  tinyModel,
  tsWorkerEnv,
  untilProgress,
  type TsWorker,
} from './durability-helpers.js';
import { freePort, tempDir } from './helpers.js';
import { workflowBundlePath } from './workflow-bundle.js';

describe('on a Temporal cluster (PostgreSQL, four services)', () => {
  let artifacts: string;
  let dataFile: string;
  let cluster: TemporalCluster;
  let python: PythonWorker;
  let pythonPort: number;
  let tsWorker: TsWorker;
  let connection: Connection;
  let client: Client;
  let workerEnv: Record<string, string>;
  const taskQueue = `cluster-${randomUUID()}`;
  const gpuTaskQueue = `${taskQueue}-gpu`;

  const startPython = (port: number) =>
    startPythonWorker({
      port,
      artifactRoot: artifacts,
      dataRoots: [path.dirname(tinyModel)],
      // A second per step, so each fault lands mid-SFT however fast this machine trains the tiny model.
      env: { HF_HUB_OFFLINE: '1', VLMFLOW_FAULT_STEP_SECONDS: '1' },
    });
  const until = (what: string, workflowId: string, ok: Parameters<typeof untilProgress>[2]) =>
    untilProgress(client.workflow.getHandle(workflowId), what, ok);

  beforeAll(async () => {
    artifacts = tempDir('cluster-artifacts');
    const dataDir = path.join(artifacts, 'data', 'shapes');
    dataFile = path.join(dataDir, 'data.jsonl');
    pythonPort = await freePort();
    const started = Date.now();
    [cluster, python] = await Promise.all([
      startTemporalCluster({ dir: tempDir('cluster') }),
      startPython(pythonPort),
      buildTinyModel(tinyModel),
      generateSyntheticTask({ task: 'shape_colour', rows: 40, seed: 0, out: dataDir }),
    ]);
    console.log(`durability: ${JSON.stringify({ test: 'cluster-start', seconds: (Date.now() - started) / 1000 })}`);
    // The run's one workflow bundle, as a deployed worker loads its image's (test/global-setup.ts).
    workerEnv = {
      ...tsWorkerEnv(cluster.address, python.address, taskQueue),
      VLMFLOW_WORKFLOW_BUNDLE: workflowBundlePath(),
    };
    tsWorker = await startTsWorker(workerEnv);
    connection = await Connection.connect({ address: cluster.address });
    client = new Client({ connection });
  }, 600_000);

  afterAll(async () => {
    await connection?.close();
    await tsWorker?.stop();
    await Promise.all([python?.stop(), cluster?.stop()]);
  });

  it('completes SFT through a SIGKILLed history service and a PostgreSQL restart, every step trained once', async () => {
    const workflowId = `cluster-faults-${randomUUID()}`;
    const handle = await client.workflow.start(fineTunePipeline, {
      taskQueue,
      workflowId,
      args: [
        { ...pipelineConfig(dataFile, 30, 3), reuse: false },
        { gpuTaskQueue, heartbeatTimeoutMs: 15_000 },
      ],
    });
    const running = await until('sft running', workflowId, (p) => p.stage === 'sft' && p.step >= 1);
    const sftJob = jobIdOf(running, 'sft');

    await cluster.kill('history');
    const historyKilledAt = Date.now();
    await sleep(3_000);
    cluster.start('history');
    const afterHistory = await until('progress after history came back', workflowId, (p) => p.step > running.step + 2);
    const historySeconds = (Date.now() - historyKilledAt) / 1000;

    await cluster.postgres.stop();
    const postgresStoppedAt = Date.now();
    await sleep(3_000);
    await cluster.postgres.start();
    await until(
      'progress after PostgreSQL came back',
      workflowId,
      (p) => p.stage !== 'sft' || p.step > afterHistory.step + 2,
    );
    const postgresSeconds = (Date.now() - postgresStoppedAt) / 1000;

    const result = await handle.result();
    expect(result.status).toBe('completed');
    // The Python worker never stopped: one training process, and every one of the 30 steps trained exactly once.
    expect(processesStarted(artifacts, sftJob)).toBe(1);
    const sft = result.stages.find((s) => s.name === 'sft')!;
    expect([...lossesByStep(sft.artifacts!.training_log!).keys()]).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(existsSync(path.join(sft.artifacts!.adapter!, 'adapter_model.safetensors'))).toBe(true);
    expect(jobLogs(artifacts, sftJob)).toHaveLength(1);
    console.log(
      `durability: ${JSON.stringify({ test: 'cluster-history-postgres', historySeconds, postgresSeconds, sftProcesses: 1, redone: 0 })}`,
    );
  }, 600_000);

  it('completes the chaos run on the cluster: frontend and history, the Python worker and the TS worker killed', async () => {
    await runChaos({
      label: 'chaos-cluster',
      client,
      taskQueue,
      gpuTaskQueue,
      artifacts,
      dataFile,
      restartServer: async () => {
        await Promise.all([cluster.kill('frontend'), cluster.kill('history')]);
        await sleep(2_000);
        cluster.start('history');
        cluster.start('frontend');
        await cluster.ready();
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
  }, 900_000);

  it('kills only the TS worker of the pair that trains: the retry on the other pair attaches through the store, one training', async () => {
    const pythonB = await startPython(await freePort());
    const tsB = await startTsWorker({ ...workerEnv, VLMFLOW_WORKER_ADDRESS: pythonB.address });
    const pairs = [
      { name: 'A', python, ts: tsWorker },
      { name: 'B', python: pythonB, ts: tsB },
    ];
    let victim: (typeof pairs)[number] | undefined;
    let sampling = true;
    let mostAtOnce = 0;
    let sftJob = '';
    const sampler = (async () => {
      while (sampling) {
        if (sftJob) mostAtOnce = Math.max(mostAtOnce, jobProcesses(artifacts, sftJob).length);
        await sleep(100);
      }
    })();
    try {
      const workflowId = `ts-only-${randomUUID()}`;
      const handle = await client.workflow.start(fineTunePipeline, {
        taskQueue,
        workflowId,
        args: [pipelineConfig(dataFile, 24, 11), { gpuTaskQueue, heartbeatTimeoutMs: 10_000 }],
      });
      const running = await until('a checkpoint', workflowId, (p) => p.stage === 'sft' && p.lastCheckpoint !== '');
      sftJob = jobIdOf(running, 'sft');
      const trainer = pairs.find((p) => p.python.pid === parentOf(childPid(artifacts, sftJob)))!;
      victim = trainer;
      await trainer.ts.kill(); // only the TS worker: its Python worker and the training live on
      const killedAt = Date.now();
      const result = await handle.result();
      expect(result.status).toBe('completed');
      expect(processesStarted(artifacts, sftJob)).toBe(1); // attached from the other pair, never started again
      expect(mostAtOnce).toBe(1);
      const sft = result.stages.find((s) => s.name === 'sft')!;
      expect(sft.resumedFromStep ?? 0).toBe(0);
      console.log(
        `durability: ${JSON.stringify({ test: 'ts-only-kill', trainer: trainer.name, trainingsAtOnce: mostAtOnce, processes: 1, redone: 0, secondsToFinish: (Date.now() - killedAt) / 1000 })}`,
      );
    } finally {
      sampling = false;
      await sampler;
      if (victim?.name === 'A') tsWorker = await startTsWorker(workerEnv);
      await tsB.kill();
      await pythonB.stop();
    }
  }, 420_000);
});

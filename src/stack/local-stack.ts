/**
 * The whole stack on one machine: Temporal (the dev server unless TEMPORAL_ADDRESS is set), the Python
 * worker (started unless VLMFLOW_WORKER_ADDRESS is set) and the TS workers. Used by `vlmflow demo` / `dev`.
 */
import { Client } from '@temporalio/client';
import type { Worker } from '@temporalio/worker';
import path from 'node:path';
import type { Env } from '../env.js';
import { logger } from '../logger.js';
import { stateDir } from '../paths.js';
import { startPythonWorker, type PythonWorker } from './python-worker-process.js';
import { connectTemporalClient, connectTemporalWorker, temporalTarget } from './temporal-connection.js';
import { startDevServer, type DevServer } from './temporal-dev-server.js';
import { installTemporalRuntime } from './temporal-runtime.js';
import {
  createPythonWorkerClient,
  waitForReady,
  pythonWorkerClientSecurity,
  type PythonWorkerClient,
} from '../python-worker-client.js';
import { createTemporalWorkers } from '../temporal-worker.js';

export interface LocalStack {
  client: Client;
  workerClient: PythonWorkerClient;
  temporalAddress: string;
  uiUrl: string | undefined;
  env: Env;
  shutdown(): Promise<void>;
}

export async function startLocalStack(env: Env): Promise<LocalStack> {
  installTemporalRuntime({ metricsAddress: env.VLMFLOW_TEMPORAL_METRICS_ADDRESS });
  const cleanups: (() => Promise<void>)[] = [];
  const shutdown = async () => {
    for (const cleanup of cleanups.reverse()) {
      await cleanup().catch((err: unknown) => logger.warn({ err }, 'shutdown step failed'));
    }
  };
  try {
    let devServer: DevServer | undefined;
    if (!env.TEMPORAL_ADDRESS) {
      devServer = await startDevServer({
        stateDir,
        port: env.TEMPORAL_DEV_PORT,
        uiPort: env.TEMPORAL_DEV_UI_PORT,
        namespace: env.TEMPORAL_NAMESPACE,
      });
      cleanups.push(() => devServer!.stop());
    }
    const target = temporalTarget(env, devServer?.address);
    const temporalAddress = target.address;

    let pythonWorker: PythonWorker | undefined;
    if (!env.VLMFLOW_WORKER_ADDRESS) {
      pythonWorker = await startPythonWorker({
        artifactRoot: env.VLMFLOW_ARTIFACT_ROOT ?? path.join(stateDir, 'artifacts'),
      });
      cleanups.push(() => pythonWorker!.stop());
    }
    // TLS and the token apply to a worker given by address; the one started here listens on loopback.
    const workerClient = env.VLMFLOW_WORKER_ADDRESS
      ? createPythonWorkerClient(env.VLMFLOW_WORKER_ADDRESS, pythonWorkerClientSecurity(env))
      : createPythonWorkerClient(pythonWorker!.address);
    cleanups.push(() => Promise.resolve(workerClient.close()));
    await waitForReady(workerClient);

    const nativeConnection = await connectTemporalWorker(target);
    cleanups.push(() => nativeConnection.close());
    const workers = await createTemporalWorkers({
      connection: nativeConnection,
      namespace: env.TEMPORAL_NAMESPACE,
      client: workerClient,
      workflowTaskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
      gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE,
    });
    const running = [workers.workflows, workers.activities].map((w: Worker) => ({ worker: w, done: w.run() }));
    cleanups.push(async () => {
      for (const { worker } of running) if (worker.getState() === 'RUNNING') worker.shutdown();
      await Promise.allSettled(running.map((r) => r.done));
    });

    const connection = await connectTemporalClient(target);
    cleanups.push(() => connection.close());
    const client = new Client({ connection, namespace: env.TEMPORAL_NAMESPACE });
    return { client, workerClient, temporalAddress, uiUrl: devServer?.uiUrl, env, shutdown };
  } catch (err) {
    await shutdown();
    throw err;
  }
}

/**
 * `vlmflow worker`: the TS workers of a deployment (docker/compose.yaml, or one per GPU host) against a running
 * Temporal (TEMPORAL_ADDRESS) and Python worker (VLMFLOW_WORKER_ADDRESS): workflows on the workflow task queue,
 * activities on the GPU task queue with as many slots as the Python worker has GPUs. Runs until SIGTERM or
 * SIGINT, then drains and exits 0.
 *
 *   TEMPORAL_ADDRESS=temporal:7233 VLMFLOW_WORKER_ADDRESS=python-worker:50051 vlmflow worker
 */
import { status, type ServiceError } from '@grpc/grpc-js';
import type { NativeConnection } from '@temporalio/worker';
import { loadEnv } from '../env.js';
import { logger } from '../logger.js';
import { connectTemporalWorker, temporalTarget, type TemporalTarget } from '../stack/temporal-connection.js';
import { installTemporalRuntime } from '../stack/temporal-runtime.js';
import type { HealthResponse } from '../gen/vlmflow/v1/worker.js';
import {
  createPythonWorkerClient,
  health,
  pythonWorkerClientSecurity,
  type PythonWorkerClient,
} from '../python-worker-client.js';
import { createTemporalWorkers } from '../temporal-worker.js';

export interface WorkerCommandOptions {
  /** How long to wait for Temporal and the Python worker to come up (containers start in any order). */
  readyTimeoutMs?: number;
  /** ip:port of the Temporal metrics endpoint (`--metrics-address`); overrides VLMFLOW_TEMPORAL_METRICS_ADDRESS. */
  metricsAddress?: string;
}

export async function worker(opts: WorkerCommandOptions = {}): Promise<number> {
  const env = loadEnv(
    opts.metricsAddress === undefined
      ? process.env
      : { ...process.env, VLMFLOW_TEMPORAL_METRICS_ADDRESS: opts.metricsAddress },
  );
  if (!env.VLMFLOW_WORKER_ADDRESS) {
    throw new Error('VLMFLOW_WORKER_ADDRESS is not set: give the host:port of the Python worker on this host');
  }
  const target = temporalTarget(env);
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 120_000);
  // First: a metrics port already taken fails here, in a sentence, before anything is dialled.
  installTemporalRuntime({ metricsAddress: env.VLMFLOW_TEMPORAL_METRICS_ADDRESS });

  const client = createPythonWorkerClient(env.VLMFLOW_WORKER_ADDRESS, pythonWorkerClientSecurity(env));
  let connection: NativeConnection | undefined;
  try {
    // The worker first: a wrong token or certificate shows up here, before anything polls Temporal.
    const capacity = (await healthUntil(client, env.VLMFLOW_WORKER_ADDRESS, deadline)).jobCapacity;
    connection = await connectUntil(target, deadline);
    const workers = await createTemporalWorkers({
      connection,
      namespace: target.namespace,
      client,
      workflowTaskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
      gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE,
      workflowBundlePath: env.VLMFLOW_WORKFLOW_BUNDLE,
    });
    logger.info(
      {
        temporal: target.address,
        namespace: target.namespace,
        tls: Boolean(target.tls),
        pythonWorker: env.VLMFLOW_WORKER_ADDRESS,
        workflowTaskQueue: env.VLMFLOW_WORKFLOW_TASK_QUEUE,
        gpuTaskQueue: env.VLMFLOW_GPU_TASK_QUEUE,
        activitySlots: Math.max(1, capacity),
        metricsAddress: env.VLMFLOW_TEMPORAL_METRICS_ADDRESS,
      },
      'workers running',
    );
    // The Temporal runtime shuts every worker down on SIGINT / SIGTERM; run() resolves once drained.
    await Promise.all([workers.workflows.run(), workers.activities.run()]);
    logger.info('workers stopped');
    return 0;
  } finally {
    client.close();
    await connection?.close();
  }
}

/**
 * Health from the Python worker, retrying while it is unreachable (starting, or a TLS handshake that fails:
 * the last error names why); any other answer, UNAUTHENTICATED included, fails at once.
 */
async function healthUntil(client: PythonWorkerClient, address: string, deadline: number): Promise<HealthResponse> {
  for (;;) {
    try {
      return await health(client, 10_000);
    } catch (err) {
      const e = err as ServiceError;
      const why = `the Python worker at ${address} answered ${status[e.code] ?? e.code}: ${e.details ?? String(err)}`;
      if (e.code !== status.UNAVAILABLE && e.code !== status.DEADLINE_EXCEEDED) throw new Error(why);
      if (Date.now() > deadline) throw new Error(why);
      logger.info({ pythonWorker: address, reason: e.details }, 'waiting for the Python worker');
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

/** Connects to Temporal, retrying until `deadline`: in a fresh deployment the frontend may still be starting. */
async function connectUntil(target: TemporalTarget, deadline: number): Promise<NativeConnection> {
  for (;;) {
    try {
      return await connectTemporalWorker(target);
    } catch (err) {
      if (Date.now() > deadline) {
        throw new Error(
          `Temporal at ${target.address} did not answer: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
      logger.info({ temporal: target.address }, 'waiting for Temporal');
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

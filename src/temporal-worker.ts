/**
 * The TS workers: workflows on the workflow task queue; activities on the GPU task queue with as many
 * slots as the Python worker reports jobs it can run (one GPU, one job), taken only while it answers (gpu-slots.ts).
 */
import { NativeConnection, Worker } from '@temporalio/worker';
import { fileURLToPath } from 'node:url';
import { createActivities } from '../activities/index.js';
import { parseInputActivities } from '../activities/parse-input.js';
import { gpuSlotSupplier } from './gpu-slots.js';
import { health, type PythonWorkerClient } from './python-worker-client.js';
import { GPU_TASK_QUEUE, WORKFLOW_TASK_QUEUE } from './config/task-queues.js';

export const workflowsPath = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

/**
 * Activities heartbeat every couple of seconds and the SDK forwards them at most this far apart, so a cancel
 * or pause reaches a running training within seconds rather than the default 30-60 s.
 */
export const heartbeatThrottle = {
  maxHeartbeatThrottleInterval: '2s',
  defaultHeartbeatThrottleInterval: '2s',
} as const;

export interface TemporalWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  client: PythonWorkerClient;
  workflowTaskQueue?: string;
  gpuTaskQueue?: string;
  /** A bundle written by `vlmflow bundle`; workflows/ is bundled at start when there is none. */
  workflowBundlePath?: string;
}

export async function createTemporalWorkers(
  opts: TemporalWorkerOptions,
): Promise<{ workflows: Worker; activities: Worker }> {
  const capacity = (await health(opts.client)).jobCapacity;
  const workflows = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace ?? 'default',
    taskQueue: opts.workflowTaskQueue ?? WORKFLOW_TASK_QUEUE,
    ...(opts.workflowBundlePath ? { workflowBundle: { codePath: opts.workflowBundlePath } } : { workflowsPath }),
    // Local activities: each workflow's input parsed once, into history (activities/parse-input.ts).
    activities: parseInputActivities,
  });
  const activities = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace ?? 'default',
    taskQueue: opts.gpuTaskQueue ?? GPU_TASK_QUEUE,
    activities: createActivities(opts.client),
    tuner: {
      activityTaskSlotSupplier: gpuSlotSupplier(opts.client, { capacity: Math.max(1, capacity) }),
      // Unused on this queue (no workflows, no local activities), but a tuner names every kind.
      workflowTaskSlotSupplier: { type: 'fixed-size', numSlots: 1 },
      localActivityTaskSlotSupplier: { type: 'fixed-size', numSlots: 1 },
      nexusTaskSlotSupplier: { type: 'fixed-size', numSlots: 1 },
    },
    ...heartbeatThrottle,
  });
  return { workflows, activities };
}

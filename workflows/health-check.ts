/** healthCheck: one activity on the GPU task queue that reports the Python worker's Health. */
import { proxyActivities } from '@temporalio/workflow';
import type { Activities, WorkerHealth } from '../activities/index.js';
import { GPU_TASK_QUEUE } from '../src/config/task-queues.js';

export interface HealthCheckInput {
  /** Task queue of the GPU activity workers; defaults to 'vlmflow-gpu'. */
  gpuTaskQueue?: string;
}

export async function healthCheck(input: HealthCheckInput = {}): Promise<WorkerHealth> {
  const { workerHealth } = proxyActivities<Activities>({
    taskQueue: input.gpuTaskQueue ?? GPU_TASK_QUEUE,
    startToCloseTimeout: '1 minute',
    retry: { maximumAttempts: 5, initialInterval: '1s' },
  });
  return workerHealth();
}

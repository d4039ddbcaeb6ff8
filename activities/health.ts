/** Activity: ask the Python worker what it is (device, versions, capacity). */
import { ApplicationFailure } from '@temporalio/activity';
import { health, type PythonWorkerClient } from '../src/python-worker-client.js';

export interface WorkerHealth {
  device: string;
  gpus: { name: string; totalMemoryBytes: number; freeMemoryBytes: number }[];
  versions: Record<string, string>;
  jobCapacity: number;
  jobsRunning: number;
  workerId: string;
}

export function createHealthActivity(client: PythonWorkerClient) {
  return async function workerHealth(): Promise<WorkerHealth> {
    try {
      const reply = await health(client);
      return {
        device: reply.device,
        gpus: reply.gpus.map((g) => ({
          name: g.name,
          totalMemoryBytes: g.totalMemoryBytes,
          freeMemoryBytes: g.freeMemoryBytes,
        })),
        versions: reply.versions,
        jobCapacity: reply.jobCapacity,
        jobsRunning: reply.jobsRunning,
        workerId: reply.workerId,
      };
    } catch (err) {
      // UNAVAILABLE and friends are worth retrying: the worker may be restarting.
      throw ApplicationFailure.retryable(
        `the Python worker did not answer Health: ${String(err)}`,
        'WorkerUnavailable',
      );
    }
  };
}

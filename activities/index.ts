/**
 * The activity factory: every activity is a thin call into the Python worker through the client it is
 * given, so the TS worker passes the real client and tests pass one bound to a worker on a free port.
 */
import type { PythonWorkerClient } from '../src/python-worker-client.js';
import { createHealthActivity } from './health.js';
import { createInferenceActivities } from './inference.js';
import { createStageActivities } from './stages.js';

export type { WorkerHealth } from './health.js';
export type { BatchPlan, ShardResult } from './inference.js';
export type { JobResult, PrepareDatasetInput, TrainInput, EvaluateInput, ExportInput, StopJobInput } from './stages.js';

export function createActivities(client: PythonWorkerClient) {
  return {
    workerHealth: createHealthActivity(client),
    ...createStageActivities(client),
    ...createInferenceActivities(client),
  };
}

export type Activities = ReturnType<typeof createActivities>;

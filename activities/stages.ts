/**
 * The pipeline's stage activities: one thin activity per worker job (PrepareDataset, Train, Evaluate,
 * Export), each building its request from the config and handing it to `runJob`; and `stopJob`, the cleanup a
 * cancelled or paused stage runs. Progress travels in heartbeat details only: it costs the run's history nothing.
 */
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { logger } from '../src/logger.js';
import type {
  DatasetConfig,
  DpoConfig,
  EvaluateConfig,
  GrpoConfig,
  LoraConfig,
  ModelConfig,
  TrackingConfig,
  TrainingConfig,
} from '../src/config/pipeline-config.js';
import type { PythonWorkerClient } from '../src/python-worker-client.js';
import { FailureType } from '../src/config/failure-types.js';
import { JobState } from '../src/gen/vlmflow/v1/jobs.js';
import { cancelJob, runJob, type JobResult } from './job-runner.js';
import { evaluateRequest, exportRequest, prepareDatasetRequest, trainRequest } from './requests.js';

export type { JobResult } from './job-runner.js';

interface StageInput {
  /** One run's stage, or a content key: a retried activity attaches to the same job. */
  jobId: string;
  stage: string;
  outputUri: string;
  /**
   * The run waiting for the job (workflow id / first run id). Runs that started before Patches.recordedInput
   * send none: their attempts stop the job themselves when cancelled.
   */
  watcher?: string;
}

/** Stages that report to experiment tracking (the config's `tracking`; absent in runs started before it). */
interface TrackedStageInput extends StageInput {
  tracking?: TrackingConfig;
}

export interface StopJobInput {
  jobId: string;
  watcher: string;
  reason: string;
}

/** Where a stopped job got to; `watchers` are the runs it still runs for (then it was not stopped). */
export interface StoppedJob {
  state: string;
  lastCheckpoint: string;
  step: number;
  totalSteps: number;
  watchers: string[];
}

export interface PrepareDatasetInput extends StageInput {
  model: ModelConfig;
  dataset: DatasetConfig;
}

/** What a GRPO job needs of the grpo section (its dataset, start and LoRA/training travel apart). */
export type GrpoSettings = Omit<GrpoConfig, 'dataset' | 'from' | 'lora' | 'training'>;

export interface TrainInput extends TrackedStageInput {
  kind: 'sft' | 'dpo' | 'grpo';
  model: ModelConfig;
  /** For DPO or GRPO after SFT: the adapter to continue from. */
  adapterUri: string;
  datasetUri: string;
  maxLength: number;
  lora: LoraConfig;
  training: TrainingConfig;
  dpo?: Pick<DpoConfig, 'beta' | 'lossType' | 'maxPromptLength' | 'maxCompletionLength'>;
  grpo?: GrpoSettings;
  /** Newest checkpoint the workflow knows of (after a pause); the worker prefers what it finds on disk. */
  resumeFromCheckpoint: string;
}

export interface EvaluateInput extends TrackedStageInput {
  model: ModelConfig;
  variants: { name: string; adapterUri: string; trainingLogUri: string }[];
  datasetUri: string;
  evaluate: EvaluateConfig;
}

export interface ExportInput extends TrackedStageInput {
  model: ModelConfig;
  adapterUri: string;
  pushToHub: string;
  privateRepo: boolean;
  card: Record<string, string>;
}

export function createStageActivities(client: PythonWorkerClient) {
  return {
    prepareDataset: async (input: PrepareDatasetInput): Promise<JobResult> => {
      const request = prepareDatasetRequest(input);
      return runJob(client, { method: 'prepareDataset', request, stage: input.stage });
    },

    train: async (input: TrainInput): Promise<JobResult> => {
      const request = trainRequest(input);
      return runJob(client, {
        method: 'train',
        request,
        stage: input.stage,
        withResumeHint: (req, checkpoint) => ({ ...req, resumeFromCheckpointUri: checkpoint }),
      });
    },

    evaluate: async (input: EvaluateInput): Promise<JobResult> => {
      const request = evaluateRequest(input);
      return runJob(client, { method: 'evaluate', request, stage: input.stage });
    },

    exportModel: async (input: ExportInput): Promise<JobResult> => {
      const request = exportRequest(input);
      return runJob(client, { method: 'export', request, stage: input.stage });
    },

    /**
     * The cleanup of a cancelled or paused stage: this run stops waiting for the job, and the job checkpoints and
     * stops unless another run still waits for it (a shared, reused stage). Returns once it has ended; heartbeats
     * meanwhile. Works whether or not the stage's own attempt is still alive.
     */
    stopJob: async (input: StopJobInput): Promise<StoppedJob> => {
      const ctx = Context.current();
      const timer = setInterval(() => ctx.heartbeat(), 2_000);
      try {
        const { job } = await cancelJob(
          client,
          { jobId: input.jobId, watcher: input.watcher, wait: true, reason: input.reason },
          10 * 60_000,
        );
        const state = job ? JobState[job.state] : 'UNKNOWN';
        logger.info(
          { jobId: input.jobId, watcher: input.watcher, state, watchers: job?.watchers },
          'stage job stopped',
        );
        return {
          state,
          lastCheckpoint: job?.lastCheckpointUri ?? '',
          step: job?.step ?? 0,
          totalSteps: job?.totalSteps ?? 0,
          watchers: job?.watchers ?? [],
        };
      } catch (err) {
        const code = (err as ServiceError).code;
        // The job never started (cancelled while queued) or was forgotten: nothing runs, nothing to stop.
        if (code === GrpcStatus.NOT_FOUND) {
          return { state: 'NOT_STARTED', lastCheckpoint: '', step: 0, totalSteps: 0, watchers: [] };
        }
        throw ApplicationFailure.retryable(
          `could not stop job ${input.jobId}: ${(err as ServiceError).details ?? String(err)}`,
          FailureType.WorkerUnavailable,
        );
      } finally {
        clearInterval(timer);
      }
    },
  };
}

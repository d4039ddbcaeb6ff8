/**
 * The pipeline's stage activities: one thin activity per worker job (PrepareDataset, Train, Evaluate,
 * Export), each building its request from the config and handing it to `runJob`. Stage progress goes back to
 * the workflow as a throttled `stageProgress` signal so its `progress` query can answer step, loss and ETA.
 */
import { Context } from '@temporalio/activity';
import {
  EvaluateRequest,
  ExportRequest,
  PrepareDatasetRequest,
  TrainKind,
  TrainRequest,
} from '../src/gen/vlmflow/v1/jobs.js';
import { logger } from '../src/logger.js';
import type {
  DatasetConfig,
  DpoConfig,
  EvaluateConfig,
  LoraConfig,
  ModelConfig,
  TrainingConfig,
} from '../src/config/pipeline-config.js';
import type { PythonWorkerClient } from '../src/python-worker-client.js';
import { stageProgressSignal, type StageProgress } from '../workflows/definitions.js';
import { runJob, type JobHeartbeat, type JobResult } from './job-runner.js';
import { datasetSources, generationRequest, loraRequest, modelRef, trainingRequest } from './requests.js';

export type { JobResult } from './job-runner.js';

interface StageInput {
  /** Workflow id + stage (+ a suffix after a pause), so a retried activity attaches to the same job. */
  jobId: string;
  stage: string;
  outputUri: string;
}

export interface PrepareDatasetInput extends StageInput {
  model: ModelConfig;
  dataset: DatasetConfig;
}

export interface TrainInput extends StageInput {
  kind: 'sft' | 'dpo';
  model: ModelConfig;
  /** For DPO after SFT: the SFT adapter to continue from. */
  adapterUri: string;
  datasetUri: string;
  maxLength: number;
  lora: LoraConfig;
  training: TrainingConfig;
  dpo?: Pick<DpoConfig, 'beta' | 'lossType' | 'maxPromptLength' | 'maxCompletionLength'>;
  /** Newest checkpoint the workflow knows of (after a pause); the worker prefers what it finds on disk. */
  resumeFromCheckpoint: string;
}

export interface EvaluateInput extends StageInput {
  model: ModelConfig;
  variants: { name: string; adapterUri: string; trainingLogUri: string }[];
  datasetUri: string;
  evaluate: EvaluateConfig;
}

export interface ExportInput extends StageInput {
  model: ModelConfig;
  adapterUri: string;
  pushToHub: string;
  privateRepo: boolean;
  card: Record<string, string>;
}

export function createStageActivities(client: PythonWorkerClient) {
  return {
    prepareDataset: async (input: PrepareDatasetInput): Promise<JobResult> => {
      const request = PrepareDatasetRequest.fromPartial({
        jobId: input.jobId,
        sources: datasetSources(input.dataset),
        model: modelRef(input.model),
        maxLength: input.dataset.maxLength,
        evalFraction: input.dataset.evalFraction,
        seed: input.dataset.seed,
        maxDropFraction: input.dataset.maxDropFraction,
        maxRows: input.dataset.maxRows,
        outputUri: input.outputUri,
      });
      return runJob(client, { method: 'prepareDataset', request, onUpdate: progressSignaller(input.stage) });
    },

    train: async (input: TrainInput): Promise<JobResult> => {
      const request = TrainRequest.fromPartial({
        jobId: input.jobId,
        kind: input.kind === 'sft' ? TrainKind.TRAIN_KIND_SFT : TrainKind.TRAIN_KIND_DPO,
        model: modelRef(input.model, input.adapterUri),
        datasetUri: input.datasetUri,
        outputUri: input.outputUri,
        lora: loraRequest(input.lora),
        training: trainingRequest(input.training, input.maxLength),
        dpo: input.dpo,
        resumeFromCheckpointUri: input.resumeFromCheckpoint,
      });
      return runJob(client, {
        method: 'train',
        request,
        withResumeHint: (req, checkpoint) => ({ ...req, resumeFromCheckpointUri: checkpoint }),
        onUpdate: progressSignaller(input.stage),
      });
    },

    evaluate: async (input: EvaluateInput): Promise<JobResult> => {
      const request = EvaluateRequest.fromPartial({
        jobId: input.jobId,
        model: modelRef(input.model),
        variants: input.variants,
        datasetUri: input.datasetUri,
        metrics: input.evaluate.metrics,
        generation: generationRequest(input.evaluate.generation),
        batchSize: input.evaluate.batchSize,
        maxSamples: input.evaluate.maxSamples,
        bootstrapSamples: input.evaluate.bootstrapSamples,
        outputUri: input.outputUri,
      });
      return runJob(client, { method: 'evaluate', request, onUpdate: progressSignaller(input.stage) });
    },

    exportModel: async (input: ExportInput): Promise<JobResult> => {
      const request = ExportRequest.fromPartial({
        jobId: input.jobId,
        model: modelRef(input.model, input.adapterUri),
        outputUri: input.outputUri,
        pushToHub: input.pushToHub,
        privateRepo: input.privateRepo,
        card: input.card,
      });
      return runJob(client, { method: 'export', request, onUpdate: progressSignaller(input.stage) });
    },
  };
}

/**
 * Signals the workflow with the stage's progress: at once for important events (accepted, checkpoint,
 * completion), otherwise at most every `intervalMs`, so an hours-long training adds a bounded history.
 */
export function progressSignaller(stage: string, intervalMs = 15_000) {
  const ctx = Context.current();
  let last = 0;
  let client: typeof ctx.client | undefined;
  try {
    client = ctx.client;
  } catch {
    client = undefined; // MockActivityEnvironment without a client: nothing to signal.
  }
  const workflowId = ctx.info.workflowExecution?.workflowId;
  const handle = workflowId ? client?.workflow.getHandle(workflowId) : undefined;
  return (state: JobHeartbeat, important: boolean) => {
    const now = Date.now();
    if (!handle || (!important && now - last < intervalMs)) return;
    last = now;
    const progress: StageProgress = {
      stage,
      jobId: state.jobId,
      phase: state.phase,
      step: state.step,
      totalSteps: state.totalSteps,
      loss: state.loss,
      etaSeconds: state.etaSeconds,
      checkpoint: state.checkpoint,
    };
    handle.signal(stageProgressSignal, progress).catch((err: unknown) => {
      logger.debug({ err: String(err), stage }, 'could not signal stage progress');
    });
  };
}

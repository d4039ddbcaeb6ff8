/**
 * Signals and queries of the workflows, declared once for the workflows and the CLI. Deterministic: types and
 * definitions only.
 */
import { defineQuery, defineSignal } from '@temporalio/workflow';

export type StageName =
  'prepare' | 'sft' | 'prepare-preference' | 'dpo' | 'prepare-grpo' | 'grpo' | 'evaluate' | 'gate' | 'export';
export type StageStatus =
  'pending' | 'running' | 'paused' | 'completed' | 'reused' | 'skipped' | 'failed' | 'cancelled';

export interface StageSummary {
  name: StageName;
  status: StageStatus;
  jobId?: string;
  /** Named artifact URIs (dataset, adapter, report, model...). */
  artifacts?: Record<string, string>;
  metrics?: Record<string, number>;
  fingerprint?: string;
  /** Step the stage's job resumed from (0 for a fresh start). */
  resumedFromStep?: number;
  message?: string;
}

/**
 * Where the pipeline is. The `progress` query answers the stages and status; step, totalSteps, loss, etaSeconds
 * and lastCheckpoint of the running stage live in its activity's heartbeat details (no history cost), which
 * src/run-progress.ts merges in for the CLI; the query alone leaves them at their stage-start values.
 */
export interface PipelineProgress {
  status: 'running' | 'paused' | 'completed' | 'failed' | 'cancelled';
  stage: StageName | null;
  stages: StageSummary[];
  step: number;
  totalSteps: number;
  loss: number | null;
  etaSeconds: number | null;
  lastCheckpoint: string;
  /** The run's artifact-store folder. */
  outputRoot: string;
  /** The status in one line ("running: stage sft (2 of 6)"); the UI's current details tell more (run-story.ts). */
  details: string;
  /** The running stage's phase (training, evaluating, "waiting for a GPU", ...), from its heartbeat details. */
  phase?: string;
}

/** batchInference's and videoUnderstanding's `progress` answer. */
export interface InferenceProgress {
  status: 'running' | 'completed' | 'failed' | 'cancelled';
  total: number;
  done: number;
  shards: number;
  shardsDone: number;
  outputUri: string;
}

/** Checkpoint the running stage, then wait for `resume`. */
export const pauseSignal = defineSignal<[reason?: string]>('pause');
/** Continue a paused pipeline; the stage resumes from its checkpoint. */
export const resumeSignal = defineSignal('resume');
export const progressQuery = defineQuery<PipelineProgress>('progress');
export const inferenceProgressQuery = defineQuery<InferenceProgress>('progress');

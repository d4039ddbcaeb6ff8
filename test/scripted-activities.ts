/** Scripted stand-ins for the stage activities (same names and types as the real ones), for workflow tests. */
import { Context } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';
import type {
  Activities,
  EvaluateInput,
  ExportInput,
  JobResult,
  PrepareDatasetInput,
  StopJobInput,
  TrainInput,
} from '../activities/index.js';
import type { JobHeartbeat } from '../activities/job-runner.js';

export function result(
  jobId: string,
  artifacts: Record<string, string>,
  metrics: Record<string, number> = {},
): JobResult {
  return {
    jobId,
    artifacts,
    metrics,
    cached: false,
    reused: false,
    fingerprint: `fp-${jobId}`,
    attached: false,
    resumedFromStep: 0,
    lastCheckpoint: '',
    evals: [],
  };
}

/** What the scripted activities saw. */
export interface Calls {
  prepare: number;
  train: TrainInput[];
  trainCancelled: number;
  evaluate: number;
  exported: number;
  prepareInputs: PrepareDatasetInput[];
  evaluateInputs: EvaluateInput[];
  exportInputs: ExportInput[];
  stopJob: StopJobInput[];
}

export type TrainScript = (input: TrainInput, call: number) => Promise<JobResult>;

/** Scripted stand-ins for the stage activities, same names and types as the real ones. */
export function scriptedActivities(calls: Calls, train: TrainScript): Partial<Activities> {
  return {
    prepareDataset: (input) => {
      calls.prepare++;
      calls.prepareInputs.push(input);
      return Promise.resolve(result(input.jobId, { dataset: `${input.outputUri}/dataset` }));
    },
    train: async (input) => {
      calls.train.push(input);
      return train(input, calls.train.length);
    },
    evaluate: (input) => {
      calls.evaluate++;
      calls.evaluateInputs.push(input);
      return Promise.resolve(
        result(
          input.jobId,
          { report: `${input.outputUri}/report.html` },
          { 'base/vqa_accuracy': 0.3, 'sft/vqa_accuracy': 0.9, 'dpo/vqa_accuracy': 0.95, 'grpo/vqa_accuracy': 0.97 },
        ),
      );
    },
    exportModel: (input) => {
      calls.exported++;
      calls.exportInputs.push(input);
      return Promise.resolve(result(input.jobId, { model: `${input.outputUri}/model` }));
    },
    stopJob: (input) => {
      calls.stopJob.push(input);
      const train = calls.train.find((t) => t.jobId === input.jobId);
      const lastCheckpoint = train ? `${train.outputUri}/checkpoint-20` : '';
      return Promise.resolve({
        state: 'JOB_STATE_CANCELLED',
        lastCheckpoint,
        step: train ? 20 : 0,
        totalSteps: train ? 100 : 0,
        watchers: [],
      });
    },
  };
}

/**
 * A training that reports steps and a checkpoint (heartbeat details), then runs until cancelled, or until `released`
 * settles when given: then it finishes with an adapter.
 */
export async function trainUntilCancelled(
  input: TrainInput,
  calls: Calls,
  released?: Promise<void>,
): Promise<JobResult> {
  const ctx = Context.current();
  const beat: JobHeartbeat = {
    stage: input.stage,
    jobId: input.jobId,
    phase: 'training',
    step: 20,
    totalSteps: 100,
    loss: 1.5,
    etaSeconds: 80,
    checkpoint: `${input.outputUri}/checkpoint-20`,
    attached: false,
    failures: 0,
  };
  let done = false;
  void released?.then(() => (done = true));
  while (!done) {
    ctx.heartbeat(beat);
    try {
      await ctx.sleep(100);
    } catch (err) {
      if (err instanceof CancelledFailure) calls.trainCancelled++;
      throw err;
    }
  }
  return result(input.jobId, { adapter: `${input.outputUri}/adapter` });
}

export function newCalls(): Calls {
  return {
    prepare: 0,
    train: [],
    trainCancelled: 0,
    evaluate: 0,
    exported: 0,
    prepareInputs: [],
    evaluateInputs: [],
    exportInputs: [],
    stopJob: [],
  };
}

/**
 * batchInference: captioning / VQA / OCR over a folder of images or a JSONL list, split into shards answered by
 * at most `parallelism` activities at once on the GPU task queue; results in <output>/results.jsonl. A shard
 * whose file exists is skipped, so a retried, continued or re-run workflow picks up where it stopped.
 */
import {
  continueAsNew,
  patched,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import { batchInferenceSchema, type BatchInferenceConfig } from '../src/config/inference-config.js';
import { VlmflowDataset, VlmflowModel, VlmflowStage, VlmflowStatus } from '../src/config/search-attributes.js';
import { GPU_TASK_QUEUE } from '../src/config/task-queues.js';
import { configOrFail, parseInputOrFail, parsers } from './parse-input.js';
import { Patches } from './patches.js';
import { inferenceProgressQuery, type InferenceProgress } from './definitions.js';

export interface BatchInferenceOptions {
  gpuTaskQueue?: string;
  /** First shard to run (set when continuing as new; earlier shards are done). */
  fromShard?: number;
  /**
   * Milliseconds a shard may go without a heartbeat before Temporal gives it to another worker; default 2 minutes.
   * The fault tests (test/faults.test.ts) shorten it so a SIGKILLed worker's shard moves in seconds.
   */
  heartbeatTimeoutMs?: number;
  /** The input as the first run parsed it: carried over continue-as-new, never parsed again. */
  parsed?: BatchInferenceConfig;
}

export interface BatchInferenceResult {
  resultsUri: string;
  items: number;
  shards: number;
  /** Shards found already done (earlier attempt or run). */
  skippedShards: number;
}

export async function batchInference(raw: unknown, options: BatchInferenceOptions = {}): Promise<BatchInferenceResult> {
  // Runs that started before this deploy parse inline, as they did (patches.ts).
  const recorded = patched(Patches.recordedInput);
  const config =
    options.parsed ??
    (recorded
      ? configOrFail(await parsers.parseBatchInferenceInput(raw))
      : parseInputOrFail(batchInferenceSchema, raw, 'batch inference input'));
  const acts = proxyActivities<Activities>({
    taskQueue: options.gpuTaskQueue ?? GPU_TASK_QUEUE,
    startToCloseTimeout: '2 hours',
    heartbeatTimeout: options.heartbeatTimeoutMs ?? '2 minutes',
    retry: { initialInterval: '5s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
  });
  upsertSearchAttributes([
    { key: VlmflowModel, value: config.model.id },
    { key: VlmflowDataset, value: config.input },
    { key: VlmflowStage, value: 'inference' },
    { key: VlmflowStatus, value: 'running' },
  ]);

  const plan = await acts.planBatch({
    input: config.input,
    outputUri: config.outputUri || `runs/${workflowInfo().workflowId}`,
    shardSize: config.shardSize,
  });
  const progress: InferenceProgress = {
    status: 'running',
    total: plan.total,
    done: 0,
    shards: plan.shards,
    shardsDone: options.fromShard ?? 0,
    outputUri: plan.outputDir,
  };
  setHandler(inferenceProgressQuery, () => progress);

  let next = options.fromShard ?? 0;
  let skipped = 0;
  let stopForHistory = false;
  const lane = async () => {
    while (next < plan.shards && !stopForHistory) {
      if (workflowInfo().continueAsNewSuggested) {
        stopForHistory = true;
        break;
      }
      const shard = next++;
      const result = await acts.inferShard({
        outputDir: plan.outputDir,
        shard,
        shardSize: config.shardSize,
        task: config.task,
        prompt: config.prompt,
        model: config.model,
        generation: config.generation,
        batchSize: config.batchSize,
      });
      progress.shardsDone++;
      progress.done += result.items;
      if (result.skipped) skipped++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(config.parallelism, plan.shards) }, lane));
  if (stopForHistory && next < plan.shards) {
    await continueAsNew<typeof batchInference>(raw, {
      ...options,
      fromShard: next,
      ...(recorded ? { parsed: config } : {}),
    });
  }

  const merged = await acts.mergeShards({ outputDir: plan.outputDir, shards: plan.shards });
  progress.status = 'completed';
  upsertSearchAttributes([
    { key: VlmflowStage, value: 'done' },
    { key: VlmflowStatus, value: 'completed' },
  ]);
  return { resultsUri: merged.resultsUri, items: merged.items, shards: plan.shards, skippedShards: skipped };
}

/**
 * videoUnderstanding: a video cut into segments of `segmentSeconds` (after a one-frame probe for its length);
 * each segment's frames described by the model (bounded parallel activities); then the descriptions summarized
 * into one account of the whole video.
 */
import { patched, proxyActivities, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import { videoUnderstandingSchema } from '../src/config/inference-config.js';
import { VlmflowDataset, VlmflowModel, VlmflowStage, VlmflowStatus } from '../src/config/search-attributes.js';
import { GPU_TASK_QUEUE } from '../src/config/task-queues.js';
import { configOrFail, parseInputOrFail, parsers } from './parse-input.js';
import { Patches } from './patches.js';
import { inferenceProgressQuery, type InferenceProgress } from './definitions.js';

export interface VideoSegment {
  start: number;
  end: number;
  description: string;
}

export interface VideoUnderstandingResult {
  video: string;
  segments: VideoSegment[];
  summary: string;
}

export async function videoUnderstanding(
  raw: unknown,
  options: { gpuTaskQueue?: string } = {},
): Promise<VideoUnderstandingResult> {
  // Runs that started before this deploy parse inline, as they did (patches.ts).
  const config = patched(Patches.recordedInput)
    ? configOrFail(await parsers.parseVideoUnderstandingInput(raw))
    : parseInputOrFail(videoUnderstandingSchema, raw, 'video understanding input');
  const acts = proxyActivities<Activities>({
    taskQueue: options.gpuTaskQueue ?? GPU_TASK_QUEUE,
    startToCloseTimeout: '30 minutes',
    heartbeatTimeout: '2 minutes',
    retry: { initialInterval: '5s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 5 },
  });
  upsertSearchAttributes([
    { key: VlmflowModel, value: config.model.id },
    { key: VlmflowDataset, value: config.video },
    { key: VlmflowStage, value: 'segments' },
    { key: VlmflowStatus, value: 'running' },
  ]);

  const { durationSeconds } = await acts.probeVideo({ video: config.video, model: config.model });
  // Segments of segmentSeconds; a video longer than maxSegments of them gets longer segments instead.
  const count = Math.min(config.maxSegments, Math.max(1, Math.ceil(durationSeconds / config.segmentSeconds - 0.05)));
  const length = Math.max(config.segmentSeconds, durationSeconds / count);
  const starts = Array.from({ length: count }, (_, i) => i * length);
  const progress: InferenceProgress = {
    status: 'running',
    total: starts.length,
    done: 0,
    shards: starts.length,
    shardsDone: 0,
    outputUri: '',
  };
  setHandler(inferenceProgressQuery, () => progress);

  const segments: VideoSegment[] = new Array<VideoSegment>(starts.length);
  let next = 0;
  const lane = async () => {
    while (next < starts.length) {
      const i = next++;
      const start = starts[i]!;
      // The last segment runs to the end of the video (end 0).
      const end = i + 1 < starts.length ? start + length : 0;
      const { text, frameTimestamps } = await acts.describeVideoSegment({
        video: config.video,
        model: config.model,
        start,
        end,
        frames: config.framesPerSegment,
        prompt: config.prompt,
        generation: config.generation,
      });
      segments[i] = {
        start,
        end: end || Math.max(durationSeconds, frameTimestamps.at(-1) ?? start),
        description: text.trim(),
      };
      progress.done++;
      progress.shardsDone++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(config.parallelism, starts.length) }, lane));

  upsertSearchAttributes([{ key: VlmflowStage, value: 'summary' }]);
  const text = segments.map((s) => `[${formatTime(s.start)}–${formatTime(s.end)}] ${s.description}`).join('\n');
  const summary = await acts.summarize({
    model: config.model,
    instruction: config.summaryPrompt,
    text,
    generation: config.generation,
  });
  progress.status = 'completed';
  upsertSearchAttributes([
    { key: VlmflowStage, value: 'done' },
    { key: VlmflowStatus, value: 'completed' },
  ]);
  return { video: config.video, segments, summary: summary.trim() };
}

function formatTime(seconds: number): string {
  const m = Math.floor(seconds / 60);
  const s = Math.floor(seconds % 60);
  return `${m}:${String(s).padStart(2, '0')}`;
}

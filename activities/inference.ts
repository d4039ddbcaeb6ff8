/**
 * Activities of the inference workflows. Items (image paths, never bytes) are listed once into a manifest in
 * the run's output folder; each shard activity reads its slice, asks the Python worker's Generate for the
 * answers and writes them as JSONL (temp file, then rename), so a finished shard is never redone. Output
 * folders are relative to the worker's artifact root, which this activity worker shares (same host or shared
 * storage, as in docker/).
 */
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Task, type GenerateItem } from '../src/gen/vlmflow/v1/generate.js';
import { GenerateRequest, type GenerateResponse } from '../src/gen/vlmflow/v1/worker.js';
import { generationSchema, type GenerationConfig, type ModelConfig } from '../src/config/pipeline-config.js';
import { FailureType } from '../src/config/failure-types.js';
import { logger } from '../src/logger.js';
import { health, type PythonWorkerClient } from '../src/python-worker-client.js';
import { failureFromStatus } from './job-runner.js';
import { generationRequest, modelRef } from './requests.js';

const defaultGeneration = generationSchema.parse({});
const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff']);

export interface ManifestItem {
  id: string;
  image: string;
  prompt?: string;
}

export interface PlanBatchInput {
  input: string;
  outputUri: string;
  shardSize: number;
}

export interface BatchPlan {
  /** Absolute output folder. */
  outputDir: string;
  total: number;
  shards: number;
}

export interface InferShardInput {
  outputDir: string;
  shard: number;
  shardSize: number;
  task: 'caption' | 'vqa' | 'ocr';
  prompt: string;
  model: ModelConfig;
  generation: GenerationConfig;
  batchSize: number;
}

export interface ShardResult {
  shard: number;
  items: number;
  /** The shard's file was already there (an earlier attempt or run finished it). */
  skipped: boolean;
}

export interface VideoSegmentInput {
  video: string;
  model: ModelConfig;
  start: number;
  end: number;
  frames: number;
  prompt: string;
  generation: GenerationConfig;
}

const TASKS: Record<InferShardInput['task'], Task> = {
  caption: Task.TASK_CAPTION,
  vqa: Task.TASK_VQA,
  ocr: Task.TASK_OCR,
};

export function createInferenceActivities(client: PythonWorkerClient) {
  let artifactRoot: string | undefined;
  const resolveOutput = async (uri: string) => {
    artifactRoot ??= (await health(client)).artifactRoot;
    return path.resolve(artifactRoot, uri);
  };

  return {
    /** Lists the items (a folder of images, recursively, or a JSONL of {id?, image, prompt?}) into manifest.jsonl. */
    planBatch: async (input: PlanBatchInput): Promise<BatchPlan> => {
      const outputDir = await resolveOutput(input.outputUri);
      const manifest = path.join(outputDir, 'manifest.jsonl');
      let items: ManifestItem[];
      if (existsSync(manifest)) {
        items = await readJsonl<ManifestItem>(manifest);
      } else {
        items = await listItems(input.input);
        if (!items.length) {
          throw ApplicationFailure.nonRetryable(`no images found in ${input.input}`, FailureType.BadData);
        }
        await mkdir(outputDir, { recursive: true });
        await writeAtomic(manifest, items.map((i) => JSON.stringify(i)).join('\n') + '\n');
      }
      return { outputDir, total: items.length, shards: Math.ceil(items.length / input.shardSize) };
    },

    /** Answers one shard's items with Generate and writes shards/shard-NNNNN.jsonl. */
    inferShard: async (input: InferShardInput): Promise<ShardResult> => {
      const file = shardFile(input.outputDir, input.shard);
      if (existsSync(file)) return { shard: input.shard, items: (await readJsonl(file)).length, skipped: true };
      const all = await readJsonl<ManifestItem>(path.join(input.outputDir, 'manifest.jsonl'));
      const slice = all.slice(input.shard * input.shardSize, (input.shard + 1) * input.shardSize);
      const items: GenerateItem[] = slice.map((item) => ({
        id: item.id,
        task: TASKS[input.task],
        prompt: item.prompt ?? input.prompt,
        messages: [],
        images: [{ source: { $case: 'uri', value: item.image } }],
        video: undefined,
      }));
      const reply = await cancellableGenerate(client, {
        model: modelRef(input.model),
        items,
        generation: generationRequest(input.generation),
        batchSize: input.batchSize,
      });
      const byId = new Map(slice.map((i) => [i.id, i]));
      const lines = reply.results.map((r) =>
        JSON.stringify({ id: r.id, image: byId.get(r.id)?.image, answer: r.text, answer_tokens: r.answerTokens }),
      );
      await mkdir(path.dirname(file), { recursive: true });
      await writeAtomic(file, lines.join('\n') + '\n');
      return { shard: input.shard, items: lines.length, skipped: false };
    },

    /** Concatenates the shard files, in order, into results.jsonl. */
    mergeShards: async (input: {
      outputDir: string;
      shards: number;
    }): Promise<{ resultsUri: string; items: number }> => {
      const parts: string[] = [];
      for (let shard = 0; shard < input.shards; shard++)
        parts.push(await readFile(shardFile(input.outputDir, shard), 'utf8'));
      const text = parts.join('');
      const resultsUri = path.join(input.outputDir, 'results.jsonl');
      await writeAtomic(resultsUri, text);
      return { resultsUri, items: text.split('\n').filter(Boolean).length };
    },

    /**
     * How long a video is: one cheap Generate that samples a single frame (the worker puts it at the middle of
     * the video) and answers with one token; twice that frame's time is the duration.
     */
    probeVideo: async (input: { video: string; model: ModelConfig }): Promise<{ durationSeconds: number }> => {
      const reply = await cancellableGenerate(client, {
        model: modelRef(input.model),
        items: [
          {
            id: 'probe',
            task: Task.TASK_VIDEO,
            prompt: 'Describe the video.',
            messages: [],
            images: [],
            video: { uri: input.video, numFrames: 1, fps: 0, maxFrames: 0, startSeconds: 0, endSeconds: 0 },
          },
        ],
        generation: generationRequest({ ...defaultGeneration, maxNewTokens: 1 }),
      });
      return { durationSeconds: 2 * (reply.results[0]?.frameTimestamps[0] ?? 0) };
    },

    /** Describes one segment [start, end) of a video. */
    describeVideoSegment: async (input: VideoSegmentInput): Promise<{ text: string; frameTimestamps: number[] }> => {
      const reply = await cancellableGenerate(client, {
        model: modelRef(input.model),
        items: [
          {
            id: `${input.start}`,
            task: Task.TASK_VIDEO,
            prompt: input.prompt,
            messages: [],
            images: [],
            video: {
              uri: input.video,
              numFrames: input.frames,
              startSeconds: input.start,
              endSeconds: input.end,
              fps: 0,
              maxFrames: 0,
            },
          },
        ],
        generation: generationRequest(input.generation),
      });
      const result = reply.results[0];
      return { text: result?.text ?? '', frameTimestamps: result?.frameTimestamps ?? [] };
    },

    /** Summarizes text (segment descriptions) with a text-only chat turn. */
    summarize: async (input: {
      model: ModelConfig;
      instruction: string;
      text: string;
      generation: GenerationConfig;
    }) => {
      const reply = await cancellableGenerate(client, {
        model: modelRef(input.model),
        items: [
          {
            id: 'summary',
            task: Task.TASK_CHAT,
            prompt: '',
            messages: [{ role: 'user', text: `${input.instruction}\n\n${input.text}` }],
            images: [],
            video: undefined,
          },
        ],
        generation: generationRequest(input.generation),
      });
      return reply.results[0]?.text ?? '';
    },
  };
}

/** Generate, heartbeating while it runs; a cancelled activity cancels the call. Errors map like the jobs'. */
async function cancellableGenerate(
  client: PythonWorkerClient,
  request: Partial<GenerateRequest>,
): Promise<GenerateResponse> {
  const ctx = Context.current();
  const timer = setInterval(() => ctx.heartbeat(), 2000);
  let call: { cancel(): void } | undefined;
  try {
    return await new Promise<GenerateResponse>((resolve, reject) => {
      void ctx.cancelled.catch(reject);
      call = client.generate(GenerateRequest.fromPartial(request), new Metadata(), (err: ServiceError | null, reply) =>
        err ? reject(failureFromStatus(err, 'Generate', '')) : resolve(reply),
      );
    });
  } catch (err) {
    if (err instanceof CancelledFailure) {
      call?.cancel();
      logger.info({ activityId: ctx.info.activityId }, 'generate cancelled');
    }
    throw err;
  } finally {
    clearInterval(timer);
  }
}

async function listItems(input: string): Promise<ManifestItem[]> {
  const info = await stat(input).catch(() => undefined);
  if (!info) throw ApplicationFailure.nonRetryable(`input ${input} does not exist`, FailureType.NotFound);
  if (info.isFile()) {
    const rows = await readJsonl<{ id?: string; image?: string; prompt?: string }>(input);
    return rows.map((row, i) => {
      if (!row.image) {
        throw ApplicationFailure.nonRetryable(
          `${input} line ${i + 1} has no "image" field`,
          FailureType.InvalidArgument,
        );
      }
      return {
        id: row.id ?? String(i),
        image: path.resolve(path.dirname(input), row.image),
        ...(row.prompt ? { prompt: row.prompt } : {}),
      };
    });
  }
  const files = (await readdir(input, { recursive: true }))
    .map(String)
    .filter((f) => IMAGE_EXTENSIONS.has(path.extname(f).toLowerCase()))
    .sort();
  return files.map((f) => ({ id: f, image: path.join(input, f) }));
}

/** Where a shard's answers live; the fault tests read it too. */
export function shardFile(outputDir: string, shard: number): string {
  return path.join(outputDir, 'shards', `shard-${String(shard).padStart(5, '0')}.jsonl`);
}

async function readJsonl<T>(file: string): Promise<T[]> {
  const text = await readFile(file, 'utf8');
  return text
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line) as T);
}

async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

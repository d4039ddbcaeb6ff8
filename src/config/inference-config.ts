/**
 * Inputs of the inference workflows (batchInference, videoUnderstanding), typed once with zod and parsed
 * by the workflows as their first step, like the pipeline config. No Node built-ins: workflows import this.
 */
import { z } from 'zod';
import { generationSchema, modelSchema } from './pipeline-config.js';

export const inferenceTasks = ['caption', 'vqa', 'ocr'] as const;

export const batchInferenceSchema = z
  .object({
    model: modelSchema.default(modelSchema.parse({})),
    task: z.enum(inferenceTasks).default('caption'),
    /** The question for vqa; an instruction override for caption and ocr. */
    prompt: z.string().default(''),
    /** A folder of images (searched recursively), or a JSONL file of {id?, image, prompt?} rows. */
    input: z.string().min(1),
    /** Folder the results go to: results.jsonl plus one file per shard. Default runs/<workflow id>. */
    outputUri: z.string().default(''),
    /** Items per shard (one activity each); a finished shard is never redone. */
    shardSize: z.number().int().positive().max(10_000).default(64),
    /** Shards running at once (bounded by the GPU workers' capacity anyway). */
    parallelism: z.number().int().positive().max(64).default(2),
    /**
     * Items per generate() call; 0 = as many as the worker's token and pixel budget allows
     * (VLMFLOW_GENERATE_BATCH_TOKENS / _PIXELS), merged with concurrent shards' items.
     */
    batchSize: z.number().int().nonnegative().default(0),
    generation: generationSchema.default(generationSchema.parse({})),
  })
  .strict();

export const videoUnderstandingSchema = z
  .object({
    model: modelSchema.default(modelSchema.parse({})),
    /** Video file (a data root or the artifact store). */
    video: z.string().min(1),
    /** Length of one segment; each gets its own description. */
    segmentSeconds: z.number().positive().default(10),
    /** Frames sampled per segment. */
    framesPerSegment: z.number().int().positive().max(64).default(8),
    /** Question asked of each segment. */
    prompt: z.string().default('Describe what happens in this part of the video.'),
    /** Instruction for the summary of the segment descriptions. */
    summaryPrompt: z
      .string()
      .default(
        'Here are descriptions of consecutive parts of one video. Summarize the whole video in a few sentences.',
      ),
    /** Cap on segments, so a long video cannot start thousands of calls by accident. */
    maxSegments: z.number().int().positive().max(1000).default(60),
    parallelism: z.number().int().positive().max(16).default(2),
    generation: generationSchema.default(generationSchema.parse({ maxNewTokens: 128 })),
  })
  .strict();

export type BatchInferenceInput = z.input<typeof batchInferenceSchema>;
export type BatchInferenceConfig = z.output<typeof batchInferenceSchema>;
export type VideoUnderstandingInput = z.input<typeof videoUnderstandingSchema>;
export type VideoUnderstandingConfig = z.output<typeof videoUnderstandingSchema>;

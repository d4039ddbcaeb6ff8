/**
 * Local activities of the workflow worker: each workflow's raw input (JSON typed into the Temporal UI included)
 * parsed and defaulted with its zod schema. Running it as an activity puts the result into the run's history, so a
 * later change to a schema or its defaults never changes what a run in flight replays or does next.
 */
import { formatIssues, parseConfig, type ConfigIssue } from '../src/config/config-issues.js';
import { batchInferenceSchema, videoUnderstandingSchema } from '../src/config/inference-config.js';
import type { BatchInferenceConfig, VideoUnderstandingConfig } from '../src/config/inference-config.js';
import { pipelineConfigSchema, type PipelineConfig } from '../src/config/pipeline-config.js';
import type { z } from 'zod';

/** The parsed input, or every bad field and the sentence the run fails with. */
export type ParsedInput<T> = { ok: true; config: T } | { ok: false; issues: ConfigIssue[]; message: string };

function parse<S extends z.ZodType>(schema: S, raw: unknown, what: string): ParsedInput<z.output<S>> {
  const parsed = parseConfig(schema, raw);
  if (parsed.ok) return { ok: true, config: parsed.data };
  return { ok: false, issues: parsed.issues, message: formatIssues(what, parsed.issues) };
}

export const parseInputActivities = {
  parsePipelineInput: (raw: unknown): Promise<ParsedInput<PipelineConfig>> =>
    Promise.resolve(parse(pipelineConfigSchema, raw, 'pipeline config')),
  parseBatchInferenceInput: (raw: unknown): Promise<ParsedInput<BatchInferenceConfig>> =>
    Promise.resolve(parse(batchInferenceSchema, raw, 'batch inference input')),
  parseVideoUnderstandingInput: (raw: unknown): Promise<ParsedInput<VideoUnderstandingConfig>> =>
    Promise.resolve(parse(videoUnderstandingSchema, raw, 'video understanding input')),
};

export type ParseInputActivities = typeof parseInputActivities;
